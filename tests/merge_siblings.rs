//! A bare merge (no descendant list) refuses to break a sibling of the
//! merged layers wherever in the chain's folders it sits (issue 8: the
//! sibling check used to look only in each layer's own folder).

use std::path::{Path, PathBuf};

use ckpt::disk::merge::{self, MergeOptions};
use ckpt::{ChildOptions, CreateOptions, Disk, ErrorKind, OpenMode};

const SIZE: u64 = 8 << 20;

fn dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn put(p: &Path, off: u64, byte: u8) {
    let d = Disk::open(p, OpenMode::ReadWrite).unwrap();
    d.write_at(&[byte; 4096], off).unwrap();
    d.close().unwrap();
}

fn at(p: &Path, off: u64) -> u8 {
    let d = Disk::open(p, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut b = [0u8];
    d.read_at(&mut b, off).unwrap();
    b[0]
}

fn child(path: &Path, parent: &Path) {
    Disk::create_child(path, parent, &ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
}

#[test]
fn a_sibling_in_the_childs_folder_stops_the_merge() {
    let t = tempfile::tempdir().unwrap();
    let base = dir(t.path(), "a").join("base.vhdx");
    Disk::create(&base, &CreateOptions::new(SIZE))
        .unwrap()
        .close()
        .unwrap();
    put(&base, 0, 1);
    let b = dir(t.path(), "b");
    let c1 = b.join("c1.avhdx");
    let sibling = b.join("sibling.avhdx");
    child(&c1, &base);
    child(&sibling, &base);
    put(&c1, 0, 2);
    let e = merge::merge(&c1, MergeOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("sibling.avhdx"), "{e}");
    assert_eq!(at(&sibling, 0), 1, "the sibling changed");
    assert_eq!(at(&base, 0), 1);
    assert_eq!(at(&c1, 0), 2);
}

#[test]
fn a_sibling_of_a_removed_layer_in_a_folder_further_up_stops_the_merge() {
    let t = tempfile::tempdir().unwrap();
    let base = dir(t.path(), "a").join("base.vhdx");
    Disk::create(&base, &CreateOptions::new(SIZE))
        .unwrap()
        .close()
        .unwrap();
    put(&base, 0, 1);
    let mid = dir(t.path(), "b").join("mid.avhdx");
    child(&mid, &base);
    put(&mid, 0, 2);
    let c = dir(t.path(), "c");
    let top = c.join("top.avhdx");
    let sibling = c.join("other.avhdx");
    child(&top, &mid);
    child(&sibling, &mid);
    put(&top, 0, 3);
    let opts = MergeOptions {
        into: Some(base.clone()),
        ..Default::default()
    };
    let e = merge::merge(&top, opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(mid.exists(), "the sibling's parent was removed");
    assert_eq!(at(&sibling, 0), 2);
    assert_eq!(at(&top, 0), 3);
    // Without the sibling the same merge goes through.
    std::fs::remove_file(&sibling).unwrap();
    let opts = MergeOptions {
        into: Some(base.clone()),
        ..Default::default()
    };
    merge::merge(&top, opts).unwrap();
    assert_eq!(at(&base, 0), 3);
    assert!(!mid.exists() && !top.exists());
}

#[test]
fn the_childs_own_children_elsewhere_in_the_chain_are_repointed() {
    let t = tempfile::tempdir().unwrap();
    let base = dir(t.path(), "a").join("base.vhdx");
    Disk::create(&base, &CreateOptions::new(SIZE))
        .unwrap()
        .close()
        .unwrap();
    let c1 = dir(t.path(), "b").join("c1.avhdx");
    child(&c1, &base);
    put(&c1, 0, 2);
    // A child of c1 in base's folder: found and re-pointed at base.
    let grand = t.path().join("a").join("grand.avhdx");
    child(&grand, &c1);
    put(&grand, 4096, 3);
    let r = merge::merge(&c1, MergeOptions::default()).unwrap();
    assert_eq!(r.repointed.len(), 1, "{r:?}");
    assert_eq!(at(&grand, 0), 2);
    assert_eq!(at(&grand, 4096), 3);
}
