//! `Disk::open_single` (C: `ckpt_disk_open_file`): one differencing file
//! opened without its parents, judged against libvhdi (`pyvhdi`), which
//! reads the whole chain (`set_parent`): wherever the file alone reads
//! something other than zeros, libvhdi's chain reads the same bytes; where
//! it reads zeros (the file holds nothing there) libvhdi reads the parent's
//! bytes; the sectors the file holds are exactly the ones written into it;
//! and its extents call holes only ranges that read as zeros alone.

mod support;

use ckpt::{ChildOptions, CreateOptions, Disk, ErrorKind, OpenMode};
use support::{have_pyvhdi, pattern, python, tempdir, MIB};

/// Reads a two-file chain with libvhdi: argv = out, base, child; writes
/// the child's whole content (through its parent) into out.
const READ_CHAIN: &str = r#"
import sys
import pyvhdi

out, base_path, child_path = sys.argv[1:4]
base = pyvhdi.file()
base.open(base_path)
child = pyvhdi.file()
child.open(child_path)
child.set_parent(base)
size = child.get_media_size()
data = child.read_buffer_at_offset(size, 0)
if len(data) != size:
    sys.exit("short read: %d of %d bytes" % (len(data), size))
with open(out, "wb") as o:
    o.write(data)
child.close()
base.close()
"#;

const SIZE: u64 = 8 * MIB;
const SECTOR: u64 = 512;
const PARENT_BYTE: u8 = 0xa5;

/// Data with no zero byte, so that "reads as zeros" tells "not held".
fn data(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    pattern(seed, offset, len)
        .into_iter()
        .map(|b| b | 1)
        .collect()
}

#[test]
fn a_file_alone_reads_its_own_sectors_and_zeros_elsewhere() {
    let dir = tempdir();
    let base = dir.path().join("base.vhdx");
    let child = dir.path().join("child.avhdx");
    let d = Disk::create(&base, &CreateOptions::new(SIZE).block_size(MIB as u32)).unwrap();
    d.write_at(&vec![PARENT_BYTE; SIZE as usize], 0).unwrap();
    d.close().unwrap();
    let opts = ChildOptions {
        block_size: MIB as u32,
        ..ChildOptions::default()
    };
    let c = Disk::create_child(&child, &base, &opts).unwrap();
    // Whole sectors only (a partial one would copy the parent's rest in).
    let writes: [(u64, usize); 4] = [
        (3 * SECTOR, 4096),
        (MIB - 2 * SECTOR, 6 * SECTOR as usize), // across a block boundary
        (5 * MIB, MIB as usize),                 // a whole block
        (SIZE - SECTOR, SECTOR as usize),        // the last sector
    ];
    let mut held = vec![false; (SIZE / SECTOR) as usize];
    for (i, &(at, len)) in writes.iter().enumerate() {
        c.write_at(&data(i as u64, at, len), at).unwrap();
        for s in at / SECTOR..(at + len as u64) / SECTOR {
            held[s as usize] = true;
        }
    }
    c.close().unwrap();

    // The file alone, with its parent out of the way.
    let moved = dir.path().join("moved.vhdx");
    std::fs::rename(&base, &moved).unwrap();
    assert!(Disk::open(&child, OpenMode::ReadOnly).is_err());
    let alone = Disk::open_single(&child).unwrap();
    assert_eq!(alone.depth(), 1);
    assert!(alone.info().read_only);
    let mut got = vec![0u8; SIZE as usize];
    alone.read_at(&mut got, 0).unwrap();
    assert_eq!(
        alone.write_at(b"x", 0).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    assert_eq!(alone.trim(0, MIB).unwrap_err().kind(), ErrorKind::ReadOnly);
    let extents = alone.extents_in(0, SIZE).unwrap();
    drop(alone);
    std::fs::rename(&moved, &base).unwrap();

    // What the file holds: exactly the sectors written, nothing else.
    for (s, &h) in held.iter().enumerate() {
        let sector = &got[s * SECTOR as usize..(s + 1) * SECTOR as usize];
        if h {
            assert!(
                sector.iter().all(|&b| b != 0),
                "sector {s} is held but reads zeros"
            );
        } else {
            assert!(
                sector.iter().all(|&b| b == 0),
                "sector {s} is not held but has data"
            );
        }
    }
    // Holes read as zeros alone; every held sector is in a data extent.
    for e in &extents {
        if !e.allocated {
            let r = &got[e.offset as usize..(e.offset + e.length) as usize];
            assert!(r.iter().all(|&b| b == 0), "hole {e:?} has data");
            let first = (e.offset / SECTOR) as usize;
            let last = ((e.offset + e.length) / SECTOR) as usize;
            assert!(
                !held[first..last].iter().any(|&h| h),
                "hole {e:?} holds a sector"
            );
        }
    }
    assert!(extents.iter().any(|e| !e.allocated));

    // The oracle: libvhdi's chain agrees byte for byte.
    if !have_pyvhdi() {
        return;
    }
    let out = dir.path().join("chain.raw");
    python(
        READ_CHAIN,
        &[
            out.to_str().unwrap(),
            base.to_str().unwrap(),
            child.to_str().unwrap(),
        ],
    );
    let chain = std::fs::read(&out).unwrap();
    assert_eq!(chain.len(), got.len());
    for (i, (&a, &c)) in got.iter().zip(&chain).enumerate() {
        if a != 0 {
            assert_eq!(a, c, "byte {i}: the file alone and libvhdi's chain differ");
        } else {
            assert_eq!(
                c, PARENT_BYTE,
                "byte {i}: not held, yet the chain has no parent byte"
            );
        }
    }
}

#[test]
fn a_base_disk_alone_reads_as_its_chain() {
    let dir = tempdir();
    let base = dir.path().join("base.vhdx");
    let d = Disk::create(&base, &CreateOptions::new(4 * MIB)).unwrap();
    d.write_at(&data(7, 12345, 70000), 12345).unwrap();
    d.close().unwrap();
    let full = Disk::open(&base, OpenMode::ReadOnly).unwrap();
    let mut a = vec![0u8; 4 * MIB as usize];
    full.read_at(&mut a, 0).unwrap();
    drop(full);
    let alone = Disk::open_single(&base).unwrap();
    let mut b = vec![0u8; 4 * MIB as usize];
    alone.read_at(&mut b, 0).unwrap();
    assert!(a == b);
    assert_eq!(
        alone.write_at(b"x", 0).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    // Shared lock: another reader is fine, a writer is not.
    assert!(Disk::open(&base, OpenMode::ReadOnly).is_ok());
    let busy = Disk::open(&base, OpenMode::ReadWrite)
        .err()
        .map(|e| e.kind());
    assert_eq!(busy, Some(ErrorKind::Busy));
}
