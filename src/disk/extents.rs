//! What the disk holds where: its extents, the ranges its layers change
//! ([`Range`]), and a copy of what it holds into another disk.

use super::image::Image;
use super::merge::Progress;
use super::vhdx::Src;
use super::{Disk, Extent, MIB};
use crate::error::{Error, Result};

/// A byte range of the virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    /// Start in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Sort and coalesce ranges (overlapping or adjacent ones become one).
pub fn coalesce(mut v: Vec<Range>) -> Vec<Range> {
    v.sort();
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for r in v {
        if r.length == 0 {
            continue;
        }
        match out.last_mut() {
            Some(l) if l.offset + l.length >= r.offset => {
                l.length = l.length.max(r.offset + r.length - l.offset);
            }
            _ => out.push(r),
        }
    }
    out
}

/// The ranges a single layer holds (data, or zeros that hide its parent).
pub(super) fn layer_ranges(file: &Image) -> Result<Vec<Range>> {
    let size = file.geo.virtual_size;
    let bs = file.geo.block_size as u64;
    let has_parent = file.has_parent();
    let mut out = Vec::new();
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let n = bs.min(size - pos);
        runs.clear();
        file.map(pos, n, &mut runs)?;
        let mut at = pos;
        for (l, src) in &runs {
            let counts = match src {
                Src::Data(_) => true,
                Src::Zero => has_parent,
                Src::Parent => false,
            };
            if counts {
                out.push(Range {
                    offset: at,
                    length: *l,
                });
            }
            at += l;
        }
        pos += n;
    }
    Ok(out)
}

/// Bytes a copy or a merge moves per step.
pub(super) const CHUNK: u64 = 4 << 20;

impl Disk {
    /// The whole virtual disk as extents, in order: `allocated` when some
    /// layer of the chain holds data there (false: reads as zeros).
    pub fn extents(&self) -> Result<Vec<Extent>> {
        self.extents_in(0, self.virtual_size())
    }

    /// The extents of `[offset, offset+len)`, in order, at block
    /// granularity (the first and last are cut to the range).
    pub fn extents_in(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.top().check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let size = offset + len;
        let step = self
            .layers
            .iter()
            .map(|l| l.file.geo.block_size as u64)
            .min()
            .unwrap_or(MIB);
        let mut runs = Vec::new();
        let mut pos = offset;
        while pos < size {
            let n = (step - pos % step).min(size - pos);
            let mut allocated = false;
            for l in &self.layers {
                runs.clear();
                l.file.map(pos, n, &mut runs)?;
                if runs.iter().any(|(_, s)| matches!(s, Src::Data(_))) {
                    allocated = true;
                    break;
                }
                if !runs.iter().any(|(_, s)| *s == Src::Parent) {
                    break;
                }
            }
            match out.last_mut() {
                Some(x) if x.allocated == allocated => x.length += n,
                _ => out.push(Extent {
                    offset: pos,
                    length: n,
                    allocated,
                }),
            }
            pos += n;
        }
        Ok(out)
    }

    /// The byte ranges whose content may differ between the layer `levels`
    /// below the top and the top of the chain, exact to the logical sector,
    /// sorted and coalesced. `levels == 1` gives the changes of the top file
    /// alone; `levels == depth()` compares against an empty disk.
    ///
    /// The layers may differ in size: the ranges stop at the top's end, and
    /// past the end of a layer smaller than the top (which hides what lies
    /// below it there) they include what the layers below could hold.
    pub fn changed_ranges(&self, levels: usize) -> Result<Vec<Range>> {
        if levels == 0 || levels > self.layers.len() {
            return Err(Error::InvalidArgument(format!(
                "levels must be 1 to {} for this chain, not {levels}",
                self.layers.len()
            )));
        }
        let size = self.virtual_size();
        // What the layers below still see: past the largest of them, every
        // view reads zeros.
        let below = self.layers[levels..]
            .iter()
            .map(|l| l.file.geo.virtual_size)
            .max()
            .unwrap_or(0);
        let mut all = Vec::new();
        for l in &self.layers[..levels] {
            all.extend(layer_ranges(&l.file)?);
            // A layer smaller than the top hides what is under it past its
            // end (the layers above it read zeros there): changed where the
            // layers below may hold something.
            let end = l.file.geo.virtual_size;
            let hidden = below.min(size);
            if end < hidden {
                all.push(Range {
                    offset: end,
                    length: hidden - end,
                });
            }
        }
        // Layers larger than the top hold ranges past its end.
        all.retain_mut(|r| {
            r.length = r.length.min(size.saturating_sub(r.offset));
            r.length > 0
        });
        Ok(coalesce(all))
    }

    /// Copy the whole content of this disk (through its chain) into `dst`,
    /// skipping ranges no layer holds and all-zero chunks.
    pub fn copy_to(&self, dst: &Disk, mut progress: Option<Progress>) -> Result<()> {
        if dst.virtual_size() != self.virtual_size() {
            return Err(Error::InvalidArgument(format!(
                "destination size {} differs from source size {}",
                dst.virtual_size(),
                self.virtual_size()
            )));
        }
        let extents = self.extents()?;
        let total: u64 = extents
            .iter()
            .filter(|e| e.allocated)
            .map(|e| e.length)
            .sum();
        let mut done = 0u64;
        let mut buf = vec![0u8; CHUNK as usize];
        for e in extents.iter().filter(|e| e.allocated) {
            let mut pos = e.offset;
            while pos < e.offset + e.length {
                let n = CHUNK.min(e.offset + e.length - pos) as usize;
                self.read_at(&mut buf[..n], pos)?;
                if buf[..n].iter().any(|&b| b != 0) {
                    dst.write_at(&buf[..n], pos)?;
                }
                pos += n as u64;
                done += n as u64;
                if let Some(p) = progress.as_mut() {
                    if !p(done, total) {
                        return Err(Error::Cancelled);
                    }
                }
            }
        }
        dst.flush()
    }
}
