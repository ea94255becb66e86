//! Memory that does not grow with the virtual size: the BAT is kept in
//! pages, and pages of zeros (nothing allocated there) take no memory.
//! A 64 TiB dynamic disk with 1 MiB blocks has a 512 MiB BAT; opening it
//! and reading and writing a little must cost a few MiB, not that.
//!
//! One test in its own binary, so that no other test's memory is counted.

mod support;

use ckpt::{CreateOptions, Disk, OpenMode};

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_64_tib_disk_with_1_mib_blocks_opens_in_a_few_mib() {
    let t = support::tempdir();
    let p = t.path().join("big.vhdx");
    let opts = CreateOptions::new(64 << 40).block_size(1 << 20);
    Disk::create(&p, &opts).unwrap().close().unwrap();
    let before = rss();
    let d = Disk::open(&p, OpenMode::ReadWrite).unwrap();
    let mut buf = vec![0u8; 4096];
    for k in 0..64u64 {
        // Spread over the whole disk: each touches its own BAT page.
        let off = k * (1 << 40) + k * 4096;
        d.write_at(&[k as u8 + 1; 4096], off).unwrap();
        d.read_at(&mut buf, off).unwrap();
        assert_eq!(buf, [k as u8 + 1; 4096]);
    }
    d.flush().unwrap();
    let grown = rss().saturating_sub(before);
    assert!(grown < 24 << 20, "opening and using it took {grown} bytes");
    d.close().unwrap();
    // And it reads back after a reopen.
    let d = Disk::open(&p, OpenMode::ReadOnly).unwrap();
    for k in 0..64u64 {
        let off = k * (1 << 40) + k * 4096;
        d.read_at(&mut buf, off).unwrap();
        assert_eq!(buf, [k as u8 + 1; 4096], "{k}");
    }
    assert_eq!(d.info().allocated_bytes, 64 << 20);
}
