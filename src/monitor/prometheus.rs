//! The report in the Prometheus text exposition format (version 0.0.4),
//! for node_exporter's textfile collector: one `# HELP` and `# TYPE` line
//! per metric family, then its samples; label values escaped (`\\`, `\"`,
//! `\n`). Every sample has the labels `folder` (the VM folder) and `vm`
//! (its name); a checkpoint's also `checkpoint` and `type`:
//!
//! - `ckpt_checkpoint_age_seconds`, `ckpt_checkpoint_size_bytes`,
//!   `ckpt_checkpoint_status` (its Nagios state, 0–3);
//! - `ckpt_vm_chain_depth`, `ckpt_vm_checkpoints`,
//!   `ckpt_vm_differencing_bytes`, `ckpt_vm_pending_operation` (1 while a
//!   journal exists: an operation under way or interrupted),
//!   `ckpt_vm_status` (the VM's state, 0–3; an unreadable folder has only
//!   this one, 3), `ckpt_vm_info` (1, with the label `role`);
//! - `ckpt_monitor_skipped_paths`: what a search skipped.

use std::fmt::Write;

use super::eval::{Report, VmReport};

/// A label value escaped: backslash, double quote and newline.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{folder="…",vm="…"}` plus `extra` pairs.
fn labels(v: &VmReport, extra: &[(&str, &str)]) -> String {
    let mut s = format!(
        "{{folder=\"{}\",vm=\"{}\"",
        escape(&v.folder.display().to_string()),
        escape(&v.name)
    );
    for (k, val) in extra {
        let _ = write!(s, ",{k}=\"{}\"", escape(val));
    }
    s.push('}');
    s
}

/// One metric family: HELP, TYPE (gauge) and its samples.
fn family(out: &mut String, name: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The metrics of `r`.
pub fn prometheus(r: &Report) -> String {
    let mut age = Vec::new();
    let mut size = Vec::new();
    let mut cstatus = Vec::new();
    let (mut depth, mut count, mut bytes, mut pending, mut status, mut info) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for v in &r.vms {
        status.push((labels(v, &[]), v.state.code() as u64));
        let Some(f) = &v.facts else {
            continue;
        };
        for c in &v.checkpoints {
            let l = labels(
                v,
                &[
                    ("checkpoint", &c.facts.name),
                    ("type", c.facts.taken.as_str()),
                ],
            );
            age.push((l.clone(), c.age_seconds));
            size.push((l.clone(), c.facts.size_bytes));
            cstatus.push((l, c.state.code() as u64));
        }
        let l = labels(v, &[]);
        depth.push((l.clone(), u64::from(f.chain_depth)));
        count.push((l.clone(), f.checkpoints.len() as u64));
        bytes.push((l.clone(), f.size_bytes));
        pending.push((l, u64::from(f.operation.is_some())));
        let role = f.role.map_or("none", |r| r.as_str());
        info.push((labels(v, &[("role", role)]), 1));
    }
    let mut out = String::new();
    family(
        &mut out,
        "ckpt_checkpoint_age_seconds",
        "Seconds since the checkpoint was taken.",
        &age,
    );
    family(
        &mut out,
        "ckpt_checkpoint_size_bytes",
        "Bytes the checkpoint's own differencing disks use on the host.",
        &size,
    );
    family(
        &mut out,
        "ckpt_checkpoint_status",
        "The checkpoint's monitoring state: 0 OK, 1 WARNING, 2 CRITICAL.",
        &cstatus,
    );
    family(
        &mut out,
        "ckpt_vm_chain_depth",
        "Layers of the VM's deepest disk chain (1: no checkpoint above the base).",
        &depth,
    );
    family(
        &mut out,
        "ckpt_vm_checkpoints",
        "Number of checkpoints of the VM.",
        &count,
    );
    family(
        &mut out,
        "ckpt_vm_differencing_bytes",
        "Bytes all differencing disks of the VM's checkpoint tree use on the host.",
        &bytes,
    );
    family(
        &mut out,
        "ckpt_vm_pending_operation",
        "1 while the VM has the journal of an operation under way or interrupted.",
        &pending,
    );
    family(
        &mut out,
        "ckpt_vm_status",
        "The VM's monitoring state: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        &status,
    );
    family(
        &mut out,
        "ckpt_vm_info",
        "The VM's role (none, domain-controller, cluster-member, replicated).",
        &info,
    );
    family(
        &mut out,
        "ckpt_monitor_skipped_paths",
        "Paths a recursive search could not read and skipped.",
        &[(String::new(), r.skipped.len() as u64)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
