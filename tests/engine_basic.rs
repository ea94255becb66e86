//! Basic engine behaviour on memory and on files (the wider suites live in
//! other test files).

use std::sync::Arc;

use ckpt::io::MemStorage;
use ckpt::{CreateOptions, Disk, DiskKind, OpenMode};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn dynamic_roundtrip_in_memory() {
    let mem = MemStorage::new();
    let d = Disk::create_on(
        Arc::new(mem.clone()),
        &CreateOptions::new(64 << 20).block_size(1 << 20),
    )
    .unwrap();
    assert_eq!(d.info().kind, DiskKind::Dynamic);
    let a = pattern(3 << 20, 7);
    d.write_at(&a, 12345).unwrap();
    d.flush().unwrap();
    let mut b = vec![0u8; a.len()];
    d.read_at(&mut b, 12345).unwrap();
    assert_eq!(a, b);
    d.close().unwrap();
    let d = Disk::open_storage(
        Arc::new(MemStorage::from_vec(mem.snapshot())),
        OpenMode::ReadOnly,
    )
    .unwrap();
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
    assert!(matches!(
        d.read_at(&mut b, (8 << 20) - 1),
        Err(ckpt::Error::OutOfRange { .. })
    ));
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
    let d = Disk::create_on(
        Arc::new(mem.clone()),
        &CreateOptions::new(16 << 20).block_size(1 << 20),
    )
    .unwrap();
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
    let d = Disk::create_on(
        Arc::new(mem.clone()),
        &CreateOptions::new(5 << 20).fixed(true).block_size(2 << 20),
    )
    .unwrap();
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
    let d = Disk::create_on(
        Arc::new(base.clone()),
        &CreateOptions::new(16 << 20).block_size(1 << 20),
    )
    .unwrap();
    let mut model = vec![0u8; 16 << 20];
    let a = pattern(5 << 20, 3);
    d.write_at(&a, 1000).unwrap();
    model[1000..1000 + a.len()].copy_from_slice(&a);
    d.close().unwrap();
    let base_disk = Disk::open_storage(Arc::new(base.clone()), OpenMode::ReadOnly).unwrap();
    let child = MemStorage::new();
    Disk::create_child_on(
        Arc::new(child.clone()),
        &base_disk,
        &ChildOptions::default(),
    )
    .unwrap();
    let chain = Disk::open_storage_chain(
        vec![Arc::new(child.clone()), Arc::new(base.clone())],
        OpenMode::ReadWrite,
    )
    .unwrap();
    assert_eq!(chain.info().kind, DiskKind::Differencing);
    let mut b = vec![0u8; 16 << 20];
    chain.read_at(&mut b, 0).unwrap();
    assert!(b == model);
    // sub-sector, partial-block and whole-block writes, trims
    for (off, len, seed) in [
        (7u64, 1usize, 1u8),
        (4095, 3, 2),
        (2 << 20, 2 << 20, 3),
        (3 << 20, 700, 4),
        (9 << 20, 100_000, 5),
    ] {
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
    let chain = Disk::open_storage_chain(
        vec![Arc::new(child.clone()), Arc::new(base.clone())],
        OpenMode::ReadOnly,
    )
    .unwrap();
    chain.read_at(&mut b, 0).unwrap();
    assert!(b == model);
}

#[test]
fn merge_changes_flatten_reparent_on_files() {
    use ckpt::disk::merge::{self, MergeOptions, Range};
    use ckpt::ChildOptions;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    let d = Disk::create(&base, &CreateOptions::new(32 << 20).block_size(1 << 20)).unwrap();
    let mut model = vec![0u8; 32 << 20];
    let a = pattern(6 << 20, 9);
    d.write_at(&a, 0).unwrap();
    model[..6 << 20].copy_from_slice(&a);
    d.close().unwrap();
    // base <- c1 <- c2 <- c3
    let mut parent = base.clone();
    let mut files = vec![];
    for i in 1..=3u8 {
        let p = dir.path().join(format!("c{i}.avhdx"));
        let c = Disk::create_child(&p, &parent, &ChildOptions::default()).unwrap();
        let off = i as u64 * (5 << 20) + 3;
        let data = pattern(1 << 20, i);
        c.write_at(&data, off).unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        if i == 2 {
            c.trim(0, 2 << 20).unwrap();
            model[..2 << 20].fill(0);
        }
        c.close().unwrap();
        files.push(p.clone());
        parent = p;
    }
    let check = |path: &std::path::Path, model: &[u8]| {
        let d = Disk::open(path, OpenMode::ReadOnly).unwrap();
        let mut b = vec![0u8; model.len()];
        d.read_at(&mut b, 0).unwrap();
        assert!(b == model, "content differs for {}", path.display());
    };
    check(&files[2], &model);
    // changes of c3's own layer: one byte-exact range rounded to sectors
    let top = Disk::open(&files[2], OpenMode::ReadOnly).unwrap();
    let ch = top.changed_ranges(1).unwrap();
    assert_eq!(
        ch,
        vec![Range {
            offset: 15 << 20,
            length: (1 << 20) + 512
        }]
    );
    drop(top);
    // merge c2 into c1: c3 gets re-pointed at c1
    let rep = merge::merge(&files[1], MergeOptions::default()).unwrap();
    assert_eq!(rep.repointed, vec![files[2].clone()]);
    assert!(!files[1].exists());
    check(&files[2], &model);
    assert_eq!(
        Disk::open(&files[2], OpenMode::ReadOnly).unwrap().depth(),
        3
    );
    // merge c3 into the base directly
    merge::merge(
        &files[2],
        MergeOptions {
            into: Some(base.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!files[2].exists() && !files[0].exists());
    check(&base, &model);
    // flatten a new chain and reparent
    let c4 = dir.path().join("c4.avhdx");
    Disk::create_child(&c4, &base, &ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
    let flat = dir.path().join("flat.vhdx");
    merge::flatten(&c4, &flat, &CreateOptions::new(0), None).unwrap();
    check(&flat, &model);
    let moved = dir.path().join("moved.vhdx");
    std::fs::rename(&base, &moved).unwrap();
    assert!(Disk::open(&c4, OpenMode::ReadOnly).is_err());
    merge::reparent(&c4, &moved, false).unwrap();
    check(&c4, &model);
    // a parent that is another disk: refused unless forced
    assert!(matches!(
        merge::reparent(&c4, &flat, false),
        Err(ckpt::Error::ParentMismatch { .. })
    ));
}

/// Deep chains with data scattered at sector granularity in every layer:
/// reads through the owner caches equal a byte model, whatever the order
/// the caches are filled in.
#[test]
fn deep_chain_reads_match_the_model() {
    use ckpt::ChildOptions;
    let size = 8u64 << 20;
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut model = vec![0u8; size as usize];
    let base = MemStorage::new();
    let d = Disk::create_on(
        Arc::new(base.clone()),
        &CreateOptions::new(size).block_size(2 << 20),
    )
    .unwrap();
    let p = pattern(3 << 20, 1);
    d.write_at(&p, 1 << 20).unwrap();
    model[1 << 20..4 << 20].copy_from_slice(&p);
    d.close().unwrap();
    let mut stores = vec![base];
    for layer in 0..7u8 {
        let parents: Vec<Arc<dyn ckpt::io::Storage>> = stores
            .iter()
            .rev()
            .map(|s| Arc::new(s.clone()) as _)
            .collect();
        let parent = Disk::open_storage_chain(parents, OpenMode::ReadOnly).unwrap();
        let child = MemStorage::new();
        Disk::create_child_on(
            Arc::new(child.clone()),
            &parent,
            &ChildOptions {
                block_size: 1 << 20,
                log_size: 1 << 20,
            },
        )
        .unwrap();
        drop(parent);
        stores.push(child);
        let chain: Vec<Arc<dyn ckpt::io::Storage>> = stores
            .iter()
            .rev()
            .map(|s| Arc::new(s.clone()) as _)
            .collect();
        let d = Disk::open_storage_chain(chain, OpenMode::ReadWrite).unwrap();
        for _ in 0..20 {
            let off = next() % size;
            let len = (next() % 20000 + 1).min(size - off) as usize;
            let data = pattern(len, layer * 17 + 3);
            d.write_at(&data, off).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
        }
        if layer == 3 {
            d.trim(2 << 20, 1 << 20).unwrap();
            model[2 << 20..3 << 20].fill(0);
        }
        d.close().unwrap();
    }
    for round in 0..3 {
        let chain: Vec<Arc<dyn ckpt::io::Storage>> = stores
            .iter()
            .rev()
            .map(|s| Arc::new(s.clone()) as _)
            .collect();
        let d = Disk::open_storage_chain(chain, OpenMode::ReadOnly).unwrap();
        for _ in 0..400 {
            let off = next() % size;
            let len = (next() % 70000 + 1).min(size - off) as usize;
            let mut b = vec![0u8; len];
            d.read_at(&mut b, off).unwrap();
            assert!(
                b == model[off as usize..off as usize + len],
                "round {round}: read {off}+{len} differs"
            );
        }
        let mut all = vec![0u8; size as usize];
        d.read_at(&mut all, 0).unwrap();
        assert!(all == model);
    }
}

#[test]
fn merge_refuses_without_space_and_changes_nothing() {
    use ckpt::disk::merge::{self, MergeOptions};
    use ckpt::ChildOptions;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    Disk::create(&base, &CreateOptions::new(64 << 20))
        .unwrap()
        .close()
        .unwrap();
    let child = dir.path().join("child.avhdx");
    let c = Disk::create_child(&child, &base, &ChildOptions::default()).unwrap();
    c.write_at(&[5u8; 4096], 40 << 20).unwrap();
    c.close().unwrap();
    let before = (
        std::fs::read(&base).unwrap(),
        std::fs::read(&child).unwrap(),
    );
    // One 32 MiB block of the base must be allocated.
    let opts = MergeOptions {
        space_limit: Some((32 << 20) - 1),
        ..Default::default()
    };
    let e = merge::merge(&child, opts).unwrap_err();
    assert_eq!(e.kind(), ckpt::ErrorKind::NoSpace, "{e}");
    assert!(e.to_string().contains("needs up to 33554432 bytes"), "{e}");
    assert_eq!(
        before,
        (
            std::fs::read(&base).unwrap(),
            std::fs::read(&child).unwrap()
        )
    );
    let opts = MergeOptions {
        space_limit: Some(32 << 20),
        ..Default::default()
    };
    merge::merge(&child, opts).unwrap();
}

/// Threads writing different bytes of the same sectors of a differencing
/// disk (each write a read-modify-write of its sector) lose nothing.
#[test]
fn concurrent_sub_sector_writes_in_a_child_are_not_lost() {
    use ckpt::ChildOptions;
    let base = MemStorage::new();
    let d = Disk::create_on(
        Arc::new(base.clone()),
        &CreateOptions::new(4 << 20).block_size(1 << 20),
    )
    .unwrap();
    d.close().unwrap();
    let parent = Disk::open_storage(Arc::new(base.clone()), OpenMode::ReadOnly).unwrap();
    let child = MemStorage::new();
    Disk::create_child_on(Arc::new(child.clone()), &parent, &ChildOptions::default()).unwrap();
    drop(parent);
    let chain = Disk::open_storage_chain(
        vec![Arc::new(child.clone()), Arc::new(base.clone())],
        OpenMode::ReadWrite,
    )
    .unwrap();
    const THREADS: usize = 4;
    const BYTES: usize = 8192;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let chain = &chain;
            s.spawn(move || {
                for i in (t..BYTES).step_by(THREADS) {
                    chain
                        .write_at(&[(i % 251) as u8 + 1], 1000 + i as u64)
                        .unwrap();
                }
            });
        }
    });
    let mut b = vec![0u8; BYTES];
    chain.read_at(&mut b, 1000).unwrap();
    for (i, v) in b.iter().enumerate() {
        assert_eq!(*v, (i % 251) as u8 + 1, "byte {i} was lost");
    }
}

/// A read-write open brings stale locator paths up to date, so a chain
/// keeps opening after the child moves away and then the whole tree moves.
#[test]
fn read_write_open_refreshes_stale_parent_paths() {
    use ckpt::ChildOptions;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("one");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    let base = root.join("a").join("base.vhdx");
    let d = Disk::create(&base, &CreateOptions::new(8 << 20)).unwrap();
    d.write_at(b"parent", 0).unwrap();
    d.close().unwrap();
    let child = root.join("a").join("child.avhdx");
    Disk::create_child(&child, &base, &ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
    // The child moves: only its absolute path still leads to the parent.
    let moved = root.join("b").join("child.avhdx");
    std::fs::rename(&child, &moved).unwrap();
    Disk::open(&moved, OpenMode::ReadWrite)
        .unwrap()
        .close()
        .unwrap();
    // The whole tree moves: only the refreshed relative path can work.
    let root2 = t.path().join("two");
    std::fs::rename(&root, &root2).unwrap();
    let moved2 = root2.join("b").join("child.avhdx");
    let d = Disk::open(&moved2, OpenMode::ReadWrite).unwrap();
    let mut b = [0u8; 6];
    d.read_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"parent");
    d.close().unwrap();
    // The child moves again: only the refreshed absolute path can work.
    let elsewhere = t.path().join("child.avhdx");
    std::fs::rename(&moved2, &elsewhere).unwrap();
    let d = Disk::open(&elsewhere, OpenMode::ReadOnly).unwrap();
    assert_eq!(
        d.chain()[1].as_deref(),
        Some(
            std::fs::canonicalize(root2.join("a").join("base.vhdx"))
                .unwrap()
                .as_path()
        )
    );
}

/// Patch a system metadata item of a VHDX file in place (no checksum
/// covers the metadata region).
fn patch_metadata_item(path: &std::path::Path, item: &str, value: &[u8]) {
    let mut img = std::fs::read(path).unwrap();
    let rd64 = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let rd32 = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let guid = |s: &str| uuid::Uuid::parse_str(s).unwrap().to_bytes_le();
    let rt = 192 * 1024;
    let meta_guid = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E");
    let count = rd32(&img, rt + 8) as usize;
    let meta = (0..count)
        .map(|i| rt + 16 + 32 * i)
        .find(|&o| img[o..o + 16] == meta_guid)
        .map(|o| rd64(&img, o + 16) as usize)
        .unwrap();
    let n = u16::from_le_bytes([img[meta + 10], img[meta + 11]]) as usize;
    let id = guid(item);
    let off = (0..n)
        .map(|i| meta + 32 + 32 * i)
        .find(|&o| img[o..o + 16] == id)
        .map(|o| rd32(&img, o + 16) as usize)
        .unwrap();
    img[meta + off..meta + off + value.len()].copy_from_slice(value);
    std::fs::write(path, img).unwrap();
}

/// A merge gives the destination the child's virtual-disk items.
#[test]
fn merge_copies_the_childs_virtual_disk_metadata() {
    use ckpt::disk::merge::{self, MergeOptions};
    use ckpt::ChildOptions;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhdx");
    Disk::create(&base, &CreateOptions::new(8 << 20))
        .unwrap()
        .close()
        .unwrap();
    let child = dir.path().join("child.avhdx");
    let c = Disk::create_child(&child, &base, &ChildOptions::default()).unwrap();
    c.write_at(b"x", 0).unwrap();
    c.close().unwrap();
    let new_id = uuid::Uuid::new_v4();
    patch_metadata_item(
        &child,
        "BECA12AB-B2E6-4523-93EF-C309E000C746",
        &new_id.to_bytes_le(),
    );
    patch_metadata_item(
        &child,
        "CDA348C7-445D-4471-9CC9-E9885251C556",
        &512u32.to_le_bytes(),
    );
    merge::merge(&child, MergeOptions::default()).unwrap();
    let info = Disk::open(&base, OpenMode::ReadOnly).unwrap().info();
    assert_eq!(info.disk_id, new_id);
    assert_eq!(info.physical_sector_size, 512);
    assert!(ckpt::check(&base).unwrap().is_ok());
}
