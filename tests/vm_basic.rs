//! A first scenario through the checkpoint tree, checking disk bytes against a model.

use std::path::{Path, PathBuf};

use ckpt::checkpoint::{CheckpointType, Hooks, NoHooks, Settings, TakenType, Vm, VmSpec, VmState};
use ckpt::{CreateOptions, Disk, OpenMode};

const SIZE: u64 = 4 << 20;

fn read(p: &Path) -> Vec<u8> {
    let d = Disk::open(p, OpenMode::ReadOnly).unwrap();
    let mut b = vec![0u8; SIZE as usize];
    d.read_at(&mut b, 0).unwrap();
    b
}

fn write(p: &Path, off: u64, data: &[u8]) {
    let d = Disk::open(p, OpenMode::ReadWrite).unwrap();
    d.write_at(data, off).unwrap();
    d.close().unwrap();
}

struct Quiesce(bool);
impl Hooks for Quiesce {
    fn quiesce(&mut self) -> Result<(), String> {
        if self.0 {
            Ok(())
        } else {
            Err("guest agent not running".into())
        }
    }
    fn save_memory(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<bool> {
        out.write_all(b"MEMORY")?;
        Ok(true)
    }
}

#[test]
fn create_apply_delete_export() {
    let dir = tempfile::tempdir().unwrap();
    let disk: PathBuf = dir.path().join("disks").join("os.vhdx");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    Disk::create(&disk, &CreateOptions::new(SIZE).block_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    let vmdir = dir.path().join("vm");
    let mut spec = VmSpec::new("test", vec![disk.clone()]);
    spec.passthrough = vec!["/dev/sdz".into()];
    let mut vm = Vm::create(&vmdir, &spec).unwrap();
    write(&vm.data().current.disks[0], 0, b"state-0");

    // production checkpoint (quiesce works)
    let a = vm.create_checkpoint("a", None, &mut Quiesce(true)).unwrap();
    assert_eq!(a.taken, TakenType::Production);
    assert!(a.saved_state.is_none());
    assert_eq!(a.skipped_passthrough, vec!["/dev/sdz".to_string()]);
    let cur = vm.data().current.disks[0].clone();
    assert_ne!(cur, disk);
    assert_eq!(cur.parent(), disk.parent());
    write(&cur, 0, b"state-1");
    // fallback: production -> standard with memory (a running VM: an off
    // one has nothing to quiesce)
    vm.set_state(VmState::Running).unwrap();
    let b = vm
        .create_checkpoint("b", None, &mut Quiesce(false))
        .unwrap();
    assert_eq!(b.taken, TakenType::Standard);
    assert!(b
        .fallback_reason
        .as_deref()
        .unwrap()
        .contains("guest agent"));
    assert!(b.saved_state.is_some());
    write(&vm.data().current.disks[0], 0, b"state-2");
    vm.set_resources(Some(4096), None).unwrap();
    vm.set_state(VmState::Off).unwrap();

    // apply a with capture: current kept as "c"
    vm.apply("a", Some("c"), &mut Quiesce(true)).unwrap();
    assert_eq!(vm.data().state, VmState::Off);
    assert_eq!(&read(&vm.data().current.disks[0])[..7], b"state-0");
    assert_eq!(vm.data().config.memory_mib, 1024);
    // branch: write, then apply b (standard -> saved)
    write(&vm.data().current.disks[0], 0, b"branch!");
    vm.apply("b", None, &mut NoHooks).unwrap();
    assert_eq!(vm.data().state, VmState::Saved);
    assert_eq!(&read(&vm.data().current.disks[0])[..7], b"state-1");
    // c reads state-2
    let c = vm.find("c").unwrap().clone();
    assert_eq!(&read(&c.disks[0])[..7], b"state-2");
    // delete b (middle, with dependants c and current => branch point kept hidden)
    vm.delete("b", false, &mut NoHooks).unwrap();
    assert!(vm.find("b").is_err());
    assert_eq!(&read(&vm.find("c").unwrap().disks[0])[..7], b"state-2");
    assert_eq!(&read(&vm.data().current.disks[0])[..7], b"state-1");
    // delete c (leaf) => hidden b collapses into the current state
    vm.delete("c", false, &mut NoHooks).unwrap();
    assert_eq!(vm.data().checkpoints.len(), 1);
    assert_eq!(&read(&vm.data().current.disks[0])[..7], b"state-1");
    // export a
    let out = dir.path().join("export");
    let files = vm.export(Some("a"), &out, &mut NoHooks).unwrap();
    assert_eq!(&read(&files[0])[..7], b"state-0");
    assert_eq!(
        Disk::open(&files[0], OpenMode::ReadOnly).unwrap().depth(),
        1
    );
    // delete a (root with the current state as its only dependant): merged into the base disk
    vm.delete("a", false, &mut NoHooks).unwrap();
    assert!(vm.data().checkpoints.is_empty());
    assert_eq!(vm.data().current.disks[0], disk);
    assert_eq!(&read(&disk)[..7], b"state-1");
    assert!(vm.strays().unwrap().is_empty(), "{:?}", vm.strays());
    // lock: a second open is refused while this one is alive
    assert!(matches!(Vm::open(&vmdir), Err(ckpt::Error::Busy(_))));
    drop(vm);
    let mut vm = Vm::open(&vmdir).unwrap();
    vm.set_settings(Settings {
        checkpoint_type: CheckpointType::Disabled,
        ..Default::default()
    })
    .unwrap();
    assert!(vm.create_checkpoint("x", None, &mut NoHooks).is_err());
    vm.set_settings(Settings {
        checkpoint_type: CheckpointType::ProductionOnly,
        ..Default::default()
    })
    .unwrap();
    vm.set_state(VmState::Running).unwrap();
    assert!(vm
        .create_checkpoint("x", None, &mut Quiesce(false))
        .is_err());
    assert!(vm.data().checkpoints.is_empty());
    assert!(vm.strays().unwrap().is_empty());
}

#[test]
fn deleting_a_checkpoint_keeps_the_memory_state_the_current_state_resumes_from() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("os.vhdx");
    Disk::create(&disk, &CreateOptions::new(SIZE).block_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    let mut spec = VmSpec::new("m", vec![disk]);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    let mut vm = Vm::create(&dir.path().join("vm"), &spec).unwrap();
    vm.create_checkpoint("a", None, &mut Quiesce(true)).unwrap();
    vm.create_checkpoint("b", None, &mut Quiesce(true)).unwrap();
    vm.apply("b", None, &mut NoHooks).unwrap();
    let mem = vm.data().current.saved_state.clone().unwrap();
    vm.delete("b", false, &mut NoHooks).unwrap();
    assert!(
        mem.exists(),
        "the saved state the VM resumes from was removed"
    );
    vm.export(None, &dir.path().join("exp"), &mut NoHooks)
        .unwrap();
    assert!(vm.strays().unwrap().is_empty());
    vm.set_state(VmState::Running).unwrap();
    assert!(!mem.exists(), "an unused memory state was left behind");
    assert!(vm.strays().unwrap().is_empty());
}

fn standard_vm(root: &Path) -> Vm {
    let disk = root.join("os.vhdx");
    Disk::create(&disk, &CreateOptions::new(SIZE).block_size(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    let mut spec = VmSpec::new("m", vec![disk]);
    spec.settings.checkpoint_type = CheckpointType::Standard;
    Vm::create(&root.join("vm"), &spec).unwrap()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn a_checkpoint_of_a_saved_vm_keeps_its_memory_state_without_a_copy() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut vm = standard_vm(dir.path());
    vm.create_checkpoint("a", None, &mut Quiesce(true)).unwrap();
    vm.apply("a", None, &mut NoHooks).unwrap();
    assert_eq!(vm.data().state, VmState::Saved);
    let mem = vm.data().current.saved_state.clone().unwrap();
    let ino = std::fs::metadata(&mem).unwrap().ino();
    let loc = vm.checkpoint_location();
    let before = files_in(&loc).len();

    // A checkpoint of the saved VM, with the Standard and the Production setting.
    let s = vm.create_checkpoint("s", None, &mut Quiesce(true)).unwrap();
    assert_eq!(s.taken, TakenType::Standard);
    assert_eq!(s.saved_state.as_ref(), Some(&mem), "not the saved state");
    let mut settings = vm.data().settings.clone();
    settings.checkpoint_type = CheckpointType::Production;
    vm.set_settings(settings).unwrap();
    let p = vm.create_checkpoint("p", None, &mut Quiesce(true)).unwrap();
    assert_eq!(p.saved_state.as_ref(), Some(&mem));
    // Only the two configuration copies were added: no memory copy.
    assert_eq!(files_in(&loc).len(), before + 2);

    // apply --save-current on the saved VM keeps it too.
    vm.apply("a", Some("k"), &mut NoHooks).unwrap();
    let k = vm.find("k").unwrap().clone();
    assert_eq!(k.saved_state.as_ref(), Some(&mem));

    // Every one of them applies to a saved VM resuming from that memory.
    for name in ["s", "p", "k", "a"] {
        vm.set_state(VmState::Off).unwrap();
        vm.apply(name, None, &mut NoHooks).unwrap();
        assert_eq!(vm.data().state, VmState::Saved, "{name}");
        let m = vm.data().current.saved_state.clone().unwrap();
        assert_eq!(std::fs::metadata(&m).unwrap().ino(), ino, "{name}");
        assert_eq!(std::fs::read(&m).unwrap(), b"MEMORY");
    }
    assert!(vm.strays().unwrap().is_empty());

    // The shared file goes only with the last node using it.
    vm.set_state(VmState::Off).unwrap();
    for name in ["a", "s", "p"] {
        vm.delete(name, false, &mut NoHooks).unwrap();
        assert!(mem.exists(), "removed while {name}'s siblings use it");
    }
    vm.delete("k", false, &mut NoHooks).unwrap();
    assert!(!mem.exists(), "an unused memory state was left behind");
    assert!(vm.strays().unwrap().is_empty());
}

#[test]
fn apply_and_revert_of_a_running_vm_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = standard_vm(dir.path());
    vm.create_checkpoint("a", None, &mut Quiesce(true)).unwrap();
    vm.set_state(VmState::Running).unwrap();
    let vm_json = std::fs::read(vm.dir().join("vm.json")).unwrap();
    let listing = files_in(dir.path());
    let e = vm.apply("a", None, &mut NoHooks).unwrap_err();
    assert!(
        e.kind() == ckpt::ErrorKind::InvalidArgument && e.to_string().contains("stop or save"),
        "{e}"
    );
    let e = vm.apply("a", Some("k"), &mut NoHooks).unwrap_err();
    assert!(e.to_string().contains("stop or save"), "{e}");
    let e = vm.revert().unwrap_err();
    assert!(e.to_string().contains("stop or save"), "{e}");
    assert_eq!(std::fs::read(vm.dir().join("vm.json")).unwrap(), vm_json);
    assert!(!vm.dir().join("journal.json").exists());
    assert_eq!(files_in(dir.path()), listing);
    assert_eq!(files_in(&vm.checkpoint_location()).len(), 2);

    // A disk someone holds is never deleted, whatever the recorded state.
    vm.set_state(VmState::Off).unwrap();
    let cur = vm.data().current.disks[0].clone();
    let held = Disk::open(&cur, OpenMode::ReadWrite).unwrap();
    let vm_json = std::fs::read(vm.dir().join("vm.json")).unwrap();
    let e = vm.revert().unwrap_err();
    assert_eq!(e.kind(), ckpt::ErrorKind::Busy, "{e:?}");
    let e = vm.apply("a", None, &mut NoHooks).unwrap_err();
    assert_eq!(e.kind(), ckpt::ErrorKind::Busy, "{e:?}");
    assert!(cur.exists());
    assert_eq!(std::fs::read(vm.dir().join("vm.json")).unwrap(), vm_json);
    assert!(!vm.dir().join("journal.json").exists());
    held.close().unwrap();
    vm.revert().unwrap();
    assert!(!cur.exists());
}
