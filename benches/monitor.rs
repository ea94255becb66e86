//! `ckpt monitor` at host scale: 1,000 VM folders with 10 checkpoints each
//! (a chain of 10 differencing disks above a base, plus the current
//! state's), searched with `--recursive`, judged and printed as plugin
//! output and as Prometheus metrics. Prints the time of each pass and the
//! best; the goal is under 2 s (tests never assert timings).
//!
//! ```text
//! cargo bench --bench monitor            # 1000 VMs x 10 checkpoints
//! CKPT_BENCH_VMS=5000 cargo bench --bench monitor
//! ```
//!
//! The VM files are written directly (as `ckpt` would store them) and the
//! disk files are small placeholders: monitoring reads `vm.json` and the
//! disks' metadata only, never their content.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ckpt::checkpoint::model::VM_FILE;
use ckpt::checkpoint::{
    Checkpoint, CheckpointType, Current, Settings, TakenType, VmConfig, VmFile, VmState,
};
use ckpt::monitor::{self, Thresholds};

const CHECKPOINTS: usize = 10;

/// VM folder `k` under `root`: a base disk, `CHECKPOINTS` checkpoints in
/// one chain, the current state on the last; every file 64 KiB.
fn make_vm(root: &Path, k: usize, now: u64) -> std::io::Result<()> {
    let dir = root.join(format!("vm{k:04}"));
    std::fs::create_dir_all(&dir)?;
    let file = |name: String| -> std::io::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, vec![1u8; 64 << 10])?;
        Ok(p)
    };
    let base = file("os.vhdx".into())?;
    let mut disks = vec![base.clone()];
    let mut checkpoints = Vec::new();
    let mut parent: Option<String> = None;
    for c in 0..CHECKPOINTS {
        let id = format!("{k:04}-{c:02}-0000-0000-000000000000");
        checkpoints.push(Checkpoint {
            id: id.clone(),
            name: format!("checkpoint {c}"),
            parent: parent.clone(),
            created: now - 3600 * (CHECKPOINTS - c) as u64,
            taken: TakenType::Production,
            requested: CheckpointType::Production,
            fallback_reason: None,
            disks: vec![disks.last().cloned().unwrap_or_else(|| base.clone())],
            skipped_passthrough: Vec::new(),
            config_file: None,
            saved_state: None,
            hidden: false,
            deleting: false,
            vm_state: Some(VmState::Off),
            warnings: Vec::new(),
        });
        disks.push(file(format!("os_{id}.avhdx"))?);
        parent = Some(id);
    }
    let data = VmFile {
        version: 1,
        config: VmConfig {
            name: format!("vm{k:04}"),
            memory_mib: 1024,
            cpus: 1,
            passthrough: Vec::new(),
            hypervisor: serde_json::Value::Null,
        },
        disks: vec![base],
        settings: Settings::default(),
        state: VmState::Running,
        current: Current {
            parent,
            disks: vec![disks.last().cloned().expect("a disk")],
            saved_state: None,
        },
        checkpoints,
        past_checkpoint_locations: Vec::new(),
        id: Some(format!("vm-{k}")),
        folder: Some(dir.clone()),
        related_vms: Vec::new(),
        pending_removals: Vec::new(),
        references: Vec::new(),
    };
    let text = serde_json::to_vec_pretty(&data).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(VM_FILE), text)
}

fn main() {
    let vms: usize = std::env::var("CKPT_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let root = tempfile::Builder::new()
        .prefix("ckpt-bench-monitor-")
        .tempdir()
        .expect("a temporary folder");
    let now = 1_800_000_000;
    let t0 = Instant::now();
    for k in 0..vms {
        make_vm(root.path(), k, now).expect("write a VM folder");
    }
    println!(
        "monitor: {vms} VM folders x {CHECKPOINTS} checkpoints written in {:.2?}",
        t0.elapsed()
    );
    let paths = vec![root.path().to_path_buf()];
    let mut best = f64::MAX;
    for pass in 1..=5 {
        let t = Instant::now();
        let report = monitor::evaluate(monitor::scan(&paths, true), &Thresholds::default(), now);
        let text = monitor::nagios(&report);
        let metrics = monitor::prometheus(&report);
        let secs = t.elapsed().as_secs_f64();
        best = best.min(secs);
        assert_eq!(report.vms.len(), vms);
        println!(
            "monitor: pass {pass}: {vms} VMs checked in {secs:.3} s ({}, {} bytes of plugin \
             output, {} bytes of metrics)",
            report.state.as_str(),
            text.len(),
            metrics.len()
        );
    }
    println!("monitor: best {best:.3} s for {vms} VMs (goal: under 2 s for 1000)");
    // The whole command, process start and output included.
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .args(["monitor", "--recursive", "--now", &now.to_string()])
        .arg(root.path())
        .output()
        .expect("run ckpt monitor");
    println!(
        "monitor: `ckpt monitor --recursive` on {vms} VMs: exit {:?} in {:.3} s",
        out.status.code(),
        t.elapsed().as_secs_f64()
    );
}
