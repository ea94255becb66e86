//! The two VHDX headers.

use uuid::Uuid;

use crate::error::{bad_field, Error, Result};
use crate::format::{guid_at, le16, le32, le64, put16, put32, put64, put_guid, MIB};

/// "head".
pub const SIGNATURE: u32 = 0x6461_6568;
/// Bytes covered by a header.
pub const SIZE: usize = 4096;

/// A VHDX header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Sequence number; the higher valid header is current.
    pub sequence_number: u64,
    /// Changes on the first modification after each open.
    pub file_write_guid: Uuid,
    /// Changes before the first user-visible change; identifies the data for children.
    pub data_write_guid: Uuid,
    /// Zero for an empty log; otherwise the GUID valid log entries carry.
    pub log_guid: Uuid,
    /// Log format version (0).
    pub log_version: u16,
    /// Format version (1).
    pub version: u16,
    /// Log length in bytes.
    pub log_length: u32,
    /// Log offset in bytes.
    pub log_offset: u64,
}

impl Header {
    /// Parse 4096 bytes read at `offset` and validate every field.
    pub fn parse(b: &[u8], offset: u64) -> Result<Header> {
        let h = Header::decode(b, offset)?;
        h.validate()?;
        Ok(h)
    }

    /// Decode 4096 bytes read at `offset` once the signature and the
    /// checksum check out; the fields are not judged (see [`Header::validate`]).
    /// A header that fails here is "not a header" and the other copy may be used.
    pub fn decode(b: &[u8], offset: u64) -> Result<Header> {
        let b = super::checked_structure(b, SIZE, SIGNATURE, "header", offset)?;
        Ok(Header {
            sequence_number: le64(b, 8),
            file_write_guid: guid_at(b, 16),
            data_write_guid: guid_at(b, 32),
            log_guid: guid_at(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        })
    }

    /// Judge the fields of a decoded header. A header that fails here is a
    /// real header the engine must not use (and must not skip for the older one).
    pub fn validate(&self) -> Result<()> {
        const S: &str = "header";
        let h = self;
        if h.version != 1 {
            return Err(bad_field(S, "Version", h.version as u64, "must be 1"));
        }
        if h.log_version != 0 && !h.log_guid.is_nil() {
            return Err(Error::Unsupported(format!(
                "header LogVersion {} with a non-empty log (only version 0 can be replayed)",
                h.log_version
            )));
        }
        if h.log_length == 0 {
            return Err(bad_field(
                S,
                "LogLength",
                0,
                "zero (every VHDX file has a log)",
            ));
        }
        if h.log_length as u64 % MIB != 0 {
            return Err(bad_field(
                S,
                "LogLength",
                h.log_length as u64,
                "not a multiple of 1 MiB",
            ));
        }
        if h.log_offset % MIB != 0 {
            return Err(bad_field(
                S,
                "LogOffset",
                h.log_offset,
                "not a multiple of 1 MiB",
            ));
        }
        if h.log_offset < MIB {
            return Err(bad_field(
                S,
                "LogOffset",
                h.log_offset,
                "inside the header section",
            ));
        }
        if h.log_offset.checked_add(h.log_length as u64).is_none() {
            return Err(bad_field(
                S,
                "LogOffset",
                h.log_offset,
                "the log would end past 2^64",
            ));
        }
        Ok(())
    }

    /// Serialise with a valid checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        put32(&mut b, 0, SIGNATURE);
        put64(&mut b, 8, self.sequence_number);
        put_guid(&mut b, 16, &self.file_write_guid);
        put_guid(&mut b, 32, &self.data_write_guid);
        put_guid(&mut b, 48, &self.log_guid);
        put16(&mut b, 64, self.log_version);
        put16(&mut b, 66, self.version);
        put32(&mut b, 68, self.log_length);
        put64(&mut b, 72, self.log_offset);
        let crc = crc32c::crc32c(&b);
        put32(&mut b, 4, crc);
        b
    }
}

/// Which header slot is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Header 1 at 64 KiB.
    First,
    /// Header 2 at 128 KiB.
    Second,
}

/// Choose the current header from the two raw copies ([MS-VHDX] §2.2.2).
///
/// A copy whose signature or checksum is bad is not a header, and the other
/// copy is used (the returned error says what was wrong with it). The
/// current header is the one with the higher sequence number; when it fails
/// a field check the file is refused, never read through the older copy.
/// Equal sequence numbers are accepted only for byte-identical copies (as
/// Disk2vhd writes them).
pub fn choose(raw1: &[u8], raw2: &[u8]) -> Result<(Header, Slot, Option<Error>)> {
    let h1 = Header::decode(raw1, super::HEADER1_OFFSET);
    let h2 = Header::decode(raw2, super::HEADER2_OFFSET);
    let (h, slot, problem) = match (h1, h2) {
        (Ok(a), Ok(b)) => {
            // The older copy is not used; a bad field in it is only worth a note.
            if a.sequence_number > b.sequence_number {
                let note = b.validate().err();
                (a, Slot::First, note)
            } else if b.sequence_number > a.sequence_number {
                let note = a.validate().err();
                (b, Slot::Second, note)
            } else if raw1[..SIZE] == raw2[..SIZE] {
                (a, Slot::First, None)
            } else {
                return Err(Error::Corrupt(
                    "both headers have the same sequence number but differ".into(),
                ));
            }
        }
        (Ok(a), Err(e)) => (a, Slot::First, Some(e)),
        (Err(e), Ok(b)) => (b, Slot::Second, Some(e)),
        (Err(e1), Err(e2)) => {
            return Err(Error::Corrupt(format!(
                "no valid header: header 1: {e1}; header 2: {e2}"
            )))
        }
    };
    h.validate().map_err(|e| {
        let which = match slot {
            Slot::First => 1,
            Slot::Second => 2,
        };
        let what = format!(
            "the current header (header {which}, sequence number {}) is not usable",
            h.sequence_number
        );
        match e {
            Error::Unsupported(m) => Error::Unsupported(format!("{what}: {m}")),
            e => Error::Corrupt(format!("{what}: {e}")),
        }
    })?;
    Ok((h, slot, problem))
}
