//! A Ceph cluster for the RBD tests: the one `CKPT_CEPH_CONF` names (with
//! `CKPT_CEPH_POOL`, default `ckpt`; `.ci/run` starts it with
//! `scripts/ceph-test-cluster.sh`), else one started here with that script
//! when Ceph is installed (one per test binary, stopped by the script's
//! watcher when the binary ends). Without either: a notice and the test
//! is skipped, a panic under `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ckpt::checkpoint::rbd::RbdTool;

use super::oracle::{find_tool, in_ci, missing};

/// A reachable cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Its ceph.conf.
    pub conf: PathBuf,
    /// The pool the tests use.
    pub pool: String,
}

impl Cluster {
    /// The `rbd` tool of the library, aimed at this cluster.
    pub fn tool(&self) -> RbdTool {
        RbdTool {
            program: None,
            conf: Some(self.conf.clone()),
            id: Some("admin".into()),
        }
    }

    /// An `rbd` command for this cluster.
    pub fn rbd(&self) -> Command {
        let mut c = Command::new("rbd");
        c.arg("--conf").arg(&self.conf).args(["--id", "admin"]);
        c
    }

    /// `rbd ARGS` must succeed; its stdout.
    pub fn rbd_ok(&self, args: &[&str]) -> Vec<u8> {
        let o = self.rbd().args(args).output().expect("run rbd");
        assert!(
            o.status.success(),
            "rbd {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    }

    /// `rbd export SPEC -`: the image's (or snapshot's) bytes.
    pub fn export(&self, spec: &str) -> Vec<u8> {
        self.rbd_ok(&["export", "--no-progress", spec, "-"])
    }

    /// The snapshot names of POOL/IMAGE, oldest first.
    pub fn snaps(&self, image: &str) -> Vec<String> {
        let out = self.rbd_ok(&["snap", "ls", "--format", "json", image]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let mut s: Vec<(u64, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_u64().unwrap(),
                    s["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        s.sort();
        s.into_iter().map(|(_, n)| n).collect()
    }

    /// The images of the pool whose names start with `prefix`.
    pub fn images(&self, prefix: &str) -> Vec<String> {
        let out = self.rbd_ok(&["ls", "--format", "json", &self.pool]);
        let v: Vec<String> = serde_json::from_slice(&out).unwrap();
        v.into_iter().filter(|n| n.starts_with(prefix)).collect()
    }

    /// Remove (best effort) every image of the pool starting with
    /// `prefix`, clones first, with their snapshots.
    pub fn remove_images(&self, prefix: &str) {
        let mut imgs = self.images(prefix);
        // Clones have longer names ("--"): remove them first.
        imgs.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for i in imgs {
            let spec = format!("{}/{i}", self.pool);
            for s in self.snaps(&spec) {
                let _ = self
                    .rbd()
                    .args(["snap", "unprotect", &format!("{spec}@{s}")])
                    .output();
            }
            let _ = self
                .rbd()
                .args(["snap", "purge", "--no-progress", &spec])
                .output();
            let _ = self.rbd().args(["rm", "--no-progress", &spec]).output();
        }
    }
}

/// The cluster, or None (after a notice; a panic under CI) when there is
/// none to be had.
pub fn cluster() -> Option<&'static Cluster> {
    static C: OnceLock<Option<Cluster>> = OnceLock::new();
    let c = C.get_or_init(|| {
        let pool = std::env::var("CKPT_CEPH_POOL").unwrap_or_else(|_| "ckpt".into());
        if let Some(conf) = std::env::var_os("CKPT_CEPH_CONF").filter(|c| !c.is_empty()) {
            return Some(Cluster {
                conf: conf.into(),
                pool,
            });
        }
        if find_tool("ceph-mon").is_none() || find_tool("rbd").is_none() {
            return None;
        }
        start_own(&pool)
    });
    if c.is_none() {
        missing("a Ceph cluster (CKPT_CEPH_CONF, or ceph-mon, ceph-osd and rbd to start one)");
    }
    c.as_ref()
}

/// Start a cluster for this test binary with the repository's script.
fn start_own(pool: &str) -> Option<Cluster> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-test-cluster.sh");
    let dir = std::env::temp_dir().join(format!("ckpt-ceph-test-{}", std::process::id()));
    let o = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .env("CKPT_CEPH_WATCH_PID", std::process::id().to_string())
        .env("CKPT_CEPH_POOL", pool)
        .output()
        .expect("run the cluster script");
    if !o.status.success() {
        let msg = format!(
            "the test cluster did not start: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!in_ci(), "{msg}");
        eprintln!("NOTICE: {msg}");
        return None;
    }
    eprintln!("started a Ceph test cluster in {}", dir.display());
    Some(Cluster {
        conf: dir.join("ceph.conf"),
        pool: pool.into(),
    })
}
