//! Incremental backup (issue 15, part 1): a VM with two disks and a byte
//! model per disk goes through full export, writes, checkpoints,
//! incremental exports since earlier checkpoints (and since one on
//! another branch), a delete (merge) of a checkpoint, and incrementals of
//! the current state, offline and attached. After each step the backup
//! chain full → inc1 → … is judged three ways against the model: opened
//! and flattened by libckpt, read by libvhdi (`pyvhdi`, each file opened
//! and composed with `set_parent`, which checks every linkage), and by
//! `verify_backup`. Every incremental is checked to hold no sector outside
//! the changed ranges and to miss no sector where the two models differ.
//! Refusals (REF not older, unknown names, a wrong or changed base) change
//! nothing; an export cut at every file event of the calling thread (the
//! fault-injecting crash counter) or cancelled leaves none of its files.

mod support;

use std::path::{Path, PathBuf};

use ckpt::checkpoint::backup::{read_manifest, verify_backup};
use ckpt::checkpoint::{Hooks, NoHooks, Vm};
use ckpt::io::{faults, Cut};
use ckpt::{Disk, ErrorKind, OpenMode};
use support::backup::*;
use support::sweep::reopened;
use support::Rng;

#[test]
fn full_then_incrementals_restore_the_model_through_a_merge() {
    let t = support::tempdir();
    let mut f = fixture(t.path(), 15);
    f.writes(12);
    let m0 = f.checkpoint("c0");
    let full = f.dir("full");
    f.vm.export(Some("c0"), &full, &mut NoHooks).unwrap();
    let man = read_manifest(&full).unwrap();
    assert_eq!(man.captured.as_ref().unwrap().name, "c0");
    assert!(man.since.is_none());
    assert_restores("full", std::slice::from_ref(&full), &m0, t.path());

    // inc1: c1 since c0.
    f.writes(8);
    let m1 = f.checkpoint("c1");
    let inc1 = f.dir("inc1");
    let ch = f.vm.changes("c0", Some("c1")).unwrap();
    let files =
        f.vm.export_incremental(Some("c1"), "c0", &inc1, &full, &mut NoHooks)
            .unwrap();
    assert_eq!(files.len(), NAMES.len() + 1, "{files:?}");
    assert_holds("inc1", &inc1, &ch, &m0, &m1);
    assert_restores("full+inc1", &[full.clone(), inc1.clone()], &m1, t.path());
    let man = read_manifest(&inc1).unwrap();
    assert_eq!(man.since.as_ref().unwrap().name, "c0");
    assert_eq!(man.captured.as_ref().unwrap().name, "c1");

    // inc2: c2 since c1, on inc1.
    f.writes(8);
    let m2 = f.checkpoint("c2");
    let inc2 = f.dir("inc2");
    let ch = f.vm.changes("c1", Some("c2")).unwrap();
    f.vm.export_incremental(Some("c2"), "c1", &inc2, &inc1, &mut NoHooks)
        .unwrap();
    assert_holds("inc2", &inc2, &ch, &m1, &m2);
    let chain = [full.clone(), inc1.clone(), inc2.clone()];
    assert_restores("full+inc1+inc2", &chain, &m2, t.path());

    // Delete c1 (merged), more writes, c3 since c2 on inc2.
    f.vm.delete("c1", false, &mut NoHooks).unwrap();
    f.writes(8);
    let m3 = f.checkpoint("c3");
    let inc3 = f.dir("inc3");
    let ch = f.vm.changes("c2", Some("c3")).unwrap();
    f.vm.export_incremental(Some("c3"), "c2", &inc3, &inc2, &mut NoHooks)
        .unwrap();
    assert_holds("inc3", &inc3, &ch, &m2, &m3);
    let chain = [full.clone(), inc1.clone(), inc2.clone(), inc3.clone()];
    assert_restores("full+inc1+inc2+inc3", &chain, &m3, t.path());
    // The earlier backups still restore (nothing wrote them).
    assert_restores(
        "full+inc1 again",
        &[full.clone(), inc1.clone()],
        &m1,
        t.path(),
    );

    // c3 since c0 straight on the full export, across the merged c1.
    let inc03 = f.dir("inc0-3");
    let ch = f.vm.changes("c0", Some("c3")).unwrap();
    f.vm.export_incremental(Some("c3"), "c0", &inc03, &full, &mut NoHooks)
        .unwrap();
    assert_holds("inc0-3", &inc03, &ch, &m0, &m3);
    assert_restores("full+inc0-3", &[full.clone(), inc03], &m3, t.path());

    // The current state since c3 on inc3 (offline).
    f.writes(6);
    let mcur = f.model.clone();
    let cur = f.dir("current");
    let ch = f.vm.changes("c3", None).unwrap();
    f.vm.export_incremental(None, "c3", &cur, &inc3, &mut NoHooks)
        .unwrap();
    assert_holds("current", &cur, &ch, &m3, &mcur);
    let chain = [full.clone(), inc1, inc2, inc3, cur.clone()];
    assert_restores("chain to the current state", &chain, &mcur, t.path());
    assert!(read_manifest(&cur).unwrap().captured.is_none());
    // An export of the current state captured no checkpoint: no base.
    let e =
        f.vm.export_incremental(None, "c3", &f.dir("x"), &cur, &mut NoHooks)
            .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("the current state"), "{e}");
    assert!(!f.dir("x").exists());
    assert!(f.vm.strays().unwrap().is_empty());
}

/// REF on another branch: the changes go through the common ancestor, and
/// the incremental on REF's export restores NAME.
#[test]
fn an_incremental_since_a_checkpoint_on_another_branch() {
    let t = support::tempdir();
    let mut f = fixture(t.path(), 7);
    f.writes(10);
    f.checkpoint("root");
    f.writes(8);
    let ma = f.checkpoint("a");
    f.vm.apply("root", None, &mut NoHooks).unwrap();
    // The model goes back to root's content.
    f.model = {
        let d: Vec<Vec<u8>> = (0..NAMES.len())
            .map(|k| {
                read_all(&Disk::open(&f.vm.data().current.disks[k], OpenMode::ReadOnly).unwrap())
            })
            .collect();
        d
    };
    f.writes(8);
    let mb = f.checkpoint("b");
    let full_a = f.dir("full-a");
    f.vm.export(Some("a"), &full_a, &mut NoHooks).unwrap();
    assert_restores("full of a", std::slice::from_ref(&full_a), &ma, t.path());
    let ch = f.vm.changes("a", Some("b")).unwrap();
    let inc = f.dir("b-since-a");
    f.vm.export_incremental(Some("b"), "a", &inc, &full_a, &mut NoHooks)
        .unwrap();
    assert_holds("b since a", &inc, &ch, &ma, &mb);
    assert_restores("full a + (b since a)", &[full_a, inc], &mb, t.path());
    // The backup set moved as a whole still opens (relative locators).
    let moved = t.path().join("moved");
    std::fs::rename(t.path().join("backups"), &moved).unwrap();
    let dirs = [moved.join("full-a"), moved.join("b-since-a")];
    assert_restores("the moved set", &dirs, &mb, t.path());
    // The changes are symmetric in what they cover.
    assert_eq!(f.vm.changes("b", Some("a")).unwrap(), ch);
}

/// An incremental export into `f.dir("inc")` is refused with `kind`,
/// saying `text`, and makes nothing.
fn refused(
    f: &mut Fixture,
    name: Option<&str>,
    since: &str,
    base: &Path,
    kind: ErrorKind,
    text: &str,
) {
    let dest = f.dir("inc");
    let e =
        f.vm.export_incremental(name, since, &dest, base, &mut NoHooks)
            .unwrap_err();
    assert_eq!(e.kind(), kind, "{name:?} since {since}: {e}");
    assert!(e.to_string().contains(text), "{name:?} since {since}: {e}");
    assert!(!dest.exists(), "{e}: made {}", dest.display());
}

/// What is refused changes nothing and says why.
#[test]
fn refusals_change_nothing() {
    let t = support::tempdir();
    let mut f = fixture(t.path(), 3);
    f.writes(4);
    f.checkpoint("c0");
    f.writes(4);
    f.checkpoint("c1");
    let full = f.dir("full");
    f.vm.export(Some("c0"), &full, &mut NoHooks).unwrap();
    let dest = f.dir("inc");
    // REF not older than NAME.
    refused(
        &mut f,
        Some("c0"),
        "c1",
        &full,
        ErrorKind::InvalidArgument,
        "taken after",
    );
    refused(
        &mut f,
        Some("c0"),
        "c0",
        &full,
        ErrorKind::InvalidArgument,
        "same checkpoint",
    );
    // Unknown names.
    refused(
        &mut f,
        Some("c1"),
        "nope",
        &full,
        ErrorKind::NotFound,
        "nope",
    );
    refused(
        &mut f,
        Some("nope"),
        "c0",
        &full,
        ErrorKind::NotFound,
        "nope",
    );
    // A base that captured another point than REF (c0, not c1).
    f.writes(2);
    f.checkpoint("c2");
    refused(
        &mut f,
        Some("c2"),
        "c1",
        &full,
        ErrorKind::InvalidArgument,
        "captured checkpoint \"c0\"",
    );
    // A missing base, a folder that is no export.
    let missing = f.dir("missing");
    refused(
        &mut f,
        Some("c1"),
        "c0",
        &missing,
        ErrorKind::NotFound,
        "missing",
    );
    let disks = t.path().join("disks");
    refused(
        &mut f,
        Some("c1"),
        "c0",
        &disks,
        ErrorKind::NotFound,
        "not an export",
    );
    // A base whose disk was written after the export.
    let other = f.dir("full-changed");
    f.vm.export(Some("c0"), &other, &mut NoHooks).unwrap();
    let d = Disk::open(other.join(NAMES[0]), OpenMode::ReadWrite).unwrap();
    d.write_at(&[1u8; 512], 0).unwrap();
    d.close().unwrap();
    refused(
        &mut f,
        Some("c1"),
        "c0",
        &other,
        ErrorKind::InvalidArgument,
        "changed after the export",
    );
    // The query refuses the same way.
    let e = f.vm.changes("c1", Some("c0")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(
        f.vm.changes("nope", None).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // A destination that is not empty.
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("x"), b"x").unwrap();
    let e =
        f.vm.export_incremental(Some("c1"), "c0", &dest, &full, &mut NoHooks)
            .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 1);
    // verify_backup tells a broken chain: the changed base under an
    // incremental made on it before the change.
    let good = f.dir("good-inc");
    f.vm.export_incremental(Some("c1"), "c0", &good, &full, &mut NoHooks)
        .unwrap();
    let d = Disk::open(full.join(NAMES[1]), OpenMode::ReadWrite).unwrap();
    d.write_at(&[1u8; 512], 0).unwrap();
    d.close().unwrap();
    let v = verify_backup(&[full.clone(), good.clone()]).unwrap();
    assert!(v[0].error.is_none(), "{:?}", v[0]);
    let err = v[1].error.as_deref().expect("a broken linkage is reported");
    assert!(err.contains("does not match"), "{err}");
    assert!(f.vm.strays().unwrap().is_empty());
}

struct CancelAt(usize);
impl Hooks for CancelAt {
    fn progress(&mut self, _done: u64, _total: u64) -> bool {
        self.0 = self.0.saturating_sub(1);
        self.0 > 0
    }
}

/// The VM of the crash sweep: c0 exported in full, writes, c1.
fn swept(root: &Path) -> Vm {
    let mut f = fixture(root, 11);
    f.writes(4);
    f.checkpoint("c0");
    f.vm.export(Some("c0"), &root.join("full"), &mut NoHooks)
        .unwrap();
    // Large enough for more than one progress call.
    f.write(0, 0, &vec![0x5a; 6 << 20]);
    f.writes(3);
    f.checkpoint("c1");
    f.vm
}

/// An incremental export cut at any file event (a crash there) or
/// cancelled leaves no partial file once the VM is reopened; uncut, it
/// restores.
#[test]
fn a_cut_or_cancelled_incremental_leaves_no_partial_files() {
    // Cut at event `n` (u64::MAX: only count), on a fresh VM in a memory
    // folder; returns the result, the events seen, the VM and its folder.
    let run = |n: u64, cut: Cut| {
        let t = support::fast_tempdir();
        let mut vm = swept(t.path());
        faults::arm(n, cut);
        let r = vm.export_incremental(
            Some("c1"),
            "c0",
            &t.path().join("inc"),
            &t.path().join("full"),
            &mut NoHooks,
        );
        let events = faults::disarm();
        (r, events, vm, t)
    };
    let (r, events, _, _) = run(u64::MAX, Cut::Clean);
    r.expect("the uncut export");
    assert!(events > 5, "{events} events");
    let mut failed = 0;
    for (n, cut) in (0..=events).flat_map(|n| [(n, Cut::Clean), (n, Cut::Torn)]) {
        let (r, _, vm, t) = run(n, cut);
        failed += usize::from(r.is_err());
        let ctx = format!("{cut:?} cut at {n} of {events} ({r:?})");
        let vm = reopened(vm, &ctx);
        let inc = t.path().join("inc");
        let left: Vec<PathBuf> = std::fs::read_dir(&inc)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if r.is_ok() {
            let v = verify_backup(&[t.path().join("full"), inc.clone()]).unwrap();
            assert!(v.iter().all(|d| d.error.is_none()), "{ctx}: {v:?}");
            let c1 = vm.find("c1").unwrap().disks.clone();
            for (k, name) in NAMES.iter().enumerate() {
                let got = read_all(&Disk::open(inc.join(name), OpenMode::ReadOnly).unwrap());
                let want = read_all(&Disk::open(&c1[k], OpenMode::ReadOnly).unwrap());
                support::assert_same(&format!("{ctx}: {name}"), &got, &want, 0);
            }
        } else {
            assert!(left.is_empty(), "{ctx}: left {left:?}");
        }
        drop(vm);
    }
    assert!(failed as u64 >= events, "only {failed} cut runs failed");

    // A cancel in the middle of the copy.
    let t = support::tempdir();
    let mut vm = swept(t.path());
    let e = vm
        .export_incremental(
            Some("c1"),
            "c0",
            &t.path().join("inc"),
            &t.path().join("full"),
            &mut CancelAt(2),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    let left: Vec<PathBuf> = std::fs::read_dir(t.path().join("inc"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left {left:?}");
    assert!(vm.strays().unwrap().is_empty());
}

/// The current state of an attached VM goes through a temporary
/// checkpoint; the tree keeps its checkpoints, the guest keeps writing.
#[test]
fn an_incremental_of_a_running_vms_current_state() {
    let t = support::tempdir();
    let mut f = fixture(t.path(), 21);
    f.writes(6);
    f.checkpoint("c0");
    let full = f.dir("full");
    f.vm.export(Some("c0"), &full, &mut NoHooks).unwrap();
    let live: Vec<_> = (0..NAMES.len()).map(|k| f.vm.disk(k).unwrap()).collect();
    let mut rng = Rng::new(5);
    for _ in 0..6 {
        let k = rng.below(2) as usize;
        let len = rng.range(1, 100 << 10);
        let off = rng.below(SIZE - len);
        let data = rng.bytes(len as usize);
        live[k].write_at(&data, off).unwrap();
        f.model[k][off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    let before = f.vm.data().checkpoints.len();
    let ch = f.vm.changes("c0", None).unwrap();
    assert!(ch.iter().any(|r| !r.is_empty()));
    let inc = f.dir("inc");
    f.vm.export_incremental(None, "c0", &inc, &full, &mut NoHooks)
        .unwrap();
    // The guest writes on.
    live[0].write_at(&[9u8; 4096], 0).unwrap();
    let visible = f.vm.data().checkpoints.iter().filter(|c| !c.hidden).count();
    assert_eq!(visible, before, "the tree keeps its checkpoints");
    assert_restores("running: full+inc", &[full, inc], &f.model, t.path());
}

/// The command line: `ckpt checkpoint export … --since --base`, `ckpt
/// changes DIR --since` (text and JSON, the same ranges as the library)
/// and `ckpt verify-backup` (exit 0, then 1 once a base is written).
#[cfg(feature = "cli")]
#[test]
fn the_command_line() {
    use support::cli::{fail, fails, json, ok, ok_text, run, s, write_at};
    let t = support::tempdir();
    let root = t.path();
    let disk = root.join("os.vhdx");
    ok(&["create", s(&disk), "--size", "8M", "--block-size", "1M"]);
    let vm = root.join("vm");
    ok(&["vm", "create", s(&vm), "--name", "v", "--disk", s(&disk)]);
    write_at(&disk, 0, b"hello");
    ok(&["checkpoint", "create", s(&vm), "c0"]);
    let full = root.join("full");
    ok(&["checkpoint", "export", s(&vm), "c0", s(&full)]);
    let cur = Vm::load(&vm).unwrap().current.disks[0].clone();
    write_at(&cur, 1_000_000, b"world");
    write_at(&cur, 5 << 20, &[7u8; 70_000]);
    ok(&["checkpoint", "create", s(&vm), "c1"]);
    let want = Vm::open(&vm).unwrap().changes("c0", Some("c1")).unwrap();
    let want: Vec<serde_json::Value> = want[0]
        .iter()
        .map(|r| serde_json::json!({"offset": r.offset, "length": r.length}))
        .collect();
    assert_eq!(want.len(), 2, "{want:?}");
    let got = json(&["changes", s(&vm), "--since", "c0", "--to", "c1", "--json"]);
    assert_eq!(got, serde_json::Value::Array(want.clone()));
    // The current state has nothing more.
    let got = json(&["changes", s(&vm), "--since", "c0", "--current", "--json"]);
    assert_eq!(got, serde_json::Value::Array(want));
    let text = ok_text(&["changes", s(&vm), "--since", "c0", "--to", "c1"]);
    assert!(text.starts_with("999936 512\n"), "{text}");
    assert!(text.contains("in 2 ranges"), "{text}");
    fail(&["changes", s(&vm), "--since", "c1", "--to", "c0"]);
    fail(&["changes", s(&vm), "--since", "nope"]);

    let inc = root.join("inc1");
    let e = fail(&[
        "checkpoint",
        "export",
        s(&vm),
        "c1",
        s(&inc),
        "--since",
        "c1",
        "--base",
        s(&full),
    ]);
    assert!(e.contains("same checkpoint"), "{e}");
    fail(&[
        "checkpoint",
        "export",
        s(&vm),
        "c1",
        s(&inc),
        "--since",
        "c0",
    ]);
    assert!(!inc.exists());
    ok(&[
        "checkpoint",
        "export",
        s(&vm),
        "c1",
        s(&inc),
        "--since",
        "c0",
        "--base",
        s(&full),
    ]);
    let text = ok_text(&["verify-backup", s(&full), s(&inc)]);
    assert!(text.starts_with("OK "), "{text}");
    let text = ok_text(&["verify-backup", s(&inc)]);
    assert!(text.contains("a chain of 2 exports"), "{text}");
    // The current state since c1 on inc1.
    let now = Vm::load(&vm).unwrap().current.disks[0].clone();
    write_at(&now, 3 << 20, b"later");
    let inc2 = root.join("inc2");
    ok(&[
        "checkpoint",
        "export",
        s(&vm),
        "--current",
        s(&inc2),
        "--since",
        "c1",
        "--base",
        s(&inc),
    ]);
    ok_text(&["verify-backup", s(&full), s(&inc), s(&inc2)]);
    let d = Disk::open(inc2.join("os.vhdx"), OpenMode::ReadOnly).unwrap();
    let mut b = [0u8; 5];
    d.read_at(&mut b, 3 << 20).unwrap();
    assert_eq!(&b, b"later");
    drop(d);
    // A written base breaks the chain: verify-backup says so and exits 1.
    write_at(&full.join("os.vhdx"), 0, b"x");
    let o = run(&["verify-backup", s(&full), s(&inc)]);
    let e = fails(&["verify-backup"], &o);
    assert!(e.contains("does not match"), "{e}");
    assert!(support::cli::stdout(&o).starts_with("FAILED "));
}

/// `changes --since` and an incremental export through the control
/// channel of a process holding the VM: the same ranges and a chain that
/// verifies, the operations run on the holder's handle.
#[cfg(feature = "cli")]
#[test]
fn the_command_line_through_the_holder() {
    use std::sync::{Arc, Mutex};

    use ckpt::checkpoint::control;
    use support::cli::{json, ok, ok_text, s, write_at};
    let t = support::tempdir();
    let root = std::fs::canonicalize(t.path()).unwrap();
    let disk = root.join("os.vhdx");
    ok(&["create", s(&disk), "--size", "8M", "--block-size", "1M"]);
    let vmdir = root.join("vm");
    ok(&["vm", "create", s(&vmdir), "--name", "v", "--disk", s(&disk)]);
    write_at(&disk, 0, b"hello");
    ok(&["checkpoint", "create", s(&vmdir), "c0"]);
    let full = root.join("full");
    ok(&["checkpoint", "export", s(&vmdir), "c0", s(&full)]);
    let cur = Vm::load(&vmdir).unwrap().current.disks[0].clone();
    write_at(&cur, 3 << 20, &[5u8; 3000]);
    ok(&["checkpoint", "create", s(&vmdir), "c1"]);

    let vm = Arc::new(Mutex::new(Vm::open(&vmdir).unwrap()));
    let server = control::serve(vm.clone(), None).unwrap();
    let got = json(&[
        "changes",
        s(&vmdir),
        "--since",
        "c0",
        "--to",
        "c1",
        "--json",
    ]);
    let want = vm.lock().unwrap().changes("c0", Some("c1")).unwrap();
    assert_eq!(want[0].len(), 1);
    assert_eq!(got[0]["offset"], want[0][0].offset);
    assert_eq!(got[0]["length"], want[0][0].length);
    let inc = root.join("inc");
    ok(&[
        "checkpoint",
        "export",
        s(&vmdir),
        "c1",
        s(&inc),
        "--since",
        "c0",
        "--base",
        s(&full),
    ]);
    ok_text(&["verify-backup", s(&full), s(&inc)]);
    drop(server);
    let m = read_manifest(&inc).unwrap();
    assert_eq!(m.since.unwrap().name, "c0");
}
