//! Checkpoint create on an attached VM: the pause a guest writer sees, with
//! 1 and 4 disks of 4 GiB virtual size, in /tmp and /dev/shm:
//!
//! - the gate's closed time (`LiveDisk::pause_stats`: from the moment new
//!   requests wait, the wait for those in flight included, until the gate
//!   opens), the longest over all disks and creates;
//! - max and p99 of the writers' 4 KiB write latency while checkpoints are
//!   taken, against the same loop with no create, and against the same
//!   loop while the main thread only flushes every disk as often (the file
//!   system's own stalls while dirty data is written back: the floor no
//!   switch can go below).
//!
//! A plain harness (`cargo bench --bench vm_live`); prints its numbers.
//! `CKPT_BENCH_DIRS` (colon-separated) replaces the folders tried.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ckpt::checkpoint::{CheckpointType, Hooks, Vm, VmSpec, VmState};
use ckpt::{CreateOptions, Disk, LiveDisk};

const SIZE: u64 = 4 << 30;
const IO: usize = 4096;
const SPAN: u64 = 256 << 20;
const CREATES: usize = 5;

struct Quiesce;
impl Hooks for Quiesce {
    fn quiesce(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Write latencies (µs) of one writer per disk while `work` runs.
fn latencies(disks: &[Arc<LiveDisk>], work: impl FnOnce()) -> Vec<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = d.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let buf = vec![0x5au8; IO];
                let mut x = 11u64 + i as u64;
                let mut out = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let off = (x >> 24) % (SPAN / IO as u64) * IO as u64;
                    let t = Instant::now();
                    d.write_at(&buf, off).unwrap();
                    out.push(t.elapsed().as_micros() as u64);
                }
                out
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    work();
    thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Release);
    let mut all: Vec<u64> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_unstable();
    all
}

fn p(v: &[u64], q: f64) -> u64 {
    v.get(((v.len() as f64 - 1.0) * q) as usize)
        .copied()
        .unwrap_or(0)
}

fn run(dir: &Path, n: usize) {
    let root = dir.join(format!("ckpt-bench-vm-live-{n}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut paths = Vec::new();
    for i in 0..n {
        let p = root.join(format!("disk{i}.vhdx"));
        let d = Disk::create(&p, &CreateOptions::new(SIZE)).unwrap();
        // Allocate the span, so writes land in place.
        let buf = vec![1u8; IO];
        for off in (0..SPAN).step_by(1 << 20) {
            d.write_at(&buf, off).unwrap();
        }
        d.close().unwrap();
        paths.push(p);
    }
    let mut spec = VmSpec::new("bench", paths);
    spec.settings.checkpoint_type = CheckpointType::Production;
    let mut vm = Vm::create(&root.join("vm"), &spec).unwrap();
    vm.set_state(VmState::Running).unwrap();
    let disks: Vec<Arc<LiveDisk>> = (0..n).map(|i| vm.disk(i).unwrap()).collect();
    let base = latencies(&disks, || thread::sleep(Duration::from_millis(300)));
    let flushing = latencies(&disks, || {
        for _ in 0..CREATES {
            for d in &disks {
                d.flush().unwrap();
            }
            thread::sleep(Duration::from_millis(40));
        }
    });
    let mut took = Vec::new();
    let during = latencies(&disks, || {
        for k in 0..CREATES {
            let t = Instant::now();
            vm.create_checkpoint(&format!("c{k}"), None, &mut Quiesce)
                .unwrap();
            took.push(t.elapsed().as_millis());
            thread::sleep(Duration::from_millis(40));
        }
    });
    let paused = disks.iter().map(|d| d.pause_stats().max).max().unwrap();
    println!(
        "{} {n} disk(s): pause (gate closed) max {} µs; write latency µs: without create p99 {} \
         max {}; while flushing only p99 {} max {}; during {CREATES} creates p99 {} max {} \
         (creates took {took:?} ms)",
        dir.display(),
        paused.as_micros(),
        p(&base, 0.99),
        base.last().unwrap_or(&0),
        p(&flushing, 0.99),
        flushing.last().unwrap_or(&0),
        p(&during, 0.99),
        during.last().unwrap_or(&0),
    );
    drop(disks);
    vm.detach().unwrap();
    drop(vm);
    let _ = std::fs::remove_dir_all(&root);
}

fn main() {
    let dirs: Vec<String> = match std::env::var("CKPT_BENCH_DIRS") {
        Ok(v) if !v.is_empty() => v.split(':').map(str::to_string).collect(),
        _ => vec!["/tmp".into(), "/dev/shm".into()],
    };
    for d in dirs.iter().filter(|d| Path::new(d).is_dir()) {
        for n in [1, 4] {
            run(Path::new(d), n);
        }
    }
}
