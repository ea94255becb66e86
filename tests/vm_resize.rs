//! Resizing a VM's disk (`Vm::resize_disk`, `ckpt vm disk-resize`), as
//! Hyper-V's Resize-VHD on a VM's disk: only the current state's top
//! changes; every checkpoint keeps its size and applying one brings it
//! back; deleting a checkpoint (a merge of layers of different sizes)
//! keeps what the current state reads. Offline, and live while a writer
//! writes through the attached VM's handle (a resize, then a live delete
//! that grows the base).

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use ckpt::checkpoint::{CheckpointType, NoHooks, Vm, VmSpec, VmState};
use ckpt::{CreateOptions, Disk, ErrorKind, OpenMode, ResizeOptions};

use support::{first_diff, read_all, MIB};

const GROW: ResizeOptions = ResizeOptions {
    allow_shrink: false,
};

fn vm_with_disk(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let disk = dir.join("os.vhdx");
    let d = Disk::create(&disk, &CreateOptions::new(8 * MIB).block_size(MIB as u32)).unwrap();
    let model: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8 + 1).collect();
    d.write_at(&model, 0).unwrap();
    d.close().unwrap();
    let vm_dir = dir.join("vm");
    let mut spec = VmSpec::new("web", vec![disk]);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    Vm::create(&vm_dir, &spec).unwrap();
    (vm_dir, model)
}

#[track_caller]
fn assert_current(vm: &Vm, model: &[u8]) {
    let d = Disk::open(&vm.data().current.disks[0], OpenMode::ReadOnly).unwrap();
    assert_eq!(d.virtual_size(), model.len() as u64);
    let got = read_all(&d);
    assert!(got == model, "{}", first_diff(&got, model));
}

#[test]
fn resize_the_current_disk_keep_checkpoints_apply_brings_the_size_back() {
    let t = support::tempdir();
    let (dir, mut model) = vm_with_disk(t.path());
    let mut vm = Vm::open(&dir).unwrap();
    vm.create_checkpoint("before", None, &mut NoHooks).unwrap();
    let frozen = vm.find("before").unwrap().disks[0].clone();
    let r = vm.resize_disk(0, 12 * MIB, GROW).unwrap();
    assert_eq!((r.old_size, r.new_size), (8 * MIB, 12 * MIB));
    model.resize(12 * MIB as usize, 0);
    assert_current(&vm, &model);
    // The checkpoint's disk did not change size.
    assert_eq!(
        Disk::open(&frozen, OpenMode::ReadOnly)
            .unwrap()
            .virtual_size(),
        8 * MIB
    );
    // Write past the old end, take a second checkpoint.
    {
        let d = Disk::open(&vm.data().current.disks[0], OpenMode::ReadWrite).unwrap();
        d.write_at(&[0xabu8; 4096], 10 * MIB).unwrap();
        d.close().unwrap();
    }
    model[10 * MIB as usize..10 * MIB as usize + 4096].fill(0xab);
    vm.create_checkpoint("after", None, &mut NoHooks).unwrap();
    // Bad index, bad size, a shrink over data: refused, nothing changed.
    assert_eq!(
        vm.resize_disk(1, 4 * MIB, GROW).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        vm.resize_disk(0, 4 * MIB, GROW).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_current(&vm, &model);
    // Apply the first checkpoint: its size is back.
    vm.apply("before", None, &mut NoHooks).unwrap();
    let eight: Vec<u8> = model[..8 * MIB as usize].to_vec();
    assert_current(&vm, &eight);
    // Deleting "after" (whose disk is larger than the layer under it)
    // and then "before" merges layers of different sizes; the current
    // state reads the same.
    vm.delete("after", false, &mut NoHooks).unwrap();
    assert_current(&vm, &eight);
    vm.delete("before", false, &mut NoHooks).unwrap();
    assert_current(&vm, &eight);
}

#[test]
fn live_resize_while_a_writer_writes_and_through_the_cli() {
    let t = support::tempdir();
    let (dir, model) = vm_with_disk(t.path());
    let mut vm = Vm::open(&dir).unwrap();
    vm.set_state(VmState::Running).unwrap();
    let disk = vm.disk(0).unwrap();
    vm.create_checkpoint("c", None, &mut NoHooks).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (disk, stop) = (disk.clone(), stop.clone());
        thread::spawn(move || {
            // The last byte value written to each 4 KiB unit of [0, 4 MiB).
            let mut last: Vec<Option<u8>> = vec![None; 1024];
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let unit = (n * 7) % 1024;
                let v = (n % 200) as u8 + 1;
                disk.write_at(&[v; 4096], unit * 4096).unwrap();
                last[unit as usize] = Some(v);
                if n % 16 == 0 {
                    disk.flush().unwrap();
                }
                n += 1;
            }
            disk.flush().unwrap();
            last
        })
    };
    let r = vm.resize_disk(0, 16 * MIB, GROW).unwrap();
    assert_eq!(r.new_size, 16 * MIB);
    assert_eq!(disk.virtual_size(), 16 * MIB);
    disk.write_at(&[0x77u8; 512], 15 * MIB).unwrap();
    let mut b = vec![0u8; 512];
    disk.read_at(&mut b, 12 * MIB).unwrap();
    assert_eq!(b, vec![0u8; 512], "new space reads zeros");
    // Delete the checkpoint while the writer writes: a live merge of the
    // 16 MiB top into the 8 MiB base, which grows.
    vm.delete("c", false, &mut NoHooks).unwrap();
    assert_eq!(disk.virtual_size(), 16 * MIB);
    disk.read_at(&mut b, 15 * MIB).unwrap();
    assert_eq!(b, vec![0x77u8; 512], "after the live delete");
    disk.read_at(&mut b, 12 * MIB).unwrap();
    assert_eq!(b, vec![0u8; 512], "new space still reads zeros");
    stop.store(true, Ordering::SeqCst);
    let last = w.join().unwrap();
    assert!(last.iter().any(Option::is_some));
    // Every write the writer made reads back, through the live handle.
    let check_units = |read: &dyn Fn(&mut [u8], u64)| {
        let mut buf = vec![0u8; 4096];
        for (u, v) in last.iter().enumerate() {
            read(&mut buf, u as u64 * 4096);
            let at = u * 4096;
            let want: Vec<u8> = match v {
                Some(v) => vec![*v; 4096],
                None => model[at..at + 4096].to_vec(),
            };
            assert!(buf == want, "unit {u}");
        }
    };
    check_units(&|b, off| disk.read_at(b, off).unwrap());
    // What the writer did not touch still reads the base.
    let mut got = vec![0u8; 4 * MIB as usize];
    disk.read_at(&mut got, 4 * MIB).unwrap();
    assert!(got == model[4 * MIB as usize..], "past the writer's range");
    drop(disk);
    vm.detach().unwrap();
    drop(vm);
    // Reopened detached (the hidden merged layer collapses): the same.
    let vm = Vm::open(&dir).unwrap();
    let d = Disk::open(&vm.data().current.disks[0], OpenMode::ReadOnly).unwrap();
    assert_eq!(d.virtual_size(), 16 * MIB);
    let mut got = vec![0u8; 4 * MIB as usize];
    d.read_at(&mut got, 4 * MIB).unwrap();
    assert!(
        got == model[4 * MIB as usize..],
        "past the writer's range, reopened"
    );
    d.read_at(&mut b, 15 * MIB).unwrap();
    assert_eq!(b, vec![0x77u8; 512]);
    check_units(&|b, off| d.read_at(b, off).unwrap());
    drop((d, vm));
    // The CLI, on the detached VM: shrink refused over data, then allowed.
    let ckpt = env!("CARGO_BIN_EXE_ckpt");
    let dir_s = dir.to_str().unwrap();
    let o = std::process::Command::new(ckpt)
        .args(["vm", "disk-resize", dir_s, "0", "12M"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("beyond the new end"), "{e}");
    let o = std::process::Command::new(ckpt)
        .args([
            "vm",
            "disk-resize",
            dir_s,
            "0",
            "12M",
            "--allow-shrink",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["new_size"], 12 * MIB);
    let vm = Vm::open(&dir).unwrap();
    let d = Disk::open(&vm.data().current.disks[0], OpenMode::ReadOnly).unwrap();
    assert_eq!(d.virtual_size(), 12 * MIB);
    let o = std::process::Command::new(ckpt)
        .args(["vm", "disk-resize", dir_s, "3", "12M"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}
