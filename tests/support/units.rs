//! Self-describing 4 KiB units for the tests of live disks and attached
//! VMs (`tests/live.rs`, `tests/live_merge.rs`, and through
//! `live_units.rs` `tests/vm_live.rs` and `tests/vm_live_delete.rs`):
//! every write of a unit carries its disk, unit index and sequence number,
//! so a read tells exactly which write it holds and that it is whole.
//! Writer threads stamp each write (and flush) on a logical clock; the
//! checks compare what a layer holds with what the stamps allow.

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use ckpt::{Disk, LiveDisk, OpenMode};

pub const UNIT: usize = 4096;

/// The bytes of write `seq` of unit `unit` on disk `disk` (seq 0 is
/// "never written": zeros).
pub fn unit_bytes(disk: usize, unit: u64, seq: u64) -> Vec<u8> {
    if seq == 0 {
        return vec![0u8; UNIT];
    }
    let mut b = super::pattern(disk as u64 * 1_000_003 + unit * 7919 + seq, 0, UNIT);
    b[..8].copy_from_slice(&unit.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&(disk as u64).to_le_bytes());
    b
}

/// The sequence number a unit holds; panics on anything but a whole write
/// of that very unit of that disk (torn, misplaced or foreign data).
pub fn decode(disk: usize, unit: u64, b: &[u8], what: &str) -> u64 {
    if b.iter().all(|&x| x == 0) {
        return 0;
    }
    let u = u64::from_le_bytes(b[..8].try_into().unwrap());
    let seq = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let d = u64::from_le_bytes(b[16..24].try_into().unwrap());
    assert_eq!(
        (d, u),
        (disk as u64, unit),
        "{what}: disk {disk} unit {unit} holds disk {d} unit {u}'s data"
    );
    assert!(
        b == unit_bytes(disk, unit, seq).as_slice(),
        "{what}: disk {disk} unit {unit} holds a damaged write (seq {seq})"
    );
    seq
}

/// Where unit `u` of `units` lives on a disk of `size` bytes.
pub fn unit_offset(u: u64, units: u64, size: u64) -> u64 {
    u * (size / units / UNIT as u64 * UNIT as u64)
}

/// One write as a writer saw it (clock stamps before it began and after
/// it returned).
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    pub disk: usize,
    pub unit: u64,
    pub seq: u64,
    pub start: u64,
    pub end: u64,
}

/// What the writer threads did: every write that returned, every flush
/// that returned (disk, stamp before it began, stamp after it returned)
/// and the first error (a writer stops at it).
#[derive(Debug, Default)]
pub struct Log {
    pub recs: Vec<Rec>,
    pub flushes: Vec<(usize, u64, u64)>,
    pub error: Option<String>,
}

impl Log {
    /// The last write of (`disk`, `unit`) that a flush which returned
    /// before the stamp `before` made durable (it ended before that flush
    /// began).
    pub fn flushed_seq(&self, disk: usize, unit: u64, before: u64) -> u64 {
        let Some(last) = self
            .flushes
            .iter()
            .filter(|f| f.0 == disk && f.2 < before)
            .map(|f| f.1)
            .max()
        else {
            return 0;
        };
        self.recs
            .iter()
            .filter(|r| r.disk == disk && r.unit == unit && r.end < last)
            .map(|r| r.seq)
            .max()
            .unwrap_or(0)
    }
}

/// Writer threads, each owning some (disk, unit) slots that it writes in a
/// pseudo-random order, stamping each write and flushing the disk it just
/// wrote every `flush_every` writes (0: never), until stopped or an error.
pub struct Writers {
    pub stop: Arc<AtomicBool>,
    pub handles: Vec<thread::JoinHandle<Log>>,
}

impl Writers {
    /// One thread per disk, writing all `units` units of its disk.
    pub fn per_disk(
        disks: &[Arc<LiveDisk>],
        units: u64,
        flush_every: u64,
        clock: &Arc<AtomicU64>,
    ) -> Writers {
        Writers::per_disk_after(disks, units, flush_every, clock, &Log::default())
    }

    /// As [`Writers::per_disk`], each unit's sequence going on after the
    /// last write of `before` (writers started again, e.g. after an apply),
    /// so that no two writes of a unit ever write the same bytes.
    pub fn per_disk_after(
        disks: &[Arc<LiveDisk>],
        units: u64,
        flush_every: u64,
        clock: &Arc<AtomicU64>,
        before: &Log,
    ) -> Writers {
        let slots = (0..disks.len())
            .map(|d| (0..units).map(|u| (d, u)).collect())
            .collect();
        let seqs = (0..disks.len())
            .map(|d| (0..units).map(|u| last_seq(&before.recs, d, u)).collect())
            .collect();
        Writers::spawn(disks, units, slots, flush_every, clock, 0x9876_5432, seqs)
    }

    /// `threads` threads over all disks: thread `t` owns the units
    /// `u % threads == t` of every disk.
    pub fn sharing(
        disks: &[Arc<LiveDisk>],
        units: u64,
        threads: u64,
        flush_every: u64,
        clock: &Arc<AtomicU64>,
    ) -> Writers {
        let slots = (0..threads)
            .map(|t| {
                (0..disks.len())
                    .flat_map(|d| (0..units).filter(|u| u % threads == t).map(move |u| (d, u)))
                    .collect()
            })
            .collect();
        let seqs = vec![vec![0u64; units as usize]; disks.len()];
        Writers::spawn(disks, units, slots, flush_every, clock, 0x1234_5678, seqs)
    }

    fn spawn(
        disks: &[Arc<LiveDisk>],
        units: u64,
        slots: Vec<Vec<(usize, u64)>>,
        flush_every: u64,
        clock: &Arc<AtomicU64>,
        seed: u64,
        seqs: Vec<Vec<u64>>,
    ) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = slots
            .into_iter()
            .enumerate()
            .map(|(t, mine)| {
                let disks: Vec<Arc<LiveDisk>> = disks.to_vec();
                let stop = stop.clone();
                let clock = clock.clone();
                let mut seqs = seqs.clone();
                thread::spawn(move || {
                    let mut log = Log::default();
                    let mut x = seed + t as u64;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let (d, unit) = mine[(x >> 40) as usize % mine.len()];
                        let seq = seqs[d][unit as usize] + 1;
                        let off = unit_offset(unit, units, disks[d].virtual_size());
                        let start = clock.fetch_add(1, Ordering::SeqCst);
                        if let Err(e) = disks[d].write_at(&unit_bytes(d, unit, seq), off) {
                            log.error = Some(e.to_string());
                            break;
                        }
                        seqs[d][unit as usize] = seq;
                        let end = clock.fetch_add(1, Ordering::SeqCst);
                        log.recs.push(Rec {
                            disk: d,
                            unit,
                            seq,
                            start,
                            end,
                        });
                        n += 1;
                        if flush_every > 0 && n % flush_every == 0 {
                            let began = clock.fetch_add(1, Ordering::SeqCst);
                            if let Err(e) = disks[d].flush() {
                                log.error = Some(e.to_string());
                                break;
                            }
                            let returned = clock.fetch_add(1, Ordering::SeqCst);
                            log.flushes.push((d, began, returned));
                        }
                        if n % 64 == 0 {
                            thread::yield_now();
                        }
                    }
                    log
                })
            })
            .collect();
        Writers { stop, handles }
    }

    /// Stop the writers; all they did.
    pub fn finish(self) -> Log {
        self.stop.store(true, Ordering::Release);
        let mut all = Log::default();
        for h in self.handles {
            let l = h.join().unwrap();
            all.recs.extend(l.recs);
            all.flushes.extend(l.flushes);
            all.error = all.error.or(l.error);
        }
        all
    }
}

/// The range of sequence numbers unit (`disk`, `unit`) may hold in a
/// state frozen by an operation stamped `[begin, end]`: from the last
/// write that returned before `begin` to the last one that started before
/// `end`.
pub fn allowed(recs: &[Rec], disk: usize, unit: u64, begin: u64, end: u64) -> (u64, u64) {
    let mine = recs.iter().filter(|r| r.disk == disk && r.unit == unit);
    let lo = mine
        .clone()
        .filter(|r| r.end < begin)
        .map(|r| r.seq)
        .max()
        .unwrap_or(0);
    let hi = mine
        .filter(|r| r.start < end)
        .map(|r| r.seq)
        .max()
        .unwrap_or(0);
    (lo, hi)
}

/// The last write of (`disk`, `unit`).
pub fn last_seq(recs: &[Rec], disk: usize, unit: u64) -> u64 {
    recs.iter()
        .filter(|r| r.disk == disk && r.unit == unit)
        .map(|r| r.seq)
        .max()
        .unwrap_or(0)
}

/// Every unit of the disk `path` opens to (read-only, with its chain).
pub fn read_units(path: &Path, units: u64) -> Vec<Vec<u8>> {
    let d = Disk::open(path, OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    units_of(|b, o| d.read_at(b, o).unwrap(), units, d.virtual_size())
}

/// Every unit, read through a live handle.
pub fn live_units(d: &LiveDisk, units: u64) -> Vec<Vec<u8>> {
    units_of(|b, o| d.read_at(b, o).unwrap(), units, d.virtual_size())
}

/// Every unit of a disk of `size` bytes, each read with `read(buf, offset)`.
fn units_of(read: impl Fn(&mut [u8], u64), units: u64, size: u64) -> Vec<Vec<u8>> {
    (0..units)
        .map(|u| {
            let mut b = vec![0u8; UNIT];
            read(&mut b, unit_offset(u, units, size));
            b
        })
        .collect()
}

pub fn file_hash(p: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    std::fs::read(p).unwrap().hash(&mut h);
    h.finish()
}

/// Reads `count` units `stride` bytes apart from the top of a chain given
/// base first (libvhdi), written out concatenated.
const READ_UNITS: &str = r#"
import sys
import pyvhdi
stride, count = int(sys.argv[1]), int(sys.argv[2])
files = []
for p in sys.argv[3:]:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(1, len(files)):
    files[i].set_parent(files[i - 1])
top = files[-1]
out = sys.stdout.buffer
for u in range(count):
    data = top.read_buffer_at_offset(4096, u * stride)
    if len(data) != 4096:
        sys.exit("short read at unit %d" % u)
    out.write(data)
for f in reversed(files):
    f.close()
"#;

/// Every unit of the disk `top` as libvhdi reads it through its chain
/// (the chain libckpt finds, handed to `pyvhdi` with `set_parent`).
pub fn vhdi_units(top: &Path, units: u64) -> Vec<Vec<u8>> {
    let d = Disk::open(top, OpenMode::ReadOnly).unwrap();
    let size = d.virtual_size();
    let mut chain: Vec<PathBuf> = d.chain().into_iter().map(|p| p.unwrap()).collect();
    drop(d);
    chain.reverse();
    vhdi_chain_units(&chain, units, size)
}

/// Every unit of the top of `base_first` (a chain of disks of `size`
/// bytes, as the test knows it) as libvhdi reads it.
pub fn vhdi_chain_units(base_first: &[PathBuf], units: u64, size: u64) -> Vec<Vec<u8>> {
    let chain: Vec<String> = base_first.iter().map(|p| p.display().to_string()).collect();
    let stride = unit_offset(1, units, size).to_string();
    let count = units.to_string();
    let mut args: Vec<&str> = vec![&stride, &count];
    args.extend(chain.iter().map(String::as_str));
    let data = super::python(READ_UNITS, &args);
    assert_eq!(data.len(), units as usize * UNIT);
    data.chunks(UNIT).map(<[u8]>::to_vec).collect()
}

/// Whether pyvhdi is there (under `CI=true` its absence fails).
pub fn pyvhdi() -> bool {
    let ok = super::have_pyvhdi();
    if !ok {
        super::missing("the Python module pyvhdi (Debian package python3-libvhdi)");
    }
    ok
}
