//! Basic engine behaviour on memory and on files (the wider suites live in
//! other test files).

use std::sync::Arc;

use ckpt::io::MemStorage;
use ckpt::{CreateOptions, Disk, DiskKind, OpenMode};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn dynamic_roundtrip_in_memory() {
    let mem = MemStorage::new();
    let d = Disk::create_on(Arc::new(mem.clone()), &CreateOptions::new(64 << 20).block_size(1 << 20)).unwrap();
    assert_eq!(d.info().kind, DiskKind::Dynamic);
    let a = pattern(3 << 20, 7);
    d.write_at(&a, 12345).unwrap();
    d.flush().unwrap();
    let mut b = vec![0u8; a.len()];
    d.read_at(&mut b, 12345).unwrap();
    assert_eq!(a, b);
    d.close().unwrap();
    let d = Disk::open_storage(Arc::new(MemStorage::from_vec(mem.snapshot())), OpenMode::ReadOnly).unwrap();
    let mut b = vec![0u8; a.len()];
    d.read_at(&mut b, 12345).unwrap();
    assert_eq!(a, b);
    assert!(!d.info().log_dirty);
    let mut z = vec![1u8; 4096];
    d.read_at(&mut z, 60 << 20).unwrap();
    assert!(z.iter().all(|&x| x == 0));
}

#[test]
fn out_of_range_and_read_only() {
    let mem = MemStorage::new();
    let d = Disk::create_on(Arc::new(mem.clone()), &CreateOptions::new(8 << 20)).unwrap();
    let mut b = [0u8; 2];
    assert!(matches!(d.read_at(&mut b, (8 << 20) - 1), Err(ckpt::Error::OutOfRange { .. })));
    d.close().unwrap();
    let before = mem.snapshot();
    let d = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadOnly).unwrap();
    assert!(matches!(d.write_at(&b, 0), Err(ckpt::Error::ReadOnly)));
    drop(d);
    assert_eq!(before, mem.snapshot());
}

#[test]
fn trim_frees_whole_blocks() {
    let mem = MemStorage::new();
    let d = Disk::create_on(Arc::new(mem.clone()), &CreateOptions::new(16 << 20).block_size(1 << 20)).unwrap();
    d.write_at(&vec![0xabu8; 4 << 20], 0).unwrap();
    assert_eq!(d.info().allocated_bytes, 4 << 20);
    d.trim(1 << 20, 2 << 20).unwrap();
    d.trim(100, 200).unwrap();
    assert_eq!(d.info().allocated_bytes, 2 << 20);
    let mut b = vec![0u8; 4 << 20];
    d.read_at(&mut b, 0).unwrap();
    assert!(b[100..300].iter().all(|&x| x == 0));
    assert!(b[1 << 20..3 << 20].iter().all(|&x| x == 0));
    assert!(b[3 << 20..].iter().all(|&x| x == 0xab));
    d.flush().unwrap();
    // Freed space is reused.
    d.write_at(&[1u8; 10], 10 << 20).unwrap();
    d.close().unwrap();
}

#[test]
fn fixed_disk() {
    let mem = MemStorage::new();
    let d = Disk::create_on(Arc::new(mem.clone()), &CreateOptions::new(5 << 20).fixed(true).block_size(2 << 20)).unwrap();
    assert_eq!(d.info().kind, DiskKind::Fixed);
    d.write_at(b"xyz", (5 << 20) - 3).unwrap();
    d.close().unwrap();
    let d = Disk::open_storage(Arc::new(mem), OpenMode::ReadWrite).unwrap();
    let mut b = [0u8; 3];
    d.read_at(&mut b, (5 << 20) - 3).unwrap();
    assert_eq!(&b, b"xyz");
}

#[test]
fn differencing_chain_in_memory() {
    use ckpt::ChildOptions;
    let base = MemStorage::new();
    let d = Disk::create_on(Arc::new(base.clone()), &CreateOptions::new(16 << 20).block_size(1 << 20)).unwrap();
    let mut model = vec![0u8; 16 << 20];
    let a = pattern(5 << 20, 3);
    d.write_at(&a, 1000).unwrap();
    model[1000..1000 + a.len()].copy_from_slice(&a);
    d.close().unwrap();
    let base_disk = Disk::open_storage(Arc::new(base.clone()), OpenMode::ReadOnly).unwrap();
    let child = MemStorage::new();
    Disk::create_child_on(Arc::new(child.clone()), &base_disk, &ChildOptions::default()).unwrap();
    let chain = Disk::open_storage_chain(vec![Arc::new(child.clone()), Arc::new(base.clone())], OpenMode::ReadWrite).unwrap();
    assert_eq!(chain.info().kind, DiskKind::Differencing);
    let mut b = vec![0u8; 16 << 20];
    chain.read_at(&mut b, 0).unwrap();
    assert!(b == model);
    // sub-sector, partial-block and whole-block writes, trims
    for (off, len, seed) in [(7u64, 1usize, 1u8), (4095, 3, 2), (2 << 20, 2 << 20, 3), (3 << 20, 700, 4), (9 << 20, 100_000, 5)] {
        let p = pattern(len, seed);
        chain.write_at(&p, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&p);
    }
    chain.trim(4 << 20, 2 << 20).unwrap();
    model[4 << 20..6 << 20].fill(0);
    chain.trim(100, 50).unwrap();
    model[100..150].fill(0);
    chain.read_at(&mut b, 0).unwrap();
    assert!(b == model);
    chain.close().unwrap();
    let chain = Disk::open_storage_chain(vec![Arc::new(child.clone()), Arc::new(base.clone())], OpenMode::ReadOnly).unwrap();
    chain.read_at(&mut b, 0).unwrap();
    assert!(b == model);
}
