//! Opening a VHDX: headers, log replay, region table, metadata and BAT,
//! each checked before the next is read.

use super::journal::write_headers;
use super::*;
use crate::error::{Reason, Structure};

/// Reads of the structures at open: only inside the bytes that really
/// exist (`len`), so that no allocation is sized past them.
pub(super) struct Reader<'a> {
    storage: &'a dyn Storage,
    len: u64,
}

impl Reader<'_> {
    pub(super) fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.storage.read_at(buf, offset)?;
        Ok(())
    }
    pub(super) fn read_vec(&self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
        self.check_within(offset, len, what)?;
        let mut v = vec![0u8; len as usize];
        self.read(&mut v, offset)?;
        Ok(v)
    }

    /// Refuse `[offset, offset + len)` unless it lies inside the file.
    pub(super) fn check_within(&self, offset: u64, len: u64, what: &str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => {
                return Err(Error::corrupt(
                    Structure::Layout,
                    Some(offset),
                    Reason::Invalid(format!(
                        "{what} at {offset:#x}+{len:#x} lies past the end of the file ({:#x})",
                        self.len
                    )),
                ))
            }
        }
        Ok(())
    }
}

impl Vhdx {
    /// Open a VHDX on `storage`.
    pub(crate) fn open(storage: Arc<dyn Storage>, read_only: bool) -> Result<Vhdx> {
        Self::open_with_layout(storage, read_only).map(|(v, _)| v)
    }

    pub(crate) fn open_with_layout(
        storage: Arc<dyn Storage>,
        read_only: bool,
    ) -> Result<(Vhdx, Layout)> {
        if !read_only && !storage.is_writable() {
            return Err(Error::ReadOnly);
        }
        let (fid, mut hdr, mut slot, header_problem, mut file_len) =
            read_headers(storage.as_ref())?;
        let log_offset = hdr.log_offset;
        let log_length = hdr.log_length as u64;
        if !read_only && hdr.sequence_number > MAX_WRITABLE_SEQUENCE {
            return Err(Error::corrupt(
                Structure::Header,
                None,
                Reason::BadField {
                    field: "SequenceNumber",
                    value: hdr.sequence_number,
                    problem:
                        "too close to 2^64 to be incremented: the file can only be opened read-only",
                },
            ));
        }

        let log_dirty = !hdr.log_guid.is_nil();
        let LogView {
            plan,
            view,
            backed_len,
            applied,
        } = replay_view(&storage, &hdr, read_only, &mut file_len)?;
        let reader = Reader {
            storage: view.as_ref(),
            len: backed_len,
        };

        let (regions, region_problem) =
            read_regions(&reader, log_offset, log_length, backed_len, log_dirty)?;
        let bat_region = *regions.find(&BAT_REGION).ok_or_else(|| {
            Error::corrupt(
                Structure::RegionTable,
                None,
                Reason::Missing("the BAT region"),
            )
        })?;
        let meta_region = *regions.find(&METADATA_REGION).ok_or_else(|| {
            Error::corrupt(
                Structure::RegionTable,
                None,
                Reason::Missing("the metadata region"),
            )
        })?;

        let meta = read_metadata(&reader, &meta_region)?;
        let geo = Geometry::new(
            meta.virtual_size,
            meta.block_size,
            meta.logical_sector_size,
            meta.has_parent(),
        )?;
        let entries = read_bat(&reader, &bat_region, &geo)?;
        validate_bat(
            &entries,
            &geo,
            &meta,
            &regions.entries,
            log_offset,
            log_length,
            file_len,
        )?;

        let file_end = used_end(&entries, &geo, &meta, &regions.entries, file_len)?;
        let reclaim = if read_only
            || meta
                .file_flags
                .contains(FileParameterFlags::LEAVE_BLOCK_ALLOCATED)
        {
            Vec::new()
        } else {
            unused_blocks(
                &entries,
                &geo,
                &meta,
                &regions.entries,
                log_offset,
                log_length,
                file_end,
            )
        };

        // The replayed file is sound: a read-write open applies the log
        // and marks it empty; a read-only one keeps reading through the view.
        let host = storage.clone();
        let storage = match plan {
            Some(p) if !read_only => {
                if !applied {
                    replay::apply(storage.as_ref(), &p)?;
                }
                let mut h = hdr.clone();
                h.log_guid = Uuid::nil();
                h.file_write_guid = Uuid::new_v4();
                slot = write_headers(storage.as_ref(), &mut h, slot)?;
                hdr = h;
                file_len = storage.len()?;
                storage
            }
            _ => view,
        };
        let vhdx = Vhdx {
            storage: storage.clone(),
            host,
            read_only,
            geo,
            parent: meta.has_parent(),
            meta: RwLock::new(meta),
            creator: fid.creator,
            bat_offset: bat_region.file_offset,
            meta_offset: meta_region.file_offset,
            meta_len: meta_region.length as u64,
            bitmaps: RwLock::new(HashMap::default()),
            log_offset,
            log_length,
            bat: entries,
            state: Mutex::new(WriteState {
                header: hdr,
                slot,
                session: false,
                data_changed: false,
                log_pos: 0,
                log_seq: 0,
                session_log_guid: None,
                dirty: BTreeMap::new(),
                reserved: 0,
                pending: None,
                poisoned: None,
                close_failed: false,
                next_data_write_guid: None,
                pending_free: Vec::new(),
                free_blocks: Vec::new(),
                reclaim,
                file_end,
                filling: Vec::new(),
            }),
            gate: RwLock::new(()),
            flushing: Mutex::new(()),
            filled: Condvar::new(),
            entry_cap: vlog::max_data_sectors(log_length),
            poisoned_flag: AtomicBool::new(false),
            session_started: AtomicBool::new(false),
            data_changed: AtomicBool::new(false),
            log_dirty,
        };
        let layout = Layout {
            regions: regions.entries,
            header_problem,
            region_problem,
            file_len,
        };
        Ok((vhdx, layout))
    }
}

/// Step 1: the file identifier and the current header (with what is wrong
/// with the other one), checked against the file's length.
fn read_headers(
    storage: &dyn Storage,
) -> Result<(FileIdentifier, Header, Slot, Option<String>, u64)> {
    let file_len = storage.len()?;
    if file_len < HEADER_SECTION_SIZE {
        let mut id = vec![0u8; fileid::SIZE];
        storage.read_at(&mut id, 0)?;
        FileIdentifier::parse(&id)?;
        return Err(Error::corrupt(
            Structure::Layout,
            None,
            Reason::Truncated {
                needed: HEADER_SECTION_SIZE,
                found: file_len,
            },
        ));
    }
    let mut id = vec![0u8; fileid::SIZE];
    storage.read_at(&mut id, 0)?;
    let fid = FileIdentifier::parse(&id)?;

    let mut h1 = vec![0u8; header::SIZE];
    let mut h2 = vec![0u8; header::SIZE];
    storage.read_at(&mut h1, HEADER1_OFFSET)?;
    storage.read_at(&mut h2, HEADER2_OFFSET)?;
    let (hdr, slot, header_err) = header::choose(&h1, &h2)?;
    let header_problem = header_err.map(|e| e.to_string());
    let log_offset = hdr.log_offset;
    let log_length = hdr.log_length as u64;
    if log_length > 0
        && log_offset
            .checked_add(log_length)
            .is_none_or(|e| e > file_len)
    {
        return Err(Error::corrupt(Structure::Log, Some(log_offset), Reason::Invalid(format!(
            "the log at {log_offset:#x}+{log_length:#x} lies past the end of the file ({file_len:#x})"
        ))));
    }
    Ok((fid, hdr, slot, header_problem, file_len))
}

/// Step 2, the log: everything after it reads the file as replayed.
struct LogView {
    /// The replay to apply to the file (a dirty log), once the replayed
    /// file has been judged sound (a read-write open).
    plan: Option<replay::Plan>,
    /// The file as replayed (the file itself when the log is empty or was
    /// already applied).
    view: Arc<dyn Storage>,
    /// The bytes of the view that really exist (the file's and the log's
    /// writes).
    backed_len: u64,
    /// The log was already replayed into the file (too large to hold in
    /// memory).
    applied: bool,
}

/// Step 2: replay a dirty log, through a read-only view of the file (or,
/// for a read-write open of a log too large to hold in memory, into the
/// file itself). `file_len` becomes the replayed file's length.
fn replay_view(
    storage: &Arc<dyn Storage>,
    hdr: &Header,
    read_only: bool,
    file_len: &mut u64,
) -> Result<LogView> {
    let mut out = LogView {
        plan: None,
        view: storage.clone(),
        backed_len: *file_len,
        applied: false,
    };
    if hdr.log_guid.is_nil() {
        return Ok(out);
    }
    let log_length = hdr.log_length as u64;
    let p = replay::plan(storage.as_ref(), hdr.log_offset, log_length, &hdr.log_guid)?;
    out.backed_len = p.backed_len;
    *file_len = p.replayed_len;
    match replay::Replayed::new(storage.clone(), &p) {
        Ok(v) => out.view = Arc::new(v),
        Err(e) if read_only => return Err(e),
        Err(_) => {
            // Too large to hold in memory: replay into the file first.
            replay::apply(storage.as_ref(), &p)?;
            out.applied = true;
        }
    }
    out.plan = Some(p);
    Ok(out)
}

/// Step 3: the region table (the second copy when the first is bad, with
/// what was wrong with the first), each region inside the file and clear of
/// the log.
fn read_regions(
    reader: &Reader<'_>,
    log_offset: u64,
    log_length: u64,
    backed_len: u64,
    log_dirty: bool,
) -> Result<(RegionTable, Option<String>)> {
    let (regions, region_problem) = {
        let r1 = reader
            .read_vec(REGION1_OFFSET, region::SIZE as u64, "region table 1")
            .and_then(|b| RegionTable::parse(&b, REGION1_OFFSET));
        match r1 {
            Ok(t) => (t, None),
            Err(e1) => {
                let t = reader
                    .read_vec(REGION2_OFFSET, region::SIZE as u64, "region table 2")
                    .and_then(|b| RegionTable::parse(&b, REGION2_OFFSET))
                    .map_err(|e2| {
                        Error::corrupt(
                            Structure::RegionTable,
                            None,
                            Reason::Invalid(format!(
                                "no valid region table: table 1: {e1}; table 2: {e2}"
                            )),
                        )
                    })?;
                (t, Some(format!("region table 1: {e1}")))
            }
        }
    };
    for e in &regions.entries {
        if e.guid != BAT_REGION && e.guid != METADATA_REGION && e.required {
            return Err(Error::Unsupported(format!("required region {}", e.guid)));
        }
        if e.end() > backed_len {
            return Err(Error::corrupt(
                Structure::Layout,
                Some(e.file_offset),
                Reason::Invalid(format!(
                "region {} at {:#x}+{:#x} lies past the end of the file ({backed_len:#x} bytes{})",
                e.guid,
                e.file_offset,
                e.length,
                if log_dirty {
                    " with the log's writes"
                } else {
                    ""
                }
            )),
            ));
        }
        if log_length > 0 && e.file_offset < log_offset + log_length && log_offset < e.end() {
            return Err(Error::corrupt(
                Structure::Layout,
                Some(e.file_offset),
                Reason::Overlap {
                    what: format!("region {}", e.guid),
                    with: "the log".into(),
                },
            ));
        }
    }
    Ok((regions, region_problem))
}

/// Step 4: the metadata table and items (bounded in total), parsed, with a
/// parent locator this engine understands.
fn read_metadata(reader: &Reader<'_>, meta_region: &RegionEntry) -> Result<Metadata> {
    let table = reader.read_vec(
        meta_region.file_offset,
        metadata::TABLE_SIZE as u64,
        "metadata table",
    )?;
    let entries = metadata::parse_table(&table, meta_region.length as u64)
        .map_err(|e| e.at(meta_region.file_offset))?;
    let total: u64 = entries.iter().map(|e| e.length as u64).sum();
    if total > MAX_METADATA_BYTES {
        return Err(Error::corrupt(
            Structure::MetadataTable,
            Some(meta_region.file_offset),
            Reason::Invalid(format!("metadata items total {total} bytes")),
        ));
    }
    let mut items: Vec<(MetadataEntry, Vec<u8>)> = Vec::with_capacity(entries.len());
    for e in entries {
        let data = reader.read_vec(
            meta_region.file_offset + e.offset as u64,
            e.length as u64,
            "metadata item",
        )?;
        items.push((e, data));
    }
    let meta = Metadata::from_items(items)?;
    if let Some(raw) = meta.parent_locator.as_deref().filter(|_| meta.has_parent()) {
        // Refuse a locator this engine does not understand (its type
        // first, [MS-VHDX] 2.6.2.6.1) before anything uses the file.
        crate::format::locator::ParentLocator::parse(raw)?;
    }
    Ok(meta)
}

/// Step 5: the BAT, read and parsed (its entries are validated by
/// [`validate_bat`]).
fn read_bat(reader: &Reader<'_>, bat_region: &RegionEntry, geo: &Geometry) -> Result<BatTable> {
    if geo.total_entries * 8 > bat_region.length as u64 {
        return Err(Error::corrupt(
            Structure::Bat,
            Some(bat_region.file_offset),
            Reason::Mismatch {
                what: "the BAT region's room for entries",
                expected: geo.total_entries,
                found: bat_region.length as u64 / 8,
            },
        ));
    }
    let (off, len) = (bat_region.file_offset, geo.total_entries * 8);
    reader.check_within(off, len, "BAT")?;
    BatTable::read(
        geo.total_entries as usize,
        |first, buf| reader.read(buf, off + first as u64 * 8),
        |first| {
            let at = off + first as u64 * 8;
            Ok(reader
                .storage
                .data_after(at)?
                .map(|(start, _)| ((start.max(at) - off) / 8) as usize))
        },
    )
}

/// Where the used part of the file ends: past every region and every block
/// (and sector bitmap) the BAT points at, at least the file's length
/// rounded up to 1 MiB. New blocks go there.
fn used_end(
    entries: &BatTable,
    geo: &Geometry,
    meta: &Metadata,
    regions: &[RegionEntry],
    file_len: u64,
) -> Result<u64> {
    let mut file_end = align_up(file_len, MIB).unwrap_or(file_len);
    for e in regions {
        file_end = file_end.max(e.end());
    }
    for (i, e) in entries.nonzero() {
        let e = BatEntry(e);
        let len = if geo.is_bitmap_index(i) {
            if meta.has_parent() && e.state_bits() == SB_PRESENT {
                MIB
            } else {
                continue;
            }
        } else if matches!(
            e.payload_state(),
            Some(PayloadState::FullyPresent | PayloadState::PartiallyPresent)
        ) {
            geo.block_size as u64
        } else {
            continue;
        };
        let end = e.offset().checked_add(len).ok_or_else(|| {
            Error::corrupt(
                Structure::Bat,
                bat::entry_offset(regions, i),
                Reason::Invalid(format!("BAT entry {i} points past 2^64 ({:#x})", e.0)),
            )
        })?;
        file_end = file_end.max(end);
    }
    Ok(file_end)
}

/// Most holes [`unused_blocks`] lists (8 bytes each).
const MAX_RECLAIM: usize = 1 << 20;

/// The block-sized, MiB-aligned holes below `file_end` that nothing uses:
/// not the header section, the log, a region, a payload block or a sector
/// bitmap the BAT names. The lowest comes last (popped first).
fn unused_blocks(
    entries: &BatTable,
    geo: &Geometry,
    meta: &Metadata,
    regions: &[RegionEntry],
    log_offset: u64,
    log_length: u64,
    file_end: u64,
) -> Vec<u64> {
    let bs = geo.block_size as u64;
    let mut used: Vec<(u64, u64)> = vec![(0, HEADER_SECTION_SIZE), (log_offset, log_length)];
    used.extend(regions.iter().map(|r| (r.file_offset, r.length as u64)));
    for (i, e) in entries.nonzero() {
        let e = BatEntry(e);
        if geo.is_bitmap_index(i) {
            if meta.has_parent() && e.state_bits() == SB_PRESENT {
                used.push((e.offset(), MIB));
            }
        } else if matches!(
            e.payload_state(),
            Some(PayloadState::FullyPresent | PayloadState::PartiallyPresent)
        ) {
            used.push((e.offset(), bs));
        }
    }
    let mut holes = block_holes(used, bs, file_end, MAX_RECLAIM);
    holes.reverse();
    holes
}

pub(super) fn validate_bat(
    entries: &BatTable,
    geo: &Geometry,
    meta: &Metadata,
    regions: &[RegionEntry],
    log_offset: u64,
    log_length: u64,
    file_len: u64,
) -> Result<()> {
    let bs = geo.block_size as u64;
    let check_offset = |what: String, off: u64, len: u64| -> Result<()> {
        if off < HEADER_SECTION_SIZE {
            return Err(Error::corrupt(
                Structure::Bat,
                None,
                Reason::Invalid(format!("{what} points into the header section ({off:#x})")),
            ));
        }
        if off >= file_len {
            return Err(Error::corrupt(
                Structure::Bat,
                None,
                Reason::Invalid(format!(
                    "{what} points past the end of the file ({off:#x} >= {file_len:#x})"
                )),
            ));
        }
        let end = off + len;
        if log_length > 0 && off < log_offset + log_length && log_offset < end {
            return Err(Error::corrupt(
                Structure::Bat,
                None,
                Reason::Invalid(format!("{what} overlaps the log")),
            ));
        }
        for r in regions {
            if off < r.end() && r.file_offset < end {
                return Err(Error::corrupt(
                    Structure::Bat,
                    None,
                    Reason::Invalid(format!("{what} overlaps region {}", r.guid)),
                ));
            }
        }
        Ok(())
    };
    // Every entry, the padding beyond the last data block included: block
    // entries decode to a known state, sector-bitmap entries are
    // NOT_PRESENT or (in a differencing disk) PRESENT, reserved bits are
    // clear, and every offset in use lies inside the file. Each block's
    // file range is kept to find two entries sharing space.
    let mut used: Vec<(u64, u64, usize)> = Vec::new();
    // An entry of zeros is NOT_PRESENT (block or sector bitmap): valid.
    for (i, raw) in entries.nonzero() {
        let e = BatEntry(raw);
        if geo.is_bitmap_index(i) {
            let c = i as u64 / (geo.chunk_ratio + 1);
            if e.0 & bat::RESERVED_MASK != 0 {
                return Err(Error::corrupt(
                    Structure::Bat,
                    bat::entry_offset(regions, i),
                    Reason::Invalid(format!(
                        "BAT entry {i} (sector bitmap {c}) has reserved bits set: {:#x}",
                        e.0
                    )),
                ));
            }
            match e.state_bits() {
                bat::SB_NOT_PRESENT => {}
                SB_PRESENT if meta.has_parent() => {
                    check_offset(
                        format!("BAT entry {i} (sector bitmap {c})"),
                        e.offset(),
                        MIB,
                    )?;
                    used.push((e.offset(), MIB, i));
                }
                SB_PRESENT => {
                    return Err(Error::corrupt(Structure::Bat, bat::entry_offset(regions, i), Reason::Invalid(format!(
                        "BAT entry {i} (sector bitmap {c}) is SB_BLOCK_PRESENT in a disk without a parent"
                    ))));
                }
                st => {
                    return Err(Error::corrupt(
                        Structure::Bat,
                        bat::entry_offset(regions, i),
                        Reason::Invalid(format!(
                            "BAT entry {i} (sector bitmap {c}) has the reserved state {st}"
                        )),
                    ));
                }
            }
            continue;
        }
        let b = i as u64 - i as u64 / (geo.chunk_ratio + 1);
        let what = if b < geo.data_blocks {
            format!("BAT entry {i} (block {b})")
        } else {
            format!("BAT entry {i} (padding after the last block)")
        };
        let Some(state) = e.payload_state() else {
            return Err(Error::corrupt(
                Structure::Bat,
                bat::entry_offset(regions, i),
                Reason::Invalid(format!("{what} has the reserved state {}", e.state_bits())),
            ));
        };
        if e.0 & bat::RESERVED_MASK != 0 {
            return Err(Error::corrupt(
                Structure::Bat,
                bat::entry_offset(regions, i),
                Reason::Invalid(format!("{what} has reserved bits set: {:#x}", e.0)),
            ));
        }
        match state {
            PayloadState::PartiallyPresent if !meta.has_parent() => {
                return Err(Error::corrupt(
                    Structure::Bat,
                    bat::entry_offset(regions, i),
                    Reason::Invalid(format!(
                        "{what} is PARTIALLY_PRESENT in a disk without a parent"
                    )),
                ));
            }
            PayloadState::FullyPresent | PayloadState::PartiallyPresent => {
                check_offset(what, e.offset(), bs)?;
                used.push((e.offset(), bs, i));
                if state == PayloadState::PartiallyPresent
                    && BatEntry(entries.at(geo.bitmap_index(b / geo.chunk_ratio))).state_bits()
                        != SB_PRESENT
                {
                    return Err(Error::corrupt(
                        Structure::Bat,
                        bat::entry_offset(regions, i),
                        Reason::Invalid(format!(
                        "block {b} is PARTIALLY_PRESENT but its sector bitmap block is not present"
                    )),
                    ));
                }
            }
            _ => {}
        }
    }
    used.sort_unstable();
    for w in used.windows(2) {
        let ((a, alen, ai), (b, _, bi)) = (w[0], w[1]);
        if a + alen > b {
            return Err(Error::corrupt(
                Structure::Bat,
                bat::entry_offset(regions, bi),
                Reason::Invalid(format!(
                    "BAT entries {ai} and {bi} use the same file space (at {a:#x} and {b:#x})"
                )),
            ));
        }
    }
    Ok(())
}
