//! Pointing a differencing VHD at another parent (a re-parent): a new
//! dynamic header (the parent's unique id, timestamp and name) and new
//! locator data, written to fresh space, then the footer that names them.
//!
//! VHD has no log, and a header is two sectors, so it is never rewritten
//! in place: a cut in the middle of that write could leave a header whose
//! checksum fails, and the file would not open. Instead the new locator
//! data and header go where the footer is (the file grows by the header
//! and the locators' space, a few KiB per re-parent), synced; then the
//! trailing footer, naming the new header (`data_offset`), one sector
//! past them, synced; then the footer copy at offset 0, synced. Until the
//! trailing footer is durable the file opens as before (a lost trailing
//! footer falls back to the copy at offset 0, which still names the old
//! header, whose data is untouched); after it, with the new parent. The
//! old header and locator data stay behind as unused space.

use super::create::VhdParent;
use super::header::LOCATORS;
use super::locator::{encode_utf16le, W2KU, W2RU};
use super::{lock, Vhd};
use crate::error::{Error, Result};

impl Vhd {
    /// Record `parent` as this differencing disk's parent. Nothing is
    /// written when the file records it already (a retry, or a journal's
    /// finish, re-points the same file again: the file does not grow).
    pub(crate) fn set_parent(&self, parent: &VhdParent) -> Result<()> {
        self.writable()?;
        if !self.has_parent() {
            return Err(Error::InvalidArgument("not a differencing VHD".into()));
        }
        let mut st = lock(&self.state);
        let Some(mut h) = st.header.clone() else {
            return Err(Error::InvalidArgument("not a differencing VHD".into()));
        };
        let same_paths = {
            let l = self.locators.read().unwrap_or_else(|e| e.into_inner());
            [(W2KU, &parent.absolute), (W2RU, &parent.relative)]
                .into_iter()
                .all(|(code, path)| {
                    l.iter()
                        .any(|(c, d)| *c == code && *d == encode_utf16le(path))
                })
        };
        if same_paths
            && h.parent_id == parent.unique_id
            && h.parent_timestamp == parent.timestamp
            && h.parent_name == parent.name
        {
            return Ok(());
        }
        // Fresh space: the new header first, then each locator's data.
        let start = st.footer_pos.div_ceil(512) * 512;
        let mut at = start + super::header::HEADER_SIZE as u64;
        let mut datas = Vec::new();
        for (code, path) in [(W2KU, &parent.absolute), (W2RU, &parent.relative)] {
            let d = encode_utf16le(path);
            let Some(i) = (0..LOCATORS).find(|&i| h.locators[i].code == code) else {
                return Err(Error::Unsupported(format!(
                    "the VHD has no {} parent locator to rewrite",
                    String::from_utf8_lossy(&code.to_be_bytes())
                )));
            };
            let e = &mut h.locators[i];
            let need = (d.len() as u64).div_ceil(512).max(1) * 512;
            if need > e.space_bytes() {
                // The same unit as before: sectors (the specification's)
                // when the entry counted sectors, else bytes.
                e.space = if e.space < 512 {
                    (need / 512) as u32
                } else {
                    need as u32
                };
            }
            e.length = d.len() as u32;
            e.offset = at;
            at += e.space_bytes();
            datas.push((e.offset, d));
        }
        h.parent_id = parent.unique_id;
        h.parent_timestamp = parent.timestamp;
        h.parent_name = parent.name.clone();
        let footer_at = at;
        if footer_at / 512 >= super::UNALLOCATED as u64 {
            return Err(Error::NoSpace(
                "a VHD file cannot grow past 2 TiB (its BAT counts 32-bit sectors)".into(),
            ));
        }
        // 1. The new header and data, durable before anything names them.
        for (off, d) in &datas {
            self.storage.write_at(d, *off)?;
        }
        self.storage.write_at(&h.to_bytes(), start)?;
        if let Err(e) = self.storage.sync() {
            return Err(self.poison(&mut st, e.to_string()));
        }
        // 2. The trailing footer that names the new header; 3. its copy.
        let old_offset = st.data_offset;
        st.data_offset = start;
        let footer = self.footer_bytes(&st);
        for at in [footer_at, 0] {
            let r = self.storage.write_at(&footer, at).map_err(Error::from);
            let r = r.and_then(|()| self.storage.sync().map_err(Error::from));
            if let Err(e) = r {
                if at == footer_at {
                    st.data_offset = old_offset;
                }
                return Err(self.poison(&mut st, e.to_string()));
            }
            if at == footer_at {
                st.footer_pos = footer_at;
                st.next_free = st.next_free.max(footer_at);
            }
        }
        st.header = Some(h);
        let mut l = self.locators.write().unwrap_or_else(|e| e.into_inner());
        for (code, (_, d)) in [W2KU, W2RU].into_iter().zip(datas) {
            l.retain(|(c, _)| *c != code);
            l.push((code, d));
        }
        Ok(())
    }
}
