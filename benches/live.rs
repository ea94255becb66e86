//! Live disks: what the gate costs a 4 KiB write or read against a plain
//! [`Disk`], and the pause a writer sees while its disks switch to new
//! children (1 and 4 disks of 4 GiB virtual size, in /tmp and /dev/shm;
//! the fast switch of a live create and the slow one that flushes in the
//! pause): the gate's closed time ([`LiveDisk::pause_stats`]) and the
//! writers' latency, which also holds the file system's own stalls,
//! and a live merge: a guest's 4 KiB random-write throughput while layer 1
//! (`CKPT_BENCH_MERGE_MIB` MiB of changes, default 256; 1024 for the 1 GiB
//! of issue 11) is merged under it, as a fraction of its throughput without
//! a merge, and the live merge's duration against the offline merge of the
//! same data.
//!
//! A plain harness (`cargo bench --bench live`); prints its numbers.
//! `CKPT_BENCH_DIRS` (colon-separated) replaces the folders tried.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ckpt::disk::live::{pause_all, LiveMergeOptions, NewChild};
use ckpt::disk::merge::{self, MergeOptions};
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
/// switches all of them together `switches` times: with the fast switch of
/// a live create (`fast`: `Pause::switch_children`, nothing written in
/// the pause) or the slow one (`Pause::push_children`: each top flushed
/// and closed in the pause).
fn pause(dir: &Path, disks: usize, switches: usize, flush_every: u64, fast: bool) {
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
    for k in 0..switches {
        thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let children: Vec<NewChild> = live
            .iter()
            .enumerate()
            .map(|(d, l)| {
                let c = l
                    .prepare_child(
                        sub.join(format!("d{d}_{k}.avhdx")),
                        &ChildOptions::default(),
                    )
                    .unwrap();
                if !fast {
                    // The slow switch flushes in its pause: leave it little.
                    l.preflush().unwrap();
                }
                c
            })
            .collect();
        let refs: Vec<&LiveDisk> = live.iter().map(|l| &**l).collect();
        if fast {
            let sw = pause_all(&refs).unwrap().switch_children(children).unwrap();
            sw.flush_frozen().unwrap();
            sw.done().unwrap();
        } else {
            pause_all(&refs).unwrap().push_children(children).unwrap();
        }
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
    let paused = live.iter().map(|l| l.pause_stats().max).max().unwrap();
    println!(
        "{}: {} switch, {disks} disk(s) x {} GiB, flush every {flush_every} writes, {switches} \
         switches: writer 4 KiB latency max {:.2} ms, p99 {:.3} ms, p50 {:.3} ms over {} writes; \
         pause (gate closed) max {:.2} ms; whole switch (with child creation) max {:.2} ms",
        dir.display(),
        if fast { "fast" } else { "slow" },
        SIZE / GIB,
        ms(max),
        ms(p99),
        ms(lat[lat.len() / 2]),
        lat.len(),
        ms(paused),
        ms(*switch_times.iter().max().unwrap()),
    );
    for l in live {
        Arc::try_unwrap(l).unwrap().close().unwrap();
    }
    let _ = std::fs::remove_dir_all(&sub);
}

/// [base <- mid <- top] in `sub`, `mid` holding `bytes` of changes (1 MiB
/// writes, one every 2 MiB); `tag` names the files.
fn merge_chain(sub: &Path, tag: &str, bytes: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = sub.join(format!("base-{tag}.vhdx"));
    let mid = sub.join(format!("mid-{tag}.avhdx"));
    let top = sub.join(format!("top-{tag}.avhdx"));
    Disk::create(&base, &CreateOptions::new(SIZE))
        .unwrap()
        .close()
        .unwrap();
    let d = Disk::create_child(&mid, &base, &ChildOptions::default()).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    for i in 0..bytes >> 20 {
        d.write_at(&chunk, (i * 2) << 20).unwrap();
    }
    d.close().unwrap();
    Disk::create_child(&top, &mid, &ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
    (mid, top)
}

/// Remove the chains of [`merge_chain`] in `sub` (each measurement starts
/// with a file system as empty as the last one's).
fn clean(sub: &Path) {
    for e in std::fs::read_dir(sub).unwrap() {
        let _ = std::fs::remove_file(e.unwrap().path());
    }
}

/// A writer thread's 4 KiB random writes on `live` until `stop`: how many.
fn writer(live: &Arc<LiveDisk>, stop: &Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let (live, stop) = (live.clone(), stop.clone());
    thread::spawn(move || {
        let buf = vec![0x3cu8; IO];
        let mut x = 11u64;
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            live.write_at(&buf, next(&mut x)).unwrap();
            n += 1;
        }
        n
    })
}

/// Guest throughput during a live merge of `bytes` of changes against
/// without one, and the live merge's duration against the offline one.
fn live_merge(dir: &Path, bytes: u64, quiet: Duration) {
    let sub = dir.join(format!("ckpt-live-merge-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sub);
    std::fs::create_dir_all(&sub).unwrap();

    // The live merge with an idle guest (what the merge itself costs).
    let (_mid, top) = merge_chain(&sub, "idle", bytes);
    let live = LiveDisk::new(Disk::open(&top, ckpt::OpenMode::ReadWrite).unwrap());
    let t = Instant::now();
    let r = live.merge_down(1, LiveMergeOptions::default()).unwrap();
    let idle = t.elapsed();
    std::fs::remove_file(&r.merged).unwrap();
    live.close().unwrap();
    clean(&sub);

    let (mid, top) = merge_chain(&sub, "offline", bytes);
    let t = Instant::now();
    merge::merge(
        &mid,
        MergeOptions {
            descendants: Some(vec![top]),
            ..Default::default()
        },
    )
    .unwrap();
    let offline = t.elapsed();
    clean(&sub);

    let (_mid, top) = merge_chain(&sub, "live", bytes);
    let live = Arc::new(LiveDisk::new(
        Disk::open(&top, ckpt::OpenMode::ReadWrite).unwrap(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(&live, &stop);
    thread::sleep(quiet);
    stop.store(true, Ordering::Release);
    let alone = w.join().unwrap() as f64 / quiet.as_secs_f64();

    stop.store(false, Ordering::Release);
    let w = writer(&live, &stop);
    let t = Instant::now();
    let r = live.merge_down(1, LiveMergeOptions::default()).unwrap();
    let during = t.elapsed();
    stop.store(true, Ordering::Release);
    let merging = w.join().unwrap() as f64 / during.as_secs_f64();
    std::fs::remove_file(&r.merged).unwrap();
    Arc::try_unwrap(live).unwrap().close().unwrap();
    println!(
        "{}: live merge of {} MiB: guest 4 KiB writes {:.0}/s during it vs {:.0}/s without \
         ({:.0}%, goal >= 50%); live merge {:.2} s vs offline {:.2} s ({:.2}x, goal <= 1.5x; \
         {:.2} s with an idle guest)",
        dir.display(),
        bytes >> 20,
        merging,
        alone,
        100.0 * merging / alone,
        during.as_secs_f64(),
        offline.as_secs_f64(),
        during.as_secs_f64() / offline.as_secs_f64(),
        idle.as_secs_f64(),
    );
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
            pause(dir, 1, 1, 0, true);
            pause(dir, 1, 1, 0, false);
            live_merge(dir, 16 << 20, Duration::from_millis(200));
            continue;
        }
        // CKPT_BENCH_MERGE_ONLY=1: the live merge alone.
        if std::env::var_os("CKPT_BENCH_MERGE_ONLY").is_none() {
            overhead(dir);
            for flush_every in [0, 256] {
                for fast in [true, false] {
                    pause(dir, 1, 10, flush_every, fast);
                    pause(dir, 4, 10, flush_every, fast);
                }
            }
        }
        let mib: u64 = std::env::var("CKPT_BENCH_MERGE_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        live_merge(dir, mib << 20, Duration::from_secs(2));
    }
}
