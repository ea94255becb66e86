//! Where a VM's files are and whose they are: paths inside the VM folder
//! are stored in `vm.json` (and the journal) relative to the folder and
//! resolved on open, so the folder can be moved; a VM has a stable id and
//! records the folder it was last saved from, so a copy of the folder is
//! told from a move, and a copy never changes a file the VM it was copied
//! from still uses.
//!
//! Knows the VM file and the journal, not disks.

use std::path::{Component, Path, PathBuf};

use crate::checkpoint::model::{read_vm_file, Journal, VmFile, VM_FILE};
use crate::error::{Error, Result};

/// `p` lexically cleaned (`.` dropped, `..` applied).
fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// How `p` is stored for a VM in `dir`: relative when inside `dir`.
fn store(dir: &Path, p: &Path) -> PathBuf {
    match clean(p).strip_prefix(dir) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => p.to_path_buf(),
    }
}

/// A stored path resolved for a VM in `dir` (absolute paths are kept).
fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Every path `vm.json` holds, changed by `f`.
fn map_vm(data: &mut VmFile, f: &dyn Fn(&Path) -> PathBuf) {
    let one = |v: &mut PathBuf| *v = f(v);
    data.disks.iter_mut().for_each(one);
    data.settings.checkpoint_location.iter_mut().for_each(one);
    data.current.disks.iter_mut().for_each(one);
    data.current.saved_state.iter_mut().for_each(one);
    for c in &mut data.checkpoints {
        c.disks.iter_mut().for_each(one);
        c.config_file.iter_mut().for_each(one);
        c.saved_state.iter_mut().for_each(one);
    }
    data.past_checkpoint_locations.iter_mut().for_each(one);
    data.pending_removals.iter_mut().for_each(one);
    for r in &mut data.references {
        for d in &mut r.disks {
            d.anchor.iter_mut().for_each(one);
            one(&mut d.map);
        }
    }
}

/// Every path a journal holds, changed by `f`.
fn map_journal(j: &mut Journal, f: &dyn Fn(&Path) -> PathBuf) {
    let one = |v: &mut PathBuf| *v = f(v);
    match j {
        Journal::Create { files, dirs, .. } => {
            files.iter_mut().for_each(one);
            dirs.iter_mut().for_each(one);
        }
        Journal::Apply {
            new_files,
            old_files,
            old_saved,
            ..
        } => {
            new_files.iter_mut().for_each(one);
            old_files.iter_mut().for_each(one);
            old_saved.iter_mut().for_each(one);
        }
        Journal::Merge {
            files, children, ..
        } => {
            files.iter_mut().for_each(one);
            children.iter_mut().for_each(one);
        }
        Journal::Remove { files, .. } | Journal::Export { files } => files.iter_mut().for_each(one),
    }
}

/// `data` as the VM in `dir` stores it: paths inside `dir` relative, the
/// folder recorded.
pub fn stored_vm(dir: &Path, data: &VmFile) -> VmFile {
    let mut d = data.clone();
    map_vm(&mut d, &|p| store(dir, p));
    d.folder = Some(dir.to_path_buf());
    d
}

/// A VM file read from `dir`, its relative paths resolved.
pub fn resolved_vm(dir: &Path, mut data: VmFile) -> VmFile {
    map_vm(&mut data, &|p| resolve(dir, p));
    data
}

/// A journal as the VM in `dir` stores it.
pub fn stored_journal(dir: &Path, j: &Journal) -> Journal {
    let mut j = j.clone();
    map_journal(&mut j, &|p| store(dir, p));
    j
}

/// A journal read from `dir`, its relative paths resolved.
pub fn resolved_journal(dir: &Path, mut j: Journal) -> Journal {
    map_journal(&mut j, &|p| resolve(dir, p));
    j
}

/// A new VM id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What opening the VM at `dir` found about where it was last saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Saved from `dir` (or a VM file from before ids): nothing to do.
    Home,
    /// Saved from another folder that holds no VM with its id any more:
    /// the folder was moved (keep the id, record the new folder).
    Moved,
    /// Saved from another folder that still holds a VM with its id: this
    /// folder is a copy of that VM (it gets a new id and never changes the
    /// files the original uses).
    Copied(PathBuf),
}

/// Where the VM file of a VM opened at `dir` was saved from.
pub fn found_at(dir: &Path, data: &VmFile) -> Found {
    let (Some(id), Some(folder)) = (&data.id, &data.folder) else {
        return Found::Home;
    };
    if folder == dir {
        return Found::Home;
    }
    match read_vm_file(&folder.join(VM_FILE)) {
        Ok(other) if other.id.as_ref() == Some(id) => Found::Copied(folder.clone()),
        _ => Found::Moved,
    }
}

/// Every file the VM `data` uses or may remove: base and current disks,
/// checkpoint disks, configuration copies and memory states.
pub fn files_of(data: &VmFile) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = data.disks.clone();
    out.extend(data.current.disks.iter().cloned());
    out.extend(data.current.saved_state.iter().cloned());
    for c in &data.checkpoints {
        out.extend(c.disks.iter().cloned());
        out.extend(c.config_file.iter().cloned());
        out.extend(c.saved_state.iter().cloned());
    }
    out
}

/// Refuse (`InvalidArgument`, naming the file and its owner, before
/// anything changes) when one of `files`, which the VM `data` is about to
/// write, merge into or remove, is used by another existing VM this one
/// shares files with (the VM it was copied from).
///
/// A disk file whose ownership stamp names another existing VM that uses
/// it (see [`user_of`]) is refused the same way, related or not.
pub fn refuse_foreign(data: &VmFile, files: &[PathBuf], what: &str) -> Result<()> {
    for f in files {
        if let Some((other, folder)) = user_of(f, data.id.as_deref())? {
            return Err(Error::InvalidArgument(format!(
                "{}: this disk file belongs to VM {:?} in {} (its ownership stamp says so, \
                 and that VM uses it); {what} would change it: nothing was changed",
                f.display(),
                other.config.name,
                folder.display()
            )));
        }
    }
    for other_dir in &data.related_vms {
        let Ok(other) = read_vm_file(&other_dir.join(VM_FILE)) else {
            continue;
        };
        if other.id.is_some() && other.id == data.id {
            continue;
        }
        let theirs = files_of(&other);
        if let Some(f) = files
            .iter()
            .find(|f| theirs.iter().any(|t| same_file(t, f)))
        {
            return Err(Error::InvalidArgument(format!(
                "{}: this disk file belongs to VM {:?} in {} (this VM is a copy of it and \
                 shares the file); {what} would change it: nothing was changed",
                f.display(),
                other.config.name,
                other_dir.display()
            )));
        }
    }
    Ok(())
}

/// Whether two paths name one file (the same path, or the same inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if clean(a) == clean(b) {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The GUID of libckpt's ownership stamp: a user metadata item of a disk
/// file holding the id and folder of the VM that owns it (written when
/// `vm create` adopts a disk and when the tree makes a differencing disk).
pub const STAMP_ITEM: uuid::Uuid = uuid::uuid!("c4e1b7a2-5d3f-4a8e-9b61-6c6b70744f57");

/// The ownership stamp of a disk file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    /// The owning VM's id.
    pub vm_id: String,
    /// The folder the owning VM was in when it stamped the file.
    pub folder: PathBuf,
}

/// The stamp of the disk file `disk`: `None` only when it has none. A file
/// that cannot be read (unreadable, corrupt metadata) or a stamp that
/// cannot be parsed is an error naming the file, never "no stamp": an
/// operation that needs the answer is refused.
pub fn stamp_of(disk: &Path) -> Result<Option<Stamp>> {
    let Some(bytes) = crate::disk::user_item::user_item(disk, &STAMP_ITEM)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        Error::corrupt(
            crate::error::Structure::MetadataItem("ownership stamp"),
            None,
            crate::error::Reason::Invalid(format!(
                "the ownership stamp of this disk file cannot be read ({e})"
            )),
        )
        .in_file(disk)
    })
}

/// The user metadata item that stamps a disk file as owned by the VM
/// `data` (in `dir`): its GUID and bytes.
pub fn stamp_item(dir: &Path, data: &VmFile) -> Result<(uuid::Uuid, Vec<u8>)> {
    let s = Stamp {
        vm_id: data.id.clone().unwrap_or_default(),
        folder: dir.to_path_buf(),
    };
    let bytes = serde_json::to_vec(&s).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok((STAMP_ITEM, bytes))
}

/// Stamp the disk file `disk` as owned by the VM `data` (in `dir`). A VHD
/// has no metadata items to hold a stamp: it stays unstamped (guarded only
/// by the locks and the VM files that name it), and this does nothing.
pub fn stamp(disk: &Path, dir: &Path, data: &VmFile) -> Result<()> {
    if crate::disk::Format::of_file(disk) == Some(crate::disk::Format::Vhd) {
        return Ok(());
    }
    let (id, bytes) = stamp_item(dir, data)?;
    crate::disk::user_item::set_user_item(disk, &id, &bytes)
}

/// The other VM that uses the disk file `disk`, as its stamp says and as
/// that VM's file confirms (its folder still holds a VM with the stamped
/// id whose tree names this very file): `(its file, its folder)`. A stamp
/// of a VM that is gone, or of this VM (`my_id`), is no one's; a stamp or
/// a VM file that cannot be read is an error (see [`stamp_of`]).
pub fn user_of(disk: &Path, my_id: Option<&str>) -> Result<Option<(VmFile, PathBuf)>> {
    let Some(s) = stamp_of(disk)? else {
        return Ok(None);
    };
    if Some(s.vm_id.as_str()) == my_id {
        return Ok(None);
    }
    let file = s.folder.join(VM_FILE);
    if !file.exists() {
        return Ok(None);
    }
    // A VM file there that cannot be read may be the owner's: an error.
    let other = read_vm_file(&file)?;
    if other.id.as_deref() != Some(s.vm_id.as_str()) {
        return Ok(None);
    }
    Ok(files_of(&other)
        .iter()
        .any(|f| same_file(f, disk))
        .then_some((other, s.folder)))
}

/// Refuse (`InvalidArgument`, naming the other VM, before anything is
/// written) to make a VM of `disks` when one of them is used by another
/// existing VM: two VMs never write one disk file. A read-only base
/// shared by VMs is given to each through its own differencing disk.
pub fn refuse_used(disks: &[PathBuf]) -> Result<()> {
    for d in disks {
        if let Some((other, folder)) = user_of(d, None)? {
            return Err(Error::InvalidArgument(format!(
                "{}: this disk is used by VM {:?} in {}; two VMs never share a disk they \
                 write: give this VM its own differencing disk over it (ckpt create --parent \
                 {} NEW.avhdx): nothing was changed",
                d.display(),
                other.config.name,
                folder.display(),
                d.display()
            )));
        }
    }
    Ok(())
}

/// The configuration copy of a checkpoint of the VM `data`: its
/// configuration, and the VM's id (so that VMs sharing a checkpoint
/// location tell their files apart).
pub fn config_copy(data: &VmFile) -> serde_json::Value {
    let mut v = serde_json::to_value(&data.config).unwrap_or_default();
    if let (Some(m), Some(id)) = (v.as_object_mut(), &data.id) {
        m.insert("vm_id".into(), serde_json::Value::String(id.clone()));
    }
    if let (Some(m), Some(folder)) = (v.as_object_mut(), &data.folder) {
        let folder = folder.to_string_lossy().into_owned();
        m.insert("vm_folder".into(), serde_json::Value::String(folder));
    }
    v
}

/// The VM (id, folder) a configuration copy at `p` names, if any.
fn config_copy_vm(p: &Path) -> Option<(String, Option<PathBuf>)> {
    let bytes = std::fs::read(p).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let id = v.get("vm_id")?.as_str()?.to_string();
    let folder = v
        .get("vm_folder")
        .and_then(|f| f.as_str())
        .map(PathBuf::from);
    Some((id, folder))
}

/// The files among `candidates` (stray-looking files of the VM `my_id`)
/// that belong to another VM's tree, so are never this VM's strays: a disk
/// stamped with another VM's id, a configuration copy naming another VM
/// (and the memory state of the same checkpoint id beside it), and any
/// file the tree of such a VM (found through those) uses.
pub fn others_files(candidates: &[PathBuf], my_id: Option<&str>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut folders: Vec<PathBuf> = Vec::new();
    let mut add_folder = |f: PathBuf| {
        if !folders.contains(&f) {
            folders.push(f);
        }
    };
    for p in candidates {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        let other = match ext {
            // A stamp that cannot be read may be another VM's: never a stray.
            "avhdx" => match stamp_of(p) {
                Ok(s) => s.map(|s| (s.vm_id, Some(s.folder))),
                Err(_) => Some((String::new(), None)),
            },
            "json" => config_copy_vm(p),
            "vmrs" => config_copy_vm(&p.with_extension("json")),
            _ => None,
        };
        if let Some((_, folder)) = other.filter(|(id, _)| Some(id.as_str()) != my_id) {
            out.push(p.clone());
            folder.into_iter().for_each(&mut add_folder);
        }
    }
    for f in &folders {
        let Ok(other) = read_vm_file(&f.join(VM_FILE)) else {
            continue;
        };
        if other.id.is_none() || other.id.as_deref() == my_id {
            continue;
        }
        let theirs = files_of(&other);
        out.extend(
            candidates
                .iter()
                .filter(|c| theirs.iter().any(|t| same_file(t, c)))
                .cloned(),
        );
    }
    out.sort();
    out.dedup();
    out
}
