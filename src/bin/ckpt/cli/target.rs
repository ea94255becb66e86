//! The VM a command changes: opened here (`Local`, the VM's lock taken),
//! or held by another process that offers a control channel (`Remote`:
//! each operation is a request to the holder, through
//! `ckpt::checkpoint::control::Client`). Both answer the same calls, so
//! the commands print the same output either way.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use ckpt::checkpoint::control::{vm_file_of, Client};
use ckpt::checkpoint::{Checkpoint, Hooks, NoHooks, Settings, Vm, VmFile, VmState};
use ckpt::disk::merge::Range;
use ckpt::disk::path::absolute;
use ckpt::{CompactMode, CompactOptions, CompactReport, Result};

/// A VM opened for a change.
pub(super) enum Target {
    /// Opened by this process.
    Local(Vm),
    /// Held by another process, reached through its control channel.
    Remote(Remote),
}

/// A VM another process holds.
pub(super) struct Remote {
    client: Client,
    dir: PathBuf,
    data: VmFile,
    warnings: Vec<String>,
}

/// The control channel of `dir` when its holder answers: `Ok(None)` when
/// the folder offers none (no socket, or a stale one).
pub(super) fn connect(dir: &Path) -> Result<Option<Client>> {
    Client::connect(dir)
}

/// Open the VM of `dir` for a change: through the holder's control channel
/// when one answers, else here. A channel that refuses this user is
/// reported unless the VM can be opened here (its holder is gone).
pub(super) fn open(dir: &Path) -> Result<Target> {
    match connect(dir) {
        Ok(Some(mut client)) => {
            let data = client.vm_file()?;
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
            Ok(Target::Remote(Remote {
                client,
                dir,
                data,
                warnings: Vec::new(),
            }))
        }
        Ok(None) => Vm::open(dir).map(Target::Local),
        Err(refused) => Vm::open(dir).map(Target::Local).map_err(|_| refused),
    }
}

/// The VM file of `dir` for showing: the holder's when a control channel
/// answers, else read from the folder (which needs no lock).
pub(super) fn load(dir: &Path) -> Result<VmFile> {
    match connect(dir) {
        Ok(Some(mut client)) => client.vm_file(),
        Ok(None) | Err(_) => Vm::load(dir),
    }
}

impl Remote {
    /// Run `op` on the holder; keep the VM file and warnings it returns.
    fn call(&mut self, op: &str, args: Value, hooks: &mut dyn Hooks) -> Result<Value> {
        let r = self.client.call(op, args, hooks)?;
        self.data = vm_file_of(&r)?;
        if let Some(w) = r["warnings"].as_array() {
            self.warnings
                .extend(w.iter().filter_map(Value::as_str).map(str::to_string));
        }
        Ok(r)
    }

    fn checkpoint(r: &Value) -> Result<Checkpoint> {
        serde_json::from_value(r["checkpoint"].clone()).map_err(|e| {
            ckpt::Error::InvalidArgument(format!("control reply: not a checkpoint ({e})"))
        })
    }
}

/// `p` made absolute the way the library makes a path it is given
/// absolute (the holder's working folder is not ours).
fn abs(p: &Path) -> Result<String> {
    Ok(absolute(p)?.display().to_string())
}

/// The `files` of an export's reply, made under `abs_dest` by the
/// holder, named under `dest` as the user gave it.
fn files_under(v: &Value, abs_dest: &Path, dest: &Path) -> Result<Vec<PathBuf>> {
    let files: Vec<PathBuf> = serde_json::from_value(v["files"].clone())
        .map_err(|e| ckpt::Error::InvalidArgument(format!("control reply: not files ({e})")))?;
    Ok(files
        .into_iter()
        .map(|f| match f.strip_prefix(abs_dest) {
            Ok(rest) => dest.join(rest),
            Err(_) => f,
        })
        .collect())
}

impl Target {
    /// The VM folder.
    pub(super) fn dir(&self) -> &Path {
        match self {
            Target::Local(vm) => vm.dir(),
            Target::Remote(r) => &r.dir,
        }
    }

    /// The VM file (after the last operation).
    pub(super) fn data(&self) -> &VmFile {
        match self {
            Target::Local(vm) => vm.data(),
            Target::Remote(r) => &r.data,
        }
    }

    /// The warnings of the operations so far, emptied by this call.
    pub(super) fn take_warnings(&mut self) -> Vec<String> {
        match self {
            Target::Local(vm) => vm.take_warnings(),
            Target::Remote(r) => std::mem::take(&mut r.warnings),
        }
    }

    /// [`Vm::find`].
    pub(super) fn find(&mut self, name: &str) -> Result<Checkpoint> {
        match self {
            Target::Local(vm) => vm.find(name).cloned(),
            Target::Remote(r) => {
                let v = r.call("checkpoint.show", json!({"name": name}), &mut NoHooks)?;
                Remote::checkpoint(&v)
            }
        }
    }

    /// [`Vm::create_checkpoint`]; `client_hooks`: quiesce and thaw with
    /// `hooks` also when the VM is held elsewhere (else the holder's);
    /// `client_memory`: save the memory state and resume with `hooks` so
    /// too.
    pub(super) fn create_checkpoint(
        &mut self,
        name: &str,
        memory: Option<&Path>,
        hooks: &mut dyn Hooks,
        client_hooks: bool,
        client_memory: bool,
    ) -> Result<Checkpoint> {
        match self {
            Target::Local(vm) => vm.create_checkpoint(name, memory, hooks),
            Target::Remote(r) => {
                let memory = memory.map(abs).transpose()?;
                let args = json!({"name": name, "memory_state": memory,
                    "client_hooks": client_hooks, "client_memory": client_memory});
                let v = r.call("checkpoint.create", args, hooks)?;
                Remote::checkpoint(&v)
            }
        }
    }

    /// [`Vm::apply`]; `client_hooks` and `client_memory` as for
    /// [`Target::create_checkpoint`].
    pub(super) fn apply(
        &mut self,
        name: &str,
        save_current: Option<&str>,
        hooks: &mut dyn Hooks,
        client_hooks: bool,
        client_memory: bool,
    ) -> Result<()> {
        match self {
            Target::Local(vm) => vm.apply(name, save_current, hooks),
            Target::Remote(r) => {
                let args = json!({"name": name, "save_current": save_current,
                    "client_hooks": client_hooks, "client_memory": client_memory});
                r.call("checkpoint.apply", args, hooks).map(drop)
            }
        }
    }

    /// [`Vm::revert`].
    pub(super) fn revert(&mut self) -> Result<()> {
        match self {
            Target::Local(vm) => vm.revert(),
            Target::Remote(r) => r
                .call("checkpoint.revert", json!({}), &mut NoHooks)
                .map(drop),
        }
    }

    /// [`Vm::delete`] (progress goes to `hooks`).
    pub(super) fn delete(
        &mut self,
        name: &str,
        subtree: bool,
        hooks: &mut dyn Hooks,
    ) -> Result<()> {
        match self {
            Target::Local(vm) => vm.delete(name, subtree, hooks),
            Target::Remote(r) => r
                .call(
                    "checkpoint.delete",
                    json!({"name": name, "subtree": subtree}),
                    hooks,
                )
                .map(drop),
        }
    }

    /// [`Vm::rename`].
    /// [`Vm::convert_to_reference`].
    pub(super) fn convert_to_reference(&mut self, name: &str, hooks: &mut dyn Hooks) -> Result<()> {
        match self {
            Target::Local(vm) => vm.convert_to_reference(name, hooks),
            Target::Remote(r) => r
                .call("checkpoint.reference", json!({ "name": name }), hooks)
                .map(drop),
        }
    }

    /// [`Vm::delete_reference`].
    pub(super) fn delete_reference(&mut self, name: &str) -> Result<()> {
        match self {
            Target::Local(vm) => vm.delete_reference(name),
            Target::Remote(r) => r
                .call("reference.delete", json!({ "name": name }), &mut NoHooks)
                .map(drop),
        }
    }

    pub(super) fn rename(&mut self, name: &str, new_name: &str) -> Result<()> {
        match self {
            Target::Local(vm) => vm.rename(name, new_name),
            Target::Remote(r) => r
                .call(
                    "checkpoint.rename",
                    json!({"name": name, "new_name": new_name}),
                    &mut NoHooks,
                )
                .map(drop),
        }
    }

    /// [`Vm::export`]: the files made, named under `dest` as given.
    pub(super) fn export(
        &mut self,
        name: Option<&str>,
        dest: &Path,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<PathBuf>> {
        match self {
            Target::Local(vm) => vm.export(name, dest, hooks),
            Target::Remote(r) => {
                let abs_dest = absolute(dest)?;
                let args = json!({"name": name, "dest": abs_dest.display().to_string()});
                let v = r.call("checkpoint.export", args, hooks)?;
                files_under(&v, &abs_dest, dest)
            }
        }
    }

    /// [`Vm::export_incremental`]: the files made, named under `dest` as
    /// given.
    pub(super) fn export_incremental(
        &mut self,
        name: Option<&str>,
        since: &str,
        dest: &Path,
        base: &Path,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<PathBuf>> {
        match self {
            Target::Local(vm) => vm.export_incremental(name, since, dest, base, hooks),
            Target::Remote(r) => {
                let abs_dest = absolute(dest)?;
                let args = json!({"name": name, "dest": abs_dest.display().to_string(),
                    "since": since, "base": abs(base)?});
                let v = r.call("checkpoint.export", args, hooks)?;
                files_under(&v, &abs_dest, dest)
            }
        }
    }

    /// [`Vm::changes`].
    pub(super) fn changes(&mut self, since: &str, to: Option<&str>) -> Result<Vec<Vec<Range>>> {
        match self {
            Target::Local(vm) => vm.changes(since, to),
            Target::Remote(r) => {
                let v = r.call(
                    "checkpoint.changes",
                    json!({"since": since, "to": to}),
                    &mut NoHooks,
                )?;
                let pairs: Vec<Vec<[u64; 2]>> = serde_json::from_value(v["changes"].clone())
                    .map_err(|e| {
                        ckpt::Error::InvalidArgument(format!("control reply: not changes ({e})"))
                    })?;
                Ok(pairs
                    .into_iter()
                    .map(|d| {
                        d.into_iter()
                            .map(|[offset, length]| Range { offset, length })
                            .collect()
                    })
                    .collect())
            }
        }
    }

    /// [`Vm::set_resources`].
    pub(super) fn set_resources(
        &mut self,
        memory_mib: Option<u64>,
        cpus: Option<u32>,
    ) -> Result<()> {
        match self {
            Target::Local(vm) => vm.set_resources(memory_mib, cpus),
            Target::Remote(r) => r
                .call(
                    "vm.set",
                    json!({"memory_mib": memory_mib, "cpus": cpus}),
                    &mut NoHooks,
                )
                .map(drop),
        }
    }

    /// [`Vm::set_settings`].
    pub(super) fn set_settings(&mut self, mut s: Settings) -> Result<()> {
        match self {
            Target::Local(vm) => vm.set_settings(s),
            Target::Remote(r) => {
                if let Some(l) = &s.checkpoint_location {
                    s.checkpoint_location = Some(absolute(l)?);
                }
                let settings = serde_json::to_value(&s).map_err(|e| {
                    ckpt::Error::InvalidArgument(format!("checkpoint settings: {e}"))
                })?;
                r.call("vm.set", json!({"settings": settings}), &mut NoHooks)
                    .map(drop)
            }
        }
    }

    /// [`Vm::resize_disk`].
    pub(super) fn resize_disk(
        &mut self,
        index: usize,
        size: u64,
        opts: ckpt::ResizeOptions,
    ) -> Result<ckpt::ResizeReport> {
        match self {
            Target::Local(vm) => vm.resize_disk(index, size, opts),
            Target::Remote(r) => {
                let v = r.call(
                    "vm.disk_resize",
                    json!({"index": index, "size": size, "allow_shrink": opts.allow_shrink}),
                    &mut NoHooks,
                )?;
                let x = &v["resize"];
                let n = |k: &str| {
                    x[k].as_u64().ok_or_else(|| {
                        ckpt::Error::InvalidArgument(format!("control reply: no {k} in {x}"))
                    })
                };
                Ok(ckpt::ResizeReport {
                    old_size: n("old_size")?,
                    new_size: n("new_size")?,
                    bat_relocated: x["bat_relocated"].as_bool().unwrap_or(false),
                    bytes_dropped: n("bytes_dropped")?,
                    file_size_before: n("file_size_before")?,
                    file_size_after: n("file_size_after")?,
                })
            }
        }
    }

    /// [`Vm::set_state`].
    pub(super) fn set_state(&mut self, state: VmState) -> Result<()> {
        match self {
            Target::Local(vm) => vm.set_state(state),
            Target::Remote(r) => r
                .call("vm.set", json!({"state": state.as_str()}), &mut NoHooks)
                .map(drop),
        }
    }

    /// [`Vm::compact_disk`] of current disk `index` (progress goes to
    /// `hooks`): on the holder's live handle when another process holds
    /// the VM attached, else on the file.
    pub(super) fn compact_disk(
        &mut self,
        index: usize,
        mode: CompactMode,
        hooks: &mut dyn Hooks,
    ) -> Result<CompactReport> {
        match self {
            Target::Local(vm) => {
                let mut progress = |done: u64, total: u64| hooks.progress(done, total);
                vm.compact_disk(
                    index,
                    CompactOptions {
                        mode,
                        progress: Some(&mut progress),
                    },
                )
            }
            Target::Remote(r) => {
                let v = r.call(
                    "vm.compact",
                    json!({"index": index, "mode": mode.as_str()}),
                    hooks,
                )?;
                ckpt::checkpoint::json::compact_report_of(&v["report"])
            }
        }
    }
}
