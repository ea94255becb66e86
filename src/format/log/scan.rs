//! The active-sequence search of [MS-VHDX] §2.3.3, in linear time.

use uuid::Uuid;

use super::entry::{body_is_valid, parse_entry_header};
use super::*;

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
        return Err(bad_field(
            Structure::Log,
            "length",
            log_len,
            "not a non-zero multiple of 4 KiB up to 4 GiB",
        ));
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
        return Err(Error::corrupt(
            Structure::Log,
            None,
            Reason::Invalid("the log is dirty but holds no valid entry sequence".into()),
        ));
    };
    let mut seq = Vec::new();
    loop {
        let pos = entries[i as usize].position;
        read_wrapped(read, log_len, pos, &mut head)?;
        let e = parse_entry_header(&head, log_len, guid, pos).ok_or_else(|| {
            Error::corrupt(
                Structure::LogEntry,
                None,
                Reason::Invalid(format!(
                    "the entry at log position {pos:#x} changed while it was read"
                )),
            )
        })?;
        seq.push(e);
        if i == h {
            break;
        }
        i = succ[i as usize];
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::super::entry::check_descriptor;
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
}
