//! Unit tests of the VM C API.

use super::*;

/// A memory-state file on a full disk.
struct Full;
impl Write for Full {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("no space left"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::other("no space left"))
    }
}

/// `user` points to (bytes to write, status of the write).
unsafe extern "C" fn writes_then_says_ok(w: *mut ckpt_writer, user: *mut c_void) -> c_int {
    // SAFETY: the test passes a `(usize, ckpt_status)`.
    let state = unsafe { &mut *user.cast::<(usize, ckpt_status)>() };
    let data = vec![7u8; state.0];
    // SAFETY: the writer of this callback; `data` is readable.
    state.1 = unsafe { ckpt_writer_write(w, data.as_ptr(), data.len()) };
    0 // ignores the failure: the library must not
}

fn hooks(user: &mut (usize, ckpt_status)) -> CHooks {
    CHooks(Some(ckpt_hooks {
        struct_size: size_of::<ckpt_hooks>() as u32,
        reserved: 0,
        quiesce: None,
        thaw: None,
        save_memory: Some(writes_then_says_ok),
        progress: None,
        user: (user as *mut (usize, ckpt_status)).cast(),
        resume: None,
    }))
}

#[test]
fn a_failed_write_fails_save_memory_whatever_the_callback_returns() {
    // Small: buffered, fails when flushed.
    let mut user = (100usize, ckpt_status::Panic);
    let e = hooks(&mut user).save_memory(&mut Full).unwrap_err();
    assert_eq!(user.1, ckpt_status::Ok);
    assert!(e.to_string().contains("no space left"), "{e}");
    // Large: fails in ckpt_writer_write itself.
    let mut user = (3 << 20, ckpt_status::Ok);
    let e = hooks(&mut user).save_memory(&mut Full).unwrap_err();
    assert_eq!(user.1, ckpt_status::Io);
    assert!(
        e.to_string().contains("writing the memory state failed"),
        "{e}"
    );
    // And a working stream gets every byte.
    let mut out = Vec::new();
    let mut user = (3 << 20, ckpt_status::Panic);
    assert!(hooks(&mut user).save_memory(&mut out).unwrap());
    assert_eq!(user.1, ckpt_status::Ok);
    assert_eq!(out, vec![7u8; 3 << 20]);
}

#[test]
fn missing_hooks_behave_like_none() {
    let mut h = CHooks(None);
    assert!(h.quiesce().unwrap_err().contains("NULL"));
    assert!(!h.save_memory(&mut Vec::new()).unwrap());
    assert!(h.progress(1, 2));
    h.thaw();
}

/// Size-then-fill on the checkpoint list never fails, even when an age
/// gains a digit between the two calls (9 s -> 10 s).
#[test]
fn size_then_fill_survives_an_age_rolling_over() {
    use std::ffi::CString;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("os.vhdx");
    crate::Disk::create(&disk, &crate::CreateOptions::new(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    let vmdir = dir.path().join("vm");
    let mut v = Vm::create(&vmdir, &VmSpec::new("t", vec![disk])).unwrap();
    v.create_checkpoint("one", None, &mut crate::checkpoint::NoHooks)
        .unwrap();
    drop(v);
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let vmdir_c = CString::new(vmdir.to_str().unwrap()).unwrap();
    let mut rolled = false;
    for _ in 0..5 {
        // The checkpoint is 9 seconds old now, 10 a second from now.
        let path = vmdir.join(crate::checkpoint::model::VM_FILE);
        let mut data: crate::checkpoint::VmFile =
            crate::checkpoint::model::read_json(&path).unwrap();
        let t0 = now();
        data.checkpoints[0].created = t0 - 9;
        crate::checkpoint::model::write_json(&path, &data).unwrap();
        let mut vm = std::ptr::null_mut();
        let (mut len, mut len2, mut fresh) = (0usize, 0usize, 0usize);
        // SAFETY: valid strings, out pointers and buffers of the sizes given.
        unsafe {
            assert_eq!(ckpt_vm_open(vmdir_c.as_ptr(), &mut vm), ckpt_status::Ok);
            let s = ckpt_vm_checkpoints_json(vm, std::ptr::null_mut(), 0, &mut len);
            assert_eq!(s, ckpt_status::BufferTooSmall);
            let measured_at = now();
            while now() < measured_at + 1 {
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut buf = vec![0u8; len + 1];
            let s = ckpt_vm_checkpoints_json(vm, buf.as_mut_ptr().cast(), len + 1, &mut len2);
            assert_eq!(
                s,
                ckpt_status::Ok,
                "the size the first call gave was too small"
            );
            assert_eq!(len2, len);
            let text: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
            // A new measurement now sees the new age.
            let s = ckpt_vm_checkpoints_json(vm, std::ptr::null_mut(), 0, &mut fresh);
            assert_eq!(s, ckpt_status::BufferTooSmall);
            assert_eq!(ckpt_vm_close(vm), ckpt_status::Ok);
            if measured_at == t0 && text["checkpoints"][0]["age_seconds"] == 9 {
                assert_eq!(fresh, len + 1, "the age gained a digit");
                rolled = true;
                break;
            }
        }
    }
    assert!(rolled, "could not measure at 9 seconds of age");
}

/// The JSON getters give exactly what `checkpoint::json` builds for the
/// CLI, and it parses.
#[test]
fn json_getters_match_the_shared_builders() {
    use std::ffi::CString;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("os.vhdx");
    crate::Disk::create(&disk, &crate::CreateOptions::new(1 << 20))
        .unwrap()
        .close()
        .unwrap();
    let vmdir = CString::new(dir.path().join("vm").to_str().unwrap()).unwrap();
    let disk_c = CString::new(disk.to_str().unwrap()).unwrap();
    let disks = [disk_c.as_ptr()];
    // SAFETY: all-zero is a valid spec (NULL pointers, zero numbers).
    let mut spec: ckpt_vm_spec = unsafe { std::mem::zeroed() };
    spec.struct_size = size_of::<ckpt_vm_spec>() as u32;
    spec.name = c"j".as_ptr();
    spec.disks = disks.as_ptr();
    spec.disk_count = 1;
    let mut vm = std::ptr::null_mut();
    // SAFETY: valid strings, spec and out pointer.
    unsafe {
        assert_eq!(
            ckpt_vm_create(vmdir.as_ptr(), &spec, &mut vm),
            ckpt_status::Ok
        );
        assert_eq!(
            ckpt_vm_checkpoint_create(vm, c"one".as_ptr(), std::ptr::null()),
            ckpt_status::Ok
        );
    }
    let get =
        |f: unsafe extern "C" fn(*const ckpt_vm, *mut c_char, usize, *mut usize) -> ckpt_status| {
            let mut len = 0usize;
            // SAFETY: len 0 with a NULL buffer, then a buffer of len + 1.
            unsafe {
                assert_eq!(
                    f(vm, std::ptr::null_mut(), 0, &mut len),
                    ckpt_status::BufferTooSmall
                );
                let mut buf = vec![0u8; len + 1];
                assert_eq!(
                    f(vm, buf.as_mut_ptr().cast(), buf.len(), &mut len),
                    ckpt_status::Ok
                );
                buf.truncate(len);
                serde_json::from_slice::<serde_json::Value>(&buf).unwrap()
            }
        };
    let show = get(ckpt_vm_show_json);
    let list = get(ckpt_vm_checkpoints_json);
    let data = Vm::load(&dir.path().join("vm")).unwrap();
    assert_eq!(show, vm_json(&data));
    let mut want = checkpoints_json(&data).unwrap();
    // Ages tick between the two calls.
    want["checkpoints"][0]["age_seconds"] = list["checkpoints"][0]["age_seconds"].clone();
    assert_eq!(list, want);
    assert_eq!(list["checkpoints"][0]["name"], "one");
    assert_eq!(show["current_checkpoint"], "one");
    // SAFETY: a live handle, closed once.
    assert_eq!(unsafe { ckpt_vm_close(vm) }, ckpt_status::Ok);
}

/// Every C value maps to the library value that maps back to it, and
/// every other number is refused.
#[test]
fn c_enums_round_trip() {
    for t in CheckpointType::ALL {
        let c = ckpt_checkpoint_type::from(t);
        assert_eq!(checkpoint_type_of(c as u32).unwrap(), t);
    }
    for s in VmState::ALL {
        let c = ckpt_vm_state::from(s);
        assert_eq!(vm_state_of(c as u32).unwrap(), s);
    }
    assert_eq!(
        ckpt_taken_type::from(TakenType::Production),
        ckpt_taken_type::Production
    );
    for bad in [0, 5, u32::MAX] {
        let e = checkpoint_type_of(bad).unwrap_err();
        assert_eq!(e.status, ckpt_status::InvalidArgument);
        assert!(e.message.contains("CKPT_CHECKPOINT_TYPE_"), "{}", e.message);
    }
    for bad in [0, 4] {
        let e = vm_state_of(bad).unwrap_err();
        assert!(
            e.message.contains("CKPT_VM_STATE_* value (1 to 3)"),
            "{}",
            e.message
        );
    }
}
