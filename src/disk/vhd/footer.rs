//! The VHD footer: 512 bytes, big-endian, at the end of every VHD (and its
//! copy at offset 0 of a dynamic or differencing disk), with the CHS
//! geometry rules and the one's-complement checksum.
//!
//! Layout (offsets in bytes):
//!
//! ```text
//!   0  cookie "conectix"        8   features (2 = reserved, always set)
//!  12  format version 1.0      16   data offset (u64; fixed: all ones)
//!  24  timestamp (s since 2000-01-01 UTC)
//!  28  creator application     32   creator version      36  creator host OS
//!  40  original size (u64)     48   current size (u64)
//!  56  cylinders (u16), heads (u8), sectors per track (u8)
//!  60  disk type (2 fixed, 3 dynamic, 4 differencing)
//!  64  checksum                68   unique id (16)       84  saved state
//!  85  reserved (427 zeros)
//! ```
//!
//! Pure data: no I/O.

use crate::disk::DiskKind;
use crate::error::{Error, Reason, Result, Structure};

/// Size of the footer (and of every VHD sector).
pub(crate) const FOOTER_SIZE: usize = 512;
/// The footer's cookie.
pub(crate) const COOKIE: &[u8; 8] = b"conectix";
const FEATURES_OFFSET: usize = 8;
const VERSION_OFFSET: usize = 12;
const DATA_OFFSET_OFFSET: usize = 16;
const TIMESTAMP_OFFSET: usize = 24;
const CREATOR_APP_OFFSET: usize = 28;
const CREATOR_VERSION_OFFSET: usize = 32;
const CREATOR_OS_OFFSET: usize = 36;
const ORIGINAL_SIZE_OFFSET: usize = 40;
const CURRENT_SIZE_OFFSET: usize = 48;
const GEOMETRY_OFFSET: usize = 56;
const DISK_TYPE_OFFSET: usize = 60;
const CHECKSUM_OFFSET: usize = 64;
const UNIQUE_ID_OFFSET: usize = 68;
const SAVED_STATE_OFFSET: usize = 84;

/// Format version 1.0.
pub(crate) const VERSION: u32 = 0x0001_0000;
/// The "reserved" feature bit, set in every footer.
const FEATURE_RESERVED: u32 = 2;
/// Seconds between the Unix epoch and the VHD epoch (2000-01-01 UTC).
pub(crate) const VHD_EPOCH: u64 = 946_684_800;
/// Largest CHS geometry (cylinders × heads × sectors per track).
pub(crate) const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;
/// Largest virtual size libckpt creates: 2040 GiB, QEMU's bound too (a BAT
/// entry counts 512-byte sectors in 32 bits, so a file stays under 2 TiB).
pub const MAX_VHD_SIZE: u64 = 2040 << 30;

/// The disk type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskType {
    /// 2: the data lies before the footer.
    Fixed,
    /// 3: a BAT of blocks.
    Dynamic,
    /// 4: a BAT of blocks over a parent.
    Differencing,
}

impl DiskType {
    fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    /// The disk kind of the common API.
    pub(crate) fn kind(self) -> DiskKind {
        match self {
            DiskType::Fixed => DiskKind::Fixed,
            DiskType::Dynamic => DiskKind::Dynamic,
            DiskType::Differencing => DiskKind::Differencing,
        }
    }
}

/// A parsed footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(crate) features: u32,
    pub(crate) data_offset: u64,
    pub(crate) timestamp: u32,
    pub(crate) creator_app: [u8; 4],
    pub(crate) creator_version: u32,
    pub(crate) creator_os: u32,
    pub(crate) original_size: u64,
    pub(crate) current_size: u64,
    /// Cylinders, heads, sectors per track.
    pub(crate) chs: (u16, u8, u8),
    pub(crate) disk_type: DiskType,
    pub(crate) unique_id: [u8; 16],
    pub(crate) saved_state: u8,
}

/// The one's complement of the sum of every byte of `b`, the bytes at
/// `skip..skip + 4` (the checksum field) left out.
pub(crate) fn checksum(b: &[u8], skip: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |s, (_, &x)| s.wrapping_add(x as u32));
    !sum
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn bad(field: &'static str, value: u64, problem: &'static str) -> Error {
    Error::corrupt(
        Structure::VhdFooter,
        None,
        Reason::BadField {
            field,
            value,
            problem,
        },
    )
}

/// The CHS geometry of `sectors` 512-byte sectors, by the algorithm of the
/// specification's appendix (the same as QEMU's): the product of the three
/// can be smaller than `sectors`, and is at most [`MAX_CHS_SECTORS`].
pub(crate) fn chs_of(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(MAX_CHS_SECTORS);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17u64;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

impl Footer {
    /// A new footer (checksum computed when serialised).
    pub(crate) fn new(
        disk_type: DiskType,
        size: u64,
        data_offset: u64,
        unique_id: [u8; 16],
    ) -> Footer {
        Footer {
            features: FEATURE_RESERVED,
            data_offset,
            timestamp: now_vhd(),
            // Hyper-V's conventions: QEMU (and Hyper-V, Azure) then take the
            // current size as the virtual size, whatever the CHS rounding.
            creator_app: *b"win ",
            creator_version: 0x000a_0000,
            creator_os: u32::from_be_bytes(*b"Wi2k"),
            original_size: size,
            current_size: size,
            chs: chs_of(size / 512),
            disk_type,
            unique_id,
            saved_state: 0,
        }
    }

    /// Parse and validate 512 bytes: cookie, checksum, version, type, sizes.
    pub(crate) fn parse(b: &[u8]) -> Result<Footer> {
        if b.len() < FOOTER_SIZE {
            return Err(Error::corrupt(
                Structure::VhdFooter,
                None,
                Reason::Truncated {
                    needed: FOOTER_SIZE as u64,
                    found: b.len() as u64,
                },
            ));
        }
        let b = &b[..FOOTER_SIZE];
        if &b[..8] != COOKIE {
            return Err(Error::corrupt(
                Structure::VhdFooter,
                None,
                Reason::BadSignature { found: be64(b, 0) },
            ));
        }
        let stored = be32(b, CHECKSUM_OFFSET);
        let computed = checksum(b, CHECKSUM_OFFSET);
        if stored != computed {
            return Err(Error::corrupt(
                Structure::VhdFooter,
                None,
                Reason::BadChecksum { stored, computed },
            ));
        }
        let version = be32(b, VERSION_OFFSET);
        if version >> 16 != 1 {
            return Err(bad(
                "format version",
                version as u64,
                "only version 1 is known",
            ));
        }
        let disk_type = match be32(b, DISK_TYPE_OFFSET) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            t => {
                return Err(bad(
                    "disk type",
                    t as u64,
                    "not fixed (2), dynamic (3) or differencing (4)",
                ))
            }
        };
        let current_size = be64(b, CURRENT_SIZE_OFFSET);
        let data_offset = be64(b, DATA_OFFSET_OFFSET);
        if disk_type != DiskType::Fixed && (data_offset % 512 != 0 || data_offset < 512) {
            return Err(bad(
                "data offset",
                data_offset,
                "a dynamic disk's header must lie on a sector after the footer copy",
            ));
        }
        let mut creator_app = [0u8; 4];
        creator_app.copy_from_slice(&b[CREATOR_APP_OFFSET..CREATOR_APP_OFFSET + 4]);
        let mut unique_id = [0u8; 16];
        unique_id.copy_from_slice(&b[UNIQUE_ID_OFFSET..UNIQUE_ID_OFFSET + 16]);
        let f = Footer {
            features: be32(b, FEATURES_OFFSET),
            data_offset,
            timestamp: be32(b, TIMESTAMP_OFFSET),
            creator_app,
            creator_version: be32(b, CREATOR_VERSION_OFFSET),
            creator_os: be32(b, CREATOR_OS_OFFSET),
            original_size: be64(b, ORIGINAL_SIZE_OFFSET),
            current_size,
            chs: (
                u16::from_be_bytes([b[GEOMETRY_OFFSET], b[GEOMETRY_OFFSET + 1]]),
                b[GEOMETRY_OFFSET + 2],
                b[GEOMETRY_OFFSET + 3],
            ),
            disk_type,
            unique_id,
            saved_state: b[SAVED_STATE_OFFSET],
        };
        let size = f.virtual_size();
        if size == 0 || size % 512 != 0 {
            return Err(bad("current size", size, "not a positive multiple of 512"));
        }
        if size > 1 << 41 {
            return Err(bad(
                "current size",
                size,
                "more than a VHD can address (2 TiB)",
            ));
        }
        Ok(f)
    }

    /// The virtual size, as QEMU reads it: Virtual PC and old QEMU take the
    /// CHS geometry, Hyper-V ("win "), QEMU with `force_size` ("qem2"),
    /// Disk2vhd ("d2v "), XenServer ("tap\0") and XenConverter ("CTXS")
    /// the current size; and any disk at the largest geometry its current
    /// size.
    pub(crate) fn virtual_size(&self) -> u64 {
        let chs = self.chs.0 as u64 * self.chs.1 as u64 * self.chs.2 as u64;
        let by_current = matches!(
            &self.creator_app,
            b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0"
        );
        if by_current || chs == MAX_CHS_SECTORS {
            self.current_size
        } else {
            chs * 512
        }
    }

    /// The 512 bytes, with the checksum.
    pub(crate) fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(COOKIE);
        b[FEATURES_OFFSET..FEATURES_OFFSET + 4].copy_from_slice(&self.features.to_be_bytes());
        b[VERSION_OFFSET..VERSION_OFFSET + 4].copy_from_slice(&VERSION.to_be_bytes());
        b[DATA_OFFSET_OFFSET..DATA_OFFSET_OFFSET + 8]
            .copy_from_slice(&self.data_offset.to_be_bytes());
        b[TIMESTAMP_OFFSET..TIMESTAMP_OFFSET + 4].copy_from_slice(&self.timestamp.to_be_bytes());
        b[CREATOR_APP_OFFSET..CREATOR_APP_OFFSET + 4].copy_from_slice(&self.creator_app);
        b[CREATOR_VERSION_OFFSET..CREATOR_VERSION_OFFSET + 4]
            .copy_from_slice(&self.creator_version.to_be_bytes());
        b[CREATOR_OS_OFFSET..CREATOR_OS_OFFSET + 4].copy_from_slice(&self.creator_os.to_be_bytes());
        b[ORIGINAL_SIZE_OFFSET..ORIGINAL_SIZE_OFFSET + 8]
            .copy_from_slice(&self.original_size.to_be_bytes());
        b[CURRENT_SIZE_OFFSET..CURRENT_SIZE_OFFSET + 8]
            .copy_from_slice(&self.current_size.to_be_bytes());
        b[GEOMETRY_OFFSET..GEOMETRY_OFFSET + 2].copy_from_slice(&self.chs.0.to_be_bytes());
        b[GEOMETRY_OFFSET + 2] = self.chs.1;
        b[GEOMETRY_OFFSET + 3] = self.chs.2;
        b[DISK_TYPE_OFFSET..DISK_TYPE_OFFSET + 4]
            .copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[UNIQUE_ID_OFFSET..UNIQUE_ID_OFFSET + 16].copy_from_slice(&self.unique_id);
        b[SAVED_STATE_OFFSET] = self.saved_state;
        let c = checksum(&b, CHECKSUM_OFFSET);
        b[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&c.to_be_bytes());
        b
    }

    /// The creator application, as text ("win ", "qemu", …).
    pub(crate) fn creator(&self) -> String {
        String::from_utf8_lossy(&self.creator_app)
            .trim_end_matches(['\0', ' '])
            .to_string()
    }
}

/// Now, in seconds since the VHD epoch.
pub(crate) fn now_vhd() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(VHD_EPOCH);
    unix.saturating_sub(VHD_EPOCH).min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trips_and_checksums() {
        let f = Footer::new(DiskType::Dynamic, 8 << 20, 512, [7; 16]);
        let b = f.to_bytes();
        assert_eq!(Footer::parse(&b).unwrap(), f);
        let mut bad = b;
        bad[100] ^= 1;
        assert!(matches!(
            Footer::parse(&bad)
                .unwrap_err()
                .corruption()
                .unwrap()
                .reason,
            Reason::BadChecksum { .. }
        ));
    }

    #[test]
    fn chs_follows_the_specification() {
        // 10 MiB rounds down; QEMU's create rounds up to 302 × 4 × 17.
        assert_eq!(chs_of(20480), (301, 4, 17));
        assert_eq!(chs_of(20536), (302, 4, 17));
        assert_eq!(chs_of(u64::MAX), (65535, 16, 255));
    }
}
