//! Read-only structural check of a VHDX or VHD file.

use std::path::Path;
use std::sync::Arc;

use crate::disk::vhdx::Vhdx;
use crate::error::Result;
use crate::format::bat::{BatEntry, PayloadState, SB_PRESENT};
use crate::format::MIB;
use crate::io::Storage;

/// The outcome of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every inconsistency found, one sentence each. Empty when the file is sound.
    pub problems: Vec<String>,
    /// Facts worth knowing that are not problems (for example a dirty log).
    pub notes: Vec<String>,
    /// A one-line summary (kind, size, blocks allocated).
    pub summary: String,
}

impl CheckReport {
    /// No problems found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A VHD's check: its open validates every structure (footer, dynamic
/// header, BAT bounds and overlaps, locators); a lost trailing footer is a
/// note (the copy at offset 0 stands in).
fn check_vhd(storage: Arc<dyn Storage>) -> CheckReport {
    let mut r = CheckReport::default();
    match crate::disk::vhd::Vhd::open(storage, true) {
        Ok(v) => {
            if v.repaired {
                r.notes.push(
                    "the trailing footer is missing or damaged; the copy at offset 0 is used \
                     (a read-write open writes it again)"
                        .into(),
                );
            }
            r.summary = format!(
                "VHD, {}, virtual size {} bytes, {} bytes of blocks allocated",
                v.kind().as_str(),
                v.geo.virtual_size,
                v.allocated_bytes()
            );
        }
        Err(e) => {
            r.problems.push(e.to_string());
            r.summary = "not a usable VHD file".into();
        }
    }
    r
}

/// Check the VHDX at `path` without writing to it. Errors only when the file
/// cannot be read at all; damage is reported in the [`CheckReport`].
pub fn check(path: &Path) -> Result<CheckReport> {
    let storage = crate::disk::open_file(path, false)?;
    Ok(check_storage(Arc::new(storage)))
}

/// Check the VHDX or VHD held by `storage` without writing to it.
pub fn check_storage(storage: Arc<dyn Storage>) -> CheckReport {
    let mut r = CheckReport::default();
    if crate::disk::Format::detect(storage.as_ref()).ok() == Some(crate::disk::Format::Vhd) {
        return check_vhd(storage);
    }
    let (v, layout) = match Vhdx::open_with_layout(storage, true) {
        Ok(x) => x,
        Err(e) => {
            r.problems.push(e.to_string());
            r.summary = "not a usable VHDX file".into();
            return r;
        }
    };
    if let Some(p) = &layout.header_problem {
        r.notes.push(format!(
            "one header copy is damaged and the other is used (the next write repairs it): {p}"
        ));
    }
    if let Some(p) = &layout.region_problem {
        r.problems.push(format!("{p} (region table 2 is used)"));
    }
    if v.log_dirty {
        r.notes
            .push("the log holds updates that a read-write open will replay".into());
    }
    // Every object in the file, to find overlaps.
    let mut objects: Vec<(u64, u64, String)> = Vec::new();
    let h = v.header();
    if h.log_length > 0 {
        objects.push((h.log_offset, h.log_length as u64, "the log".into()));
    }
    for e in &layout.regions {
        objects.push((e.file_offset, e.length as u64, format!("region {}", e.guid)));
    }
    let bat = v.bat_snapshot();
    let geo = v.geo;
    let bs = geo.block_size as u64;
    let mut allocated = 0u64;
    for b in 0..geo.data_blocks {
        let i = geo.payload_index(b);
        let e = BatEntry(bat.at(i));
        if matches!(
            e.payload_state(),
            Some(PayloadState::FullyPresent | PayloadState::PartiallyPresent)
        ) {
            allocated += 1;
            let off = e.offset();
            if off + bs > layout.file_len {
                let end = (b * bs + bs).min(geo.virtual_size) - b * bs;
                if off + end > layout.file_len {
                    r.problems.push(format!(
                        "block {b} at {off:#x} extends past the end of the file ({:#x})",
                        layout.file_len
                    ));
                }
            }
            objects.push((off, bs, format!("block {b}")));
        }
    }
    for c in 0..geo.bitmap_blocks {
        let i = geo.bitmap_index(c);
        if let Some(raw) = bat.get(i) {
            let e = BatEntry(raw);
            if e.state_bits() == SB_PRESENT && v.has_parent() {
                objects.push((e.offset(), MIB, format!("sector bitmap {c}")));
            }
        }
    }
    objects.sort();
    for w in objects.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.0 + a.1 > b.0 {
            r.problems.push(format!(
                "{} at {:#x} overlaps {} at {:#x}",
                a.2, a.0, b.2, b.0
            ));
            if r.problems.len() > 100 {
                r.problems.push("more overlaps not listed".into());
                break;
            }
        }
    }
    r.summary = format!(
        "{} VHDX, virtual size {} bytes, block size {} bytes, {} of {} blocks allocated, {}",
        v.kind().as_str(),
        geo.virtual_size,
        bs,
        allocated,
        geo.data_blocks,
        if r.problems.is_empty() {
            "no problems found".to_string()
        } else {
            format!("{} problem(s)", r.problems.len())
        }
    );
    r
}
