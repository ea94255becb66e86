//! `ckpt checkpoint …`: take, list, apply, revert, delete, rename and
//! export the checkpoints of a VM folder. The quiesce and thaw hooks of a
//! production checkpoint are shell commands (`--quiesce-cmd`, `--thaw-cmd`),
//! and so are the memory-state hooks of a standard one (`--save-memory-cmd`,
//! `--resume-cmd`).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Subcommand;

use ckpt::checkpoint::{json, CheckpointType, CheckpointView, Hooks, TakenType, VmFile};

use super::chain::absolute;
use super::size::human;
use super::target::Target;
use super::vm::{human_duration, json_text, load_vm, open_vm, plural, print, vm_error};
use super::{fail, progress_bar, CliResult, Failure};

/// The `checkpoint` commands.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Take a checkpoint of the VM's current state, of the kind its
    /// checkpoint type asks for.
    ///
    /// production: run the quiesce command; if it fails (or none is
    /// given) take a standard checkpoint instead and record why.
    /// production-only: refuse when it fails. standard: keep the memory
    /// state given with --memory-state, or the one --save-memory-cmd
    /// writes at the instant the disks switch. disabled: refuse.
    Create {
        /// The VM folder.
        dir: PathBuf,
        /// The checkpoint's name (unique in the VM).
        name: String,
        /// Memory state of a standard checkpoint (copied into the
        /// checkpoint location).
        #[arg(long, value_name = "FILE", conflicts_with = "save_memory_cmd")]
        memory_state: Option<PathBuf>,
        #[command(flatten)]
        memory: MemoryCmds,
        /// Quiesce the guest by running CMD with `sh -c` (exit status 0:
        /// quiesced).
        #[arg(long, value_name = "CMD")]
        quiesce_cmd: Option<String>,
        /// Run CMD with `sh -c` once the disks are checkpointed, after a
        /// successful quiesce.
        #[arg(long, value_name = "CMD", requires = "quiesce_cmd")]
        thaw_cmd: Option<String>,
    },
    /// Show the checkpoint tree: children under their parents, "now" where
    /// the current state hangs, with type, age, size and warnings.
    List {
        /// The VM folder.
        dir: PathBuf,
        /// Print {"checkpoints": […], "current": {…}} instead.
        #[arg(long)]
        json: bool,
    },
    /// Make a checkpoint the current state: its disks and configuration
    /// come back; the VM is then off, or saved if it has memory state.
    ///
    /// The current state is discarded unless --save-current keeps it as a
    /// new checkpoint first.
    Apply {
        /// The VM folder.
        dir: PathBuf,
        /// The checkpoint to apply.
        name: String,
        /// First keep the current state as a checkpoint called NEWNAME.
        #[arg(long, value_name = "NEWNAME")]
        save_current: Option<String>,
        /// Quiesce command for the --save-current checkpoint.
        #[arg(long, value_name = "CMD", requires = "save_current")]
        quiesce_cmd: Option<String>,
        /// Thaw command for the --save-current checkpoint.
        #[arg(long, value_name = "CMD", requires = "quiesce_cmd")]
        thaw_cmd: Option<String>,
        #[command(flatten)]
        memory: MemoryCmds,
    },
    /// Go back to the checkpoint the current state hangs under, discarding
    /// the changes made since.
    Revert {
        /// The VM folder.
        dir: PathBuf,
    },
    /// Delete a checkpoint: its data is merged so that nothing the current
    /// state or another checkpoint reads changes.
    Delete {
        /// The VM folder.
        dir: PathBuf,
        /// The checkpoint.
        name: String,
        /// Delete every checkpoint under it too.
        #[arg(long)]
        subtree: bool,
    },
    /// Turn a checkpoint into a reference point: the checkpoint is deleted
    /// (its disks merged, as `delete` does; its configuration copy and
    /// memory state go) and what is left answers exactly what changed since
    /// it: `ckpt changes DIR --since NAME`, and incremental exports
    /// `--since NAME` on the export that captured it. A reference point
    /// never blocks a merge or a delete.
    Reference {
        /// The VM folder.
        dir: PathBuf,
        /// The checkpoint.
        name: String,
    },
    /// List the reference points with their age.
    References {
        /// The VM folder.
        dir: PathBuf,
        /// Print JSON: {"references": [{"name", "id", "type", "created",
        /// "converted", "age_seconds", "map_bytes", "anchors"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Delete a reference point (nothing else changes).
    DeleteReference {
        /// The VM folder.
        dir: PathBuf,
        /// The reference point.
        name: String,
    },
    /// Rename a checkpoint.
    Rename {
        /// The VM folder.
        dir: PathBuf,
        /// The checkpoint.
        name: String,
        /// Its new name (unique in the VM).
        new_name: String,
    },
    /// Export a checkpoint (or with --current the current state) into the
    /// folder DEST: one standalone VHDX per disk (no parent), the
    /// configuration (config.json, with the export's backup manifest) and
    /// the memory state if any.
    ///
    /// With --since REF --base PREVIOUS: an incremental backup. Each disk
    /// is a differencing VHDX holding only the sectors that may differ
    /// between checkpoint REF and NAME, whose parent is the disk of the
    /// export PREVIOUS (which must be the export that captured REF, left
    /// unchanged): the chain full → incremental → … opens with any VHDX
    /// reader. REF is an earlier checkpoint on the path to NAME, one on
    /// another branch, or a reference point (`checkpoint reference`). Check
    /// a backup chain with `ckpt verify-backup`.
    #[command(override_usage = "ckpt checkpoint export <DIR> <NAME> <DEST> \
                                [--since <REF> --base <PREVIOUS>]\n       \
                                ckpt checkpoint export <DIR> --current <DEST> \
                                [--since <REF> --base <PREVIOUS>]")]
    Export {
        /// The VM folder.
        dir: PathBuf,
        /// The checkpoint (with --current: DEST).
        name: String,
        /// The new (or empty) folder to export into.
        dest: Option<PathBuf>,
        /// Export the current state instead of a checkpoint.
        #[arg(long)]
        current: bool,
        /// Export only what changed since checkpoint or reference point REF
        /// (a VHDX export needs --base).
        #[arg(long, value_name = "REF")]
        since: Option<String>,
        /// The export folder of REF (the last backup) the incremental
        /// builds on (needs --since).
        #[arg(long, value_name = "PREVIOUS", requires = "since")]
        base: Option<PathBuf>,
        /// vhdx (default): VHDX files. rbd-diff: per disk K the file
        /// DEST/diskK.rbd-diff, an "rbd diff v1" stream for `rbd
        /// import-diff` (with --since REF: only what changed since REF, from
        /// the RBD snapshot named after it, as `ckpt vm export-rbd` names
        /// snapshots; the checkpoint exported becomes a snapshot). Needs
        /// the VM not held by another process.
        #[arg(long, value_name = "FORMAT", default_value = "vhdx",
              value_parser = ["vhdx", "rbd-diff"])]
        format: String,
    },
}

/// The memory-state hooks of a standard checkpoint as shell commands.
#[derive(Debug, clap::Args)]
pub struct MemoryCmds {
    /// Save the memory state of a standard checkpoint (also one that a
    /// production checkpoint falls back to) by running CMD with `sh -c`
    /// just before the disks switch, with CKPT_MEMORY_STATE set to the
    /// absolute path of a fresh, empty file (mode 0600) to write it into.
    /// Exit status 0 with the file written: the checkpoint keeps it; 0
    /// with the file left empty: no memory state; any other status fails
    /// the checkpoint. With the VM held elsewhere, CMD runs here and the
    /// holder reads the file.
    #[arg(long, value_name = "CMD")]
    save_memory_cmd: Option<String>,
    /// Run CMD with `sh -c` after the disks switched (or failed to),
    /// whenever the save command ran: let the guest run again. Its failure
    /// is a warning.
    #[arg(long, value_name = "CMD", requires = "save_memory_cmd")]
    resume_cmd: Option<String>,
}

/// Run a `checkpoint` command.
pub(super) fn run(cmd: CheckpointCommand) -> CliResult {
    match cmd {
        CheckpointCommand::Create {
            dir,
            name,
            memory_state,
            memory,
            quiesce_cmd,
            thaw_cmd,
        } => create(
            &dir,
            &name,
            memory_state.as_deref(),
            CmdHooks::new(quiesce_cmd, thaw_cmd, false).with_memory(memory),
        ),
        CheckpointCommand::List { dir, json } => list(&dir, json),
        CheckpointCommand::Apply {
            dir,
            name,
            save_current,
            quiesce_cmd,
            thaw_cmd,
            memory,
        } => {
            if save_current.is_none() && memory.save_memory_cmd.is_some() {
                return Err(fail(
                    "--save-memory-cmd saves the memory state of the --save-current \
                     checkpoint: give --save-current NEWNAME too",
                ));
            }
            apply(
                &dir,
                &name,
                save_current.as_deref(),
                CmdHooks::new(quiesce_cmd, thaw_cmd, false).with_memory(memory),
            )
        }
        CheckpointCommand::Revert { dir } => revert(&dir),
        CheckpointCommand::Delete { dir, name, subtree } => delete(&dir, &name, subtree),
        CheckpointCommand::Reference { dir, name } => reference(&dir, &name),
        CheckpointCommand::References { dir, json } => references(&dir, json),
        CheckpointCommand::DeleteReference { dir, name } => delete_reference(&dir, &name),
        CheckpointCommand::Rename {
            dir,
            name,
            new_name,
        } => rename(&dir, &name, &new_name),
        CheckpointCommand::Export {
            dir,
            name,
            dest,
            current,
            since,
            base,
            format,
        } => {
            let (name, dest) =
                match (current, dest) {
                    (false, Some(dest)) => (Some(name), dest),
                    (true, None) => (None, PathBuf::from(name)),
                    (false, None) => return Err(fail(
                        "missing DEST: give NAME DEST, or --current DEST (try 'ckpt checkpoint \
                         export --help')",
                    )),
                    (true, Some(_)) => return Err(fail(
                        "--current exports the current state: give only DEST, not a checkpoint \
                         name (try 'ckpt checkpoint export --help')",
                    )),
                };
            if format == "rbd-diff" {
                if base.is_some() {
                    return Err(fail(
                        "--base names the previous VHDX export; an rbd-diff stream builds on \
                         the RBD snapshot of REF instead: drop --base",
                    ));
                }
                return export_rbd_diff(&dir, name.as_deref(), &dest, since.as_deref());
            }
            if since.is_some() && base.is_none() {
                return Err(fail(
                    "--since REF needs --base PREVIOUS (the export that captured REF) for a \
                     VHDX export (try 'ckpt checkpoint export --help')",
                ));
            }
            let inc = since.zip(base);
            export(&dir, name.as_deref(), &dest, inc.as_ref())
        }
    }
}

/// Run `cmd` with `sh -c`; `Err(reason)` unless it exits with status 0.
/// The reason is "command exited with status N", then the last line the
/// command wrote to stderr.
pub fn run_hook(cmd: &str) -> Result<(), String> {
    run_hook_with(cmd, &[])
}

/// [`run_hook`] with the environment variables `env` set.
fn run_hook_with(cmd: &str, env: &[(&str, &Path)]) -> Result<(), String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not run sh: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut reason = match out.status.code() {
        Some(n) => format!("command exited with status {n}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            match out.status.signal() {
                Some(s) => format!("command was killed by signal {s}"),
                None => "command failed".to_string(),
            }
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(last) = stderr.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        reason.push_str(": ");
        reason.push_str(last);
    }
    Err(reason)
}

/// The hooks of the tool: shell commands to quiesce and thaw, to save the
/// memory state and resume, and a progress bar on a terminal.
pub(super) struct CmdHooks {
    quiesce_cmd: Option<String>,
    thaw_cmd: Option<String>,
    save_memory_cmd: Option<String>,
    resume_cmd: Option<String>,
    /// Where the save command's file is made (the VM folder; set when the
    /// VM is opened).
    temp_dir: PathBuf,
    /// Why the thaw command failed, if it did.
    thaw_failure: Option<String>,
    bar: Option<indicatif::ProgressBar>,
}

impl CmdHooks {
    fn new(quiesce_cmd: Option<String>, thaw_cmd: Option<String>, bar: bool) -> CmdHooks {
        CmdHooks {
            quiesce_cmd,
            thaw_cmd,
            save_memory_cmd: None,
            resume_cmd: None,
            temp_dir: PathBuf::from("."),
            thaw_failure: None,
            bar: if bar { progress_bar() } else { None },
        }
    }

    /// These hooks with the memory-state commands of `m`.
    fn with_memory(mut self, m: MemoryCmds) -> CmdHooks {
        self.save_memory_cmd = m.save_memory_cmd;
        self.resume_cmd = m.resume_cmd;
        self
    }

    pub(super) fn with_bar() -> CmdHooks {
        CmdHooks::new(None, None, true)
    }

    pub(super) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// An error when the thaw command failed (the guest may still be quiesced).
    fn thaw_result(&self, what: &str) -> CliResult {
        match &self.thaw_failure {
            None => Ok(()),
            Some(reason) => Err(fail(format!(
                "{what}, but the thaw command failed ({reason}); the guest may still be quiesced"
            ))),
        }
    }
}

impl Hooks for CmdHooks {
    fn quiesce(&mut self) -> Result<(), String> {
        match &self.quiesce_cmd {
            Some(cmd) => run_hook(cmd),
            None => Err("no quiesce command was given (--quiesce-cmd)".into()),
        }
    }

    fn thaw(&mut self) {
        if let Some(cmd) = &self.thaw_cmd {
            if let Err(reason) = run_hook(cmd) {
                self.thaw_failure = Some(reason);
            }
        }
    }

    /// Run the save command into a fresh file of the VM folder (mode
    /// 0600), then stream that file into `out`; the file is removed in
    /// every case.
    fn save_memory(&mut self, out: &mut dyn Write) -> std::io::Result<bool> {
        if self.save_memory_cmd.is_none() {
            return Ok(false);
        }
        let dir = absolute(&self.temp_dir);
        let path = dir.join(format!(
            ".ckpt-memory-{}-{}.tmp",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let r = self.save_memory_to(&path).and_then(|saved| {
            if saved {
                std::io::copy(&mut file, out)?;
            }
            Ok(saved)
        });
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Run the save command with CKPT_MEMORY_STATE=`path`; saved when it
    /// exits 0 and the file is not empty.
    fn save_memory_to(&mut self, path: &Path) -> std::io::Result<bool> {
        let Some(cmd) = &self.save_memory_cmd else {
            return Ok(false);
        };
        run_hook_with(cmd, &[("CKPT_MEMORY_STATE", path)]).map_err(|reason| {
            std::io::Error::other(format!("the save-memory command {cmd:?} failed: {reason}"))
        })?;
        Ok(std::fs::metadata(path)?.len() > 0)
    }

    /// Run the resume command; its failure is a warning (the checkpoint
    /// stands, or failed for its own reason).
    fn resume(&mut self) {
        if let Some(cmd) = &self.resume_cmd {
            if let Err(reason) = run_hook(cmd) {
                eprintln!(
                    "warning: the resume command {cmd:?} failed ({reason}); the guest may still \
                     be paused"
                );
            }
        }
    }

    fn progress(&mut self, done: u64, total: u64) -> bool {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
        }
        true
    }
}

/// "production", or "standard (production fell back: REASON)".
fn kind_text(taken: TakenType, requested: CheckpointType, reason: Option<&str>) -> String {
    let mut s = taken.as_str().to_string();
    if let Some(r) = reason {
        s.push_str(&format!(" ({} fell back: {r})", requested.as_str()));
    }
    s
}

fn create(dir: &Path, name: &str, memory: Option<&Path>, mut hooks: CmdHooks) -> CliResult {
    // A memory-state file that cannot be read is refused before anything changes.
    if let Some(m) = memory {
        match std::fs::metadata(m) {
            Ok(md) if md.is_file() => {}
            Ok(_) => {
                return Err(fail(format!(
                    "--memory-state {}: not a regular file",
                    m.display()
                )))
            }
            Err(e) => {
                return Err(fail(format!(
                    "--memory-state {}: {}",
                    m.display(),
                    ckpt::Error::from(e)
                )))
            }
        }
        std::fs::File::open(m).map_err(|e| {
            fail(format!(
                "--memory-state {}: {}",
                m.display(),
                ckpt::Error::from(e)
            ))
        })?;
    }
    let mut vm = open_vm(dir)?;
    if memory.is_some() && vm.data().settings.checkpoint_type == CheckpointType::ProductionOnly {
        return Err(fail(format!(
            "--memory-state: VM \"{}\" takes production-only checkpoints, which keep no memory \
             state",
            vm.data().config.name
        )));
    }
    let client_hooks = hooks.quiesce_cmd.is_some();
    let client_memory = hooks.save_memory_cmd.is_some();
    hooks.temp_dir = vm.dir().to_path_buf();
    let r = vm.create_checkpoint(name, memory, &mut hooks, client_hooks, client_memory);
    hooks.finish();
    let ck = r.map_err(vm_error)?;
    let mut line = format!(
        "Created checkpoint \"{}\" of VM \"{}\": {}",
        ck.name,
        vm.data().config.name,
        kind_text(ck.taken, ck.requested, ck.fallback_reason.as_deref())
    );
    match &ck.saved_state {
        Some(m) => line.push_str(&format!(", memory state {}", absolute(m).display())),
        None if memory.is_some() => {
            line.push_str(", memory state not kept (a production checkpoint has none)")
        }
        None if client_memory && ck.taken == TakenType::Standard => {
            line.push_str(", memory state not kept (the save command wrote none)")
        }
        None => {}
    }
    if !ck.skipped_passthrough.is_empty() {
        line.push_str(&format!(
            ", pass-through not checkpointed: {}",
            ck.skipped_passthrough.join(", ")
        ));
    }
    if let Some(w) = ck.crash_consistent_warning() {
        line.push_str(&format!(" [warning: {w}]"));
    }
    println!("{line}");
    warn(&mut vm);
    hooks.thaw_result(&format!("checkpoint \"{}\" was taken", ck.name))
}

/// A name (of a checkpoint, of a VM) for one line of text output: control
/// characters (newline, tab, ...) and line separators, which names stored
/// by older versions may hold, are written as escapes (`\n`, `\t`,
/// `\u{1b}`), so each name stays on its line and cannot fake others.
/// Every other character is kept as it is.
pub(super) fn escaped(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of the tree for a checkpoint.
fn node_text(v: &CheckpointView, age_warning: Option<u64>) -> String {
    let c = &v.checkpoint;
    let mut s = format!(
        "{}  {}, {} old, {}",
        escaped(&c.name),
        c.taken.as_str(),
        human_duration(v.age_seconds),
        human(v.size_bytes)
    );
    if c.saved_state.is_some() {
        s.push_str(", memory state");
    }
    if !c.skipped_passthrough.is_empty() {
        s.push_str(&format!(
            ", without pass-through {}",
            c.skipped_passthrough.join(", ")
        ));
    }
    let mut warnings = Vec::new();
    if v.age_warning {
        warnings.push(format!(
            "older than {}",
            human_duration(age_warning.unwrap_or(0))
        ));
    }
    if let Some(r) = &c.fallback_reason {
        warnings.push(format!("{} fell back: {r}", c.requested.as_str()));
    }
    if let Some(w) = c.crash_consistent_warning() {
        warnings.push(w.to_string());
    }
    warnings.extend(c.warnings.iter().cloned());
    for w in warnings {
        s.push_str(&format!("  [warning: {w}]"));
    }
    if c.deleting {
        s.push_str("  [being deleted: the next change to the VM finishes it]");
    }
    s
}

/// The tree as text: children indented under their parents, "now" where
/// the current state hangs. Hidden nodes (deleted branch points kept for
/// their disks) are left out; their children (and those of a checkpoint
/// being deleted) show under the nearest visible ancestor.
fn tree_text(data: &VmFile, views: &[CheckpointView]) -> String {
    // Children of each node (None: the roots), in creation order; "now"
    // is the entry None in the list.
    let mut children: HashMap<Option<&str>, Vec<Option<&CheckpointView>>> = HashMap::new();
    for v in views.iter().filter(|v| !v.checkpoint.hidden) {
        let p = data
            .visible_ancestor(v.checkpoint.parent.as_deref())
            .map(|c| c.id.as_str());
        children.entry(p).or_default().push(Some(v));
    }
    let now_parent = data.current_checkpoint().map(|c| c.id.as_str());
    children.entry(now_parent).or_default().push(None);

    let mut now = format!("now  ({}", data.state.as_str());
    if let Some(m) = &data.current.saved_state {
        now.push_str(&format!(", memory state {}", absolute(m).display()));
    }
    now.push(')');

    let mut out = String::new();
    let mut stack: Vec<(Option<&CheckpointView>, String, String)> = Vec::new();
    // Roots at column 0, in reverse so that the first is popped first.
    for node in children.get(&None).into_iter().flatten().rev() {
        stack.push((*node, String::new(), String::new()));
    }
    while let Some((node, lead, indent)) = stack.pop() {
        match node {
            None => out.push_str(&format!("{lead}{now}\n")),
            Some(v) => {
                out.push_str(&format!(
                    "{lead}{}\n",
                    node_text(v, data.settings.age_warning_seconds)
                ));
                let kids = children
                    .get(&Some(v.checkpoint.id.as_str()))
                    .cloned()
                    .unwrap_or_default();
                let n = kids.len();
                for (k, kid) in kids.into_iter().enumerate().rev() {
                    let last = k + 1 == n;
                    let (branch, more) = if last {
                        ("└── ", "    ")
                    } else {
                        ("├── ", "│   ")
                    };
                    stack.push((kid, format!("{indent}{branch}"), format!("{indent}{more}")));
                }
            }
        }
    }
    out
}

fn list(dir: &Path, as_json: bool) -> CliResult {
    let data = load_vm(dir)?;
    if as_json {
        return print(&json_text(
            &json::checkpoints_json(&data).map_err(vm_error)?,
        )?);
    }
    let views = ckpt::checkpoint::list_of(&data).map_err(vm_error)?;
    let n = views.iter().filter(|v| !v.checkpoint.hidden).count();
    let mut s = format!(
        "VM \"{}\": {n} checkpoint{} ({} checkpoints)\n",
        escaped(&data.config.name),
        plural(n),
        data.settings.checkpoint_type.as_str()
    );
    s.push_str(&tree_text(&data, &views));
    print(&s)
}

/// The checkpoint called `name`, or an error naming the ones there are.
fn find(vm: &mut Target, name: &str) -> Result<String, Failure> {
    match vm.find(name) {
        Ok(c) => return Ok(c.id.clone()),
        Err(e) if e.kind() == ckpt::ErrorKind::InvalidArgument => return Err(vm_error(e)),
        Err(_) => {}
    }
    let names: Vec<String> = vm
        .data()
        .checkpoints
        .iter()
        .filter(|c| !c.hidden)
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    Err(fail(format!(
        "VM \"{}\" has no checkpoint called \"{name}\" ({})",
        vm.data().config.name,
        if names.is_empty() {
            "it has no checkpoints".to_string()
        } else {
            format!("its checkpoints: {}", names.join(", "))
        }
    )))
}

/// The name of the checkpoint the current state hangs under (revert's target).
fn current_name(vm: &Target) -> Option<String> {
    vm.data().current_checkpoint().map(|c| c.name.clone())
}

/// "off, 1024 MiB, 2 CPUs".
fn vm_summary(vm: &Target) -> String {
    let d = vm.data();
    format!(
        "VM \"{}\" is now {}, {} MiB, {} CPU{}",
        d.config.name,
        d.state.as_str(),
        d.config.memory_mib,
        d.config.cpus,
        plural(d.config.cpus as usize)
    )
}

fn apply(dir: &Path, name: &str, save_current: Option<&str>, mut hooks: CmdHooks) -> CliResult {
    let mut vm = open_vm(dir)?;
    find(&mut vm, name)?;
    let client_hooks = hooks.quiesce_cmd.is_some();
    let client_memory = hooks.save_memory_cmd.is_some();
    hooks.temp_dir = vm.dir().to_path_buf();
    let r = vm.apply(name, save_current, &mut hooks, client_hooks, client_memory);
    hooks.finish();
    r.map_err(vm_error)?;
    println!("Applied checkpoint \"{name}\": {}", vm_summary(&vm));
    warn(&mut vm);
    if let Some(kept) = save_current {
        if let Ok(c) = vm.find(kept) {
            println!(
                "The previous state was kept as checkpoint \"{kept}\": {}",
                kind_text(c.taken, c.requested, c.fallback_reason.as_deref())
            );
        }
        return hooks.thaw_result(&format!(
            "checkpoint \"{kept}\" was taken and \"{name}\" applied"
        ));
    }
    Ok(())
}

fn revert(dir: &Path) -> CliResult {
    let mut vm = open_vm(dir)?;
    let Some(name) = current_name(&vm) else {
        return Err(fail(format!(
            "VM \"{}\" has no checkpoint to revert to",
            vm.data().config.name
        )));
    };
    vm.revert().map_err(vm_error)?;
    println!(
        "Reverted to checkpoint \"{name}\" (the changes since it were discarded): {}",
        vm_summary(&vm)
    );
    warn(&mut vm);
    Ok(())
}

fn delete(dir: &Path, name: &str, subtree: bool) -> CliResult {
    let mut vm = open_vm(dir)?;
    let id = find(&mut vm, name)?;
    // The visible checkpoints under it (what --subtree deletes too).
    let mut under = 0usize;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![id.clone()];
    while let Some(x) = stack.pop() {
        if !seen.insert(x.clone()) {
            continue;
        }
        for c in vm
            .data()
            .checkpoints
            .iter()
            .filter(|c| c.parent.as_deref() == Some(x.as_str()))
        {
            if !c.hidden {
                under += 1;
            }
            stack.push(c.id.clone());
        }
    }
    let mut hooks = CmdHooks::with_bar();
    let r = vm.delete(name, subtree, &mut hooks);
    hooks.finish();
    r.map_err(vm_error)?;
    let mut line = format!("Deleted checkpoint \"{name}\"");
    if subtree && under > 0 {
        line.push_str(&format!(
            " and the {under} checkpoint{} under it",
            plural(under)
        ));
    }
    if vm.data().checkpoints.iter().any(|c| c.id == id) {
        let d = vm.data();
        let deps = d
            .checkpoints
            .iter()
            .filter(|c| c.parent.as_deref() == Some(id.as_str()))
            .count()
            + usize::from(d.current.parent.as_deref() == Some(id.as_str()));
        line.push_str(if deps > 1 {
            " (its disks stay, hidden, while more than one state still depends on them)"
        } else {
            " (its disks stay, hidden, under the running VM's disks until the VM is opened again)"
        });
    }
    println!("{line}");
    warn(&mut vm);
    Ok(())
}

/// The tidy-up a committed operation left for the next open, on stderr
/// (the operation itself succeeded: exit status 0).
fn warn(vm: &mut Target) {
    for w in vm.take_warnings() {
        eprintln!("warning: {w}");
    }
}

fn reference(dir: &Path, name: &str) -> CliResult {
    let mut vm = open_vm(dir)?;
    find(&mut vm, name)?;
    let mut hooks = CmdHooks::with_bar();
    let r = vm.convert_to_reference(name, &mut hooks);
    hooks.finish();
    r.map_err(vm_error)?;
    println!(
        "Checkpoint \"{name}\" is now a reference point: its data was merged away; \
         `ckpt changes {} --since \"{name}\"` and incremental exports since it still work",
        dir.display()
    );
    warn(&mut vm);
    Ok(())
}

fn references(dir: &Path, as_json: bool) -> CliResult {
    let data = load_vm(dir)?;
    if as_json {
        return print(&json_text(
            &json::references_json(&data).map_err(vm_error)?,
        )?);
    }
    let views = ckpt::checkpoint::backup::references_of(&data.references).map_err(vm_error)?;
    let mut s = format!(
        "VM \"{}\": {} reference point{}\n",
        escaped(&data.config.name),
        views.len(),
        plural(views.len())
    );
    for v in &views {
        s.push_str(&format!(
            "  {}  ({}, taken {} ago, {} merged in since)\n",
            escaped(&v.reference.name),
            v.reference.taken.as_str(),
            human_duration(v.age_seconds),
            human(v.map_bytes)
        ));
    }
    print(&s)
}

fn delete_reference(dir: &Path, name: &str) -> CliResult {
    let mut vm = open_vm(dir)?;
    vm.delete_reference(name).map_err(vm_error)?;
    println!("Deleted reference point \"{name}\"");
    warn(&mut vm);
    Ok(())
}

fn rename(dir: &Path, name: &str, new_name: &str) -> CliResult {
    let mut vm = open_vm(dir)?;
    find(&mut vm, name)?;
    vm.rename(name, new_name).map_err(vm_error)?;
    println!("Renamed checkpoint \"{name}\" to \"{new_name}\"");
    warn(&mut vm);
    Ok(())
}

/// `ckpt checkpoint export --format rbd-diff`: per disk a stream file in
/// `dest` (made; it must not exist or be empty). A failure removes what
/// was written.
fn export_rbd_diff(dir: &Path, name: Option<&str>, dest: &Path, since: Option<&str>) -> CliResult {
    let mut vm = ckpt::checkpoint::Vm::open(dir).map_err(vm_error)?;
    if std::fs::read_dir(dest).is_ok_and(|mut d| d.next().is_some()) {
        return Err(fail(format!(
            "{}: the folder is not empty: give a new or empty folder",
            dest.display()
        )));
    }
    std::fs::create_dir_all(dest).map_err(|e| fail(format!("{}: {e}", dest.display())))?;
    let mut made = Vec::new();
    let r = (|| -> Result<(), Failure> {
        for k in 0..vm.data().disks.len() {
            let path = dest.join(format!("disk{k}.rbd-diff"));
            let f = std::fs::File::create(&path)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            made.push(path.clone());
            let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
            let stats = vm
                .write_rbd_diff(k, since, name, &mut out)
                .map_err(vm_error)?;
            let f = out
                .into_inner()
                .map_err(|e| fail(format!("{}: {}", path.display(), e.error())))?;
            f.sync_all()
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            println!(
                "{}: {} bytes of data ({} in the stream)",
                path.display(),
                stats.data_bytes,
                stats.stream_bytes
            );
        }
        Ok(())
    })();
    if r.is_err() {
        for p in &made {
            let _ = std::fs::remove_file(p);
        }
    }
    r
}

/// `ckpt checkpoint export`; with `inc` (REF, PREVIOUS) an incremental.
fn export(
    dir: &Path,
    name: Option<&str>,
    dest: &Path,
    inc: Option<&(String, PathBuf)>,
) -> CliResult {
    let mut vm = open_vm(dir)?;
    if let Some(n) = name {
        find(&mut vm, n)?;
    }
    if let Some((since, _)) = inc {
        if !vm.data().references.iter().any(|r| r.name == *since) {
            find(&mut vm, since)?;
        }
    }
    let mut hooks = CmdHooks::with_bar();
    let r = match inc {
        Some((since, base)) => vm.export_incremental(name, since, dest, base, &mut hooks),
        None => vm.export(name, dest, &mut hooks),
    };
    hooks.finish();
    let files = r.map_err(vm_error)?;
    let what = match name {
        Some(n) => format!("checkpoint \"{n}\""),
        None => "the current state".to_string(),
    };
    let what = match inc {
        Some((since, base)) => format!(
            "the changes since \"{since}\" of {what} (on {})",
            absolute(base).display()
        ),
        None => what,
    };
    println!(
        "Exported {what} of VM \"{}\" to {}: {}",
        vm.data().config.name,
        absolute(dest).display(),
        files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
