//! The `rbd` command-line tool, driven as a child process ([`RbdTool`]):
//! image and snapshot queries (JSON output), creation, clones, and the
//! stream commands `import-diff` (fed through its stdin) and `export-diff`
//! (read from its stdout).
//!
//! The cluster is named the way `rbd` takes it: a ceph.conf (`--conf`,
//! else `CEPH_CONF`, else `/etc/ceph/ceph.conf`) and a client id (`--id`,
//! else `CEPH_ARGS`, else `admin`). `CKPT_RBD` names another program to
//! run instead of `rbd` (the tests use it to interrupt a stream).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde::Deserialize;

use crate::error::{Error, Result};

/// How to reach the cluster through the `rbd` tool.
#[derive(Debug, Clone, Default)]
pub struct RbdTool {
    /// The program (None: `CKPT_RBD`, else `rbd` on the PATH).
    pub program: Option<PathBuf>,
    /// The ceph.conf to pass as `--conf` (None: rbd's own default).
    pub conf: Option<PathBuf>,
    /// The client id to pass as `--id` (None: rbd's own default).
    pub id: Option<String>,
}

/// One snapshot of an image, as `rbd snap ls --format json` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapInfo {
    /// The snapshot's id in the image.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// The image size at the snapshot.
    pub size: u64,
    /// Whether it is protected (it may have clones).
    #[serde(default, deserialize_with = "bool_or_string")]
    pub protected: bool,
}

/// What `rbd info --format json` says of an image (the fields used).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    /// The image size.
    pub size: u64,
    /// The clone's parent, if the image is a clone.
    #[serde(default)]
    pub parent: Option<ParentInfo>,
}

/// The parent of a clone.
#[derive(Debug, Clone, Deserialize)]
pub struct ParentInfo {
    /// Its pool.
    pub pool: String,
    /// Its image.
    pub image: String,
    /// The snapshot the clone was made from.
    pub snapshot: String,
}

/// One extent of `rbd diff --format json`.
#[derive(Debug, Clone, Deserialize)]
pub struct DiffExtent {
    /// Start (bytes).
    pub offset: u64,
    /// Length (bytes).
    pub length: u64,
}

fn bool_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::String(s) => s == "true",
        _ => false,
    })
}

/// An error of the `rbd` tool: its command line and what it printed.
fn tool_error(args: &[OsString], status: std::process::ExitStatus, stderr: &[u8]) -> Error {
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
    let text = String::from_utf8_lossy(stderr);
    // rbd prints progress with carriage returns: keep the last lines.
    let text: Vec<&str> = text
        .lines()
        .flat_map(|l| l.rsplit('\r').next())
        .filter(|l| !l.trim().is_empty())
        .collect();
    let tail = text[text.len().saturating_sub(4)..].join("; ");
    Error::Io(std::io::Error::other(format!(
        "`rbd {}` failed ({status}): {tail}",
        args.join(" ")
    )))
}

/// Whether an rbd error message says the image or snapshot does not exist.
fn is_not_found(e: &Error) -> bool {
    let s = e.to_string();
    s.contains("No such file or directory")
}

impl RbdTool {
    fn program(&self) -> OsString {
        match &self.program {
            Some(p) => p.clone().into_os_string(),
            None => std::env::var_os("CKPT_RBD")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "rbd".into()),
        }
    }

    fn command(&self, args: &[OsString]) -> Command {
        let mut c = Command::new(self.program());
        if let Some(conf) = &self.conf {
            c.arg("--conf").arg(conf);
        }
        if let Some(id) = &self.id {
            c.arg("--id").arg(id);
        }
        c.args(args);
        c
    }

    fn spawn_error(&self, e: std::io::Error) -> Error {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!(
                "cannot run {:?} (install ceph-common, or set CKPT_RBD): {e}",
                self.program()
            ),
        ))
    }

    /// Run `rbd ARGS...` and return its stdout; a failure is an error
    /// holding its stderr.
    pub fn run(&self, args: &[&str]) -> Result<Vec<u8>> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let out = self
            .command(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            return Err(tool_error(&args, out.status, &out.stderr));
        }
        Ok(out.stdout)
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, args: &[&str]) -> Result<T> {
        let out = self.run(args)?;
        serde_json::from_slice(&out).map_err(|e| {
            Error::Io(std::io::Error::other(format!(
                "`rbd {}` printed JSON this tool cannot read: {e}",
                args.join(" ")
            )))
        })
    }

    /// The snapshots of `image` (POOL/NAME), oldest first; None when the
    /// image does not exist.
    pub fn snaps(&self, image: &str) -> Result<Option<Vec<SnapInfo>>> {
        match self.json::<Vec<SnapInfo>>(&["snap", "ls", "--format", "json", image]) {
            Ok(mut v) => {
                v.sort_by_key(|s| s.id);
                Ok(Some(v))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `rbd info` of `spec` (POOL/NAME or POOL/NAME@SNAP); None when it
    /// does not exist.
    pub fn info(&self, spec: &str) -> Result<Option<ImageInfo>> {
        match self.json::<ImageInfo>(&["info", "--format", "json", spec]) {
            Ok(i) => Ok(Some(i)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The extents of `image`'s head that differ from its snapshot
    /// `from_snap` (None: every extent the image holds).
    pub fn diff_extents(&self, image: &str, from_snap: Option<&str>) -> Result<Vec<DiffExtent>> {
        let mut args = vec!["diff", "--format", "json"];
        if let Some(s) = from_snap {
            args.extend(["--from-snap", s]);
        }
        args.push(image);
        self.json(&args)
    }

    /// Create `image` of `size` bytes (format 2, rbd's default features).
    pub fn create(&self, image: &str, size: u64) -> Result<()> {
        self.run(&["create", "--size", &format!("{size}B"), image])
            .map(drop)
    }

    /// The image-meta value `key` of `image` (None: not set).
    pub fn meta_get(&self, image: &str, key: &str) -> Result<Option<String>> {
        match self.run(&["image-meta", "get", image, key]) {
            Ok(out) => Ok(Some(String::from_utf8_lossy(&out).trim_end().to_string())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Set the image-meta `key` of `image` to `value`.
    pub fn meta_set(&self, image: &str, key: &str, value: &str) -> Result<()> {
        self.run(&["image-meta", "set", image, key, value])
            .map(drop)
    }

    /// The clones of snapshot `spec` (POOL/IMAGE@SNAP), as POOL/IMAGE.
    pub fn children(&self, spec: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Child {
            pool: String,
            #[serde(default)]
            pool_namespace: String,
            image: String,
        }
        let v: Vec<Child> = self.json(&["children", "--format", "json", spec])?;
        Ok(v.into_iter()
            .map(|c| {
                if c.pool_namespace.is_empty() {
                    format!("{}/{}", c.pool, c.image)
                } else {
                    format!("{}/{}/{}", c.pool, c.pool_namespace, c.image)
                }
            })
            .collect())
    }

    /// The image names of `pool`.
    pub fn list(&self, pool: &str) -> Result<Vec<String>> {
        self.json(&["ls", "--format", "json", pool])
    }

    /// Remove `image` (it must have no snapshots left).
    pub fn remove(&self, image: &str) -> Result<()> {
        self.run(&["rm", "--no-progress", image]).map(drop)
    }

    /// Create snapshot `image@snap`.
    pub fn snap_create(&self, image: &str, snap: &str) -> Result<()> {
        self.run(&[
            "snap",
            "create",
            "--no-progress",
            &format!("{image}@{snap}"),
        ])
        .map(drop)
    }

    /// Protect `image@snap` (clone format 1 needs it; harmless for 2).
    pub fn snap_protect(&self, image: &str, snap: &str) -> Result<()> {
        self.run(&["snap", "protect", &format!("{image}@{snap}")])
            .map(drop)
    }

    /// Remove snapshot `image@snap` (unprotecting it first if `protected`).
    pub fn snap_remove(&self, image: &str, snap: &str, protected: bool) -> Result<()> {
        let spec = format!("{image}@{snap}");
        if protected {
            self.run(&["snap", "unprotect", &spec])?;
        }
        self.run(&["snap", "rm", "--no-progress", &spec]).map(drop)
    }

    /// Clone `parent@snap` as `image`.
    pub fn clone_image(&self, parent: &str, snap: &str, image: &str) -> Result<()> {
        self.run(&["clone", &format!("{parent}@{snap}"), image])
            .map(drop)
    }

    /// Run `rbd import-diff - image`, feeding its stdin with `feed`. The
    /// import counts only when both the feed and rbd succeed; when `feed`
    /// fails, rbd is stopped (its stdin closes before an end record, so it
    /// fails too).
    pub fn import_diff<T>(
        &self,
        image: &str,
        feed: impl FnOnce(&mut dyn Write) -> Result<T>,
    ) -> Result<T> {
        let args: Vec<OsString> = ["import-diff", "--no-progress", "-", image]
            .iter()
            .map(OsString::from)
            .collect();
        let mut child = self
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let stderr = drain(&mut child);
        let r = {
            let mut stdin = std::io::BufWriter::with_capacity(
                1 << 20,
                child.stdin.take().expect("stdin was piped"),
            );
            let r = feed(&mut stdin);
            let flushed = stdin.flush();
            drop(stdin);
            r.and_then(|v| flushed.map(|_| v).map_err(Error::from))
        };
        let status = child.wait()?;
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(tool_error(&args, status, &err));
        }
        r
    }

    /// Run `rbd export-diff [--from-snap FROM] spec -` and hand its stdout
    /// to `read`; the result counts only when rbd succeeds too.
    pub fn export_diff<T>(
        &self,
        spec: &str,
        from_snap: Option<&str>,
        read: impl FnOnce(&mut dyn Read) -> Result<T>,
    ) -> Result<T> {
        let mut a = vec!["export-diff", "--no-progress"];
        if let Some(f) = from_snap {
            a.extend(["--from-snap", f]);
        }
        a.extend([spec, "-"]);
        let args: Vec<OsString> = a.iter().map(OsString::from).collect();
        let mut child = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let stderr = drain(&mut child);
        let mut stdout = child.stdout.take().expect("stdout was piped");
        let r = read(&mut stdout);
        // Let rbd finish (or fail on a closed pipe) before waiting.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        drop(stdout);
        let status = child.wait()?;
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(tool_error(&args, status, &err));
        }
        r
    }
}

/// Read a child's stderr on a thread (so that a chatty child never blocks).
fn drain(child: &mut Child) -> std::thread::JoinHandle<Vec<u8>> {
    let mut e = child.stderr.take().expect("stderr was piped");
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = e.read_to_end(&mut v);
        v
    })
}
