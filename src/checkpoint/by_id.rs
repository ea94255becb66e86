//! Checkpoints addressed by their stable id (the `id` of `vm.json`), which
//! never changes and is never given to another checkpoint, unlike a name
//! (a rename changes it; a deleted checkpoint's name may be taken again).
//!
//! Each operation here finds the checkpoint by id, then runs the operation
//! that takes a name on the name the id has now: the id picks the
//! checkpoint, the name-taking operation keeps every rule of its own.

use std::path::{Path, PathBuf};

use super::create::Hooks;
use super::model::Checkpoint;
use super::vm::Vm;
use crate::error::{Error, Result};

impl Vm {
    /// The checkpoint whose id is `id`, hidden branch points and
    /// checkpoints being deleted included (`NotFound` when none has it).
    pub fn find_id(&self, id: &str) -> Result<&Checkpoint> {
        if id.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "a checkpoint id must not be empty".into(),
            ));
        }
        self.data
            .checkpoints
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| Error::NotFound(format!("no checkpoint has the id {id:?}")))
    }

    /// Whether a delete is pending: a checkpoint is left being deleted (a
    /// delete cancelled or failed once its disks began to change, or cut
    /// by a crash), which the next operation on the VM finishes first.
    pub fn delete_pending(&self) -> bool {
        self.data.checkpoints.iter().any(|c| c.deleting)
    }

    /// The name under which the name-taking operations reach checkpoint
    /// `id`: refused for a hidden branch point (it has no name lookups and
    /// no operation takes it).
    fn name_of_id(&self, id: &str) -> Result<String> {
        let c = self.find_id(id)?;
        if c.hidden {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {id:?} is a hidden branch point (deleted, kept only while two \
                 states read its disks): it cannot be applied, deleted, renamed or exported"
            )));
        }
        let name = c.name.clone();
        if self.find(&name)?.id != id {
            // Names are unique among visible checkpoints (`check`), so this
            // is a damaged tree; never act on another checkpoint.
            return Err(Error::InvalidArgument(format!(
                "checkpoint {id:?} shares its name {name:?} with another checkpoint"
            )));
        }
        Ok(name)
    }

    /// [`Vm::apply`] of the checkpoint whose id is `id`.
    pub fn apply_by_id(
        &mut self,
        id: &str,
        save_current: Option<&str>,
        hooks: &mut dyn Hooks,
    ) -> Result<()> {
        let name = self.name_of_id(id)?;
        self.apply(&name, save_current, hooks)
    }

    /// [`Vm::delete`] of the checkpoint whose id is `id`.
    pub fn delete_by_id(&mut self, id: &str, subtree: bool, hooks: &mut dyn Hooks) -> Result<()> {
        let name = self.name_of_id(id)?;
        self.delete(&name, subtree, hooks)
    }

    /// [`Vm::rename`] of the checkpoint whose id is `id`.
    pub fn rename_by_id(&mut self, id: &str, new_name: &str) -> Result<()> {
        let name = self.name_of_id(id)?;
        self.rename(&name, new_name)
    }

    /// [`Vm::export`] of the checkpoint whose id is `id`.
    pub fn export_by_id(
        &mut self,
        id: &str,
        dest: &Path,
        hooks: &mut dyn Hooks,
    ) -> Result<Vec<PathBuf>> {
        let name = self.name_of_id(id)?;
        self.export(Some(&name), dest, hooks)
    }
}
