//! The manifest of an export: a `"backup"` object in the export's
//! `config.json`, beside the VM's configuration (readers of the
//! configuration ignore it). It says which point of the tree the export
//! captured, what it was made from (a full copy, or the changes since a
//! point on top of a base export), and each disk file's DataWriteGuid,
//! virtual size and sector size, so that a later incremental can check
//! cheaply that a `--base` folder is the export of the point it starts
//! from, unchanged.
//!
//! ```json
//! {"name": "web", "memory_mib": 1024, …,
//!  "backup": {"version": 1, "vm_id": "…", "vm_name": "web",
//!             "captured": {"id": "…", "name": "c2"},
//!             "since": {"id": "…", "name": "c1"}, "base": "/backups/inc1",
//!             "created": 1700000000,
//!             "disks": [{"file": "os.vhdx", "data_write_guid": "…",
//!                        "virtual_size": 33554432, "logical_sector_size": 512}]}}
//! ```
//!
//! `captured` is null for an export of the current state (which no later
//! point equals: it cannot be the base of an incremental); `since` and
//! `base` are null for a full export.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::export::CONFIG_FILE;
use crate::checkpoint::model::{read_json, Checkpoint, VmConfig};
use crate::disk::{Disk, OpenMode};
use crate::error::{Error, Result};

/// The key of the manifest in an export's `config.json`.
pub const MANIFEST_KEY: &str = "backup";

/// The manifest's format version.
const VERSION: u32 = 1;

/// A point of the checkpoint tree an export captured or started from:
/// a checkpoint, by its stable id (and its name then, for messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// The checkpoint's stable id.
    pub id: String,
    /// Its name when the export was made.
    pub name: String,
}

impl Point {
    /// The point of checkpoint `c`.
    pub fn of(c: &Checkpoint) -> Point {
        Point {
            id: c.id.clone(),
            name: c.name.clone(),
        }
    }
}

/// What an export records about one of its disk files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDisk {
    /// The file's name inside the export folder.
    pub file: String,
    /// Its DataWriteGuid once written (a child made on it links to it; any
    /// later write changes it).
    pub data_write_guid: String,
    /// Its virtual size in bytes.
    pub virtual_size: u64,
    /// Its logical sector size in bytes.
    pub logical_sector_size: u32,
}

/// The manifest of an export (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest's format version (1).
    pub version: u32,
    /// The stable id of the VM exported.
    #[serde(default)]
    pub vm_id: Option<String>,
    /// The VM's name then.
    pub vm_name: String,
    /// The checkpoint exported; None for the current state.
    pub captured: Option<Point>,
    /// For an incremental: the point its changes start from (what the base
    /// export captured).
    #[serde(default)]
    pub since: Option<Point>,
    /// For an incremental: the base export's folder, absolute, as it was
    /// when the incremental was made (its disks' locators lead there too).
    #[serde(default)]
    pub base: Option<PathBuf>,
    /// When the export was made, seconds since the Unix epoch.
    pub created: u64,
    /// The disk files, in the VM's disk order.
    pub disks: Vec<ManifestDisk>,
}

impl Manifest {
    /// The manifest of an export just written into `dest`, whose disk
    /// files are `files` (in the VM's disk order): their DataWriteGuids,
    /// sizes and sector sizes read back.
    pub(crate) fn of_export(
        vm_id: Option<String>,
        vm_name: &str,
        captured: Option<Point>,
        since: Option<(Point, PathBuf)>,
        files: &[PathBuf],
    ) -> Result<Manifest> {
        let mut disks = Vec::with_capacity(files.len());
        for f in files {
            let d = Disk::open_single(f)?;
            let info = d.info();
            disks.push(ManifestDisk {
                file: f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                data_write_guid: info.data_write_guid.to_string(),
                virtual_size: info.virtual_size,
                logical_sector_size: info.logical_sector_size,
            });
        }
        let (since, base) = match since {
            Some((p, b)) => (Some(p), Some(b)),
            None => (None, None),
        };
        Ok(Manifest {
            version: VERSION,
            vm_id,
            vm_name: vm_name.to_string(),
            captured,
            since,
            base,
            created: crate::checkpoint::vm::now(),
            disks,
        })
    }

    /// What the manifest says was captured, for messages: `checkpoint
    /// "c1" (id …)` or `the current state`.
    pub fn captured_text(&self) -> String {
        match &self.captured {
            Some(p) => format!("checkpoint {:?} (id {})", p.name, p.id),
            None => "the current state".into(),
        }
    }
}

/// The `config.json` of an export: the configuration with the manifest
/// under [`MANIFEST_KEY`].
pub(crate) fn config_with_manifest(
    config: &VmConfig,
    manifest: &Manifest,
) -> Result<serde_json::Value> {
    let to_value = |v: serde_json::Result<serde_json::Value>| {
        v.map_err(|e| Error::InvalidArgument(format!("configuration JSON: {e}")))
    };
    let mut v = to_value(serde_json::to_value(config))?;
    let m = to_value(serde_json::to_value(manifest))?;
    if let Some(o) = v.as_object_mut() {
        o.insert(MANIFEST_KEY.into(), m);
    }
    Ok(v)
}

/// The manifest of the export folder `dir`. An export made before
/// manifests existed, or a folder that is no export, is refused with a
/// message saying so.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let file = dir.join(CONFIG_FILE);
    if !file.is_file() {
        return Err(Error::NotFound(format!(
            "{} is not an export folder: it has no {CONFIG_FILE}",
            dir.display()
        )));
    }
    let v: serde_json::Value = read_json(&file)?;
    let Some(m) = v.get(MANIFEST_KEY) else {
        return Err(Error::InvalidArgument(format!(
            "{}: the export has no backup manifest (\"{MANIFEST_KEY}\"), so what it captured \
             is unknown (made by an older libckpt?): make a new full export as the base of \
             the backup set",
            file.display()
        )));
    };
    let m: Manifest = serde_json::from_value(m.clone()).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: the backup manifest (\"{MANIFEST_KEY}\") is not valid: {e}",
            file.display()
        ))
    })?;
    if m.version != VERSION {
        return Err(Error::Unsupported(format!(
            "{}: backup manifest version {} (this libckpt knows version {VERSION})",
            file.display(),
            m.version
        )));
    }
    Ok(m)
}

/// Check that the export folder `base` can carry an incremental of the
/// VM `vm_id` since `since` whose disks are `sources` (the disks of the
/// point exported, in the VM's disk order): its manifest says it captured
/// `since` of this VM, and each of its disks is there, unchanged (the
/// DataWriteGuid the manifest recorded), of the same virtual size and
/// sector size. Returns the base's disk files, in the VM's disk order.
pub(crate) fn check_base(
    base: &Path,
    vm_id: Option<&str>,
    since: &Point,
    sources: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let m = read_manifest(base)?;
    let bad = |what: String| Error::InvalidArgument(format!("--base {}: {what}", base.display()));
    if let (Some(a), Some(b)) = (m.vm_id.as_deref(), vm_id) {
        if a != b {
            return Err(bad(format!(
                "it is an export of another VM ({:?}, id {a})",
                m.vm_name
            )));
        }
    }
    if m.captured.as_ref().map(|p| p.id.as_str()) != Some(since.id.as_str()) {
        return Err(bad(format!(
            "it captured {}, not {:?} (id {}) that the changes start from: give the \
             export of {:?} (the last backup made of it) as --base",
            m.captured_text(),
            since.name,
            since.id,
            since.name
        )));
    }
    if m.disks.len() != sources.len() {
        return Err(bad(format!(
            "it has {} disk(s), the VM has {}",
            m.disks.len(),
            sources.len()
        )));
    }
    let mut files = Vec::with_capacity(sources.len());
    for (d, src) in m.disks.iter().zip(sources) {
        let f = base.join(&d.file);
        let disk = Disk::open(&f, OpenMode::ReadOnly).map_err(|e| {
            bad(format!(
                "its disk {} cannot be opened with its chain: {e}",
                d.file
            ))
        })?;
        let info = disk.info();
        if info.data_write_guid.to_string() != d.data_write_guid {
            return Err(bad(format!(
                "its disk {} was changed after the export (DataWriteGuid {}, the export \
                 recorded {}): it no longer holds what the export captured",
                d.file, info.data_write_guid, d.data_write_guid
            )));
        }
        let s = Disk::open(src, OpenMode::ReadOnly)?;
        if info.virtual_size != s.virtual_size()
            || info.logical_sector_size != s.logical_sector_size()
        {
            return Err(bad(format!(
                "its disk {} has a virtual size of {} bytes and {}-byte sectors, the VM's \
                 disk {} has {} bytes and {}-byte sectors",
                d.file,
                info.virtual_size,
                info.logical_sector_size,
                src.display(),
                s.virtual_size(),
                s.logical_sector_size()
            )));
        }
        files.push(f);
    }
    Ok(files)
}
