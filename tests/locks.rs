//! Locks between handles and processes (issue 8, bug 9): a read-only open
//! takes a shared lock, a writable open an exclusive one.
//!
//! The other process is this test binary run again as a *holder* (see
//! [`Holder`]): it opens a disk chain read-write or read-only, or a VM,
//! says so, and keeps it until its stdin closes. Against it:
//!
//! - a disk open for writing in another process cannot be opened at all
//!   (read-only or read-write), given a child, merged, flattened,
//!   re-pointed or checked; the parents of its chain cannot be opened for
//!   writing but can be read; `Busy` names the file and says "another
//!   process"; no byte of any file changes; after the holder stops every
//!   one of these succeeds;
//! - a chain open read-only in another process can be read and given a
//!   child here, but not written, merged into or re-pointed;
//! - within one process the same rules hold between handles, and the
//!   message says "another handle in this process" (also for the VM lock);
//! - the exact user scenario through the `ckpt` tool: a VM's disk held
//!   open for writing by another process; `ckpt checkpoint create VM c1`
//!   fails with busy naming the disk and changes nothing (vm.json, the
//!   disks, no new file or folder); after the holder stops the same command
//!   succeeds; then, with the new current disk held, create, apply, revert,
//!   delete and export of the current state are refused the same way,
//!   while export of the checkpoint and rename work; a checkpoint's disk
//!   held read-only (inspected) refuses the delete that would merge into it;
//! - the C ABI gives `CKPT_STATUS_BUSY` for these;
//! - locks stay reliable while other threads fork and exec (a child holds
//!   inherited descriptors for a moment).

mod support;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use ckpt::checkpoint::{Vm, VmSpec};
use ckpt::disk::merge::{self, MergeOptions};
use ckpt::{ChildOptions, CreateOptions, Disk, Error, ErrorKind, OpenMode};
use support::MIB;

const SIZE: u64 = 4 * MIB;

// ------------------------------------------------------------ the holder

/// The holder's instructions: "rw PATH", "ro PATH" (a disk chain) or
/// "vm DIR".
const HOLD_ENV: &str = "CKPT_LOCKS_TEST_HOLD";
/// What the holder prints once it holds what it was told to.
const READY: &str = "ckpt-locks-holder-ready";

/// The body of the holder process, not a check of its own: in a normal run
/// (without `CKPT_LOCKS_TEST_HOLD`) it returns at once. Run by [`Holder`]
/// as `<this binary> --exact holder_process`, it opens what the variable
/// says, prints [`READY`] and keeps it open until stdin reaches its end,
/// then closes it and exits.
#[test]
fn holder_process() {
    let Ok(spec) = std::env::var(HOLD_ENV) else {
        return;
    };
    let (what, path) = spec.split_once(' ').expect("holder: MODE PATH");
    let path = PathBuf::from(path);
    let mut disk = None;
    let mut vm = None;
    match what {
        "rw" => disk = Some(Disk::open(&path, OpenMode::ReadWrite).expect("holder: open rw")),
        "ro" => disk = Some(Disk::open(&path, OpenMode::ReadOnly).expect("holder: open ro")),
        "vm" => vm = Some(Vm::open(&path).expect("holder: open the VM")),
        other => panic!("holder: unknown mode {other:?}"),
    }
    let mut out = std::io::stdout();
    writeln!(out, "{READY}").expect("holder: stdout");
    out.flush().expect("holder: stdout");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
    if let Some(d) = disk {
        d.close().expect("holder: close");
    }
    drop(vm);
    std::process::exit(0);
}

/// Another process holding a disk chain or a VM (see [`holder_process`]).
struct Holder {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Holder {
    /// Start it and wait (at most a minute) until it holds `path` (`mode`:
    /// "rw", "ro", "vm").
    fn start(mode: &str, path: &Path) -> Holder {
        let mut child = Command::new(std::env::current_exe().expect("current_exe"))
            .args([
                "--exact",
                "holder_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLD_ENV, format!("{mode} {}", path.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the holder");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("holder stdout"));
        // The harness prints around the holder's line (on the same line,
        // too): look for the word. The reader thread drains stdout to the end.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if line.contains(READY) {
                    let _ = tx.send(());
                }
            }
        });
        let mut holder = Holder {
            child: Some(child),
            stdin,
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let mut child = holder.child.take().expect("running");
            let _ = child.kill();
            let o = child.wait_with_output().expect("wait for the holder");
            panic!(
                "the holder ({mode} {}) never held it: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        holder
    }

    /// Let go (close its stdin) and wait for a clean exit.
    fn stop(mut self) {
        drop(self.stdin.take());
        let child = self.child.take().expect("running");
        let o = child.wait_with_output().expect("wait for the holder");
        assert!(
            o.status.success(),
            "the holder failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------ helpers

/// base.vhdx ← mid.avhdx ← top.avhdx in `dir`, each with data of its own.
fn make_chain(dir: &Path) -> [PathBuf; 3] {
    let [base, mid, top] = ["base.vhdx", "mid.avhdx", "top.avhdx"].map(|n| dir.join(n));
    let d = Disk::create(&base, &CreateOptions::new(SIZE).block_size(MIB as u32)).expect("base");
    d.write_at(&[1u8; 8192], 0).expect("write base");
    d.close().expect("close base");
    for (i, (p, parent)) in [(&mid, &base), (&top, &mid)].into_iter().enumerate() {
        let d = Disk::create_child(p, parent, &ChildOptions::default()).expect("child");
        d.write_at(&[2 + i as u8; 4096], MIB * (1 + i as u64))
            .expect("write child");
        d.close().expect("close child");
    }
    [base, mid, top]
}

/// Every file under `root` (relative path → bytes), lock files left out.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).expect("under root").to_path_buf();
            if p.is_dir() {
                out.insert(rel, b"(a folder)".to_vec());
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != ".lock") {
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

#[track_caller]
fn assert_unchanged(what: &str, root: &Path, before: &BTreeMap<PathBuf, Vec<u8>>) {
    let after = snapshot(root);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: files were added or removed"
    );
    for (k, v) in before {
        assert!(after.get(k) == Some(v), "{what}: {} changed", k.display());
    }
}

/// `r` failed with Busy, naming `file` and saying `who`.
#[track_caller]
fn assert_busy<T: std::fmt::Debug>(what: &str, r: ckpt::Result<T>, file: &Path, who: &str) {
    let e: Error = match r {
        Ok(v) => panic!(
            "{what}: succeeded ({v:?}) although {} is held",
            file.display()
        ),
        Err(e) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Busy, "{what}: {e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "{what}: {msg:?} does not name {}",
        file.display()
    );
    assert!(msg.contains(who), "{what}: {msg:?} does not say {who:?}");
}

const WRITER_ELSEWHERE: &str = "open for writing by another process";
const READER_ELSEWHERE: &str = "open read-only by another process";
const WRITER_HERE: &str = "open for writing by another handle in this process";
const READER_HERE: &str = "open read-only by another handle in this process";

// ------------------------------------------------------------ disks

#[test]
fn a_writer_in_another_process_excludes_every_other_use() {
    let dir = support::tempdir();
    let [base, mid, top] = make_chain(dir.path());
    let before = snapshot(dir.path());
    let new = dir.path().join("new.avhdx");
    let flat = dir.path().join("flat.vhdx");

    let holder = Holder::start("rw", &top);
    let r = Disk::open(&top, OpenMode::ReadOnly);
    assert_busy("read-only open", r, &top, WRITER_ELSEWHERE);
    let r = Disk::open(&top, OpenMode::ReadWrite);
    assert_busy("read-write open", r, &top, WRITER_ELSEWHERE);
    let r = Disk::create_child(&new, &top, &ChildOptions::default());
    assert_busy("a child", r, &top, WRITER_ELSEWHERE);
    let r = merge::merge(&top, MergeOptions::default());
    assert_busy("merge", r, &top, WRITER_ELSEWHERE);
    let r = merge::flatten(&top, &flat, &CreateOptions::new(0), None);
    assert_busy("flatten", r, &top, WRITER_ELSEWHERE);
    let r = merge::reparent(&top, &mid, false);
    assert_busy("reparent", r, &top, WRITER_ELSEWHERE);
    assert_eq!(
        ckpt::check(&top).expect_err("check").kind(),
        ErrorKind::Busy
    );
    // Its parents are read by the holder: not writable, still readable.
    for p in [&mid, &base] {
        let r = Disk::open(p, OpenMode::ReadWrite);
        assert_busy("a parent opened for writing", r, p, READER_ELSEWHERE);
        Disk::open(p, OpenMode::ReadOnly).expect("a parent read by two processes");
    }
    // Merging the middle layer into the base would write the base.
    let r = merge::merge(&mid, MergeOptions::default());
    assert_busy("merge under the chain", r, &base, READER_ELSEWHERE);
    assert_unchanged("after the refusals", dir.path(), &before);
    holder.stop();

    // Free again: every one of them works.
    Disk::open(&top, OpenMode::ReadOnly).expect("read-only open");
    merge::flatten(&top, &flat, &CreateOptions::new(0), None).expect("flatten");
    merge::reparent(&top, &mid, false).expect("reparent");
    Disk::create_child(&new, &top, &ChildOptions::default())
        .expect("a child")
        .close()
        .expect("close");
    merge::merge(&new, MergeOptions::default()).expect("merge");
}

#[test]
fn a_reader_in_another_process_allows_readers_and_children_only() {
    let dir = support::tempdir();
    let [base, mid, top] = make_chain(dir.path());
    let chain_before: Vec<Vec<u8>> = [&base, &mid, &top]
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();

    let holder = Holder::start("ro", &top);
    for p in [&top, &mid, &base] {
        Disk::open(p, OpenMode::ReadOnly).expect("two readers");
        let r = Disk::open(p, OpenMode::ReadWrite);
        assert_busy("open for writing", r, p, READER_ELSEWHERE);
    }
    // Reading it is fine: a child, a flat copy.
    let new = dir.path().join("new.avhdx");
    let child = Disk::create_child(&new, &top, &ChildOptions::default()).expect("a child");
    let mut buf = [0u8; 4096];
    child.read_at(&mut buf, 2 * MIB).expect("read the child");
    assert_eq!(buf, [3u8; 4096]);
    child.close().expect("close");
    std::fs::remove_file(&new).expect("remove the child");
    merge::flatten(
        &top,
        &dir.path().join("f.vhdx"),
        &CreateOptions::new(0),
        None,
    )
    .expect("flatten a chain another process reads");
    // Writing it is not: merging (into mid, or into base), re-pointing.
    let r = merge::merge(&top, MergeOptions::default());
    assert_busy("merge into a read file", r, &mid, READER_ELSEWHERE);
    let r = merge::merge(
        &top,
        MergeOptions {
            into: Some(base.clone()),
            ..Default::default()
        },
    );
    assert_busy("merge into a read ancestor", r, &base, READER_ELSEWHERE);
    let r = merge::reparent(&top, &mid, false);
    assert_busy("reparent a read file", r, &top, READER_ELSEWHERE);
    for (p, old) in [&base, &mid, &top].iter().zip(&chain_before) {
        assert!(
            std::fs::read(p).expect("read") == *old,
            "{} changed",
            p.display()
        );
    }
    holder.stop();
    merge::merge(&top, MergeOptions::default()).expect("merge once the reader is gone");
}

#[test]
fn handles_in_one_process_follow_the_same_rules_and_say_so() {
    let dir = support::tempdir();
    let [base, mid, top] = make_chain(dir.path());
    let w = Disk::open(&top, OpenMode::ReadWrite).expect("open the top for writing");
    let r = Disk::open(&top, OpenMode::ReadOnly);
    assert_busy("a second handle", r, &top, WRITER_HERE);
    let r = Disk::create_child(dir.path().join("x.avhdx"), &top, &ChildOptions::default());
    assert_busy("a child", r, &top, WRITER_HERE);
    let r = merge::merge(&top, MergeOptions::default());
    assert_busy("merge", r, &top, WRITER_HERE);
    let r = merge::flatten(
        &top,
        &dir.path().join("f.vhdx"),
        &CreateOptions::new(0),
        None,
    );
    assert_busy("flatten", r, &top, WRITER_HERE);
    for p in [&mid, &base] {
        let r = Disk::open(p, OpenMode::ReadWrite);
        assert_busy("a parent of the open chain", r, p, READER_HERE);
        Disk::open(p, OpenMode::ReadOnly).expect("read-only handles coexist");
    }
    drop(w);
    let a = Disk::open(&top, OpenMode::ReadOnly).expect("after the writer closed");
    let b = Disk::open(&top, OpenMode::ReadOnly).expect("two readers");
    drop((a, b));
    Disk::open(&base, OpenMode::ReadWrite).expect("nothing holds the base any more");

    // The VM lock says the same.
    let vmdir = dir.path().join("vm");
    let vm = Vm::create(&vmdir, &VmSpec::new("v", vec![top.clone()])).expect("create VM");
    let e = Vm::open(&vmdir).expect_err("a second handle on the VM");
    assert!(
        matches!(&e, Error::Busy(m) if m.contains("by another handle in this process")),
        "{e}"
    );
    drop(vm);
    let holder = Holder::start("vm", &vmdir);
    let e = Vm::open(&vmdir).expect_err("the VM held by another process");
    assert!(
        matches!(&e, Error::Busy(m) if m.contains("by another process")),
        "{e}"
    );
    holder.stop();
    Vm::open(&vmdir).expect("the VM is free");
}

#[test]
fn locks_hold_while_other_threads_fork() {
    // A child another thread forks keeps this process's descriptors until it
    // execs; a lock must not look taken because of it.
    let dir = support::tempdir();
    let path = dir.path().join("d.vhdx");
    Disk::create(&path, &CreateOptions::new(SIZE))
        .expect("create")
        .close()
        .expect("close");
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let forks = std::sync::Arc::new(AtomicUsize::new(0));
    let forker = {
        let (stop, forks) = (stop.clone(), forks.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                Command::new("true").status().expect("run true");
                forks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The opens race the forks only once the forker runs (a loaded
    // machine may start it late).
    while forks.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    for i in 0..300 {
        let mode = if i % 2 == 0 {
            OpenMode::ReadWrite
        } else {
            OpenMode::ReadOnly
        };
        let d = Disk::open(&path, mode).unwrap_or_else(|e| panic!("open {i} ({mode:?}): {e}"));
        drop(d);
    }
    let forked = forks.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    forker.join().expect("forker");
    assert!(forked > 0);
}

// ------------------------------------------------------------ the C ABI

#[test]
fn the_c_abi_reports_busy() {
    use ckpt::ffi::ckpt_status;
    use ckpt::ffi::disk::{ckpt_disk_close, ckpt_disk_open, CKPT_OPEN_READ_ONLY};
    let dir = support::tempdir();
    let [_, mid, top] = make_chain(dir.path());
    let holder = Holder::start("rw", &top);
    let last_error = || {
        let mut buf = vec![0u8; 1024];
        let mut len = 0usize;
        // SAFETY: buf is writable for its length; len is a valid out pointer.
        let s = unsafe {
            ckpt::ffi::last_error::ckpt_last_error(buf.as_mut_ptr().cast(), buf.len(), &mut len)
        };
        assert_eq!(s, ckpt_status::Ok);
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };
    let c = |p: &Path| CString::new(p.to_str().expect("UTF-8")).expect("no NUL");
    let mut disk = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated path and out pointer.
    let s = unsafe { ckpt_disk_open(c(&top).as_ptr(), CKPT_OPEN_READ_ONLY, &mut disk) };
    assert_eq!(s, ckpt_status::Busy);
    assert!(disk.is_null());
    let msg = last_error();
    assert!(
        msg.contains("top.avhdx") && msg.contains(WRITER_ELSEWHERE),
        "{msg}"
    );
    // SAFETY: as above.
    let s = unsafe {
        ckpt::ffi::chain::ckpt_disk_create_child(
            c(&dir.path().join("n.avhdx")).as_ptr(),
            c(&top).as_ptr(),
            std::ptr::null(),
            &mut disk,
        )
    };
    assert_eq!(s, ckpt_status::Busy);
    // SAFETY: as above.
    let s = unsafe {
        ckpt_disk_open(
            c(&mid).as_ptr(),
            ckpt::ffi::disk::CKPT_OPEN_READ_WRITE,
            &mut disk,
        )
    };
    assert_eq!(s, ckpt_status::Busy);
    assert!(last_error().contains(READER_ELSEWHERE));
    holder.stop();
    // SAFETY: as above; the handle is closed once.
    unsafe {
        assert_eq!(
            ckpt_disk_open(c(&top).as_ptr(), CKPT_OPEN_READ_ONLY, &mut disk),
            ckpt_status::Ok
        );
        assert_eq!(ckpt_disk_close(disk), ckpt_status::Ok);
    }
}

// ------------------------------------------------------------ the tool

#[cfg(feature = "cli")]
mod tool {
    use super::*;
    use serde_json::Value;
    use support::cli::{fails, ok, run, s};

    fn current_disks(vm: &Path) -> Vec<PathBuf> {
        let v = support::cli::json(&["vm", "show", s(vm), "--json"]);
        v["disks"]
            .as_array()
            .expect("disks")
            .iter()
            .map(|d| PathBuf::from(d["path"].as_str().expect("path")))
            .collect()
    }

    /// `ckpt args` fails with one `busy` line naming `file` and saying
    /// `who`, and no byte under `root` changes.
    #[track_caller]
    fn refused(root: &Path, args: &[&str], file: &Path, who: &str) {
        let before = snapshot(root);
        let line = fails(args, &run(args));
        for want in ["busy", &file.display().to_string(), who] {
            assert!(
                line.contains(want),
                "ckpt {args:?}: {line:?} does not say {want:?}"
            );
        }
        assert_unchanged(&format!("ckpt {args:?}"), root, &before);
    }

    #[test]
    fn checkpoint_create_of_a_disk_served_elsewhere_changes_nothing() {
        let tmp = support::tempdir();
        let root = std::fs::canonicalize(tmp.path()).expect("canonical");
        let disks = [root.join("os.vhdx"), root.join("data.vhdx")];
        for d in &disks {
            ok(&["create", s(d), "--size", "4M", "--block-size", "1M"]);
        }
        let vm = root.join("vm");
        ok(&[
            "vm",
            "create",
            s(&vm),
            "--name",
            "v",
            "--disk",
            s(&disks[0]),
            "--disk",
            s(&disks[1]),
        ]);
        let vmj = std::fs::read(vm.join("vm.json")).expect("vm.json");

        // The second disk is served read-write by another process: nothing
        // is made, not even a child of the first disk or the checkpoint folder.
        let holder = Holder::start("rw", &disks[1]);
        let create = ["checkpoint", "create", s(&vm), "c1"];
        refused(&root, &create, &disks[1], WRITER_ELSEWHERE);
        assert!(!vm.join("checkpoints").exists());
        assert!(!vm.join("journal.json").exists());
        assert_eq!(std::fs::read(vm.join("vm.json")).expect("vm.json"), vmj);
        holder.stop();
        ok(&create);
        let cur = current_disks(&vm);
        assert!(cur
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "avhdx")));

        // The new current disk is in use: no operation may write, remove or
        // read it behind the holder's back.
        let holder = Holder::start("rw", &cur[0]);
        refused(
            &root,
            &["checkpoint", "create", s(&vm), "c2"],
            &cur[0],
            WRITER_ELSEWHERE,
        );
        refused(
            &root,
            &["checkpoint", "apply", s(&vm), "c1"],
            &cur[0],
            WRITER_ELSEWHERE,
        );
        refused(
            &root,
            &["checkpoint", "revert", s(&vm)],
            &cur[0],
            WRITER_ELSEWHERE,
        );
        refused(
            &root,
            &["checkpoint", "delete", s(&vm), "c1"],
            &disks[0],
            READER_ELSEWHERE,
        );
        let out = root.join("out");
        let line = fails(
            &["checkpoint", "export"],
            &run(&["checkpoint", "export", s(&vm), "--current", s(&out)]),
        );
        assert!(
            line.contains("busy") && line.contains(&cur[0].display().to_string()),
            "{line}"
        );
        assert!(!out.join("os.vhdx").exists());
        // What does not touch the held disk works: a checkpoint's export
        // reads its frozen disks (read-only, beside the holder), a rename.
        let out2 = root.join("out2");
        ok(&["checkpoint", "export", s(&vm), "c1", s(&out2)]);
        ok(&["checkpoint", "rename", s(&vm), "c1", "first"]);
        holder.stop();

        // A checkpoint's disk inspected read-only elsewhere: deleting the
        // checkpoint would merge into it.
        let holder = Holder::start("ro", &disks[0]);
        refused(
            &root,
            &["checkpoint", "delete", s(&vm), "first"],
            &disks[0],
            READER_ELSEWHERE,
        );
        ok(&["checkpoint", "create", s(&vm), "c2"]);
        holder.stop();
        ok(&["checkpoint", "delete", s(&vm), "first"]);
        let list: Value = support::cli::json(&["checkpoint", "list", s(&vm), "--json"]);
        assert_eq!(
            list["checkpoints"].as_array().map(Vec::len),
            Some(1),
            "{list}"
        );
    }

    #[test]
    fn disk_commands_refuse_a_disk_served_elsewhere() {
        let tmp = support::tempdir();
        let root = std::fs::canonicalize(tmp.path()).expect("canonical");
        let [base, mid, top] = make_chain(&root);
        let holder = Holder::start("rw", &top);
        let new = root.join("new.avhdx");
        let flat = root.join("flat.vhdx");
        for args in [
            vec!["info", s(&top)],
            vec!["check", s(&top)],
            vec!["read", s(&top), "0", "512"],
            vec!["create", s(&new), "--parent", s(&top)],
            vec!["merge", s(&top)],
            vec!["convert", s(&top), s(&flat)],
            vec!["reparent", s(&top), s(&mid)],
            vec!["changes", s(&top)],
        ] {
            refused(&root, &args, &top, WRITER_ELSEWHERE);
        }
        refused(&root, &["write", s(&base), "0"], &base, READER_ELSEWHERE);
        ok(&["info", s(&mid)]);
        holder.stop();
        ok(&["create", s(&new), "--parent", s(&top)]);
    }
}

#[test]
fn a_child_held_by_another_process_is_still_seen_as_a_child() {
    // The scan for children looks at a file another process writes without
    // its lock: a VM is refused on a disk whose child is in use elsewhere
    // (it would corrupt it), not for the holder's lock on that child.
    let dir = support::tempdir();
    let [_base, mid, top] = make_chain(dir.path());
    let holder = Holder::start("rw", &top);
    let e = Vm::create(&dir.path().join("vm"), &VmSpec::new("v", vec![mid.clone()]))
        .expect_err("a VM on a disk with a child");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("top.avhdx"), "{e}");
    assert!(!dir.path().join("vm").exists(), "nothing was made");
    holder.stop();
}
