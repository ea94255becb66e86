//! Creating a VHD: fixed, dynamic or differencing (with `W2ku` and `W2ru`
//! parent locators), in the layout the module doc draws.

use super::footer::{DiskType, Footer, FOOTER_SIZE, MAX_VHD_SIZE};
use super::header::{
    DynHeader, LocatorEntry, HEADER_SIZE, LOCATORS, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
};
use super::locator::{encode_utf16le, W2KU, W2RU};
use crate::disk::DiskKind;
use crate::error::{Error, Result};
use crate::io::Storage;

/// Where the BAT goes (after the footer copy and the header).
const TABLE_OFFSET: u64 = (FOOTER_SIZE + HEADER_SIZE) as u64;
/// Space reserved for each locator's data at least, so that a re-parent
/// can usually rewrite it in place.
const LOCATOR_SPACE: u64 = 4096;

/// Parameters of a new VHD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VhdCreate {
    /// Fixed, dynamic or differencing (then `parent` is set).
    pub(crate) kind: DiskKind,
    /// Virtual size (a multiple of 512, at most [`MAX_VHD_SIZE`]).
    pub(crate) size: u64,
    /// Block size of a dynamic or differencing disk (default 2 MiB).
    pub(crate) block_size: u32,
}

/// What a differencing VHD records of its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VhdParent {
    /// The parent footer's unique id.
    pub(crate) unique_id: [u8; 16],
    /// The parent footer's timestamp.
    pub(crate) timestamp: u32,
    /// The parent's file name (the header's parent unicode name).
    pub(crate) name: String,
    /// The parent's absolute path, Windows style (`W2ku`).
    pub(crate) absolute: String,
    /// The parent's path relative to the child's folder (`W2ru`).
    pub(crate) relative: String,
}

/// The first block's offset at or after `meta_end`: its data (after the
/// `bitmap_len` bytes of bitmap) on 4 KiB.
pub(crate) fn first_block(meta_end: u64, bitmap_len: u64) -> u64 {
    (meta_end + bitmap_len).div_ceil(4096) * 4096 - bitmap_len
}

/// Refuse a size a VHD cannot have.
pub(crate) fn check_size(size: u64) -> Result<()> {
    if size == 0 || size % 512 != 0 || size > MAX_VHD_SIZE {
        return Err(Error::InvalidArgument(format!(
            "a VHD's virtual size must be a positive multiple of 512 bytes up to 2040 GiB, not {size}"
        )));
    }
    Ok(())
}

impl super::Vhd {
    /// Write a new VHD on empty `storage` and sync it.
    pub(crate) fn create(
        storage: &dyn Storage,
        opts: &VhdCreate,
        parent: Option<&VhdParent>,
    ) -> Result<()> {
        check_size(opts.size)?;
        if (opts.kind == DiskKind::Differencing) != parent.is_some() {
            return Err(Error::InvalidArgument(
                "a differencing VHD needs a parent, and only a differencing VHD has one".into(),
            ));
        }
        let id = *uuid::Uuid::new_v4().as_bytes();
        if opts.kind == DiskKind::Fixed {
            let footer = Footer::new(DiskType::Fixed, opts.size, u64::MAX, id);
            storage.allocate(0, opts.size)?;
            storage.write_at(&footer.to_bytes(), opts.size)?;
            storage.sync()?;
            return Ok(());
        }
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(Error::InvalidArgument(format!(
                "a VHD's block size must be a power of two from 4 KiB to 256 MiB, not {bs}"
            )));
        }
        let blocks = opts.size.div_ceil(bs as u64);
        let table_len = (blocks * 4).div_ceil(512) * 512;
        let mut at = TABLE_OFFSET + table_len;
        let mut locators = [LocatorEntry::default(); LOCATORS];
        let mut datas: Vec<(u64, Vec<u8>)> = Vec::new();
        let disk_type = if let Some(p) = parent {
            for (i, (code, path)) in [(W2KU, &p.absolute), (W2RU, &p.relative)]
                .into_iter()
                .enumerate()
            {
                let d = encode_utf16le(path);
                let space = (d.len() as u64).div_ceil(512).max(1) * 512;
                let space = space.max(LOCATOR_SPACE);
                locators[i] = LocatorEntry {
                    code,
                    space: space as u32,
                    length: d.len() as u32,
                    offset: at,
                };
                datas.push((at, d));
                at += space;
            }
            DiskType::Differencing
        } else {
            DiskType::Dynamic
        };
        let bitmap_len = (bs as u64 / 512).div_ceil(8).div_ceil(512) * 512;
        let end = first_block(at, bitmap_len);
        let mut footer = Footer::new(disk_type, opts.size, FOOTER_SIZE as u64, id);
        let header = DynHeader {
            table_offset: TABLE_OFFSET,
            max_entries: blocks as u32,
            block_size: bs,
            parent_id: parent.map(|p| p.unique_id).unwrap_or_default(),
            parent_timestamp: parent.map(|p| p.timestamp).unwrap_or_default(),
            parent_name: parent.map(|p| p.name.clone()).unwrap_or_default(),
            locators,
        };
        if let Some(p) = parent {
            // A child is never older than its parent.
            footer.timestamp = footer.timestamp.max(p.timestamp);
        }
        let fb = footer.to_bytes();
        storage.write_at(&fb, 0)?;
        storage.write_at(&header.to_bytes(), FOOTER_SIZE as u64)?;
        storage.write_at(&vec![0xffu8; table_len as usize], TABLE_OFFSET)?;
        for (off, d) in datas {
            storage.write_at(&d, off)?;
        }
        storage.write_at(&fb, end)?;
        storage.sync()?;
        Ok(())
    }
}
