//! The change map file of a reference point's disk: the ranges that
//! changed since the point and whose layers are gone (merged into the
//! anchor, or removed under it), rounded out to [`GRANULARITY`].
//!
//! # Format
//!
//! Little-endian: the magic `CKPTCMAP`, a `u32` version (1), a `u32`
//! granularity in bytes, the disk's `u64` virtual size, a `u64` count of
//! runs, then `count` runs of (`u64` offset, `u64` length), sorted, not
//! overlapping, aligned to the granularity (the last may end at the
//! virtual size), and a `u32` CRC-32C of everything before it. A map is
//! replaced as a whole ([`write_atomic`]): a crash leaves the old map or
//! the new one.
//!
//! # Crash consistency
//!
//! A map only grows, and it grows before the data it describes moves: a
//! merge into the anchor writes the map with the merged layer's ranges
//! first, then merges; a crash in between leaves a map that says more than
//! happened (a superset), never less.

use std::path::Path;

use crate::checkpoint::model::write_atomic;
use crate::disk::merge::{coalesce, Range};
use crate::error::{Error, Reason, Result, Structure};

/// Bytes per unit of the map.
pub const GRANULARITY: u64 = 64 << 10;

const MAGIC: &[u8; 8] = b"CKPTCMAP";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 8 + 8;
/// Most runs a map file may hold (a map of a 64 TiB disk whose every
/// other unit changed has 2^29; this bounds what a damaged count asks).
const MAX_RUNS: u64 = 1 << 30;

/// A reference point's change map of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeMap {
    /// The disk's virtual size.
    pub virtual_size: u64,
    /// Sorted, coalesced runs, aligned to [`GRANULARITY`].
    pub runs: Vec<Range>,
}

impl ChangeMap {
    /// An empty map of a disk of `virtual_size` bytes.
    pub fn empty(virtual_size: u64) -> ChangeMap {
        ChangeMap {
            virtual_size,
            runs: Vec::new(),
        }
    }

    /// A map that says every byte changed.
    pub fn full(virtual_size: u64) -> ChangeMap {
        let mut m = ChangeMap::empty(virtual_size);
        m.add(&[Range {
            offset: 0,
            length: virtual_size,
        }]);
        m
    }

    /// Add `ranges`, rounded out to the granularity and clipped to the
    /// virtual size. Returns whether the map grew.
    pub fn add(&mut self, ranges: &[Range]) -> bool {
        let before = self.runs.clone();
        let mut all = std::mem::take(&mut self.runs);
        for r in ranges {
            if r.length == 0 || r.offset >= self.virtual_size {
                continue;
            }
            let start = r.offset / GRANULARITY * GRANULARITY;
            let end = r
                .offset
                .saturating_add(r.length)
                .min(self.virtual_size)
                .div_ceil(GRANULARITY)
                .saturating_mul(GRANULARITY)
                .min(self.virtual_size);
            all.push(Range {
                offset: start,
                length: end - start,
            });
        }
        self.runs = coalesce(all);
        self.runs != before
    }

    /// The bytes the map covers.
    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.length).sum()
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + self.runs.len() * 16 + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(GRANULARITY as u32).to_le_bytes());
        b.extend_from_slice(&self.virtual_size.to_le_bytes());
        b.extend_from_slice(&(self.runs.len() as u64).to_le_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.offset.to_le_bytes());
            b.extend_from_slice(&r.length.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse a map file's bytes; `what` names it in errors.
    pub fn decode(b: &[u8], what: &Path) -> Result<ChangeMap> {
        let bad = |why: String| {
            Error::corrupt(
                Structure::VmFile,
                None,
                Reason::Invalid(format!("change map {}: {why}", what.display())),
            )
        };
        if b.len() < HEADER + 4 || &b[..8] != MAGIC {
            return Err(bad("not a change map (no CKPTCMAP magic)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let body = b.len() - 4;
        if crc32c::crc32c(&b[..body]) != u32_at(body) {
            return Err(bad("its checksum does not match (damaged)".into()));
        }
        if u32_at(8) != VERSION {
            return Err(bad(format!("version {} is not known", u32_at(8))));
        }
        if u64::from(u32_at(12)) != GRANULARITY {
            return Err(bad(format!("granularity {} is not known", u32_at(12))));
        }
        let virtual_size = u64_at(16);
        let count = u64_at(24);
        if count > MAX_RUNS || (body - HEADER) as u64 != count * 16 {
            return Err(bad(format!(
                "it says {count} runs but holds {} bytes of them",
                body - HEADER
            )));
        }
        let mut runs = Vec::with_capacity(count as usize);
        let mut last_end = 0u64;
        for i in 0..count as usize {
            let o = HEADER + i * 16;
            let (offset, length) = (u64_at(o), u64_at(o + 8));
            let end = offset.checked_add(length);
            if length == 0
                || offset < last_end
                || end.is_none_or(|e| e > virtual_size)
                || (i > 0 && offset == last_end)
            {
                return Err(bad(format!(
                    "run {i} ({offset}, {length}) is out of order or past the disk's end"
                )));
            }
            last_end = offset + length;
            runs.push(Range { offset, length });
        }
        Ok(ChangeMap { virtual_size, runs })
    }

    /// Read the map file at `path`.
    pub fn read(path: &Path) -> Result<ChangeMap> {
        let b = std::fs::read(path).map_err(|e| Error::from(e).in_file(path))?;
        ChangeMap::decode(&b, path)
    }

    /// Replace the map file at `path` with this map (atomically, synced).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(offset: u64, length: u64) -> Range {
        Range { offset, length }
    }

    #[test]
    fn ranges_round_out_and_coalesce() {
        let mut m = ChangeMap::empty(1 << 20);
        assert!(m.add(&[r(100, 10), r(GRANULARITY + 5, 1)]));
        assert_eq!(m.runs, vec![r(0, 2 * GRANULARITY)]);
        assert!(!m.add(&[r(10, 10)]));
        // Clipped to the virtual size (not a whole unit).
        let mut m = ChangeMap::empty(GRANULARITY + 512);
        m.add(&[r(GRANULARITY, 1 << 30)]);
        assert_eq!(m.runs, vec![r(GRANULARITY, 512)]);
    }

    #[test]
    fn round_trip_and_damage() {
        let mut m = ChangeMap::empty(64 << 20);
        m.add(&[r(0, 1), r(10 << 20, 3 << 20)]);
        let b = m.encode();
        let p = Path::new("x.map");
        assert_eq!(ChangeMap::decode(&b, p).unwrap(), m);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(ChangeMap::decode(&d, p).is_err(), "byte {i}");
        }
        assert!(ChangeMap::decode(&b[..b.len() - 1], p).is_err());
        assert!(ChangeMap::decode(&[], p).is_err());
    }
}
