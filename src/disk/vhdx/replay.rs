//! Log replay at open ([MS-VHDX] §2.3.3): find the active sequence, judge
//! every update it carries, then either apply it to the file (a read-write
//! open) or present the file as if it had been applied (a read-only open,
//! through [`Replayed`], a read-only [`Storage`] over the file).
//!
//! Memory stays bounded whatever the log says: entries are read in bounded
//! chunks and kept as summaries; a read-only replay refers to data sectors
//! by their place in the log instead of copying them. Zero updates are
//! applied sparsely (hole punch inside the file, plain extension past its
//! end), and the log may grow the file only as far as its own data writes
//! justify, plus [`MAX_LOG_GROWTH`].
//!
//! Depends on `format` (log parsing) and `io` only.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use crate::error::{Error, Reason, Result, Structure};
use crate::format::log::{self as vlog, Entry, Update};
use crate::format::{align_up, MIB, REGION1_OFFSET};
use crate::io::Storage;

/// How far past what the log's data writes (or the real file) reach the
/// log's LastFileOffset may take the file.
pub(crate) const MAX_LOG_GROWTH: u64 = 1 << 30;
/// Most distinct updated ranges a read-only replay holds in memory (each a
/// few dozen bytes): beyond, the file must be opened read-write to replay.
const MAX_OVERLAY_RANGES: usize = 1 << 18;
const SECTOR: u64 = vlog::SECTOR as u64;

/// The active sequence of a dirty log, judged against the file.
#[derive(Debug)]
pub(crate) struct Plan {
    entries: Vec<Entry>,
    log_offset: u64,
    log_length: u64,
    /// Bytes that really hold something after replay: the real length, or
    /// the end of the log's data writes if further. Structures the open
    /// reads into memory must lie below it.
    pub(crate) backed_len: u64,
    /// The length of the file after replay (at least LastFileOffset).
    pub(crate) replayed_len: u64,
}

fn reader(storage: &dyn Storage, log_offset: u64) -> impl Fn(u64, &mut [u8]) -> Result<()> + '_ {
    move |pos: u64, buf: &mut [u8]| -> Result<()> {
        storage.read_at(buf, log_offset + pos)?;
        Ok(())
    }
}

/// Find and judge the active sequence of the log at `log_offset` (the
/// caller has checked that the log lies inside the file).
pub(crate) fn plan(
    storage: &dyn Storage,
    log_offset: u64,
    log_length: u64,
    log_guid: &uuid::Uuid,
) -> Result<Plan> {
    let real_len = storage.len()?;
    let read = reader(storage, log_offset);
    let data = |pos: u64| -> Result<Option<(u64, u64)>> {
        Ok(storage
            .data_after(log_offset + pos)?
            .map(|(s, e)| (s.saturating_sub(log_offset), e.saturating_sub(log_offset))))
    };
    let entries = vlog::find_active_sequence(&read, &data, log_length, log_guid)?;
    let head = entries
        .last()
        .ok_or_else(|| {
            Error::corrupt(
                Structure::Log,
                None,
                Reason::Missing("the active sequence's head entry"),
            )
        })?
        .clone();
    if real_len < head.flushed_file_offset {
        return Err(Error::corrupt(
            Structure::Layout,
            None,
            Reason::Truncated {
                needed: head.flushed_file_offset,
                found: real_len,
            },
        ));
    }
    // Where the data writes end (zero updates justify no growth).
    let mut data_end = 0u64;
    for e in &entries {
        vlog::for_each_update(&read, log_length, e, |u| {
            if matches!(u, Update::Data { .. }) {
                data_end = data_end.max(u.range().1);
            }
            Ok(())
        })?;
    }
    let backed_len = real_len.max(data_end);
    let allowed = align_up(backed_len, MIB)
        .and_then(|v| v.checked_add(MAX_LOG_GROWTH))
        .unwrap_or(u64::MAX);
    if head.last_file_offset > allowed {
        return Err(Error::corrupt(
            Structure::LogEntry,
            None,
            Reason::Invalid(format!(
            "the log's LastFileOffset {:#x} would grow the file far past its {real_len:#x} bytes \
             (the log writes data only up to {data_end:#x})",
            head.last_file_offset
        )),
        ));
    }
    let replayed_len = head.last_file_offset.max(real_len);
    let log_end = log_offset + log_length;
    for e in &entries {
        vlog::for_each_update(&read, log_length, e, |u| {
            let (start, end) = u.range();
            if start < REGION1_OFFSET || end > replayed_len || (start < log_end && log_offset < end)
            {
                return Err(Error::corrupt(
                    Structure::LogEntry,
                    None,
                    Reason::Invalid(format!(
                        "log entry {} writes {start:#x}..{end:#x}, outside the file's structures",
                        e.sequence
                    )),
                ));
            }
            Ok(())
        })?;
    }
    Ok(Plan {
        entries,
        log_offset,
        log_length,
        backed_len,
        replayed_len,
    })
}

/// Apply the plan to the file (read-write open): data sectors written,
/// zero ranges punched or extended sparsely, the file grown to
/// LastFileOffset, everything synced. The headers are the caller's.
pub(crate) fn apply(storage: &dyn Storage, plan: &Plan) -> Result<()> {
    let read = reader(storage, plan.log_offset);
    let mut sector = vec![0u8; SECTOR as usize];
    for e in &plan.entries {
        vlog::for_each_update(&read, plan.log_length, e, |u| {
            match u {
                Update::Data {
                    file_offset,
                    log_position,
                    leading,
                    trailing,
                } => {
                    vlog::read_data_sector(
                        &read,
                        plan.log_length,
                        log_position,
                        &leading,
                        &trailing,
                        &mut sector,
                    )?;
                    storage.write_at(&sector, file_offset)?;
                }
                Update::Zero {
                    file_offset,
                    length,
                } => zero_sparse(storage, file_offset, length)?,
            }
            Ok(())
        })?;
    }
    if storage.len()? < plan.replayed_len {
        storage.set_len(plan.replayed_len)?;
    }
    storage.sync()?;
    Ok(())
}

/// Make `[offset, offset+len)` read as zeros without writing zeros: the
/// part inside the storage is discarded (a hole), the part past its end is
/// a plain extension.
fn zero_sparse(storage: &dyn Storage, offset: u64, len: u64) -> Result<()> {
    let end = offset.saturating_add(len);
    let cur = storage.len()?;
    let inside_end = end.min(cur);
    if offset < inside_end {
        storage.discard(offset, inside_end - offset)?;
    }
    if end > cur {
        storage.set_len(end)?;
    }
    Ok(())
}

/// What a replayed range reads as.
#[derive(Debug, Clone, Copy)]
enum Patch {
    Zero,
    /// One 4 KiB sector, kept in the log at this log-relative position.
    Log {
        log_position: u64,
        leading: [u8; 8],
        trailing: [u8; 4],
    },
}

/// A read-only view of a file with a dirty log as if the log had been
/// replayed: every read is the file's bytes patched by the active
/// sequence; the length is the replayed length; every change is refused.
#[derive(Debug)]
pub(crate) struct Replayed {
    inner: Arc<dyn Storage>,
    log_offset: u64,
    len: u64,
    /// Non-overlapping ranges, by start: (end, patch). Later updates win.
    map: BTreeMap<u64, (u64, Patch)>,
}

impl Replayed {
    /// The view of `inner` after `plan`.
    pub(crate) fn new(inner: Arc<dyn Storage>, plan: &Plan) -> Result<Replayed> {
        let mut map: BTreeMap<u64, (u64, Patch)> = BTreeMap::new();
        {
            let read = reader(inner.as_ref(), plan.log_offset);
            for e in &plan.entries {
                vlog::for_each_update(&read, plan.log_length, e, |u| {
                    let (start, end) = u.range();
                    let patch = match u {
                        Update::Data {
                            log_position,
                            leading,
                            trailing,
                            ..
                        } => Patch::Log {
                            log_position,
                            leading,
                            trailing,
                        },
                        Update::Zero { .. } => Patch::Zero,
                    };
                    if start < end {
                        insert(&mut map, start, end, patch);
                    }
                    if map.len() > MAX_OVERLAY_RANGES {
                        return Err(Error::Unsupported(format!(
                            "the log's active sequence updates more than {MAX_OVERLAY_RANGES} \
                             ranges: too many to replay in memory for a read-only open (a \
                             read-write open replays it into the file)"
                        )));
                    }
                    Ok(())
                })?;
            }
        }
        Ok(Replayed {
            inner,
            log_offset: plan.log_offset,
            len: plan.replayed_len,
            map,
        })
    }
}

/// Put `[start, end)` → `patch` into `map`, cutting what it overlaps.
fn insert(map: &mut BTreeMap<u64, (u64, Patch)>, start: u64, end: u64, patch: Patch) {
    let hit: Vec<(u64, u64, Patch)> = map
        .range(..end)
        .rev()
        .take_while(|(_, (e, _))| *e > start)
        .map(|(&s, &(e, p))| (s, e, p))
        .collect();
    for (s, e, p) in hit {
        map.remove(&s);
        // Data patches are whole aligned sectors and every range is
        // sector-aligned, so only zero ranges are ever cut.
        if s < start {
            map.insert(s, (start, p));
        }
        if e > end {
            map.insert(end, (e, p));
        }
    }
    map.insert(start, (end, patch));
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "storage is read-only (a dirty log replayed in memory)",
    )
}

impl Storage for Replayed {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)?;
        let end = offset.saturating_add(buf.len() as u64);
        let from = match self.map.range(..=offset).next_back() {
            Some((&s, &(e, _))) if e > offset => s,
            _ => offset,
        };
        let mut sector = [0u8; SECTOR as usize];
        for (&s, &(e, p)) in self.map.range(from..end) {
            let (lo, hi) = (s.max(offset), e.min(end));
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match p {
                Patch::Zero => dst.fill(0),
                Patch::Log {
                    log_position,
                    leading,
                    trailing,
                } => {
                    self.inner
                        .read_at(&mut sector, self.log_offset + log_position)?;
                    vlog::restore_sector(&mut sector, &leading, &trailing);
                    dst.copy_from_slice(&sector[(lo - s) as usize..(hi - s) as usize]);
                }
            }
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn allocate(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn is_writable(&self) -> bool {
        false
    }
    // No raw_fd: a kernel copy would bypass the replayed bytes.
    fn data_after(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        Ok((offset < self.len).then_some((offset, self.len)))
    }
}
