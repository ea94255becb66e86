//! Opening a VHD: find and validate the footer, the dynamic header, the
//! BAT and the parent locators, in that order; every offset and count is
//! checked against the file before anything is read or allocated by it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use super::footer::{DiskType, Footer, FOOTER_SIZE};
use super::header::{DynHeader, HEADER_SIZE};
use super::locator::MAX_LOCATOR_DATA;
use super::{State, Vhd, UNALLOCATED};
use crate::error::{Error, Reason, Result, Structure};
use crate::format::bat::Geometry;
use crate::io::Storage;

/// The "block" of a fixed disk's walks.
const FIXED_WALK_BLOCK: u32 = 2 << 20;

fn layout(what: String) -> Error {
    Error::corrupt(Structure::Layout, None, Reason::Invalid(what))
}

/// Whether `storage` starts or ends like a VHD (a footer cookie at its end,
/// or at offset 0): how the format is told from the content.
pub(crate) fn looks_like_vhd(storage: &dyn Storage) -> Result<bool> {
    let len = storage.len()?;
    let mut b = [0u8; 8];
    storage.read_at(&mut b, 0)?;
    if &b == super::footer::COOKIE {
        return Ok(true);
    }
    if len < FOOTER_SIZE as u64 {
        return Ok(false);
    }
    for at in [len - FOOTER_SIZE as u64, len - 511] {
        storage.read_at(&mut b, at)?;
        if &b == super::footer::COOKIE {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The footer in force and where it is: the trailing one (at the end, or
/// 511 bytes from it, as Virtual PC before 2004 wrote it), else the copy at
/// offset 0 of a dynamic disk (`repaired`).
fn find_footer(storage: &dyn Storage, len: u64) -> Result<(Footer, u64, bool)> {
    if len < FOOTER_SIZE as u64 {
        return Err(Error::corrupt(
            Structure::VhdFooter,
            None,
            Reason::Truncated {
                needed: FOOTER_SIZE as u64,
                found: len,
            },
        ));
    }
    let mut b = [0u8; FOOTER_SIZE];
    let at = len - FOOTER_SIZE as u64;
    storage.read_at(&mut b, at)?;
    let trailing = match Footer::parse(&b) {
        Ok(f) => return Ok((f, at, false)),
        Err(e) => e.at(at),
    };
    storage.read_at(&mut b, len - 511)?;
    if let Ok(f) = Footer::parse(&b) {
        return Ok((f, len - 511, false));
    }
    storage.read_at(&mut b, 0)?;
    match Footer::parse(&b) {
        Ok(f) if f.disk_type != DiskType::Fixed => Ok((f, len.div_ceil(512) * 512, true)),
        _ => Err(trailing),
    }
}

impl Vhd {
    /// Open and validate a VHD on `storage`. A read-only open never writes.
    pub(crate) fn open(storage: Arc<dyn Storage>, read_only: bool) -> Result<Vhd> {
        let len = storage.len()?;
        let (footer, footer_pos, repaired) = find_footer(storage.as_ref(), len)?;
        let size = footer.virtual_size();
        let creator = footer.creator();
        if footer.disk_type == DiskType::Fixed {
            if size > footer_pos {
                return Err(layout(format!(
                    "a fixed disk of {size} bytes needs its data before the footer, which is at {footer_pos}"
                )));
            }
            let geo = Geometry {
                virtual_size: size,
                block_size: FIXED_WALK_BLOCK,
                logical_sector_size: 512,
                chunk_ratio: 0,
                data_blocks: size.div_ceil(FIXED_WALK_BLOCK as u64),
                bitmap_blocks: 0,
                total_entries: 0,
            };
            return Ok(Vhd {
                storage,
                read_only,
                geo,
                footer,
                bitmap_len: 0,
                block_size: FIXED_WALK_BLOCK as u64,
                locators: RwLock::new(Vec::new()),
                state: Mutex::new(State {
                    bat: Vec::new(),
                    dirty_bat: BTreeSet::new(),
                    bitmaps: HashMap::new(),
                    dirty_bitmaps: BTreeSet::new(),
                    next_free: footer_pos,
                    footer_pos,
                    data_offset: u64::MAX,
                    poisoned: None,
                    header: None,
                }),
                poisoned_flag: AtomicBool::new(false),
                creator,
                repaired: false,
            });
        }

        // The dynamic header.
        let hoff = footer.data_offset;
        if hoff
            .checked_add(HEADER_SIZE as u64)
            .is_none_or(|e| e > footer_pos)
        {
            return Err(layout(format!(
                "the dynamic header at {hoff} does not lie before the footer at {footer_pos}"
            )));
        }
        let mut hb = vec![0u8; HEADER_SIZE];
        storage.read_at(&mut hb, hoff)?;
        let header = DynHeader::parse(&hb).map_err(|e| e.at(hoff))?;
        let bs = header.block_size as u64;
        let blocks = size.div_ceil(bs);
        if (header.max_entries as u64) < blocks {
            return Err(Error::corrupt(
                Structure::VhdHeader,
                Some(hoff),
                Reason::Mismatch {
                    what: "max table entries",
                    expected: blocks,
                    found: header.max_entries as u64,
                },
            ));
        }
        let table = header.table_offset;
        let table_len = (header.max_entries as u64 * 4).div_ceil(512) * 512;
        if table < FOOTER_SIZE as u64 || table.checked_add(table_len).is_none_or(|e| e > footer_pos)
        {
            return Err(Error::corrupt(
                Structure::Bat,
                Some(table),
                Reason::Invalid(format!(
                    "the BAT of {} entries at {table} does not lie between the footer copy and the footer at {footer_pos}",
                    header.max_entries
                )),
            ));
        }
        let mut areas: Vec<(u64, u64, String)> = vec![
            (0, FOOTER_SIZE as u64, "the footer copy".into()),
            (hoff, HEADER_SIZE as u64, "the dynamic header".into()),
            (table, table_len, "the BAT".into()),
        ];

        // The parent locators (their data bounded before it is read).
        let mut locators = Vec::new();
        if footer.disk_type == DiskType::Differencing {
            for (i, l) in header.locators.iter().enumerate() {
                if l.code == 0 {
                    continue;
                }
                let space = l.space_bytes().max(l.length as u64);
                if l.length > MAX_LOCATOR_DATA
                    || l.offset % 512 != 0
                    || l.offset.checked_add(space).is_none_or(|e| e > footer_pos)
                {
                    return Err(Error::corrupt(
                        Structure::ParentLocator,
                        Some(l.offset),
                        Reason::Invalid(format!(
                            "parent locator {i} ({} bytes at {}) does not lie inside the file before the footer",
                            l.length, l.offset
                        )),
                    ));
                }
                let mut d = vec![0u8; l.length as usize];
                storage.read_at(&mut d, l.offset)?;
                locators.push((l.code, d));
                areas.push((l.offset, space, format!("parent locator {i}")));
            }
        }

        // The BAT.
        let mut raw = vec![0u8; blocks as usize * 4];
        storage.read_at(&mut raw, table)?;
        let bat: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let bitmap_len = (bs / 512).div_ceil(8).div_ceil(512) * 512;
        let block_len = bitmap_len + bs;
        let mut meta_end = 0u64;
        for (o, l, _) in &areas {
            meta_end = meta_end.max(o + l);
        }
        let mut next_free = meta_end;
        let aligned = super::create::first_block(meta_end, bitmap_len);
        if aligned <= footer_pos {
            next_free = aligned;
        }
        let mut used: Vec<(u64, u64, String)> = Vec::new();
        for (i, &e) in bat.iter().enumerate() {
            if e == UNALLOCATED {
                continue;
            }
            let off = e as u64 * 512;
            if off + block_len > footer_pos {
                return Err(Error::corrupt(
                    Structure::Bat,
                    Some(table + 4 * i as u64),
                    Reason::Invalid(format!(
                        "block {i} at {off} ({block_len} bytes) reaches past the footer at {footer_pos}"
                    )),
                ));
            }
            next_free = next_free.max(off + block_len);
            used.push((off, block_len, format!("block {i}")));
        }
        used.extend(areas);
        used.sort();
        for w in used.windows(2) {
            if w[0].0 + w[0].1 > w[1].0 {
                return Err(Error::corrupt(
                    Structure::Layout,
                    Some(w[1].0),
                    Reason::Overlap {
                        what: w[1].2.clone(),
                        with: w[0].2.clone(),
                    },
                ));
            }
        }
        let geo = Geometry {
            virtual_size: size,
            block_size: header.block_size,
            logical_sector_size: 512,
            chunk_ratio: 0,
            data_blocks: blocks,
            bitmap_blocks: 0,
            total_entries: blocks,
        };
        let vhd = Vhd {
            storage,
            read_only,
            geo,
            footer,
            bitmap_len,
            block_size: bs,
            locators: RwLock::new(locators),
            state: Mutex::new(State {
                bat,
                dirty_bat: BTreeSet::new(),
                bitmaps: HashMap::new(),
                dirty_bitmaps: BTreeSet::new(),
                next_free,
                footer_pos,
                data_offset: hoff,
                poisoned: None,
                header: Some(header),
            }),
            poisoned_flag: AtomicBool::new(false),
            creator,
            repaired,
        };
        if !read_only {
            vhd.repair_footers(repaired)?;
        }
        Ok(vhd)
    }

    /// After a read-write open: write the trailing footer again if it was
    /// lost, and the copy at offset 0 if it is damaged or stale.
    fn repair_footers(&self, trailing_lost: bool) -> Result<()> {
        let st = super::lock(&self.state);
        let bytes = self.footer_bytes(&st);
        let mut changed = false;
        if trailing_lost {
            self.storage.write_at(&bytes, st.footer_pos)?;
            changed = true;
        }
        let mut copy = [0u8; FOOTER_SIZE];
        self.storage.read_at(&mut copy, 0)?;
        if copy != bytes {
            self.storage.write_at(&bytes, 0)?;
            changed = true;
        }
        if changed {
            self.storage.sync()?;
        }
        Ok(())
    }
}
