//! The log (journal): entries, descriptors, the active-sequence search of
//! [MS-VHDX] §2.3.3, and building new entries.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::format::{guid_at, le32, le64, put32, put64, put_guid};

// Byte layout of a log entry (MS-VHDX 2.3.1), little-endian, 4 KiB sectors:
//
// entry header, the first 64 bytes of the first sector:
//    0   4  Signature "loge"
//    4   4  Checksum: CRC-32C over the whole entry with this field zero
//    8   4  EntryLength (4 KiB multiple)
//   12   4  Tail: log offset of the first entry of the sequence
//   16   8  SequenceNumber (non-zero)
//   24   4  DescriptorCount
//   28   4  reserved
//   32  16  LogGuid (the header's)
//   48   8  FlushedFileOffset
//   56   8  LastFileOffset
//   64      descriptors, 32 bytes each (126 in the first sector, 128 in the next ones)
//
// zero descriptor:              data descriptor:
//    0  4  "zero"                  0  4  "desc"
//    4  4  reserved                4  4  TrailingBytes (sector bytes 4092..4096)
//    8  8  ZeroLength              8  8  LeadingBytes (sector bytes 0..8)
//   16  8  FileOffset             16  8  FileOffset
//   24  8  SequenceNumber         24  8  SequenceNumber
//
// data sector (one per data descriptor, after the descriptor sectors):
//    0     4  "data"
//    4     4  SequenceHigh (sequence >> 32)
//    8  4084  Data (sector bytes 8..4092)
// 4092     4  SequenceLow (sequence as u32)

const ENTRY_SIGNATURE_OFFSET: usize = 0;
const ENTRY_CHECKSUM_OFFSET: usize = 4;
const ENTRY_LENGTH_OFFSET: usize = 8;
const ENTRY_TAIL_OFFSET: usize = 12;
const ENTRY_SEQUENCE_OFFSET: usize = 16;
const ENTRY_DESCRIPTOR_COUNT_OFFSET: usize = 24;
const ENTRY_LOG_GUID_OFFSET: usize = 32;
const ENTRY_FLUSHED_FILE_OFFSET_OFFSET: usize = 48;
const ENTRY_LAST_FILE_OFFSET_OFFSET: usize = 56;
const ENTRY_HEADER_SIZE: usize = 64;
const DESC_SIZE: usize = 32;
const DESC_SIGNATURE_OFFSET: usize = 0;
const DESC_TRAILING_OFFSET: usize = 4;
const DESC_ZERO_LENGTH_OFFSET: usize = 8;
const DESC_LEADING_OFFSET: usize = 8;
const DESC_FILE_OFFSET_OFFSET: usize = 16;
const DESC_SEQUENCE_OFFSET: usize = 24;
const DATA_SIGNATURE_OFFSET: usize = 0;
const DATA_SEQUENCE_HIGH_OFFSET: usize = 4;
const DATA_OFFSET: usize = 8;
const DATA_SEQUENCE_LOW_OFFSET: usize = 4092;
const _: () = assert!(ENTRY_HEADER_SIZE + DESC_SIZE * DESCS_IN_FIRST == SECTOR);
const _: () = assert!(DESC_SIZE * DESCS_PER_SECTOR == SECTOR);

/// "loge".
pub const ENTRY_SIGNATURE: u32 = 0x6567_6F6C;
/// "desc".
pub const DATA_DESC_SIGNATURE: u32 = 0x6373_6564;
/// "zero".
pub const ZERO_DESC_SIGNATURE: u32 = 0x6F72_657A;
/// "data".
pub const DATA_SECTOR_SIGNATURE: u32 = 0x6174_6164;
/// Log sector size.
pub const SECTOR: usize = 4096;
/// Descriptors in the first sector of an entry.
pub const DESCS_IN_FIRST: usize = 126;
/// Descriptors in each further descriptor sector.
pub const DESCS_PER_SECTOR: usize = 128;

/// One update carried by a log entry, as found by [`for_each_update`]:
/// no sector data is held, a data update names where its sector is in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Write one 4 KiB sector.
    Data {
        /// Target file offset (4 KiB multiple).
        file_offset: u64,
        /// Where the data sector is, relative to the start of the log.
        log_position: u64,
        /// Bytes 0..8 of the sector (kept in the descriptor).
        leading: [u8; 8],
        /// Bytes 4092..4096 of the sector (kept in the descriptor).
        trailing: [u8; 4],
    },
    /// Write zeros.
    Zero {
        /// Target file offset (4 KiB multiple).
        file_offset: u64,
        /// Length (4 KiB multiple).
        length: u64,
    },
}

impl Update {
    /// The range this update writes (the end saturates).
    pub fn range(&self) -> (u64, u64) {
        match self {
            Update::Data { file_offset, .. } => {
                (*file_offset, file_offset.saturating_add(SECTOR as u64))
            }
            Update::Zero {
                file_offset,
                length,
            } => (*file_offset, file_offset.saturating_add(*length)),
        }
    }
}

/// Restore a data sector read from the log into the sector it stands for.
pub fn restore_sector(sector: &mut [u8], leading: &[u8; 8], trailing: &[u8; 4]) {
    sector[0..8].copy_from_slice(leading);
    sector[4092..4096].copy_from_slice(trailing);
}

/// A validated log entry: its header fields, not its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Offset of the entry inside the log.
    pub position: u64,
    /// Entry length in bytes.
    pub length: u64,
    /// Offset (inside the log) of the first entry of its sequence.
    pub tail: u64,
    /// Sequence number.
    pub sequence: u64,
    /// Size the file is known to have durably.
    pub flushed_file_offset: u64,
    /// Every structure lies below this offset.
    pub last_file_offset: u64,
    /// Number of descriptors.
    pub descriptor_count: u32,
}

/// Reads `buf.len()` bytes at a log-relative position (no wrap; the caller splits).
pub type LogReader<'a> = dyn Fn(u64, &mut [u8]) -> Result<()> + 'a;

/// Given a log-relative position, the next log-relative range `[start, end)`
/// at or after it that may hold data (`None`: only holes follow). Lets a
/// scan skip the holes of a sparse file; `|p| Ok(Some((p, u64::MAX)))`
/// scans everything.
pub type DataFinder<'a> = dyn Fn(u64) -> Result<Option<(u64, u64)>> + 'a;

/// Bytes read at once while scanning or checksumming.
const CHUNK: usize = 64 * SECTOR;

fn read_wrapped(read: &LogReader, log_len: u64, pos: u64, buf: &mut [u8]) -> Result<()> {
    let first = ((log_len - pos) as usize).min(buf.len());
    read(pos, &mut buf[..first])?;
    if first < buf.len() {
        read(0, &mut buf[first..])?;
    }
    Ok(())
}

fn desc_sectors(count: usize) -> usize {
    if count <= DESCS_IN_FIRST {
        1
    } else {
        1 + (count - DESCS_IN_FIRST).div_ceil(DESCS_PER_SECTOR)
    }
}

fn desc_offset(i: usize) -> usize {
    if i < DESCS_IN_FIRST {
        ENTRY_HEADER_SIZE + DESC_SIZE * i
    } else {
        let j = i - DESCS_IN_FIRST;
        SECTOR * (1 + j / DESCS_PER_SECTOR) + DESC_SIZE * (j % DESCS_PER_SECTOR)
    }
}

/// The header fields of an entry header sector, when they are plausible for
/// a log of `log_len` bytes and `guid` (the body is not looked at).
fn parse_entry_header(head: &[u8], log_len: u64, guid: &Uuid, pos: u64) -> Option<Entry> {
    if le32(head, ENTRY_SIGNATURE_OFFSET) != ENTRY_SIGNATURE {
        return None;
    }
    let length = le32(head, ENTRY_LENGTH_OFFSET) as u64;
    let tail = le32(head, ENTRY_TAIL_OFFSET) as u64;
    let sequence = le64(head, ENTRY_SEQUENCE_OFFSET);
    let count = le32(head, ENTRY_DESCRIPTOR_COUNT_OFFSET) as usize;
    if length == 0
        || length % SECTOR as u64 != 0
        || length > log_len
        || tail % SECTOR as u64 != 0
        || tail >= log_len
        || sequence == 0
        || guid_at(head, ENTRY_LOG_GUID_OFFSET) != *guid
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
        flushed_file_offset: le64(head, ENTRY_FLUSHED_FILE_OFFSET_OFFSET),
        last_file_offset: le64(head, ENTRY_LAST_FILE_OFFSET_OFFSET),
        descriptor_count: count as u32,
    })
}

/// Check one descriptor (32 bytes); returns whether it is a data descriptor.
fn check_descriptor(d: &[u8], sequence: u64) -> Option<bool> {
    let file_offset = le64(d, DESC_FILE_OFFSET_OFFSET);
    if le64(d, DESC_SEQUENCE_OFFSET) != sequence || file_offset % SECTOR as u64 != 0 {
        return None;
    }
    match le32(d, DESC_SIGNATURE_OFFSET) {
        ZERO_DESC_SIGNATURE => {
            let length = le64(d, DESC_ZERO_LENGTH_OFFSET);
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
fn body_is_valid(read: &LogReader, log_len: u64, e: &Entry, head: &[u8]) -> Result<bool> {
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
            return Err(Error::Corrupt(format!(
                "log entry {} changed while it was replayed",
                e.sequence
            )));
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

/// Positions (4 KiB sector indices) of every sector of the log that starts
/// with the entry signature, in order: one pass over the data really there.
fn entry_signatures(read: &LogReader, data: &DataFinder, log_len: u64) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK.min(log_len as usize)];
    let mut pos = 0u64;
    while pos < log_len {
        let Some((start, end)) = data(pos)? else {
            break;
        };
        let start = start.max(pos) / SECTOR as u64 * SECTOR as u64;
        let end = crate::format::align_up(end.min(log_len), SECTOR as u64)
            .unwrap_or(log_len)
            .min(log_len);
        if start >= end {
            break;
        }
        let mut p = start;
        while p < end {
            let n = ((end - p) as usize).min(buf.len());
            read(p, &mut buf[..n])?;
            for (k, s) in buf[..n].chunks_exact(SECTOR).enumerate() {
                if le32(s, 0) == ENTRY_SIGNATURE {
                    out.push(((p / SECTOR as u64) + k as u64) as u32);
                }
            }
            p += n as u64;
        }
        pos = end;
    }
    Ok(out)
}

/// Find the active sequence of a log (spec §2.3.3). Returns its entries
/// from tail to head, or an error when the log holds no valid sequence.
///
/// The result is that of the spec's scan, computed in time linear in the
/// log and memory bounded by a few bytes per entry:
///
/// 1. One pass finds every sector that starts with "loge" (holes skipped).
/// 2. No valid entry contains another entry's header sector (its other
///    sectors start with "desc"/"zero"/"data", or are trailing sectors it
///    wrote itself), so a candidate whose span holds another "loge" sector
///    is rejected unread. The spans left are disjoint: checksumming them all
///    reads the log at most once.
/// 3. Valid entries chain (an entry followed, right after its end, by one
///    whose sequence number is one greater) into disjoint paths. A walk of
///    the spec's step 3 from any entry of a path ends at the path's last
///    entry, so the tail check of step 4 is one comparison per entry.
/// 4. The scan of steps 2-7 then visits each entry once.
pub fn find_active_sequence(
    read: &LogReader,
    data: &DataFinder,
    log_len: u64,
    guid: &Uuid,
) -> Result<Vec<Entry>> {
    if log_len == 0 || log_len % SECTOR as u64 != 0 || log_len > u32::MAX as u64 + 1 {
        return Err(Error::Corrupt("log has an invalid length".into()));
    }
    let sectors = log_len / SECTOR as u64;
    let sigs = entry_signatures(read, data, log_len)?;
    // Valid entries, by position, as compact summaries (the fields of the
    // active sequence's entries are read again at the end).
    #[derive(Clone, Copy)]
    struct Valid {
        position: u64,
        sequence: u64,
        length: u32,
        tail: u32,
    }
    let mut entries: Vec<Valid> = Vec::new();
    let mut head = vec![0u8; SECTOR];
    for (n, &s) in sigs.iter().enumerate() {
        let pos = s as u64 * SECTOR as u64;
        read_wrapped(read, log_len, pos, &mut head)?;
        let Some(e) = parse_entry_header(&head, log_len, guid, pos) else {
            continue;
        };
        // Distance to the next "loge" sector, going round the log.
        let next = match sigs.get(n + 1) {
            Some(&t) => (t - s) as u64,
            None => sectors - s as u64 + sigs[0] as u64,
        };
        if next * (SECTOR as u64) < e.length {
            continue;
        }
        if body_is_valid(read, log_len, &e, &head)? {
            // Lengths and tails are below the log's length (< 2^32).
            entries.push(Valid {
                position: pos,
                sequence: e.sequence,
                length: e.length as u32,
                tail: e.tail as u32,
            });
        }
    }
    drop(sigs);
    let at = |pos: u64| {
        entries
            .binary_search_by_key(&pos, |e| e.position)
            .ok()
            .map(|i| i as u32)
    };
    // Links: succ[i] = the entry right after i that continues its sequence.
    // (At most 2^20 entries: indices fit in u32.)
    const NONE: u32 = u32::MAX;
    let mut succ = vec![NONE; entries.len()];
    let mut has_pred = vec![false; entries.len()];
    for (i, e) in entries.iter().enumerate() {
        if let Some(j) = at((e.position + e.length as u64) % log_len) {
            if j as usize != i && e.sequence.checked_add(1) == Some(entries[j as usize].sequence) {
                succ[i] = j;
                has_pred[j as usize] = true;
            }
        }
    }
    // For every entry: the head its walk reaches and, when that walk is a
    // valid sequence (the head's tail is an entry at or after it on the
    // path), the sequence's first entry.
    let mut walk_head = vec![NONE; entries.len()];
    let mut walk_tail = vec![NONE; entries.len()];
    let mut path: Vec<u32> = Vec::new();
    for (start, &pred) in has_pred.iter().enumerate() {
        if pred {
            continue;
        }
        path.clear();
        let mut i = start as u32;
        while i != NONE && path.len() < entries.len() {
            path.push(i);
            i = succ[i as usize];
        }
        let h = *path.last().unwrap_or(&(start as u32));
        let tail_at = path
            .iter()
            .position(|&k| entries[k as usize].position == entries[h as usize].tail as u64);
        for (idx, &k) in path.iter().enumerate() {
            walk_head[k as usize] = h;
            // The valid sequence is the walk's suffix from the head's tail.
            if let Some(t) = tail_at.filter(|&t| idx <= t) {
                walk_tail[k as usize] = path[t];
            }
        }
    }
    drop(has_pred);
    // The scan of §2.3.3.
    let mut candidate: Option<(u32, u32)> = None;
    let (mut tail, mut old_tail, mut first) = (0u64, 0u64, true);
    loop {
        match at(tail) {
            Some(i) if walk_tail[i as usize] != NONE => {
                let h = walk_head[i as usize];
                let hs = entries[h as usize].sequence;
                if candidate.is_none_or(|(_, ch)| hs > entries[ch as usize].sequence) {
                    candidate = Some((walk_tail[i as usize], h));
                }
                let he = &entries[h as usize];
                tail = (he.position + he.length as u64) % log_len;
            }
            _ => {
                // Step by 4 KiB until the next entry: nothing in between.
                let next = entries.partition_point(|e| e.position <= tail);
                tail = entries.get(next).map(|e| e.position).unwrap_or(0);
            }
        }
        if !first && tail <= old_tail {
            break;
        }
        if first && tail == 0 {
            break;
        }
        first = false;
        old_tail = tail;
    }
    let Some((mut i, h)) = candidate else {
        return Err(Error::Corrupt(
            "the log is dirty but holds no valid entry sequence".into(),
        ));
    };
    let mut seq = Vec::new();
    loop {
        let pos = entries[i as usize].position;
        read_wrapped(read, log_len, pos, &mut head)?;
        let e = parse_entry_header(&head, log_len, guid, pos).ok_or_else(|| {
            Error::Corrupt(format!("log entry at {pos:#x} changed while it was read"))
        })?;
        seq.push(e);
        if i == h {
            break;
        }
        i = succ[i as usize];
    }
    Ok(seq)
}

/// Largest number of 4 KiB data sectors one entry can carry in a log of `log_len` bytes
/// while staying at most half of the log.
pub fn max_data_sectors(log_len: u64) -> usize {
    let sectors = (log_len as usize / SECTOR) / 2;
    // n data sectors need desc_sectors(n) + n sectors.
    let mut n = sectors.saturating_sub(1);
    while n > 0 && desc_sectors(n) + n > sectors {
        n -= 1;
    }
    n
}

/// Build an entry holding 4 KiB sector writes `(file_offset, sector)`.
///
/// [MS-VHDX] §2.3.1.1 wants FlushedFileOffset and LastFileOffset to be
/// multiples of 1 MiB: `flushed_file_offset` (a size the file durably has)
/// is rounded down and `last_file_offset` (a size every structure fits in)
/// up, so callers may pass raw file lengths.
pub fn build_entry(
    guid: &Uuid,
    sequence: u64,
    tail: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: &[(u64, &[u8])],
) -> Vec<u8> {
    let mib = crate::format::MIB;
    let flushed_file_offset = flushed_file_offset / mib * mib;
    let last_file_offset =
        crate::format::align_up(last_file_offset, mib).unwrap_or(u64::MAX / mib * mib);
    let ds = desc_sectors(writes.len());
    let length = SECTOR * (ds + writes.len());
    let mut b = vec![0u8; length];
    put32(&mut b, ENTRY_SIGNATURE_OFFSET, ENTRY_SIGNATURE);
    put32(&mut b, ENTRY_LENGTH_OFFSET, length as u32);
    put32(&mut b, ENTRY_TAIL_OFFSET, tail as u32);
    put64(&mut b, ENTRY_SEQUENCE_OFFSET, sequence);
    put32(&mut b, ENTRY_DESCRIPTOR_COUNT_OFFSET, writes.len() as u32);
    put_guid(&mut b, ENTRY_LOG_GUID_OFFSET, guid);
    put64(
        &mut b,
        ENTRY_FLUSHED_FILE_OFFSET_OFFSET,
        flushed_file_offset,
    );
    put64(&mut b, ENTRY_LAST_FILE_OFFSET_OFFSET, last_file_offset);
    for (i, (off, data)) in writes.iter().enumerate() {
        let o = desc_offset(i);
        put32(&mut b, o + DESC_SIGNATURE_OFFSET, DATA_DESC_SIGNATURE);
        b[o + DESC_TRAILING_OFFSET..o + DESC_TRAILING_OFFSET + 4]
            .copy_from_slice(&data[DATA_SEQUENCE_LOW_OFFSET..SECTOR]);
        b[o + DESC_LEADING_OFFSET..o + DESC_LEADING_OFFSET + 8]
            .copy_from_slice(&data[..DATA_OFFSET]);
        put64(&mut b, o + DESC_FILE_OFFSET_OFFSET, *off);
        put64(&mut b, o + DESC_SEQUENCE_OFFSET, sequence);
        let s = (ds + i) * SECTOR;
        b[s + DATA_OFFSET..s + DATA_SEQUENCE_LOW_OFFSET]
            .copy_from_slice(&data[DATA_OFFSET..DATA_SEQUENCE_LOW_OFFSET]);
        put32(&mut b, s + DATA_SIGNATURE_OFFSET, DATA_SECTOR_SIGNATURE);
        put32(
            &mut b,
            s + DATA_SEQUENCE_HIGH_OFFSET,
            (sequence >> 32) as u32,
        );
        put32(&mut b, s + DATA_SEQUENCE_LOW_OFFSET, sequence as u32);
    }
    let crc = crc32c::crc32c(&b);
    put32(&mut b, ENTRY_CHECKSUM_OFFSET, crc);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's §2.3.3 scan, written as plainly as possible (quadratic,
    /// whole entries in memory): the reference for [`find_active_sequence`].
    fn reference(log: &[u8], guid: &Uuid) -> Option<Vec<(u64, u64)>> {
        let len = log.len() as u64;
        let read = |pos: u64, buf: &mut [u8]| -> Result<()> {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = log[((pos + k as u64) % len) as usize];
            }
            Ok(())
        };
        let valid = |pos: u64| -> Option<Entry> {
            let mut head = vec![0u8; SECTOR];
            read(pos, &mut head).ok()?;
            let e = parse_entry_header(&head, len, guid, pos)?;
            let mut raw = vec![0u8; e.length as usize];
            read(pos, &mut raw).ok()?;
            if le32(&raw, 4) != crate::format::crc_with_zeroed_field(&raw, 4) {
                return None;
            }
            let count = e.descriptor_count as usize;
            let mut data = desc_sectors(count);
            for i in 0..count {
                let o = desc_offset(i);
                if check_descriptor(&raw[o..o + 32], e.sequence)? {
                    let s = raw.get(data * SECTOR..(data + 1) * SECTOR)?;
                    if le32(s, 0) != DATA_SECTOR_SIGNATURE
                        || le32(s, 4) != (e.sequence >> 32) as u32
                        || le32(s, 4092) != e.sequence as u32
                    {
                        return None;
                    }
                    data += 1;
                }
            }
            Some(e)
        };
        let mut candidate: Vec<Entry> = Vec::new();
        let (mut tail, mut old_tail, mut first) = (0u64, 0u64, true);
        loop {
            let mut current: Vec<Entry> = Vec::new();
            let mut head = tail;
            let mut covered = 0u64;
            while covered < len {
                let Some(e) = valid(head) else { break };
                if let Some(last) = current.last() {
                    if e.sequence != last.sequence.wrapping_add(1) {
                        break;
                    }
                }
                covered += e.length;
                if covered > len {
                    break;
                }
                head = (head + e.length) % len;
                current.push(e);
            }
            let seq = current
                .last()
                .and_then(|h| current.iter().position(|e| e.position == h.tail))
                .map(|start| current.split_off(start));
            match seq {
                Some(seq) => {
                    let h = seq.last().map(|e| e.sequence).unwrap_or(0);
                    if h > candidate.last().map(|e| e.sequence).unwrap_or(0) {
                        candidate = seq;
                    }
                    tail = head;
                }
                None => tail = (tail + SECTOR as u64) % len,
            }
            if (!first && tail <= old_tail) || (first && tail == 0) {
                break;
            }
            first = false;
            old_tail = tail;
        }
        (!candidate.is_empty())
            .then(|| candidate.iter().map(|e| (e.position, e.sequence)).collect())
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random logs as writers leave them (sessions of entries written round
    /// the log, tails pointing at their sequence or elsewhere, torn and
    /// damaged entries, other sessions' GUIDs): the linear scan finds
    /// exactly the sequence the spec's scan finds.
    #[test]
    fn linear_scan_matches_the_spec_scan() {
        let guid = Uuid::from_u128(0x1234);
        let other = Uuid::from_u128(0x5678);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut found = 0;
        for round in 0..3000 {
            let sectors = 4 + rng.below(40) as usize;
            let len = (sectors * SECTOR) as u64;
            let mut log = vec![0u8; sectors * SECTOR];
            let mut pos = rng.below(sectors as u64) * SECTOR as u64;
            let mut seq = 1 + rng.below(5);
            let mut starts: Vec<u64> = Vec::new();
            for _ in 0..rng.below(30) {
                if rng.below(6) == 0 {
                    // A new session somewhere else.
                    pos = rng.below(sectors as u64) * SECTOR as u64;
                    seq += 1 + rng.below(3);
                    starts.clear();
                }
                let n = rng.below(3) as usize;
                let writes: Vec<(u64, Vec<u8>)> = (0..n)
                    .map(|k| (k as u64 * 4096, vec![rng.below(256) as u8; SECTOR]))
                    .collect();
                let w: Vec<(u64, &[u8])> = writes.iter().map(|(o, d)| (*o, &d[..])).collect();
                let tail = match rng.below(4) {
                    0 => pos,
                    1 => starts.first().copied().unwrap_or(pos),
                    2 => starts
                        .get(rng.below(starts.len().max(1) as u64) as usize)
                        .copied()
                        .unwrap_or(pos),
                    _ => rng.below(sectors as u64) * SECTOR as u64,
                };
                let g = if rng.below(10) == 0 { &other } else { &guid };
                let mut e = build_entry(g, seq, tail, 0, 0, &w);
                if e.len() as u64 > len {
                    continue;
                }
                match rng.below(12) {
                    0 => {
                        let i = rng.below(e.len() as u64) as usize;
                        e[i] ^= 1;
                    }
                    1 => e.truncate(SECTOR * (1 + rng.below((e.len() / SECTOR) as u64) as usize)),
                    _ => {}
                }
                for (k, b) in e.iter().enumerate() {
                    log[((pos + k as u64) % len) as usize] = *b;
                }
                starts.push(pos);
                pos = (pos + e.len() as u64) % len;
                seq += 1;
            }
            let read = |p: u64, buf: &mut [u8]| -> Result<()> {
                buf.copy_from_slice(&log[p as usize..p as usize + buf.len()]);
                Ok(())
            };
            let all = |p: u64| -> Result<Option<(u64, u64)>> { Ok(Some((p, u64::MAX))) };
            let got = find_active_sequence(&read, &all, len, &guid).ok().map(|v| {
                v.iter()
                    .map(|e| (e.position, e.sequence))
                    .collect::<Vec<_>>()
            });
            let want = reference(&log, &guid);
            assert_eq!(got, want, "round {round}: {sectors} sectors");
            found += got.is_some() as usize;
        }
        assert!(found > 300, "too few logs with a valid sequence ({found})");
    }

    /// Bytes read by a scan stay within a few times the log's length, and
    /// a hole-skipping finder keeps a sparse log's scan small.
    #[test]
    fn scan_reads_are_linear_and_skip_holes() {
        let guid = Uuid::from_u128(7);
        let len = 16 << 20;
        let mut log = vec![0u8; len];
        // Back-to-back one-sector entries whose head's tail is outside the
        // chain: the spec's scan restarts at each of them.
        for s in 1..len / SECTOR {
            let e = build_entry(&guid, s as u64, 0, 0, 0, &[]);
            log[s * SECTOR..(s + 1) * SECTOR].copy_from_slice(&e);
        }
        let e = build_entry(&guid, 1 << 40, 0, 0, 0, &[]);
        log[..SECTOR].copy_from_slice(&e);
        let bytes = std::cell::Cell::new(0u64);
        let read = |p: u64, buf: &mut [u8]| -> Result<()> {
            bytes.set(bytes.get() + buf.len() as u64);
            buf.copy_from_slice(&log[p as usize..p as usize + buf.len()]);
            Ok(())
        };
        let all = |p: u64| -> Result<Option<(u64, u64)>> { Ok(Some((p, u64::MAX))) };
        let seq = find_active_sequence(&read, &all, len as u64, &guid).expect("scan");
        assert_eq!(seq.len(), 1);
        assert_eq!(seq[0].sequence, 1 << 40);
        assert!(bytes.get() <= 3 * len as u64, "{} bytes read", bytes.get());

        // Sparse: one entry at 8 MiB, a finder that knows only that sector.
        let mut log = vec![0u8; len];
        let at = 8 << 20;
        let e = build_entry(&guid, 3, at as u64, 0, 0, &[]);
        log[at..at + SECTOR].copy_from_slice(&e);
        bytes.set(0);
        let read = |p: u64, buf: &mut [u8]| -> Result<()> {
            bytes.set(bytes.get() + buf.len() as u64);
            buf.copy_from_slice(&log[p as usize..p as usize + buf.len()]);
            Ok(())
        };
        let data = |p: u64| -> Result<Option<(u64, u64)>> {
            Ok((p <= at as u64).then_some((at as u64, at as u64 + SECTOR as u64)))
        };
        let seq = find_active_sequence(&read, &data, len as u64, &guid).expect("scan");
        assert_eq!(seq[0].position, at as u64);
        assert!(
            bytes.get() <= 4 * SECTOR as u64,
            "{} bytes read",
            bytes.get()
        );
    }

    /// FlushedFileOffset is rounded down and LastFileOffset up to 1 MiB.
    #[test]
    fn build_entry_aligns_file_offsets() {
        let e = build_entry(&Uuid::from_u128(1), 1, 0, 5 << 20 | 12345, 5 << 20 | 1, &[]);
        assert_eq!(le64(&e, 48), 5 << 20);
        assert_eq!(le64(&e, 56), 6 << 20);
        let e = build_entry(&Uuid::from_u128(1), 1, 0, 3 << 20, 3 << 20, &[]);
        assert_eq!((le64(&e, 48), le64(&e, 56)), (3 << 20, 3 << 20));
    }

    #[test]
    fn golden_entry_written_by_hand() {
        let guid = uuid::uuid!("00112233-4455-6677-8899-AABBCCDDEEFF");
        let data: Vec<u8> = (0..SECTOR).map(|i| (i % 251) as u8).collect();
        let seq = 0x0000_0002_0000_0001u64;
        let mut b = vec![0u8; 2 * SECTOR];
        b[0..4].copy_from_slice(b"loge");
        b[8..12].copy_from_slice(&0x2000u32.to_le_bytes()); // EntryLength
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        b[24] = 1; // DescriptorCount
        b[32..48].copy_from_slice(&[
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        b[48 + 2] = 0x10; // FlushedFileOffset 1 MiB
        b[56 + 2] = 0x20; // LastFileOffset 2 MiB
        b[64..68].copy_from_slice(b"desc");
        b[68..72].copy_from_slice(&data[4092..4096]);
        b[72..80].copy_from_slice(&data[0..8]);
        b[80 + 2] = 0x30; // FileOffset 3 MiB
        b[88..96].copy_from_slice(&seq.to_le_bytes());
        b[SECTOR..SECTOR + 4].copy_from_slice(b"data");
        b[SECTOR + 4] = 2; // SequenceHigh
        b[SECTOR + 8..SECTOR + 4092].copy_from_slice(&data[8..4092]);
        b[SECTOR + 4092] = 1; // SequenceLow
        let crc = crc32c::crc32c(&b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        let built = build_entry(&guid, seq, 0, 1 << 20, 2 << 20, &[(3 << 20, &data)]);
        assert_eq!(built, b);
        let read = |p: u64, buf: &mut [u8]| -> Result<()> {
            buf.copy_from_slice(&b[p as usize..p as usize + buf.len()]);
            Ok(())
        };
        let e = read_entry(&read, b.len() as u64, &guid, 0)
            .unwrap()
            .unwrap();
        assert_eq!((e.sequence, e.descriptor_count), (seq, 1));
        let mut updates = Vec::new();
        for_each_update(&read, b.len() as u64, &e, |u| {
            updates.push(u);
            Ok(())
        })
        .unwrap();
        let Update::Data {
            file_offset,
            log_position,
            leading,
            trailing,
        } = updates[0].clone()
        else {
            panic!("{updates:?}")
        };
        assert_eq!(
            (updates.len(), file_offset, log_position),
            (1, 3 << 20, SECTOR as u64)
        );
        let mut out = vec![0u8; SECTOR];
        read_data_sector(
            &read,
            b.len() as u64,
            log_position,
            &leading,
            &trailing,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, data);
        // Any single damaged byte makes the entry invalid, never a panic.
        for i in (0..b.len()).step_by(61) {
            let mut d = b.clone();
            d[i] ^= 0x5a;
            let read = |p: u64, buf: &mut [u8]| -> Result<()> {
                buf.copy_from_slice(&d[p as usize..p as usize + buf.len()]);
                Ok(())
            };
            assert_eq!(
                read_entry(&read, d.len() as u64, &guid, 0).unwrap(),
                None,
                "{i}"
            );
        }
    }
}
