//! A byte model of disk operations for the fault tests (tests/transient.rs,
//! tests/crash_big.rs, tests/disk_full.rs): operations that know their
//! bytes, apply themselves to a model of any window of the virtual disk,
//! and the "old or new" judgement of what a disk reads after a fault.

use ckpt::Disk;

use super::{first_diff, pattern};

/// Logical sector size the judgement works in.
pub const SECTOR: u64 = 512;

/// One step of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Write `pattern(seed, 0, len)` at `off`.
    Write { off: u64, len: u64, seed: u64 },
    /// Write zeros over `[off, off+len)` (what a write-zeroes request without
    /// "may trim" does: `Disk` has no separate call for it).
    Zero { off: u64, len: u64 },
    /// Trim `[off, off+len)`: reads as zeros afterwards.
    Trim { off: u64, len: u64 },
    /// Flush: everything before it is durable once it returns Ok.
    Flush,
    /// Close (flush + empty log); the handle is gone afterwards.
    Close,
}

impl Op {
    /// The range the operation changes, if any.
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Write { off, len, .. } | Op::Zero { off, len } | Op::Trim { off, len } => {
                Some((off, len))
            }
            Op::Flush | Op::Close => None,
        }
    }

    /// Whether it is a flush or a close.
    pub fn is_barrier(&self) -> bool {
        matches!(self, Op::Flush | Op::Close)
    }

    /// The bytes the operation leaves in its range.
    pub fn data(&self) -> Vec<u8> {
        match *self {
            Op::Write { len, seed, .. } => pattern(seed, 0, len as usize),
            Op::Zero { len, .. } | Op::Trim { len, .. } => vec![0u8; len as usize],
            _ => Vec::new(),
        }
    }

    /// Apply to `model`, a window of the virtual disk starting at `base`
    /// (only the overlapping part changes).
    pub fn apply(&self, model: &mut [u8], base: u64) {
        let Some((off, len)) = self.range() else {
            return;
        };
        let lo = off.max(base);
        let hi = (off + len).min(base + model.len() as u64);
        if lo >= hi {
            return;
        }
        let dst = &mut model[(lo - base) as usize..(hi - base) as usize];
        match *self {
            Op::Write { seed, .. } => {
                // Only the overlapping part of the pattern.
                let p = pattern(seed, 0, (hi - off) as usize);
                dst.copy_from_slice(&p[(lo - off) as usize..]);
            }
            _ => dst.fill(0),
        }
    }

    /// Run on an open disk (not [`Op::Close`], which takes the handle).
    pub fn run(&self, disk: &Disk) -> ckpt::Result<()> {
        match *self {
            Op::Write { off, len, seed } => disk.write_at(&pattern(seed, 0, len as usize), off),
            Op::Zero { off, len } => disk.write_at(&vec![0u8; len as usize], off),
            Op::Trim { off, len } => disk.trim(off, len),
            Op::Flush => disk.flush(),
            Op::Close => panic!("Op::Close needs the handle by value"),
        }
    }
}

/// Judge `got` (the window at `base` of what a disk reads after a fault)
/// against the model: outside the sectors of `pending` (the operations
/// after the last completed flush, including the one that failed), exactly
/// `durable`; inside, each sector in one of the states the pending
/// operations passed through. Panics with the first offending sector.
pub fn verify_old_or_new(ctx: &str, got: &[u8], base: u64, durable: &[u8], pending: &[Op]) {
    assert_eq!(got.len(), durable.len(), "{ctx}: window length");
    for (s, (g, d)) in got
        .chunks(SECTOR as usize)
        .zip(durable.chunks(SECTOR as usize))
        .enumerate()
    {
        if g == d {
            continue;
        }
        let sbase = base + s as u64 * SECTOR;
        let touched = pending.iter().any(|op| {
            op.range()
                .is_some_and(|(o, l)| o < sbase + g.len() as u64 && sbase < o + l)
        });
        assert!(
            touched,
            "{ctx}: sector at virtual offset {sbase:#x} changed although nothing after the last \
             completed flush touched it: {}",
            first_diff(g, d)
        );
        let mut state = d.to_vec();
        let mut ok = false;
        for op in pending {
            op.apply(&mut state, sbase);
            if state == g {
                ok = true;
                break;
            }
        }
        assert!(
            ok,
            "{ctx}: sector at virtual offset {sbase:#x} matches none of its states \
             (pending {pending:?}); vs durable: {}; vs newest: {}",
            first_diff(g, d),
            first_diff(g, &state)
        );
    }
}

/// Read `len` bytes at `off`.
pub fn read_window(disk: &Disk, off: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0usize;
    while done < buf.len() {
        let n = (buf.len() - done).min(4 << 20);
        disk.read_at(&mut buf[done..done + n], off + done as u64)
            .unwrap_or_else(|e| panic!("read of {n} bytes at {:#x}: {e}", off + done as u64));
        done += n;
    }
    buf
}

/// `total` event numbers to try, at most `max` of them: all when there are
/// few, else an even spread that always holds the first and the last.
pub fn sample(total: u64, max: u64) -> Vec<u64> {
    if total <= max {
        return (0..total).collect();
    }
    let mut v: Vec<u64> = (0..max).map(|i| i * (total - 1) / (max - 1)).collect();
    v.dedup();
    v
}
