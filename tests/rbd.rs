//! Ceph RBD (issue 17): a VM's checkpoint tree exported into RBD images
//! with a snapshot per checkpoint (`Vm::export_rbd`, `ckpt vm
//! export-rbd`), incrementally, resumably, and imported back
//! (`import_rbd`, `ckpt vm import-rbd`), judged against a real
//! single-node cluster (see `support::ceph`): every snapshot's bytes come
//! from `rbd export`, and the streams of `Vm::write_rbd_diff` go through
//! `rbd import-diff`. The expected bytes are the checkpoints' flattened
//! exports, read by QEMU (`qemu-img convert`) where it is installed.

mod support;

use std::path::{Path, PathBuf};

use ckpt::checkpoint::rbd::{import_rbd, RbdExportOptions, RbdImportOptions, RbdTool};
use ckpt::checkpoint::{NoHooks, Vm, VmSpec};
use ckpt::rbd::{DiffReader, DiffRecord};
use ckpt::{CreateOptions, Disk, OpenMode};
use support::ceph::{cluster, Cluster};
use support::{first_diff, pattern, read_all, Ctx, KIB, MIB};

/// Every disk: 16 MiB in 1 MiB blocks.
const SIZE: u64 = 16 * MIB;

/// A unique image prefix for one test (tests share the pool).
fn prefix(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}

fn make_disk(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    Disk::create(p, &CreateOptions::new(SIZE).block_size(MIB as u32))
        .unwrap()
        .close()
        .unwrap();
}

/// A VM with two disks in `root`.
fn two_disk_vm(root: &Path, name: &str) -> Vm {
    let disks: Vec<PathBuf> = (0..2)
        .map(|k| root.join("disks").join(format!("d{k}.vhdx")))
        .collect();
    for d in &disks {
        make_disk(d);
    }
    Vm::create(&root.join("vm"), &VmSpec::new(name, disks)).unwrap()
}

/// Write `len` bytes of pattern `seed` at `off` into current disk `k`.
fn write(vm: &Vm, k: usize, off: u64, len: u64, seed: u64) {
    let d = Disk::open(&vm.data().current.disks[k], OpenMode::ReadWrite).unwrap();
    d.write_at(&pattern(seed, off, len as usize), off).unwrap();
    d.close().unwrap();
}

/// Write zeros over `[off, off + len)` of current disk `k` (data before).
fn zero(vm: &Vm, k: usize, off: u64, len: u64) {
    let d = Disk::open(&vm.data().current.disks[k], OpenMode::ReadWrite).unwrap();
    d.write_at(&vec![0u8; len as usize], off).unwrap();
    d.close().unwrap();
}

fn checkpoint(vm: &mut Vm, name: &str) {
    vm.create_checkpoint(name, None, &mut NoHooks).unwrap();
}

/// The bytes of each disk of checkpoint `name` (None: the current state):
/// its flattened export, read by QEMU when installed (else by libckpt).
fn state(vm: &mut Vm, name: Option<&str>) -> Vec<Vec<u8>> {
    let tmp = support::tempdir();
    let dest = tmp.path().join("export");
    let files = vm.export(name, &dest, &mut NoHooks).unwrap();
    let qemu = support::find_tool("qemu-img").is_some();
    if !qemu {
        support::missing("qemu-img (the flattened exports are read by libckpt instead)");
    }
    files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "vhdx"))
        .map(|f| {
            if qemu {
                let raw = f.with_extension("raw");
                support::qemu_convert_raw(f, &raw);
                std::fs::read(&raw).unwrap()
            } else {
                read_all(&Disk::open(f, OpenMode::ReadOnly).unwrap())
            }
        })
        .collect()
}

fn opts(c: &Cluster, prefix: &str) -> RbdExportOptions {
    RbdExportOptions {
        pool: c.pool.clone(),
        prefix: Some(prefix.into()),
        prune: false,
        tool: c.tool(),
    }
}

/// `rbd export SPEC -` equals `want` (named `what` in the message).
#[track_caller]
fn reads(c: &Cluster, spec: &str, want: &[u8]) {
    let got = c.export(spec);
    assert!(got == want, "{spec}: {}", first_diff(&got, want));
}

/// `ckpt ARGS` exits 0 (its progress lines go to stderr).
#[track_caller]
fn cli_ok(args: &[&str]) -> std::process::Output {
    let o = support::cli::run(args);
    assert!(
        o.status.success(),
        "ckpt {args:?} failed: {}",
        support::cli::stderr(&o)
    );
    o
}

/// Removes the test's images when the test ends (also on failure).
struct Cleanup(&'static Cluster, String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.remove_images(&self.1);
    }
}

/// The tree of the first tests: base → "second step" → b1 (current under
/// b1), and a branch "second step" → c3 → tip.
fn tree_vm(root: &Path) -> Vm {
    let mut vm = two_disk_vm(root, "rbd tree");
    write(&vm, 0, 0, MIB, 1);
    write(&vm, 1, 3 * MIB, 512 * KIB, 2);
    write(&vm, 1, 10 * MIB + 512, 4 * KIB, 3); // not 4 KiB aligned
    checkpoint(&mut vm, "base");
    write(&vm, 0, 5 * MIB, 256 * KIB, 4);
    zero(&vm, 1, 3 * MIB, 256 * KIB); // data becomes zeros: a z record
    checkpoint(&mut vm, "second step");
    write(&vm, 0, 0, 64 * KIB, 5);
    checkpoint(&mut vm, "c3");
    write(&vm, 1, 15 * MIB, MIB, 6);
    // Back to "second step", keeping the current state as "tip".
    vm.apply("second step", Some("tip"), &mut NoHooks).unwrap();
    write(&vm, 0, 8 * MIB, 128 * KIB, 7);
    checkpoint(&mut vm, "b1");
    write(&vm, 1, 0, 32 * KIB, 8);
    vm
}

/// The snapshot name of checkpoint `name` (mapped when needed).
fn snap(vm: &Vm, name: &str) -> String {
    let c = vm.find(name).unwrap();
    ckpt::checkpoint::rbd::names::snap_name(&c.name, &c.id)
}

#[test]
fn every_snapshot_clone_and_head_read_as_the_checkpoints() {
    let Some(c) = cluster() else { return };
    let p = prefix("tree");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = tree_vm(tmp.path());
    let r = vm
        .export_rbd(&opts(c, &p), &mut |l| eprintln!("{l}"))
        .unwrap();
    let main_snaps: Vec<String> = ["base", "second step", "b1"]
        .iter()
        .map(|n| snap(&vm, n))
        .collect();
    assert_eq!(
        main_snaps[1],
        format!("second_step~{}", &vm.find("second step").unwrap().id[..8])
    );
    let branch = format!("{p}-disk{{}}--{}", snap(&vm, "c3"));
    for k in 0..2 {
        let img = format!("{}/{p}-disk{k}", c.pool);
        assert_eq!(c.snaps(&img), main_snaps, "{img}");
        let clone = format!("{}/{}", c.pool, branch.replace("{}", &k.to_string()));
        assert_eq!(c.snaps(&clone), ["c3", "tip"], "{clone}");
    }
    assert_eq!(r.images.len(), 4);
    for name in ["base", "second step", "b1", "c3", "tip"] {
        let _ctx = Ctx(format!("checkpoint {name}"));
        let want = state(&mut vm, Some(name));
        for (k, w) in want.iter().enumerate() {
            let img = if ["c3", "tip"].contains(&name) {
                branch.replace("{}", &k.to_string())
            } else {
                format!("{p}-disk{k}")
            };
            reads(c, &format!("{}/{img}@{}", c.pool, snap(&vm, name)), w);
        }
    }
    let cur = state(&mut vm, None);
    for (k, w) in cur.iter().enumerate() {
        reads(c, &format!("{}/{p}-disk{k}", c.pool), w);
        // The clone's head is its last checkpoint.
        let clone = branch.replace("{}", &k.to_string());
        reads(
            c,
            &format!("{}/{clone}", c.pool),
            &state(&mut vm, Some("tip"))[k],
        );
    }
    // Nothing new: no snapshot sent, only the head rewritten where it
    // differs from b1 (32 KiB on disk 1).
    let again = vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
    assert!(again.images.iter().all(|i| i.sent.is_empty() && !i.created));
    assert!(again.data_bytes <= 64 * KIB, "{again:?}");
    for (k, w) in cur.iter().enumerate() {
        reads(c, &format!("{}/{p}-disk{k}", c.pool), w);
    }
    // A revert drops the current state's writes: the head must lose them
    // too (they are found in the image's head, not in the local changes).
    vm.revert().unwrap();
    vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
    let b1 = state(&mut vm, Some("b1"));
    assert_ne!(b1, cur);
    for (k, w) in b1.iter().enumerate() {
        reads(c, &format!("{}/{p}-disk{k}", c.pool), w);
    }
    // The branch deleted locally: without prune its clones stay; with it
    // they go, and the main line is untouched.
    vm.delete("tip", false, &mut NoHooks).unwrap();
    vm.delete("c3", false, &mut NoHooks).unwrap();
    let kept = vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
    assert!(kept.pruned_images.is_empty());
    assert_eq!(c.images(&p).len(), 4, "{:?}", c.images(&p));
    let mut o = opts(c, &p);
    o.prune = true;
    let pruned = vm.export_rbd(&o, &mut |l| eprintln!("{l}")).unwrap();
    let mut want: Vec<String> = (0..2)
        .map(|k| format!("{}/{}", c.pool, branch.replace("{}", &k.to_string())))
        .collect();
    want.sort();
    let mut got = pruned.pruned_images.clone();
    got.sort();
    assert_eq!(got, want);
    let mut left = c.images(&p);
    left.sort();
    assert_eq!(left, [format!("{p}-disk0"), format!("{p}-disk1")]);
    for (k, w) in b1.iter().enumerate() {
        let img = format!("{}/{p}-disk{k}", c.pool);
        assert_eq!(c.snaps(&img), main_snaps, "{img}");
        reads(c, &img, w);
    }
}

#[test]
fn a_second_export_sends_only_what_is_new_and_prune_removes_deleted() {
    let Some(c) = cluster() else { return };
    let p = prefix("incr");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = two_disk_vm(tmp.path(), "incr");
    write(&vm, 0, 0, 4 * MIB, 1);
    write(&vm, 1, 0, 4 * MIB, 2);
    checkpoint(&mut vm, "a");
    write(&vm, 0, 6 * MIB, 512 * KIB, 3);
    checkpoint(&mut vm, "b");
    write(&vm, 1, 7 * MIB, 512 * KIB, 4);
    checkpoint(&mut vm, "c");
    write(&vm, 0, 12 * MIB, 64 * KIB, 5); // the current state
    let first = vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
    assert!(first.data_bytes >= 9 * MIB, "{first:?}");
    let b = state(&mut vm, Some("b"));

    // 128 KiB more, a new checkpoint d, then 32 KiB on the current state;
    // b is deleted locally.
    write(&vm, 0, 9 * MIB, 128 * KIB, 6);
    checkpoint(&mut vm, "d");
    write(&vm, 1, 13 * MIB, 32 * KIB, 7);
    vm.delete("b", false, &mut NoHooks).unwrap();
    let second = vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
    for i in &second.images {
        assert_eq!(i.sent, ["d"], "{i:?}");
        assert_eq!(i.kept, ["a", "c"], "{i:?}");
        assert!(!i.created);
    }
    // What is new: d's 128 KiB, the old head's 64 KiB (re-sent as part of
    // d, which holds it), the new head's 32 KiB.
    assert!(second.data_bytes >= 224 * KIB, "{second:?}");
    assert!(second.data_bytes <= 224 * KIB + 16 * KIB, "{second:?}");
    for (k, bk) in b.iter().enumerate() {
        let img = format!("{}/{p}-disk{k}", c.pool);
        assert_eq!(c.snaps(&img), ["a", "b", "c", "d"]);
        reads(c, &format!("{img}@b"), bk);
        for n in ["a", "c", "d"] {
            reads(c, &format!("{img}@{n}"), &state(&mut vm, Some(n))[k]);
        }
        reads(c, &img, &state(&mut vm, None)[k]);
    }

    // --prune through the CLI removes b's snapshots; the rest stays.
    drop(vm);
    let conf = c.conf.to_string_lossy().into_owned();
    let vmdir = tmp.path().join("vm");
    let out = cli_ok(&[
        "vm",
        "export-rbd",
        vmdir.to_str().unwrap(),
        "--pool",
        &c.pool,
        "--prefix",
        &p,
        "--prune",
        "--conf",
        &conf,
        "--id",
        "admin",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for i in v["images"].as_array().unwrap() {
        assert_eq!(i["pruned"], serde_json::json!(["b"]), "{i}");
        assert_eq!(i["sent"], serde_json::json!([]), "{i}");
    }
    let mut vm = Vm::open(&vmdir).unwrap();
    for k in 0..2 {
        let img = format!("{}/{p}-disk{k}", c.pool);
        assert_eq!(c.snaps(&img), ["a", "c", "d"]);
        reads(c, &format!("{img}@d"), &state(&mut vm, Some("d"))[k]);
    }
}

/// A wrapper around `rbd` that cuts the stream of the `cut`-th
/// `import-diff` after `bytes` bytes (rbd reads a stream without its end
/// and fails, having written part of it), counting in `dir/count`.
fn cutting_rbd(dir: &Path, cut: u32, bytes: u64) -> PathBuf {
    let script = dir.join("rbd-cut.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n\
             case \" $* \" in *\" import-diff \"*)\n\
               n=$(( $(cat {d}/count 2>/dev/null || echo 0) + 1 )); echo $n > {d}/count\n\
               if [ $n -eq {cut} ]; then head -c {bytes} | rbd \"$@\"; exit $?; fi;;\n\
             esac\n\
             exec rbd \"$@\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A wrapper around `rbd` that, in the `kill`-th `import-diff`, hands the
/// real `rbd` the first `bytes` bytes of the stream through a pipe it
/// keeps open, then kills it with SIGKILL while it waits for more (a
/// process that dies half-way, not a stream that ends).
fn killing_rbd(dir: &Path, kill: u32, bytes: u64) -> PathBuf {
    let script = dir.join("rbd-kill.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash
             case \" $* \" in *\" import-diff \"*)
               n=$(( $(cat {d}/count 2>/dev/null || echo 0) + 1 )); echo $n > {d}/count
               if [ $n -eq {kill} ]; then
                 f={d}/fifo.$$; mkfifo $f
                 rbd \"$@\" < $f & pid=$!
                 exec 3> $f
                 head -c {bytes} >&3
                 sleep 1
                 kill -9 $pid; wait $pid; rm -f $f; exit 137
               fi;;
             esac
             exec rbd \"$@\"
",
            d = dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn a_cut_stream_leaves_complete_snapshots_and_a_rerun_finishes() {
    let Some(c) = cluster() else { return };
    // Cut the 1st (creation of a's first state), 2nd (b) and 3rd (disk 0's
    // head) imports half-way through their data; then kill the rbd of the
    // 1st and the 3rd half-way.
    for (cut, kill) in [(1u32, false), (2, false), (3, false), (1, true), (3, true)] {
        let _ctx = Ctx(format!("cut of import {cut} (kill: {kill})"));
        let p = prefix(&format!("cut{cut}{}", if kill { "k" } else { "" }));
        let _clean = Cleanup(c, p.clone());
        let tmp = support::tempdir();
        let mut vm = two_disk_vm(tmp.path(), "cut");
        write(&vm, 0, 0, 6 * MIB, 1);
        checkpoint(&mut vm, "a");
        write(&vm, 0, 2 * MIB, 6 * MIB, 2);
        checkpoint(&mut vm, "b");
        write(&vm, 0, 9 * MIB, 4 * MIB, 3);
        let mut o = opts(c, &p);
        let wrapper = if kill {
            killing_rbd(tmp.path(), cut, 3 * MIB)
        } else {
            cutting_rbd(tmp.path(), cut, 3 * MIB)
        };
        o.tool = RbdTool {
            program: Some(wrapper),
            ..c.tool()
        };
        let e = vm.export_rbd(&o, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("import-diff"), "{e}");
        // Only complete snapshots: whatever exists reads right.
        let img = format!("{}/{p}-disk0", c.pool);
        let have = c.snaps(&img);
        assert_eq!(have.len() as u32, cut - 1, "{have:?}");
        for n in &have {
            reads(c, &format!("{img}@{n}"), &state(&mut vm, Some(n))[0]);
        }
        // A rerun finishes.
        let r = vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
        assert_eq!(r.images[0].kept, have);
        for k in 0..2 {
            let img = format!("{}/{p}-disk{k}", c.pool);
            assert_eq!(c.snaps(&img), ["a", "b"]);
            for n in ["a", "b"] {
                reads(c, &format!("{img}@{n}"), &state(&mut vm, Some(n))[k]);
            }
            reads(c, &img, &state(&mut vm, None)[k]);
        }
    }
}

#[test]
fn an_import_that_did_not_land_is_caught_before_the_snapshot() {
    let Some(c) = cluster() else { return };
    let p = prefix("lying");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = two_disk_vm(tmp.path(), "lying");
    write(&vm, 0, 0, MIB, 1);
    checkpoint(&mut vm, "a");
    // An rbd whose import-diff swallows the stream and reports success.
    let script = tmp.path().join("rbd-lies.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\ncase \" $* \" in *\" import-diff \"*) cat >/dev/null; exit 0;; esac\nexec rbd \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut o = opts(c, &p);
    o.tool = RbdTool {
        program: Some(script),
        ..c.tool()
    };
    let e = vm.export_rbd(&o, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("does not hold the state"), "{e}");
    let img = format!("{}/{p}-disk0", c.pool);
    assert!(
        c.snaps(&img).is_empty(),
        "no snapshot of a state that did not land"
    );
    vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
    reads(c, &format!("{img}@a"), &state(&mut vm, Some("a"))[0]);
}

/// The tree with a branch exported, then imported: the clones come back
/// as the branch (under the branch point, each checkpoint reading as the
/// original), the branch's first layer holding only what differs from
/// the branch point, and the current state under b1 as before.
#[test]
fn import_rbd_brings_a_tree_back_with_its_branches() {
    let Some(c) = cluster() else { return };
    let p = prefix("itree");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = tree_vm(tmp.path());
    vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
    let images: Vec<String> = (0..2).map(|k| format!("{}/{p}-disk{k}", c.pool)).collect();
    let dest = tmp.path().join("back");
    let mut lines = Vec::new();
    let mut back = import_rbd(
        &images,
        &dest,
        &RbdImportOptions {
            name: "back".into(),
            tool: c.tool(),
        },
        &mut |l| lines.push(l.to_string()),
    )
    .unwrap();
    let name_of = |vm: &Vm, n: &str| snap(vm, n);
    let mut want: Vec<String> = ["base", "second step", "b1", "c3", "tip"]
        .iter()
        .map(|n| name_of(&vm, n))
        .collect();
    want.sort();
    let mut names: Vec<String> = back
        .data()
        .checkpoints
        .iter()
        .filter(|c| !c.hidden)
        .map(|c| c.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, want, "{lines:?}");
    let parent_of = |vm: &Vm, n: &str| {
        let id = vm.find(n).unwrap().parent.clone();
        id.map(|id| {
            vm.data()
                .checkpoints
                .iter()
                .find(|c| c.id == id)
                .unwrap()
                .name
                .clone()
        })
    };
    let second = name_of(&vm, "second step");
    assert_eq!(parent_of(&back, "c3").as_deref(), Some(second.as_str()));
    assert_eq!(parent_of(&back, "tip").as_deref(), Some("c3"));
    assert_eq!(parent_of(&back, "b1").as_deref(), Some(second.as_str()));
    let cur = back.data().current.parent.clone().unwrap();
    assert_eq!(
        back.data()
            .checkpoints
            .iter()
            .find(|c| c.id == cur)
            .unwrap()
            .name,
        "b1"
    );
    for n in ["base", "second step", "b1", "c3", "tip"] {
        let _ctx = Ctx(format!("checkpoint {n}"));
        let mapped = name_of(&vm, n);
        assert_eq!(
            state(&mut back, Some(&mapped)),
            state(&mut vm, Some(n)),
            "{n}"
        );
    }
    assert_eq!(state(&mut back, None), state(&mut vm, None));
    // c3's layer of disk 0 holds its own 64 KiB write, not the branch
    // point's content (which a clone's stream also carries).
    let c3 = &back.find("c3").unwrap().disks[0];
    let d = Disk::open(c3, OpenMode::ReadOnly).unwrap();
    assert_eq!(d.depth(), 3, "base, second step, c3");
    assert!(d.info().allocated_bytes <= 2 * MIB, "{:?}", d.info());
}

#[test]
fn import_rbd_brings_the_checkpoints_back() {
    let Some(c) = cluster() else { return };
    let p = prefix("import");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = two_disk_vm(tmp.path(), "orig");
    write(&vm, 0, 0, 2 * MIB, 1);
    write(&vm, 1, 5 * MIB, MIB, 2);
    checkpoint(&mut vm, "one");
    write(&vm, 0, MIB, 64 * KIB, 3);
    zero(&vm, 1, 5 * MIB, 128 * KIB);
    checkpoint(&mut vm, "two");
    write(&vm, 1, 14 * MIB, 8 * KIB, 4);
    vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap();
    let images: Vec<String> = (0..2).map(|k| format!("{}/{p}-disk{k}", c.pool)).collect();

    // Through the library.
    let dest = tmp.path().join("back");
    let mut back = import_rbd(
        &images,
        &dest,
        &RbdImportOptions {
            name: "back".into(),
            tool: c.tool(),
        },
        &mut |_| {},
    )
    .unwrap();
    let names: Vec<&str> = back
        .data()
        .checkpoints
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["one", "two"]);
    for n in ["one", "two"] {
        assert_eq!(state(&mut back, Some(n)), state(&mut vm, Some(n)), "{n}");
    }
    assert_eq!(state(&mut back, None), state(&mut vm, None));
    // A base VHDX and one AVHDX per checkpoint.
    let top = &back.data().current.disks[0];
    assert_eq!(Disk::open(top, OpenMode::ReadOnly).unwrap().depth(), 3);

    // Through the CLI.
    drop(back);
    let conf = c.conf.to_string_lossy().into_owned();
    let dest2 = tmp.path().join("back2");
    let mut args = vec!["vm", "import-rbd"];
    args.extend(images.iter().map(String::as_str));
    args.extend([
        dest2.to_str().unwrap(),
        "--name",
        "back2",
        "--conf",
        &conf,
        "--id",
        "admin",
    ]);
    cli_ok(&args);
    let mut back2 = Vm::open(&dest2).unwrap();
    assert_eq!(state(&mut back2, Some("two")), state(&mut vm, Some("two")));
    assert_eq!(state(&mut back2, None), state(&mut vm, None));
}

#[test]
fn diff_streams_are_judged_by_rbd_import_and_export_diff() {
    let Some(c) = cluster() else { return };
    let p = prefix("streams");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = two_disk_vm(tmp.path(), "streams");
    write(&vm, 0, 0, 3 * MIB, 1);
    checkpoint(&mut vm, "a");
    write(&vm, 0, MIB + 512, 100 * KIB, 2);
    zero(&vm, 0, 2 * MIB, 256 * KIB);
    checkpoint(&mut vm, "b");
    let img = format!("{}/{p}-s", c.pool);
    c.rbd_ok(&["create", "--size", "16M", &img]);
    // a in full (with t = a), then a → b (f = a, t = b).
    let mut full = Vec::new();
    let st = vm.write_rbd_diff(0, None, Some("a"), &mut full).unwrap();
    assert_eq!(st.stream_bytes, full.len() as u64);
    let mut ab = Vec::new();
    let st = vm.write_rbd_diff(0, Some("a"), Some("b"), &mut ab).unwrap();
    assert!(st.data_bytes < 256 * KIB, "only what changed: {st:?}");
    assert!(st.zero_bytes >= 256 * KIB, "the zeroed range as z: {st:?}");
    for s in [&full, &ab] {
        let f = tmp.path().join("stream");
        std::fs::write(&f, s).unwrap();
        c.rbd_ok(&["import-diff", "--no-progress", f.to_str().unwrap(), &img]);
    }
    assert_eq!(c.snaps(&img), ["a", "b"]);
    reads(c, &format!("{img}@a"), &state(&mut vm, Some("a"))[0]);
    reads(c, &format!("{img}@b"), &state(&mut vm, Some("b"))[0]);
    // rbd's own export-diff, read by our reader, rebuilds b from a.
    let out = c.rbd_ok(&[
        "export-diff",
        "--no-progress",
        "--from-snap",
        "a",
        &format!("{img}@b"),
        "-",
    ]);
    let mut model = state(&mut vm, Some("a"))[0].clone();
    let mut r = DiffReader::new(&out[..]).unwrap();
    let mut saw = (false, false);
    loop {
        match r.next_record().unwrap() {
            DiffRecord::FromSnap(s) => saw.0 = s == "a",
            DiffRecord::ToSnap(s) => saw.1 = s == "b",
            DiffRecord::Size(s) => assert_eq!(s, SIZE),
            DiffRecord::Write { offset, data } => {
                model[offset as usize..offset as usize + data.len()].copy_from_slice(&data)
            }
            DiffRecord::Zero { offset, length } => {
                model[offset as usize..(offset + length) as usize].fill(0)
            }
            DiffRecord::End => break,
        }
    }
    assert_eq!(saw, (true, true));
    assert!(
        model == state(&mut vm, Some("b"))[0],
        "{}",
        first_diff(&model, &state(&mut vm, Some("b"))[0])
    );
}

#[test]
fn a_whole_image_in_export_format_2_imports_with_its_snapshots() {
    let Some(c) = cluster() else { return };
    let p = prefix("format2");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = tree_vm(tmp.path());
    for k in 0..2 {
        let mut img = Vec::new();
        let st = vm.write_rbd_image(k, &mut img).unwrap();
        assert_eq!(st.stream_bytes, img.len() as u64);
        assert!(img.starts_with(b"rbd image v2\n"));
        let f = tmp.path().join(format!("image{k}"));
        std::fs::write(&f, &img).unwrap();
        let name = format!("{}/{p}-f2-{k}", c.pool);
        c.rbd_ok(&[
            "import",
            "--no-progress",
            "--export-format",
            "2",
            f.to_str().unwrap(),
            &name,
        ]);
        let snaps: Vec<String> = ["base", "second step", "b1"]
            .iter()
            .map(|n| snap(&vm, n))
            .collect();
        assert_eq!(c.snaps(&name), snaps);
        for n in ["base", "second step", "b1"] {
            reads(
                c,
                &format!("{name}@{}", snap(&vm, n)),
                &state(&mut vm, Some(n))[k],
            );
        }
        reads(c, &name, &state(&mut vm, None)[k]);
    }
}

#[test]
fn the_cli_streams_go_through_rbd() {
    let Some(c) = cluster() else { return };
    let p = prefix("clistream");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = two_disk_vm(tmp.path(), "cli streams");
    write(&vm, 1, 0, 2 * MIB, 1);
    checkpoint(&mut vm, "a");
    write(&vm, 1, MIB, 4 * KIB, 2);
    let (a, cur) = (state(&mut vm, Some("a")), state(&mut vm, None));
    drop(vm);
    let dir = tmp.path().join("vm");
    let d = dir.to_str().unwrap();
    let img = format!("{}/{p}-x", c.pool);
    c.rbd_ok(&["create", "--size", "16M", &img]);
    let full = cli_ok(&["vm", "rbd-diff", d, "--disk", "1", "--to", "a"]).stdout;
    let inc = cli_ok(&["vm", "rbd-diff", d, "--disk", "1", "--from", "a"]).stdout;
    assert!(
        inc.len() < 64 * KIB as usize,
        "only the change: {} bytes",
        inc.len()
    );
    for (i, s) in [full, inc].iter().enumerate() {
        let f = tmp.path().join(format!("s{i}"));
        std::fs::write(&f, s).unwrap();
        c.rbd_ok(&["import-diff", "--no-progress", f.to_str().unwrap(), &img]);
    }
    reads(c, &format!("{img}@a"), &a[1]);
    reads(c, &img, &cur[1]);
    let whole = cli_ok(&["vm", "rbd-diff", d, "--disk", "1", "--image"]).stdout;
    let f = tmp.path().join("whole");
    std::fs::write(&f, whole).unwrap();
    let img2 = format!("{}/{p}-y", c.pool);
    c.rbd_ok(&[
        "import",
        "--no-progress",
        "--export-format",
        "2",
        f.to_str().unwrap(),
        &img2,
    ]);
    assert_eq!(c.snaps(&img2), ["a"]);
    reads(c, &format!("{img2}@a"), &a[1]);
    reads(c, &img2, &cur[1]);
}

#[test]
fn an_image_export_rbd_did_not_make_is_never_written() {
    let Some(c) = cluster() else { return };
    let p = prefix("foreign");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = two_disk_vm(tmp.path(), "foreign");
    write(&vm, 0, 0, MIB, 1);
    checkpoint(&mut vm, "a");
    // Someone else's image under the name disk 0 would get.
    let img = format!("{}/{p}-disk0", c.pool);
    c.rbd_ok(&["create", "--size", "8M", &img]);
    c.rbd_ok(&["snap", "create", "--no-progress", &format!("{img}@theirs")]);
    let e = vm.export_rbd(&opts(c, &p), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("not made by export-rbd"), "{e}");
    assert_eq!(c.snaps(&img), ["theirs"]);
    reads(c, &img, &vec![0u8; 8 << 20]);
    // Another VM's export under the same prefix is refused too.
    let p2 = prefix("foreign2");
    let _clean2 = Cleanup(c, p2.clone());
    vm.export_rbd(&opts(c, &p2), &mut |_| {}).unwrap();
    let tmp2 = support::tempdir();
    let mut other = two_disk_vm(tmp2.path(), "other");
    checkpoint(&mut other, "a");
    let e = other.export_rbd(&opts(c, &p2), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("not made by export-rbd"), "{e}");
}

/// Issue 17 after issue 15: `ckpt checkpoint export DIR NAME DEST --since
/// REF --format rbd-diff` writes, per disk, the stream `rbd import-diff`
/// applies on the image holding REF's snapshot, also when REF is a
/// reference point (its data merged away): the new snapshot reads as the
/// checkpoint. A full stream (no --since) makes the first snapshot;
/// refusals: --base with rbd-diff, --since without --base for VHDX.
#[cfg(feature = "cli")]
#[test]
fn checkpoint_export_as_rbd_diff_since_a_reference_point() {
    let Some(c) = cluster() else { return };
    let p = prefix("ckexport");
    let _clean = Cleanup(c, p.clone());
    let tmp = support::tempdir();
    let mut vm = two_disk_vm(tmp.path(), "rbd-diff export");
    write(&vm, 0, 0, 3 * MIB, 1);
    write(&vm, 1, 5 * MIB, 64 * KIB, 2);
    checkpoint(&mut vm, "nightly");
    let at_nightly = state(&mut vm, Some("nightly"));
    write(&vm, 0, 2 * MIB, 8 * KIB, 3);
    zero(&vm, 1, 5 * MIB, 4 * KIB);
    checkpoint(&mut vm, "next");
    let at_next = state(&mut vm, Some("next"));
    drop(vm);
    let dir = tmp.path().join("vm");
    let d = dir.to_str().unwrap();
    let full = tmp.path().join("full");
    cli_ok(&[
        "checkpoint",
        "export",
        d,
        "nightly",
        full.to_str().unwrap(),
        "--format",
        "rbd-diff",
    ]);
    cli_ok(&["checkpoint", "reference", d, "nightly"]);
    let inc = tmp.path().join("inc");
    cli_ok(&[
        "checkpoint",
        "export",
        d,
        "next",
        inc.to_str().unwrap(),
        "--since",
        "nightly",
        "--format",
        "rbd-diff",
    ]);
    for k in 0..2 {
        let img = format!("{}/{p}-disk{k}", c.pool);
        c.rbd_ok(&["create", "--size", "16M", &img]);
        for set in [&full, &inc] {
            let f = set.join(format!("disk{k}.rbd-diff"));
            c.rbd_ok(&["import-diff", "--no-progress", f.to_str().unwrap(), &img]);
        }
        assert_eq!(c.snaps(&img), ["nightly", "next"], "disk {k}");
        reads(c, &format!("{img}@nightly"), &at_nightly[k]);
        reads(c, &format!("{img}@next"), &at_next[k]);
        let inc_len = std::fs::metadata(inc.join(format!("disk{k}.rbd-diff")))
            .unwrap()
            .len();
        assert!(
            inc_len < 200 * KIB,
            "disk {k}: only the changes ({inc_len} bytes)"
        );
    }
    let o = support::cli::run(&[
        "checkpoint",
        "export",
        d,
        "next",
        "/nonexistent/x",
        "--since",
        "nightly",
        "--base",
        full.to_str().unwrap(),
        "--format",
        "rbd-diff",
    ]);
    assert!(!o.status.success());
    assert!(support::cli::stderr(&o).contains("--base"), "{o:?}");
    let o = support::cli::run(&[
        "checkpoint",
        "export",
        d,
        "next",
        "/nonexistent/y",
        "--since",
        "nightly",
    ]);
    assert!(!o.status.success());
    assert!(support::cli::stderr(&o).contains("--base"), "{o:?}");
}
