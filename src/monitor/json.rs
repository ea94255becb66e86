//! The report as one JSON object (`ckpt monitor --format json`):
//!
//! ```json
//! {"state": "WARNING", "exit_code": 1, "now": 1700000000,
//!  "thresholds": {"warn_age_seconds": null, "crit_age_seconds": 259200,
//!                 "warn_size_bytes": 53687091200, "crit_size_bytes": 214748364800,
//!                 "warn_depth": 8, "crit_depth": 16, "operation_timeout_seconds": 3600},
//!  "vms": [{"folder": "/vms/web", "name": "web", "state": "WARNING", "readable": true,
//!           "role": null, "warn_age_seconds": 86400, "oldest_age_seconds": 93600,
//!           "size_bytes": 4194304, "chain_depth": 2, "checkpoint_count": 1,
//!           "pending_operation": null,
//!           "checkpoints": [{"name": "a", "id": "…", "type": "production",
//!                            "created": 1699906400, "age_seconds": 93600,
//!                            "size_bytes": 0, "chain_depth": 1, "state": "WARNING",
//!                            "warnings": [], "deleting": false}],
//!           "findings": [{"state": "WARNING", "text": "checkpoint \"a\" is …"}]}],
//!  "findings": [], "skipped": [{"path": "/vms/lost", "reason": "…"}]}
//! ```
//!
//! `pending_operation` is null or `{"op": "create", "since": …, "under_way":
//! bool}`; an unreadable folder has `"readable": false` and only its
//! findings.

use serde_json::{json, Value};

use super::eval::{Finding, Report, VmReport};

fn findings(f: &[Finding]) -> Value {
    f.iter()
        .map(|f| json!({"state": f.state.as_str(), "text": f.text}))
        .collect()
}

fn vm(v: &VmReport) -> Value {
    let mut o = json!({
        "folder": v.folder.display().to_string(),
        "name": v.name,
        "state": v.state.as_str(),
        "readable": v.facts.is_some(),
        "findings": findings(&v.findings),
    });
    if let Some(f) = &v.facts {
        o["role"] = json!(f.role.map(|r| r.as_str()));
        o["warn_age_seconds"] = json!(v.warn_age);
        o["oldest_age_seconds"] = json!(v.oldest_age);
        o["size_bytes"] = json!(f.size_bytes);
        o["chain_depth"] = json!(f.chain_depth);
        o["checkpoint_count"] = json!(f.checkpoints.len());
        o["pending_operation"] = f.operation.as_ref().map_or(
            Value::Null,
            |op| json!({"op": op.op, "since": op.since, "under_way": op.under_way}),
        );
        o["checkpoints"] = v
            .checkpoints
            .iter()
            .map(|c| {
                json!({
                    "name": c.facts.name,
                    "id": c.facts.id,
                    "type": c.facts.taken.as_str(),
                    "created": c.facts.created,
                    "age_seconds": c.age_seconds,
                    "size_bytes": c.facts.size_bytes,
                    "chain_depth": c.facts.chain_depth,
                    "state": c.state.as_str(),
                    "warnings": c.facts.warnings,
                    "deleting": c.facts.deleting,
                })
            })
            .collect();
    }
    o
}

/// The report of `r` as JSON.
pub fn json(r: &Report) -> Value {
    let t = &r.thresholds;
    json!({
        "state": r.state.as_str(),
        "exit_code": r.state.code(),
        "now": r.now,
        "thresholds": {
            "warn_age_seconds": t.warn_age,
            "crit_age_seconds": t.crit_age,
            "warn_size_bytes": t.warn_size,
            "crit_size_bytes": t.crit_size,
            "warn_depth": t.warn_depth,
            "crit_depth": t.crit_depth,
            "operation_timeout_seconds": t.operation_timeout,
        },
        "vms": r.vms.iter().map(vm).collect::<Vec<_>>(),
        "findings": findings(&r.findings),
        "skipped": r.skipped.iter().map(|k| json!({
            "path": k.path.display().to_string(),
            "reason": k.reason,
        })).collect::<Vec<_>>(),
    })
}
