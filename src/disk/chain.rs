//! Opening a chain of differencing disks: finding each parent through its
//! locator, checking the linkage, depth and cycles.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::disk::image::Image;
use crate::disk::path::{absolute, normalize};
use crate::disk::vhd::{Vhd, VhdParent};
use crate::disk::vhdx::{ParentSpec, Vhdx};
use crate::disk::{open_file, Layer, OpenMode, MAX_CHAIN_DEPTH};
use crate::error::{Error, Reason, Result, Structure};
use crate::format::locator::{self, ParentLocator};

/// Open `path` and every parent under it.
pub(super) fn open_chain(path: &Path, mode: OpenMode) -> Result<Vec<Layer>> {
    walk_chain(path, mode, HashSet::new())
}

/// Open the parents of `file` (already open, stored at `path`), read-only,
/// with the linkage of `file` to the first checked; empty for a base disk.
pub(super) fn open_parents(file: &Image, path: &Path) -> Result<Vec<Layer>> {
    if !file.has_parent() {
        return Ok(Vec::new());
    }
    let parent = find_parent(file, path)?;
    let parent = std::fs::canonicalize(&parent).unwrap_or(parent);
    let mut seen = HashSet::new();
    if let Ok(me) = std::fs::canonicalize(path) {
        seen.insert(me);
    }
    let layers = walk_chain(&parent, OpenMode::ReadOnly, seen)?;
    check_linkage(file, &layers[0].file, Some(path), layers[0].path.as_deref())?;
    Ok(layers)
}

/// Open `path` and its parents; a file in `seen` (the canonical paths of
/// files open already) is a loop.
fn walk_chain(path: &Path, mode: OpenMode, mut seen: HashSet<PathBuf>) -> Result<Vec<Layer>> {
    let mut layers: Vec<Layer> = Vec::new();
    let mut next = path.to_path_buf();
    loop {
        let ro = !layers.is_empty() || mode == OpenMode::ReadOnly;
        let canon = std::fs::canonicalize(&next).map_err(|e| Error::from(e).in_file(&next))?;
        if !seen.insert(canon.clone()) {
            return Err(Error::corrupt(
                Structure::Chain,
                None,
                Reason::Invalid(format!(
                    "the chain of {} loops back to {}",
                    path.display(),
                    canon.display()
                )),
            ));
        }
        if layers.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::corrupt(
                Structure::Chain,
                None,
                Reason::Invalid(format!(
                    "the chain of {} is deeper than {MAX_CHAIN_DEPTH} disks",
                    path.display()
                )),
            ));
        }
        let storage = open_file(&next, !ro)?;
        let file = Image::open(Arc::new(storage), ro).map_err(|e| e.in_file(&next))?;
        if let Some(child) = layers.last() {
            check_linkage(&child.file, &file, child.path.as_deref(), Some(&next))?;
        }
        let parent = if file.has_parent() {
            Some(find_parent(&file, &next)?)
        } else {
            None
        };
        layers.push(Layer {
            path: Some(next.clone()),
            file,
        });
        match parent {
            Some(p) => next = std::fs::canonicalize(&p).unwrap_or(p),
            None => break,
        }
    }
    if mode == OpenMode::ReadWrite && layers.len() > 1 {
        refresh_stale_paths(&layers[0], &layers[1]).map_err(|e| e.in_file(path))?;
    }
    Ok(layers)
}

/// After a chain opened read-write, bring the top's stale locator paths up
/// to date (the spec asks for it): a relative path that no longer leads to
/// the parent found, and an absolute path of this host's form (one a
/// Windows host wrote, `C:\…`, is kept).
fn refresh_stale_paths(child: &Layer, parent: &Layer) -> Result<()> {
    let (Some(cpath), Some(ppath)) = (child.path.as_deref(), parent.path.as_deref()) else {
        return Ok(());
    };
    // A VHD's locators are kept as they are (a re-parent rewrites them).
    let Some(vchild) = child.file.as_vhdx() else {
        return Ok(());
    };
    let mut loc = locator_of(&child.file)?;
    let found = std::fs::canonicalize(ppath)?;
    let leads_to_parent = |v: Option<&str>, relative: bool| -> bool {
        v.map(|v| {
            let p = if relative {
                cpath.parent().unwrap_or(Path::new(".")).join(host_path(v))
            } else {
                host_path(v)
            };
            std::fs::canonicalize(p).ok().as_ref() == Some(&found)
        })
        .unwrap_or(false)
    };
    if found.to_str().is_none() || cpath.to_str().is_none() {
        // A locator holds text: a path that is not UTF-8 cannot be stored.
        return Ok(());
    }
    let fresh = locator_for(cpath, ppath, &uuid::Uuid::nil())?;
    let mut changed = false;
    if !leads_to_parent(loc.get(locator::RELATIVE_PATH), true) {
        if let Some(v) = fresh.get(locator::RELATIVE_PATH) {
            loc.set(locator::RELATIVE_PATH, v.to_string());
            changed = true;
        }
    }
    let abs = loc.get(locator::ABSOLUTE_WIN32_PATH);
    let host_form = abs.is_none_or(|a| a.starts_with('\\') && !a.starts_with("\\\\"));
    if host_form && !leads_to_parent(abs, false) {
        if let Some(v) = fresh.get(locator::ABSOLUTE_WIN32_PATH) {
            loc.set(locator::ABSOLUTE_WIN32_PATH, v.to_string());
            changed = true;
        }
    }
    if changed {
        vchild.set_parent_locator(loc.to_bytes())?;
    }
    Ok(())
}

/// The parent locator of a differencing file (a VHD's locator entries in
/// the same shape).
pub(super) fn locator_of(file: &Image) -> Result<ParentLocator> {
    match (file.as_vhdx(), file.as_vhd()) {
        (Some(v), _) => vhdx_locator_of(v),
        (None, Some(v)) => Ok(v.parent_locator()),
        (None, None) => unreachable!("an image is a VHDX or a VHD"),
    }
}

/// The parent locator of a differencing VHDX.
pub(super) fn vhdx_locator_of(file: &Vhdx) -> Result<ParentLocator> {
    let raw = file.metadata().parent_locator.ok_or_else(|| {
        Error::corrupt(
            Structure::MetadataTable,
            None,
            Reason::Missing("the parent locator of a differencing disk"),
        )
    })?;
    ParentLocator::parse(&raw)
}

/// Turn a Windows-style locator path into a host path.
fn host_path(p: &str) -> PathBuf {
    let p = p.strip_prefix("\\\\?\\").unwrap_or(p);
    PathBuf::from(p.replace('\\', "/"))
}

/// Candidate parent paths of `child_path`, in the order they are tried:
/// relative path, then absolute path.
pub(super) fn parent_candidates(loc: &ParentLocator, child_path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(rel) = loc.get(locator::RELATIVE_PATH) {
        let dir = child_path.parent().unwrap_or(Path::new("."));
        out.push(normalize(&dir.join(host_path(rel))));
    }
    if let Some(abs) = loc.get(locator::ABSOLUTE_WIN32_PATH) {
        out.push(host_path(abs));
    }
    out
}

fn find_parent(file: &Image, child_path: &Path) -> Result<PathBuf> {
    let loc = locator_of(file).map_err(|e| e.in_file(child_path))?;
    // Each path once: the relative and the absolute path often name the
    // same file (compared with their folders resolved, as the file may be
    // missing).
    let same_key = |p: &Path| match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => std::fs::canonicalize(d)
            .map(|d| d.join(n))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    };
    let mut tried: Vec<PathBuf> = Vec::new();
    let mut keys: Vec<PathBuf> = Vec::new();
    for p in parent_candidates(&loc, child_path) {
        let p = absolute(&p).unwrap_or(p);
        let key = same_key(&p);
        if !keys.contains(&key) {
            keys.push(key);
            tried.push(p);
        }
    }
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::ParentNotFound {
            child: child_path.to_path_buf(),
            tried,
        })
}

/// Check that `parent` is what `child` links to: both of one format
/// (Hyper-V refuses mixed chains too), then the VHDX DataWriteGuid or the
/// VHD unique id and timestamp.
pub(super) fn check_linkage(
    child: &Image,
    parent: &Image,
    child_path: Option<&Path>,
    parent_path: Option<&Path>,
) -> Result<()> {
    let name = |p: Option<&Path>, d: &str| p.unwrap_or(Path::new(d)).to_path_buf();
    match (
        child.as_vhdx(),
        parent.as_vhdx(),
        child.as_vhd(),
        parent.as_vhd(),
    ) {
        (Some(c), Some(p), _, _) => check_vhdx_linkage(c, p, child_path, parent_path),
        (_, _, Some(c), Some(p)) => check_vhd_linkage(
            c,
            p,
            &name(child_path, "(child)"),
            &name(parent_path, "(parent)"),
        ),
        _ => Err(Error::Unsupported(format!(
            "{} ({}) has the parent {} ({}): a chain mixes VHD and VHDX files, which neither \
             Hyper-V nor libckpt allows",
            name(child_path, "(child)").display(),
            child.format().as_str(),
            name(parent_path, "(parent)").display(),
            parent.format().as_str()
        ))),
    }
}

/// A VHD child's link to its parent: the parent footer's unique id, and
/// its timestamp (libckpt records the parent footer's timestamp; the
/// specification's "modification time" that other tools record, the
/// parent file's mtime, is accepted too).
fn check_vhd_linkage(
    child: &Vhd,
    parent: &Vhd,
    child_path: &Path,
    parent_path: &Path,
) -> Result<()> {
    let Some((id, ts)) = child.parent_link() else {
        return Err(Error::corrupt(
            Structure::VhdHeader,
            None,
            Reason::Missing("the dynamic header of a differencing VHD"),
        ));
    };
    let stale = |detail: String| Error::ParentStale {
        child: child_path.to_path_buf(),
        parent: parent_path.to_path_buf(),
        detail,
    };
    if id != parent.unique_id() {
        return Err(stale(format!(
            "the child expects the parent unique id {id}, the parent has {}",
            parent.unique_id()
        )));
    }
    let mtime = std::fs::metadata(parent_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            d.as_secs()
                .saturating_sub(crate::disk::vhd::footer::VHD_EPOCH) as u32
        });
    if ts != parent.timestamp() && Some(ts) != mtime {
        return Err(stale(format!(
            "the child expects the parent timestamp {ts}, the parent's footer has {}{}",
            parent.timestamp(),
            mtime
                .map(|m| format!(" and its file time is {m}"))
                .unwrap_or_default()
        )));
    }
    Ok(())
}

/// What a new VHD child of the VHD `parent` (at `parent_path`) records.
pub(super) fn vhd_parent_spec(
    child_path: &Path,
    parent_path: &Path,
    parent: &Vhd,
) -> Result<VhdParent> {
    let loc = locator_for(child_path, parent_path, &uuid::Uuid::nil())?;
    let abs = loc
        .get(locator::ABSOLUTE_WIN32_PATH)
        .unwrap_or_default()
        .to_string();
    let rel = loc
        .get(locator::RELATIVE_PATH)
        .unwrap_or_default()
        .to_string();
    Ok(VhdParent {
        unique_id: *parent.unique_id().as_bytes(),
        timestamp: parent.timestamp(),
        name: parent_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        absolute: abs,
        relative: rel,
    })
}

/// Check that `parent`'s DataWriteGuid is what the VHDX `child` links to.
fn check_vhdx_linkage(
    child: &Vhdx,
    parent: &Vhdx,
    child_path: Option<&Path>,
    parent_path: Option<&Path>,
) -> Result<()> {
    let loc = vhdx_locator_of(child)?;
    let found = parent.header().data_write_guid;
    let l1 = loc.linkage(locator::PARENT_LINKAGE);
    let l2 = loc
        .linkage(locator::PARENT_LINKAGE2)
        .filter(|g| !g.is_nil());
    if l1 == Some(found) || l2 == Some(found) {
        // The virtual sizes may differ (Hyper-V resizes a differencing
        // disk; past a parent's end its child reads zeros), the sector
        // size, which the child's sector bitmaps count in, may not.
        let (cm, pm) = (child.metadata(), parent.metadata());
        if cm.logical_sector_size != pm.logical_sector_size {
            return Err(Error::corrupt(
                Structure::Chain,
                None,
                Reason::Invalid(format!(
                    "{}: the parent's logical sector size differs from the child's",
                    child_path.unwrap_or(Path::new("(child)")).display()
                )),
            ));
        }
        return Ok(());
    }
    let expected = l1.ok_or_else(|| {
        Error::corrupt(
            Structure::ParentLocator,
            None,
            Reason::Missing("a valid parent_linkage"),
        )
    })?;
    Err(Error::ParentMismatch {
        child: child_path.unwrap_or(Path::new("(child)")).to_path_buf(),
        parent: parent_path.unwrap_or(Path::new("(parent)")).to_path_buf(),
        expected,
        found,
    })
}

/// `target` relative to the folder `from`, Windows style (`.\x`, `..\d\x`).
pub(super) fn relative_windows_path(from_dir: &Path, target: &Path) -> Result<String> {
    let from: Vec<_> = absolute(from_dir)?
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let to: Vec<_> = absolute(target)?
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let common = from
        .iter()
        .zip(to.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<String> = Vec::new();
    if common == from.len() {
        parts.push(".".into());
    }
    for _ in common..from.len() {
        parts.push("..".into());
    }
    for c in &to[common..] {
        parts.push(c.to_string_lossy().into_owned());
    }
    Ok(parts.join("\\"))
}

/// The locator entries pointing a child at `parent_path`, in Hyper-V's
/// order (linkage, absolute path, relative path).
pub(super) fn locator_for(
    child_path: &Path,
    parent_path: &Path,
    linkage: &uuid::Uuid,
) -> Result<ParentLocator> {
    let abs = std::fs::canonicalize(parent_path).or_else(|_| absolute(parent_path))?;
    if abs.to_str().is_none() {
        return Err(Error::InvalidArgument(format!(
            "the parent {} has a path that is not UTF-8: a VHDX parent locator holds the \
             parent's path as text (UTF-16), so a parent needs a UTF-8 path",
            abs.display()
        )));
    }
    let child_dir = child_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let child_dir = std::fs::canonicalize(child_dir).or_else(|_| absolute(child_dir))?;
    let mut loc = ParentLocator::new(Vec::new());
    loc.set(locator::PARENT_LINKAGE, locator::linkage_string(linkage));
    loc.set(
        locator::ABSOLUTE_WIN32_PATH,
        abs.to_string_lossy().replace('/', "\\"),
    );
    loc.set(
        locator::RELATIVE_PATH,
        relative_windows_path(&child_dir, &abs)?,
    );
    Ok(loc)
}

/// What a new child of `parent` copies from it.
pub(super) fn parent_spec(
    child_path: &Path,
    parent_path: &Path,
    parent: &Image,
) -> Result<ParentSpec> {
    let parent = parent.vhdx_for("a VHDX child of a VHD")?;
    let h = parent.header();
    Ok(ParentSpec {
        disk_id: parent.metadata().disk_id,
        locator: locator_for(child_path, parent_path, &h.data_write_guid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_windows_style() {
        assert_eq!(
            relative_windows_path(Path::new("/a/b"), Path::new("/a/b/p.vhdx")).unwrap(),
            ".\\p.vhdx"
        );
        assert_eq!(
            relative_windows_path(Path::new("/a/b"), Path::new("/a/c/p.vhdx")).unwrap(),
            "..\\c\\p.vhdx"
        );
        assert_eq!(host_path("..\\c\\p.vhdx"), PathBuf::from("../c/p.vhdx"));
        assert_eq!(
            host_path("\\\\?\\C:\\x\\p.vhdx"),
            PathBuf::from("C:/x/p.vhdx")
        );
    }
}
