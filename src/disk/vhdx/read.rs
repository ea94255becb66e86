//! Reads: mapping a virtual range onto the file (data, zeros or parent).

use super::*;
use crate::disk::span::spans;

impl Vhdx {
    /// Where the bytes `[offset, offset+len)` of this layer are: runs in
    /// order. Past the layer's virtual size it reads zeros (a layer of a
    /// chain may be smaller than the layers above it: Hyper-V's rule).
    pub(crate) fn map(&self, offset: u64, len: u64, out: &mut Vec<(u64, Src)>) -> Result<()> {
        let size = self.geo.virtual_size;
        let inside = size.saturating_sub(offset).min(len);
        let past = len - inside;
        let len = inside;
        let bs = self.geo.block_size as u64;
        let lss = self.geo.logical_sector_size as u64;
        let parent = self.has_parent();
        let push = |out: &mut Vec<(u64, Src)>, n: u64, src: Src| match (out.last_mut(), src) {
            (Some((l, Src::Data(f))), Src::Data(g)) if *f + *l == g => *l += n,
            (Some((l, Src::Zero)), Src::Zero) => *l += n,
            (Some((l, Src::Parent)), Src::Parent) => *l += n,
            _ => out.push((n, src)),
        };
        for s in spans(offset, len, bs) {
            let (block, pos, within, n) = (s.block, s.pos, s.within, s.len);
            let e = BatEntry(self.bat.at(self.geo.payload_index(block)));
            match e.payload_state() {
                Some(PayloadState::FullyPresent) => push(out, n, Src::Data(e.offset() + within)),
                Some(PayloadState::NotPresent) if parent => push(out, n, Src::Parent),
                Some(PayloadState::PartiallyPresent) if parent => {
                    // Per sector, through the bitmap.
                    let mut p = pos;
                    while p < pos + n {
                        let w = p % bs;
                        let sector = w / lss;
                        let max_sectors = (w + (pos + n - p)).div_ceil(lss) - sector;
                        let (present, run) = self.bit_run(block, sector, max_sectors)?;
                        let run_end = ((sector + run) * lss).min(w + (pos + n - p));
                        let m = run_end - w;
                        push(
                            out,
                            m,
                            if present {
                                Src::Data(e.offset() + w)
                            } else {
                                Src::Parent
                            },
                        );
                        p += m;
                    }
                }
                _ => push(out, n, Src::Zero),
            }
        }
        if past > 0 {
            push(out, past, Src::Zero);
        }
        Ok(())
    }

    /// The first run of `[offset, offset+len)` (never past the end of its
    /// block, except that past the layer's virtual size the whole rest of
    /// the range is one run of zeros: see [`Vhdx::map`]): its length and
    /// where it is. No allocation.
    pub(crate) fn map_first(&self, offset: u64, len: u64) -> Result<(u64, Src)> {
        let size = self.geo.virtual_size;
        if offset >= size {
            return Ok((len, Src::Zero));
        }
        let bs = self.geo.block_size as u64;
        let block = offset / bs;
        let within = offset % bs;
        let n = (bs - within).min(len).min(size - offset);
        let e = BatEntry(self.bat.at(self.geo.payload_index(block)));
        Ok(match e.payload_state() {
            Some(PayloadState::FullyPresent) => (n, Src::Data(e.offset() + within)),
            Some(PayloadState::NotPresent) if self.parent => (n, Src::Parent),
            Some(PayloadState::PartiallyPresent) if self.parent => {
                let lss = self.geo.logical_sector_size as u64;
                let sector = within / lss;
                let max_sectors = (within + n).div_ceil(lss) - sector;
                let (present, run) = self.bit_run(block, sector, max_sectors)?;
                let m = ((sector + run) * lss).min(within + n) - within;
                (
                    m,
                    if present {
                        Src::Data(e.offset() + within)
                    } else {
                        Src::Parent
                    },
                )
            }
            _ => (n, Src::Zero),
        })
    }

    /// Read from this layer alone (parent runs read as zeros).
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let _io = self.io_guard();
        // Run by run, with no allocation (the common 4 KiB read is one run).
        let mut at = 0usize;
        while at < buf.len() {
            let (l, src) = self.map_first(offset + at as u64, (buf.len() - at) as u64)?;
            let dst = &mut buf[at..at + l as usize];
            match src {
                Src::Data(f) => self.storage.read_at(dst, f)?,
                Src::Zero | Src::Parent => dst.fill(0),
            }
            at += l as usize;
        }
        Ok(())
    }

    /// Hold while using file offsets looked up with [`Vhdx::map`] or
    /// [`Vhdx::map_first`] on a file that may be written meanwhile: the
    /// space they name is not given to another block until it is dropped.
    /// Never take it twice on one thread (a flush waiting in between would
    /// deadlock).
    ///
    /// A read-only file takes nothing: only a flush or a compaction of this
    /// handle moves space, and neither runs on one (and two readers on
    /// two cores then share no lock word).
    pub(crate) fn io_guard(&self) -> Option<RwLockReadGuard<'_, ()>> {
        (!self.read_only).then(|| rlock(&self.gate))
    }

    /// Read file bytes of this layer (for runs returned by [`Vhdx::map`]).
    pub(crate) fn read_raw(&self, buf: &mut [u8], file_offset: u64) -> Result<()> {
        Ok(self.storage.read_at(buf, file_offset)?)
    }

    /// The storage under this file.
    pub(crate) fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }
}
