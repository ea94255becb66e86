//! Bounds-checked little-endian reads for the parsers: a short buffer gives
//! a typed error naming the structure, never a panic.

use uuid::Uuid;

use crate::error::{Error, Reason, Result, Structure};

/// A view of one structure's bytes whose reads are bounds-checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    structure: Structure,
}

impl<'a> Reader<'a> {
    /// Read `b`, the bytes of `structure`.
    pub(crate) fn new(b: &'a [u8], structure: Structure) -> Self {
        Reader { b, structure }
    }

    /// The `len` bytes at `off`, or an error when they lie past the end.
    pub(crate) fn bytes(&self, off: usize, len: usize) -> Result<&'a [u8]> {
        off.checked_add(len)
            .and_then(|end| self.b.get(off..end))
            .ok_or_else(|| {
                Error::corrupt(
                    self.structure,
                    None,
                    Reason::Truncated {
                        needed: off.saturating_add(len) as u64,
                        found: self.b.len() as u64,
                    },
                )
            })
    }

    fn array<const N: usize>(&self, off: usize) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(off, N)?);
        Ok(a)
    }

    /// The little-endian u16 at `off`.
    pub(crate) fn u16(&self, off: usize) -> Result<u16> {
        self.array(off).map(u16::from_le_bytes)
    }

    /// The little-endian u32 at `off`.
    pub(crate) fn u32(&self, off: usize) -> Result<u32> {
        self.array(off).map(u32::from_le_bytes)
    }

    /// The little-endian u64 at `off`.
    pub(crate) fn u64(&self, off: usize) -> Result<u64> {
        self.array(off).map(u64::from_le_bytes)
    }

    /// The GUID stored in Microsoft mixed-endian form at `off`.
    pub(crate) fn guid(&self, off: usize) -> Result<Uuid> {
        self.array(off).map(Uuid::from_bytes_le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Corruption;

    #[test]
    fn reads_little_endian_at_the_offset() {
        let b: Vec<u8> = (1..=24).collect();
        let r = Reader::new(&b, Structure::Bat);
        assert_eq!(r.u16(1).unwrap(), 0x0302);
        assert_eq!(r.u32(4).unwrap(), 0x0807_0605);
        assert_eq!(r.u64(16).unwrap(), 0x1817_1615_1413_1211);
        assert_eq!(r.guid(8).unwrap().to_bytes_le()[..], b[8..24]);
        assert_eq!(r.bytes(24, 0).unwrap(), &[] as &[u8]);
    }

    #[test]
    fn a_read_past_the_end_is_an_error_naming_the_structure() {
        let b = [0u8; 10];
        let r = Reader::new(&b, Structure::LogEntry);
        for e in [
            r.u16(9).unwrap_err(),
            r.u32(7).unwrap_err(),
            r.u64(3).unwrap_err(),
            r.guid(0).unwrap_err(),
            r.bytes(usize::MAX, 2).unwrap_err(),
            r.bytes(11, 0).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    Error::Corrupt(Corruption {
                        structure: Structure::LogEntry,
                        reason: Reason::Truncated { found: 10, .. },
                        ..
                    })
                ),
                "{e:?}"
            );
        }
    }
}
