//! I/O benchmarks: sequential and random 4 KiB reads and writes on a
//! pre-populated 256 MiB dynamic VHDX, and a raw → VHDX conversion of a
//! 64 MiB raw image holding some data.
//!
//! ```text
//! cargo bench --bench io
//! ```
//!
//! For a comparison with QEMU on the same workload, use `ckpt bench` next
//! to `qemu-img bench`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use ckpt::disk::convert;
use ckpt::{CreateOptions, Disk, OpenMode};

const MIB: u64 = 1 << 20;
const DISK_SIZE: u64 = 256 * MIB;
const IO: usize = 4096;

/// A small xorshift generator: reproducible random offsets, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A 4 KiB-aligned offset of a 4 KiB request inside the disk.
    fn offset(&mut self) -> u64 {
        (self.next() % (DISK_SIZE / IO as u64)) * IO as u64
    }
}

/// A 256 MiB dynamic VHDX whose every block holds data.
fn populated_disk(path: &Path) -> Disk {
    let disk = Disk::create(path, &CreateOptions::new(DISK_SIZE)).expect("create the disk");
    let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 | 1).collect();
    for i in 0..DISK_SIZE / MIB {
        disk.write_at(&chunk, i * MIB).expect("populate the disk");
    }
    disk.close().expect("close the disk");
    Disk::open(path, OpenMode::ReadWrite).expect("reopen the disk")
}

fn disk_io(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = populated_disk(&dir.path().join("bench.vhdx"));
    let mut g = c.benchmark_group("vhdx-4k");
    g.throughput(Throughput::Bytes(IO as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    let mut buf = vec![0u8; IO];
    let mut pos = 0u64;
    g.bench_function("sequential read", |b| {
        b.iter(|| {
            disk.read_at(&mut buf, pos).expect("read");
            pos = (pos + IO as u64) % DISK_SIZE;
            black_box(&buf);
        })
    });
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    g.bench_function("random read", |b| {
        b.iter(|| {
            disk.read_at(&mut buf, rng.offset()).expect("read");
            black_box(&buf);
        })
    });
    let data = vec![0xa5u8; IO];
    let mut pos = 0u64;
    g.bench_function("sequential write", |b| {
        b.iter(|| {
            disk.write_at(&data, pos).expect("write");
            pos = (pos + IO as u64) % DISK_SIZE;
        })
    });
    g.bench_function("random write", |b| {
        b.iter(|| disk.write_at(&data, rng.offset()).expect("write"))
    });
    g.finish();
    disk.close().expect("close");
}

fn convert_raw(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = dir.path().join("src.raw");
    // 64 MiB, one MiB in four holding data.
    let mut img = vec![0u8; (64 * MIB) as usize];
    for (i, mib) in img.chunks_mut(MIB as usize).enumerate() {
        if i % 4 == 0 {
            mib.iter_mut()
                .enumerate()
                .for_each(|(j, b)| *b = (j % 253) as u8 ^ i as u8);
        }
    }
    std::fs::write(&raw, &img).expect("write the raw image");
    drop(img);
    let dst = dir.path().join("dst.vhdx");
    let opts = convert::ConvertOptions {
        format: Some(convert::Format::Vhdx),
        fixed: false,
        block_size: None,
        no_sync: false,
        azure: false,
    };

    let mut g = c.benchmark_group("convert");
    g.throughput(Throughput::Bytes(64 * MIB))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("raw to vhdx, 64 MiB", |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_file(&dst);
            },
            |()| convert::convert(&raw, &dst, &opts, &mut |_, _| {}).expect("convert"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, disk_io, convert_raw);
criterion_main!(benches);
