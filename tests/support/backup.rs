//! The VM fixture of the incremental-backup tests (`backup.rs`,
//! `reference_points.rs`): a VM with two small disks and a byte model per
//! disk, and the judgements of a backup chain against the model (libckpt,
//! flattened, libvhdi with `set_parent`, `verify_backup`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{have_pyvhdi, Rng, PYTHON};
use ckpt::checkpoint::backup::verify_backup;
use ckpt::checkpoint::{CheckpointType, NoHooks, Vm, VmSpec};
use ckpt::disk::merge::{self, Range};
use ckpt::{CreateOptions, Disk, OpenMode};

/// 16 MiB disks with 1 MiB blocks.
pub const SIZE: u64 = 16 << 20;
pub const SECTOR: u64 = 512;
pub const NAMES: [&str; 2] = ["os.vhdx", "data.vhdx"];

/// A VM with two empty disks, and its model (one byte vector per disk).
pub struct Fixture {
    pub vm: Vm,
    pub model: Vec<Vec<u8>>,
    pub rng: Rng,
    pub root: PathBuf,
}

pub fn fixture(root: &Path, seed: u64) -> Fixture {
    let mut disks = Vec::new();
    for n in NAMES {
        let p = root.join("disks").join(n);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        Disk::create(&p, &CreateOptions::new(SIZE).block_size(1 << 20))
            .unwrap()
            .close()
            .unwrap();
        disks.push(p);
    }
    let mut spec = VmSpec::new("backup", disks);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    Fixture {
        vm: Vm::create(&root.join("vm"), &spec).unwrap(),
        model: vec![vec![0u8; SIZE as usize]; NAMES.len()],
        rng: Rng::new(seed),
        root: root.to_path_buf(),
    }
}

impl Fixture {
    /// `n` random writes (sector-unaligned ones too, and zeros) into the
    /// current disks, offline, mirrored into the model.
    pub fn writes(&mut self, n: usize) {
        for _ in 0..n {
            let k = self.rng.below(NAMES.len() as u64) as usize;
            let len = self.rng.range(1, 200 << 10);
            let off = self.rng.below(SIZE - len);
            let data = if self.rng.below(5) == 0 {
                vec![0u8; len as usize]
            } else {
                self.rng.bytes(len as usize)
            };
            self.write(k, off, &data);
        }
    }

    pub fn write(&mut self, k: usize, off: u64, data: &[u8]) {
        let p = self.vm.data().current.disks[k].clone();
        let d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
        d.write_at(data, off).unwrap();
        d.close().unwrap();
        self.model[k][off as usize..off as usize + data.len()].copy_from_slice(data);
    }

    pub fn checkpoint(&mut self, name: &str) -> Vec<Vec<u8>> {
        self.vm.create_checkpoint(name, None, &mut NoHooks).unwrap();
        self.model.clone()
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join("backups").join(name)
    }
}

pub fn read_all(d: &Disk) -> Vec<u8> {
    let mut b = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

/// libvhdi: open `files` (oldest first), compose them with `set_parent`,
/// read the newest whole.
pub const PYVHDI_CHAIN: &str = r#"
import sys
import pyvhdi
out, paths = sys.argv[1], sys.argv[2:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    if files:
        f.set_parent(files[-1])
    files.append(f)
top = files[-1]
size = top.get_media_size()
data = top.read_buffer_at_offset(size, 0)
if len(data) != size:
    sys.exit("short read: %d of %d bytes" % (len(data), size))
with open(out, "wb") as o:
    o.write(data)
"#;

pub fn pyvhdi_reads(files: &[PathBuf], out: &Path) -> Vec<u8> {
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c").arg(PYVHDI_CHAIN).arg(out).args(files);
    super::run(&mut cmd);
    let b = std::fs::read(out).unwrap();
    std::fs::remove_file(out).unwrap();
    b
}

/// The backup chain `dirs` (oldest first) restores `model`: libckpt opens
/// and flattens each disk's chain, libvhdi reads it, `verify_backup` finds
/// it whole (given as the whole set and as the newest folder alone).
pub fn assert_restores(what: &str, dirs: &[PathBuf], model: &[Vec<u8>], scratch: &Path) {
    let newest = dirs.last().unwrap();
    for (k, name) in NAMES.iter().enumerate() {
        let top = newest.join(name);
        let d = Disk::open(&top, OpenMode::ReadOnly).unwrap();
        assert_eq!(d.depth(), dirs.len(), "{what}: {name}: chain depth");
        super::assert_same(
            &format!("{what}: {name} (libckpt)"),
            &read_all(&d),
            &model[k],
            0,
        );
        drop(d);
        let flat = scratch.join(format!("flat-{name}"));
        merge::flatten(&top, &flat, &CreateOptions::new(0), None).unwrap();
        let f = Disk::open(&flat, OpenMode::ReadOnly).unwrap();
        assert_eq!(f.depth(), 1);
        super::assert_same(
            &format!("{what}: {name} (flattened)"),
            &read_all(&f),
            &model[k],
            0,
        );
        drop(f);
        std::fs::remove_file(&flat).unwrap();
        if have_pyvhdi() {
            let files: Vec<PathBuf> = dirs.iter().map(|d| d.join(name)).collect();
            let got = pyvhdi_reads(&files, &scratch.join("vhdi.raw"));
            super::assert_same(&format!("{what}: {name} (libvhdi)"), &got, &model[k], 0);
        }
    }
    for given in [dirs.to_vec(), vec![newest.clone()]] {
        let v = verify_backup(&given).unwrap();
        assert_eq!(v.len(), NAMES.len());
        for d in &v {
            assert!(d.error.is_none(), "{what}: verify {given:?}: {d:?}");
            assert_eq!(d.chain.len(), dirs.len(), "{what}: verified chain");
        }
    }
}

/// Whether `ranges` (sorted, coalesced) cover `[off, off+len)`.
pub fn covered(ranges: &[Range], off: u64, len: u64) -> bool {
    ranges
        .iter()
        .any(|r| r.offset <= off && off + len <= r.offset + r.length)
}

/// The incremental `inc` (a folder) holds exactly `expect` per disk (its
/// own layer's ranges), and `expect` misses no sector where `before` and
/// `after` differ.
pub fn assert_holds(
    what: &str,
    inc: &Path,
    expect: &[Vec<Range>],
    before: &[Vec<u8>],
    after: &[Vec<u8>],
) {
    for (k, name) in NAMES.iter().enumerate() {
        let own = Disk::open_single(inc.join(name))
            .unwrap()
            .changed_ranges(1)
            .unwrap();
        assert_eq!(
            own, expect[k],
            "{what}: {name}: the incremental's own sectors"
        );
        for s in (0..SIZE).step_by(SECTOR as usize) {
            let (a, b) = (s as usize, (s + SECTOR) as usize);
            if before[k][a..b] != after[k][a..b] {
                assert!(
                    covered(&expect[k], s, SECTOR),
                    "{what}: {name}: sector {s} changed but is not in the incremental"
                );
            }
        }
    }
}
