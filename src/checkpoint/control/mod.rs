//! The control channel: the process that holds a [`Vm`](crate::checkpoint::Vm) open (a
//! hypervisor, the nbdkit plugin, `ckpt vm hold`) lets other processes of
//! the same user run checkpoint operations on it, carried out by the holder
//! on its own handle ([`serve`]); [`Client`] is the other end, used by the
//! `ckpt` tool.
//!
//! Depends on [`Vm`](crate::checkpoint::Vm) and the JSON views of this module's parent, on
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
//!    `{"progress": {"done": N, "total": M}}` (delete, export, compact), and hook
//!    lines `{"hook": "quiesce"}` / `{"hook": "thaw"}` when the request
//!    asked for the client's hooks (`client_hooks`), `{"hook":
//!    "save_memory", "path": P}` / `{"hook": "resume"}` when it asked to
//!    save the memory state itself (`client_memory`); the client answers
//!    each hook line with `{"ok": true}` or `{"ok": false, "message":
//!    REASON}`, a `save_memory` line with `{"ok": true, "saved": BOOL}`
//!    (true: it wrote the memory state into P; false: there is none).
//!    Then the reply:
//!    `{"ok": true, "result": {…}}` or `{"ok": false, "kind": KIND,
//!    "message": TEXT}`, where KIND is an [`ErrorKind`](crate::ErrorKind) name (`Busy`,
//!    `NotFound`, `InvalidArgument`, …, see [`kind_name`]) and TEXT the
//!    error as the library displays it. A client that goes away during a
//!    long step cancels it (the next progress line cannot be written).
//!
//! Every `result` holds `"vm"`: the VM file as the holder has it after the
//! request (the [`VmFile`](crate::checkpoint::VmFile) JSON, paths absolute), and `"warnings"`: the
//! holder's [`Vm::take_warnings`](crate::checkpoint::Vm::take_warnings). The operations and what else they give:
//!
//! | op | args | result adds |
//! |---|---|---|
//! | `checkpoint.create` | `name`, `memory_state` (absolute path or null), `client_hooks` (bool), `client_memory` (bool) | `checkpoint` |
//! | `checkpoint.apply` | `name`, `save_current` (name or null), `client_hooks`, `client_memory` | |
//! | `checkpoint.revert` | | |
//! | `checkpoint.delete` | `name`, `subtree` (bool) | |
//! | `checkpoint.rename` | `name`, `new_name` | |
//! | `checkpoint.list` | | `checkpoints` (as `ckpt checkpoint list --json`) |
//! | `checkpoint.show` | `name` | `checkpoint` |
//! | `checkpoint.export` | `name` (null: the current state), `dest` (absolute); for an incremental (`Vm::export_incremental`) also `since` (REF) and `base` (absolute) | `files` |
//! | `checkpoint.changes` | `since`, `to` (null: the current state) | `changes`: per disk, `[offset, length]` pairs |
//! | `vm.show` | | `show` (as `ckpt vm show --json`, without `strays`) |
//! | `vm.compact` | `index` (a current disk), `mode` (`quick` or `full`; default quick); progress lines | `report` (as `ckpt vm compact --json`) |
//! | `vm.set` | `memory_mib`, `cpus`, `settings` (a whole [`Settings`](crate::checkpoint::Settings)), `state` — each optional, applied in this order | |
//!
//! Quiesce and thaw of a production checkpoint run the client's hooks when
//! it sets `client_hooks`, else the holder's (given to [`serve`]); memory
//! state comes from `memory_state`, or from the client when it sets
//! `client_memory`, else from the holder's
//! [`Hooks::save_memory`](crate::checkpoint::Hooks::save_memory) (and
//! resume likewise). For the client, the holder creates P, a fresh empty
//! file (mode 0600) in the VM folder, sends its absolute path, reads it
//! into the checkpoint's memory state once the client says `saved`, and
//! removes it in every case; the client writes it with
//! [`Hooks::save_memory_to`](crate::checkpoint::Hooks::save_memory_to) (the
//! `ckpt` tool runs `--save-memory-cmd` with `CKPT_MEMORY_STATE=P`). Requests from all connections run one at a
//! time, each holding the `Vm`'s mutex for its length, so they never
//! interleave with each other or with the holder's own calls.
//!
//! Files: `wire.rs` (the socket's place, the line format, errors on the
//! wire), `server.rs` ([`serve`], [`HeldVm`]), `client.rs` ([`Client`]).
mod client;
mod server;
mod wire;

pub use client::{vm_file_of, Client};
pub use server::{serve, serve_held, wait_for, ControlServer, HeldVm, SharedHooks, HOLDER_WAIT};
pub use wire::{error_of, kind_name, kind_of, socket_path, PROTOCOL_VERSION, SOCKET_FILE};
