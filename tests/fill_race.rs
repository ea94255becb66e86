//! A read racing the first write into a block of a differencing disk that
//! still reads through to its parent sees the parent's data or the new
//! data, never anything else (issue 10: the BAT entry of a block being
//! filled was published before its data was in the file, so such a read
//! saw zeros).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ckpt::io::{MemStorage, Storage};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};

const BS: u64 = 1 << 20;
const BLOCKS: u64 = 8;
const SECTOR: usize = 512;

/// A memory storage whose large writes (block data) take a moment, so that
/// a reader running meanwhile falls into the window between a block's
/// allocation and its data reaching the file.
#[derive(Debug)]
struct SlowWrites {
    inner: MemStorage,
}

impl Storage for SlowWrites {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.len() as u64 >= BS / 2 {
            std::thread::sleep(Duration::from_millis(3));
        }
        self.inner.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.allocate(offset, len)
    }
}

/// Sector `i` of the parent (`seed` 1) or of a round's new data: non-zero,
/// different per sector and per seed.
fn sector(seed: u8, i: u64) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    for (j, b) in s.iter_mut().enumerate() {
        *b = (i as u8)
            .wrapping_mul(31)
            .wrapping_add(j as u8)
            .wrapping_add(seed)
            | 0x80;
    }
    s[0] = seed;
    s
}

fn block_data(seed: u8, block: u64) -> Vec<u8> {
    let per = BS / SECTOR as u64;
    (0..per)
        .flat_map(|k| sector(seed, block * per + k))
        .collect()
}

fn parent() -> Arc<dyn Storage> {
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let d = Disk::create_on(
        storage.clone(),
        &CreateOptions::new(BLOCKS * BS).block_size(BS as u32),
    )
    .unwrap();
    for b in 0..BLOCKS {
        d.write_at(&block_data(1, b), b * BS).unwrap();
    }
    d.close().unwrap();
    storage
}

/// A fresh child of `parent`, open as a chain.
fn child(parent: &Arc<dyn Storage>) -> Disk {
    let p = Disk::open_storage(parent.clone(), OpenMode::ReadOnly).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(SlowWrites {
        inner: MemStorage::new(),
    });
    let opts = ChildOptions {
        block_size: BS as u32,
        ..ChildOptions::default()
    };
    Disk::create_child_on(storage.clone(), &p, &opts).unwrap();
    drop(p);
    Disk::open_storage_chain(vec![storage, parent.clone()], OpenMode::ReadWrite).unwrap()
}

/// Every sector of `got` (block `block`) is the parent's or round `seed`'s.
fn check(got: &[u8], block: u64, seed: u8, round: usize) {
    let per = BS / SECTOR as u64;
    for (k, s) in got.chunks(SECTOR).enumerate() {
        let i = block * per + k as u64;
        if s != sector(1, i) && s != sector(seed, i) {
            let zeros = s.iter().all(|&b| b == 0);
            panic!(
                "round {round}: block {block} sector {k} is neither the parent's nor the new \
                 data (all zeros: {zeros})"
            );
        }
    }
}

/// Drive `write` (the writer's work for one round) against a reader that
/// reads every block in a loop until the writer is done.
fn race(rounds: usize, write: impl Fn(&Disk, u8) + Sync) {
    let base = parent();
    for round in 0..rounds {
        let seed = 2 + round as u8;
        let disk = child(&base);
        let done = AtomicBool::new(false);
        let mut reads = 0u64;
        std::thread::scope(|s| {
            s.spawn(|| {
                write(&disk, seed);
                done.store(true, Ordering::SeqCst);
            });
            let mut buf = vec![0u8; BS as usize];
            while !done.load(Ordering::SeqCst) {
                for b in 0..BLOCKS {
                    disk.read_at(&mut buf, b * BS).unwrap();
                    check(&buf, b, seed, round);
                    reads += 1;
                }
            }
        });
        assert!(reads > 0);
        // Afterwards: exactly the new data.
        let mut buf = vec![0u8; BS as usize];
        for b in 0..BLOCKS {
            disk.read_at(&mut buf, b * BS).unwrap();
            assert!(
                buf == block_data(seed, b),
                "round {round}: block {b} after the writes"
            );
        }
        disk.close().unwrap();
    }
}

#[test]
fn whole_block_writes_never_expose_an_unwritten_block() {
    race(6, |disk, seed| {
        for b in 0..BLOCKS {
            disk.write_at(&block_data(seed, b), b * BS).unwrap();
        }
    });
}

#[test]
fn partial_block_writes_never_expose_unwritten_sectors() {
    // Each block in two halves: the first half allocates the block as
    // partly present, the second fills it.
    race(4, |disk, seed| {
        for b in 0..BLOCKS {
            let data = block_data(seed, b);
            let h = data.len() / 2;
            disk.write_at(&data[..h], b * BS).unwrap();
            disk.write_at(&data[h..], b * BS + h as u64).unwrap();
        }
    });
}
