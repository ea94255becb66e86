//! The control channel: the process that holds a [`Vm`] open (a
//! hypervisor, the nbdkit plugin, `ckpt vm hold`) lets other processes of
//! the same user run checkpoint operations on it, carried out by the holder
//! on its own handle ([`serve`]); [`Client`] is the other end, used by the
//! `ckpt` tool.
//!
//! Depends on [`Vm`] and the JSON views of this module's parent, on
//! [`crate::io`] for the peer's credentials, and on nothing above it.
//!
//! # The socket
//!
//! A Unix stream socket `DIR/ckpt-control.sock` ([`SOCKET_FILE`]) in the VM
//! folder, created with mode 0600 while the server runs and removed when it
//! stops. Every connection's peer user id is read with `SO_PEERCRED`; a
//! peer whose uid is not the holder's effective uid gets one error reply
//! (kind `PermissionDenied`) and is disconnected, whatever the socket's
//! mode. A socket file left by a holder that was killed accepts no
//! connection: [`serve`] replaces it and [`Client::connect`] reports no
//! channel. A socket that does accept is a live holder: [`serve`] refuses
//! with `Busy` (the VM lock refuses a second holder anyway).
//!
//! # The protocol
//!
//! Newline-delimited JSON, one object per line, UTF-8.
//!
//! 1. On connect the server sends a greeting `{"ckpt_control": 1, "vm":
//!    NAME}` — or, to a refused peer, an error reply and closes.
//! 2. The client sends requests, one at a time: `{"op": OP, "args": {…}}`.
//! 3. For each, the server sends zero or more progress lines
//!    `{"progress": {"done": N, "total": M}}` (delete, export), and hook
//!    lines `{"hook": "quiesce"}` / `{"hook": "thaw"}` when the request
//!    asked for the client's hooks; the client answers each hook line with
//!    `{"ok": true}` or `{"ok": false, "message": REASON}`. Then the reply:
//!    `{"ok": true, "result": {…}}` or `{"ok": false, "kind": KIND,
//!    "message": TEXT}`, where KIND is an [`ErrorKind`] name (`Busy`,
//!    `NotFound`, `InvalidArgument`, …, see [`kind_name`]) and TEXT the
//!    error as the library displays it. A client that goes away during a
//!    long step cancels it (the next progress line cannot be written).
//!
//! Every `result` holds `"vm"`: the VM file as the holder has it after the
//! request (the [`VmFile`] JSON, paths absolute), and `"warnings"`: the
//! holder's [`Vm::take_warnings`]. The operations and what else they give:
//!
//! | op | args | result adds |
//! |---|---|---|
//! | `checkpoint.create` | `name`, `memory_state` (absolute path or null), `client_hooks` (bool) | `checkpoint` |
//! | `checkpoint.apply` | `name`, `save_current` (name or null), `client_hooks` | |
//! | `checkpoint.revert` | | |
//! | `checkpoint.delete` | `name`, `subtree` (bool) | |
//! | `checkpoint.rename` | `name`, `new_name` | |
//! | `checkpoint.list` | | `checkpoints` (as `ckpt checkpoint list --json`) |
//! | `checkpoint.show` | `name` | `checkpoint` |
//! | `checkpoint.export` | `name` (null: the current state), `dest` (absolute) | `files` |
//! | `vm.show` | | `show` (as `ckpt vm show --json`, without `strays`) |
//! | `vm.set` | `memory_mib`, `cpus`, `settings` (a whole [`Settings`]), `state` — each optional, applied in this order | |
//!
//! Quiesce and thaw of a production checkpoint run the client's hooks when
//! it sets `client_hooks`, else the holder's (given to [`serve`]); memory
//! state comes from `memory_state` or else the holder's
//! [`Hooks::save_memory`]. Requests from all connections run one at a
//! time, each holding the `Vm`'s mutex for its length, so they never
//! interleave with each other or with the holder's own calls.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use super::json::{checkpoints_json, vm_json};
use super::{Checkpoint, Hooks, NoHooks, Settings, Vm, VmFile, VmState};
use crate::{Error, ErrorKind, Result};

/// The control socket's name in the VM folder.
pub const SOCKET_FILE: &str = "ckpt-control.sock";

/// The protocol's version, in the greeting.
pub const PROTOCOL_VERSION: u64 = 1;

/// The longest line either side accepts (a request, a reply).
const MAX_LINE: u64 = 16 << 20;

/// The control socket of the VM folder `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

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

/// The name of an [`ErrorKind`] in the protocol (its Rust name).
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Io => "Io",
        ErrorKind::NotFound => "NotFound",
        ErrorKind::Corrupt => "Corrupt",
        ErrorKind::Unsupported => "Unsupported",
        ErrorKind::InvalidArgument => "InvalidArgument",
        ErrorKind::OutOfRange => "OutOfRange",
        ErrorKind::ReadOnly => "ReadOnly",
        ErrorKind::Cancelled => "Cancelled",
        ErrorKind::ParentMismatch => "ParentMismatch",
        ErrorKind::Busy => "Busy",
        ErrorKind::AlreadyExists => "AlreadyExists",
        ErrorKind::PermissionDenied => "PermissionDenied",
        ErrorKind::NoSpace => "NoSpace",
    }
}

/// The [`ErrorKind`] a protocol name stands for.
pub fn kind_of(name: &str) -> Option<ErrorKind> {
    const ALL: [ErrorKind; 13] = [
        ErrorKind::Io,
        ErrorKind::NotFound,
        ErrorKind::Corrupt,
        ErrorKind::Unsupported,
        ErrorKind::InvalidArgument,
        ErrorKind::OutOfRange,
        ErrorKind::ReadOnly,
        ErrorKind::Cancelled,
        ErrorKind::ParentMismatch,
        ErrorKind::Busy,
        ErrorKind::AlreadyExists,
        ErrorKind::PermissionDenied,
        ErrorKind::NoSpace,
    ];
    ALL.into_iter().find(|k| kind_name(*k) == name)
}

/// The error a reply describes: the library's own variant when the text
/// is one it displays (so that it reads and matches the same), else
/// [`Error::Remote`] with the holder's text and kind.
pub fn error_of(kind: ErrorKind, message: &str) -> Error {
    let strip = |prefix: &str| message.strip_prefix(prefix).map(str::to_string);
    let plain = match kind {
        ErrorKind::Busy => strip("busy: ").map(Error::Busy),
        ErrorKind::NotFound => strip("not found: ").map(Error::NotFound),
        ErrorKind::AlreadyExists => strip("already exists: ").map(Error::AlreadyExists),
        ErrorKind::InvalidArgument => strip("invalid argument: ").map(Error::InvalidArgument),
        ErrorKind::Unsupported => strip("unsupported: ").map(Error::Unsupported),
        ErrorKind::NoSpace => strip("not enough space: ").map(Error::NoSpace),
        ErrorKind::Corrupt => strip("damaged VM file: ").map(Error::BadVmFile),
        ErrorKind::Cancelled if message == Error::Cancelled.to_string() => Some(Error::Cancelled),
        ErrorKind::ReadOnly if message == Error::ReadOnly.to_string() => Some(Error::ReadOnly),
        _ => None,
    };
    plain.unwrap_or_else(|| Error::Remote {
        kind,
        message: message.to_string(),
    })
}

/// One error reply line.
fn error_reply(e: &Error) -> Value {
    json!({"ok": false, "kind": kind_name(e.kind()), "message": e.to_string()})
}

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

fn poisoned() -> Error {
    Error::Busy(
        "the VM's holder failed during an earlier operation (a panic); close and reopen the VM"
            .into(),
    )
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

/// One side of a connection: lines in, lines out.
#[derive(Debug)]
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn new(stream: UnixStream) -> Result<Conn> {
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn send(&mut self, v: &Value) -> std::io::Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        self.writer.flush()
    }

    /// The next line as JSON; `Ok(None)` at the end of the stream.
    fn recv(&mut self) -> Result<Option<Value>> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_line(&mut line)
            .map_err(Error::from)?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with('\n') && n as u64 >= MAX_LINE {
            return Err(Error::InvalidArgument(format!(
                "control channel: a line longer than {MAX_LINE} bytes"
            )));
        }
        serde_json::from_str(line.trim_end())
            .map(Some)
            .map_err(|e| Error::InvalidArgument(format!("control channel: not JSON ({e})")))
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
/// the client or the holder, memory state from the holder.
struct ConnHooks<'a> {
    conn: &'a mut Conn,
    client_hooks: bool,
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
        self.conn
            .send(&json!({"hook": which}))
            .map_err(|e| format!("the client went away ({e})"))?;
        match self.conn.recv() {
            Ok(Some(v)) if v["ok"] == json!(true) => Ok(()),
            Ok(Some(v)) => Err(v["message"]
                .as_str()
                .unwrap_or("the client's hook failed")
                .to_string()),
            Ok(None) => Err("the client went away".into()),
            Err(e) => Err(e.to_string()),
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
        self.holder(|h| h.save_memory(out))
    }

    fn resume(&mut self) {
        self.holder(|h| h.resume())
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
                holder,
            };
            let c = vm.create_checkpoint(args.str("name")?, memory.as_deref(), &mut hooks)?;
            result.insert("checkpoint".into(), to_json(&c)?);
        }
        "checkpoint.apply" => {
            let mut hooks = ConnHooks {
                conn,
                client_hooks: args.flag("client_hooks")?,
                holder,
            };
            vm.apply(args.str("name")?, args.opt_str("save_current")?, &mut hooks)?;
        }
        "checkpoint.revert" => vm.revert()?,
        "checkpoint.delete" => {
            let mut hooks = ConnHooks {
                conn,
                client_hooks: false,
                holder,
            };
            vm.delete(args.str("name")?, args.flag("subtree")?, &mut hooks)?;
        }
        "checkpoint.rename" => vm.rename(args.str("name")?, args.str("new_name")?)?,
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
                holder,
            };
            let files = vm.export(args.opt_str("name")?, &dest, &mut hooks)?;
            result.insert("files".into(), to_json(&files)?);
        }
        "vm.show" => {
            result.insert("show".into(), vm_json(vm.data()));
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

/// A connection to the control channel of a VM's holder.
#[derive(Debug)]
pub struct Client {
    conn: Conn,
    /// The VM's name, from the greeting.
    vm_name: String,
}

impl Client {
    /// Connect to the control channel of the VM folder `dir`. `Ok(None)`
    /// when the folder offers none: no socket, or a stale one (its holder
    /// is gone). An error when the holder refuses this user, or when the
    /// socket cannot be reached (another user's socket).
    pub fn connect(dir: &Path) -> Result<Option<Client>> {
        let path = socket_path(dir);
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::Remote {
                    kind: ErrorKind::PermissionDenied,
                    message: format!(
                        "permission denied: {}: the VM is held by a process whose control \
                         channel this user may not use ({e})",
                        path.display()
                    ),
                })
            }
            Err(e) => return Err(Error::from(e).in_file(&path)),
        };
        let mut conn = Conn::new(stream)?;
        let hello = conn.recv()?.ok_or_else(|| {
            Error::Busy(format!(
                "{}: the VM's holder closed its control channel",
                path.display()
            ))
        })?;
        if hello["ok"] == json!(false) {
            return Err(reply_error(&hello));
        }
        if hello["ckpt_control"].as_u64() != Some(PROTOCOL_VERSION) {
            return Err(Error::Unsupported(format!(
                "{}: the VM's holder speaks another control protocol ({hello})",
                path.display()
            )));
        }
        Ok(Some(Client {
            vm_name: hello["vm"].as_str().unwrap_or_default().to_string(),
            conn,
        }))
    }

    /// The VM's name, as the holder greeted.
    pub fn vm_name(&self) -> &str {
        &self.vm_name
    }

    /// Run `op` with `args` on the holder; its result. Progress lines go
    /// to `hooks.progress`, hook lines to `hooks.quiesce` / `hooks.thaw`.
    pub fn call(&mut self, op: &str, args: Value, hooks: &mut dyn Hooks) -> Result<Value> {
        let conn = &mut self.conn;
        conn.send(&json!({"op": op, "args": args}))?;
        loop {
            let v = conn.recv()?.ok_or_else(|| {
                Error::Busy("the VM's holder closed its control channel during the request".into())
            })?;
            if let Some(p) = v.get("progress") {
                let (done, total) = (p["done"].as_u64(), p["total"].as_u64());
                if let (Some(done), Some(total)) = (done, total) {
                    hooks.progress(done, total);
                }
                continue;
            }
            if let Some(h) = v.get("hook").and_then(Value::as_str) {
                let answer = match h {
                    "quiesce" => match hooks.quiesce() {
                        Ok(()) => json!({"ok": true}),
                        Err(reason) => json!({"ok": false, "message": reason}),
                    },
                    "thaw" => {
                        hooks.thaw();
                        json!({"ok": true})
                    }
                    other => json!({"ok": false, "message": format!("unknown hook {other:?}")}),
                };
                conn.send(&answer)?;
                continue;
            }
            return match v["ok"].as_bool() {
                Some(true) => Ok(v["result"].clone()),
                Some(false) => Err(reply_error(&v)),
                None => Err(Error::InvalidArgument(format!(
                    "control channel: an unexpected reply ({v})"
                ))),
            };
        }
    }

    /// The VM file as the holder has it (`vm.show`).
    pub fn vm_file(&mut self) -> Result<VmFile> {
        let r = self.call("vm.show", json!({}), &mut NoHooks)?;
        vm_file_of(&r)
    }
}

/// The VM file in a result's `"vm"`.
pub fn vm_file_of(result: &Value) -> Result<VmFile> {
    serde_json::from_value(result["vm"].clone())
        .map_err(|e| Error::InvalidArgument(format!("control reply: not a VM file ({e})")))
}

/// The error an error reply describes.
fn reply_error(v: &Value) -> Error {
    let message = v["message"]
        .as_str()
        .unwrap_or("the holder refused the request");
    let kind = v["kind"]
        .as_str()
        .and_then(kind_of)
        .unwrap_or(ErrorKind::Io);
    error_of(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in [
            ErrorKind::Io,
            ErrorKind::Busy,
            ErrorKind::NotFound,
            ErrorKind::PermissionDenied,
            ErrorKind::NoSpace,
        ] {
            assert_eq!(kind_of(kind_name(k)), Some(k));
        }
        assert_eq!(kind_of("Nope"), None);
    }

    #[test]
    fn errors_read_the_same() {
        for e in [
            Error::Busy("x is held".into()),
            Error::NotFound("no checkpoint is called \"a\"".into()),
            Error::InvalidArgument("bad".into()),
            Error::AlreadyExists("taken".into()),
            Error::Cancelled,
            Error::Io(std::io::Error::other("disk gone")).in_file("/tmp/a.vhdx"),
        ] {
            let back = error_of(e.kind(), &e.to_string());
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(back.kind(), e.kind());
        }
        assert!(matches!(
            error_of(ErrorKind::Busy, "busy: held"),
            Error::Busy(m) if m == "held"
        ));
    }
}
