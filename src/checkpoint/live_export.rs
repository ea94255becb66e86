//! Export of the current state of an attached VM ([`Vm::export`] with no
//! checkpoint name while a guest writes through [`Vm::disk`]): a
//! point-in-time copy through a temporary checkpoint, without pausing the
//! guest for the copy.
//!
//! 1. A temporary checkpoint is taken live, as a production checkpoint of
//!    a running VM is: [`Hooks::quiesce`], the short pause in which every
//!    live handle switches to a new differencing disk (see `live.rs`), then
//!    [`Hooks::thaw`]. When quiescing fails the copy is crash-consistent
//!    (the disks as a power cut would leave them) and a warning says so;
//!    with the setting production-only the export is refused instead,
//!    changing nothing. An off or saved VM is not quiesced. It keeps no
//!    memory state ([`Hooks::save_memory`] is never called): only a saved
//!    VM's export has `memory.vmrs`, its saved state, as offline.
//! 2. The checkpoint's frozen disks are flattened into the export folder
//!    (progress and cancel as for any export) while the guest writes into
//!    the new layer.
//! 3. The temporary checkpoint is deleted live (the delete of the
//!    checkpoint the current state hangs under, `delete.rs`), with its
//!    hidden leftovers collapsed as after any delete: the tree keeps the
//!    same checkpoints with the same ids, and the current state holds
//!    everything the guest wrote. Also after a cancel or a failed copy.
//!
//! The temporary checkpoint is a hidden node from the moment it is
//! committed, named [`EXPORT_CHECKPOINT_NAME`]: never listed as a
//! checkpoint, never found by name, and — as any hidden node whose only
//! dependant is the current state — merged away when the VM is next opened
//! (`recover.rs` collapses it). So a crash at any point leaves no visible
//! checkpoint: its journaled create is undone or committed, a journaled
//! export removes its files, a journaled delete is finished, and the
//! reopen collapses what is left. The switch follows the VM's state, not
//! its checkpoint setting: checkpoints disabled do not refuse an export.

use std::path::{Path, PathBuf};

use super::backup::incremental::IncrementalBase;
use super::create::*;
use super::export::check_export_folder;
use super::vm::*;
use crate::checkpoint::model::*;
use crate::error::{Error, Result};

/// The name of the temporary checkpoint of an export of a running VM's
/// current state (a hidden node: shown only where hidden nodes are).
pub const EXPORT_CHECKPOINT_NAME: &str = "(temporary checkpoint of an export)";

impl Vm {
    /// [`Vm::export`] of the current state of an attached VM (see the
    /// module doc).
    ///
    /// With `inc`, an incremental export on that base
    /// ([`Vm::export_incremental`]): the changes are those up to the
    /// temporary checkpoint.
    pub(super) fn export_running(
        &mut self,
        dest: &Path,
        hooks: &mut dyn Hooks,
        inc: Option<&IncrementalBase>,
    ) -> Result<Vec<PathBuf>> {
        check_export_folder(dest)?;
        let config = self.data.config.clone();
        let saved = self.data.current.saved_state.clone();
        let id = self.take_temporary(hooks)?;
        let disks = self.data.checkpoints[self.index(&id)?].disks.clone();
        let r = match inc.map(|i| i.plan(&disks)).transpose() {
            Ok(plan) => self.export_into(
                &disks,
                &config,
                saved.as_deref(),
                dest,
                hooks,
                None,
                plan.as_ref(),
            ),
            Err(e) => Err(e),
        };
        // The temporary checkpoint goes whatever the copy did; the delete
        // is not the export's to report or cancel.
        let d = self
            .settle(None)
            .and_then(|_| self.delete_id(&id, &mut NoHooks));
        if let Err(e) = d {
            self.warnings.push(format!(
                "the temporary checkpoint of the export ({}) could not be merged back yet \
                 ({e}): it stays hidden and is merged when the VM is next opened",
                id
            ));
        } else {
            let r = self.collapse_hidden();
            self.after_commit("exporting the current state", r);
        }
        r
    }

    /// Step 1: quiesce (a running VM), take the temporary checkpoint
    /// live, thaw. Returns its id. A failure changes nothing.
    fn take_temporary(&mut self, hooks: &mut dyn Hooks) -> Result<String> {
        let mut quiesced = false;
        if self.data.state == VmState::Running {
            match hooks.quiesce() {
                Ok(()) => quiesced = true,
                Err(reason)
                    if self.data.settings.checkpoint_type == CheckpointType::ProductionOnly =>
                {
                    return Err(Error::InvalidArgument(format!(
                        "export of the running VM's current state refused (production-only): \
                         quiesce failed: {reason}; nothing was changed"
                    )))
                }
                Err(reason) => self.warnings.push(format!(
                    "the export of the current state is only crash-consistent (as after a \
                     power cut): quiesce failed: {reason}"
                )),
            }
        }
        let r = self.temporary_inner(quiesced);
        if quiesced {
            hooks.thaw();
        }
        if r.is_err() {
            // Undo what was made (the journal says what).
            let _ = self.reconcile();
        }
        r
    }

    fn temporary_inner(&mut self, quiesced: bool) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let new_disks = self.current_children(&id);
        self.journal(&Journal::Create {
            id: id.clone(),
            files: new_disks.clone(),
            then_apply: None,
            dirs: Vec::new(),
        })?;
        let Some(children) = self.prepare_live(&new_disks)? else {
            return Err(Error::InvalidArgument(
                "the VM is not attached: nothing to export live".into(),
            ));
        };
        let ck = Checkpoint {
            id: id.clone(),
            name: EXPORT_CHECKPOINT_NAME.to_string(),
            parent: self.data.current.parent.clone(),
            created: now(),
            taken: if quiesced {
                TakenType::Production
            } else {
                TakenType::Standard
            },
            requested: self.data.settings.checkpoint_type,
            fallback_reason: None,
            disks: self.data.current.disks.clone(),
            skipped_passthrough: self.data.config.passthrough.clone(),
            config_file: None,
            saved_state: None,
            hidden: true,
            deleting: false,
            vm_state: Some(self.data.state),
            warnings: Vec::new(),
        };
        self.data.checkpoints.push(ck);
        self.data.current.parent = Some(id.clone());
        self.data.current.disks = new_disks;
        self.switch_live(children, &id, |vm| vm.save())?;
        // Committed: a journal left is tidied up by the next operation.
        let r = self.end_journal();
        self.after_commit("taking the temporary checkpoint of an export", r);
        Ok(id)
    }
}
