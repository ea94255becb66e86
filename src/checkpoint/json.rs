//! The JSON views of a VM and of its checkpoint tree: the one place that
//! builds them, for the CLI (`vm show --json`, `checkpoint list --json`)
//! and the C API (`ckpt_vm_show_json`, `ckpt_vm_checkpoints_json`).
//!
//! Paths are absolute. Times are seconds since the Unix epoch.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::checkpoint::model::VmFile;
use crate::checkpoint::report::list_of;
use crate::error::Result;

/// `p` as an absolute path (relative paths are taken from the current
/// directory; if that is unknown, `p` is kept as it is).
fn abs(p: &Path) -> PathBuf {
    crate::disk::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn path_value(p: &Path) -> Value {
    Value::String(abs(p).to_string_lossy().into_owned())
}

fn opt_path_value(p: Option<&Path>) -> Value {
    p.map_or(Value::Null, path_value)
}

/// The VM as `vm show --json` prints it:
///
/// ```json
/// {"name": "web", "state": "off", "memory_mib": 1024, "cpus": 2,
///  "checkpoint_type": "production", "checkpoint_location": null,
///  "age_warning_seconds": null, "role": null,
///  "current_checkpoint": "before-upgrade",
///  "current_checkpoint_id": "…", "saved_state": null,
///  "disks": [{"path": "/vms/web/os_….avhdx", "base": "/vms/web/os.vhdx"}],
///  "passthrough": ["/dev/sdb"], "hypervisor": {…},
///  "settings": {"checkpoint_type": "production", "checkpoint_location": null,
///               "age_warning_seconds": null, "role": null}}
/// ```
///
/// `disks[].path` is the file the VM writes to now; `base` is the disk the
/// VM was created with. `current_checkpoint` is the name of the checkpoint
/// the current state hangs under, the one revert goes back to: never a
/// hidden one nor one being deleted, but the nearest checkpoint above them
/// (null when there is none);
/// `checkpoint_location` null means the default, `checkpoints` in the VM
/// folder; `role` is `"domain-controller"`, `"cluster-member"`,
/// `"replicated"` or null. `pending_removals` lists old disks a committed apply could not
/// remove because they were held (removed by the next open once free).
pub fn vm_json(data: &VmFile) -> Value {
    let current = data.current_checkpoint();
    let disks: Vec<Value> = data
        .current
        .disks
        .iter()
        .enumerate()
        .map(|(k, p)| {
            json!({
                "path": path_value(p),
                "base": opt_path_value(data.disks.get(k).map(PathBuf::as_path)),
            })
        })
        .collect();
    let s = &data.settings;
    let settings = json!({
        "checkpoint_type": s.checkpoint_type.as_str(),
        "checkpoint_location": opt_path_value(s.checkpoint_location.as_deref()),
        "age_warning_seconds": s.age_warning_seconds,
        "role": s.role.map(|r| r.as_str()),
    });
    json!({
        "name": data.config.name,
        "state": data.state.as_str(),
        "memory_mib": data.config.memory_mib,
        "cpus": data.config.cpus,
        "checkpoint_type": s.checkpoint_type.as_str(),
        "checkpoint_location": opt_path_value(s.checkpoint_location.as_deref()),
        "age_warning_seconds": s.age_warning_seconds,
        "role": s.role.map(|r| r.as_str()),
        "current_checkpoint": current.map(|c| c.name.as_str()),
        "current_checkpoint_id": current.map(|c| c.id.as_str()),
        "saved_state": opt_path_value(data.current.saved_state.as_deref()),
        "disks": disks,
        "passthrough": data.config.passthrough,
        "hypervisor": data.config.hypervisor,
        "settings": settings,
        "pending_removals": data.pending_removals.iter().map(|p| path_value(p)).collect::<Vec<_>>(),
    })
}

/// The reference points as `checkpoint references --json` prints them:
///
/// ```json
/// {"references": [{"name": "nightly", "id": "…", "type": "production",
///    "created": 1700000000, "converted": 1700000100, "age_seconds": 12,
///    "map_bytes": 65536, "anchors": ["/vms/web/os.vhdx"]}]}
/// ```
///
/// `created` is when the checkpoint was taken, `converted` when it became
/// a reference point; `map_bytes` what its change maps hold (the changes
/// merged into the anchors since); `anchors` the files its changes are
/// read from, per disk (null: lost, every byte counts as changed).
pub fn references_json(data: &VmFile) -> Result<Value> {
    let list: Vec<Value> = crate::checkpoint::backup::references_of(&data.references)?
        .into_iter()
        .map(|v| {
            let r = &v.reference;
            json!({
                "name": r.name,
                "id": r.id,
                "type": r.taken.as_str(),
                "created": r.created,
                "converted": r.converted,
                "age_seconds": v.age_seconds,
                "map_bytes": v.map_bytes,
                "anchors": r.disks.iter().map(|d| opt_path_value(d.anchor.as_deref())).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "references": list }))
}

/// The checkpoint tree as `checkpoint list --json` prints it:
///
/// ```json
/// {"checkpoints": [{"name": "a", "id": "…", "parent": null,
///    "type": "production", "requested_type": "production",
///    "fallback_reason": null, "created": 1700000000, "age_seconds": 12,
///    "age_warning": false, "size_bytes": 4096, "chain_depth": 1,
///    "delete_copy_bytes": 0, "saved_state": null,
///    "disks": ["/vms/web/os.vhdx"], "skipped_passthrough": [],
///    "hidden": false, "deleting": false, "memory_kept": false,
///    "vm_state": "off", "warnings": []}],
///  "current": {"parent": "…", "disks": ["…"], "saved_state": null}}
/// ```
///
/// `current.parent` is the id of the checkpoint the current state hangs
/// under, as in [`vm_json`] (never a hidden checkpoint).
/// `"deleting": true` marks a checkpoint whose delete was cancelled or
/// failed after its disks began to change: it can no longer be applied or
/// exported, and the next operation on the VM finishes the delete.
///
/// Checkpoints come parents first; `parent` is the parent's `id`; hidden
/// checkpoints (deleted branch points kept for their disks) are listed
/// with `"hidden": true`. `type` is what the checkpoint really is,
/// `requested_type` what the VM's setting asked for, and
/// `fallback_reason` why they differ. `memory_kept` says whether it kept
/// memory state (a standard checkpoint of a running VM whose hypervisor
/// handed over none did not), `vm_state` the VM's state when it was taken
/// (`"off"`, `"running"`, `"saved"`; null for checkpoints recorded before
/// it was kept). `warnings` are those recorded when it was taken (the VM's
/// role: why applying it is risky).
pub fn checkpoints_json(data: &VmFile) -> Result<Value> {
    let list: Vec<Value> = list_of(data)?
        .into_iter()
        .map(|v| {
            let c = &v.checkpoint;
            json!({
                "name": c.name,
                "id": c.id,
                "parent": c.parent,
                "type": c.taken.as_str(),
                "requested_type": c.requested.as_str(),
                "fallback_reason": c.fallback_reason,
                "created": c.created,
                "age_seconds": v.age_seconds,
                "age_warning": v.age_warning,
                "size_bytes": v.size_bytes,
                "chain_depth": v.chain_depth,
                "delete_copy_bytes": v.delete_copy_bytes,
                "saved_state": opt_path_value(c.saved_state.as_deref()),
                "disks": c.disks.iter().map(|p| path_value(p)).collect::<Vec<_>>(),
                "skipped_passthrough": c.skipped_passthrough,
                "hidden": c.hidden,
                "deleting": c.deleting,
                "memory_kept": c.memory_kept(),
                "vm_state": c.vm_state.map(|s| s.as_str()),
                "warnings": c.warnings,
            })
        })
        .collect();
    Ok(json!({
        "checkpoints": list,
        "current": {
            "parent": data.current_checkpoint().map(|c| c.id.as_str()),
            "disks": data.current.disks.iter().map(|p| path_value(p)).collect::<Vec<_>>(),
            "saved_state": opt_path_value(data.current.saved_state.as_deref()),
        },
    }))
}

/// The files an export made (as [`Vm::export`](crate::checkpoint::Vm::export)
/// returns them: `disk_count` disks, then the configuration, then the
/// memory state if any), for `ckpt_vm_export_files_json`:
///
/// ```json
/// {"files": [{"path": "/out/os.vhdx", "kind": "disk", "disk_index": 0},
///            {"path": "/out/config.json", "kind": "config"},
///            {"path": "/out/memory.vmrs", "kind": "memory"}]}
/// ```
pub fn export_json(files: &[PathBuf], disk_count: usize) -> Value {
    let list: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(k, p)| {
            if k < disk_count {
                json!({"path": path_value(p), "kind": "disk", "disk_index": k})
            } else if k == disk_count {
                json!({"path": path_value(p), "kind": "config"})
            } else {
                json!({"path": path_value(p), "kind": "memory"})
            }
        })
        .collect();
    json!({ "files": list })
}

/// A compaction's report as JSON (`ckpt compact --json`, `ckpt vm compact
/// --json`, the control channel's `vm.compact`).
pub fn compact_report_json(r: &crate::CompactReport) -> Value {
    json!({
        "mode": r.mode.as_str(),
        "blocks_freed": r.blocks_freed,
        "blocks_moved": r.blocks_moved,
        "bytes_moved": r.bytes_moved,
        "bytes_before": r.bytes_before,
        "bytes_after": r.bytes_after,
    })
}

/// The report [`compact_report_json`] made (a control reply).
pub fn compact_report_of(v: &Value) -> Result<crate::CompactReport> {
    let bad =
        || crate::Error::InvalidArgument(format!("control reply: not a compaction report: {v}"));
    let n = |k: &str| v[k].as_u64().ok_or_else(bad);
    Ok(crate::CompactReport {
        mode: v["mode"]
            .as_str()
            .and_then(crate::CompactMode::parse)
            .ok_or_else(bad)?,
        blocks_freed: n("blocks_freed")?,
        blocks_moved: n("blocks_moved")?,
        bytes_moved: n("bytes_moved")?,
        bytes_before: n("bytes_before")?,
        bytes_after: n("bytes_after")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::model::{
        Checkpoint, CheckpointType, Current, Settings, TakenType, VmConfig, VmState,
    };

    fn sample() -> VmFile {
        VmFile {
            version: 1,
            config: VmConfig {
                name: "web".into(),
                memory_mib: 2048,
                cpus: 2,
                passthrough: vec!["/dev/sdz".into()],
                hypervisor: json!({"secure_boot": true}),
            },
            disks: vec![PathBuf::from("/vms/os.vhdx")],
            settings: Settings {
                checkpoint_type: CheckpointType::ProductionOnly,
                checkpoint_location: None,
                age_warning_seconds: Some(3600),
                role: None,
            },
            state: VmState::Saved,
            current: Current {
                parent: Some("id-a".into()),
                disks: vec![PathBuf::from("rel/os_x.avhdx")],
                saved_state: None,
            },
            checkpoints: vec![Checkpoint {
                id: "id-a".into(),
                name: "a".into(),
                parent: None,
                created: 1,
                taken: TakenType::Standard,
                requested: CheckpointType::Production,
                fallback_reason: Some("quiesce failed: no agent".into()),
                disks: vec![PathBuf::from("/vms/os.vhdx")],
                skipped_passthrough: vec!["/dev/sdz".into()],
                config_file: None,
                saved_state: Some(PathBuf::from("/vms/checkpoints/id-a.vmrs")),
                hidden: false,
                deleting: false,
                vm_state: Some(VmState::Running),
                warnings: Vec::new(),
            }],
            past_checkpoint_locations: Vec::new(),
            id: None,
            folder: None,
            related_vms: Vec::new(),
            pending_removals: Vec::new(),
            references: Vec::new(),
        }
    }

    #[test]
    fn vm_fields() {
        let v = vm_json(&sample());
        assert_eq!(v["name"], "web");
        assert_eq!(v["state"], "saved");
        assert_eq!(v["memory_mib"], 2048);
        assert_eq!(v["cpus"], 2);
        assert_eq!(v["checkpoint_type"], "production-only");
        assert_eq!(v["settings"]["age_warning_seconds"], 3600);
        assert_eq!(v["current_checkpoint"], "a");
        assert_eq!(v["disks"][0]["base"], "/vms/os.vhdx");
        // Relative paths come out absolute.
        let p = v["disks"][0]["path"].as_str().unwrap();
        assert!(p.starts_with('/') && p.ends_with("rel/os_x.avhdx"), "{p}");
        assert_eq!(v["hypervisor"]["secure_boot"], true);
    }

    #[test]
    fn checkpoint_fields() {
        let v = checkpoints_json(&sample()).unwrap();
        let c = &v["checkpoints"][0];
        assert_eq!(c["name"], "a");
        assert_eq!(c["id"], "id-a");
        assert_eq!(c["parent"], Value::Null);
        assert_eq!(c["type"], "standard");
        assert_eq!(c["requested_type"], "production");
        assert_eq!(c["fallback_reason"], "quiesce failed: no agent");
        assert_eq!(c["saved_state"], "/vms/checkpoints/id-a.vmrs");
        assert_eq!(c["skipped_passthrough"][0], "/dev/sdz");
        assert_eq!(c["hidden"], false);
        assert_eq!(c["memory_kept"], true);
        assert_eq!(c["vm_state"], "running");
        assert!(c["age_seconds"].as_u64().unwrap() > 1000);
        assert_eq!(c["age_warning"], true);
        assert_eq!(v["current"]["parent"], "id-a");
    }
}
