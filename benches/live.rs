//! Live disks: what the gate costs a 4 KiB write or read against a plain
//! [`Disk`], and the pause a writer sees while its disks switch to new
//! children (1 and 4 disks of 4 GiB virtual size, in /tmp and /dev/shm).
//!
//! A plain harness (`cargo bench --bench live`); prints its numbers.
//! `CKPT_BENCH_DIRS` (colon-separated) replaces the folders tried.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ckpt::disk::live::{pause_all, NewChild};
use ckpt::{ChildOptions, CreateOptions, Disk, LiveDisk};

const GIB: u64 = 1 << 30;
const SIZE: u64 = 4 * GIB;
const IO: usize = 4096;
/// Offsets are spread over this much of the disk.
const SPAN: u64 = 256 << 20;

fn next(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*x >> 24) % (SPAN / IO as u64) * IO as u64
}

/// ns per 4 KiB operation, `n` of them, at pseudo-random offsets.
fn per_op(n: usize, mut op: impl FnMut(u64)) -> f64 {
    let mut x = 7u64;
    let t = Instant::now();
    for _ in 0..n {
        op(next(&mut x));
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn overhead(dir: &Path) {
    let p = dir.join("overhead.vhdx");
    let _ = std::fs::remove_file(&p);
    let disk = Disk::create(&p, &CreateOptions::new(SIZE)).unwrap();
    let buf = vec![0x5au8; IO];
    let mut rbuf = vec![0u8; IO];
    // Allocate the span first, so both loops write in place.
    for off in (0..SPAN).step_by(1 << 20) {
        disk.write_at(&buf, off).unwrap();
    }
    disk.flush().unwrap();
    let n = 200_000;
    let live = LiveDisk::new(disk);
    for round in 0..3 {
        let lw = per_op(n, |o| live.write_at(&buf, o).unwrap());
        let lr = per_op(n, |o| live.read_at(&mut rbuf, o).unwrap());
        let (dw, dr) = live.with_disk(|d| {
            (
                per_op(n, |o| d.write_at(&buf, o).unwrap()),
                per_op(n, |o| d.read_at(&mut rbuf, o).unwrap()),
            )
        });
        println!(
            "{} round {round}: write {dw:.0} ns (Disk) vs {lw:.0} ns (LiveDisk), \
             read {dr:.0} ns vs {lr:.0} ns",
            dir.display()
        );
    }
    live.close().unwrap();
    let _ = std::fs::remove_file(&p);
}

/// `disks` disks, one writer thread each writing 4 KiB in a loop (and
/// flushing every `flush_every` writes, 0: never), while the main thread
/// switches all of them together `switches` times.
fn pause(dir: &Path, disks: usize, switches: usize, flush_every: u64) {
    let sub = dir.join(format!("ckpt-live-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sub);
    std::fs::create_dir_all(&sub).unwrap();
    let live: Vec<Arc<LiveDisk>> = (0..disks)
        .map(|d| {
            let p = sub.join(format!("d{d}.vhdx"));
            Arc::new(LiveDisk::new(
                Disk::create(&p, &CreateOptions::new(SIZE)).unwrap(),
            ))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = live
        .iter()
        .enumerate()
        .map(|(d, disk)| {
            let disk = disk.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let buf = vec![d as u8 + 1; IO];
                let mut x = d as u64 + 1;
                let mut lat = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let o = next(&mut x);
                    let t = Instant::now();
                    disk.write_at(&buf, o).unwrap();
                    lat.push(t.elapsed());
                    n += 1;
                    if flush_every > 0 && n % flush_every == 0 {
                        disk.flush().unwrap();
                    }
                }
                lat
            })
        })
        .collect();
    let mut switch_times = Vec::new();
    let mut pause_times = Vec::new();
    for k in 0..switches {
        thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let children: Vec<NewChild> = live
            .iter()
            .enumerate()
            .map(|(d, l)| {
                l.prepare_child(
                    sub.join(format!("d{d}_{k}.avhdx")),
                    &ChildOptions::default(),
                )
                .unwrap()
            })
            .collect();
        let refs: Vec<&LiveDisk> = live.iter().map(|l| &**l).collect();
        let p0 = Instant::now();
        pause_all(&refs).unwrap().push_children(children).unwrap();
        pause_times.push(p0.elapsed());
        switch_times.push(t.elapsed());
    }
    thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Release);
    let mut lat: Vec<Duration> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    lat.sort_unstable();
    let p99 = lat[lat.len() * 99 / 100];
    let max = *lat.last().unwrap();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{}: {disks} disk(s) x {} GiB, flush every {flush_every} writes, {switches} switches: writer 4 KiB latency max {:.2} ms, \
         p99 {:.3} ms, p50 {:.3} ms over {} writes; pause (exclusive section) max {:.2} ms; \
         whole switch (with child creation) max {:.2} ms",
        dir.display(),
        SIZE / GIB,
        ms(max),
        ms(p99),
        ms(lat[lat.len() / 2]),
        lat.len(),
        ms(*pause_times.iter().max().unwrap()),
        ms(*switch_times.iter().max().unwrap()),
    );
    for l in live {
        Arc::try_unwrap(l).unwrap().close().unwrap();
    }
    let _ = std::fs::remove_dir_all(&sub);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // of the kind: then only a short smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let dirs: Vec<String> = match std::env::var("CKPT_BENCH_DIRS") {
        Ok(v) => v.split(':').map(String::from).collect(),
        Err(_) => vec!["/tmp".into(), "/dev/shm".into()],
    };
    for d in &dirs {
        let dir = Path::new(d);
        if !dir.is_dir() {
            println!("{d}: not a folder, skipped");
            continue;
        }
        if !full {
            pause(dir, 1, 1, 0);
            continue;
        }
        overhead(dir);
        for flush_every in [0, 256] {
            pause(dir, 1, 10, flush_every);
            pause(dir, 4, 10, flush_every);
        }
    }
}
