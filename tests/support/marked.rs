//! Small VM disks marked with one byte: a 4 MiB disk (1 MiB blocks), and
//! a 4 KiB run of one byte at 1 MiB that tells which state a disk holds.

use std::path::Path;

use ckpt::{CreateOptions, Disk, OpenMode};

pub const SIZE: u64 = 4 << 20;

/// A SIZE-byte dynamic disk at `p` (its folder made).
pub fn make_disk(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    Disk::create(p, &CreateOptions::new(SIZE).block_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
}

/// Mark the disk `p` (with its chain) with `byte`.
pub fn put(p: &Path, byte: u8) {
    let d = Disk::open(p, OpenMode::ReadWrite).unwrap();
    d.write_at(&[byte; 4096], 1 << 20).unwrap();
    d.close().unwrap();
}

/// The mark of the disk `p`; panics on a mixed one.
pub fn get(p: &Path) -> u8 {
    let d = Disk::open(p, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut b = [0u8; 4096];
    d.read_at(&mut b, 1 << 20).unwrap();
    assert!(b.iter().all(|&x| x == b[0]), "{}: mixed", p.display());
    b[0]
}
