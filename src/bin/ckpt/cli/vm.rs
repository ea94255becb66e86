//! `ckpt vm …`: create, show and change a VM folder (its `vm.json`: the
//! configuration, the checkpoint settings, the state and the checkpoint
//! tree). The checkpoint commands are in `checkpoint.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use ckpt::checkpoint::model::{JOURNAL_FILE, VM_FILE};
use ckpt::checkpoint::{json, CheckpointType, Settings, Vm, VmFile, VmRole, VmSpec, VmState};
use ckpt::OpenMode;

use super::chain::absolute;
use super::target::Target;
use super::{fail, open, CliResult, Failure};

/// The `vm` commands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Make a VM folder DIR (created if missing) holding a new VM with the
    /// given VHDX disks.
    ///
    /// The disks stay where they are; checkpoints add differencing disks
    /// next to them. Configuration copies and memory state go to the
    /// checkpoint location (default: DIR/checkpoints).
    Create {
        /// The VM folder (must not hold a VM yet).
        dir: PathBuf,
        /// The VM's name.
        #[arg(long)]
        name: String,
        /// The VM's VHDX disks, in order (repeat --disk or give several).
        #[arg(long = "disk", value_name = "PATH", required = true, num_args = 1..)]
        disks: Vec<PathBuf>,
        /// Pass-through host devices (never checkpointed).
        #[arg(long = "passthrough", value_name = "DEVICE", num_args = 1..)]
        passthrough: Vec<String>,
        /// disabled, standard, production or production-only.
        #[arg(long, value_name = "TYPE", value_parser = parse_checkpoint_type, default_value = "production")]
        checkpoint_type: CheckpointType,
        /// Where configuration copies and memory state go [default: DIR/checkpoints].
        #[arg(long, value_name = "DIR")]
        checkpoint_location: Option<PathBuf>,
        /// Memory in MiB.
        #[arg(long = "memory", value_name = "MIB", default_value_t = 1024)]
        memory_mib: u64,
        /// Virtual CPUs.
        #[arg(long, value_name = "N", default_value_t = 1)]
        cpus: u32,
        /// Flag checkpoints older than this (e.g. 72h, 30d, or seconds).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        age_warning: Option<u64>,
        /// domain-controller, cluster-member, replicated or none: a role
        /// whose checkpoints are risky to apply (taken with a warning).
        #[arg(long, value_name = "ROLE", value_parser = parse_role)]
        role: Option<Role>,
    },
    /// Show a VM: name, state, resources, checkpoint settings, the
    /// checkpoint the current state hangs under, and the files it writes to.
    Show {
        /// The VM folder.
        dir: PathBuf,
        /// Print one JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Change a VM's resources, checkpoint settings or state (what is not
    /// given stays as it is).
    ///
    /// Memory and CPUs belong to the configuration a checkpoint keeps:
    /// applying a checkpoint brings back the values it was taken with.
    Set {
        /// The VM folder.
        dir: PathBuf,
        /// Memory in MiB.
        #[arg(long = "memory", value_name = "MIB")]
        memory_mib: Option<u64>,
        /// Virtual CPUs.
        #[arg(long, value_name = "N")]
        cpus: Option<u32>,
        /// disabled, standard, production or production-only.
        #[arg(long, value_name = "TYPE", value_parser = parse_checkpoint_type)]
        checkpoint_type: Option<CheckpointType>,
        /// Where new configuration copies and memory state go ("default":
        /// DIR/checkpoints).
        #[arg(long, value_name = "DIR")]
        checkpoint_location: Option<PathBuf>,
        /// Flag checkpoints older than this (e.g. 72h, 30d, or seconds;
        /// "off" for never).
        #[arg(long, value_name = "DURATION", value_parser = parse_age_warning)]
        age_warning: Option<AgeWarning>,
        /// off, running or saved (as the hypervisor reports it).
        #[arg(long, value_name = "STATE", value_parser = parse_state)]
        state: Option<VmState>,
        /// domain-controller, cluster-member, replicated or none. A
        /// checkpoint of a VM in one of these roles is taken with a warning
        /// (a domain controller: USN rollback; a cluster member: stale
        /// cluster state; a replicated VM: a replica that needs a resync),
        /// recorded with it, and `ckpt monitor` reports it as WARNING.
        #[arg(long, value_name = "ROLE", value_parser = parse_role)]
        role: Option<Role>,
    },
    /// Change the virtual size of disk INDEX of the current state (its top
    /// file; Resize-VHD on a VM's disk). Checkpoints keep their size:
    /// applying one brings it back. A VM held by another process (a running
    /// guest) is resized through its control channel; the guest sees the
    /// new size on its next size query. Shrinking is refused when data
    /// lies past the new end, unless --allow-shrink.
    DiskResize {
        /// The VM folder.
        dir: PathBuf,
        /// The disk's index in the VM's disk list (0 first).
        index: usize,
        /// The new virtual size (e.g. 64G, 1536M, bytes).
        #[arg(value_parser = super::parse_size)]
        size: u64,
        /// Drop the data past a smaller size.
        #[arg(long)]
        allow_shrink: bool,
        /// Print one JSON object (the report) instead.
        #[arg(long)]
        json: bool,
    },
    /// Give back the space current disk INDEX no longer needs (like
    /// Optimize-VHD on the disk the VM writes): its top file's unused
    /// blocks are freed, the rest move down and the file is cut.
    ///
    /// When another process holds the VM attached (a running guest, e.g.
    /// through the nbdkit plugin), the holder compacts through its live
    /// handle while the guest keeps writing (a checkpoint taken meanwhile
    /// ends it with "busy"; run it again); else the file is compacted
    /// here. What the disk reads does not change; checkpoints stay linked.
    Compact {
        /// The VM folder.
        dir: PathBuf,
        /// The disk (0 for the first, as `ckpt vm show` lists them).
        index: usize,
        /// quick (trimmed blocks) or full (also blocks reading as zeros).
        #[arg(long, value_name = "MODE", value_parser = super::parse_compact_mode, default_value = "quick")]
        mode: ckpt::CompactMode,
        /// Print one JSON object (the report, with the disk's path) instead.
        #[arg(long)]
        json: bool,
    },
    /// Export the checkpoint tree into Ceph RBD images through the `rbd`
    /// tool: per disk K an image PREFIX-diskK with one snapshot per
    /// checkpoint from the root to the current state (oldest first, named
    /// after the checkpoint: a name with other characters than ASCII
    /// letters, digits, '.', '_', '-', '+' has them replaced by '_' and
    /// '~' plus the first 8 characters of the checkpoint's id appended),
    /// and the current state as the image's head. Checkpoints on other
    /// branches become clones PREFIX-diskK--SNAP of their branch point's
    /// snapshot (protected).
    ///
    /// Incremental: run again, it sends only the checkpoints the images do
    /// not have yet and the head's changes. Each state is imported into
    /// the head, verified (rbd export-diff read back) and only then
    /// snapshotted: an interrupted run leaves complete snapshots only, and
    /// running it again finishes. Snapshots of checkpoints deleted since
    /// stay unless --prune (which also removes the clones of branches
    /// deleted locally). Progress on stderr. The VM must not be held by
    /// another process. Images carry the VM's id (image-meta ckpt.vm): an
    /// existing image without it is refused, never written.
    ExportRbd {
        /// The VM folder.
        dir: PathBuf,
        /// The RBD pool.
        #[arg(long)]
        pool: String,
        /// The image name prefix [default: the VM's name].
        #[arg(long, value_name = "NAME")]
        prefix: Option<String>,
        /// Remove the snapshots of checkpoints deleted locally, and the
        /// clones of branches deleted locally.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        cluster: super::rbd::ClusterArgs,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write one disk as an RBD stream on stdout: the state at --to (default:
    /// the current state) as an "rbd diff v1" stream for `rbd import-diff -
    /// POOL/IMAGE`, only its changes since --from when given (with the
    /// snapshot records `f` / `t` named as export-rbd names snapshots); or,
    /// with --image, the whole disk with one snapshot per checkpoint from
    /// the root to the current state, for `rbd import --export-format 2 -
    /// POOL/IMAGE`.
    RbdDiff {
        /// The VM folder.
        dir: PathBuf,
        /// The disk (0 for the first).
        #[arg(long, default_value_t = 0)]
        disk: usize,
        /// The checkpoint the diff starts from.
        #[arg(long, value_name = "NAME", conflicts_with = "image")]
        from: Option<String>,
        /// The checkpoint it ends at [default: the current state].
        #[arg(long, value_name = "NAME", conflicts_with = "image")]
        to: Option<String>,
        /// Write the whole image with its snapshots (export format 2).
        #[arg(long)]
        image: bool,
    },
    /// Make a new VM in DIR from RBD images (one disk per image, in
    /// order): a base VHDX filled from each image's first snapshot, one
    /// checkpoint (an AVHDX per disk) per snapshot, named after it, and
    /// the images' heads as the current state. The images must have the
    /// same snapshots. Clones of their snapshots (as export-rbd makes
    /// them: one per disk, PREFIX-diskK--SNAP) come back as branches of
    /// the tree, each holding only what differs from its branch point.
    ImportRbd {
        /// The images, as POOL/IMAGE.
        #[arg(required = true, num_args = 1..)]
        images: Vec<String>,
        /// The new VM folder (the base disks go into it).
        #[arg(required = true)]
        dir: PathBuf,
        /// The new VM's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        cluster: super::rbd::ClusterArgs,
    },
    /// Hold a VM open and offer its control channel until standard input
    /// ends (for tests and scripts): `ckpt checkpoint …` and `ckpt vm
    /// show|set` from other processes are then carried out by this one.
    /// Prints one line `holding DIR (control socket PATH)` once serving.
    #[command(hide = true)]
    Hold {
        /// The VM folder.
        dir: PathBuf,
    },
}

/// `--role`: a role, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role(Option<VmRole>);

fn parse_role(s: &str) -> Result<Role, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "off" => Ok(Role(None)),
        l => l.parse().map(|r| Role(Some(r))).map_err(|_| {
            format!(
                "unknown VM role '{s}' (expected {} or none)",
                VmRole::names()
            )
        }),
    }
}

/// `--age-warning` of `vm set`: a duration in seconds, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeWarning(Option<u64>);

fn parse_checkpoint_type(s: &str) -> Result<CheckpointType, String> {
    s.to_ascii_lowercase().parse().map_err(|_| {
        format!(
            "unknown checkpoint type '{s}' (expected {})",
            CheckpointType::names()
        )
    })
}

fn parse_state(s: &str) -> Result<VmState, String> {
    s.to_ascii_lowercase()
        .parse()
        .map_err(|_| format!("unknown VM state '{s}' (expected {})", VmState::names()))
}

/// A duration in seconds: `3600`, `45s`, `90m`, `72h`, `30d`, `2w`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid duration '{s}' (expected seconds, or a number with s, m, h, d or w, e.g. 72h)"
        )
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("duration '{s}' is too long"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("duration '{s}' is too long"))
}

fn parse_age_warning(s: &str) -> Result<AgeWarning, String> {
    match s.to_ascii_lowercase().as_str() {
        "off" | "none" | "never" => Ok(AgeWarning(None)),
        _ => parse_duration(s).map(|n| AgeWarning(Some(n))),
    }
}

/// `secs` for people: "45s", "12m", "3h 5m", "2d 4h" (the library's
/// [`ckpt::monitor::human_duration`]).
pub fn human_duration(secs: u64) -> String {
    ckpt::monitor::human_duration(secs)
}

/// A library error as one message. Refusals (a bad argument, an unknown
/// or taken name) read better without the kind's prefix; "busy: " stays.
pub(super) fn vm_error(e: ckpt::Error) -> Failure {
    match e {
        ckpt::Error::InvalidArgument(msg)
        | ckpt::Error::NotFound(msg)
        | ckpt::Error::AlreadyExists(msg) => fail(msg),
        e => e.into(),
    }
}

/// Refuse a folder that holds no VM, with a message that says so.
pub(super) fn require_vm(dir: &Path) -> CliResult {
    if dir.join(VM_FILE).is_file() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(fail(format!(
            "{}: no such VM folder (create one with 'ckpt vm create')",
            dir.display()
        )));
    }
    Err(fail(format!(
        "{}: not a VM folder (it has no {VM_FILE}; create one with 'ckpt vm create')",
        dir.display()
    )))
}

/// Open a VM for a change (takes its lock; finishes interrupted work), or
/// reach the process that holds it through its control channel.
pub(super) fn open_vm(dir: &Path) -> Result<Target, Failure> {
    require_vm(dir)?;
    super::target::open(dir).map_err(vm_error)
}

/// Read a VM's file for showing (no lock; the holder's, when it offers a
/// control channel).
pub(super) fn load_vm(dir: &Path) -> Result<VmFile, Failure> {
    require_vm(dir)?;
    super::target::load(dir).map_err(vm_error)
}

/// Pretty JSON with a final newline.
pub(super) fn json_text(v: &serde_json::Value) -> Result<String, Failure> {
    Ok(serde_json::to_string_pretty(v).map_err(|e| fail(format!("JSON output: {e}")))? + "\n")
}

/// Write `text` to stdout.
pub(super) fn print(text: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| fail(format!("writing to stdout: {e}")))
}

/// Run a `vm` command.
pub(super) fn run(cmd: VmCommand) -> CliResult {
    match cmd {
        VmCommand::Create {
            dir,
            name,
            disks,
            passthrough,
            checkpoint_type,
            checkpoint_location,
            memory_mib,
            cpus,
            age_warning,
            role,
        } => {
            let mut spec = VmSpec::new(&name, disks);
            spec.passthrough = passthrough;
            spec.memory_mib = memory_mib;
            spec.cpus = cpus;
            spec.settings = Settings {
                checkpoint_type,
                checkpoint_location,
                age_warning_seconds: age_warning,
                role: role.and_then(|Role(r)| r),
            };
            create(&dir, &spec)
        }
        VmCommand::Show { dir, json } => show(&dir, json),
        VmCommand::Hold { dir } => hold(&dir),
        VmCommand::ExportRbd {
            dir,
            pool,
            prefix,
            prune,
            cluster,
            json,
        } => super::rbd::export(&dir, pool, prefix, prune, &cluster, json),
        VmCommand::RbdDiff {
            dir,
            disk,
            from,
            to,
            image,
        } => super::rbd::diff(&dir, disk, from.as_deref(), to.as_deref(), image),
        VmCommand::ImportRbd {
            images,
            dir,
            name,
            cluster,
        } => super::rbd::import(&images, &dir, name, &cluster),
        VmCommand::DiskResize {
            dir,
            index,
            size,
            allow_shrink,
            json,
        } => {
            let mut vm = open_vm(&dir)?;
            let r = vm
                .resize_disk(index, size, ckpt::ResizeOptions { allow_shrink })
                .map_err(vm_error)?;
            let what = format!("disk {index} of {}", dir.display());
            super::resize::print_report(&what, &r, json)
        }
        VmCommand::Compact {
            dir,
            index,
            mode,
            json,
        } => compact(&dir, index, mode, json),
        VmCommand::Set {
            dir,
            memory_mib,
            cpus,
            checkpoint_type,
            checkpoint_location,
            age_warning,
            state,
            role,
        } => set(
            &dir,
            &Changes {
                memory_mib,
                cpus,
                checkpoint_type,
                checkpoint_location,
                age_warning,
                state,
                role,
            },
        ),
    }
}

fn create(dir: &Path, spec: &VmSpec) -> CliResult {
    if spec.name.trim().is_empty() {
        return Err(fail("--name: the VM needs a name"));
    }
    if spec.memory_mib == 0 {
        return Err(fail("--memory: must be at least 1 MiB"));
    }
    if spec.cpus == 0 {
        return Err(fail("--cpus: must be at least 1"));
    }
    if dir.join(VM_FILE).exists() {
        return Err(fail(format!(
            "{}: already holds a VM; refusing to replace it",
            dir.display()
        )));
    }
    // Each disk must be a usable VHDX (or chain); say which one is not.
    for d in &spec.disks {
        drop(open(d, OpenMode::ReadOnly)?);
    }
    let vm = Vm::create(dir, spec).map_err(vm_error)?;
    let data = vm.data();
    println!(
        "Created VM \"{}\" in {}: {} disk{}, {} MiB, {} CPU{}, {} checkpoints",
        data.config.name,
        vm.dir().display(),
        data.disks.len(),
        plural(data.disks.len()),
        data.config.memory_mib,
        data.config.cpus,
        plural(data.config.cpus as usize),
        data.settings.checkpoint_type.as_str(),
    );
    Ok(())
}

/// "s" unless `n` is 1.
pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The checkpoint location a VM file names (the library's
/// `checkpoint_location_of`, from the absolute folder), and whether it is
/// the default one.
pub fn location_of(dir: &Path, data: &VmFile) -> (PathBuf, bool) {
    (
        ckpt::checkpoint::checkpoint_location_of(&absolute(dir), data),
        data.settings.checkpoint_location.is_none(),
    )
}

fn show(dir: &Path, as_json: bool) -> CliResult {
    let data = load_vm(dir)?;
    if as_json {
        let mut v = json::vm_json(&data);
        let strays = ckpt::checkpoint::strays_of(&absolute(dir), &data).unwrap_or_default();
        v["strays"] = strays.iter().map(|p| p.display().to_string()).collect();
        return print(&json_text(&v)?);
    }
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<22}{v}\n"));
    line("name:", super::checkpoint::escaped(&data.config.name));
    line("folder:", absolute(dir).display().to_string());
    line("state:", data.state.as_str().to_string());
    line("memory:", format!("{} MiB", data.config.memory_mib));
    line("cpus:", data.config.cpus.to_string());
    line(
        "checkpoint type:",
        data.settings.checkpoint_type.as_str().to_string(),
    );
    let (loc, default) = location_of(dir, &data);
    line(
        "checkpoint location:",
        format!(
            "{}{}",
            loc.display(),
            if default { " (default)" } else { "" }
        ),
    );
    line(
        "age warning:",
        match data.settings.age_warning_seconds {
            Some(n) => format!("checkpoints older than {}", human_duration(n)),
            None => "off".into(),
        },
    );
    if let Some(r) = data.settings.role {
        line("role:", r.as_str().to_string());
    }
    let visible = data.checkpoints.iter().filter(|c| !c.hidden).count();
    line("checkpoints:", visible.to_string());
    line(
        "current checkpoint:",
        data.current_checkpoint()
            .map(|c| format!("\"{}\"", super::checkpoint::escaped(&c.name)))
            .unwrap_or_else(|| "none".into()),
    );
    if let Some(m) = &data.current.saved_state {
        line("saved state:", absolute(m).display().to_string());
    }
    for (k, p) in data.current.disks.iter().enumerate() {
        line(&format!("disk {k}:"), absolute(p).display().to_string());
        if let Some(base) = data.disks.get(k).filter(|b| *b != p) {
            line("", format!("(on {})", absolute(base).display()));
        }
    }
    for p in &data.config.passthrough {
        line("pass-through:", format!("{p} (not checkpointed)"));
    }
    if dir.join(JOURNAL_FILE).exists() {
        s.push_str(
            "note: an operation was interrupted; the next change to this VM finishes or undoes it\n",
        );
    }
    for p in ckpt::checkpoint::strays_of(&absolute(dir), &data).unwrap_or_default() {
        s.push_str(&format!(
            "warning: {} looks like a checkpoint file but no checkpoint owns it\n",
            p.display()
        ));
    }
    print(&s)
}

/// `vm compact`: compact current disk `index`, with a progress bar; one
/// report line (or the JSON report).
fn compact(dir: &Path, index: usize, mode: ckpt::CompactMode, as_json: bool) -> CliResult {
    let mut vm = open_vm(dir)?;
    let mut hooks = super::checkpoint::CmdHooks::with_bar();
    let r = vm.compact_disk(index, mode, &mut hooks);
    hooks.finish();
    let r = r.map_err(vm_error)?;
    let path = vm
        .data()
        .current
        .disks
        .get(index)
        .map(|p| absolute(p).display().to_string())
        .unwrap_or_default();
    if as_json {
        let mut v = ckpt::checkpoint::json::compact_report_json(&r);
        v["disk"] = index.into();
        v["path"] = path.into();
        print(&json_text(&v)?)?;
    } else {
        println!(
            "Compacted disk {index} of VM \"{}\" ({path}, {}): {} -> {}; {} block{} freed, {} moved",
            vm.data().config.name,
            r.mode.as_str(),
            super::with_bytes(r.bytes_before),
            super::with_bytes(r.bytes_after),
            r.blocks_freed,
            plural(r.blocks_freed as usize),
            r.blocks_moved,
        );
    }
    for w in vm.take_warnings() {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// `vm hold`: open the VM, serve its control channel, wait for the end of
/// standard input, stop.
fn hold(dir: &Path) -> CliResult {
    require_vm(dir)?;
    let mut vm = Vm::open(dir).map_err(vm_error)?;
    for w in vm.take_warnings() {
        eprintln!("warning: {w}");
    }
    let vm = std::sync::Arc::new(std::sync::Mutex::new(vm));
    let server = ckpt::checkpoint::control::serve(vm, None).map_err(vm_error)?;
    print(&format!(
        "holding {} (control socket {})\n",
        absolute(dir).display(),
        server.path().display()
    ))?;
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    drop(server);
    Ok(())
}

/// What `vm set` changes.
struct Changes {
    memory_mib: Option<u64>,
    cpus: Option<u32>,
    checkpoint_type: Option<CheckpointType>,
    checkpoint_location: Option<PathBuf>,
    age_warning: Option<AgeWarning>,
    state: Option<VmState>,
    role: Option<Role>,
}

fn set(dir: &Path, c: &Changes) -> CliResult {
    let settings_change = c.checkpoint_type.is_some()
        || c.checkpoint_location.is_some()
        || c.age_warning.is_some()
        || c.role.is_some();
    let resources_change = c.memory_mib.is_some() || c.cpus.is_some();
    if !settings_change && !resources_change && c.state.is_none() {
        return Err(fail(
            "nothing to change: give --memory, --cpus, --checkpoint-type, \
             --checkpoint-location, --age-warning, --state or --role",
        ));
    }
    // Refuse bad values before anything changes.
    if c.memory_mib == Some(0) {
        return Err(fail("--memory: must be at least 1 MiB"));
    }
    if c.cpus == Some(0) {
        return Err(fail("--cpus: must be at least 1"));
    }
    let mut vm = open_vm(dir)?;
    if resources_change {
        vm.set_resources(c.memory_mib, c.cpus).map_err(vm_error)?;
    }
    if settings_change {
        let mut s = vm.data().settings.clone();
        if let Some(t) = c.checkpoint_type {
            s.checkpoint_type = t;
        }
        if let Some(l) = &c.checkpoint_location {
            s.checkpoint_location = if l.as_os_str() == "default" {
                None
            } else {
                Some(l.clone())
            };
        }
        if let Some(AgeWarning(a)) = c.age_warning {
            s.age_warning_seconds = a;
        }
        if let Some(Role(r)) = c.role {
            s.role = r;
        }
        vm.set_settings(s).map_err(vm_error)?;
    }
    if let Some(state) = c.state {
        vm.set_state(state).map_err(vm_error)?;
    }
    let d = vm.data();
    let (loc, _) = location_of(vm.dir(), d);
    println!(
        "VM \"{}\": {}, {} MiB, {} CPU{}, {} checkpoints in {}, age warning {}, role {}",
        d.config.name,
        d.state.as_str(),
        d.config.memory_mib,
        d.config.cpus,
        plural(d.config.cpus as usize),
        d.settings.checkpoint_type.as_str(),
        loc.display(),
        d.settings
            .age_warning_seconds
            .map(human_duration)
            .unwrap_or_else(|| "off".into()),
        d.settings.role.map_or("none", |r| r.as_str()),
    );
    for w in vm.take_warnings() {
        eprintln!("warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600"), Ok(3600));
        assert_eq!(parse_duration("45s"), Ok(45));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("72h"), Ok(72 * 3600));
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("2W"), Ok(14 * 86_400));
        for bad in ["", "h", "1.5h", "-1", "3y", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_age_warning("off"), Ok(AgeWarning(None)));
        assert_eq!(parse_age_warning("1d"), Ok(AgeWarning(Some(86_400))));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(120), "2m");
        assert_eq!(human_duration(3600 + 300), "1h 5m");
        assert_eq!(human_duration(3 * 86_400), "3d");
        assert_eq!(human_duration(3 * 86_400 + 7200), "3d 2h");
    }

    #[test]
    fn types_and_states() {
        assert_eq!(
            parse_checkpoint_type("Production-Only"),
            Ok(CheckpointType::ProductionOnly)
        );
        assert!(parse_checkpoint_type("fast").is_err());
        assert_eq!(parse_state("saved"), Ok(VmState::Saved));
        assert!(parse_state("paused").is_err());
    }
}
