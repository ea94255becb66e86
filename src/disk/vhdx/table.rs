//! The BAT in memory: [`BatTable`], pages of entries where a page of only
//! zeros (nothing allocated there, most of a new or sparse disk) takes no
//! memory. A 64 TiB dynamic disk with 32 MiB blocks has a 16 MiB BAT, and
//! with 1 MiB blocks a 512 MiB one; held whole, opening it would cost that
//! much memory before the first read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Entries per page: one 4 KiB BAT sector, the unit the log writes.
pub(super) const PAGE: usize = 512;

type Page = Box<[AtomicU64; PAGE]>;

fn new_page() -> Page {
    Box::new(std::array::from_fn(|_| AtomicU64::new(0)))
}

/// The BAT entries of a file (see the module doc). Entries are read
/// without a lock (a read or write looks one up per block); they are
/// changed only under the file's state lock, so that a flush that holds it
/// sees them stable.
#[derive(Debug, Default)]
pub(crate) struct BatTable {
    len: usize,
    pages: Box<[OnceLock<Page>]>,
}

impl Clone for BatTable {
    fn clone(&self) -> BatTable {
        let t = BatTable::zeroed(self.len);
        for (i, e) in self.nonzero() {
            t.set(i, e);
        }
        t
    }
}

impl BatTable {
    /// `len` entries, all zero.
    pub(super) fn zeroed(len: usize) -> BatTable {
        BatTable {
            len,
            pages: (0..len.div_ceil(PAGE)).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The table whose bytes (little-endian entries) `read(first, buf)`
    /// reads, `buf.len() / 8` entries from entry `first` on, a few pages
    /// at a time; only pages holding something are kept. `next(first)` is
    /// the first entry at or after `first` that may not be zero (`None`:
    /// only zeros follow), so that the holes of a sparse file are skipped.
    pub(super) fn read<E>(
        len: usize,
        mut read: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
        mut next: impl FnMut(usize) -> Result<Option<usize>, E>,
    ) -> Result<BatTable, E> {
        const BATCH: usize = 256;
        let t = BatTable::zeroed(len);
        let mut buf = vec![0u8; BATCH * PAGE * 8];
        let mut first = 0;
        while first < len {
            match next(first)? {
                None => break,
                // Whole pages (`first` is the start of one).
                Some(i) => first = first.max(i / PAGE * PAGE),
            }
            if first >= len {
                break;
            }
            let n = (len - first).min(BATCH * PAGE);
            let bytes = &mut buf[..n * 8];
            read(first, bytes)?;
            for (k, chunk) in bytes.chunks(PAGE * 8).enumerate() {
                if chunk.iter().all(|&b| b == 0) {
                    continue;
                }
                let page = new_page();
                for (e, c) in page.iter().zip(chunk.chunks_exact(8)) {
                    e.store(
                        u64::from_le_bytes(c.try_into().expect("8 bytes")),
                        Ordering::Relaxed,
                    );
                }
                let _ = t.pages[first / PAGE + k].set(page);
            }
            first += n;
        }
        Ok(t)
    }

    /// Entry `i`, if there is one.
    pub(crate) fn get(&self, i: usize) -> Option<u64> {
        (i < self.len).then(|| self.at(i))
    }

    /// Entry `i` (which must exist).
    pub(crate) fn at(&self, i: usize) -> u64 {
        assert!(i < self.len, "BAT entry {i} of {}", self.len);
        match self.pages[i / PAGE].get() {
            Some(p) => p[i % PAGE].load(Ordering::Acquire),
            None => 0,
        }
    }

    /// Set entry `i` (which must exist). The caller holds the file's state
    /// lock.
    pub(super) fn set(&self, i: usize, v: u64) {
        assert!(i < self.len, "BAT entry {i} of {}", self.len);
        let slot = &self.pages[i / PAGE];
        let page = match slot.get() {
            Some(p) => p,
            None if v == 0 => return,
            None => slot.get_or_init(new_page),
        };
        page[i % PAGE].store(v, Ordering::Release);
    }

    /// Every entry that is not zero, with its index, in order.
    pub(crate) fn nonzero(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.pages
            .iter()
            .enumerate()
            .filter_map(|(k, p)| p.get().map(|p| (k, p)))
            .flat_map(move |(k, p)| {
                p.iter()
                    .enumerate()
                    .map(move |(j, e)| (k * PAGE + j, e.load(Ordering::Acquire)))
                    .filter(move |&(i, e)| e != 0 && i < self.len)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_zeros_take_no_memory_and_read_as_zeros() {
        let len = 3 * PAGE + 7;
        let mut raw = vec![0u8; len * 8];
        for (i, v) in [(5usize, 0x1234u64), (2 * PAGE + 1, 7), (len - 1, 9)] {
            raw[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let t = BatTable::read(
            len,
            |first, buf: &mut [u8]| {
                buf.copy_from_slice(&raw[first * 8..first * 8 + buf.len()]);
                Ok::<_, ()>(())
            },
            // A hole over the first two pages.
            |first| Ok(Some(first.max(2 * PAGE))),
        )
        .unwrap();
        // Entry 5 lay in the hole the storage reported: not read.
        assert_eq!(t.pages.iter().filter(|p| p.get().is_some()).count(), 2);
        assert_eq!(t.at(5), 0);
        assert_eq!(t.at(PAGE + 3), 0);
        assert_eq!(t.get(len), None);
        assert_eq!(
            t.nonzero().collect::<Vec<_>>(),
            [(2 * PAGE + 1, 7), (len - 1, 9)]
        );
        t.set(PAGE + 3, 1);
        t.set(PAGE * 3, 0);
        assert_eq!(t.at(PAGE + 3), 1);
        assert_eq!(t.pages.iter().filter(|p| p.get().is_some()).count(), 3);
        assert_eq!(t.len, len);
    }
}
