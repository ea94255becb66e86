//! A disk state as an "rbd diff v1" stream ([`write_disk_diff`]), and a
//! stream applied to a disk ([`apply_diff`]).
//!
//! The stream carries only the ranges it is given (a state's allocated
//! extents, or the changes between two states): inside them, what reads
//! zeros goes as `z` records and the rest as `w` records of at most
//! [`MAX_RECORD`] bytes. The ranges come from the caller, who knows how
//! the two states relate (see `crate::checkpoint::rbd`).

use std::io::{Read, Write};

use super::diff::{DiffReader, DiffRecord, DiffStats, DiffWriter};
use crate::disk::merge::{coalesce, Range};
use crate::disk::Disk;
use crate::error::{Error, Result};

/// The largest `w` record written (bytes): one default RBD object.
pub const MAX_RECORD: usize = 4 << 20;
/// Granularity of the zero detection (bytes, absolute offsets).
const ZERO_UNIT: u64 = 4096;
/// Bytes read from the disk per step.
const READ_STEP: u64 = 1 << 20;

/// The metadata records of a stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffNames<'a> {
    /// The `f` record: the snapshot the image must already have.
    pub from_snap: Option<&'a str>,
    /// The `t` record: the snapshot `rbd import-diff` creates at the end.
    pub to_snap: Option<&'a str>,
}

/// The allocated ranges of `disk` (through its chain): what a stream of
/// the whole state must carry.
pub fn allocated_ranges(disk: &Disk) -> Result<Vec<Range>> {
    Ok(disk
        .extents()?
        .into_iter()
        .filter(|e| e.allocated)
        .map(|e| Range {
            offset: e.offset,
            length: e.length,
        })
        .collect())
}

/// Write `disk`'s content in `ranges` (clipped to its size, sorted and
/// coalesced here) as a v1 diff stream into `out`: the header, the `f` /
/// `t` records of `names`, an `s` record with the disk's size, the data
/// (`z` where it reads zeros), and `e`. Returns what was written.
/// `progress(done, total)` sees the bytes of the ranges; returning false
/// cancels (`Error::Cancelled`-like `Io` error of kind `Interrupted`).
pub fn write_disk_diff<W: Write>(
    disk: &Disk,
    ranges: &[Range],
    names: DiffNames<'_>,
    out: W,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<DiffStats> {
    let size = disk.virtual_size();
    let ranges = clip(ranges, size);
    let mut w = DiffWriter::new(out)?;
    write_records(&mut w, disk, &ranges, names, progress)
}

/// The records of [`write_disk_diff`] (after the header) into `w`, which
/// may be a v2 writer; `ranges` are already clipped and coalesced.
pub(crate) fn write_records<W: Write>(
    w: &mut DiffWriter<W>,
    disk: &Disk,
    ranges: &[Range],
    names: DiffNames<'_>,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<DiffStats> {
    let size = disk.virtual_size();
    let total: u64 = ranges.iter().map(|r| r.length).sum();
    if let Some(f) = names.from_snap {
        w.from_snap(f)?;
    }
    if let Some(t) = names.to_snap {
        w.to_snap(t)?;
    }
    w.size(size)?;
    let mut done = 0u64;
    let mut buf = vec![0u8; READ_STEP as usize];
    // The run being built: data (pending bytes) or zeros (start, length).
    let mut data: Vec<u8> = Vec::new();
    let mut data_at = 0u64;
    let mut zero: Option<(u64, u64)> = None;
    for r in ranges {
        let end = r.offset + r.length;
        let mut pos = r.offset;
        while pos < end {
            let n = READ_STEP.min(end - pos) as usize;
            disk.read_at(&mut buf[..n], pos)?;
            let mut i = 0usize;
            while i < n {
                let at = pos + i as u64;
                let unit = ((ZERO_UNIT - at % ZERO_UNIT) as usize).min(n - i);
                let piece = &buf[i..i + unit];
                if piece.iter().all(|&b| b == 0) {
                    if !data.is_empty() {
                        w.write(data_at, &data)?;
                        data.clear();
                    }
                    zero = match zero {
                        Some((s, l)) if s + l == at => Some((s, l + unit as u64)),
                        Some((s, l)) => {
                            w.zero(s, l)?;
                            Some((at, unit as u64))
                        }
                        None => Some((at, unit as u64)),
                    };
                } else {
                    if let Some((s, l)) = zero.take() {
                        w.zero(s, l)?;
                    }
                    if !data.is_empty()
                        && (data_at + data.len() as u64 != at || data.len() >= MAX_RECORD)
                    {
                        w.write(data_at, &data)?;
                        data.clear();
                    }
                    if data.is_empty() {
                        data_at = at;
                    }
                    data.extend_from_slice(piece);
                }
                i += unit;
            }
            pos += n as u64;
            done += n as u64;
            if !progress(done, total) {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "the rbd stream was cancelled",
                )));
            }
        }
    }
    if !data.is_empty() {
        w.write(data_at, &data)?;
    }
    if let Some((s, l)) = zero {
        w.zero(s, l)?;
    }
    w.end()
}

/// `ranges` clipped to `size`, sorted and coalesced.
pub(crate) fn clip(ranges: &[Range], size: u64) -> Vec<Range> {
    coalesce(
        ranges
            .iter()
            .filter(|r| r.offset < size)
            .map(|r| Range {
                offset: r.offset,
                length: r.length.min(size - r.offset),
            })
            .filter(|r| r.length > 0)
            .collect(),
    )
}

/// What a stream held, as [`apply_diff`] read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedDiff {
    /// The `f` record, if any.
    pub from_snap: Option<String>,
    /// The `t` record, if any.
    pub to_snap: Option<String>,
    /// The `s` record, if any.
    pub size: Option<u64>,
    /// Data bytes written.
    pub data_bytes: u64,
    /// Bytes zeroed.
    pub zero_bytes: u64,
}

/// Read a v1 diff stream from `input` and apply it to `disk`: `w` records
/// are written, `z` records trimmed (read back as zeros). The disk must
/// already have the stream's size (`s`): a different size is refused
/// (resize it first). Records past the disk's end are refused. Does not
/// flush.
pub fn apply_diff<R: Read>(disk: &Disk, input: R) -> Result<AppliedDiff> {
    apply(disk, input, false)
}

/// [`apply_diff`] onto a disk that may already read much of the stream
/// (a differencing disk over the state a clone was made from, given the
/// clone's whole content): each record is compared with what `disk` reads
/// and only the 4 KiB units that differ are written (or zeroed), so the
/// top layer takes only the differences. `data_bytes` / `zero_bytes`
/// count what the stream held, not what was written.
pub fn apply_diff_over<R: Read>(disk: &Disk, input: R) -> Result<AppliedDiff> {
    apply(disk, input, true)
}

/// The 4 KiB units of `data` (at `offset` of `disk`) that differ from what
/// `disk` reads, as (offset, range in `data`) runs.
fn differing(disk: &Disk, offset: u64, data: &[u8]) -> Result<Vec<(u64, std::ops::Range<usize>)>> {
    const UNIT: u64 = 4096;
    let mut have = vec![0u8; data.len()];
    disk.read_at(&mut have, offset)?;
    let mut runs: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
    let mut i = 0usize;
    while i < data.len() {
        // Unit boundaries are aligned to the disk, not to the record.
        let at = offset + i as u64;
        let n = ((UNIT - at % UNIT) as usize).min(data.len() - i);
        if data[i..i + n] != have[i..i + n] {
            match runs.last_mut() {
                Some((_, r)) if r.end == i => r.end = i + n,
                _ => runs.push((at, i..i + n)),
            }
        }
        i += n;
    }
    Ok(runs)
}

fn apply<R: Read>(disk: &Disk, input: R, only_changes: bool) -> Result<AppliedDiff> {
    let mut r = DiffReader::new(input)?;
    let mut out = AppliedDiff::default();
    let size = disk.virtual_size();
    loop {
        match r.next_record()? {
            DiffRecord::FromSnap(s) => out.from_snap = Some(s),
            DiffRecord::ToSnap(s) => out.to_snap = Some(s),
            DiffRecord::Size(s) => {
                if s != size {
                    return Err(Error::InvalidArgument(format!(
                        "the rbd diff stream is for an image of {s} bytes; the disk has {size}"
                    )));
                }
                out.size = Some(s);
            }
            DiffRecord::Write { offset, data } => {
                check_inside(offset, data.len() as u64, size)?;
                if only_changes {
                    for (at, range) in differing(disk, offset, &data)? {
                        disk.write_at(&data[range], at)?;
                    }
                } else {
                    disk.write_at(&data, offset)?;
                }
                out.data_bytes += data.len() as u64;
            }
            DiffRecord::Zero { offset, length } => {
                check_inside(offset, length, size)?;
                if only_changes {
                    let zeros = vec![0u8; READ_STEP.min(length) as usize];
                    let mut pos = offset;
                    while pos < offset + length {
                        let n = READ_STEP.min(offset + length - pos);
                        for (at, range) in differing(disk, pos, &zeros[..n as usize])? {
                            zero_range(disk, at, range.len() as u64)?;
                        }
                        pos += n;
                    }
                } else {
                    zero_range(disk, offset, length)?;
                }
                out.zero_bytes += length;
            }
            DiffRecord::End => return Ok(out),
        }
    }
}

fn check_inside(offset: u64, length: u64, size: u64) -> Result<()> {
    if offset.checked_add(length).is_none_or(|e| e > size) {
        return Err(Error::InvalidArgument(format!(
            "the rbd diff stream writes [{offset}, +{length}) past the disk's end ({size} bytes)"
        )));
    }
    Ok(())
}

/// Make `[offset, offset + length)` read zeros: the sector-aligned middle
/// trimmed (a differencing disk then reads zeros there, not its parent),
/// the unaligned edges written as zeros.
fn zero_range(disk: &Disk, offset: u64, length: u64) -> Result<()> {
    let sector = disk.info().logical_sector_size as u64;
    let end = offset + length;
    let a = offset.div_ceil(sector) * sector;
    let b = end / sector * sector;
    let zeros = |from: u64, to: u64| -> Result<()> {
        let mut pos = from;
        let buf = vec![0u8; READ_STEP as usize];
        while pos < to {
            let n = READ_STEP.min(to - pos) as usize;
            disk.write_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    };
    if a >= b {
        return zeros(offset, end);
    }
    zeros(offset, a)?;
    disk.trim(a, b - a)?;
    zeros(b, end)
}
