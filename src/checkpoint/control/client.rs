//! The other end: [`Client`], as the `ckpt` tool uses it.

use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::{json, Value};

use super::wire::{reply_error, socket_path, Conn, PROTOCOL_VERSION};
use crate::checkpoint::{Hooks, NoHooks, VmFile};
use crate::{Error, ErrorKind, Result};

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
    /// to `hooks.progress`, hook lines to `hooks.quiesce` / `hooks.thaw` /
    /// `hooks.save_memory_to` / `hooks.resume`.
    pub fn call(&mut self, op: &str, args: Value, hooks: &mut dyn Hooks) -> Result<Value> {
        let conn = &mut self.conn;
        conn.send(&json!({"op": op, "args": args}))
            .map_err(|e| gone(e.into()))?;
        loop {
            let v = conn.recv().map_err(gone)?.ok_or_else(holder_gone)?;
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
                    "save_memory" => save_memory_answer(&v, hooks),
                    "resume" => {
                        hooks.resume();
                        json!({"ok": true})
                    }
                    other => json!({"ok": false, "message": format!("unknown hook {other:?}")}),
                };
                conn.send(&answer).map_err(|e| gone(e.into()))?;
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

/// The answer to a `save_memory` hook line: `hooks` write the memory state
/// into the file the holder made (its `path`).
fn save_memory_answer(line: &Value, hooks: &mut dyn Hooks) -> Value {
    let Some(path) = line["path"].as_str().filter(|p| Path::new(p).is_absolute()) else {
        return json!({"ok": false, "message": "the save_memory hook line has no absolute path"});
    };
    match hooks.save_memory_to(Path::new(path)) {
        Ok(saved) => json!({"ok": true, "saved": saved}),
        Err(e) => json!({"ok": false, "message": e.to_string()}),
    }
}

/// The error of a request whose holder went away before it replied (it
/// stopped or was killed): `Busy`, saying that the request may or may not
/// have been carried out.
fn holder_gone() -> Error {
    Error::Busy(
        "the VM's holder closed its control channel during the request (it stopped or was \
         killed): the request may or may not have been carried out; an operation it left half \
         done is finished or undone when the VM is next opened"
            .into(),
    )
}

/// `e`, or [`holder_gone`] when it is the connection breaking (the holder
/// died while a request was sent or answered).
fn gone(e: Error) -> Error {
    use std::io::ErrorKind as K;
    match &e {
        Error::Io(io)
            if matches!(
                io.kind(),
                K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof
            ) =>
        {
            holder_gone()
        }
        _ => e,
    }
}

/// The VM file in a result's `"vm"`.
pub fn vm_file_of(result: &Value) -> Result<VmFile> {
    serde_json::from_value(result["vm"].clone())
        .map_err(|e| Error::InvalidArgument(format!("control reply: not a VM file ({e})")))
}
