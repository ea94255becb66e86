//! Export ([`Vm::export`]), and how an export names its files: the one
//! place that decides, for [`Vm::export`], the CLI and the C API.
//!
//! An export folder holds one VHDX per disk, `config.json` (with the
//! export's backup manifest, [`crate::checkpoint::backup::Manifest`]), and
//! `memory.vmrs` when the state has memory. An incremental export
//! (`backup/incremental.rs`) shares the copy below, its disks written as
//! differencing disks on a base export's. A disk file is named after the
//! VM's disk (`NAME.vhdx`, whatever its extension was) when no other disk
//! of the VM has that name; disks sharing a name get `-K` appended, K being
//! the disk's index in the VM's disk order (0 first), and `-K` again while
//! the name is still taken. Names are compared ignoring ASCII case, so that
//! an export stays valid when copied to a case-insensitive file system.
//! The names depend only on the VM's disk list: the same VM always exports
//! under the same names.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::backup::incremental::{write_incremental, IncrementalPlan};
use super::backup::manifest::config_with_manifest;
use super::backup::{Manifest, Point};
use super::create::*;
use super::vm::*;
use crate::checkpoint::model::*;
use crate::disk::merge;
use crate::disk::{CreateOptions, Disk, OpenMode};
use crate::error::{Error, Result};

/// The configuration file of an export.
pub const CONFIG_FILE: &str = "config.json";
/// The memory-state file of an export (when the state has one).
pub const MEMORY_FILE: &str = "memory.vmrs";

/// The file names an export gives the VM's disks `disks` (the VM's disks
/// as created, in order), following the rule of this module.
pub fn export_names(disks: &[PathBuf]) -> Vec<String> {
    let stems: Vec<String> = disks
        .iter()
        .enumerate()
        .map(|(k, d)| {
            d.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("disk{k}"))
        })
        .collect();
    let key = |s: &str| s.to_ascii_lowercase();
    let shared = |k: usize| {
        stems
            .iter()
            .enumerate()
            .any(|(j, s)| j != k && key(s) == key(&stems[k]))
    };
    // Unique names first: they are kept as they are.
    let mut taken: Vec<String> = (0..stems.len())
        .filter(|&k| !shared(k))
        .map(|k| key(&stems[k]))
        .collect();
    let mut out = Vec::with_capacity(stems.len());
    for (k, stem) in stems.iter().enumerate() {
        if !shared(k) {
            out.push(format!("{stem}.vhdx"));
            continue;
        }
        let mut name = format!("{stem}-{k}");
        while taken.contains(&key(&name)) {
            name.push_str(&format!("-{k}"));
        }
        taken.push(key(&name));
        out.push(format!("{name}.vhdx"));
    }
    out
}

impl Vm {
    /// Export checkpoint `name` (or the current state when `None`) into the
    /// folder `dest`: one standalone VHDX per disk, the configuration, and
    /// the memory state if any. Returns the files made, disks first (in the
    /// VM's disk order), named as [`export_names`] says; an export that
    /// fails leaves none of them.
    ///
    /// The current state of an attached VM (its guest writes through
    /// [`Vm::disk`]) is exported through a temporary checkpoint, so the copy
    /// is of one instant while the guest keeps writing: see
    /// `live_export.rs` (production semantics: the guest is quiesced for the
    /// switch when the hooks can, crash-consistent otherwise; never with
    /// memory state unless the VM is saved). A cancel or an error removes
    /// the partial export and the temporary checkpoint; the tree ends with
    /// the same checkpoints as it started.
    pub fn export(
        &mut self,
        name: Option<&str>,
        dest: &Path,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<PathBuf>> {
        self.settle(None)?;
        self.seal_live()?;
        if name.is_none() && self.attached() {
            return self.export_running(dest, hooks, None);
        }
        let (disks, config, saved): (Vec<PathBuf>, VmConfig, Option<PathBuf>) = match name {
            Some(n) => {
                let c = self.usable(n)?.clone();
                let config = match &c.config_file {
                    Some(f) => read_json(f)?,
                    None => self.data.config.clone(),
                };
                (c.disks, config, c.saved_state)
            }
            None => (
                self.data.current.disks.clone(),
                self.data.config.clone(),
                self.data.current.saved_state.clone(),
            ),
        };
        let captured = match name {
            Some(n) => Some(Point::of(self.usable(n)?)),
            None => None,
        };
        check_export_folder(dest)?;
        self.export_into(
            &disks,
            &config,
            saved.as_deref(),
            dest,
            hooks,
            captured,
            None,
        )
    }

    /// The copy of an export whose folder [`check_export_folder`] accepted:
    /// the folder made, then journaled, `disks` flattened, `config` and the
    /// memory state `saved` written; on failure every file made goes.
    ///
    /// `captured` is the checkpoint exported (None: the current state),
    /// recorded in the manifest; with `plan`, each disk is written as a
    /// differencing disk on the base export's disk holding the plan's
    /// ranges (an incremental export) instead of a flattened copy.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn export_into(
        &mut self,
        disks: &[PathBuf],
        config: &VmConfig,
        saved: Option<&Path>,
        dest: &Path,
        hooks: &mut dyn Hooks,
        captured: Option<Point>,
        plan: Option<&IncrementalPlan>,
    ) -> Result<Vec<PathBuf>> {
        remove_if_exists(&temp_of(&dest.join(CONFIG_FILE)))?;
        std::fs::create_dir_all(dest).map_err(|e| Error::from(e).in_file(dest))?;
        let dest = std::fs::canonicalize(dest).map_err(|e| Error::from(e).in_file(dest))?;
        let mut files: Vec<PathBuf> = export_names(&self.data.disks)
            .into_iter()
            .map(|n| dest.join(n))
            .collect();
        files.push(dest.join(CONFIG_FILE));
        if saved.is_some() {
            files.push(dest.join(MEMORY_FILE));
        }
        self.journal(&Journal::Export {
            files: files.clone(),
        })?;
        let r = (|| -> Result<()> {
            // One progress over all disks: the bytes each copy reads.
            let mut sizes = Vec::with_capacity(disks.len());
            for (k, src) in disks.iter().enumerate() {
                if let Some(p) = plan {
                    sizes.push(p.ranges[k].iter().map(|r| r.length).sum::<u64>());
                    continue;
                }
                let d = Disk::open(src, OpenMode::ReadOnly)?;
                let extents = d.extents()?;
                sizes.push(
                    extents
                        .iter()
                        .filter(|e| e.allocated)
                        .map(|e| e.length)
                        .sum::<u64>(),
                );
            }
            let grand_total: u64 = sizes.iter().sum();
            let mut base = 0u64;
            for (k, ((src, out), size)) in disks.iter().zip(&files).zip(sizes).enumerate() {
                let mut cb = |done: u64, _total: u64| hooks.progress(base + done, grand_total);
                match plan {
                    Some(p) => write_incremental(src, out, &p.bases[k], &p.ranges[k], &mut cb)?,
                    None => merge::flatten(src, out, &CreateOptions::new(0), Some(&mut cb))?,
                }
                base += size;
            }
            let manifest = Manifest::of_export(
                self.data.id.clone(),
                &self.data.config.name,
                captured,
                plan.map(|p| (p.since.clone(), p.base_dir.clone())),
                &files[..disks.len()],
            )?;
            write_json(
                &dest.join(CONFIG_FILE),
                &config_with_manifest(config, &manifest)?,
            )?;
            if let Some(m) = saved {
                let out = dest.join(MEMORY_FILE);
                std::fs::copy(m, &out).map_err(|e| Error::from(e).in_file(m))?;
                File::open(&out)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::from(e).in_file(&out))?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.end_journal()?;
                Ok(files)
            }
            Err(e) => {
                let _ = self.reconcile();
                Err(e)
            }
        }
    }
}

/// Refuse (`InvalidArgument`, changing nothing) an export folder that
/// exists and is not empty. A folder holding only what an interrupted
/// export's configuration write left (its temporary file) counts as empty.
pub(super) fn check_export_folder(dest: &Path) -> Result<()> {
    let leftover = temp_of(&dest.join(CONFIG_FILE));
    if dest.exists()
        && std::fs::read_dir(dest)
            .map(|mut d| d.any(|e| e.map(|e| e.path() != leftover).unwrap_or(true)))
            .unwrap_or(true)
    {
        return Err(Error::InvalidArgument(format!(
            "{} exists and is not an empty folder",
            dest.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &[&str]) -> Vec<String> {
        export_names(&p.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    #[test]
    fn unique_names_are_kept_and_shared_ones_get_the_index() {
        assert_eq!(
            names(&["/a/os.vhdx", "/b/data.avhdx"]),
            ["os.vhdx", "data.vhdx"]
        );
        assert_eq!(
            names(&["/a/disk1.vhdx", "/b/disk1.vhdx", "/c/Disk1.VHDX"]),
            ["disk1-0.vhdx", "disk1-1.vhdx", "Disk1-2.vhdx"]
        );
        // An added index that another disk already has as its name.
        assert_eq!(
            names(&["/a/x.vhdx", "/b/x.vhdx", "/c/x-0.vhdx", "/d/x-0-0.vhdx"]),
            ["x-0-0-0.vhdx", "x-1.vhdx", "x-0.vhdx", "x-0-0.vhdx"]
        );
    }

    #[test]
    fn names_never_collide() {
        let all = ["a", "a-1", "A", "a-1-1", "a-2", "a"];
        let disks: Vec<PathBuf> = all
            .iter()
            .map(|s| PathBuf::from(format!("/{s}.vhdx")))
            .collect();
        let n = export_names(&disks);
        let mut lower: Vec<String> = n.iter().map(|s| s.to_ascii_lowercase()).collect();
        lower.sort();
        lower.dedup();
        assert_eq!(lower.len(), all.len(), "{n:?}");
    }
}
