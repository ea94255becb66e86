//! Judging the facts: [`evaluate`] gives each checkpoint, each VM and the
//! whole check a [`State`], with the findings that say why. A pure
//! function of the facts, the thresholds and "now".

use std::collections::HashMap;
use std::path::PathBuf;

use super::facts::{CheckpointFacts, Found, Scan, Skipped, VmFacts};
use super::text::{human_bytes, human_duration};

/// The default age warning (24 hours) of a VM that has none of its own,
/// when no `--warn-age` is given.
pub const DEFAULT_WARN_AGE: u64 = 24 * 3600;

/// A Nagios plugin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// All is well (exit status 0).
    Ok,
    /// Over a warning threshold, or a risky checkpoint (1).
    Warning,
    /// Over a critical threshold (2).
    Critical,
    /// The state cannot be known: a VM folder that cannot be read, an
    /// interrupted operation, a lock held too long (3).
    Unknown,
}

impl State {
    /// The plugin's exit status: 0, 1, 2 or 3.
    pub fn code(self) -> i32 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }
    /// "OK", "WARNING", "CRITICAL" or "UNKNOWN".
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
    /// How bad, for combining states: CRITICAL over WARNING over UNKNOWN
    /// over OK (the order of the Monitoring Plugins' `max_state_alt`).
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Unknown => 1,
            State::Warning => 2,
            State::Critical => 3,
        }
    }
    /// The worse of two states.
    pub fn worst(self, other: State) -> State {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

/// When a checkpoint, a VM or an operation is reported. A value is over a
/// threshold when it is strictly greater (the plugin guidelines' range
/// `0:N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds {
    /// Checkpoint age for WARNING, seconds; None: each VM's own age
    /// warning, else [`DEFAULT_WARN_AGE`].
    pub warn_age: Option<u64>,
    /// Checkpoint age for CRITICAL, seconds.
    pub crit_age: u64,
    /// Bytes of a VM's differencing disks for WARNING.
    pub warn_size: u64,
    /// Bytes of a VM's differencing disks for CRITICAL.
    pub crit_size: u64,
    /// Deepest chain of a VM (layers) for WARNING.
    pub warn_depth: u32,
    /// Deepest chain of a VM (layers) for CRITICAL.
    pub crit_depth: u32,
    /// How long an operation may hold a VM's lock before it is UNKNOWN
    /// (a lock held too long), seconds.
    pub operation_timeout: u64,
}

impl Default for Thresholds {
    /// 24h (or the VM's own) / 72h, 50 GiB / 200 GiB, 8 / 16 layers, 1h.
    fn default() -> Thresholds {
        Thresholds {
            warn_age: None,
            crit_age: 72 * 3600,
            warn_size: 50 << 30,
            crit_size: 200 << 30,
            warn_depth: 8,
            crit_depth: 16,
            operation_timeout: 3600,
        }
    }
}

/// One reason for a state, as a line of long output says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The state it gives (OK for a note, such as an operation under way).
    pub state: State,
    /// What, in one sentence, without the VM's name.
    pub text: String,
}

/// A checkpoint judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Its facts.
    pub facts: CheckpointFacts,
    /// Seconds since it was taken.
    pub age_seconds: u64,
    /// Its state.
    pub state: State,
}

/// A VM judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmReport {
    /// The folder.
    pub folder: PathBuf,
    /// The VM's name (an unreadable folder: its file name).
    pub name: String,
    /// The name performance data uses for it: its name, or its folder when
    /// two VMs checked have the same name.
    pub label: String,
    /// Its state: the worst of its findings.
    pub state: State,
    /// Its facts (None: the folder cannot be read).
    pub facts: Option<VmFacts>,
    /// Its visible checkpoints.
    pub checkpoints: Vec<CheckpointReport>,
    /// Why it has its state, worst first.
    pub findings: Vec<Finding>,
    /// The age warning applied to it, seconds.
    pub warn_age: u64,
    /// The age of its oldest checkpoint (0 without any).
    pub oldest_age: u64,
}

/// The whole check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The worst state of all VMs (UNKNOWN when none was found).
    pub state: State,
    /// The thresholds applied.
    pub thresholds: Thresholds,
    /// "Now", seconds since the Unix epoch.
    pub now: u64,
    /// Every VM, in the order found.
    pub vms: Vec<VmReport>,
    /// What a search skipped.
    pub skipped: Vec<Skipped>,
    /// Findings about the check itself (a search that found no VM).
    pub findings: Vec<Finding>,
}

/// `"name"` quoted for a finding.
fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// Judge what [`super::scan`] found against `t`, at time `now`.
pub fn evaluate(scan: Scan, t: &Thresholds, now: u64) -> Report {
    let mut names: HashMap<String, usize> = HashMap::new();
    for f in &scan.vms {
        if let Found::Vm(v) = f {
            *names.entry(v.name.clone()).or_default() += 1;
        }
    }
    let mut vms: Vec<VmReport> = scan
        .vms
        .into_iter()
        .map(|f| match f {
            Found::Vm(v) => judge_vm(v, t, now),
            Found::Unreadable { folder, error } => {
                let name = folder
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| folder.display().to_string());
                VmReport {
                    label: folder.display().to_string(),
                    name,
                    folder,
                    state: State::Unknown,
                    facts: None,
                    checkpoints: Vec::new(),
                    findings: vec![Finding {
                        state: State::Unknown,
                        text: error,
                    }],
                    warn_age: t.warn_age.unwrap_or(DEFAULT_WARN_AGE),
                    oldest_age: 0,
                }
            }
        })
        .collect();
    for v in &mut vms {
        if v.facts.is_some() && names.get(&v.name).copied().unwrap_or(0) > 1 {
            v.label = v.folder.display().to_string();
        }
    }
    let mut findings = Vec::new();
    for p in &scan.empty {
        findings.push(Finding {
            state: State::Unknown,
            text: format!("no VM folder found in {}", p.display()),
        });
    }
    let mut state = if vms.is_empty() {
        State::Unknown
    } else {
        State::Ok
    };
    for s in vms
        .iter()
        .map(|v| v.state)
        .chain(findings.iter().map(|f| f.state))
    {
        state = state.worst(s);
    }
    Report {
        state,
        thresholds: t.clone(),
        now,
        vms,
        skipped: scan.skipped,
        findings,
    }
}

/// Judge one readable VM.
fn judge_vm(v: VmFacts, t: &Thresholds, now: u64) -> VmReport {
    let warn_age = t
        .warn_age
        .or(v.age_warning_seconds)
        .unwrap_or(DEFAULT_WARN_AGE);
    let mut findings = Vec::new();
    let mut checkpoints = Vec::new();
    // Warnings of risky checkpoints, with the checkpoints that have them.
    let mut warned: Vec<(String, Vec<String>)> = Vec::new();
    for c in &v.checkpoints {
        let age = now.saturating_sub(c.created);
        let mut state = State::Ok;
        let mut own = Vec::new();
        let mut add = |s: State, text: String| own.push(Finding { state: s, text });
        let name = quoted(&c.name);
        if age > t.crit_age {
            add(
                State::Critical,
                format!(
                    "checkpoint {name} is {} old (critical over {})",
                    human_duration(age),
                    human_duration(t.crit_age)
                ),
            );
        } else if age > warn_age {
            add(
                State::Warning,
                format!(
                    "checkpoint {name} is {} old (warning over {})",
                    human_duration(age),
                    human_duration(warn_age)
                ),
            );
        }
        // Risky checkpoints: one finding per warning, naming them all.
        let risky: Vec<String> = if c.warnings.is_empty() {
            v.role
                .map(|r| r.checkpoint_warning().to_string())
                .into_iter()
                .collect()
        } else {
            c.warnings.clone()
        };
        for w in risky {
            state = State::Warning;
            match warned.iter_mut().find(|(text, _)| *text == w) {
                Some((_, names)) => names.push(name.clone()),
                None => warned.push((w, vec![name.clone()])),
            }
        }
        if c.deleting {
            add(
                State::Warning,
                format!(
                    "checkpoint {name} is being deleted (the delete was interrupted): the next \
                     change to the VM finishes it"
                ),
            );
        }
        let state = own.iter().fold(state, |s, f| s.worst(f.state));
        findings.extend(own);
        checkpoints.push(CheckpointReport {
            facts: c.clone(),
            age_seconds: age,
            state,
        });
    }
    for (text, names) in warned {
        let which = match names.as_slice() {
            [one] => format!("checkpoint {one}"),
            many => format!("checkpoints {}", many.join(", ")),
        };
        findings.push(Finding {
            state: State::Warning,
            text: format!("{which}: {text}"),
        });
    }
    let over = |value: u64, warn: u64, crit: u64| {
        if value > crit {
            Some((State::Critical, "critical", crit))
        } else if value > warn {
            Some((State::Warning, "warning", warn))
        } else {
            None
        }
    };
    if let Some((s, word, limit)) = over(v.size_bytes, t.warn_size, t.crit_size) {
        findings.push(Finding {
            state: s,
            text: format!(
                "its differencing disks use {} ({word} over {})",
                human_bytes(v.size_bytes),
                human_bytes(limit)
            ),
        });
    }
    let depth = u64::from(v.chain_depth);
    if let Some((s, word, limit)) = over(depth, t.warn_depth.into(), t.crit_depth.into()) {
        findings.push(Finding {
            state: s,
            text: format!("its deepest disk chain has {depth} layers ({word} over {limit})"),
        });
    }
    if let Some(op) = &v.operation {
        let what = op.op.as_deref().unwrap_or("an unreadable journal's");
        let held = now.saturating_sub(op.since);
        let (state, text) = if !op.under_way {
            (
                State::Unknown,
                format!(
                    "a {what} operation was interrupted (its journal is {} old): the next change \
                     to the VM (or opening it) finishes or undoes it",
                    human_duration(held)
                ),
            )
        } else if held > t.operation_timeout {
            (
                State::Unknown,
                format!(
                    "a {what} operation has held the VM's lock for {} (over {}): it may be hung",
                    human_duration(held),
                    human_duration(t.operation_timeout)
                ),
            )
        } else {
            (
                State::Ok,
                format!(
                    "a {what} operation is under way (for {})",
                    human_duration(held)
                ),
            )
        };
        findings.push(Finding { state, text });
    }
    // Worst first; equal states keep their order.
    findings.sort_by_key(|f| std::cmp::Reverse(f.state.rank()));
    let state = findings.iter().fold(State::Ok, |s, f| s.worst(f.state));
    let oldest_age = checkpoints.iter().map(|c| c.age_seconds).max().unwrap_or(0);
    VmReport {
        folder: v.folder.clone(),
        name: v.name.clone(),
        label: v.name.clone(),
        state,
        facts: Some(v),
        checkpoints,
        findings,
        warn_age,
        oldest_age,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::TakenType;

    fn vm(created: &[u64]) -> VmFacts {
        VmFacts {
            folder: PathBuf::from("/vms/a"),
            name: "a".into(),
            role: None,
            age_warning_seconds: None,
            checkpoints: created
                .iter()
                .enumerate()
                .map(|(k, &c)| CheckpointFacts {
                    name: format!("c{k}"),
                    id: format!("id{k}"),
                    created: c,
                    taken: TakenType::Production,
                    size_bytes: 0,
                    chain_depth: k as u32 + 1,
                    warnings: Vec::new(),
                    deleting: false,
                })
                .collect(),
            size_bytes: 0,
            chain_depth: created.len() as u32 + 1,
            operation: None,
        }
    }

    fn state_at(v: VmFacts, t: &Thresholds, now: u64) -> State {
        evaluate(
            Scan {
                vms: vec![Found::Vm(v)],
                ..Default::default()
            },
            t,
            now,
        )
        .state
    }

    /// Age crosses the thresholds at exactly warn + 1 and crit + 1; the
    /// VM's own age warning is the default, `--warn-age` wins over it.
    #[test]
    fn ages_cross() {
        let t = Thresholds::default();
        let h = 3600;
        assert_eq!(state_at(vm(&[0]), &t, 24 * h), State::Ok);
        assert_eq!(state_at(vm(&[0]), &t, 24 * h + 1), State::Warning);
        assert_eq!(state_at(vm(&[0]), &t, 72 * h + 1), State::Critical);
        let mut own = vm(&[0]);
        own.age_warning_seconds = Some(h);
        assert_eq!(state_at(own.clone(), &t, h + 1), State::Warning);
        let given = Thresholds {
            warn_age: Some(2 * h),
            ..Thresholds::default()
        };
        assert_eq!(state_at(own, &given, h + 1), State::Ok);
        // A clock before the checkpoint: age 0.
        assert_eq!(state_at(vm(&[100]), &t, 0), State::Ok);
    }

    #[test]
    fn states_combine() {
        use State::*;
        assert_eq!(Ok.worst(Unknown), Unknown);
        assert_eq!(Unknown.worst(Warning), Warning);
        assert_eq!(Critical.worst(Unknown), Critical);
        assert_eq!(
            [Ok, Warning, Critical, Unknown].map(State::code),
            [0, 1, 2, 3]
        );
        let r = evaluate(Scan::default(), &Thresholds::default(), 0);
        assert_eq!(r.state, Unknown);
    }
}
