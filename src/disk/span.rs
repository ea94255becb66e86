//! The one walk of a byte range block by block: [`spans`] cuts
//! `[offset, offset + len)` at every block boundary.
//!
//! Pure arithmetic: no I/O, no format, no policy.

/// The part of a byte range that lies in one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// The block's index.
    pub(crate) block: u64,
    /// Where the span starts, in bytes from the start of the range's space
    /// (the virtual disk).
    pub(crate) pos: u64,
    /// Where the span starts inside its block.
    pub(crate) within: u64,
    /// Its length in bytes (at least 1).
    pub(crate) len: u64,
}

impl Span {
    /// Whether the span covers its whole block, the last block of a disk of
    /// `size` bytes counting as whole up to the disk's end.
    pub(crate) fn is_whole(&self, block_size: u64, size: u64) -> bool {
        let block_end = self.pos - self.within + block_size;
        self.within == 0 && self.pos + self.len >= block_end.min(size)
    }
}

/// An iterator over the [`Span`]s of a range, in order.
#[derive(Debug, Clone)]
pub(crate) struct Spans {
    pos: u64,
    left: u64,
    block_size: u64,
}

/// The spans of `[offset, offset + len)` in blocks of `block_size` bytes
/// (non-zero). A range reaching past `u64::MAX` stops there.
pub(crate) fn spans(offset: u64, len: u64, block_size: u64) -> Spans {
    debug_assert!(block_size > 0);
    Spans {
        pos: offset,
        left: len.min(u64::MAX - offset),
        block_size: block_size.max(1),
    }
}

impl Iterator for Spans {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        if self.left == 0 {
            return None;
        }
        let within = self.pos % self.block_size;
        let len = (self.block_size - within).min(self.left);
        let span = Span {
            block: self.pos / self.block_size,
            pos: self.pos,
            within,
            len,
        };
        self.pos += len;
        self.left -= len;
        Some(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(offset: u64, len: u64, bs: u64) -> Vec<(u64, u64, u64)> {
        spans(offset, len, bs)
            .map(|s| (s.block, s.within, s.len))
            .collect()
    }

    #[test]
    fn zero_length_gives_nothing() {
        assert!(all(0, 0, 512).is_empty());
        assert!(all(1000, 0, 512).is_empty());
    }

    #[test]
    fn cut_at_block_boundaries() {
        assert_eq!(all(0, 1024, 512), vec![(0, 0, 512), (1, 0, 512)]);
        assert_eq!(all(500, 30, 512), vec![(0, 500, 12), (1, 0, 18)]);
        assert_eq!(all(512, 512, 512), vec![(1, 0, 512)]);
        assert_eq!(
            all(100, 1500, 512),
            vec![(0, 100, 412), (1, 0, 512), (2, 0, 512), (3, 0, 64)]
        );
        let s: Vec<Span> = spans(100, 1500, 512).collect();
        assert_eq!(s[1].pos, 512);
        assert_eq!(s.iter().map(|s| s.len).sum::<u64>(), 1500);
    }

    #[test]
    fn whole_blocks_and_the_last_partial_block() {
        let s: Vec<Span> = spans(0, 1300, 512).collect();
        // A disk of 1300 bytes: the third block is whole up to the end.
        assert!(s[0].is_whole(512, 1300) && s[1].is_whole(512, 1300));
        assert!(s[2].is_whole(512, 1300));
        assert!(!s[2].is_whole(512, 2048));
        let part: Vec<Span> = spans(10, 502, 512).collect();
        assert!(!part[0].is_whole(512, 4096));
    }

    #[test]
    fn near_u64_max_no_overflow() {
        let bs = 1 << 20;
        let s: Vec<Span> = spans(u64::MAX - 10, 100, bs).collect();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].len, 10);
        assert_eq!(s[0].block, (u64::MAX - 10) / bs);
        let s: Vec<Span> = spans(u64::MAX - bs - 5, bs + 5, bs).collect();
        assert_eq!(s.iter().map(|s| s.len).sum::<u64>(), bs + 5);
        assert!(spans(u64::MAX, 7, bs).next().is_none());
    }
}
