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
    // fallback: production -> standard with memory
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
