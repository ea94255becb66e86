//! The C enums of a VM (checkpoint type, taken type, state), their
//! conversions, and the versioned value structs (`ckpt_vm_spec`,
//! `ckpt_vm_info`, `ckpt_checkpoint_info`).

#[allow(unused_imports)]
use super::*;

/// The per-VM checkpoint setting (`ckpt_vm_spec.checkpoint_type`,
/// `ckpt_vm_set_checkpoint_type`, `ckpt_vm_info.checkpoint_type`,
/// `ckpt_checkpoint_info.requested`). Where a function takes it as a
/// `uint32_t`, other values are refused with
/// `CKPT_STATUS_INVALID_ARGUMENT`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_checkpoint_type {
    /// No checkpoints can be taken.
    Disabled = 1,
    /// Disks, configuration and memory state (from the `save_memory` hook).
    Standard = 2,
    /// Quiesce the guest (the `quiesce` hook), keep no memory state; when
    /// quiescing fails, take a standard checkpoint instead and record why.
    /// The default.
    Production = 3,
    /// Quiesce the guest or fail.
    ProductionOnly = 4,
}

/// The kind a checkpoint really is (`ckpt_checkpoint_info.taken`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_taken_type {
    /// Taken without quiescing; holds memory state when the `save_memory`
    /// hook gave one.
    Standard = 1,
    /// The guest was quiesced; no memory state.
    Production = 2,
}

/// The VM's state as the hypervisor reports it (`ckpt_vm_set_state`,
/// `ckpt_vm_info.state`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ckpt_vm_state {
    /// Not running.
    Off = 1,
    /// Running.
    Running = 2,
    /// Saved: memory state waits to be resumed (after applying a standard
    /// checkpoint).
    Saved = 3,
}

// The one mapping between each library enum and its C enum; the numbers
// are stated only in the C enums above.

impl From<CheckpointType> for ckpt_checkpoint_type {
    fn from(t: CheckpointType) -> Self {
        match t {
            CheckpointType::Disabled => Self::Disabled,
            CheckpointType::Standard => Self::Standard,
            CheckpointType::Production => Self::Production,
            CheckpointType::ProductionOnly => Self::ProductionOnly,
        }
    }
}

/// A `CKPT_CHECKPOINT_TYPE_*` value taken as a `uint32_t` (the inverse of
/// `From<CheckpointType>`; a function, not `TryFrom`, because its error
/// type is crate-private).
pub(super) fn checkpoint_type_of(v: u32) -> FfiResult<CheckpointType> {
    CheckpointType::ALL
        .into_iter()
        .find(|&t| ckpt_checkpoint_type::from(t) as u32 == v)
        .ok_or_else(|| {
            FfiError::invalid(format!(
                "checkpoint type {v}: expected a CKPT_CHECKPOINT_TYPE_* value (1 to 4)"
            ))
        })
}

impl From<TakenType> for ckpt_taken_type {
    fn from(t: TakenType) -> Self {
        match t {
            TakenType::Standard => Self::Standard,
            TakenType::Production => Self::Production,
        }
    }
}

impl From<VmState> for ckpt_vm_state {
    fn from(s: VmState) -> Self {
        match s {
            VmState::Off => Self::Off,
            VmState::Running => Self::Running,
            VmState::Saved => Self::Saved,
        }
    }
}

/// A `CKPT_VM_STATE_*` value taken as a `uint32_t` (the inverse of
/// `From<VmState>`).
pub(super) fn vm_state_of(v: u32) -> FfiResult<VmState> {
    VmState::ALL
        .into_iter()
        .find(|&s| ckpt_vm_state::from(s) as u32 == v)
        .ok_or_else(|| {
            FfiError::invalid(format!(
                "state {v}: expected a CKPT_VM_STATE_* value (1 to 3)"
            ))
        })
}

/// Parameters of `ckpt_vm_create` (a versioned struct, used like
/// `ckpt_create_options`: set `struct_size` to `sizeof(ckpt_vm_spec)`,
/// everything else to 0 or NULL, then fill in what you need; 0 and NULL
/// take the default).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ckpt_vm_spec {
    /// `sizeof(ckpt_vm_spec)` as compiled by the caller.
    pub struct_size: u32,
    /// A `CKPT_CHECKPOINT_TYPE_*` value. 0: production.
    pub checkpoint_type: u32,
    /// The VM's name (required, not empty).
    pub name: *const c_char,
    /// `disk_count` paths of the VM's VHDX disks (each a base disk or a
    /// chain). NULL only when `disk_count` is 0.
    pub disks: *const *const c_char,
    /// Number of entries in `disks`.
    pub disk_count: usize,
    /// `passthrough_count` pass-through devices (host disks the VM uses
    /// directly; never checkpointed, recorded as skipped). NULL only when
    /// `passthrough_count` is 0.
    pub passthrough: *const *const c_char,
    /// Number of entries in `passthrough`.
    pub passthrough_count: usize,
    /// Memory in MiB. 0: 1024.
    pub memory_mib: u64,
    /// Virtual CPUs. 0: 1.
    pub cpus: u32,
    /// Must be 0.
    pub reserved: u32,
    /// Where configuration copies and memory state of checkpoints go.
    /// NULL: the folder `checkpoints` in the VM folder.
    pub checkpoint_location: *const c_char,
    /// The hypervisor's own settings, as a JSON text kept as it is (and
    /// restored by apply). NULL: none.
    pub hypervisor_json: *const c_char,
    /// Warn (in `ckpt_checkpoint_info.age_warning` and the JSON) about
    /// checkpoints older than this many seconds. 0: never.
    pub age_warning_seconds: u64,
}

/// Facts about an open VM, filled by `ckpt_vm_get_info` (a versioned output
/// struct, used like `ckpt_disk_info`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ckpt_vm_info {
    /// In: `sizeof(ckpt_vm_info)` as compiled by the caller. Out: the
    /// number of bytes the library wrote.
    pub struct_size: u32,
    /// Off, running or saved.
    pub state: ckpt_vm_state,
    /// The checkpoint setting.
    pub checkpoint_type: ckpt_checkpoint_type,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Number of disks, VHDX or VHD (see `ckpt_vm_current_disk_path`).
    pub disk_count: u32,
    /// Number of pass-through devices.
    pub passthrough_count: u32,
    /// Number of checkpoints, hidden branch points included (see
    /// `ckpt_vm_checkpoint_count`).
    pub checkpoint_count: u32,
    /// Whether the current state hangs under a checkpoint (one that is not
    /// hidden: the one `ckpt_vm_checkpoint_revert` goes back to).
    pub has_current_checkpoint: bool,
    /// Whether the current state has memory state to resume from (see
    /// `ckpt_vm_current_saved_state_path`).
    pub has_saved_state: bool,
    /// Whether a delete is pending: some checkpoint is being deleted
    /// (`ckpt_checkpoint_info.deleting`; a delete was cancelled or failed
    /// once its disks began to change, or a crash cut it and the open
    /// could not finish it). The next change to the VM finishes it first;
    /// deleting that checkpoint again finishes it now. Added in 0.2 (the
    /// byte was reserved, always 0, before).
    pub delete_pending: bool,
    /// The VM's role (`ckpt_vm_set_role`): `CKPT_VM_ROLE_NONE` (0),
    /// `CKPT_VM_ROLE_DOMAIN_CONTROLLER`, `CKPT_VM_ROLE_CLUSTER_MEMBER` or
    /// `CKPT_VM_ROLE_REPLICATED`. Added after 0.2.0 (the byte was reserved,
    /// always 0, before: an older library reports no role).
    pub role: u8,
    /// The age warning in seconds (0: none).
    pub age_warning_seconds: u64,
}

/// `ckpt_vm_info.role`: no role.
pub const CKPT_VM_ROLE_NONE: u8 = 0;
/// `ckpt_vm_info.role`: an Active Directory domain controller.
pub const CKPT_VM_ROLE_DOMAIN_CONTROLLER: u8 = 1;
/// `ckpt_vm_info.role`: a node of a failover cluster.
pub const CKPT_VM_ROLE_CLUSTER_MEMBER: u8 = 2;
/// `ckpt_vm_info.role`: a VM replicated to or from another host.
pub const CKPT_VM_ROLE_REPLICATED: u8 = 3;

/// One checkpoint, filled by `ckpt_vm_checkpoint_get` (a versioned output
/// struct, used like `ckpt_disk_info`). Its strings (name, id, fallback
/// reason, disk paths) come from the `ckpt_vm_checkpoint_*` getters with
/// the same index.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ckpt_checkpoint_info {
    /// In: `sizeof(ckpt_checkpoint_info)` as compiled by the caller. Out:
    /// the number of bytes the library wrote.
    pub struct_size: u32,
    /// The kind the checkpoint really is.
    pub taken: ckpt_taken_type,
    /// The kind the VM's setting asked for when it was taken.
    pub requested: ckpt_checkpoint_type,
    /// Number of frozen disks (see `ckpt_vm_checkpoint_disk_path`).
    pub disk_count: u32,
    /// The index of the parent checkpoint in the same list, or -1 for a
    /// root. Parents come before their children.
    pub parent_index: i64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Seconds since it was taken.
    pub age_seconds: u64,
    /// Bytes the differencing disks of the checkpoint use on the host.
    pub size_bytes: u64,
    /// Upper bound of the bytes deleting it would copy.
    pub delete_copy_bytes: u64,
    /// Files in the chain under its first disk (1 for a base disk).
    pub chain_depth: u32,
    /// Number of pass-through devices that were not checkpointed.
    pub skipped_passthrough_count: u32,
    /// A deleted branch point kept only because two or more states still
    /// read its disks; it has no name lookups and cannot be applied.
    pub hidden: bool,
    /// Whether it holds memory state.
    pub has_saved_state: bool,
    /// Whether it has a fallback reason (`taken` differs from what was
    /// asked for; see `ckpt_vm_checkpoint_fallback_reason`).
    pub has_fallback_reason: bool,
    /// Whether it is older than the VM's age warning.
    pub age_warning: bool,
    /// Whether it is the checkpoint the current state hangs under (the one
    /// revert goes back to; never a hidden one: after the checkpoint the
    /// current state hung under is deleted, that is its parent).
    pub is_current_parent: bool,
    /// Whether it is being deleted: a delete was cancelled or failed after
    /// its disks began to change, so they no longer hold its data. It can
    /// no longer be applied or exported (`CKPT_STATUS_BUSY`), and the next
    /// change to the VM (or `ckpt_vm_open`) finishes the delete first.
    pub deleting: bool,
    /// Always 0.
    pub reserved: [u8; 2],
}

// The layouts are ABI (on 64-bit targets, where the pointer-holding
// structs are measured).
const _: () = assert!(size_of::<ckpt_vm_info>() == 48);
const _: () = assert!(size_of::<ckpt_checkpoint_info>() == 72);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<ckpt_vm_spec>() == 88);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<ckpt_hooks>() == 56);
