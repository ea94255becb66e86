//! Space given back in an earlier session is used again: a file opened
//! read-write looks for block-sized holes no entry uses (blocks trimmed
//! before it was closed, or space a crash left allocated but unnamed) and
//! puts new blocks there, zeroed first, before it grows the file.

mod support;

use std::os::unix::fs::FileExt;

use ckpt::{CreateOptions, Disk, OpenMode};
use support::*;

const MIB: u64 = 1 << 20;

fn create(path: &std::path::Path) {
    let opts = CreateOptions::new(64 * MIB).block_size(MIB as u32);
    Disk::create(path, &opts).unwrap().close().unwrap();
}

#[test]
fn blocks_trimmed_in_an_earlier_session_are_reused() {
    let t = tempdir();
    let p = t.path().join("d.vhdx");
    create(&p);
    let mut model = vec![0u8; 64 * MIB as usize];
    let d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    for b in 0..16u64 {
        let data = pattern(b, b * MIB, MIB as usize);
        d.write_at(&data, b * MIB).unwrap();
        model[(b * MIB) as usize..((b + 1) * MIB) as usize].copy_from_slice(&data);
    }
    d.close().unwrap();
    let full = std::fs::metadata(&p).unwrap().len();
    let d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    d.trim(0, 8 * MIB).unwrap();
    model[..(8 * MIB) as usize].fill(0);
    d.close().unwrap();
    // A new session: new blocks go into the trimmed ones' space.
    let d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    for b in 32..40u64 {
        // A partial write: the rest of the reused block must read zeros.
        let data = pattern(b, b * MIB, 4096);
        d.write_at(&data, b * MIB + 8192).unwrap();
        let at = (b * MIB + 8192) as usize;
        model[at..at + 4096].copy_from_slice(&data);
    }
    d.close().unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), full, "the file grew");
    let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
    let got = read_all(&d);
    assert!(got == model, "{}", first_diff(&got, &model));
    assert!(ckpt::check(&p).unwrap().problems.is_empty());
    if require_tools(&["qemu-img"]) {
        let out = std::process::Command::new("qemu-img")
            .args(["check", "-f", "vhdx"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Space a crash left allocated (data written, its entry never flushed)
/// holds stale bytes: a block reusing it reads zeros where it is not
/// written.
#[test]
fn an_unnamed_tail_is_zeroed_before_reuse() {
    let t = tempdir();
    let p = t.path().join("d.vhdx");
    create(&p);
    let d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    d.write_at(&[1u8; 4096], 0).unwrap();
    d.close().unwrap();
    // Two blocks of stale bytes past every used area, named by nothing.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let end = f.metadata().unwrap().len().div_ceil(MIB) * MIB;
    f.write_all_at(&vec![0xab; 2 * MIB as usize], end).unwrap();
    drop(f);
    let size = std::fs::metadata(&p).unwrap().len();
    let d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    d.write_at(&[2u8; 4096], 10 * MIB).unwrap();
    d.write_at(&[3u8; 4096], 20 * MIB + 4096).unwrap();
    d.close().unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), size, "the file grew");
    let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
    let mut b = vec![0u8; MIB as usize];
    d.read_at(&mut b, 10 * MIB).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 2) && b[4096..].iter().all(|&x| x == 0));
    d.read_at(&mut b, 20 * MIB).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0));
    assert!(b[4096..8192].iter().all(|&x| x == 3) && b[8192..].iter().all(|&x| x == 0));
    assert!(ckpt::check(&p).unwrap().problems.is_empty());
}
