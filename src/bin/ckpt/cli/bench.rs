//! `ckpt bench`: the workload of `qemu-img bench`, on the library.
//!
//! Request `i` (counting from 0) is `bufsize` bytes at:
//! * `offset` for the first request (as given, not wrapped);
//! * then each next offset is the previous one plus `step`, wrapped modulo
//!   `virtual_size - bufsize` (0 when the disk is not larger than one
//!   request) — QEMU's rule since its commit ff2ab634, which keeps every
//!   request inside the disk.
//!
//! With several threads, request `i` goes to thread `i % threads`; all
//! threads share one [`Disk`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ckpt::{Disk, Error, Result};

/// The parameters of a run (the names of `qemu-img bench`'s options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchParams {
    /// Write (`-w`) instead of read.
    pub write: bool,
    /// Bytes per request (`-s`).
    pub bufsize: u64,
    /// Number of requests (`-c`).
    pub count: u64,
    /// Offset increment between requests (`-S`).
    pub step: u64,
    /// Offset of the first request (`-o`).
    pub offset: u64,
    /// Threads sharing the disk (`-t`).
    pub threads: usize,
    /// Byte written by a write test (`--pattern`).
    pub pattern: u8,
    /// Flush whenever the number of remaining requests is a multiple of
    /// this (`--flush-interval`, write tests only).
    pub flush_interval: Option<u64>,
}

/// The offset of request `i` on a disk of `size` bytes.
pub fn request_offset(p: &BenchParams, size: u64, i: u64) -> u64 {
    if i == 0 {
        return p.offset;
    }
    if size <= p.bufsize {
        return 0;
    }
    let m = (size - p.bufsize) as u128;
    // (((offset + step) % m + step) % m ...) == (offset + i*step) % m
    ((p.offset as u128 + i as u128 * p.step as u128) % m) as u64
}

/// Check the parameters against a disk of `size` bytes.
pub fn validate(p: &BenchParams, size: u64) -> Result<()> {
    let bad = |s: String| Err(Error::InvalidArgument(s));
    if p.bufsize == 0 {
        return bad("the request size (-s) must not be 0".into());
    }
    if p.bufsize > 1 << 30 {
        return bad("the request size (-s) must be at most 1 GiB".into());
    }
    if p.threads == 0 {
        return bad("the number of threads (-t) must not be 0".into());
    }
    if p.flush_interval == Some(0) {
        return bad("--flush-interval must not be 0".into());
    }
    if p.flush_interval.is_some() && !p.write {
        return bad("--flush-interval is only available in write tests (-w)".into());
    }
    let fits = matches!(p.offset.checked_add(p.bufsize), Some(end) if end <= size);
    if p.count > 0 && !fits {
        return Err(Error::OutOfRange {
            offset: p.offset,
            len: p.bufsize,
            size,
        });
    }
    Ok(())
}

/// Run the requests and return the elapsed time (requests only; the caller
/// closes the disk afterwards, as `qemu-img bench` does outside its timing).
pub fn run(disk: &Disk, p: &BenchParams) -> Result<Duration> {
    let size = disk.virtual_size();
    validate(p, size)?;
    let threads = (p.threads as u64).min(p.count.max(1)) as usize;
    let completed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Error>> = Mutex::new(None);

    let worker = |t: usize| {
        let mut buf = vec![p.pattern; p.bufsize as usize];
        let mut i = t as u64;
        while i < p.count && !stop.load(Ordering::Relaxed) {
            let off = request_offset(p, size, i);
            let r = if p.write {
                disk.write_at(&buf, off)
            } else {
                disk.read_at(&mut buf, off)
            };
            // The shared count only when a flush interval needs it: an
            // atomic all threads add to on every request would cost more
            // than the request's own locking.
            let r = r.and_then(|()| match p.flush_interval {
                Some(n) => {
                    let done = completed.fetch_add(1, Ordering::Relaxed) + 1;
                    if (p.count - done) % n == 0 {
                        disk.flush()
                    } else {
                        Ok(())
                    }
                }
                None => Ok(()),
            });
            if let Err(e) = r {
                stop.store(true, Ordering::Relaxed);
                let mut slot = failure.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(e);
                return;
            }
            i += threads as u64;
        }
    };

    let start = Instant::now();
    if threads == 1 {
        worker(0);
    } else {
        std::thread::scope(|s| {
            for t in 0..threads {
                let worker = &worker;
                s.spawn(move || worker(t));
            }
        });
    }
    let elapsed = start.elapsed();
    match failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(offset: u64, step: u64, bufsize: u64) -> BenchParams {
        BenchParams {
            write: false,
            bufsize,
            count: 10,
            step,
            offset,
            threads: 1,
            pattern: 0,
            flush_interval: None,
        }
    }

    /// The offsets follow QEMU's loop exactly: add the step, wrap modulo
    /// size - bufsize.
    #[test]
    fn offsets_match_qemu_loop() {
        let size = 1 << 20;
        for (offset, step, bufsize) in [
            (0, 4096, 4096),
            (12345, 65536, 4096),
            (0, 0, 512),
            (8192, 3 << 19, 65536),
        ] {
            let p = params(offset, step, bufsize);
            let mut o = offset;
            for i in 0..1000 {
                assert_eq!(request_offset(&p, size, i), o, "request {i}");
                assert!(o + bufsize <= size);
                o = (o + step) % (size - bufsize);
            }
        }
        // A disk no larger than a request: every later request at 0.
        let p = params(0, 4096, 1 << 20);
        assert_eq!(request_offset(&p, 1 << 20, 5), 0);
    }

    #[test]
    fn validation() {
        let size = 1 << 20;
        assert!(validate(&params(0, 4096, 4096), size).is_ok());
        assert!(validate(&params(size - 4096, 4096, 4096), size).is_ok());
        assert!(validate(&params(size - 4095, 4096, 4096), size).is_err());
        assert!(validate(&params(0, 4096, 0), size).is_err());
        let mut p = params(0, 4096, 4096);
        p.flush_interval = Some(10);
        assert!(validate(&p, size).is_err());
        p.write = true;
        assert!(validate(&p, size).is_ok());
    }
}
