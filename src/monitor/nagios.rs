//! The output of a Nagios / Icinga plugin, as the Monitoring Plugins
//! development guidelines define it:
//!
//! ```text
//! CKPT WARNING - web: checkpoint "before-update" is 1d 2h old (warning over 1d); 2 VMs, 3 checkpoints | 'web oldest_age'=93600s;86400;259200;0 ...
//! WARNING: web (/vms/web): checkpoint "before-update" is 1d 2h old (warning over 1d)
//! skipped /vms/lost: a symbolic link that cannot be followed: ...
//! ```
//!
//! The first line is the state, a summary and the performance data of every
//! VM readable (`'LABEL oldest_age'=Ns;WARN;CRIT;0`, `'LABEL size'=NB;…`,
//! `'LABEL depth'=N;…`, `'LABEL checkpoints'=N;;;0`); each further line
//! names a VM (or a checkpoint) over a threshold and why, an operation
//! under way, or a path a search skipped. The exit status is
//! [`State::code`](super::State::code) of [`Report::state`].

use super::eval::{Report, State, VmReport};
use super::text::{human_bytes, human_duration, one_line};

/// A performance data label: any character but `'`, `=` (and, to keep
/// naive parsers right, `|` and control characters), which become `_`.
fn label(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '\'' | '=' | '|') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The performance data of one VM (none for an unreadable folder).
fn perfdata(v: &VmReport, r: &Report, out: &mut Vec<String>) {
    let Some(f) = &v.facts else {
        return;
    };
    let t = &r.thresholds;
    let l = label(&v.label);
    out.push(format!(
        "'{l} oldest_age'={}s;{};{};0",
        v.oldest_age, v.warn_age, t.crit_age
    ));
    out.push(format!(
        "'{l} size'={}B;{};{};0",
        f.size_bytes, t.warn_size, t.crit_size
    ));
    out.push(format!(
        "'{l} depth'={};{};{};0",
        f.chain_depth, t.warn_depth, t.crit_depth
    ));
    out.push(format!("'{l} checkpoints'={};;;0", f.checkpoints.len()));
}

/// "1 VM" / "3 VMs".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The summary of the first line.
fn summary(r: &Report) -> String {
    let readable: Vec<_> = r.vms.iter().filter_map(|v| v.facts.as_ref()).collect();
    let checkpoints: usize = readable.iter().map(|f| f.checkpoints.len()).sum();
    let totals = format!(
        "{}, {}",
        count(r.vms.len(), "VM"),
        count(checkpoints, "checkpoint")
    );
    let problems: Vec<String> = r
        .findings
        .iter()
        .filter(|f| f.state != State::Ok && f.state == r.state)
        .map(|f| f.text.clone())
        .chain(r.vms.iter().flat_map(|v| {
            v.findings
                .iter()
                .filter(|f| f.state != State::Ok)
                .map(move |f| (v, f))
                .filter(|(_, f)| f.state == r.state)
                .map(|(v, f)| format!("{}: {}", v.name, f.text))
        }))
        .collect();
    let all_problems: usize = r
        .vms
        .iter()
        .map(|v| v.findings.iter().filter(|f| f.state != State::Ok).count())
        .sum::<usize>()
        + r.findings.iter().filter(|f| f.state != State::Ok).count();
    match problems.first() {
        Some(first) if all_problems > 1 => {
            format!(
                "{first} (and {} more, see below); {totals}",
                count(all_problems - 1, "problem")
            )
        }
        Some(first) => format!("{first}; {totals}"),
        None => {
            let oldest = r.vms.iter().max_by_key(|v| v.oldest_age);
            let size: u64 = readable.iter().map(|f| f.size_bytes).sum();
            let deepest = readable.iter().map(|f| f.chain_depth).max().unwrap_or(0);
            match oldest {
                Some(v) if checkpoints > 0 => format!(
                    "{totals}; oldest {} ({}), {} in differencing disks, deepest chain {deepest}",
                    human_duration(v.oldest_age),
                    v.name,
                    human_bytes(size)
                ),
                _ => format!("{totals}; no checkpoints"),
            }
        }
    }
}

/// The plugin output of `r`: the status line, then the long output, each
/// line ending in a newline.
pub fn nagios(r: &Report) -> String {
    let mut perf = Vec::new();
    for v in &r.vms {
        perfdata(v, r, &mut perf);
    }
    let mut s = format!("CKPT {} - {}", r.state.as_str(), one_line(&summary(r)));
    if !perf.is_empty() {
        s.push_str(" | ");
        s.push_str(&perf.join(" "));
    }
    s.push('\n');
    for f in &r.findings {
        s.push_str(&format!("{}: {}\n", f.state.as_str(), one_line(&f.text)));
    }
    for v in &r.vms {
        let who = if v.facts.is_some() {
            format!("{} ({})", v.name, v.folder.display())
        } else {
            v.folder.display().to_string()
        };
        for f in &v.findings {
            let state = match f.state {
                State::Ok => "INFO",
                s => s.as_str(),
            };
            s.push_str(&format!(
                "{state}: {}: {}\n",
                one_line(&who),
                one_line(&f.text)
            ));
        }
    }
    for k in &r.skipped {
        s.push_str(&format!(
            "skipped {}: {}\n",
            one_line(&k.path.display().to_string()),
            one_line(&k.reason)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_lose_what_the_grammar_forbids() {
        assert_eq!(label("it's a=b|c\nd"), "it_s a_b_c_d");
        assert_eq!(count(1, "VM"), "1 VM");
        assert_eq!(count(2, "VM"), "2 VMs");
    }
}
