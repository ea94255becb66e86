//! Chain benchmarks: random 4 KiB reads through one layer and through a
//! 16-deep chain of differencing disks that each hold scattered data, and
//! merging 64 MiB of changes into the parent.
//!
//! ```text
//! cargo bench --bench chain
//! ```
//!
//! The QEMU comparison (a qcow2 chain of the same shape, `qemu-img commit`)
//! is in the README; it uses `ckpt bench` next to `qemu-img bench`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use ckpt::disk::merge::{self, MergeOptions};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;
const IO: usize = 4096;
const DEPTH: usize = 16;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A full base disk and `DEPTH` children above it, each with 64 KiB
/// writes scattered over the disk. Returns the base and the top.
fn chain(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base.vhdx");
    let d = Disk::create(&base, &CreateOptions::new(SIZE)).expect("create the base");
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 | 1).collect();
    for i in 0..SIZE / MIB {
        d.write_at(&chunk, i * MIB).expect("fill the base");
    }
    d.close().expect("close the base");
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut parent = base.clone();
    for i in 0..DEPTH {
        let child = dir.join(format!("c{i}.avhdx"));
        let c =
            Disk::create_child(&child, &parent, &ChildOptions::default()).expect("create a child");
        for _ in 0..16 {
            let off = rng.next() % (SIZE - 64 * 1024) / 512 * 512;
            c.write_at(&chunk[..64 * 1024], off)
                .expect("write into a child");
        }
        c.close().expect("close a child");
        parent = child;
    }
    (base, parent)
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (base, top) = chain(dir.path());
    let mut g = c.benchmark_group("chain-4k-random-read");
    g.throughput(Throughput::Bytes(IO as u64))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    for (name, path) in [("1 layer", &base), ("16 deep", &top)] {
        let disk = Disk::open(path, OpenMode::ReadOnly).expect("open");
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let mut buf = vec![0u8; IO];
        g.bench_function(name, |b| {
            b.iter(|| {
                let off = rng.next() % (SIZE / IO as u64) * IO as u64;
                disk.read_at(&mut buf, off).expect("read");
                black_box(&buf);
            })
        });
    }
    g.finish();
}

fn merges(c: &mut Criterion) {
    let mut g = c.benchmark_group("merge");
    g.throughput(Throughput::Bytes(64 * MIB))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10);
    let data: Vec<u8> = (0..64 * MIB).map(|i| (i % 253) as u8 | 1).collect();
    g.bench_function("64 MiB child into its parent", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("temp dir");
                let base = dir.path().join("base.vhdx");
                Disk::create(&base, &CreateOptions::new(SIZE))
                    .expect("base")
                    .close()
                    .expect("close");
                let child = dir.path().join("child.avhdx");
                let c = Disk::create_child(&child, &base, &ChildOptions::default()).expect("child");
                c.write_at(&data, 10 * MIB).expect("write");
                c.close().expect("close");
                (dir, child)
            },
            |(dir, child)| {
                merge::merge(&child, MergeOptions::default()).expect("merge");
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, reads, merges);
criterion_main!(benches);
