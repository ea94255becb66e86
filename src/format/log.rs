//! The log (journal): entries, descriptors, the active-sequence search of
//! [MS-VHDX] §2.3.3, and building new entries.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::format::{crc_with_zeroed_field, guid_at, le32, le64, put32, put64, put_guid};

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

/// One update carried by a log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptor {
    /// Write one 4 KiB sector.
    Data {
        /// Target file offset (4 KiB multiple).
        file_offset: u64,
        /// The full sector to write.
        data: Vec<u8>,
    },
    /// Write zeros.
    Zero {
        /// Target file offset (4 KiB multiple).
        file_offset: u64,
        /// Length (4 KiB multiple).
        length: u64,
    },
}

impl Descriptor {
    /// The end of the range this descriptor writes.
    pub fn end(&self) -> u64 {
        match self {
            Descriptor::Data { file_offset, .. } => file_offset.saturating_add(SECTOR as u64),
            Descriptor::Zero {
                file_offset,
                length,
            } => file_offset.saturating_add(*length),
        }
    }
}

/// A validated log entry.
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
    /// The updates.
    pub descriptors: Vec<Descriptor>,
}

/// Reads `buf.len()` bytes at a log-relative position (no wrap; the caller splits).
pub type LogReader<'a> = dyn Fn(u64, &mut [u8]) -> Result<()> + 'a;

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
        64 + 32 * i
    } else {
        let j = i - DESCS_IN_FIRST;
        SECTOR * (1 + j / DESCS_PER_SECTOR) + 32 * (j % DESCS_PER_SECTOR)
    }
}

/// Read and fully validate the entry at `pos`; `None` when there is no
/// valid entry with `guid` there.
pub fn read_entry(read: &LogReader, log_len: u64, guid: &Uuid, pos: u64) -> Result<Option<Entry>> {
    let mut head = vec![0u8; SECTOR];
    read_wrapped(read, log_len, pos, &mut head)?;
    if le32(&head, 0) != ENTRY_SIGNATURE {
        return Ok(None);
    }
    let length = le32(&head, 8) as u64;
    let tail = le32(&head, 12) as u64;
    let sequence = le64(&head, 16);
    let count = le32(&head, 24) as usize;
    if length == 0
        || length % SECTOR as u64 != 0
        || length > log_len
        || tail % SECTOR as u64 != 0
        || tail >= log_len
        || sequence == 0
        || guid_at(&head, 32) != *guid
    {
        return Ok(None);
    }
    let sectors = (length / SECTOR as u64) as usize;
    // Bound the descriptor count by the entry length before allocating.
    if count > DESCS_IN_FIRST + DESCS_PER_SECTOR * (sectors - 1) || desc_sectors(count) > sectors {
        return Ok(None);
    }
    let mut raw = vec![0u8; length as usize];
    raw[..SECTOR].copy_from_slice(&head);
    if sectors > 1 {
        read_wrapped(
            read,
            log_len,
            (pos + SECTOR as u64) % log_len,
            &mut raw[SECTOR..],
        )?;
    }
    if le32(&raw, 4) != crc_with_zeroed_field(&raw, 4) {
        return Ok(None);
    }
    let mut data_sector = desc_sectors(count);
    let mut descriptors = Vec::with_capacity(count);
    for i in 0..count {
        let o = desc_offset(i);
        let sig = le32(&raw, o);
        let file_offset = le64(&raw, o + 16);
        if le64(&raw, o + 24) != sequence || file_offset % SECTOR as u64 != 0 {
            return Ok(None);
        }
        match sig {
            ZERO_DESC_SIGNATURE => {
                let length = le64(&raw, o + 8);
                if length % SECTOR as u64 != 0 || file_offset.checked_add(length).is_none() {
                    return Ok(None);
                }
                descriptors.push(Descriptor::Zero {
                    file_offset,
                    length,
                });
            }
            DATA_DESC_SIGNATURE => {
                if data_sector >= sectors {
                    return Ok(None);
                }
                let s = &raw[data_sector * SECTOR..(data_sector + 1) * SECTOR];
                if le32(s, 0) != DATA_SECTOR_SIGNATURE
                    || le32(s, 4) != (sequence >> 32) as u32
                    || le32(s, 4092) != sequence as u32
                {
                    return Ok(None);
                }
                let mut data = s.to_vec();
                data[0..8].copy_from_slice(&raw[o + 8..o + 16]);
                data[4092..4096].copy_from_slice(&raw[o + 4..o + 8]);
                descriptors.push(Descriptor::Data { file_offset, data });
                data_sector += 1;
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(Entry {
        position: pos,
        length,
        tail,
        sequence,
        flushed_file_offset: le64(&raw, 48),
        last_file_offset: le64(&raw, 56),
        descriptors,
    }))
}

/// Find the active sequence of a log (spec §2.3.3). Returns its entries
/// from tail to head, or an error when the log holds no valid sequence.
pub fn find_active_sequence(read: &LogReader, log_len: u64, guid: &Uuid) -> Result<Vec<Entry>> {
    if log_len == 0 || log_len % SECTOR as u64 != 0 {
        return Err(Error::Corrupt("log has an invalid length".into()));
    }
    let mut candidate: Vec<Entry> = Vec::new();
    let mut tail = 0u64;
    let mut old_tail = 0u64;
    let mut first = true;
    loop {
        let mut current: Vec<Entry> = Vec::new();
        let mut head = tail;
        let mut covered = 0u64;
        while covered < log_len {
            let Some(e) = read_entry(read, log_len, guid, head)? else {
                break;
            };
            if let Some(last) = current.last() {
                if e.sequence != last.sequence.wrapping_add(1) {
                    break;
                }
            }
            covered += e.length;
            if covered > log_len {
                break;
            }
            head = (head + e.length) % log_len;
            current.push(e);
        }
        let valid = current
            .last()
            .and_then(|h| current.iter().position(|e| e.position == h.tail))
            .map(|start| current.split_off(start));
        match valid {
            Some(seq) => {
                let head_seq = seq.last().map(|e| e.sequence).unwrap_or(0);
                let cand_seq = candidate.last().map(|e| e.sequence).unwrap_or(0);
                if head_seq > cand_seq {
                    candidate = seq;
                }
                tail = head;
            }
            None => tail = (tail + SECTOR as u64) % log_len,
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
    if candidate.is_empty() {
        return Err(Error::Corrupt(
            "the log is dirty but holds no valid entry sequence".into(),
        ));
    }
    Ok(candidate)
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
pub fn build_entry(
    guid: &Uuid,
    sequence: u64,
    tail: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: &[(u64, &[u8])],
) -> Vec<u8> {
    let ds = desc_sectors(writes.len());
    let length = SECTOR * (ds + writes.len());
    let mut b = vec![0u8; length];
    put32(&mut b, 0, ENTRY_SIGNATURE);
    put32(&mut b, 8, length as u32);
    put32(&mut b, 12, tail as u32);
    put64(&mut b, 16, sequence);
    put32(&mut b, 24, writes.len() as u32);
    put_guid(&mut b, 32, guid);
    put64(&mut b, 48, flushed_file_offset);
    put64(&mut b, 56, last_file_offset);
    for (i, (off, data)) in writes.iter().enumerate() {
        let o = desc_offset(i);
        put32(&mut b, o, DATA_DESC_SIGNATURE);
        b[o + 4..o + 8].copy_from_slice(&data[4092..4096]);
        b[o + 8..o + 16].copy_from_slice(&data[0..8]);
        put64(&mut b, o + 16, *off);
        put64(&mut b, o + 24, sequence);
        let s = (ds + i) * SECTOR;
        b[s + 8..s + 4092].copy_from_slice(&data[8..4092]);
        put32(&mut b, s, DATA_SECTOR_SIGNATURE);
        put32(&mut b, s + 4, (sequence >> 32) as u32);
        put32(&mut b, s + 4092, sequence as u32);
    }
    let crc = crc32c::crc32c(&b);
    put32(&mut b, 4, crc);
    b
}
