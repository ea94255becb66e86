//! Changing the kind of a base file in place (the file-level steps of
//! `Disk::convert_in_place`): the blocks a fixed file must hold are given
//! zeroed space of their own, and the LeaveBlocksAllocated flag of the
//! file parameters item is set or cleared.
//!
//! Both go through the engine's own mechanisms: a block's space comes
//! from [`Vhdx::take_space`] (reused space is zeroed first, new space is
//! past the end) and its entry is [`Vhdx::set_entry`], committed through
//! the log by the next flush (which syncs the zeroed space before it
//! writes the entry); the flag is a metadata change, one log entry of its
//! own ([`Vhdx::set_metadata`]). A crash therefore leaves each block
//! either as it was or allocated and reading zeros, and the flag either
//! set or not. Nothing here changes what the disk reads, so the session
//! keeps the DataWriteGuid (children stay linked).
//!
//! May use only the rest of the file layer.

use super::*;

impl Vhdx {
    /// The payload blocks this file does not hold in full (not
    /// FULLY_PRESENT), lowest first: a fixed file holds every one.
    pub(crate) fn blocks_not_held(&self) -> Vec<u64> {
        (0..self.geo.data_blocks)
            .filter(|&b| self.block_entry(b).payload_state() != Some(PayloadState::FullyPresent))
            .collect()
    }

    /// Start a session that keeps the DataWriteGuid (nothing this module
    /// does changes what the disk reads) and flush what is pending.
    pub(crate) fn kind_change_start(&self) -> Result<()> {
        self.compact_start()
    }

    /// Give payload block `block` of this base file zeroed space of its
    /// own and make it FULLY_PRESENT, as a first write would (the block
    /// read as zeros before: not present, zero, unmapped or undefined, so
    /// it reads the same after). Returns whether it did (false: the block
    /// was held already). The entry is durable after the next flush.
    ///
    /// Space reused from a hole is reserved in the storage too (it may
    /// have been punched out), so that a fixed file does not run out of
    /// room on a later write.
    pub(crate) fn allocate_zeroed(&self, block: u64) -> Result<bool> {
        if self.parent {
            return Err(Error::Unsupported(
                "allocating the blocks of a differencing disk".into(),
            ));
        }
        let idx = self.geo.payload_index(block);
        let bs = self.geo.block_size as u64;
        self.compact_change(1, |v, st| {
            let e = BatEntry(v.bat.at(idx));
            if e.payload_state() == Some(PayloadState::FullyPresent) {
                return Ok(false);
            }
            let end = st.file_end;
            let off = v.take_space(st, bs, true)?;
            if off < end {
                // A reused hole: reserve it (zeroed already).
                if let Err(err) = v.storage.allocate(off, bs) {
                    st.free_blocks.push(off);
                    return Err(err.into());
                }
            }
            v.set_entry(
                st,
                idx,
                BatEntry::new(PayloadState::FullyPresent.bits(), off),
            );
            Ok(true)
        })
    }

    /// Set or clear LeaveBlocksAllocated (the flag that makes a base file
    /// fixed), through the log in one entry of its own: durable when it
    /// returns, and a crash leaves the old flag or the new one.
    pub(crate) fn set_leave_allocated(&self, on: bool) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let mut m = self.metadata();
        m.file_flags
            .set(FileParameterFlags::LEAVE_BLOCK_ALLOCATED, on);
        self.set_metadata(m)
    }
}
