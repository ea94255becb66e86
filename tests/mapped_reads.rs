//! Reads of read-only opens go through a memory mapping of the file (see
//! `src/io/mapped.rs`). A page of a mapping that cannot be read sends the
//! process `SIGBUS`; the library's guard must turn that into the answer a
//! `pread` gives. Judged here:
//!
//! - a file cut shorter by someone else under two reader threads: every
//!   read answers, with the old data where the file still holds it and
//!   zeros (or an error) past the new end, never the process killed;
//! - the same under the real `ckpt bench` process: it ends by itself, not
//!   by a signal;
//! - `CKPT_MMAP=0` (reads through `pread` only) reads the same bytes.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use ckpt::{CreateOptions, Disk, OpenMode};

const SIZE: u64 = 16 << 20;
const BLOCK: u64 = 1 << 20;

fn make(path: &Path) -> Vec<u8> {
    let d = Disk::create(path, &CreateOptions::new(SIZE).block_size(BLOCK as u32)).unwrap();
    let model = support::pattern(3, 0, SIZE as usize);
    d.write_at(&model, 0).unwrap();
    d.close().unwrap();
    model
}

/// Each block reads as the model or as zeros.
fn old_or_zero(got: &[u8], model: &[u8], what: &str) {
    for (k, (g, m)) in got
        .chunks(BLOCK as usize)
        .zip(model.chunks(BLOCK as usize))
        .enumerate()
    {
        // Page by page: a block's pages past the new end read zeros.
        for (p, (gp, mp)) in g.chunks(4096).zip(m.chunks(4096)).enumerate() {
            assert!(
                gp == mp || gp.iter().all(|&b| b == 0),
                "{what}: block {k} page {p} is neither the old data nor zeros"
            );
        }
    }
}

#[test]
fn a_file_cut_shorter_under_two_reader_threads_reads_old_data_or_zeros() {
    let dir = support::tempdir();
    let path = dir.path().join("d.vhdx");
    let model = make(&path);
    let d = Disk::open(&path, OpenMode::ReadOnly).unwrap();
    let mut all = vec![0u8; SIZE as usize];
    d.read_at(&mut all, 0).unwrap();
    assert_eq!(all, model);
    let len = std::fs::metadata(&path).unwrap().len();
    let cut = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (d, model, cut) = (&d, &model, &cut);
            s.spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut rounds = 0u64;
                // Go on well past the cut.
                let mut after = 0;
                while after < 300 {
                    if cut.load(Ordering::SeqCst) {
                        after += 1;
                    }
                    let off = ((rounds * 2 + t) * 69_632) % (SIZE - buf.len() as u64);
                    let off = off / 512 * 512;
                    match d.read_at(&mut buf, off) {
                        Ok(()) => {
                            let m = &model[off as usize..off as usize + buf.len()];
                            for (gp, mp) in buf.chunks(512).zip(m.chunks(512)) {
                                assert!(
                                    gp == mp || gp.iter().all(|&b| b == 0),
                                    "a read at {off:#x} is neither the old data nor zeros"
                                );
                            }
                        }
                        Err(e) => assert!(
                            cut.load(Ordering::SeqCst),
                            "a read failed before the cut: {e}"
                        ),
                    }
                    rounds += 1;
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Someone else cuts the file to half its length.
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 2).unwrap();
        cut.store(true, Ordering::SeqCst);
    });
    // After the cut, a whole read answers: old data below the new end,
    // zeros past it (pread's answer), or an error; never a crash.
    let mut got = vec![0u8; SIZE as usize];
    if d.read_at(&mut got, 0).is_ok() {
        old_or_zero(&got, &model, "after the cut");
        assert_ne!(
            got, model,
            "half of the file is gone: some of it must read zeros"
        );
    }
}

#[cfg(feature = "cli")]
#[test]
fn ckpt_bench_over_a_file_cut_shorter_ends_by_itself_not_by_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let dir = support::tempdir();
    let path = dir.path().join("d.vhdx");
    make(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    let child = support::cli::ckpt()
        .args(["bench", "-c", "3000000", "-s", "4K", "-S", "68K"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 3).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.signal(),
        None,
        "ckpt bench was killed by a signal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(feature = "cli")]
#[test]
fn reads_through_pread_only_give_the_same_bytes() {
    let dir = support::tempdir();
    let path = dir.path().join("d.vhdx");
    let model = make(&path);
    for mmap in ["1", "0"] {
        let out = support::cli::ckpt()
            .env("CKPT_MMAP", mmap)
            .args(["read"])
            .arg(&path)
            .args(["12345", "3000000"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout,
            &model[12345..12345 + 3_000_000],
            "CKPT_MMAP={mmap}"
        );
    }
}
