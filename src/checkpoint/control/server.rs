//! The holder's end: [`serve`] listens, checks each peer, and runs requests
//! on the held VM ([`HeldVm`]) with the hooks of `ConnHooks`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use super::wire::{error_reply, poisoned, socket_path, Conn, PROTOCOL_VERSION};
use crate::checkpoint::json::{checkpoints_json, compact_report_json, vm_json};
use crate::checkpoint::{Checkpoint, Hooks, NoHooks, Settings, Vm, VmState};
use crate::{CompactMode, CompactOptions, Error, ErrorKind, Result};

/// What a server runs its requests on: the holder's VM, taken for each
/// request exclusively (waiting while the holder uses it).
pub trait HeldVm: Send + Sync {
    /// Run `f` on the VM, exclusively.
    fn with_vm(&self, f: &mut dyn FnMut(&mut Vm) -> Result<Value>) -> Result<Value>;
}

impl HeldVm for Mutex<Vm> {
    fn with_vm(&self, f: &mut dyn FnMut(&mut Vm) -> Result<Value>) -> Result<Value> {
        let mut vm = wait_for(|| self.try_lock())?;
        f(&mut vm)
    }
}

/// How long a request waits for the holder to let go of its VM before it
/// is refused with `Busy` (a holder stuck in a call never hangs a client).
pub const HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Take a lock with `try_lock`, retrying for up to [`HOLDER_WAIT`].
pub fn wait_for<T>(mut try_lock: impl FnMut() -> std::sync::TryLockResult<T>) -> Result<T> {
    let start = std::time::Instant::now();
    loop {
        match try_lock() {
            Ok(g) => return Ok(g),
            Err(std::sync::TryLockError::Poisoned(_)) => return Err(poisoned()),
            Err(std::sync::TryLockError::WouldBlock) if start.elapsed() < HOLDER_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(Error::Busy(format!(
                    "the VM's holder has been using the VM for more than {} s; try again",
                    HOLDER_WAIT.as_secs()
                )))
            }
        }
    }
}

/// The holder's hooks the server uses (quiesce, thaw, memory state), shared
/// with the holder.
pub type SharedHooks = Arc<Mutex<dyn Hooks + Send>>;

/// A running control server; dropping it (or [`ControlServer::stop`])
/// stops it, ends its connections after the request each is running, and
/// removes the socket.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// The socket file's (device, inode): removed only while it is ours.
    id: (u64, u64),
    stop: Arc<AtomicBool>,
    /// The listening socket (a clone), shut down to wake the accept loop.
    listener: UnixListener,
    conns: Conns,
    thread: Option<JoinHandle<()>>,
}

/// The open connections: a clone of each stream (to shut it down) and its
/// thread (to wait for it).
type Conns = Arc<Mutex<HashMap<u64, (UnixStream, Option<JoinHandle<()>>)>>>;

impl ControlServer {
    /// The socket this server listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop serving (as dropping does).
    pub fn stop(self) {}
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; it sees the flag and ends (the shutdown
        // wakes it even when the socket file was removed by hand).
        let _ = crate::io::shutdown_listener(self.listener.as_raw_fd());
        drop(UnixStream::connect(&self.path));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // End every connection after the request it runs (a long step
        // is cancelled by its next progress line), and wait for it: no
        // thread of the server touches the VM once it is dropped.
        let threads: Vec<JoinHandle<()>> = match self.conns.lock() {
            Ok(mut conns) => conns
                .drain()
                .filter_map(|(_, (s, t))| {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    t
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for t in threads {
            let _ = t.join();
        }
        if let Ok(md) = std::fs::symlink_metadata(&self.path) {
            if (md.dev(), md.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Offer the control channel of the VM `vm` holds: listen on
/// `DIR/ckpt-control.sock` (replacing a stale socket a killed holder left)
/// and serve each connection on a thread of its own, running requests on
/// `vm` with `hooks` (the holder's quiesce, thaw and memory state; `None`:
/// none, as [`NoHooks`]). Refused with `Busy` while another server
/// answers on the socket.
///
/// Drop the server while not holding `vm`'s lock: it waits for the
/// request each connection runs.
pub fn serve(vm: Arc<Mutex<Vm>>, hooks: Option<SharedHooks>) -> Result<ControlServer> {
    serve_held(vm, hooks)
}

/// [`serve`] on any [`HeldVm`] (the C API's VM handle).
pub fn serve_held(vm: Arc<dyn HeldVm>, hooks: Option<SharedHooks>) -> Result<ControlServer> {
    let (mut dir, mut name) = (PathBuf::new(), String::new());
    vm.with_vm(&mut |v| {
        dir = v.dir().to_path_buf();
        name = v.data().config.name.clone();
        Ok(Value::Null)
    })?;
    let name: Arc<str> = name.into();
    let path = socket_path(&dir);
    let listener = bind(&path)?;
    let md = std::fs::symlink_metadata(&path).map_err(|e| Error::from(e).in_file(&path))?;
    let id = (md.dev(), md.ino());
    let stop = Arc::new(AtomicBool::new(false));
    let listener_clone = listener.try_clone().map_err(Error::from)?;
    let conns: Conns = Arc::default();
    let thread = {
        let (stop, conns) = (stop.clone(), conns.clone());
        std::thread::Builder::new()
            .name("ckpt-control".into())
            .spawn(move || accept_loop(listener, vm, name, hooks, stop, conns))
            .map_err(Error::from)?
    };
    Ok(ControlServer {
        path,
        id,
        stop,
        listener: listener_clone,
        conns,
        thread: Some(thread),
    })
}

/// Bind the socket at `path` with mode 0600, replacing a stale one.
fn bind(path: &Path) -> Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return Err(Error::AlreadyExists(format!(
                    "{}: is not a control socket; refusing to replace it",
                    path.display()
                )));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Busy(format!(
                    "{}: another process already serves this VM's control channel",
                    path.display()
                )));
            }
            // Stale: its server is gone.
            std::fs::remove_file(path).map_err(|e| Error::from(e).in_file(path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::from(e).in_file(path)),
    }
    let listener = UnixListener::bind(path).map_err(|e| Error::from(e).in_file(path))?;
    // The peer check below is what refuses other users; the mode keeps
    // them from connecting at all.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(Error::from(e).in_file(path));
    }
    Ok(listener)
}

fn accept_loop(
    listener: UnixListener,
    vm: Arc<dyn HeldVm>,
    name: Arc<str>,
    hooks: Option<SharedHooks>,
    stop: Arc<AtomicBool>,
    conns: Conns,
) {
    let next = AtomicU64::new(0);
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let n = next.fetch_add(1, Ordering::Relaxed);
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        // Registered before its thread starts, so that its end (which
        // removes it) always comes after.
        let Ok(mut registry) = conns.lock() else {
            continue;
        };
        let (vm, name, hooks, mine) = (vm.clone(), name.clone(), hooks.clone(), conns.clone());
        let spawned = std::thread::Builder::new()
            .name("ckpt-control-conn".into())
            .spawn(move || {
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    connection(stream, &*vm, &name, hooks.as_ref())
                }));
                if let Ok(mut c) = mine.lock() {
                    c.remove(&n);
                }
            });
        if let Ok(t) = spawned {
            registry.insert(n, (clone, Some(t)));
        }
        drop(registry);
    }
}

fn connection(stream: UnixStream, vm: &dyn HeldVm, name: &str, hooks: Option<&SharedHooks>) {
    let Ok(mut conn) = Conn::new(stream) else {
        return;
    };
    let me = crate::io::effective_uid();
    match crate::io::peer_uid(conn.writer.as_raw_fd()) {
        Ok(uid) if uid == me => {}
        Ok(uid) => {
            let e = Error::Remote {
                kind: ErrorKind::PermissionDenied,
                message: format!(
                    "permission denied: the VM's control channel serves only its owner (uid \
                     {me}); this request came from uid {uid}"
                ),
            };
            let _ = conn.send(&error_reply(&e));
            return;
        }
        Err(e) => {
            let _ = conn.send(&error_reply(&Error::from(e)));
            return;
        }
    }
    if conn
        .send(&json!({"ckpt_control": PROTOCOL_VERSION, "vm": name}))
        .is_err()
    {
        return;
    }
    loop {
        let request = match conn.recv() {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = conn.send(&error_reply(&e));
                return;
            }
        };
        let reply = match catch_unwind(AssertUnwindSafe(|| {
            vm.with_vm(&mut |v| run(&mut conn, v, hooks, &request))
        })) {
            Ok(Ok(result)) => json!({"ok": true, "result": result}),
            Ok(Err(e)) => error_reply(&e),
            Err(_) => error_reply(&Error::Remote {
                kind: ErrorKind::Io,
                message: "internal error (a bug in libckpt): the request panicked".into(),
            }),
        };
        if conn.send(&reply).is_err() {
            return;
        }
    }
}

/// The hooks of one request: progress to the client, quiesce and thaw to
/// the client (`client_hooks`) or the holder, memory state and resume to
/// the client (`client_memory`) or the holder.
struct ConnHooks<'a> {
    conn: &'a mut Conn,
    client_hooks: bool,
    /// The client saves the memory state (into a file made in `dir`) and
    /// resumes the guest.
    client_memory: bool,
    /// The VM folder, where the client's memory state is written.
    dir: PathBuf,
    holder: Option<&'a SharedHooks>,
}

impl ConnHooks<'_> {
    fn holder<T>(&self, f: impl FnOnce(&mut dyn Hooks) -> T) -> T {
        match self.holder.map(|h| h.lock()) {
            Some(Ok(mut h)) => f(&mut *h),
            _ => f(&mut NoHooks),
        }
    }

    /// Ask the client to run hook `which`; its answer.
    fn ask(&mut self, which: &str) -> std::result::Result<(), String> {
        self.ask_with(json!({"hook": which})).map(drop)
    }

    /// Send the hook line `line`; the client's answer when it is `ok`.
    fn ask_with(&mut self, line: Value) -> std::result::Result<Value, String> {
        self.conn
            .send(&line)
            .map_err(|e| format!("the client went away ({e})"))?;
        match self.conn.recv() {
            Ok(Some(v)) if v["ok"] == json!(true) => Ok(v),
            Ok(Some(v)) => Err(v["message"]
                .as_str()
                .unwrap_or("the client's hook failed")
                .to_string()),
            Ok(None) => Err("the client went away".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Have the client write the memory state into a fresh file of the VM
    /// folder (mode 0600), then stream it into `out`; the file is removed
    /// in every case.
    fn client_save_memory(&mut self, out: &mut dyn Write) -> std::io::Result<bool> {
        let path = self
            .dir
            .join(format!(".ckpt-memory-{}.tmp", uuid::Uuid::new_v4()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let r = self.client_fill(file, &path, out);
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Ask the client to fill `file` (at `path`); copy it into `out` when
    /// it says it saved.
    fn client_fill(
        &mut self,
        mut file: std::fs::File,
        path: &Path,
        out: &mut dyn Write,
    ) -> std::io::Result<bool> {
        let line = json!({"hook": "save_memory", "path": path.display().to_string()});
        let answer = self.ask_with(line).map_err(|reason| {
            std::io::Error::other(format!("the client's save-memory hook failed: {reason}"))
        })?;
        match answer["saved"].as_bool() {
            Some(true) => {
                std::io::copy(&mut file, out)?;
                Ok(true)
            }
            Some(false) => Ok(false),
            None => Err(std::io::Error::other(format!(
                "control channel: an unexpected answer to the save_memory hook ({answer})"
            ))),
        }
    }
}

impl Hooks for ConnHooks<'_> {
    fn quiesce(&mut self) -> std::result::Result<(), String> {
        if self.client_hooks {
            self.ask("quiesce")
        } else {
            self.holder(|h| h.quiesce())
        }
    }

    fn thaw(&mut self) {
        if self.client_hooks {
            let _ = self.ask("thaw");
        } else {
            self.holder(|h| h.thaw())
        }
    }

    fn save_memory(&mut self, out: &mut dyn Write) -> std::io::Result<bool> {
        if self.client_memory {
            self.client_save_memory(out)
        } else {
            self.holder(|h| h.save_memory(out))
        }
    }

    fn resume(&mut self) {
        if self.client_memory {
            let _ = self.ask("resume");
        } else {
            self.holder(|h| h.resume())
        }
    }

    fn progress(&mut self, done: u64, total: u64) -> bool {
        self.conn
            .send(&json!({"progress": {"done": done, "total": total}}))
            .is_ok()
    }
}

/// The arguments of a request.
struct Args<'a>(&'a Value);

impl Args<'_> {
    fn bad(&self, key: &str, what: &str) -> Error {
        Error::InvalidArgument(format!("control request: \"{key}\" must be {what}"))
    }

    fn str(&self, key: &str) -> Result<&str> {
        self.0[key]
            .as_str()
            .ok_or_else(|| self.bad(key, "a string"))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match &self.0[key] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            _ => Err(self.bad(key, "a string or null")),
        }
    }

    fn flag(&self, key: &str) -> Result<bool> {
        match &self.0[key] {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            _ => Err(self.bad(key, "true or false")),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match &self.0[key] {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "a non-negative integer")),
        }
    }

    fn abs_path(&self, key: &str) -> Result<Option<PathBuf>> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(p) if Path::new(p).is_absolute() => Ok(Some(PathBuf::from(p))),
            Some(_) => Err(self.bad(key, "an absolute path")),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v)
        .map_err(|e| Error::InvalidArgument(format!("control reply: not JSON ({e})")))
}

/// Run one request on the holder's VM; its result.
fn run(
    conn: &mut Conn,
    vm: &mut Vm,
    holder: Option<&SharedHooks>,
    request: &Value,
) -> Result<Value> {
    let op = request["op"]
        .as_str()
        .ok_or_else(|| Error::InvalidArgument("control request: \"op\" must be a string".into()))?;
    let args = Args(&request["args"]);
    let mut result = serde_json::Map::new();
    match op {
        "checkpoint.create" => {
            let memory = args.abs_path("memory_state")?;
            let mut hooks = ConnHooks {
                conn,
                client_hooks: args.flag("client_hooks")?,
                client_memory: args.flag("client_memory")?,
                dir: vm.dir().to_path_buf(),
                holder,
            };
            let c = vm.create_checkpoint(args.str("name")?, memory.as_deref(), &mut hooks)?;
            result.insert("checkpoint".into(), to_json(&c)?);
        }
        "checkpoint.apply" => {
            let mut hooks = ConnHooks {
                conn,
                client_hooks: args.flag("client_hooks")?,
                client_memory: args.flag("client_memory")?,
                dir: vm.dir().to_path_buf(),
                holder,
            };
            vm.apply(args.str("name")?, args.opt_str("save_current")?, &mut hooks)?;
        }
        "checkpoint.revert" => vm.revert()?,
        "checkpoint.delete" => {
            let mut hooks = ConnHooks {
                conn,
                client_hooks: false,
                client_memory: false,
                dir: vm.dir().to_path_buf(),
                holder,
            };
            vm.delete(args.str("name")?, args.flag("subtree")?, &mut hooks)?;
        }
        "checkpoint.rename" => vm.rename(args.str("name")?, args.str("new_name")?)?,
        "checkpoint.reference" => {
            let mut hooks = ConnHooks {
                conn,
                client_hooks: false,
                client_memory: false,
                dir: vm.dir().to_path_buf(),
                holder,
            };
            vm.convert_to_reference(args.str("name")?, &mut hooks)?;
        }
        "reference.delete" => vm.delete_reference(args.str("name")?)?,
        "checkpoint.list" => {
            result.insert("checkpoints".into(), checkpoints_json(vm.data())?);
        }
        "checkpoint.show" => {
            let c: Checkpoint = vm.find(args.str("name")?)?.clone();
            result.insert("checkpoint".into(), to_json(&c)?);
        }
        "checkpoint.export" => {
            let dest = args
                .abs_path("dest")?
                .ok_or_else(|| args.bad("dest", "an absolute path"))?;
            let mut hooks = ConnHooks {
                conn,
                client_hooks: false,
                client_memory: false,
                dir: vm.dir().to_path_buf(),
                holder,
            };
            let files = match args.opt_str("since")? {
                None => vm.export(args.opt_str("name")?, &dest, &mut hooks)?,
                Some(since) => {
                    let base = args
                        .abs_path("base")?
                        .ok_or_else(|| args.bad("base", "an absolute path"))?;
                    vm.export_incremental(args.opt_str("name")?, since, &dest, &base, &mut hooks)?
                }
            };
            result.insert("files".into(), to_json(&files)?);
        }
        "vm.compact" => {
            let index = args
                .opt_u64("index")?
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| args.bad("index", "a disk index"))?;
            let mode = match args.opt_str("mode")? {
                None => CompactMode::default(),
                Some(m) => {
                    CompactMode::parse(m).ok_or_else(|| args.bad("mode", "quick or full"))?
                }
            };
            let mut hooks = ConnHooks {
                conn,
                client_hooks: false,
                client_memory: false,
                dir: vm.dir().to_path_buf(),
                holder,
            };
            let mut progress = |done: u64, total: u64| hooks.progress(done, total);
            let r = vm.compact_disk(
                index,
                CompactOptions {
                    mode,
                    progress: Some(&mut progress),
                },
            )?;
            result.insert("report".into(), compact_report_json(&r));
        }
        "checkpoint.changes" => {
            let changes = vm.changes(args.str("since")?, args.opt_str("to")?)?;
            let v: Vec<Vec<[u64; 2]>> = changes
                .iter()
                .map(|d| d.iter().map(|r| [r.offset, r.length]).collect())
                .collect();
            result.insert("changes".into(), to_json(&v)?);
        }
        "vm.show" => {
            result.insert("show".into(), vm_json(vm.data()));
        }
        "vm.disk_resize" => {
            let index = args
                .opt_u64("index")?
                .ok_or_else(|| args.bad("index", "a disk index"))?;
            let size = args
                .opt_u64("size")?
                .ok_or_else(|| args.bad("size", "a size in bytes"))?;
            let allow_shrink = args.0["allow_shrink"].as_bool().unwrap_or(false);
            let index = usize::try_from(index).map_err(|_| args.bad("index", "a disk index"))?;
            let r = vm.resize_disk(
                index,
                size,
                crate::disk::resize::ResizeOptions { allow_shrink },
            )?;
            result.insert(
                "resize".into(),
                serde_json::json!({
                    "old_size": r.old_size,
                    "new_size": r.new_size,
                    "bat_relocated": r.bat_relocated,
                    "bytes_dropped": r.bytes_dropped,
                    "file_size_before": r.file_size_before,
                    "file_size_after": r.file_size_after,
                }),
            );
        }
        "vm.set" => {
            let memory = args.opt_u64("memory_mib")?;
            let cpus = match args.opt_u64("cpus")? {
                None => None,
                Some(n) => Some(u32::try_from(n).map_err(|_| args.bad("cpus", "a u32"))?),
            };
            let settings: Option<Settings> = match &args.0["settings"] {
                Value::Null => None,
                v => Some(
                    serde_json::from_value(v.clone())
                        .map_err(|e| args.bad("settings", &format!("checkpoint settings ({e})")))?,
                ),
            };
            let state = args.opt_str("state")?.map(VmState::parse).transpose()?;
            if memory.is_some() || cpus.is_some() {
                vm.set_resources(memory, cpus)?;
            }
            if let Some(s) = settings {
                vm.set_settings(s)?;
            }
            if let Some(s) = state {
                vm.set_state(s)?;
            }
        }
        _ => {
            return Err(Error::InvalidArgument(format!(
                "control request: unknown op {op:?}"
            )))
        }
    }
    result.insert("vm".into(), to_json(vm.data())?);
    result.insert("warnings".into(), to_json(&vm.take_warnings())?);
    Ok(Value::Object(result))
}
