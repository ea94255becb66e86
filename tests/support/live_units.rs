// Shared by tests/vm_live.rs and tests/vm_live_delete.rs through `include!`
// (textual, so it uses the including file's imports): self-describing
// units written by writer threads, their log, and the checks against it.

const UNIT: usize = 4096;
const UNITS: u64 = 48;
const SIZE: u64 = 8 << 20;

// ------------------------------------------------------------------ units

/// The bytes of write `seq` of unit `unit` on disk `disk` (seq 0: zeros).
fn unit_bytes(disk: usize, unit: u64, seq: u64) -> Vec<u8> {
    let mut b = support::pattern(disk as u64 * 1_000_003 + unit * 7919 + seq, 0, UNIT);
    b[..8].copy_from_slice(&unit.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&(disk as u64).to_le_bytes());
    b
}

/// The sequence number a unit holds; panics on anything but a whole write
/// of that very unit.
fn decode(disk: usize, unit: u64, b: &[u8], what: &str) -> u64 {
    if b.iter().all(|&x| x == 0) {
        return 0;
    }
    let seq = u64::from_le_bytes(b[8..16].try_into().unwrap());
    assert!(
        b == unit_bytes(disk, unit, seq).as_slice(),
        "{what}: disk {disk} unit {unit} holds damaged or foreign data"
    );
    seq
}

fn unit_offset(u: u64) -> u64 {
    u * (SIZE / UNITS / UNIT as u64 * UNIT as u64)
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    disk: usize,
    unit: u64,
    seq: u64,
    start: u64,
    end: u64,
}

#[derive(Debug, Default)]
struct Log {
    recs: Vec<Rec>,
    /// (disk, stamp taken after the flush returned).
    flushes: Vec<(usize, u64)>,
    error: Option<String>,
}

impl Log {
    /// The last write of (`disk`, `unit`) a returned flush made durable.
    fn flushed_seq(&self, disk: usize, unit: u64, before: u64) -> u64 {
        let Some(last) = self
            .flushes
            .iter()
            .filter(|f| f.0 == disk && f.1 < before)
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

/// One writer thread per disk, each writing its disk's units in a
/// pseudo-random order and flushing every `flush_every` writes.
struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<Log>>,
}

impl Writers {
    fn start(disks: &[Arc<LiveDisk>], flush_every: u64, clock: &Arc<AtomicU64>) -> Writers {
        Writers::start_after(disks, flush_every, clock, &Log::default())
    }

    /// As [`Writers::start`], each unit's sequence going on after the last
    /// write of `before` (writers started again, e.g. after an apply), so
    /// that no two writes of a unit ever write the same bytes.
    fn start_after(
        disks: &[Arc<LiveDisk>],
        flush_every: u64,
        clock: &Arc<AtomicU64>,
        before: &Log,
    ) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = disks
            .iter()
            .enumerate()
            .map(|(d, disk)| {
                let disk = disk.clone();
                let stop = stop.clone();
                let clock = clock.clone();
                let mut seqs: Vec<u64> = (0..UNITS).map(|u| last_seq(&before.recs, d, u)).collect();
                thread::spawn(move || {
                    let mut log = Log::default();
                    let mut x = 0x9876_5432u64 + d as u64;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let unit = (x >> 40) % UNITS;
                        let seq = seqs[unit as usize] + 1;
                        let start = clock.fetch_add(1, Ordering::SeqCst);
                        if let Err(e) = disk.write_at(&unit_bytes(d, unit, seq), unit_offset(unit))
                        {
                            log.error = Some(e.to_string());
                            break;
                        }
                        seqs[unit as usize] = seq;
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
                            if let Err(e) = disk.flush() {
                                log.error = Some(e.to_string());
                                break;
                            }
                            log.flushes.push((d, clock.fetch_add(1, Ordering::SeqCst)));
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

    fn finish(self) -> Log {
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

/// The sequence numbers unit (`disk`, `unit`) may hold in a state frozen
/// by a create stamped `[begin, end]`.
fn allowed(recs: &[Rec], disk: usize, unit: u64, begin: u64, end: u64) -> (u64, u64) {
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

fn last_seq(recs: &[Rec], disk: usize, unit: u64) -> u64 {
    recs.iter()
        .filter(|r| r.disk == disk && r.unit == unit)
        .map(|r| r.seq)
        .max()
        .unwrap_or(0)
}

fn read_units(path: &Path) -> Vec<Vec<u8>> {
    let d = Disk::open(path, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{e}"));
    (0..UNITS)
        .map(|u| {
            let mut b = vec![0u8; UNIT];
            d.read_at(&mut b, unit_offset(u)).unwrap();
            b
        })
        .collect()
}

fn live_units(d: &LiveDisk) -> Vec<Vec<u8>> {
    (0..UNITS)
        .map(|u| {
            let mut b = vec![0u8; UNIT];
            d.read_at(&mut b, unit_offset(u)).unwrap();
            b
        })
        .collect()
}
