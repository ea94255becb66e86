//! A VM with legacy VHD disks (issue 16): Hyper-V checkpoints a `.vhd`
//! disk with `.avhd` differencing disks next to it, and every tree
//! operation works on them as on VHDX (a VM may mix both). Judged by byte
//! models, by libvhdi (`pyvhdi` with `set_parent`, which reads
//! differencing VHDs; QEMU's vpc driver does not) for every VHD chain, and
//! by QEMU (`qemu-img compare -f vpc`) for the VHD base. A cut at every
//! file event of a delete (the merge of a VHD layer with descendants to
//! re-point) leaves every state readable and the tree whole.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use ckpt::checkpoint::{CheckpointType, NoHooks, Vm, VmSpec};
use ckpt::io::Cut;
use ckpt::{CreateOptions, Disk, Format, LiveDisk, OpenMode, VhdOptions};
use support::backup::pyvhdi_reads;
use support::sweep::{every_cut, reopened};
use support::{assert_same, have_pyvhdi, have_qemu, missing, read_all, run, Rng};

include!("support/live_units.rs");

/// Disk 0 a dynamic VHD (2 MiB blocks), disk 1 a VHDX.
fn build_vm(root: &Path) -> (Vm, Vec<Vec<u8>>) {
    let d0 = root.join("disks").join("os.vhd");
    let d1 = root.join("disks").join("data.vhdx");
    std::fs::create_dir_all(d0.parent().unwrap()).unwrap();
    Disk::create_vhd(&d0, &VhdOptions::new(SIZE))
        .unwrap()
        .close()
        .unwrap();
    Disk::create(&d1, &CreateOptions::new(SIZE).block_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    let mut spec = VmSpec::new("legacy", vec![d0, d1]);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    let vm = Vm::create(&root.join("vm"), &spec).unwrap();
    (vm, vec![vec![0u8; SIZE as usize]; 2])
}

/// `n` random writes into the current disks (offline), mirrored in `model`.
fn writes(vm: &Vm, model: &mut [Vec<u8>], rng: &mut Rng, n: usize) {
    for _ in 0..n {
        let k = rng.below(2) as usize;
        let len = rng.range(1, 300 << 10);
        let off = rng.below(SIZE - len);
        let data = if rng.below(6) == 0 {
            vec![0u8; len as usize]
        } else {
            rng.bytes(len as usize)
        };
        let d = Disk::open(&vm.data().current.disks[k], OpenMode::ReadWrite).unwrap();
        d.write_at(&data, off).unwrap();
        d.close().unwrap();
        model[k][off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
}

/// The files of the chain of `top`, oldest first.
fn chain_files(top: &Path) -> Vec<PathBuf> {
    let d = Disk::open(top, OpenMode::ReadOnly).unwrap();
    let mut v: Vec<PathBuf> = d.chain().into_iter().flatten().collect();
    v.reverse();
    v
}

/// Disk `disks[k]` reads `want` in libckpt, and in libvhdi for the VHD.
fn judge(what: &str, disks: &[PathBuf], want: &[Vec<u8>], scratch: &Path) {
    for (k, p) in disks.iter().enumerate() {
        let d = Disk::open(p, OpenMode::ReadOnly).unwrap_or_else(|e| panic!("{what}: {e}"));
        let fmt = if k == 0 { Format::Vhd } else { Format::Vhdx };
        assert_eq!(d.format(), fmt, "{what}: disk {k}: {}", p.display());
        assert_same(&format!("{what}: disk {k}"), &read_all(&d), &want[k], 0);
        drop(d);
        if k == 0 && have_pyvhdi() {
            let got = pyvhdi_reads(&chain_files(p), &scratch.join("pyvhdi.out"));
            assert_same(&format!("{what}: disk 0 (libvhdi)"), &got, &want[0], 0);
        }
    }
}

fn disks_of(vm: &Vm, name: &str) -> Vec<PathBuf> {
    vm.find(name).unwrap().disks.clone()
}

#[test]
fn every_tree_operation_works_on_vhd_disks() {
    if !have_pyvhdi() {
        missing("pyvhdi");
    }
    let t = support::tempdir();
    let scratch = t.path();
    let (mut vm, mut model) = build_vm(t.path());
    let mut rng = Rng::new(16);
    writes(&vm, &mut model, &mut rng, 12);
    vm.create_checkpoint("c1", None, &mut NoHooks).unwrap();
    let m1 = model.clone();
    // Hyper-V's names: .avhd on the VHD, .avhdx on the VHDX, next to each.
    let cur = vm.data().current.disks.clone();
    assert_eq!(cur[0].extension().unwrap(), "avhd", "{}", cur[0].display());
    assert_eq!(cur[1].extension().unwrap(), "avhdx", "{}", cur[1].display());
    assert_eq!(cur[0].parent(), disks_of(&vm, "c1")[0].parent());
    writes(&vm, &mut model, &mut rng, 12);
    vm.create_checkpoint("c2", None, &mut NoHooks).unwrap();
    let m2 = model.clone();
    writes(&vm, &mut model, &mut rng, 12);
    vm.create_checkpoint("c3", None, &mut NoHooks).unwrap();
    let m3 = model.clone();
    writes(&vm, &mut model, &mut rng, 12);
    judge("c1", &disks_of(&vm, "c1"), &m1, scratch);
    judge("c2", &disks_of(&vm, "c2"), &m2, scratch);
    judge("c3", &disks_of(&vm, "c3"), &m3, scratch);
    judge("now", &vm.data().current.disks.clone(), &model, scratch);

    // Delete in the middle: c3's layer merges into c2's, and the current
    // state's layer (a descendant) is re-pointed at it.
    let c3_old = disks_of(&vm, "c3");
    vm.delete("c2", false, &mut NoHooks).unwrap();
    assert!(vm.find("c2").is_err());
    assert!(!c3_old[0].exists(), "the merged VHD layer is removed");
    judge("c3 after deleting c2", &disks_of(&vm, "c3"), &m3, scratch);
    judge(
        "now after deleting c2",
        &vm.data().current.disks.clone(),
        &model,
        scratch,
    );
    assert_eq!(chain_files(&vm.data().current.disks[0]).len(), 3);

    // Apply c1 (the current state is discarded), a branch with its own
    // checkpoint, a rename, an export.
    let now_before = vm.data().current.disks.clone();
    vm.apply("c1", None, &mut NoHooks).unwrap();
    assert!(
        !now_before[0].exists(),
        "the discarded current VHD layer is removed"
    );
    model = m1.clone();
    judge(
        "now after apply c1",
        &vm.data().current.disks.clone(),
        &model,
        scratch,
    );
    writes(&vm, &mut model, &mut rng, 10);
    vm.create_checkpoint("b1", None, &mut NoHooks).unwrap();
    let mb1 = model.clone();
    writes(&vm, &mut model, &mut rng, 10);
    vm.rename("c3", "third").unwrap();
    let dest = t.path().join("export-third");
    let files = vm.export(Some("third"), &dest, &mut NoHooks).unwrap();
    for k in 0..2 {
        let d = Disk::open(&files[k], OpenMode::ReadOnly).unwrap();
        assert_eq!(d.depth(), 1);
        assert_same(&format!("export disk {k}"), &read_all(&d), &m3[k], 0);
    }

    // Revert: back to b1.
    vm.revert().unwrap();
    let mut model = mb1.clone();
    judge(
        "now after revert",
        &vm.data().current.disks.clone(),
        &model,
        scratch,
    );

    // Deleting b1 (the current state's parent) merges the current state's
    // VHD layer into b1's; deleting c1, a branch point, keeps it hidden.
    writes(&vm, &mut model, &mut rng, 8);
    vm.delete("b1", false, &mut NoHooks).unwrap();
    judge(
        "now after deleting b1",
        &vm.data().current.disks.clone(),
        &model,
        scratch,
    );
    vm.delete("c1", false, &mut NoHooks).unwrap();
    judge(
        "third after deleting c1",
        &disks_of(&vm, "third"),
        &m3,
        scratch,
    );

    // Changes since a checkpoint and since a reference point.
    vm.create_checkpoint("r", None, &mut NoHooks).unwrap();
    let before = model.clone();
    writes(&vm, &mut model, &mut rng, 8);
    vm.convert_to_reference("r", &mut NoHooks).unwrap();
    let changes = vm.changes("r", None).unwrap();
    for k in 0..2 {
        let mut covered = vec![false; SIZE as usize];
        for r in &changes[k] {
            covered[r.offset as usize..(r.offset + r.length) as usize].fill(true);
        }
        for (i, (a, b)) in before[k].iter().zip(&model[k]).enumerate() {
            assert!(
                a == b || covered[i],
                "disk {k}: byte {i} changed but not reported"
            );
        }
    }

    // Sizes count the .avhd files; a leftover .avhd is a stray.
    let list = vm.list().unwrap();
    let third = list.iter().find(|c| c.checkpoint.name == "third").unwrap();
    assert!(third.size_bytes > 0, "{third:?}");
    let stray = t
        .path()
        .join("disks")
        .join(format!("os_{}.avhd", uuid::Uuid::new_v4()));
    std::fs::write(&stray, b"left over").unwrap();
    assert_eq!(vm.strays().unwrap(), vec![stray.clone()]);
    std::fs::remove_file(&stray).unwrap();
    // The next process sees the same tree, with no journal or stray.
    let dir = vm.dir().to_path_buf();
    let vm = reopened(vm, "reopen");
    judge("third, reopened", &disks_of(&vm, "third"), &m3, scratch);
    judge(
        "now, reopened",
        &vm.data().current.disks.clone(),
        &model,
        scratch,
    );
    drop(vm);
    // The VHD base still holds c1's state (nothing merged into it): QEMU.
    if have_qemu() {
        let base = dir.parent().unwrap().join("disks").join("os.vhd");
        let raw = t.path().join("m1.raw");
        std::fs::write(&raw, &m1[0]).unwrap();
        let out = run(std::process::Command::new("qemu-img")
            .args(["compare", "-f", "vpc", "-F", "raw"])
            .arg(&base)
            .arg(&raw));
        assert!(out.contains("Images are identical"), "{out}");
    } else {
        missing("qemu-img");
    }
}

/// c1 -> c2 -> c3 -> now, written between; the models of each.
fn three_deep(root: &Path) -> (Vm, [Vec<Vec<u8>>; 4]) {
    let (mut vm, mut model) = build_vm(root);
    let mut rng = Rng::new(7);
    let mut ms: Vec<Vec<Vec<u8>>> = Vec::new();
    for name in ["c1", "c2", "c3"] {
        writes(&vm, &mut model, &mut rng, 6);
        vm.create_checkpoint(name, None, &mut NoHooks).unwrap();
        ms.push(model.clone());
    }
    writes(&vm, &mut model, &mut rng, 6);
    ms.push(model);
    (vm, ms.try_into().unwrap())
}

/// A cut at every file event of deleting c2 (clean and torn): the next
/// open finishes or undoes it; c1, c3 and the current state read as before
/// (libckpt, and libvhdi for the VHD chains), c2 is there whole or gone.
#[test]
fn a_cut_at_every_event_of_a_vhd_delete_loses_nothing() {
    let t = support::tempdir();
    let (_, ms) = three_deep(t.path());
    let mut runs = 0;
    for cut in [Cut::Clean, Cut::Torn] {
        let events = every_cut(
            |root| three_deep(root).0,
            cut,
            |vm| vm.delete("c2", false, &mut NoHooks),
            |r| {
                let ctx = format!("{cut:?} {}", r.ctx());
                let vm = reopened(r.vm, &ctx);
                let names: Vec<&str> = vm
                    .data()
                    .checkpoints
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                if r.result.is_ok() {
                    assert_eq!(names, ["c1", "c3"], "{ctx}");
                }
                for (name, m) in [("c1", &ms[0]), ("c2", &ms[1]), ("c3", &ms[2])] {
                    if name == "c2" && vm.find(name).is_err() {
                        continue;
                    }
                    let disks = disks_of(&vm, name);
                    // libvhdi only once in a while: the sweep has many runs.
                    for (k, p) in disks.iter().enumerate() {
                        let d = Disk::open(p, OpenMode::ReadOnly)
                            .unwrap_or_else(|e| panic!("{ctx}: {name}: {e}"));
                        assert_same(&format!("{ctx}: {name} disk {k}"), &read_all(&d), &m[k], 0);
                    }
                }
                let cur = vm.data().current.disks.clone();
                for (k, p) in cur.iter().enumerate() {
                    let d = Disk::open(p, OpenMode::ReadOnly).unwrap();
                    assert_same(&format!("{ctx}: now disk {k}"), &read_all(&d), &ms[3][k], 0);
                }
                if r.n % 7 == 0 && have_pyvhdi() {
                    let got = pyvhdi_reads(&chain_files(&cur[0]), &r.root.join("p.out"));
                    assert_same(&format!("{ctx}: now (libvhdi)"), &got, &ms[3][0], 0);
                }
                // Whatever happened, the delete can be (re)done and ends the same.
                let mut vm = vm;
                if vm.find("c2").is_ok() {
                    vm.delete("c2", false, &mut NoHooks)
                        .unwrap_or_else(|e| panic!("{ctx}: delete again: {e}"));
                }
                let d = Disk::open(&disks_of(&vm, "c3")[0], OpenMode::ReadOnly).unwrap();
                assert_same(&format!("{ctx}: c3 finally"), &read_all(&d), &ms[2][0], 0);
            },
        );
        assert!(events > 5, "{events} events");
        runs += events;
    }
    eprintln!("{runs} cut runs");
}

/// A running VM with two VHD disks (attached, one writer thread per disk
/// writing self-describing units and flushing): live checkpoints (`.avhd`
/// children switched in a short pause), a live delete (the layer merged
/// down while the writers write, the running top re-pointed in a pause),
/// a live export of the current state; every checkpoint and the
/// export hold, per unit, a write between the last one that returned
/// before the operation and the last one that began before it returned
/// (libckpt and libvhdi); once detached and reopened the hidden layers are
/// merged and every state reads the same.
#[test]
fn a_running_vm_with_vhd_disks_checkpoints_deletes_and_exports_live() {
    use std::sync::atomic::Ordering;
    let t = support::tempdir();
    let (dir, mut vm, disks) = attached_as(t.path(), CheckpointType::Standard, true);
    let clock = Arc::new(AtomicU64::new(0));
    let writers = Writers::start(&disks, 8, &clock);
    let wait = |n: u64| {
        let until = clock.load(Ordering::SeqCst) + n;
        while clock.load(Ordering::SeqCst) < until {
            std::thread::yield_now();
        }
    };
    let mut made = Vec::new();
    for name in ["c1", "c2"] {
        wait(300);
        let begin = clock.fetch_add(1, Ordering::SeqCst);
        vm.create_checkpoint(name, None, &mut NoHooks).unwrap();
        let end = clock.fetch_add(1, Ordering::SeqCst);
        made.push((name, begin, end));
        for (k, d) in disks.iter().enumerate() {
            let top = d.path().unwrap();
            assert_eq!(top, vm.data().current.disks[k]);
            assert_eq!(top.extension().unwrap(), "avhd", "{}", top.display());
        }
    }
    wait(300);
    // c1 is the root: c2's layer merges into the base live, and the
    // running top is re-pointed at the base in a pause.
    let c2_layer = vm.find("c2").unwrap().disks.clone();
    vm.delete("c1", false, &mut NoHooks).unwrap();
    let w = vm.take_warnings();
    assert!(w.is_empty(), "{w:?}");
    assert!(vm.find("c1").is_err());
    for (k, d) in disks.iter().enumerate() {
        assert_eq!(d.depth(), 2, "disk {k}: the top over the base");
        assert!(!c2_layer[k].exists(), "the merged layer is removed");
    }
    wait(300);
    let out = t.path().join("export-now");
    let begin = clock.fetch_add(1, Ordering::SeqCst);
    let files = vm.export(None, &out, &mut NoHooks).unwrap();
    let end = clock.fetch_add(1, Ordering::SeqCst);
    wait(200);
    let log = writers.finish();
    assert!(log.error.is_none(), "a writer failed: {:?}", log.error);
    assert!(log.recs.len() > 300, "writers wrote {}", log.recs.len());
    let within = |what: &str, units: &[Vec<u8>], k: usize, begin: u64, end: u64| {
        for u in 0..UNITS {
            let seq = decode(k, u, &units[u as usize], what);
            let (lo, hi) = allowed(&log.recs, k, u, begin, end);
            assert!(
                lo <= seq && seq <= hi,
                "{what}: disk {k} unit {u}: {seq} not in {lo}..={hi}"
            );
        }
    };
    for (k, f) in files.iter().take(2).enumerate() {
        within("export", &read_units(f), k, begin, end);
    }
    let (_, b2, e2) = made[1];
    let c2 = vm.find("c2").unwrap().clone();
    let py = support::units::pyvhdi();
    for (k, (frozen, live)) in c2.disks.iter().zip(&disks).enumerate() {
        within("c2", &read_units(frozen), k, b2, e2);
        if py {
            within("c2 (libvhdi)", &vhdi_units(frozen), k, b2, e2);
        }
        let now = live_units(live);
        for u in 0..UNITS {
            assert_eq!(
                decode(k, u, &now[u as usize], "now"),
                last_seq(&log.recs, k, u)
            );
        }
    }
    let c2_units: Vec<_> = (0..2).map(|k| read_units(&c2.disks[k])).collect();
    let now_units: Vec<_> = disks.iter().map(|d| live_units(d)).collect();
    for d in &disks {
        d.flush().unwrap();
    }
    drop(disks);
    vm.detach().unwrap();
    drop(vm);
    // The next process merges the hidden VHD layers offline.
    let vm = Vm::open(&dir).unwrap();
    let vm = reopened(vm, "after detach");
    assert!(
        vm.data().checkpoints.iter().all(|c| !c.hidden),
        "{:?}",
        vm.data().checkpoints
    );
    let names: Vec<&str> = vm
        .data()
        .checkpoints
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["c2"]);
    let c2 = vm.find("c2").unwrap();
    for k in 0..2 {
        assert_eq!(
            read_units(&c2.disks[k]),
            c2_units[k],
            "c2 disk {k} after the collapse"
        );
        let cur = &vm.data().current.disks[k];
        assert_eq!(
            read_units(cur),
            now_units[k],
            "now disk {k} after the collapse"
        );
        // c2's layer merged into the base (c1 deleted), the export's
        // temporary layer into the current one.
        assert_eq!(
            chain_files(cur).len(),
            2,
            "c2's disk (the base) and the current layer"
        );
        if py {
            assert_eq!(vhdi_units(cur), now_units[k], "now disk {k} (libvhdi)");
        }
    }
}

#[cfg(feature = "cli")]
#[test]
fn the_cli_checkpoints_a_vhd_vm() {
    use support::cli::{ok, ok_text, s};
    let t = support::tempdir();
    let d0 = t.path().join("os.vhd");
    ok(&["create", "--format", "vhd", "--size", "8M", s(&d0)]);
    let vm = t.path().join("vm");
    ok(&["vm", "create", s(&vm), "--name", "v", "--disk", s(&d0)]);
    ok(&["checkpoint", "create", s(&vm), "one"]);
    let avhd: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "avhd"))
        .collect();
    assert_eq!(avhd.len(), 1, "{avhd:?}");
    let info = ok_text(&["info", s(&avhd[0])]);
    assert!(info.to_lowercase().contains("vhd"), "{info}");
    ok(&["checkpoint", "create", s(&vm), "two"]);
    ok(&["checkpoint", "delete", s(&vm), "one"]);
    let list = ok_text(&["checkpoint", "list", s(&vm)]);
    assert!(list.contains("two") && !list.contains("one"), "{list}");
}
