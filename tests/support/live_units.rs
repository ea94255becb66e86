// Shared by tests/vm_live.rs and tests/vm_live_delete.rs through `include!`
// (textual, so it uses the including file's imports): the units of
// `support::units` on VMs of SIZE-byte disks holding UNITS units each, and
// the VM both build.

#[allow(unused_imports)]
use support::units::{allowed, decode, file_hash, last_seq, unit_bytes, Log, Rec, UNIT};

const UNITS: u64 = 48;
const SIZE: u64 = 8 << 20;

#[allow(dead_code)]
fn unit_offset(u: u64) -> u64 {
    support::units::unit_offset(u, UNITS, SIZE)
}

/// One writer thread per disk, each writing its disk's units in a
/// pseudo-random order and flushing every `flush_every` writes.
type Writers = support::units::Writers;

#[allow(dead_code)]
trait PerDisk {
    fn start(disks: &[Arc<LiveDisk>], flush_every: u64, clock: &Arc<AtomicU64>) -> Writers;
    /// Each unit's sequence going on after the last write of `before`.
    fn start_after(
        disks: &[Arc<LiveDisk>],
        flush_every: u64,
        clock: &Arc<AtomicU64>,
        before: &Log,
    ) -> Writers;
}

impl PerDisk for Writers {
    fn start(disks: &[Arc<LiveDisk>], flush_every: u64, clock: &Arc<AtomicU64>) -> Writers {
        Writers::per_disk(disks, UNITS, flush_every, clock)
    }
    fn start_after(
        disks: &[Arc<LiveDisk>],
        flush_every: u64,
        clock: &Arc<AtomicU64>,
        before: &Log,
    ) -> Writers {
        Writers::per_disk_after(disks, UNITS, flush_every, clock, before)
    }
}

#[allow(dead_code)]
fn read_units(path: &Path) -> Vec<Vec<u8>> {
    support::units::read_units(path, UNITS)
}

#[allow(dead_code)]
fn live_units(d: &LiveDisk) -> Vec<Vec<u8>> {
    support::units::live_units(d, UNITS)
}

/// Every unit of `top` read by libvhdi (`pyvhdi` with `set_parent`).
#[allow(dead_code)]
fn vhdi_units(top: &Path) -> Vec<Vec<u8>> {
    support::units::vhdi_units(top, UNITS)
}

/// Every unit of the state whose disks are `disks` (disk `d` at `d`)
/// holds at least the write of it that a flush which returned before the
/// stamp `before` made durable.
#[allow(dead_code)]
fn assert_flushed_kept(log: &Log, disks: &[PathBuf], before: u64, ctx: &str) {
    for (d, p) in disks.iter().enumerate() {
        let units = read_units(p);
        for u in 0..UNITS {
            let seq = decode(d, u, &units[u as usize], ctx);
            let want = log.flushed_seq(d, u, before);
            assert!(
                seq >= want,
                "{ctx}: disk {d} unit {u}: seq {seq}, flushed {want}"
            );
        }
    }
}

#[allow(dead_code)]
fn pyvhdi() -> bool {
    support::units::pyvhdi()
}

/// A VM with `n` disks of SIZE bytes (1 MiB blocks) in `root`.
#[allow(dead_code)]
fn build(root: &Path, n: usize, kind: CheckpointType) -> PathBuf {
    build_as(root, n, kind, false)
}

/// [`build`], the disks dynamic VHDs (2 MiB blocks) when `vhd`.
#[allow(dead_code)]
fn build_as(root: &Path, n: usize, kind: CheckpointType, vhd: bool) -> PathBuf {
    let mut disks = Vec::new();
    for i in 0..n {
        let ext = if vhd { "vhd" } else { "vhdx" };
        let p = root.join(format!("d{i}")).join(format!("disk{i}.{ext}"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if vhd {
            Disk::create_vhd(&p, &ckpt::VhdOptions::new(SIZE))
        } else {
            Disk::create(&p, &CreateOptions::new(SIZE).block_size(1 << 20))
        }
        .unwrap()
        .close()
        .unwrap();
        disks.push(p);
    }
    let dir = root.join("vm");
    let mut spec = VmSpec::new("live", disks);
    spec.settings.checkpoint_type = kind;
    Vm::create(&dir, &spec).unwrap();
    dir
}

/// A VM of two disks made by [`build`] in `root`, opened and attached:
/// its folder, the VM and its two live handles.
#[allow(dead_code)]
fn attached(root: &Path, kind: CheckpointType) -> (PathBuf, Vm, Vec<Arc<LiveDisk>>) {
    attached_as(root, kind, false)
}

/// [`attached`], the disks VHDs when `vhd`.
#[allow(dead_code)]
fn attached_as(root: &Path, kind: CheckpointType, vhd: bool) -> (PathBuf, Vm, Vec<Arc<LiveDisk>>) {
    let dir = build_as(root, 2, kind, vhd);
    let mut vm = Vm::open(&dir).unwrap();
    let disks = vec![vm.disk(0).unwrap(), vm.disk(1).unwrap()];
    (dir, vm, disks)
}
