//! Crash at every write and flush point of a merge: every resulting state
//! reads the same data, and running the merge again finishes it; the merged
//! base passes `qemu-img check`.

use std::path::{Path, PathBuf};

use ckpt::disk::merge::{self, MergeOptions};
use ckpt::io::{faults, Cut};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};

const SIZE: u64 = 8 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect()
}

/// base <- mid <- top, plus a grandchild `leaf` of `mid`'s child `top`.
/// Returns the paths and the model of what `leaf` reads.
fn build(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let base = dir.join("base.vhdx");
    let mid = dir.join("mid.avhdx");
    let top = dir.join("top.avhdx");
    let leaf = dir.join("leaf.avhdx");
    let mut model = vec![0u8; SIZE as usize];
    let d = Disk::create(&base, &CreateOptions::new(SIZE).block_size(1 << 20)).unwrap();
    let a = pattern(3 << 20, 1);
    d.write_at(&a, 0).unwrap();
    model[..a.len()].copy_from_slice(&a);
    d.close().unwrap();
    let opts = ChildOptions {
        block_size: 1 << 20,
        log_size: 1 << 20,
    };
    let d = Disk::create_child(&mid, &base, &opts).unwrap();
    for (off, len, seed) in [
        (100u64, 5000usize, 2u8),
        (2 << 20, 1 << 20, 3),
        (5 << 20, 70_000, 4),
    ] {
        let p = pattern(len, seed);
        d.write_at(&p, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&p);
    }
    d.trim(1 << 20, 1 << 20).unwrap();
    model[1 << 20..2 << 20].fill(0);
    d.close().unwrap();
    let d = Disk::create_child(&top, &mid, &opts).unwrap();
    let p = pattern(4096, 5);
    d.write_at(&p, 7 << 20).unwrap();
    model[7 << 20..(7 << 20) + 4096].copy_from_slice(&p);
    d.close().unwrap();
    Disk::create_child(&leaf, &top, &opts)
        .unwrap()
        .close()
        .unwrap();
    (base, mid, top, leaf, model)
}

fn read_all(path: &Path) -> Vec<u8> {
    let d = Disk::open(path, OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = vec![0u8; SIZE as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

fn qemu_check(path: &Path) {
    if std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "qemu-img is required under CI=true"
        );
        eprintln!("notice: qemu-img not installed; skipping qemu-img check");
        return;
    }
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "vhdx"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// How an interrupted merge is finished: the library call again, or the
/// command-line tool (`ckpt merge`, which must use the library's policy for
/// children an interrupted run already re-pointed).
#[derive(Clone, Copy, PartialEq)]
enum Finish {
    Library,
    #[cfg(feature = "cli")]
    Cli,
}

fn run(which: &str, cut: Cut) {
    run_finishing(which, cut, Finish::Library)
}

fn run_finishing(which: &str, cut: Cut, finish: Finish) {
    // Count the events of an uninterrupted merge.
    let dir = tempfile::tempdir().unwrap();
    let (base, mid, top, leaf, model) = build(dir.path());
    let (child, into) = match which {
        "parent" => (mid.clone(), None),
        _ => (top.clone(), Some(base.clone())),
    };
    faults::arm(u64::MAX, cut);
    merge::merge(
        &child,
        MergeOptions {
            into: into.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let events = faults::disarm();
    assert!(
        events > 10,
        "a merge should write something ({events} events)"
    );
    assert_eq!(read_all(&leaf), model);

    for n in 0..events {
        let dir = tempfile::tempdir().unwrap();
        let (base, _mid, _top, leaf, model) = build(dir.path());
        faults::arm(n, cut);
        let r = merge::merge(
            &child_in(dir.path(), &child),
            MergeOptions {
                into: into.as_ref().map(|_| base.clone()),
                ..Default::default()
            },
        );
        faults::disarm();
        assert!(
            r.is_err(),
            "cut at {n} of {events}: the merge should have failed"
        );
        // Every state reads the same data.
        assert_eq!(read_all(&leaf), model, "cut at {n}: content changed");
        // Running the merge again finishes it (unless the cut came after the
        // merged file was already removed).
        let c = child_in(dir.path(), &child);
        if c.exists() && finish == Finish::Library {
            merge::merge(
                &c,
                MergeOptions {
                    into: into.as_ref().map(|_| base.clone()),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("cut at {n}: re-running the merge: {e}"));
        }
        #[cfg(feature = "cli")]
        if c.exists() && finish == Finish::Cli {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ckpt"));
            cmd.arg("merge").arg(&c);
            if into.is_some() {
                cmd.arg("--into").arg(&base);
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "cut at {n}: ckpt merge did not finish the merge: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            read_all(&leaf),
            model,
            "cut at {n}: content after the re-run"
        );
        assert!(!c.exists());
        if n % 5 == 0 {
            qemu_check(&base);
        }
    }
}

fn child_in(dir: &Path, child: &Path) -> PathBuf {
    dir.join(child.file_name().unwrap())
}

#[test]
fn crash_at_every_point_of_a_merge_into_the_parent() {
    run("parent", Cut::Clean);
}

#[test]
fn torn_writes_during_a_merge_into_an_ancestor() {
    run("ancestor", Cut::Torn);
}

#[cfg(feature = "cli")]
#[test]
fn ckpt_merge_finishes_a_merge_into_the_parent_cut_at_every_point() {
    run_finishing("parent", Cut::Clean, Finish::Cli);
}

#[cfg(feature = "cli")]
#[test]
fn ckpt_merge_finishes_a_merge_into_an_ancestor_cut_at_every_point() {
    run_finishing("ancestor", Cut::Clean, Finish::Cli);
}
