//! The `ckpt vm …` and `ckpt checkpoint …` commands, driven as scripts
//! drive them: a whole scenario through the checkpoint tree with the disk
//! bytes of every state checked after each step (against a plain byte
//! model, through the library and `ckpt read`, and the exported disks
//! through QEMU), every refusal (exit 1, one `error:` line, nothing on
//! disk changed), and two processes on one VM.

#![cfg(feature = "cli")]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use ckpt::{Disk, OpenMode};

use support::cli::{
    assert_ok, ckpt, fail, fails, info_json, json, ok, ok_in, ok_text, run, s, stdout, write_at,
};
use support::{pattern, qemu_reads, MIB};

/// Virtual sizes of the VM's two disks (os, data).
const SIZES: [u64; 2] = [2 * MIB, MIB];

/// Everything under `root` (relative path → content), to prove that a
/// refusal changed nothing: the VM file, the disks, the checkpoint files.
/// The lock file is left out (taking the lock may create it).
fn tree_snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != ".lock") {
                let bytes = std::fs::read(&p).expect("read file");
                out.insert(
                    p.strip_prefix(root).expect("under root").to_path_buf(),
                    bytes,
                );
            }
        }
    }
    out
}

/// A test folder: `disks/` with the VM's two VHDX disks, the VM folder
/// `vm/`, and room for exports.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    vm: PathBuf,
    disks: [PathBuf; 2],
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = support::tempdir();
        let root = std::fs::canonicalize(tmp.path()).expect("canonical temp dir");
        std::fs::create_dir(root.join("disks")).expect("mkdir disks");
        let disks = [root.join("disks/os.vhdx"), root.join("disks/data.vhdx")];
        for (d, size) in disks.iter().zip(SIZES) {
            ok(&[
                "create",
                s(d),
                "--size",
                &size.to_string(),
                "--block-size",
                "1M",
            ]);
        }
        Fixture {
            vm: root.join("vm"),
            _tmp: tmp,
            root,
            disks,
        }
    }

    fn vm(&self) -> &str {
        s(&self.vm)
    }

    /// `ckpt vm create` of a VM called `name` on the first disk, with the
    /// `extra` options.
    #[track_caller]
    fn create_vm(&self, name: &str, extra: &[&str]) {
        let mut args = vec![
            "vm",
            "create",
            self.vm(),
            "--name",
            name,
            "--disk",
            s(&self.disks[0]),
        ];
        args.extend_from_slice(extra);
        ok(&args);
    }

    fn show(&self) -> Value {
        json(&["vm", "show", self.vm(), "--json"])
    }

    fn list(&self) -> Value {
        json(&["checkpoint", "list", self.vm(), "--json"])
    }

    /// The files the VM writes to now, as `vm show --json` reports them.
    fn current_disks(&self) -> Vec<PathBuf> {
        let v = self.show();
        let disks = v["disks"].as_array().expect("disks");
        disks
            .iter()
            .map(|d| PathBuf::from(d["path"].as_str().expect("disk path")))
            .collect()
    }

    /// Refused: exit 1, one error line containing every `needle`, and not
    /// one byte under the test folder changed.
    #[track_caller]
    fn refused(&self, args: &[&str], needles: &[&str]) -> String {
        let before = tree_snapshot(&self.root);
        let o = run(args);
        let line = fails(args, &o);
        assert!(o.stdout.is_empty(), "ckpt {args:?} printed {}", stdout(&o));
        for n in needles {
            assert!(
                line.to_lowercase().contains(&n.to_lowercase()),
                "ckpt {args:?}: {line:?} does not say {n:?}"
            );
        }
        let after = tree_snapshot(&self.root);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "ckpt {args:?} (refused) added or removed files"
        );
        for (k, v) in &before {
            assert!(
                after.get(k) == Some(v),
                "ckpt {args:?} (refused) changed {}",
                k.display()
            );
        }
        line
    }
}

/// What every disk of one state holds.
type Content = Vec<Vec<u8>>;

fn zero_content() -> Content {
    SIZES.iter().map(|&n| vec![0u8; n as usize]).collect()
}

/// Write through `ckpt write` into disk `k` of the state whose files are
/// `disks` (the bytes [`pattern`] makes for `tag`), and into the model.
#[track_caller]
fn put(disks: &[PathBuf], model: &mut Content, k: usize, off: u64, tag: u8, len: usize) {
    let data = pattern(tag.into(), 0, len);
    write_at(&disks[k], off, &data);
    model[k][off as usize..off as usize + len].copy_from_slice(&data);
}

/// The disks `disks` read (through their chains) exactly as `want`.
#[track_caller]
fn assert_reads(what: &str, disks: &[PathBuf], want: &Content) {
    assert_eq!(disks.len(), want.len(), "{what}: number of disks");
    for (k, (p, w)) in disks.iter().zip(want).enumerate() {
        let d = Disk::open(p, OpenMode::ReadOnly)
            .unwrap_or_else(|e| panic!("{what}: open disk {k} {}: {e}", p.display()));
        assert_eq!(d.virtual_size(), w.len() as u64, "{what}: disk {k} size");
        let mut got = vec![0u8; w.len()];
        d.read_at(&mut got, 0)
            .unwrap_or_else(|e| panic!("{what}: read disk {k}: {e}"));
        support::assert_same(&format!("{what}: disk {k} ({})", p.display()), &got, w, 0);
    }
}

/// The entry of checkpoint `name` in `list --json` output.
#[track_caller]
fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["checkpoints"]
        .as_array()
        .expect("checkpoints array")
        .iter()
        .find(|c| c["name"] == name && c["hidden"] != true)
        .unwrap_or_else(|| panic!("no checkpoint {name:?} in {list:#}"))
}

fn paths(v: &Value) -> Vec<PathBuf> {
    v.as_array()
        .expect("array of paths")
        .iter()
        .map(|p| {
            let p = p.as_str().expect("path");
            assert!(p.starts_with('/'), "path {p:?} is not absolute");
            PathBuf::from(p)
        })
        .collect()
}

/// The disks of checkpoint `name`.
fn ck_disks(f: &Fixture, name: &str) -> Vec<PathBuf> {
    paths(&entry(&f.list(), name)["disks"])
}

/// Every state's content is what the model says: each named checkpoint
/// (read through its own disk files) and the current state.
#[track_caller]
fn assert_tree(f: &Fixture, models: &BTreeMap<&str, Content>, current: &Content, step: &str) {
    let list = f.list();
    let visible: Vec<&str> = list["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .filter(|c| c["hidden"] != true)
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    let mut want: Vec<&str> = models.keys().copied().collect();
    let mut got = visible.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{step}: the checkpoints listed");
    for (name, content) in models {
        assert_reads(
            &format!("{step}: checkpoint {name}"),
            &paths(&entry(&list, name)["disks"]),
            content,
        );
    }
    assert_reads(&format!("{step}: now"), &f.current_disks(), current);
}

/// A line of `checkpoint list` without the tree drawing in front of it.
fn tree_body(line: &str) -> &str {
    line.trim_start_matches(['│', '├', '└', '─', ' '])
}

/// The tree line for `name`, if there is one.
fn find_tree_line<'a>(tree: &'a str, name: &str) -> Option<&'a str> {
    tree.lines().find(|l| {
        let body = tree_body(l);
        body == name || body.starts_with(&format!("{name}  "))
    })
}

/// The tree line for `name`.
#[track_caller]
fn tree_line<'a>(tree: &'a str, name: &str) -> &'a str {
    find_tree_line(tree, name)
        .unwrap_or_else(|| panic!("no line for {name:?} in the tree:\n{tree}"))
}

/// The indentation (column of the name) of the tree line for `name`.
#[track_caller]
fn tree_column(tree: &str, name: &str) -> usize {
    let line = tree_line(tree, name);
    line.chars().count() - tree_body(line).chars().count()
}

#[test]
fn whole_scenario() {
    let f = Fixture::new();
    let vm = f.vm();
    let mut now: Content = zero_content();
    put(&f.disks, &mut now, 0, 0, 1, 8192);
    put(&f.disks, &mut now, 1, 4096, 2, 4096);

    // ---- vm create / show
    let out = ok_text(&[
        "vm",
        "create",
        vm,
        "--name",
        "web",
        "--disk",
        s(&f.disks[0]),
        s(&f.disks[1]),
        "--passthrough",
        "/dev/sdz",
        "--memory",
        "2048",
        "--cpus",
        "2",
    ]);
    assert!(out.contains("web"), "{out}");
    let v = f.show();
    assert_eq!(v["name"], "web");
    assert_eq!(v["state"], "off");
    assert_eq!(v["memory_mib"], 2048);
    assert_eq!(v["cpus"], 2);
    assert_eq!(v["checkpoint_type"], "production");
    assert_eq!(v["current_checkpoint"], Value::Null);
    assert_eq!(v["passthrough"][0], "/dev/sdz");
    assert_eq!(
        f.current_disks(),
        f.disks.to_vec(),
        "disks in the given order"
    );
    let text = ok_text(&["vm", "show", vm]);
    for want in [
        "web",
        "off",
        "2048 MiB",
        "production",
        "/dev/sdz",
        s(&f.disks[0]),
    ] {
        assert!(text.contains(want), "vm show lacks {want:?}:\n{text}");
    }
    assert_reads("created", &f.current_disks(), &now);
    // No checkpoint yet: nothing to revert to.
    f.refused(&["checkpoint", "revert", vm], &["no checkpoint"]);

    // ---- vm set
    ok(&[
        "vm",
        "set",
        vm,
        "--memory",
        "3072",
        "--cpus",
        "4",
        "--age-warning",
        "72h",
        "--state",
        "running",
    ]);
    let v = f.show();
    assert_eq!(v["memory_mib"], 3072);
    assert_eq!(v["cpus"], 4);
    assert_eq!(v["state"], "running");
    assert_eq!(v["age_warning_seconds"], 72 * 3600);

    // ---- production checkpoint: the quiesce command succeeds, thaw runs
    let thawed = f.root.join("thawed");
    let thaw = format!("touch '{}'", thawed.display());
    let out = ok_text(&[
        "checkpoint",
        "create",
        vm,
        "a",
        "--quiesce-cmd",
        "true",
        "--thaw-cmd",
        &thaw,
    ]);
    assert!(out.contains("production"), "{out}");
    assert!(thawed.exists(), "the thaw command did not run");
    let v = f.show();
    assert_eq!(v["current_checkpoint"], "a");
    let cur = f.current_disks();
    assert_ne!(cur, f.disks.to_vec(), "the VM writes to new files now");
    for (c, d) in cur.iter().zip(&f.disks) {
        assert_eq!(c.parent(), d.parent(), "new disks go next to the old ones");
        let info = info_json(c);
        assert_eq!(
            info["parent"],
            s(d),
            "{} is a child of {}",
            c.display(),
            d.display()
        );
    }
    let mut models: BTreeMap<&str, Content> = BTreeMap::new();
    models.insert("a", now.clone());
    put(&cur, &mut now, 0, MIB, 3, 4096);
    put(&cur, &mut now, 1, 0, 4, 512);
    assert_tree(&f, &models, &now, "after a");

    // ---- production falls back to standard: the quiesce command fails
    let out = ok_text(&["checkpoint", "create", vm, "b", "--quiesce-cmd", "false"]);
    assert!(out.contains("standard"), "{out}");
    models.insert("b", now.clone());
    let cur = f.current_disks();
    put(&cur, &mut now, 0, 0, 5, 1024);
    assert_tree(&f, &models, &now, "after b");

    // ---- standard with memory state
    ok(&["vm", "set", vm, "--checkpoint-type", "standard"]);
    let mem = f.root.join("mem.bin");
    std::fs::write(&mem, b"memory and CPU state").expect("write mem.bin");
    ok(&["checkpoint", "create", vm, "c", "--memory-state", s(&mem)]);
    models.insert("c", now.clone());
    let cur = f.current_disks();
    put(&cur, &mut now, 0, 2 * MIB - 4096, 6, 4096);
    put(&cur, &mut now, 1, MIB - 512, 7, 512);
    // Changed after c: comes back from c's capture below, not from c.
    ok(&["vm", "set", vm, "--memory", "8192"]);
    assert_tree(&f, &models, &now, "after c");

    // ---- list: JSON fields
    let list = f.list();
    let (a, b, c) = (entry(&list, "a"), entry(&list, "b"), entry(&list, "c"));
    assert_eq!(a["parent"], Value::Null);
    assert_eq!(b["parent"], a["id"]);
    assert_eq!(c["parent"], b["id"]);
    assert_eq!(list["current"]["parent"], c["id"]);
    assert_eq!(a["type"], "production");
    assert_eq!(a["requested_type"], "production");
    assert_eq!(a["fallback_reason"], Value::Null);
    assert_eq!(b["type"], "standard");
    assert_eq!(b["requested_type"], "production");
    let reason = b["fallback_reason"].as_str().expect("fallback reason");
    assert!(
        reason.contains("command exited with status 1"),
        "fallback reason {reason:?}"
    );
    assert_eq!(c["type"], "standard");
    assert_eq!(c["requested_type"], "standard");
    assert_eq!(a["saved_state"], Value::Null);
    assert_eq!(b["saved_state"], Value::Null);
    let saved = PathBuf::from(c["saved_state"].as_str().expect("c's memory state"));
    assert!(
        saved.starts_with(f.vm.join("checkpoints")),
        "{}",
        saved.display()
    );
    assert_eq!(
        std::fs::read(&saved).expect("read memory state"),
        b"memory and CPU state"
    );
    for x in [a, b, c] {
        assert_eq!(x["skipped_passthrough"][0], "/dev/sdz");
        assert_eq!(x["disks"].as_array().expect("disks").len(), 2);
        assert!(x["created"].as_u64().expect("created") > 1_600_000_000);
        assert!(x["age_seconds"].as_u64().expect("age") < 3600);
        assert!(x["size_bytes"].as_u64().is_some());
        assert_eq!(x["age_warning"], false);
        assert!(x["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    // b's and c's own layers hold data; a is the base disks.
    assert!(b["size_bytes"].as_u64() > Some(0));

    // ---- list: the tree
    let tree = ok_text(&["checkpoint", "list", vm]);
    let (ca, cb, cc, cn) = (
        tree_column(&tree, "a"),
        tree_column(&tree, "b"),
        tree_column(&tree, "c"),
        tree_column(&tree, "now"),
    );
    assert!(ca < cb && cb < cc && cc < cn, "indentation:\n{tree}");
    assert!(tree_line(&tree, "a").contains("production"), "{tree}");
    let lb = tree_line(&tree, "b");
    assert!(lb.contains("standard") && lb.contains("warning"), "{tree}");
    assert!(lb.contains("status 1"), "b's fallback is shown:\n{tree}");
    assert!(tree_line(&tree, "c").contains("memory state"), "{tree}");
    assert!(tree_line(&tree, "now").contains("running"), "{tree}");
    assert!(!tree.contains("older than"), "no age warning yet:\n{tree}");

    // ---- apply b, keeping the current state as d (a running VM is
    // refused: stop it first)
    f.refused(
        &["checkpoint", "apply", vm, "b", "--save-current", "d"],
        &["stop or save the VM first"],
    );
    ok(&["vm", "set", vm, "--state", "off"]);
    let before_apply = now.clone();
    ok(&["checkpoint", "apply", vm, "b", "--save-current", "d"]);
    models.insert("d", before_apply.clone());
    now = models["b"].clone();
    let v = f.show();
    assert_eq!(v["current_checkpoint"], "b");
    assert_eq!(v["memory_mib"], 3072, "b's configuration came back");
    assert_eq!(v["cpus"], 4);
    assert_eq!(v["state"], "off", "b has no memory state");
    let list = f.list();
    assert_eq!(
        entry(&list, "d")["parent"],
        entry(&list, "c")["id"],
        "the captured state hangs where the current state did"
    );
    assert_eq!(list["current"]["parent"], entry(&list, "b")["id"]);
    assert_tree(&f, &models, &now, "after apply b --save-current d");
    let cur = f.current_disks();
    put(&cur, &mut now, 0, 512 * 1024, 8, 4096);

    // ---- apply c without saving: the change above is discarded; c's
    // memory state makes the VM saved
    ok(&["checkpoint", "apply", vm, "c"]);
    now = models["c"].clone();
    let v = f.show();
    assert_eq!(v["current_checkpoint"], "c");
    assert_eq!(v["state"], "saved");
    assert_eq!(v["saved_state"], s(&saved));
    assert_eq!(v["memory_mib"], 3072);
    assert_tree(&f, &models, &now, "after apply c");

    // ---- revert discards what was written since
    put(&f.current_disks(), &mut now, 1, 0, 9, 4096);
    ok(&["checkpoint", "revert", vm]);
    now = models["c"].clone();
    assert_eq!(f.show()["current_checkpoint"], "c");
    assert_tree(&f, &models, &now, "after revert");

    // ---- apply d: config isolation (vm set --memory 8192 after c comes
    // back with d, which captured it)
    ok(&["checkpoint", "apply", vm, "d"]);
    now = models["d"].clone();
    let v = f.show();
    assert_eq!(v["memory_mib"], 8192, "d's configuration came back");
    assert_eq!(v["current_checkpoint"], "d");
    assert_tree(&f, &models, &now, "after apply d");
    put(&f.current_disks(), &mut now, 0, 1536 * 1024, 10, 8192);

    // ---- rename
    ok(&["checkpoint", "rename", vm, "d", "d2"]);
    let m = models.remove("d").expect("d");
    models.insert("d2", m);
    assert_eq!(f.show()["current_checkpoint"], "d2");
    assert_tree(&f, &models, &now, "after rename");

    // ---- export: standalone disks reading as the checkpoint did
    let exp = f.root.join("export-c");
    let out = ok_text(&["checkpoint", "export", vm, "c", s(&exp)]);
    assert!(out.contains("export-c"), "{out}");
    let exported = [exp.join("os.vhdx"), exp.join("data.vhdx")];
    for (k, e) in exported.iter().enumerate() {
        let info = info_json(e);
        assert_eq!(info["parent"], Value::Null, "{}: has a parent", e.display());
        assert_eq!(info["chain"].as_array().map(Vec::len), Some(1));
        assert_eq!(info["virtual_size"], SIZES[k]);
        let o = ok(&["read", s(e), "0", &SIZES[k].to_string()]);
        assert!(
            o.stdout == models["c"][k],
            "exported disk {k} differs from c"
        );
        ok(&["check", s(e)]);
    }
    if support::require_tool("qemu-img") {
        for (k, e) in exported.iter().enumerate() {
            qemu_reads(e, &models["c"][k], &f.root);
        }
    }
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(exp.join("config.json")).expect("config.json"))
            .expect("config JSON");
    assert_eq!(cfg["memory_mib"], 3072);
    assert_eq!(
        std::fs::read(exp.join("memory.vmrs")).expect("exported memory state"),
        b"memory and CPU state"
    );
    // The current state (optional --current form).
    let exp_now = f.root.join("export-now");
    ok(&["checkpoint", "export", vm, "--current", s(&exp_now)]);
    assert_reads(
        "exported current state",
        &[exp_now.join("os.vhdx"), exp_now.join("data.vhdx")],
        &now,
    );
    assert_tree(&f, &models, &now, "after export");

    // ---- a leaf: keep the current state as "leaf", go back to b
    ok(&["checkpoint", "apply", vm, "b", "--save-current", "leaf"]);
    models.insert("leaf", now.clone());
    now = models["b"].clone();
    put(&f.current_disks(), &mut now, 1, 8192, 11, 4096);
    let list = f.list();
    assert_eq!(entry(&list, "leaf")["parent"], entry(&list, "d2")["id"]);
    assert_eq!(list["current"]["parent"], entry(&list, "b")["id"]);
    assert_tree(&f, &models, &now, "before delete leaf");

    // ---- delete the leaf: its own disk files go
    let leaf_disks = ck_disks(&f, "leaf");
    ok(&["checkpoint", "delete", vm, "leaf"]);
    models.remove("leaf");
    for p in &leaf_disks {
        assert!(!p.exists(), "{} outlived its checkpoint", p.display());
    }
    assert_tree(&f, &models, &now, "after delete leaf");

    // ---- delete a middle checkpoint (c: one child, d2): merged away
    ok(&["checkpoint", "delete", vm, "c"]);
    models.remove("c");
    assert!(!saved.exists(), "c's memory state was removed");
    let list = f.list();
    assert_eq!(entry(&list, "d2")["parent"], entry(&list, "b")["id"]);
    assert_tree(&f, &models, &now, "after delete middle c");

    // ---- delete a branch point (b: d2 and the current state hang under it)
    let out = ok_text(&["checkpoint", "delete", vm, "b"]);
    assert!(out.contains("hidden"), "{out}");
    models.remove("b");
    assert_tree(&f, &models, &now, "after delete branch point b");
    let tree = ok_text(&["checkpoint", "list", vm]);
    assert!(
        tree_column(&tree, "a") < tree_column(&tree, "d2")
            && tree_column(&tree, "d2") == tree_column(&tree, "now"),
        "d2 and now show under a:\n{tree}"
    );
    assert!(
        find_tree_line(&tree, "b").is_none(),
        "b is not shown:\n{tree}"
    );
    f.refused(
        &["checkpoint", "apply", vm, "b"],
        &["no checkpoint", "\"b\""],
    );
    f.refused(
        &["checkpoint", "rename", vm, "a", "d2"],
        &["already exists"],
    );
    let list = f.list();
    assert_eq!(
        list["checkpoints"]
            .as_array()
            .map(|v| v.iter().filter(|c| c["hidden"] == true).count()),
        Some(1),
        "b stays as a hidden node: {list:#}"
    );

    // ---- delete a --subtree (a, the hidden b, d2)
    let out = ok_text(&["checkpoint", "delete", vm, "a", "--subtree"]);
    assert!(out.contains("1 checkpoint under it"), "{out}");
    models.clear();
    assert_tree(&f, &models, &now, "after delete --subtree");
    let list = f.list();
    assert_eq!(
        list["checkpoints"].as_array().map(Vec::len),
        Some(0),
        "{list:#}"
    );
    assert_eq!(list["current"]["parent"], Value::Null);
    assert_eq!(f.show()["current_checkpoint"], Value::Null);
    let tree = ok_text(&["checkpoint", "list", vm]);
    assert_eq!(tree_column(&tree, "now"), 0, "{tree}");
    // Only the files of the current state are left next to the disks.
    let mut left: Vec<PathBuf> = std::fs::read_dir(f.root.join("disks"))
        .expect("read disks")
        .flatten()
        .map(|e| e.path())
        .collect();
    left.sort();
    let mut cur = f.current_disks();
    cur.sort();
    assert_eq!(left, cur, "stray files next to the disks");
    // Configuration copies and memory states went with their checkpoints.
    let loc = f.vm.join("checkpoints");
    let stray: Vec<_> = std::fs::read_dir(&loc)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        stray.is_empty(),
        "left in the checkpoint location: {stray:?}"
    );
    assert!(!f.vm.join("journal.json").exists());
}

#[test]
fn refusals_change_nothing() {
    let f = Fixture::new();
    let vm = f.vm();
    // vm create: a missing disk, bad values, no disk at all.
    let missing_disk = f.root.join("disks/none.vhdx");
    let os = s(&f.disks[0]);
    for (extra, needle) in [
        (&["--disk", s(&missing_disk)][..], "none.vhdx"),
        (&["--disk", os, "--cpus", "0"], "--cpus"),
        (
            &["--disk", os, "--checkpoint-type", "fast"],
            "checkpoint type",
        ),
        (&[], "--disk"),
    ] {
        let mut args = vec!["vm", "create", vm, "--name", "x"];
        args.extend_from_slice(extra);
        f.refused(&args, &[needle]);
        assert!(!f.vm.exists(), "a refused vm create made the folder");
    }
    f.refused(&["vm", "show", vm], &["no such VM folder"]);
    f.refused(&["vm", "show", s(&f.root)], &["not a VM folder"]);
    f.refused(&["checkpoint", "list", s(&f.root)], &["not a VM folder"]);
    f.refused(
        &["checkpoint", "create", s(&f.root), "x"],
        &["not a VM folder"],
    );

    ok(&[
        "vm",
        "create",
        vm,
        "--name",
        "db",
        "--disk",
        s(&f.disks[0]),
        "--disk",
        s(&f.disks[1]),
        "--checkpoint-type",
        "production-only",
    ]);
    assert_eq!(f.show()["checkpoint_type"], "production-only");
    f.refused(
        &[
            "vm",
            "create",
            vm,
            "--name",
            "again",
            "--disk",
            s(&f.disks[0]),
        ],
        &["already holds a VM"],
    );
    f.refused(&["vm", "set", vm], &["nothing to change"]);
    f.refused(&["vm", "set", vm, "--memory", "0"], &["--memory"]);
    f.refused(
        &["vm", "set", vm, "--cpus", "0", "--memory", "10"],
        &["--cpus"],
    );
    f.refused(&["vm", "set", vm, "--state", "paused"], &["paused"]);
    f.refused(&["vm", "set", vm, "--age-warning", "3y"], &["duration"]);
    f.refused(&["vm"], &["no command given", "ckpt vm --help"]);
    f.refused(&["checkpoint", "create", vm], &["<NAME>"]);

    // production-only: no quiesce command, or a failing one, is refused
    // (for a running VM: an off one has nothing to quiesce, see
    // tests/vm_kinds.rs).
    ok(&["vm", "set", vm, "--state", "running"]);
    f.refused(
        &["checkpoint", "create", vm, "x"],
        &["production-only", "quiesce"],
    );
    let out = f.refused(
        &[
            "checkpoint",
            "create",
            vm,
            "x",
            "--quiesce-cmd",
            "echo first >&2; echo guest agent not running >&2; exit 3",
        ],
        &["production-only", "command exited with status 3"],
    );
    assert!(out.ends_with("guest agent not running"), "{out}");
    let mem = f.root.join("mem.bin");
    std::fs::write(&mem, b"MEM").expect("write mem");
    f.refused(
        &[
            "checkpoint",
            "create",
            vm,
            "x",
            "--quiesce-cmd",
            "true",
            "--memory-state",
            s(&mem),
        ],
        &["production-only", "memory state"],
    );
    f.refused(
        &["checkpoint", "create", vm, "x", "--thaw-cmd", "true"],
        &["--quiesce-cmd"],
    );

    // A first checkpoint to refuse things about.
    ok(&["checkpoint", "create", vm, "one", "--quiesce-cmd", "exit 0"]);
    let list = f.list();
    assert_eq!(entry(&list, "one")["type"], "production");
    f.refused(
        &["checkpoint", "create", vm, "one", "--quiesce-cmd", "true"],
        &["\"one\"", "already exists"],
    );
    f.refused(
        &[
            "checkpoint",
            "create",
            vm,
            "x",
            "--memory-state",
            s(&f.root.join("nothere.bin")),
        ],
        &["--memory-state", "nothere.bin"],
    );
    // Apply needs a VM that is not running.
    ok(&["vm", "set", vm, "--state", "off"]);
    for args in [
        vec!["checkpoint", "apply", vm, "nope"],
        vec!["checkpoint", "delete", vm, "nope"],
        vec!["checkpoint", "delete", vm, "nope", "--subtree"],
        vec!["checkpoint", "rename", vm, "nope", "other"],
        vec!["checkpoint", "export", vm, "nope", s(&f.root.join("exp"))],
    ] {
        f.refused(&args, &["no checkpoint called \"nope\"", "\"one\""]);
    }
    f.refused(
        &["checkpoint", "apply", vm, "one", "--save-current", "one"],
        &["already exists"],
    );
    f.refused(
        &["checkpoint", "apply", vm, "one", "--quiesce-cmd", "true"],
        &["--save-current"],
    );
    ok(&["checkpoint", "create", vm, "two", "--quiesce-cmd", "true"]);
    f.refused(
        &["checkpoint", "rename", vm, "two", "one"],
        &["already exists"],
    );
    f.refused(&["checkpoint", "export", vm, "one"], &["DEST"]);
    f.refused(
        &[
            "checkpoint",
            "export",
            vm,
            "one",
            s(&f.root.join("e")),
            "--current",
        ],
        &["--current"],
    );
    // An export into a folder that holds something.
    f.refused(
        &["checkpoint", "export", vm, "one", s(&f.root.join("disks"))],
        &["not an empty folder"],
    );

    // Disabled checkpoints.
    ok(&["vm", "set", vm, "--checkpoint-type", "disabled"]);
    f.refused(&["checkpoint", "create", vm, "x"], &["disabled"]);
    f.refused(
        &["checkpoint", "create", vm, "x", "--memory-state", s(&mem)],
        &["disabled"],
    );
    f.refused(
        &["checkpoint", "apply", vm, "one", "--save-current", "x"],
        &["disabled"],
    );
    ok(&["vm", "set", vm, "--checkpoint-type", "production"]);
    ok(&["vm", "set", vm, "--state", "running"]);

    // A failing thaw command: the checkpoint is taken, but the tool says
    // the guest may still be frozen (exit 1, one line).
    let args = [
        "checkpoint",
        "create",
        vm,
        "three",
        "--quiesce-cmd",
        "true",
        "--thaw-cmd",
        "echo cannot thaw >&2; exit 4",
    ];
    let line = fail(&args);
    assert!(
        line.contains("\"three\" was taken")
            && line.contains("status 4: cannot thaw")
            && line.contains("quiesced"),
        "{line}"
    );
    assert_eq!(entry(&f.list(), "three")["type"], "production");

    // Without a quiesce command, production falls back to standard and
    // says why.
    ok(&["checkpoint", "create", vm, "four"]);
    let list = f.list();
    let four = entry(&list, "four");
    assert_eq!(four["type"], "standard");
    assert_eq!(four["requested_type"], "production");
    assert!(
        four["fallback_reason"]
            .as_str()
            .is_some_and(|r| r.contains("--quiesce-cmd")),
        "{four:#}"
    );
    // A production checkpoint does not keep a --memory-state file.
    let out = ok_text(&[
        "checkpoint",
        "create",
        vm,
        "five",
        "--quiesce-cmd",
        "true",
        "--memory-state",
        s(&mem),
    ]);
    assert!(out.contains("memory state not kept"), "{out}");
    assert_eq!(entry(&f.list(), "five")["saved_state"], Value::Null);
}

#[test]
fn age_warnings_show_in_list() {
    let f = Fixture::new();
    let vm = f.vm();
    f.create_vm("old", &["--checkpoint-type", "standard"]);
    ok(&["checkpoint", "create", vm, "young"]);
    ok(&["checkpoint", "create", vm, "aged"]);
    ok(&["vm", "set", vm, "--age-warning", "3d"]);
    // Pretend "aged" was taken four days ago.
    let file = f.vm.join("vm.json");
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("vm.json")).expect("JSON");
    for c in v["checkpoints"].as_array_mut().expect("checkpoints") {
        if c["name"] == "aged" {
            let t = c["created"].as_u64().expect("created");
            c["created"] = Value::from(t - 4 * 86_400);
        }
    }
    std::fs::write(&file, serde_json::to_vec_pretty(&v).expect("JSON")).expect("write vm.json");

    let list = f.list();
    assert_eq!(entry(&list, "aged")["age_warning"], true);
    assert!(entry(&list, "aged")["age_seconds"].as_u64() >= Some(4 * 86_400));
    assert_eq!(entry(&list, "young")["age_warning"], false);
    let tree = ok_text(&["checkpoint", "list", vm]);
    let aged = tree_line(&tree, "aged");
    assert!(
        aged.contains("older than 3d") && aged.contains("4d"),
        "{tree}"
    );
    assert!(!tree_line(&tree, "young").contains("warning"), "{tree}");
    assert_eq!(f.show()["age_warning_seconds"], 3 * 86_400);
    ok(&["vm", "set", vm, "--age-warning", "off"]);
    assert_eq!(f.show()["age_warning_seconds"], Value::Null);
    assert_eq!(entry(&f.list(), "aged")["age_warning"], false);
}

#[test]
fn two_processes_on_one_vm() {
    let f = Fixture::new();
    let vm = f.vm();
    f.create_vm("shared", &[]);
    // Running, so that the quiesce command runs.
    ok(&["vm", "set", vm, "--state", "running"]);
    let held = ckpt::checkpoint::Vm::open(&f.vm).expect("open the VM in the test process");
    f.refused(
        &["checkpoint", "create", vm, "x", "--quiesce-cmd", "true"],
        &["busy"],
    );
    f.refused(&["vm", "set", vm, "--memory", "4096"], &["busy"]);
    // Reading needs no lock.
    assert_eq!(f.show()["name"], "shared");
    assert_eq!(f.list()["checkpoints"].as_array().map(Vec::len), Some(0));
    drop(held);
    ok(&["checkpoint", "create", vm, "x", "--quiesce-cmd", "true"]);
    assert_eq!(entry(&f.list(), "x")["type"], "production");

    // Two processes of the tool: the first holds the VM (its quiesce
    // command waits for a go file); the second is refused, then the first
    // finishes.
    let started = f.root.join("started");
    let go = f.root.join("go");
    let quiesce = format!(
        "touch '{}'; i=0; while [ ! -e '{}' ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done",
        started.display(),
        go.display()
    );
    let first = ckpt()
        .args(["checkpoint", "create", vm, "y", "--quiesce-cmd", &quiesce])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the first ckpt");
    let t0 = std::time::Instant::now();
    while !started.exists() {
        assert!(t0.elapsed().as_secs() < 30, "the first ckpt never quiesced");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let args = ["checkpoint", "delete", vm, "x"];
    let line = fail(&args);
    assert!(line.contains("busy"), "{line}");
    match ckpt::checkpoint::Vm::open(&f.vm) {
        Err(e) => assert_eq!(e.kind(), ckpt::ErrorKind::Busy, "{e}"),
        Ok(_) => panic!("the library opened a VM the tool holds"),
    }
    std::fs::write(&go, b"").expect("write go");
    let o = first.wait_with_output().expect("wait for the first ckpt");
    assert_ok(&["checkpoint", "create", "y"], &o);
    let list = f.list();
    assert_eq!(entry(&list, "y")["type"], "production");
    assert_eq!(entry(&list, "x")["type"], "production");
    ckpt::checkpoint::Vm::open(&f.vm).expect("open after the tool finished");
}

#[test]
fn relative_paths_and_checkpoint_location() {
    let f = Fixture::new();
    // Relative paths, from the test folder: JSON output has them absolute.
    ok_in(
        &f.root,
        &[
            "vm",
            "create",
            "vm",
            "--name",
            "rel",
            "--disk",
            "disks/os.vhdx",
            "--checkpoint-type",
            "standard",
            "--checkpoint-location",
            "states",
            "--memory",
            "512",
        ],
    );
    let v = f.show();
    assert_eq!(v["disks"][0]["path"], s(&f.disks[0]));
    assert_eq!(v["checkpoint_location"], s(&f.root.join("states")));
    assert_eq!(v["memory_mib"], 512);
    std::fs::write(f.root.join("mem.bin"), b"RAM").expect("write mem");
    ok_in(
        &f.root,
        &[
            "checkpoint",
            "create",
            "vm",
            "s1",
            "--memory-state",
            "mem.bin",
        ],
    );
    let saved = PathBuf::from(
        entry(&f.list(), "s1")["saved_state"]
            .as_str()
            .expect("saved_state"),
    );
    assert_eq!(saved.parent(), Some(f.root.join("states").as_path()));
    assert_eq!(std::fs::read(&saved).expect("memory state"), b"RAM");

    // Back to the default location: new checkpoints go to DIR/checkpoints.
    ok(&["vm", "set", f.vm(), "--checkpoint-location", "default"]);
    assert_eq!(f.show()["checkpoint_location"], Value::Null);
    ok(&[
        "checkpoint",
        "create",
        f.vm(),
        "s2",
        "--memory-state",
        s(&f.root.join("mem.bin")),
    ]);
    let saved2 = PathBuf::from(
        entry(&f.list(), "s2")["saved_state"]
            .as_str()
            .expect("saved_state"),
    );
    assert_eq!(saved2.parent(), Some(f.vm.join("checkpoints").as_path()));
    assert!(saved.exists(), "s1's memory state stays where it was taken");
    let text = ok_text(&["vm", "show", f.vm()]);
    assert!(
        text.contains(&format!("{} (default)", f.vm.join("checkpoints").display())),
        "{text}"
    );
}

/// `vm show` names files that look like checkpoint files but that no
/// checkpoint owns (left by other tools), in text and in JSON.
#[test]
fn show_reports_stray_checkpoint_files() {
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("os.vhdx");
    ok(&["create", s(&disk), "--size", "4M"]);
    let vm = t.path().join("vm");
    ok(&["vm", "create", s(&vm), "--name", "s", "--disk", s(&disk)]);
    ok(&["checkpoint", "create", s(&vm), "one"]);
    let v = json(&["vm", "show", s(&vm), "--json"]);
    assert_eq!(v["strays"], serde_json::json!([]));
    let stray = t.path().join("os_0000-left-by-a-backup-tool.avhdx");
    std::fs::copy(&disk, &stray).unwrap();
    let v = json(&["vm", "show", s(&vm), "--json"]);
    assert_eq!(
        v["strays"],
        serde_json::json!([stray.canonicalize().unwrap().display().to_string()])
    );
    let text = ok_text(&["vm", "show", s(&vm)]);
    assert!(text.contains("no checkpoint owns it"), "{text}");
}

/// Issue 8: two disks sharing a file name export under distinct names,
/// printed by the tool; revert after deleting the branch point the current
/// state hangs under goes to that checkpoint's parent.
#[test]
fn export_names_and_revert_after_a_branch_point_delete() {
    let f = Fixture::new();
    let twin = f.root.join("other").join("os.vhdx");
    std::fs::create_dir_all(twin.parent().unwrap()).unwrap();
    ok(&["create", s(&twin), "--size", &SIZES[0].to_string()]);
    ok(&[
        "vm",
        "create",
        f.vm(),
        "--name",
        "twins",
        "--disk",
        s(&f.disks[0]),
        "--disk",
        s(&twin),
        "--checkpoint-type",
        "standard",
    ]);
    let vm = f.vm();
    let cur = f.current_disks();
    write_at(&cur[0], 0, &[1; 512]);
    write_at(&cur[1], 0, &[5; 512]);
    ok(&["checkpoint", "create", vm, "root"]);
    write_at(&f.current_disks()[0], 0, &[2; 512]);
    ok(&["checkpoint", "create", vm, "X"]);
    write_at(&f.current_disks()[0], 0, &[3; 512]);
    ok(&["checkpoint", "create", vm, "Y"]);
    ok(&["checkpoint", "apply", vm, "X"]);
    write_at(&f.current_disks()[0], 0, &[4; 512]);
    ok(&["checkpoint", "delete", vm, "X"]);
    assert_eq!(f.show()["current_checkpoint"], "root");
    let out = ok_text(&["checkpoint", "revert", vm]);
    assert!(out.contains("\"root\""), "{out}");
    let read = |p: &Path| {
        let d = Disk::open(p, OpenMode::ReadOnly).unwrap();
        let mut b = [0u8];
        d.read_at(&mut b, 0).unwrap();
        b[0]
    };
    assert_eq!(read(&f.current_disks()[0]), 1);

    let exp = f.root.join("export");
    let out = ok_text(&["checkpoint", "export", vm, "root", s(&exp)]);
    for name in ["os-0.vhdx", "os-1.vhdx", "config.json"] {
        assert!(out.contains(s(&exp.join(name))), "{name} not listed: {out}");
    }
    assert_eq!(read(&exp.join("os-0.vhdx")), 1);
    assert_eq!(read(&exp.join("os-1.vhdx")), 5);
}

/// A checkpoint of a saved VM (`checkpoint create` and `apply
/// --save-current`) keeps the memory state it resumes from, shared with it
/// (one file, no copy), and applying it gives a saved VM again.
#[test]
fn checkpoints_of_a_saved_vm_keep_its_memory_state() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new();
    f.create_vm("saved", &["--checkpoint-type", "standard"]);
    let mem = f.root.join("mem.bin");
    std::fs::write(&mem, b"RAM").expect("write mem");
    ok(&[
        "checkpoint",
        "create",
        f.vm(),
        "a",
        "--memory-state",
        s(&mem),
    ]);
    ok(&["checkpoint", "apply", f.vm(), "a"]);
    let v = f.show();
    assert_eq!(v["state"], "saved");
    let resume = PathBuf::from(v["saved_state"].as_str().expect("saved_state"));
    let ino = std::fs::metadata(&resume).expect("memory state").ino();
    let loc = f.vm.join("checkpoints");
    let count = |ext: &str| {
        std::fs::read_dir(&loc)
            .expect("checkpoint location")
            .filter(|e| {
                let p = e.as_ref().expect("entry").path();
                p.extension().and_then(|x| x.to_str()) == Some(ext)
            })
            .count()
    };
    assert_eq!(count("vmrs"), 1);

    ok(&["checkpoint", "create", f.vm(), "s"]);
    ok(&["checkpoint", "apply", f.vm(), "a", "--save-current", "k"]);
    let list = f.list();
    for name in ["s", "k"] {
        assert_eq!(entry(&list, name)["saved_state"], s(&resume), "{name}");
    }
    assert_eq!(count("vmrs"), 1, "a memory state was copied");
    for name in ["s", "k", "a"] {
        ok(&["vm", "set", f.vm(), "--state", "off"]);
        ok(&["checkpoint", "apply", f.vm(), name]);
        let v = f.show();
        assert_eq!(v["state"], "saved", "{name}");
        let m = PathBuf::from(v["saved_state"].as_str().expect("saved_state"));
        assert_eq!(std::fs::metadata(&m).expect("memory").ino(), ino, "{name}");
        assert_eq!(std::fs::read(&m).expect("memory"), b"RAM");
    }
    assert_eq!(f.show()["strays"], Value::Array(vec![]));
    ok(&["vm", "set", f.vm(), "--state", "off"]);
    for name in ["a", "s"] {
        ok(&["checkpoint", "delete", f.vm(), name]);
        assert!(resume.exists(), "removed while another checkpoint uses it");
    }
    ok(&["checkpoint", "delete", f.vm(), "k"]);
    assert!(!resume.exists(), "an unused memory state was left behind");
}

/// Apply and revert of a running VM are refused, changing nothing.
#[test]
fn apply_and_revert_of_a_running_vm_are_refused() {
    let f = Fixture::new();
    f.create_vm("run", &[]);
    ok(&["checkpoint", "create", f.vm(), "a"]);
    ok(&["vm", "set", f.vm(), "--state", "running"]);
    let needles = ["running", "stop or save the VM first"];
    f.refused(&["checkpoint", "apply", f.vm(), "a"], &needles);
    f.refused(
        &["checkpoint", "apply", f.vm(), "a", "--save-current", "k"],
        &needles,
    );
    f.refused(&["checkpoint", "revert", f.vm()], &needles);
    ok(&["vm", "set", f.vm(), "--state", "saved"]);
    ok(&["checkpoint", "revert", f.vm()]);
}
