//! The two VHDX headers.

use uuid::Uuid;

use crate::error::{bad_field, Error, Reason, Result, Structure};
use crate::format::{put16, put32, put64, put_guid, Reader, MIB};

// Byte layout of a header (MS-VHDX 2.2.2), little-endian, 4 KiB, of which
// the first 80 bytes are fields and the rest is reserved (zero):
//
//   0   4  Signature "head"
//   4   4  Checksum: CRC-32C over the 4 KiB with this field zero
//   8   8  SequenceNumber
//  16  16  FileWriteGuid
//  32  16  DataWriteGuid
//  48  16  LogGuid
//  64   2  LogVersion
//  66   2  Version
//  68   4  LogLength
//  72   8  LogOffset
//  80      reserved to 4096

const SIGNATURE_OFFSET: usize = 0;
const CHECKSUM_OFFSET: usize = 4;
const SEQUENCE_NUMBER_OFFSET: usize = 8;
const FILE_WRITE_GUID_OFFSET: usize = 16;
const DATA_WRITE_GUID_OFFSET: usize = 32;
const LOG_GUID_OFFSET: usize = 48;
const LOG_VERSION_OFFSET: usize = 64;
const VERSION_OFFSET: usize = 66;
const LOG_LENGTH_OFFSET: usize = 68;
const LOG_OFFSET_OFFSET: usize = 72;
const _: () = assert!(LOG_OFFSET_OFFSET + 8 <= SIZE);

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
        h.validate().map_err(|e| e.at(offset))?;
        Ok(h)
    }

    /// Decode 4096 bytes read at `offset` once the signature and the
    /// checksum check out; the fields are not judged (see [`Header::validate`]).
    /// A header that fails here is "not a header" and the other copy may be used.
    pub fn decode(b: &[u8], offset: u64) -> Result<Header> {
        let b = super::checked_structure(b, SIZE, SIGNATURE, Structure::Header, offset)?;
        let r = Reader::new(b, Structure::Header);
        Ok(Header {
            sequence_number: r.u64(SEQUENCE_NUMBER_OFFSET)?,
            file_write_guid: r.guid(FILE_WRITE_GUID_OFFSET)?,
            data_write_guid: r.guid(DATA_WRITE_GUID_OFFSET)?,
            log_guid: r.guid(LOG_GUID_OFFSET)?,
            log_version: r.u16(LOG_VERSION_OFFSET)?,
            version: r.u16(VERSION_OFFSET)?,
            log_length: r.u32(LOG_LENGTH_OFFSET)?,
            log_offset: r.u64(LOG_OFFSET_OFFSET)?,
        })
    }

    /// Judge the fields of a decoded header. A header that fails here is a
    /// real header the engine must not use (and must not skip for the older one).
    pub fn validate(&self) -> Result<()> {
        const S: Structure = Structure::Header;
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
        put32(&mut b, SIGNATURE_OFFSET, SIGNATURE);
        put64(&mut b, SEQUENCE_NUMBER_OFFSET, self.sequence_number);
        put_guid(&mut b, FILE_WRITE_GUID_OFFSET, &self.file_write_guid);
        put_guid(&mut b, DATA_WRITE_GUID_OFFSET, &self.data_write_guid);
        put_guid(&mut b, LOG_GUID_OFFSET, &self.log_guid);
        put16(&mut b, LOG_VERSION_OFFSET, self.log_version);
        put16(&mut b, VERSION_OFFSET, self.version);
        put32(&mut b, LOG_LENGTH_OFFSET, self.log_length);
        put64(&mut b, LOG_OFFSET_OFFSET, self.log_offset);
        let crc = crc32c::crc32c(&b);
        put32(&mut b, CHECKSUM_OFFSET, crc);
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
                return Err(Error::corrupt(
                    Structure::Header,
                    None,
                    Reason::Invalid("both headers have the same sequence number but differ".into()),
                ));
            }
        }
        (Ok(a), Err(e)) => (a, Slot::First, Some(e)),
        (Err(e), Ok(b)) => (b, Slot::Second, Some(e)),
        (Err(e1), Err(e2)) => {
            return Err(Error::corrupt(
                Structure::Header,
                None,
                Reason::Invalid(format!("no valid header: header 1: {e1}; header 2: {e2}")),
            ))
        }
    };
    h.validate().map_err(|e| {
        let (which, offset) = match slot {
            Slot::First => (1, super::HEADER1_OFFSET),
            Slot::Second => (2, super::HEADER2_OFFSET),
        };
        let what = format!(
            "the current header (header {which}, sequence number {}) is not usable",
            h.sequence_number
        );
        match e {
            Error::Unsupported(m) => Error::Unsupported(format!("{what}: {m}")),
            // The offset says which copy; the reason stays in data.
            e => e.at(offset),
        }
    })?;
    Ok((h, slot, problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::HEADER1_OFFSET;

    fn sample() -> Header {
        Header {
            sequence_number: 7,
            file_write_guid: uuid::uuid!("00112233-4455-6677-8899-aabbccddeeff"),
            data_write_guid: uuid::uuid!("10112233-4455-6677-8899-aabbccddeeff"),
            log_guid: Uuid::nil(),
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(Header::parse(&h.to_bytes(), HEADER1_OFFSET).unwrap(), h);
    }

    #[test]
    fn golden_bytes_written_by_hand() {
        // The layout of MS-VHDX 2.2.2, spelled out byte by byte.
        let mut b = vec![0u8; SIZE];
        b[0..4].copy_from_slice(b"head");
        b[8] = 7;
        b[16..32].copy_from_slice(&[
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        b[32..48].copy_from_slice(&[
            0x33, 0x22, 0x11, 0x10, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        b[66] = 1; // Version
        b[68..72].copy_from_slice(&0x0010_0000u32.to_le_bytes());
        b[72..80].copy_from_slice(&0x0010_0000u64.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Header::parse(&b, HEADER1_OFFSET).unwrap(), sample());
        assert_eq!(sample().to_bytes(), b);
    }

    #[test]
    fn short_or_garbage_input_is_an_error_never_a_panic() {
        let good = sample().to_bytes();
        for n in [0, 1, 4, 8, 79, 80, SIZE - 1] {
            assert!(Header::decode(&good[..n], 0).is_err(), "{n} bytes");
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..64 {
            let mut b: Vec<u8> = (0..SIZE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert!(Header::parse(&b, 0).is_err());
            // Signature and checksum right, fields garbage: judged, not trusted.
            b[0..4].copy_from_slice(b"head");
            b[4..8].fill(0);
            let crc = crc32c::crc32c(&b);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            let _ = Header::parse(&b, 0);
            let _ = choose(&b, &good);
        }
    }
}
