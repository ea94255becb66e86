//! `ckpt vm export-rbd` and `ckpt vm import-rbd`: a VM's checkpoint tree
//! to and from Ceph RBD images (the library's `checkpoint::rbd`).

use std::path::{Path, PathBuf};

use ckpt::checkpoint::rbd::{import_rbd, RbdExportOptions, RbdImportOptions, RbdTool};
use ckpt::checkpoint::Vm;

use super::vm::{json_text, print, require_vm, vm_error};
use super::CliResult;

/// The cluster options shared by both commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// The ceph.conf rbd reads [default: CEPH_CONF, else rbd's default].
    #[arg(long, value_name = "FILE")]
    pub conf: Option<PathBuf>,
    /// The client id (as rbd --id) [default: from CEPH_ARGS, else admin].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

impl ClusterArgs {
    fn tool(&self) -> RbdTool {
        RbdTool {
            program: None,
            conf: self.conf.clone(),
            id: self.id.clone(),
        }
    }
}

/// Progress lines on stderr.
fn progress(line: &str) {
    eprintln!("{line}");
}

/// `ckpt vm export-rbd`.
pub fn export(
    dir: &Path,
    pool: String,
    prefix: Option<String>,
    prune: bool,
    cluster: &ClusterArgs,
    json: bool,
) -> CliResult {
    require_vm(dir)?;
    let mut vm = Vm::open(dir).map_err(vm_error)?;
    let opts = RbdExportOptions {
        pool,
        prefix,
        prune,
        tool: cluster.tool(),
    };
    let r = vm
        .export_rbd(&opts, &mut |l: &str| progress(l))
        .map_err(vm_error)?;
    if json {
        let v = serde_json::to_value(&r).map_err(|e| super::fail(format!("JSON output: {e}")))?;
        return print(&json_text(&v)?);
    }
    let mut s = String::new();
    for i in &r.images {
        s.push_str(&format!(
            "{}: {} snapshot{} sent, {} kept{}{}, {} data bytes\n",
            i.image,
            i.sent.len(),
            super::vm::plural(i.sent.len()),
            i.kept.len(),
            if i.head_sent { ", head written" } else { "" },
            if i.pruned.is_empty() {
                String::new()
            } else {
                format!(", {} pruned", i.pruned.len())
            },
            i.data_bytes
        ));
    }
    for img in &r.pruned_images {
        s.push_str(&format!("{img}: removed (its branch was deleted)\n"));
    }
    s.push_str(&format!(
        "sent {} data bytes in {} stream bytes\n",
        r.data_bytes, r.stream_bytes
    ));
    print(&s)
}

/// `ckpt vm rbd-diff`: a stream on stdout.
pub fn diff(
    dir: &Path,
    disk: usize,
    from: Option<&str>,
    to: Option<&str>,
    image: bool,
) -> CliResult {
    require_vm(dir)?;
    let mut vm = Vm::open(dir).map_err(vm_error)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let r = if image {
        vm.write_rbd_image(disk, &mut out)
    } else {
        vm.write_rbd_diff(disk, from, to, &mut out)
    };
    r.map_err(vm_error)?;
    use std::io::Write;
    out.flush()
        .map_err(|e| super::fail(format!("writing to stdout: {e}")))
}

/// `ckpt vm import-rbd`.
pub fn import(images: &[String], dir: &Path, name: String, cluster: &ClusterArgs) -> CliResult {
    let opts = RbdImportOptions {
        name,
        tool: cluster.tool(),
    };
    let vm = import_rbd(images, dir, &opts, &mut |l: &str| progress(l)).map_err(vm_error)?;
    print(&format!(
        "Imported VM \"{}\" into {}: {} disk{}, {} checkpoint{}\n",
        vm.data().config.name,
        vm.dir().display(),
        vm.data().disks.len(),
        super::vm::plural(vm.data().disks.len()),
        vm.data().checkpoints.len(),
        super::vm::plural(vm.data().checkpoints.len()),
    ))
}
