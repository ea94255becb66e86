//! `ckpt monitor`: every plugin state with its exit status and a first
//! line checked against the Monitoring Plugins guidelines' grammar (a
//! regular expression of it: Debian's monitoring-plugins ship plugins,
//! not a parser of their output); thresholds crossed as checkpoints age
//! (the hidden `--now` clock) and as disks grow and chains deepen; the
//! Prometheus exposition judged by `promtool check metrics` (package
//! `prometheus`; a missing promtool fails under CI=true); the JSON shape;
//! a recursive search past folders it cannot read; operations under way
//! or interrupted; and VM roles, whose checkpoints warn.

#![cfg(feature = "cli")]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use regex::Regex;
use serde_json::Value;

use ckpt::checkpoint::{NoHooks, Vm, VmSpec};
use ckpt::io::{faults, Cut};
use ckpt::{CreateOptions, Disk, OpenMode};

use support::cli::{ckpt, ok, run, stderr, stdout};
use support::{require_tool, tempdir, MIB};

// ------------------------------------------------------------------ helpers

/// A VM folder `root/name` whose one 64 MiB disk lies inside it.
fn new_vm(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("os.vhdx");
    Disk::create(&disk, &CreateOptions::new(64 * MIB))
        .unwrap()
        .close()
        .unwrap();
    Vm::create(&dir, &VmSpec::new(name, vec![disk])).unwrap();
    dir
}

/// Take checkpoint `name` of the VM in `dir`; its creation time.
fn checkpoint(dir: &Path, name: &str) -> u64 {
    let mut vm = Vm::open(dir).unwrap();
    vm.create_checkpoint(name, None, &mut NoHooks)
        .unwrap()
        .created
}

/// Write `len` bytes of 0x5a at `offset` into the VM's current disk 0.
fn grow(dir: &Path, offset: u64, len: usize) {
    let cur = Vm::load(dir).unwrap().current.disks[0].clone();
    let d = Disk::open(&cur, OpenMode::ReadWrite).unwrap();
    d.write_at(&vec![0x5a; len], offset).unwrap();
    d.close().unwrap();
}

/// Run `ckpt monitor args…`.
fn monitor(args: &[&str]) -> Output {
    let mut all = vec!["monitor"];
    all.extend_from_slice(args);
    run(&all)
}

/// One performance data item.
#[derive(Debug, Clone, PartialEq)]
struct Perf {
    label: String,
    value: f64,
    uom: String,
    warn: String,
    crit: String,
    min: String,
}

/// Plugin output taken apart by the guidelines' grammar.
#[derive(Debug)]
struct Plugin {
    code: i32,
    state: String,
    summary: String,
    perf: Vec<Perf>,
    long: Vec<String>,
}

impl Plugin {
    fn perf(&self, label: &str) -> &Perf {
        self.perf
            .iter()
            .find(|p| p.label == label)
            .unwrap_or_else(|| panic!("no perfdata {label:?} in {:?}", self.perf))
    }
    fn long_has(&self, needle: &str) -> bool {
        self.long.iter().any(|l| l.contains(needle))
    }
}

const NUM: &str = r"-?[0-9]+(?:\.[0-9]+)?";

/// `'label'=value[UOM];[warn];[crit];[min];[max]`, as the Monitoring
/// Plugins development guidelines define it (a quoted label for one with
/// spaces; a range `[@][start:][end]`, `~` for minus infinity).
fn perf_item() -> String {
    let range = format!(r"@?(?:(?:~|{NUM}):)?(?:{NUM})?");
    format!(
        r"(?:'(?P<ql>[^'=]+)'|(?P<l>[^'= ]+))=(?P<v>{NUM})(?P<u>s|ms|us|%|B|KB|MB|GB|TB|c)?(?:;(?P<w>{range})(?:;(?P<c>{range})(?:;(?P<min>{NUM})?(?:;(?P<max>{NUM})?)?)?)?)?"
    )
}

/// Parse plugin output: the first line must match the grammar exactly
/// (`CKPT STATE - summary | perfdata`), the exit status must be the state's.
#[track_caller]
fn plugin(o: &Output) -> Plugin {
    let text = stdout(o);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_else(|| {
        panic!("no output (stderr: {})", stderr(o));
    });
    let item = perf_item();
    // The same grammar without group names, to repeat it in the line.
    let plain = Regex::new(r"\?P<[a-z]+>")
        .unwrap()
        .replace_all(&item, "?:")
        .to_string();
    let line = Regex::new(&format!(
        r"^CKPT (?P<s>OK|WARNING|CRITICAL|UNKNOWN) - (?P<sum>[^|]+?)(?: \| (?P<p>{plain}(?: {plain})*))?$"
    ))
    .unwrap();
    let caps = line
        .captures(first)
        .unwrap_or_else(|| panic!("first line does not follow the plugin grammar: {first:?}"));
    let state = caps["s"].to_string();
    let want = match state.as_str() {
        "OK" => 0,
        "WARNING" => 1,
        "CRITICAL" => 2,
        _ => 3,
    };
    assert_eq!(o.status.code(), Some(want), "exit status of {first:?}");
    let mut perf = Vec::new();
    if let Some(p) = caps.name("p") {
        let one = Regex::new(&format!("^{item}$")).unwrap();
        // Items are separated by one space outside quotes.
        let mut rest = p.as_str();
        let finder = Regex::new(&item).unwrap();
        while !rest.is_empty() {
            let m = finder.find(rest).expect("an item");
            assert_eq!(m.start(), 0, "perfdata {rest:?}");
            let c = one.captures(m.as_str()).unwrap();
            let g = |n: &str| c.name(n).map_or(String::new(), |m| m.as_str().to_string());
            perf.push(Perf {
                label: c
                    .name("ql")
                    .or(c.name("l"))
                    .map(|m| m.as_str().to_string())
                    .unwrap(),
                value: c["v"].parse().unwrap(),
                uom: g("u"),
                warn: g("w"),
                crit: g("c"),
                min: g("min"),
            });
            rest = rest[m.end()..].trim_start_matches(' ');
        }
    }
    Plugin {
        code: o.status.code().unwrap(),
        state,
        summary: caps["sum"].to_string(),
        perf,
        long: lines.map(str::to_string).collect(),
    }
}

fn now_arg(t: u64) -> String {
    format!("--now={t}")
}

fn json_of(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("JSON output")
}

/// `promtool check metrics` on `text`: Ok, or what it said. None when
/// promtool is missing (a failure under CI=true).
fn promtool(text: &str) -> Option<Result<(), String>> {
    if !require_tool("promtool") {
        return None;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let said = format!("{}{}", stdout(&o), stderr(&o));
    Some(if o.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    })
}

/// One sample of an exposition: metric, labels (values unescaped), value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of an exposition.
fn samples(text: &str) -> Vec<Sample> {
    let sample = Regex::new(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$").unwrap();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)""#).unwrap();
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let c = sample.captures(l).unwrap_or_else(|| panic!("sample {l:?}"));
        let labels = c.get(2).map_or(Vec::new(), |m| {
            label
                .captures_iter(m.as_str())
                .map(|lc| {
                    let raw = &lc[2];
                    let mut v = String::new();
                    let mut it = raw.chars();
                    while let Some(ch) = it.next() {
                        if ch == '\\' {
                            match it.next() {
                                Some('n') => v.push('\n'),
                                Some(o) => v.push(o),
                                None => {}
                            }
                        } else {
                            v.push(ch);
                        }
                    }
                    (lc[1].to_string(), v)
                })
                .collect()
        });
        out.push((c[1].to_string(), labels, c[3].parse().unwrap()));
    }
    out
}

fn sample_of(all: &[Sample], metric: &str, with: &[(&str, &str)]) -> f64 {
    all.iter()
        .find(|(m, l, _)| {
            m == metric
                && with
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("no sample {metric} {with:?}"))
}

// -------------------------------------------------------------------- tests

/// OK, WARNING, CRITICAL and UNKNOWN, each with its exit status and a
/// first line of the plugin grammar; age thresholds crossed one second
/// after them on the test's clock; the VM's own age warning as default.
#[test]
fn every_state_with_its_exit_status_as_checkpoints_age() {
    let t = tempdir();
    let vm = new_vm(t.path(), "web");
    let created = checkpoint(&vm, "before update");
    let v = vm.to_str().unwrap();
    let h = 3600;

    let p = plugin(&monitor(&[v, &now_arg(created + 10)]));
    assert_eq!(p.state, "OK", "{p:?}");
    assert!(p.summary.contains("1 VM, 1 checkpoint"), "{}", p.summary);
    let age = p.perf("web oldest_age");
    assert_eq!((age.value, age.uom.as_str()), (10.0, "s"));
    assert_eq!((age.warn.as_str(), age.crit.as_str()), ("86400", "259200"));
    assert_eq!(age.min, "0");
    assert_eq!(p.perf("web checkpoints").value, 1.0);
    assert_eq!(p.perf("web depth").value, 2.0);
    assert_eq!(p.perf("web size").uom, "B");
    assert!(p.long.is_empty(), "{:?}", p.long);

    // Exactly at the threshold is still OK; one second more is not.
    assert_eq!(plugin(&monitor(&[v, &now_arg(created + 24 * h)])).code, 0);
    let p = plugin(&monitor(&[v, &now_arg(created + 24 * h + 1)]));
    assert_eq!(p.state, "WARNING");
    assert!(
        p.long_has("WARNING: web (") && p.long_has("checkpoint \"before update\" is 1d old"),
        "{:?}",
        p.long
    );
    assert_eq!(plugin(&monitor(&[v, &now_arg(created + 72 * h)])).code, 1);
    let p = plugin(&monitor(&[v, &now_arg(created + 72 * h + 1)]));
    assert_eq!(p.state, "CRITICAL");
    assert!(p.summary.contains("critical over 3d"), "{}", p.summary);

    // --warn-age / --crit-age; then the VM's own age warning as default,
    // which --warn-age overrides.
    let p = plugin(&monitor(&[
        v,
        "--warn-age",
        "1h",
        &now_arg(created + h + 1),
    ]));
    assert_eq!(
        (p.state.as_str(), p.perf("web oldest_age").warn.as_str()),
        ("WARNING", "3600")
    );
    assert_eq!(
        plugin(&monitor(&[
            v,
            "--crit-age=90m",
            &now_arg(created + 91 * 60)
        ]))
        .code,
        2
    );
    ok(&["vm", "set", v, "--age-warning", "2h"]);
    assert_eq!(plugin(&monitor(&[v, &now_arg(created + h + 1)])).code, 0);
    assert_eq!(
        plugin(&monitor(&[v, &now_arg(created + 2 * h + 1)])).code,
        1
    );
    assert_eq!(
        plugin(&monitor(&[
            v,
            "--warn-age=3h",
            &now_arg(created + 2 * h + 1)
        ]))
        .code,
        0
    );

    // UNKNOWN: a damaged vm.json, a folder that does not exist, a folder
    // that is no VM's, a bad command line (whatever the format).
    let bad = t.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("vm.json"), b"{\"version\": 1, \"config\": ").unwrap();
    let b = bad.to_str().unwrap();
    let p = plugin(&monitor(&[b]));
    assert_eq!(p.state, "UNKNOWN");
    assert!(p.summary.contains("not a valid VM file"), "{}", p.summary);
    assert!(p.perf.is_empty());
    let missing = t.path().join("missing");
    let p = plugin(&monitor(&[missing.to_str().unwrap()]));
    assert_eq!(p.state, "UNKNOWN");
    assert!(p.long_has("cannot read the folder"), "{:?}", p.long);
    let p = plugin(&monitor(&[t.path().to_str().unwrap()]));
    assert!(p.summary.contains("not a VM folder"), "{}", p.summary);
    for args in [
        vec!["--bogus", v],
        vec![],
        vec!["--warn-age", "soon", v],
        vec!["--format", "xml", v],
        vec!["--warn-size", "1.5G", v],
    ] {
        let p = plugin(&monitor(&args));
        assert_eq!(p.state, "UNKNOWN", "{args:?}");
        assert!(
            p.summary.contains("(try 'ckpt monitor --help')"),
            "{}",
            p.summary
        );
    }
    let help = monitor(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("--warn-depth"));

    // Several VMs: the worst state wins, CRITICAL over UNKNOWN; each
    // readable VM has its perfdata.
    let other = new_vm(t.path(), "db");
    let p = plugin(&monitor(&[
        v,
        b,
        other.to_str().unwrap(),
        &now_arg(created + 80 * h),
    ]));
    assert_eq!(p.state, "CRITICAL");
    assert!(p.long_has("UNKNOWN: ") && p.long_has("CRITICAL: web ("));
    assert_eq!(p.perf("db checkpoints").value, 0.0);
    assert_eq!(p.perf("db depth").value, 1.0);
    let p = plugin(&monitor(&[b, other.to_str().unwrap()]));
    assert_eq!(p.state, "UNKNOWN");
}

/// Size and depth thresholds crossed as the current differencing disk
/// grows and checkpoints stack up; the sizes are those `ckpt checkpoint
/// list` reports (which opens the disks) and the depth is the real chain's.
#[test]
fn size_and_depth_thresholds_crossed_as_disks_grow() {
    let t = tempdir();
    let vm = new_vm(t.path(), "app");
    let v = vm.to_str().unwrap();
    let created = checkpoint(&vm, "a");
    let now = now_arg(created + 5);
    let size_now = |args: &[&str]| {
        let mut all = vec![v, now.as_str(), "--format=json"];
        all.extend_from_slice(args);
        json_of(&monitor(&all))["vms"][0]["size_bytes"]
            .as_u64()
            .unwrap()
    };
    let start = size_now(&[]);
    assert!(start > 0, "an empty differencing disk still uses space");
    let warn = (start + MIB).to_string();
    let crit = (start + 10 * MIB).to_string();
    let args = |extra: &str| -> Vec<String> {
        vec![
            v.into(),
            now.clone(),
            format!("--warn-size={warn}"),
            format!("--crit-size={crit}"),
            extra.into(),
        ]
    };
    let run_with = |extra: &str| {
        let a = args(extra);
        plugin(&monitor(&a.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let p = run_with("--warn-depth=8");
    assert_eq!(p.state, "OK", "{p:?}");
    assert_eq!(p.perf("app size").warn, warn);
    grow(&vm, 0, 4 * MIB as usize);
    let p = run_with("--warn-depth=8");
    assert_eq!(p.state, "WARNING", "{p:?}");
    assert!(p.long_has("its differencing disks use"), "{:?}", p.long);
    assert!(p.perf("app size").value >= (start + 4 * MIB) as f64);
    grow(&vm, 8 * MIB, 12 * MIB as usize);
    assert_eq!(run_with("--warn-depth=8").state, "CRITICAL");

    // Per checkpoint, the sizes `checkpoint list --json` gives.
    checkpoint(&vm, "b");
    let list: Value =
        serde_json::from_slice(&ok(&["checkpoint", "list", v, "--json"]).stdout).unwrap();
    let report = json_of(&monitor(&[v, "--format=json"]));
    for c in list["checkpoints"].as_array().unwrap() {
        let m = report["vms"][0]["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == c["id"])
            .unwrap();
        assert_eq!(m["size_bytes"], c["size_bytes"], "{}", c["name"]);
        assert_eq!(m["chain_depth"], c["chain_depth"], "{}", c["name"]);
    }
    assert!(
        report["vms"][0]["checkpoints"][1]["size_bytes"]
            .as_u64()
            .unwrap()
            >= 16 * MIB
    );

    // Depth: the current state's chain, as the library opens it.
    let depth_args = |now: &str| {
        plugin(&monitor(&[
            v,
            now,
            "--warn-depth=3",
            "--crit-depth=4",
            "--warn-size=1T",
            "--crit-size=2T",
        ]))
    };
    let real = || {
        let cur = Vm::load(&vm).unwrap().current.disks[0].clone();
        Disk::open(&cur, OpenMode::ReadOnly).unwrap().depth() as f64
    };
    let p = depth_args(&now_arg(created + 5));
    assert_eq!(
        (p.state.as_str(), p.perf("app depth").value),
        ("OK", real())
    );
    assert_eq!(real(), 3.0);
    checkpoint(&vm, "c");
    let p = depth_args(&now_arg(created + 5));
    assert_eq!(
        (p.state.as_str(), p.perf("app depth").value),
        ("WARNING", real())
    );
    assert!(
        p.long_has("deepest disk chain has 4 layers (warning over 3)"),
        "{:?}",
        p.long
    );
    checkpoint(&vm, "d");
    assert_eq!(depth_args(&now_arg(created + 5)).state, "CRITICAL");
}

/// An interrupted operation (a crash after its journal was written) is
/// UNKNOWN until the VM is opened again; one under way (its lock held) is
/// OK, and UNKNOWN once it has held the lock longer than the timeout.
/// Monitoring never waits for the lock.
#[test]
fn pending_operations_and_a_lock_held_too_long() {
    let t = tempdir();
    let vm = new_vm(t.path(), "ops");
    let v = vm.to_str().unwrap();
    checkpoint(&vm, "a");
    let journal = vm.join("journal.json");
    // Crash the next checkpoint at the first event after its journal.
    let mut n = 1;
    loop {
        let mut h = Vm::open(&vm).unwrap();
        faults::arm(n, Cut::Clean);
        let r = h.create_checkpoint("b", None, &mut NoHooks);
        faults::disarm();
        drop(h);
        if r.is_err() && journal.exists() {
            break;
        }
        assert!(n < 50, "no cut left a journal");
        n += 1;
        // Undo what a cut without a journal left (nothing) and try later.
        let _ = Vm::open(&vm).unwrap();
        if Vm::load(&vm).unwrap().checkpoints.len() > 1 {
            let mut h = Vm::open(&vm).unwrap();
            h.delete("b", false, &mut NoHooks).unwrap();
        }
    }
    let since = std::fs::metadata(&journal)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let p = plugin(&monitor(&[v, &now_arg(since + 30)]));
    assert_eq!(p.state, "UNKNOWN", "{p:?}");
    assert!(
        p.summary.contains("a create operation was interrupted"),
        "{}",
        p.summary
    );
    let prom = stdout(&monitor(&[v, "--format=prometheus"]));
    assert_eq!(
        sample_of(
            &samples(&prom),
            "ckpt_vm_pending_operation",
            &[("vm", "ops")]
        ),
        1.0
    );
    let j = json_of(&monitor(&[v, "--format=json"]));
    assert_eq!(j["vms"][0]["pending_operation"]["op"], "create");
    assert_eq!(j["vms"][0]["pending_operation"]["under_way"], false);

    // The same journal while its VM's lock is held: under way.
    {
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(vm.join(".lock"))
            .unwrap();
        let _held = ckpt::io::lock_file(&lock, ckpt::io::LockKind::Exclusive).unwrap();
        let p = plugin(&monitor(&[v, &now_arg(since + 30)]));
        assert_eq!(p.state, "OK", "{p:?}");
        assert!(
            p.long_has("INFO: ops (") && p.long_has("operation is under way"),
            "{:?}",
            p.long
        );
        let p = plugin(&monitor(&[v, &now_arg(since + 2 * 3600)]));
        assert_eq!(p.state, "UNKNOWN");
        assert!(
            p.summary
                .contains("has held the VM's lock for 2h (over 1h)"),
            "{}",
            p.summary
        );
        let p = plugin(&monitor(&[
            v,
            "--operation-timeout=3h",
            &now_arg(since + 2 * 3600),
        ]));
        assert_eq!(p.state, "OK");
    }
    // Opening the VM finishes or undoes it: OK, nothing pending.
    drop(Vm::open(&vm).unwrap());
    assert!(!journal.exists());
    assert_eq!(plugin(&monitor(&[v])).state, "OK");
    let prom = stdout(&monitor(&[v, "--format=prometheus"]));
    assert_eq!(
        sample_of(
            &samples(&prom),
            "ckpt_vm_pending_operation",
            &[("vm", "ops")]
        ),
        0.0
    );

    // A VM held open (lock taken, no journal: an attached VM) is read as
    // it is, without waiting for its holder.
    let mut holder = ckpt()
        .args(["vm", "hold", v])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("holding "), "{line}");
    let p = plugin(&monitor(&[v]));
    assert_eq!(p.state, "OK");
    drop(holder.stdin.take());
    holder.wait().unwrap();
}

/// The Prometheus exposition passes `promtool check metrics`, with label
/// values that need escaping (backslash, quote, newline) read back as
/// they are; and promtool does reject a broken exposition.
#[test]
fn prometheus_metrics_pass_promtool() {
    let t = tempdir();
    let odd = "we\"b\\1\nx";
    let dir = t.path().join("odd");
    std::fs::create_dir(&dir).unwrap();
    let disk = dir.join("os.vhdx");
    Disk::create(&disk, &CreateOptions::new(64 * MIB))
        .unwrap()
        .close()
        .unwrap();
    Vm::create(&dir, &VmSpec::new(odd, vec![disk])).unwrap();
    let created = checkpoint(&dir, "a \"quoted\" \\ name");
    let plain = new_vm(t.path(), "plain");
    checkpoint(&plain, "p");
    // A folder given twice is one VM (no duplicate series).
    let o = monitor(&[
        dir.to_str().unwrap(),
        plain.to_str().unwrap(),
        plain.to_str().unwrap(),
        "--format=prometheus",
        &now_arg(created + 100),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for m in [
        "ckpt_checkpoint_age_seconds",
        "ckpt_checkpoint_size_bytes",
        "ckpt_vm_chain_depth",
        "ckpt_vm_checkpoints",
        "ckpt_vm_pending_operation",
    ] {
        assert!(text.contains(&format!("# HELP {m} ")), "{m}");
        assert!(text.contains(&format!("# TYPE {m} gauge")), "{m}");
    }
    let all = samples(&text);
    let age = sample_of(
        &all,
        "ckpt_checkpoint_age_seconds",
        &[
            ("vm", odd),
            ("checkpoint", "a \"quoted\" \\ name"),
            ("type", "production"),
        ],
    );
    assert_eq!(age, 100.0);
    assert_eq!(
        sample_of(&all, "ckpt_vm_checkpoints", &[("vm", "plain")]),
        1.0
    );
    assert_eq!(sample_of(&all, "ckpt_vm_chain_depth", &[("vm", odd)]), 2.0);
    assert_eq!(sample_of(&all, "ckpt_vm_status", &[("vm", "plain")]), 0.0);
    if let Some(r) = promtool(&text) {
        r.unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
        // The check can fail: an unescaped quote, a sample without HELP/TYPE.
        assert!(promtool("# HELP x y\n# TYPE x gauge\nx{vm=\"a\"b\"} 1\n")
            .unwrap()
            .is_err());
    }
    // An unreadable folder is a status of 3 and nothing else.
    let bad = t.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("vm.json"), b"[]").unwrap();
    let text = stdout(&monitor(&[bad.to_str().unwrap(), "--format=prometheus"]));
    assert_eq!(
        sample_of(&samples(&text), "ckpt_vm_status", &[("vm", "bad")]),
        3.0
    );
    if let Some(r) = promtool(&text) {
        r.unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    }
}

/// `--format json`: one object with the state, the thresholds, each VM and
/// checkpoint with its facts and state.
#[test]
fn json_report_shape() {
    let t = tempdir();
    let vm = new_vm(t.path(), "j");
    let created = checkpoint(&vm, "one");
    let j = json_of(&monitor(&[
        vm.to_str().unwrap(),
        "--format=json",
        &now_arg(created + 2 * 86_400),
    ]));
    assert_eq!(j["state"], "WARNING");
    assert_eq!(j["exit_code"], 1);
    assert_eq!(j["now"], created + 2 * 86_400);
    assert_eq!(j["thresholds"]["crit_age_seconds"], 259_200);
    assert_eq!(j["thresholds"]["warn_age_seconds"], Value::Null);
    assert_eq!(j["thresholds"]["warn_size_bytes"], 50u64 << 30);
    assert_eq!(j["thresholds"]["warn_depth"], 8);
    let v = &j["vms"][0];
    assert_eq!(v["name"], "j");
    assert_eq!(v["folder"], vm.to_str().unwrap());
    assert_eq!(v["readable"], true);
    assert_eq!(v["state"], "WARNING");
    assert_eq!(v["role"], Value::Null);
    assert_eq!(v["warn_age_seconds"], 86_400);
    assert_eq!(v["oldest_age_seconds"], 2 * 86_400);
    assert_eq!(v["checkpoint_count"], 1);
    assert_eq!(v["chain_depth"], 2);
    assert!(v["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["pending_operation"], Value::Null);
    let c = &v["checkpoints"][0];
    assert_eq!(c["name"], "one");
    assert_eq!(c["type"], "production");
    assert_eq!(c["created"], created);
    assert_eq!(c["age_seconds"], 2 * 86_400);
    assert_eq!(c["state"], "WARNING");
    assert_eq!(c["chain_depth"], 1);
    assert_eq!(c["size_bytes"], 0, "its disk is the VM's base disk");
    assert_eq!(c["warnings"], serde_json::json!([]));
    assert_eq!(v["findings"][0]["state"], "WARNING");
    assert!(v["findings"][0]["text"]
        .as_str()
        .unwrap()
        .contains("is 2d old"));
    assert_eq!(j["skipped"], serde_json::json!([]));
}

/// `--recursive` finds VM folders at any depth, reports a damaged one as
/// UNKNOWN, and skips what it cannot read (a dangling symbolic link; root
/// reads every folder, so `chmod 000` would not do), saying so; a search
/// that finds no VM is UNKNOWN.
#[test]
fn recursive_search_skips_what_it_cannot_read() {
    let t = tempdir();
    let root = t.path().join("vms");
    std::fs::create_dir(&root).unwrap();
    let a = new_vm(&root, "a");
    std::fs::create_dir(root.join("group")).unwrap();
    let b = new_vm(&root.join("group"), "b");
    let created = checkpoint(&a, "x");
    checkpoint(&b, "y");
    std::os::unix::fs::symlink(t.path().join("gone"), root.join("dangling")).unwrap();
    std::os::unix::fs::symlink(&root, root.join("group").join("loop")).unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();
    let r = root.to_str().unwrap();
    let now = now_arg(created + 60);

    let p = plugin(&monitor(&["--recursive", r, &now]));
    assert_eq!(p.state, "OK", "{p:?}");
    assert!(
        p.summary.starts_with("2 VMs, 2 checkpoints"),
        "{}",
        p.summary
    );
    assert_eq!(p.perf("a checkpoints").value, 1.0);
    assert_eq!(p.perf("b checkpoints").value, 1.0);
    let dangling = root.join("dangling");
    assert!(
        p.long_has(&format!(
            "skipped {}: a symbolic link that cannot be followed",
            dangling.display()
        )),
        "{:?}",
        p.long
    );
    let j = json_of(&monitor(&["-r", r, &now, "--format=json"]));
    assert_eq!(j["vms"].as_array().unwrap().len(), 2);
    assert_eq!(j["skipped"][0]["path"], dangling.to_str().unwrap());
    let prom = stdout(&monitor(&["-r", r, &now, "--format=prometheus"]));
    assert_eq!(
        sample_of(&samples(&prom), "ckpt_monitor_skipped_paths", &[]),
        1.0
    );

    // A damaged VM file found by the search: UNKNOWN, the others still read.
    let c = root.join("group").join("c");
    std::fs::create_dir(&c).unwrap();
    std::fs::write(c.join("vm.json"), b"not json").unwrap();
    let p = plugin(&monitor(&["-r", r, &now]));
    assert_eq!(p.state, "UNKNOWN");
    assert!(
        p.long_has(&format!("UNKNOWN: {}: ", c.display())),
        "{:?}",
        p.long
    );
    assert_eq!(p.perf.len(), 8, "two readable VMs' perfdata");
    // Without --recursive the folder of folders is no VM.
    assert_eq!(plugin(&monitor(&[r])).state, "UNKNOWN");
    // Nothing found.
    let p = plugin(&monitor(&["-r", root.join("empty").to_str().unwrap()]));
    assert_eq!(p.state, "UNKNOWN");
    assert!(p.summary.contains("no VM folder found"), "{}", p.summary);
}

/// A VM's role: set and cleared by `vm set --role`, shown by `vm show`;
/// a checkpoint of it is taken (never refused) with a warning on stderr,
/// recorded with it and listed; monitoring reports such checkpoints as
/// WARNING until they are deleted.
#[test]
fn roles_warn_and_monitoring_reports_them() {
    let t = tempdir();
    let vm = new_vm(t.path(), "dc1");
    let v = vm.to_str().unwrap();
    let created = checkpoint(&vm, "plain");
    let now = now_arg(created + 60);
    assert_eq!(plugin(&monitor(&[v, &now])).state, "OK");

    let o = ok(&["vm", "set", v, "--role", "domain-controller"]);
    assert!(stdout(&o).contains("role domain-controller"));
    assert!(stdout(&ok(&["vm", "show", v])).contains("domain-controller"));
    let show: Value = serde_json::from_slice(&ok(&["vm", "show", v, "--json"]).stdout).unwrap();
    assert_eq!(show["role"], "domain-controller");
    // An existing checkpoint of a VM that now has the role: WARNING.
    let p = plugin(&monitor(&[v, &now]));
    assert_eq!(p.state, "WARNING", "{p:?}");
    assert!(p.summary.contains("USN rollback"), "{}", p.summary);

    let o = run(&["checkpoint", "create", v, "risky"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("warning: checkpoint \"risky\": the VM is a domain controller"));
    assert!(stderr(&o).contains("USN rollback"));
    let list = stdout(&ok(&["checkpoint", "list", v]));
    assert!(
        list.contains("[warning: the VM is a domain controller"),
        "{list}"
    );
    let lj: Value =
        serde_json::from_slice(&ok(&["checkpoint", "list", v, "--json"]).stdout).unwrap();
    let risky = lj["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "risky")
        .unwrap();
    assert!(risky["warnings"][0]
        .as_str()
        .unwrap()
        .contains("USN rollback"));
    let stored = std::fs::read_to_string(vm.join("vm.json")).unwrap();
    assert!(stored.contains("\"role\": \"domain-controller\""));

    // Cleared: new checkpoints are plain; the recorded warning stays.
    ok(&["vm", "set", v, "--role", "none"]);
    let o = run(&["checkpoint", "create", v, "later"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    let p = plugin(&monitor(&[v, &now]));
    assert_eq!(p.state, "WARNING");
    assert!(
        p.long_has("checkpoint \"risky\": the VM is a domain controller"),
        "{:?}",
        p.long
    );
    assert!(!p.long_has("\"plain\""), "{:?}", p.long);
    let j = json_of(&monitor(&[v, &now, "--format=json"]));
    let states: Vec<&str> = j["vms"][0]["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["OK", "WARNING", "OK"]);
    ok(&["checkpoint", "delete", v, "risky"]);
    assert_eq!(plugin(&monitor(&[v, &now])).state, "OK");

    // The other roles warn in their own words; a bad one is refused.
    ok(&["vm", "set", v, "--role", "cluster-member"]);
    let o = run(&["checkpoint", "create", v, "node"]);
    assert!(stderr(&o).contains("stale cluster state"), "{}", stderr(&o));
    ok(&["vm", "set", v, "--role", "replicated"]);
    let o = run(&["checkpoint", "create", v, "rep"]);
    assert!(stderr(&o).contains("replica"), "{}", stderr(&o));
    let p = plugin(&monitor(&[v, &now]));
    assert!(
        p.long_has("stale cluster state") && p.long_has("replica"),
        "{:?}",
        p.long
    );
    // Given at creation.
    let d2 = t.path().join("d2");
    std::fs::create_dir(&d2).unwrap();
    let disk2 = d2.join("os.vhdx");
    Disk::create(&disk2, &CreateOptions::new(8 * MIB))
        .unwrap()
        .close()
        .unwrap();
    let d2s = d2.to_str().unwrap();
    ok(&[
        "vm",
        "create",
        d2s,
        "--name",
        "n2",
        "--disk",
        disk2.to_str().unwrap(),
        "--role",
        "cluster-member",
    ]);
    let show: Value = serde_json::from_slice(&ok(&["vm", "show", d2s, "--json"]).stdout).unwrap();
    assert_eq!(show["settings"]["role"], "cluster-member");
    let o = run(&["vm", "set", v, "--role", "web-server"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown VM role 'web-server'"),
        "{}",
        stderr(&o)
    );
}
