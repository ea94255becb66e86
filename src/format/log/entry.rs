//! Reading one log entry: its header, its validation, its updates.

use uuid::Uuid;

use super::*;
use crate::format::Reader;

/// The header fields of an entry header sector, when they are plausible for
/// a log of `log_len` bytes and `guid` (the body is not looked at).
pub(super) fn parse_entry_header(
    head: &[u8],
    log_len: u64,
    guid: &Uuid,
    pos: u64,
) -> Option<Entry> {
    // A short or damaged header sector is "no entry here", never a panic.
    let r = Reader::new(head, Structure::LogEntry);
    if r.u32(ENTRY_SIGNATURE_OFFSET).ok()? != ENTRY_SIGNATURE {
        return None;
    }
    let length = r.u32(ENTRY_LENGTH_OFFSET).ok()? as u64;
    let tail = r.u32(ENTRY_TAIL_OFFSET).ok()? as u64;
    let sequence = r.u64(ENTRY_SEQUENCE_OFFSET).ok()?;
    let count = r.u32(ENTRY_DESCRIPTOR_COUNT_OFFSET).ok()? as usize;
    if length == 0
        || length % SECTOR as u64 != 0
        || length > log_len
        || tail % SECTOR as u64 != 0
        || tail >= log_len
        || sequence == 0
        || r.guid(ENTRY_LOG_GUID_OFFSET).ok()? != *guid
    {
        return None;
    }
    let sectors = (length / SECTOR as u64) as usize;
    if count > DESCS_IN_FIRST + DESCS_PER_SECTOR * (sectors - 1) || desc_sectors(count) > sectors {
        return None;
    }
    Some(Entry {
        position: pos,
        length,
        tail,
        sequence,
        flushed_file_offset: r.u64(ENTRY_FLUSHED_FILE_OFFSET_OFFSET).ok()?,
        last_file_offset: r.u64(ENTRY_LAST_FILE_OFFSET_OFFSET).ok()?,
        descriptor_count: count as u32,
    })
}

/// Check one descriptor (32 bytes); returns whether it is a data descriptor.
pub(super) fn check_descriptor(d: &[u8], sequence: u64) -> Option<bool> {
    let r = Reader::new(d, Structure::LogEntry);
    let file_offset = r.u64(DESC_FILE_OFFSET_OFFSET).ok()?;
    if r.u64(DESC_SEQUENCE_OFFSET).ok()? != sequence || file_offset % SECTOR as u64 != 0 {
        return None;
    }
    match r.u32(DESC_SIGNATURE_OFFSET).ok()? {
        ZERO_DESC_SIGNATURE => {
            let length = r.u64(DESC_ZERO_LENGTH_OFFSET).ok()?;
            if length % SECTOR as u64 != 0 || file_offset.checked_add(length).is_none() {
                return None;
            }
            Some(false)
        }
        DATA_DESC_SIGNATURE => Some(true),
        _ => None,
    }
}

/// Validate the whole body of the entry `e` whose header sector is `head`
/// (checksum, descriptors, data sector signatures), reading the rest in
/// bounded chunks.
pub(super) fn body_is_valid(
    read: &LogReader,
    log_len: u64,
    e: &Entry,
    head: &[u8],
) -> Result<bool> {
    let count = e.descriptor_count as usize;
    let sectors = (e.length / SECTOR as u64) as usize;
    let ds = desc_sectors(count);
    let stored = le32(head, ENTRY_CHECKSUM_OFFSET);
    let mut crc = crc32c::crc32c(&head[..ENTRY_CHECKSUM_OFFSET]);
    crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc = crc32c::crc32c_append(crc, &head[ENTRY_CHECKSUM_OFFSET + 4..SECTOR]);
    let mut data_descs = 0usize;
    // Check sector `sector` (its bytes `b`) of the entry.
    let mut visit = |sector: usize, b: &[u8], crc: &mut u32| -> bool {
        if sector > 0 {
            *crc = crc32c::crc32c_append(*crc, b);
        }
        if sector < ds {
            let (first, last) = if sector == 0 {
                (0, DESCS_IN_FIRST)
            } else {
                let f = DESCS_IN_FIRST + (sector - 1) * DESCS_PER_SECTOR;
                (f, f + DESCS_PER_SECTOR)
            };
            for i in first..last.min(count) {
                let o = desc_offset(i) - sector * SECTOR;
                match check_descriptor(&b[o..o + DESC_SIZE], e.sequence) {
                    Some(true) => data_descs += 1,
                    Some(false) => {}
                    None => return false,
                }
            }
            !(sector + 1 == ds && ds + data_descs > sectors)
        } else {
            sector >= ds + data_descs
                || (le32(b, DATA_SIGNATURE_OFFSET) == DATA_SECTOR_SIGNATURE
                    && le32(b, DATA_SEQUENCE_HIGH_OFFSET) == (e.sequence >> 32) as u32
                    && le32(b, DATA_SEQUENCE_LOW_OFFSET) == e.sequence as u32)
        }
    };
    if !visit(0, head, &mut crc) {
        return Ok(false);
    }
    let mut buf = vec![0u8; CHUNK.min(e.length as usize - SECTOR)];
    let mut s = 1usize;
    while s < sectors {
        let n = (sectors - s).min(buf.len() / SECTOR);
        let chunk = &mut buf[..n * SECTOR];
        read_wrapped(
            read,
            log_len,
            (e.position + (s * SECTOR) as u64) % log_len,
            chunk,
        )?;
        for k in 0..n {
            if !visit(s + k, &chunk[k * SECTOR..(k + 1) * SECTOR], &mut crc) {
                return Ok(false);
            }
        }
        s += n;
    }
    Ok(crc == stored)
}

/// Read and fully validate the entry at `pos`; `None` when there is no
/// valid entry with `guid` there. Memory is bounded whatever the entry's length.
pub fn read_entry(read: &LogReader, log_len: u64, guid: &Uuid, pos: u64) -> Result<Option<Entry>> {
    let mut head = vec![0u8; SECTOR];
    read_wrapped(read, log_len, pos, &mut head)?;
    let Some(e) = parse_entry_header(&head, log_len, guid, pos) else {
        return Ok(None);
    };
    Ok(body_is_valid(read, log_len, &e, &head)?.then_some(e))
}

/// Call `f` with every update of the (validated) entry `e`, in order,
/// reading its descriptor sectors one at a time.
pub fn for_each_update(
    read: &LogReader,
    log_len: u64,
    e: &Entry,
    mut f: impl FnMut(Update) -> Result<()>,
) -> Result<()> {
    let count = e.descriptor_count as usize;
    let ds = desc_sectors(count);
    let mut sector = vec![0u8; SECTOR];
    let mut loaded = usize::MAX;
    let mut data = 0u64;
    for i in 0..count {
        let o = desc_offset(i);
        let k = o / SECTOR;
        if k != loaded {
            read_wrapped(
                read,
                log_len,
                (e.position + (k * SECTOR) as u64) % log_len,
                &mut sector,
            )?;
            loaded = k;
        }
        let d = &sector[o % SECTOR..o % SECTOR + DESC_SIZE];
        if check_descriptor(d, e.sequence).is_none() {
            return Err(Error::corrupt(
                Structure::LogEntry,
                None,
                Reason::Invalid(format!(
                    "entry {} at log position {:#x} changed while it was replayed",
                    e.sequence, e.position
                )),
            ));
        }
        let file_offset = le64(d, DESC_FILE_OFFSET_OFFSET);
        if le32(d, DESC_SIGNATURE_OFFSET) == ZERO_DESC_SIGNATURE {
            f(Update::Zero {
                file_offset,
                length: le64(d, DESC_ZERO_LENGTH_OFFSET),
            })?;
        } else {
            let mut leading = [0u8; 8];
            let mut trailing = [0u8; 4];
            leading.copy_from_slice(&d[DESC_LEADING_OFFSET..DESC_LEADING_OFFSET + 8]);
            trailing.copy_from_slice(&d[DESC_TRAILING_OFFSET..DESC_TRAILING_OFFSET + 4]);
            let log_position = (e.position + (ds as u64 + data) * SECTOR as u64) % log_len;
            data += 1;
            f(Update::Data {
                file_offset,
                log_position,
                leading,
                trailing,
            })?;
        }
    }
    Ok(())
}

/// Read the data sector of a [`Update::Data`] and restore its bytes.
pub fn read_data_sector(
    read: &LogReader,
    log_len: u64,
    log_position: u64,
    leading: &[u8; 8],
    trailing: &[u8; 4],
    out: &mut [u8],
) -> Result<()> {
    read_wrapped(read, log_len, log_position, &mut out[..SECTOR])?;
    restore_sector(out, leading, trailing);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short entry header sector or descriptor is "no entry", never a panic.
    #[test]
    fn short_input_is_no_entry_never_a_panic() {
        let guid = Uuid::from_u128(1);
        let full = build_entry(&guid, 1, 0, 1 << 20, 1 << 20, &[]);
        assert!(parse_entry_header(&full[..SECTOR], 1 << 20, &guid, 0).is_some());
        for n in [0, 3, 8, 31, 47, 63] {
            assert_eq!(
                parse_entry_header(&full[..n], 1 << 20, &guid, 0),
                None,
                "{n}"
            );
        }
        let mut d = [0u8; DESC_SIZE];
        d[..4].copy_from_slice(&ZERO_DESC_SIGNATURE.to_le_bytes());
        d[DESC_SEQUENCE_OFFSET..].copy_from_slice(&7u64.to_le_bytes());
        assert_eq!(check_descriptor(&d, 7), Some(false));
        for n in [0, 4, 16, 31] {
            assert_eq!(check_descriptor(&d[..n], 7), None, "{n}");
        }
    }
}
