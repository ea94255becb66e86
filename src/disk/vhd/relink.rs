//! Pointing a differencing VHD at another parent (a re-parent): new
//! locator data, then the dynamic header with the parent's unique id,
//! timestamp and name.
//!
//! The locator data is written first (in the space each entry reserved;
//! more is refused) and synced, then the header, then synced again. VHD
//! has no log: a cut during the header's write (two sectors) can leave a
//! header whose checksum fails; the operation is rare and short, and the
//! error then names the header.

use super::create::VhdParent;
use super::header::LOCATORS;
use super::locator::{encode_utf16le, W2KU, W2RU};
use super::{lock, Vhd};
use crate::error::{Error, Result};

impl Vhd {
    /// Record `parent` as this differencing disk's parent.
    pub(crate) fn set_parent(&self, parent: &VhdParent) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if !self.has_parent() {
            return Err(Error::InvalidArgument("not a differencing VHD".into()));
        }
        let mut st = lock(&self.state);
        let Some(mut h) = st.header.clone() else {
            return Err(Error::InvalidArgument("not a differencing VHD".into()));
        };
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
            if d.len() as u64 > e.space_bytes() {
                return Err(Error::Unsupported(format!(
                    "the new parent path needs {} bytes, more than the {} the locator reserved",
                    d.len(),
                    e.space_bytes()
                )));
            }
            e.length = d.len() as u32;
            datas.push((e.offset, d));
        }
        for (off, d) in &datas {
            self.storage.write_at(d, *off)?;
        }
        if let Err(e) = self.storage.sync() {
            return Err(self.poison(&mut st, e.to_string()));
        }
        h.parent_id = parent.unique_id;
        h.parent_timestamp = parent.timestamp;
        h.parent_name = parent.name.clone();
        self.storage
            .write_at(&h.to_bytes(), self.footer.data_offset)?;
        if let Err(e) = self.storage.sync() {
            return Err(self.poison(&mut st, e.to_string()));
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
