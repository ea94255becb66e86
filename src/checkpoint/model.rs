//! What a VM folder holds: the VM file (configuration, settings, state, the
//! checkpoint tree) and the journal of an operation under way.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file holding a VM's configuration and checkpoint tree.
pub const VM_FILE: &str = "vm.json";
/// The journal of the operation under way (absent when none is).
pub const JOURNAL_FILE: &str = "journal.json";
/// The per-VM lock file.
pub const LOCK_FILE: &str = ".lock";

/// The per-VM checkpoint setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointType {
    /// No checkpoints.
    Disabled,
    /// Disks, configuration and memory state.
    Standard,
    /// Quiesce the guest, keep no memory; fall back to standard when quiescing fails.
    /// An off VM has nothing to quiesce: its checkpoint is production, no fallback.
    #[default]
    Production,
    /// Quiesce the guest or fail (an off VM: production, nothing to quiesce).
    ProductionOnly,
}

impl CheckpointType {
    /// The setting's name: "disabled", "standard", "production", "production-only".
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointType::Disabled => "disabled",
            CheckpointType::Standard => "standard",
            CheckpointType::Production => "production",
            CheckpointType::ProductionOnly => "production-only",
        }
    }
    /// Parse a setting's name (see the [`FromStr`] impl).
    pub fn parse(s: &str) -> Result<CheckpointType> {
        s.parse()
    }
    /// Every setting, in the order their names are listed to users.
    pub const ALL: [CheckpointType; 4] = [
        CheckpointType::Disabled,
        CheckpointType::Standard,
        CheckpointType::Production,
        CheckpointType::ProductionOnly,
    ];
    /// The names a user may give: "disabled, standard, production or production-only".
    pub fn names() -> String {
        one_of(Self::ALL.map(Self::as_str))
    }
}

impl fmt::Display for CheckpointType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckpointType {
    type Err = Error;
    /// A name [`CheckpointType::as_str`] gives (also `productiononly` and
    /// `production_only`).
    fn from_str(s: &str) -> Result<CheckpointType> {
        match s {
            "productiononly" | "production_only" => Ok(CheckpointType::ProductionOnly),
            _ => by_name(&Self::ALL, Self::as_str, s).ok_or_else(|| {
                Error::InvalidArgument(format!("checkpoint type {s:?} (use {})", Self::names()))
            }),
        }
    }
}

/// "a, b or c".
fn one_of<const N: usize>(names: [&str; N]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The value of `all` whose name is `s`.
fn by_name<T: Copy>(all: &[T], name: fn(T) -> &'static str, s: &str) -> Option<T> {
    all.iter().copied().find(|&t| name(t) == s)
}

/// The kind a checkpoint really got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TakenType {
    /// With memory state (when the hypervisor handed one over).
    Standard,
    /// The guest was quiesced; no memory state.
    Production,
}

impl TakenType {
    /// "standard" or "production".
    pub fn as_str(self) -> &'static str {
        match self {
            TakenType::Standard => "standard",
            TakenType::Production => "production",
        }
    }
    /// Both kinds.
    pub const ALL: [TakenType; 2] = [TakenType::Standard, TakenType::Production];
}

impl fmt::Display for TakenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TakenType {
    type Err = Error;
    /// "standard" or "production".
    fn from_str(s: &str) -> Result<TakenType> {
        by_name(&Self::ALL, Self::as_str, s).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "checkpoint kind {s:?} (use {})",
                one_of(Self::ALL.map(Self::as_str))
            ))
        })
    }
}

/// The VM's state as the library knows it (the hypervisor tells it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Not running.
    #[default]
    Off,
    /// Running.
    Running,
    /// Saved: memory state waits to be resumed.
    Saved,
}

impl VmState {
    /// "off", "running" or "saved".
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Off => "off",
            VmState::Running => "running",
            VmState::Saved => "saved",
        }
    }
    /// Parse a state name (see the [`FromStr`] impl).
    pub fn parse(s: &str) -> Result<VmState> {
        s.parse()
    }
    /// Every state, in the order their names are listed to users.
    pub const ALL: [VmState; 3] = [VmState::Off, VmState::Running, VmState::Saved];
    /// The names a user may give: "off, running or saved".
    pub fn names() -> String {
        one_of(Self::ALL.map(Self::as_str))
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmState {
    type Err = Error;
    /// A name [`VmState::as_str`] gives.
    fn from_str(s: &str) -> Result<VmState> {
        by_name(&Self::ALL, Self::as_str, s).ok_or_else(|| {
            Error::InvalidArgument(format!("VM state {s:?} (use {})", Self::names()))
        })
    }
}

/// The part of a VM a checkpoint keeps and apply restores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// The VM's name.
    pub name: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Pass-through disks (host devices): never checkpointed.
    #[serde(default)]
    pub passthrough: Vec<String>,
    /// The hypervisor's own settings, kept as they are.
    #[serde(default)]
    pub hypervisor: serde_json::Value,
}

/// Per-VM checkpoint settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Settings {
    /// Which checkpoints to take.
    pub checkpoint_type: CheckpointType,
    /// Where configuration copies and memory state go (default: `DIR/checkpoints`).
    #[serde(default)]
    pub checkpoint_location: Option<PathBuf>,
    /// Warn about checkpoints older than this many seconds.
    #[serde(default)]
    pub age_warning_seconds: Option<u64>,
    /// What the VM is, when a checkpoint of it needs care ([`VmRole`]):
    /// its checkpoints are then taken with a warning and monitoring
    /// reports them. Absent from VM files of earlier versions (no role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<VmRole>,
}

/// A role that makes a checkpoint of the VM risky to apply: taking one is
/// never refused, but warns ([`VmRole::checkpoint_warning`]), the warning
/// is recorded with the checkpoint ([`Checkpoint::warnings`]) and `ckpt
/// monitor` reports the VM's checkpoints as WARNING.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmRole {
    /// An Active Directory domain controller.
    DomainController,
    /// A node of a failover cluster.
    ClusterMember,
    /// A VM replicated to (or from) another host.
    Replicated,
}

impl VmRole {
    /// "domain-controller", "cluster-member" or "replicated".
    pub fn as_str(self) -> &'static str {
        match self {
            VmRole::DomainController => "domain-controller",
            VmRole::ClusterMember => "cluster-member",
            VmRole::Replicated => "replicated",
        }
    }
    /// Every role, in the order their names are listed to users.
    pub const ALL: [VmRole; 3] = [
        VmRole::DomainController,
        VmRole::ClusterMember,
        VmRole::Replicated,
    ];
    /// The names a user may give: "domain-controller, cluster-member or replicated".
    pub fn names() -> String {
        one_of(Self::ALL.map(Self::as_str))
    }
    /// Why a checkpoint of a VM in this role is risky: the one text the
    /// library records with such a checkpoint, the CLI prints and
    /// monitoring reports.
    pub fn checkpoint_warning(self) -> &'static str {
        match self {
            VmRole::DomainController => {
                "the VM is a domain controller: applying this checkpoint rolls its directory \
                 back (USN rollback: other domain controllers ignore the changes it makes \
                 again, unless the guest detects the rollback through VM-GenerationID); back \
                 it up with a directory-aware backup instead, and do not keep the checkpoint"
            }
            VmRole::ClusterMember => {
                "the VM is a cluster member: applying this checkpoint brings back stale \
                 cluster state (membership, quorum, replicated data) that the other nodes have \
                 moved past; evict and rejoin the node instead, and do not keep the checkpoint"
            }
            VmRole::Replicated => {
                "the VM is replicated: applying this checkpoint makes it diverge from its \
                 replica, which then needs a full resynchronisation; do not keep the checkpoint \
                 longer than needed"
            }
        }
    }
}

impl fmt::Display for VmRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmRole {
    type Err = Error;
    /// A name [`VmRole::as_str`] gives.
    fn from_str(s: &str) -> Result<VmRole> {
        by_name(&Self::ALL, Self::as_str, s).ok_or_else(|| {
            Error::InvalidArgument(format!("VM role {s:?} (use {} or none)", Self::names()))
        })
    }
}

/// One checkpoint: the frozen disks, a configuration copy, maybe memory state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Stable identifier.
    pub id: String,
    /// The name admins see.
    pub name: String,
    /// The checkpoint this one hangs under (None for the root).
    pub parent: Option<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The kind it really got.
    pub taken: TakenType,
    /// The kind the setting asked for.
    pub requested: CheckpointType,
    /// Why `taken` differs from what was asked for.
    pub fallback_reason: Option<String>,
    /// The frozen disk files, in the VM's disk order.
    pub disks: Vec<PathBuf>,
    /// Pass-through disks that were not checkpointed.
    pub skipped_passthrough: Vec<String>,
    /// The configuration copy (a file in the checkpoint location).
    pub config_file: Option<PathBuf>,
    /// The memory state (a file in the checkpoint location). Read-only once
    /// taken, and shared, never copied: a checkpoint of a saved VM refers to
    /// the file the VM resumes from, and the file goes with the last node
    /// (checkpoint or current state) that refers to it.
    pub saved_state: Option<PathBuf>,
    /// Kept only because two or more states depend on its disks (a deleted branch point),
    /// or the temporary checkpoint of an export of a running VM's current state (see
    /// [`crate::checkpoint::EXPORT_CHECKPOINT_NAME`]); merged away once one dependant is left.
    #[serde(default)]
    pub hidden: bool,
    /// Being deleted: a merge into its disks has started and was cancelled
    /// or failed, so they no longer hold the checkpoint's data. The next
    /// operation on the VM (or opening it) finishes the delete first; it
    /// can no longer be applied or exported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    /// The VM's state when the checkpoint was taken (None: recorded by a
    /// version that did not keep it). With `saved_state` it says what the
    /// checkpoint is (see [`Checkpoint::memory_kept`]): a checkpoint of an
    /// off VM is consistent by definition; one of a running VM without
    /// memory state holds its disks as a power cut would leave them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_state: Option<VmState>,
    /// Warnings recorded when the checkpoint was taken (the VM's
    /// [`VmRole`]: why applying it is risky). Empty in files of earlier
    /// versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Checkpoint {
    /// Whether the checkpoint kept memory state (applying it gives a saved
    /// VM). A standard checkpoint of a running VM whose hypervisor handed
    /// over none did not: it is recorded as standard, without memory.
    pub fn memory_kept(&self) -> bool {
        self.saved_state.is_some()
    }

    /// A standard checkpoint of a running VM that kept no memory state: its
    /// disks are only crash-consistent (as after a power cut). None
    /// otherwise; `Some(warning)` for the listing.
    pub fn crash_consistent_warning(&self) -> Option<&'static str> {
        (self.taken == TakenType::Standard
            && self.vm_state == Some(VmState::Running)
            && !self.memory_kept())
        .then_some(
            "the VM was running and no memory state was kept: the disks are only \
             crash-consistent",
        )
    }
}

/// The running state of the VM ("Now").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Current {
    /// The checkpoint it hangs under.
    pub parent: Option<String>,
    /// The files the VM writes to now, in the VM's disk order.
    pub disks: Vec<PathBuf>,
    /// Memory state to resume from (after applying a standard checkpoint).
    ///
    /// Borrowed, read-only: it is the checkpoint's own memory file (and
    /// checkpoints taken of the saved VM share it), so the hypervisor reads
    /// it to resume and never writes into it. A new save of the VM goes to a
    /// new file; the library frees this one when no node refers to it any
    /// more (the VM leaves the saved state, or the apply of another one).
    pub saved_state: Option<PathBuf>,
}

/// Everything in `vm.json`.
///
/// The tree keeps hidden nodes (deleted branch points) and nodes being
/// deleted for their disks; neither is ever the checkpoint the current state
/// is reported to hang under, nor a revert target:
/// [`VmFile::current_checkpoint`] is the one place that says which is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmFile {
    /// Format version of this file.
    pub version: u32,
    /// The configuration.
    pub config: VmConfig,
    /// The VM's disks as given at creation (VHDX files).
    pub disks: Vec<PathBuf>,
    /// Checkpoint settings.
    pub settings: Settings,
    /// The VM's state.
    pub state: VmState,
    /// The running state.
    pub current: Current,
    /// Every checkpoint, parents before children.
    pub checkpoints: Vec<Checkpoint>,
    /// Checkpoint locations the VM used before the current one (absolute),
    /// where stray checkpoint files can still be found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_checkpoint_locations: Vec<PathBuf>,
    /// The VM's stable id (given on the first save when missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The absolute folder the file was last saved from: opened anywhere
    /// else, the folder was moved or copied (see [`crate::checkpoint::owner`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<PathBuf>,
    /// Folders of VMs this one shares files with (the VM it was copied
    /// from): a file such a VM uses is never written, merged into or
    /// removed by this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_vms: Vec<PathBuf>,
    /// Old disk files a committed apply left to remove while another handle
    /// or process still held them: never deleted while held, removed by the
    /// first open (or operation) that finds them free, reported until then
    /// ([`crate::checkpoint::Vm::take_warnings`], `vm show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_removals: Vec<PathBuf>,
    /// Reference points: checkpoints converted to keep only the answer to
    /// "what changed since then" (see [`crate::checkpoint::backup`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<ReferencePoint>,
}

/// A reference point: what is left of a checkpoint converted with
/// [`crate::checkpoint::Vm::convert_to_reference`]: no data, no
/// configuration, no memory state, only what answers "what changed since".
///
/// Per disk, the changes since the point are the ranges of its change map
/// plus whatever differs between its anchor file and the point asked
/// about (read off the chains, as between two checkpoints). The anchor is
/// a disk file of the tree that nothing writes (a checkpoint's disk, or a
/// hidden node); the map holds what the merges into the anchor (and the
/// removal of earlier anchors) brought in since the point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferencePoint {
    /// The id of the checkpoint it was (an export that captured the
    /// checkpoint is a base for incrementals since the reference point).
    pub id: String,
    /// The checkpoint's name.
    pub name: String,
    /// When the checkpoint was taken (seconds since the Unix epoch).
    pub created: u64,
    /// When it was converted.
    pub converted: u64,
    /// What the checkpoint really was.
    pub taken: TakenType,
    /// Per disk of the VM.
    pub disks: Vec<ReferenceDisk>,
}

/// One disk of a [`ReferencePoint`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceDisk {
    /// The file whose content the map leads to (None: lost, every byte
    /// counts as changed).
    pub anchor: Option<PathBuf>,
    /// The change map file.
    pub map: PathBuf,
}

impl VmFile {
    /// The nearest ancestor of a node whose tree parent is `parent` that is
    /// neither hidden nor being deleted (None: there is none).
    pub fn visible_ancestor(&self, parent: Option<&str>) -> Option<&Checkpoint> {
        let mut parent = parent;
        // Bounded, in case a damaged file has a cycle.
        for _ in 0..=self.checkpoints.len() {
            let c = self
                .checkpoints
                .iter()
                .find(|c| Some(c.id.as_str()) == parent)?;
            if !c.hidden && !c.deleting {
                return Some(c);
            }
            parent = c.parent.as_deref();
        }
        None
    }

    /// The checkpoint the current state hangs under, as reported and as
    /// revert goes back to: the nearest visible ancestor of its disks.
    pub fn current_checkpoint(&self) -> Option<&Checkpoint> {
        self.visible_ancestor(self.current.parent.as_deref())
    }

    /// Check the shape of the whole file (what a hand edit can break):
    /// unique ids, every parent (of a checkpoint, of the current state)
    /// exists, no cycle of parents, the current state and every checkpoint
    /// have as many disks as the VM (`disks`), and no two visible
    /// checkpoints share a name ([`same_name`]). `Err` says what is wrong,
    /// in one sentence naming the checkpoints.
    pub fn check(&self) -> std::result::Result<(), String> {
        use std::collections::{HashMap, HashSet};
        let label = |c: &Checkpoint| format!("checkpoint {:?} (id {})", c.name, c.id);
        let n = self.disks.len();
        if self.current.disks.len() != n {
            return Err(format!(
                "the VM has {n} disk(s) in \"disks\" but the current state has {} in \
                 \"current.disks\" (a disk cannot be added to or removed from a VM by \
                 editing {VM_FILE})",
                self.current.disks.len()
            ));
        }
        let mut parent_of: HashMap<&str, Option<&str>> = HashMap::new();
        for c in &self.checkpoints {
            if c.id.is_empty() {
                return Err(format!("checkpoint {:?} has an empty id", c.name));
            }
            if parent_of.insert(&c.id, c.parent.as_deref()).is_some() {
                return Err(format!("two checkpoints have the id {}", c.id));
            }
        }
        for c in &self.checkpoints {
            if c.disks.len() != n {
                return Err(format!(
                    "{} has {} disk(s) but the VM has {n} (a disk cannot be added to or \
                     removed from a VM by editing {VM_FILE})",
                    label(c),
                    c.disks.len()
                ));
            }
            if let Some(p) = c.parent.as_deref() {
                if !parent_of.contains_key(p) {
                    return Err(format!("{}'s parent {p} does not exist", label(c)));
                }
            }
        }
        if let Some(p) = self.current.parent.as_deref() {
            if !parent_of.contains_key(p) {
                return Err(format!(
                    "the current state's parent checkpoint {p} does not exist"
                ));
            }
        }
        for c in &self.checkpoints {
            let mut seen = HashSet::from([c.id.as_str()]);
            let mut p = c.parent.as_deref();
            while let Some(x) = p {
                if !seen.insert(x) {
                    return Err(format!(
                        "the parents of {} form a cycle (through {x})",
                        label(c)
                    ));
                }
                p = parent_of.get(x).copied().flatten();
            }
        }
        let mut names: HashMap<String, &Checkpoint> = HashMap::new();
        for c in self.checkpoints.iter().filter(|c| !c.hidden) {
            let key: String = c.name.chars().flat_map(char::to_lowercase).collect();
            if let Some(other) = names.insert(key, c) {
                return Err(format!(
                    "{} and {} have the same name (names compare ignoring case)",
                    label(other),
                    label(c)
                ));
            }
        }
        Ok(())
    }
}

/// What to do about a `vm.json` that [`read_vm_file`] refuses.
const VM_FILE_HINT: &str = "the file was edited by hand or damaged: correct it, or restore it \
                            from a backup, before using the VM";

/// Read and check a VM's `vm.json` (see [`VmFile::check`]): a file that
/// does not parse or whose tree is inconsistent is a
/// [`Error::BadVmFile`] naming the file, what is wrong and what to do.
pub fn read_vm_file(path: &Path) -> Result<VmFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::from(e).in_file(path))?;
    let data: VmFile = serde_json::from_slice(&bytes).map_err(|e| {
        Error::BadVmFile(format!(
            "{}: not a valid VM file ({e}); {VM_FILE_HINT}",
            path.display()
        ))
    })?;
    data.check()
        .map_err(|what| Error::BadVmFile(format!("{}: {what}; {VM_FILE_HINT}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok(crate::checkpoint::owner::resolved_vm(dir, data))
}

/// Read the journal of an interrupted operation. One that cannot be read
/// as a journal (truncated, damaged) is a [`Error::BadVmFile`] that says
/// what it means and how to recover.
pub fn read_journal(path: &Path) -> Result<Journal> {
    let bytes = std::fs::read(path).map_err(|e| Error::from(e).in_file(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let j: Journal = serde_json::from_slice(&bytes).map_err(|e| {
        Error::BadVmFile(format!(
            "{}: not a valid journal ({e}): an operation on this VM was interrupted and the record of \
             what it had done, needed to finish or undo it, cannot be read, so the VM cannot \
             be changed. {VM_FILE} still holds the tree as it was last committed: restore \
             {JOURNAL_FILE} from a backup, or remove it to keep the tree as {VM_FILE} has it \
             (files the interrupted operation made then show as strays in `ckpt vm show`)",
            path.display()
        ))
    })?;
    Ok(crate::checkpoint::owner::resolved_journal(dir, j))
}

/// Whether two checkpoint names are the same name: compared ignoring case
/// (as Windows does), otherwise exactly. "Before" and "before" are one
/// name; "B" and "B " are not (and "B " cannot be given).
pub fn same_name(a: &str, b: &str) -> bool {
    a == b
        || a.chars()
            .flat_map(char::to_lowercase)
            .eq(b.chars().flat_map(char::to_lowercase))
}

/// An operation under way, recorded before its first step so that
/// reopening the VM after a crash can finish or undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Journal {
    /// Creating checkpoint `id`; `files` are the files it makes.
    Create {
        /// The new checkpoint.
        id: String,
        /// Files made by the operation (removed on rollback).
        files: Vec<PathBuf>,
        /// The checkpoint to apply once this one is taken (apply with capture).
        #[serde(default)]
        then_apply: Option<String>,
        /// Folders made by the operation, outermost first (removed on
        /// rollback when empty).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dirs: Vec<PathBuf>,
    },
    /// Applying: `new_files` become the current disks; `old_files` go.
    Apply {
        /// The checkpoint applied.
        #[serde(default)]
        target: Option<String>,
        /// The new current disks.
        new_files: Vec<PathBuf>,
        /// The old current disks (removed once the apply is committed).
        old_files: Vec<PathBuf>,
        /// The old current state's memory state (released once the apply
        /// is committed, unless a checkpoint still refers to it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        old_saved: Option<PathBuf>,
    },
    /// Deleting checkpoint `id` by merging dependant `into`'s disks into it.
    Merge {
        /// The deleted checkpoint.
        id: String,
        /// The dependant: a checkpoint id, or None for the current state.
        dependant: Option<String>,
        /// The checkpoint's configuration copy and memory state, removed at the end.
        #[serde(default)]
        files: Vec<PathBuf>,
        /// The DataWriteGuid of each of the checkpoint's disks before the
        /// merge: while they all still match, its data is untouched and the
        /// delete can be undone instead of finished.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        guids: Vec<String>,
        /// The bytes each disk of the dependant had to merge: a disk with
        /// none leaves its destination unchanged, so a missing source of
        /// size 0 whose destination still has its GUID was merged.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sizes: Vec<u64>,
        /// An attached VM whose current state is the dependant: the fresh
        /// child each current disk is switched to before its old top (the
        /// merge's source, frozen by the switch) is merged live. Once one
        /// exists and opens, the guest may have written it: the delete is
        /// finished (never undone) and the current state takes it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        children: Vec<PathBuf>,
    },
    /// Removing checkpoint `id` (a leaf, or hiding a branch point); `files` go after commit.
    Remove {
        /// The checkpoint.
        id: String,
        /// Whether it stays as a hidden node.
        hide: bool,
        /// Files removed once the tree no longer needs them.
        files: Vec<PathBuf>,
    },
    /// Exporting into `files` (removed if interrupted).
    Export {
        /// Files made by the export.
        files: Vec<PathBuf>,
    },
}

impl Journal {
    /// The operation's name as `journal.json` stores it ("create",
    /// "apply", "merge", "remove", "export").
    pub fn op_name(&self) -> &'static str {
        match self {
            Journal::Create { .. } => "create",
            Journal::Apply { .. } => "apply",
            Journal::Merge { .. } => "merge",
            Journal::Remove { .. } => "remove",
            Journal::Export { .. } => "export",
        }
    }
}

/// The temporary file [`write_atomic`] writes `path` through: `.NAME.tmp`
/// beside it. Whoever finishes or undoes an interrupted write of `path`
/// (reconcile, a new export) removes it too.
pub fn temp_of(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ))
}

/// Write `bytes` to `path` atomically: a temporary file ([`temp_of`]),
/// fsync, rename, fsync of the folder. A failure removes the temporary file.
///
/// One event for the crash hook ([`crate::io::faults`]), once the temporary
/// file is written: a crash there leaves the old file and the temporary
/// one, as a kill before the rename would (the rename is the only step
/// that shows).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_of(path);
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::from(e).in_file(path)
    };
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(fail)?;
    match crate::io::faults::event() {
        Ok(None) => {}
        Ok(Some(_)) => return Err(Error::from(crate::io::faults::crash()).in_file(path)),
        Err(e) => return Err(fail(e)),
    }
    std::fs::rename(&tmp, path).map_err(fail)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::from(e).in_file(path))
}

/// Read and parse a JSON file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::from(e).in_file(path))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::corrupt(
            crate::error::Structure::VmFile,
            None,
            crate::error::Reason::Invalid(format!("{}: {e}", path.display())),
        )
    })
}

/// Serialise to pretty JSON and write atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Display` and `FromStr` are one mapping: every value's name parses
    /// back to it, and an unknown name lists the known ones.
    #[test]
    fn names_round_trip() {
        for t in CheckpointType::ALL {
            assert_eq!(t.to_string().parse::<CheckpointType>().unwrap(), t);
            assert_eq!(CheckpointType::parse(t.as_str()).unwrap(), t);
        }
        for t in TakenType::ALL {
            assert_eq!(t.to_string().parse::<TakenType>().unwrap(), t);
        }
        for s in VmState::ALL {
            assert_eq!(s.to_string().parse::<VmState>().unwrap(), s);
            assert_eq!(VmState::parse(s.as_str()).unwrap(), s);
        }
        assert_eq!(
            "production_only".parse::<CheckpointType>().unwrap(),
            CheckpointType::ProductionOnly
        );
        assert_eq!(
            CheckpointType::parse("x").unwrap_err().to_string(),
            Error::InvalidArgument(
                "checkpoint type \"x\" (use disabled, standard, production or production-only)"
                    .into()
            )
            .to_string()
        );
        assert_eq!(
            VmState::parse("x").unwrap_err().to_string(),
            Error::InvalidArgument("VM state \"x\" (use off, running or saved)".into()).to_string()
        );
        assert!("x".parse::<TakenType>().is_err());
        for r in VmRole::ALL {
            assert_eq!(r.to_string().parse::<VmRole>().unwrap(), r);
        }
        assert!("none".parse::<VmRole>().is_err());
    }

    /// A VM file of an earlier version (no role, no checkpoint warnings)
    /// still reads, and the new fields are left out when empty.
    #[test]
    fn role_and_warnings_are_optional() {
        let s: Settings = serde_json::from_str(r#"{"checkpoint_type": "standard"}"#).unwrap();
        assert_eq!(s.role, None);
        assert!(!serde_json::to_string(&s).unwrap().contains("role"));
        let s = Settings {
            role: Some(VmRole::DomainController),
            ..Default::default()
        };
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""role":"domain-controller""#), "{text}");
        assert_eq!(serde_json::from_str::<Settings>(&text).unwrap(), s);
    }
}
