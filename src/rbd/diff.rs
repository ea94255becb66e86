//! The "rbd diff v1" stream: what `rbd export-diff` writes and
//! `rbd import-diff` reads (Ceph's `doc/dev/rbd-diff.rst`).
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "rbd diff v1\n"                      header, 12 bytes
//! 'f' le32 len, name                   the snapshot the diff starts from (optional)
//! 't' le32 len, name                   the snapshot the diff ends at (optional)
//! 's' le64 size                        the image size at the end (optional)
//! 'w' le64 offset, le64 length, data   data to write
//! 'z' le64 offset, le64 length         a range that reads zeros
//! 'e'                                  end of the stream
//! ```
//!
//! The metadata records (`f`, `t`, `s`) come before the first `w` or `z`.
//! [`DiffWriter`] emits only these record types, in that order;
//! [`DiffReader`] reads them back, refusing (as a corrupt
//! [`Structure::RbdStream`]) anything else, a short stream and
//! oversized fields, without allocating more than the stream holds.

use std::io::{Read, Write};

use crate::error::{Error, Reason, Result, Structure};

/// The first bytes of every v1 diff stream.
pub const DIFF_V1_HEADER: &[u8; 12] = b"rbd diff v1\n";
/// The first bytes of a v2 diff (inside an export-format 2 image).
pub const DIFF_V2_HEADER: &[u8; 12] = b"rbd diff v2\n";
/// Tag of the "from snapshot" record.
pub const TAG_FROM_SNAP: u8 = b'f';
/// Tag of the "to snapshot" record.
pub const TAG_TO_SNAP: u8 = b't';
/// Tag of the image size record.
pub const TAG_SIZE: u8 = b's';
/// Tag of a data record.
pub const TAG_WRITE: u8 = b'w';
/// Tag of a zeroed range record.
pub const TAG_ZERO: u8 = b'z';
/// Tag of the end record.
pub const TAG_END: u8 = b'e';

/// The longest snapshot name a stream may carry (bytes). `rbd` itself
/// refuses longer names when it reads a stream.
pub const MAX_SNAP_NAME: u32 = 4096;
/// The longest data record [`DiffReader`] accepts (bytes); `rbd
/// export-diff` writes at most one object (a few MiB) per record.
pub const MAX_WRITE_RECORD: u64 = 1 << 30;

/// One record of a diff stream, as [`DiffReader::next_record`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffRecord {
    /// `f`: the snapshot the diff starts from.
    FromSnap(String),
    /// `t`: the snapshot the diff ends at.
    ToSnap(String),
    /// `s`: the image size at the end of the diff.
    Size(u64),
    /// `w`: bytes to write at `offset`.
    Write {
        /// Where the data goes (bytes).
        offset: u64,
        /// The data.
        data: Vec<u8>,
    },
    /// `z`: `[offset, offset + length)` reads zeros.
    Zero {
        /// Start (bytes).
        offset: u64,
        /// Length (bytes).
        length: u64,
    },
    /// `e`: the end of the stream.
    End,
}

/// What a [`DiffWriter`] wrote so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Bytes of the stream (header and records).
    pub stream_bytes: u64,
    /// Data bytes in `w` records.
    pub data_bytes: u64,
    /// Bytes covered by `z` records.
    pub zero_bytes: u64,
    /// Number of `w` records.
    pub writes: u64,
    /// Number of `z` records.
    pub zeros: u64,
}

impl DiffStats {
    /// Add another stream's counts to these.
    pub fn add(&mut self, o: &DiffStats) {
        self.stream_bytes += o.stream_bytes;
        self.data_bytes += o.data_bytes;
        self.zero_bytes += o.zero_bytes;
        self.writes += o.writes;
        self.zeros += o.zeros;
    }
}

/// Writes a v1 diff stream into `W`: the header on creation, then the
/// records in the order the format wants; [`DiffWriter::end`] writes `e`.
pub struct DiffWriter<W: Write> {
    out: W,
    stats: DiffStats,
    data_started: bool,
    ended: bool,
    /// "rbd diff v2" (inside an export-format 2 image): every record but
    /// `e` carries a le64 length of its data after the tag.
    v2: bool,
}

impl<W: Write> DiffWriter<W> {
    /// Start a stream on `out` (writes the header).
    pub fn new(out: W) -> Result<DiffWriter<W>> {
        Self::with_header(out, DIFF_V1_HEADER, false)
    }

    /// Start an "rbd diff v2" stream (the diffs of an `rbd export
    /// --export-format 2` image, see [`crate::rbd::image`]): the same
    /// records, each but `e` with a le64 length after its tag.
    pub fn new_v2(out: W) -> Result<DiffWriter<W>> {
        Self::with_header(out, DIFF_V2_HEADER, true)
    }

    fn with_header(mut out: W, header: &[u8], v2: bool) -> Result<DiffWriter<W>> {
        out.write_all(header)?;
        Ok(DiffWriter {
            out,
            stats: DiffStats {
                stream_bytes: header.len() as u64,
                ..DiffStats::default()
            },
            data_started: false,
            ended: false,
            v2,
        })
    }

    /// One record: the tag, in v2 the length of `parts`, then `parts`.
    fn record(&mut self, tag: u8, parts: &[&[u8]]) -> Result<()> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        self.out.write_all(&[tag])?;
        self.stats.stream_bytes += 1 + len;
        if self.v2 {
            self.out.write_all(&len.to_le_bytes())?;
            self.stats.stream_bytes += 8;
        }
        for p in parts {
            self.out.write_all(p)?;
        }
        Ok(())
    }

    /// What was written so far.
    pub fn stats(&self) -> DiffStats {
        self.stats
    }

    fn meta_allowed(&self, what: &str) -> Result<()> {
        if self.data_started || self.ended {
            return Err(Error::InvalidArgument(format!(
                "an rbd diff stream takes its {what} record before any data record"
            )));
        }
        Ok(())
    }

    fn data_allowed(&mut self) -> Result<()> {
        if self.ended {
            return Err(Error::InvalidArgument(
                "the rbd diff stream has already ended".into(),
            ));
        }
        self.data_started = true;
        Ok(())
    }

    fn name_record(&mut self, tag: u8, name: &str) -> Result<()> {
        let len = u32::try_from(name.len())
            .ok()
            .filter(|&l| l > 0 && l <= MAX_SNAP_NAME)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "a snapshot name in an rbd diff stream has 1 to {MAX_SNAP_NAME} bytes, \
                     not {}",
                    name.len()
                ))
            })?;
        self.record(tag, &[&len.to_le_bytes(), name.as_bytes()])
    }

    /// The `f` record: the diff starts from snapshot `name`.
    pub fn from_snap(&mut self, name: &str) -> Result<()> {
        self.meta_allowed("from-snapshot")?;
        self.name_record(TAG_FROM_SNAP, name)
    }

    /// The `t` record: the diff ends at snapshot `name` (`rbd import-diff`
    /// creates it once the stream is applied).
    pub fn to_snap(&mut self, name: &str) -> Result<()> {
        self.meta_allowed("to-snapshot")?;
        self.name_record(TAG_TO_SNAP, name)
    }

    /// The `s` record: the image has `size` bytes at the end.
    pub fn size(&mut self, size: u64) -> Result<()> {
        self.meta_allowed("size")?;
        self.record(TAG_SIZE, &[&size.to_le_bytes()])
    }

    /// A `w` record: `data` at `offset`. Empty data writes nothing.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.data_allowed()?;
        if data.is_empty() {
            return Ok(());
        }
        self.record(
            TAG_WRITE,
            &[
                &offset.to_le_bytes(),
                &(data.len() as u64).to_le_bytes(),
                data,
            ],
        )?;
        self.stats.data_bytes += data.len() as u64;
        self.stats.writes += 1;
        Ok(())
    }

    /// A `z` record: `[offset, offset + length)` reads zeros. A zero
    /// length writes nothing.
    pub fn zero(&mut self, offset: u64, length: u64) -> Result<()> {
        self.data_allowed()?;
        if length == 0 {
            return Ok(());
        }
        self.record(TAG_ZERO, &[&offset.to_le_bytes(), &length.to_le_bytes()])?;
        self.stats.zero_bytes += length;
        self.stats.zeros += 1;
        Ok(())
    }

    /// The `e` record, then a flush; returns what the stream held.
    pub fn end(&mut self) -> Result<DiffStats> {
        if self.ended {
            return Err(Error::InvalidArgument(
                "the rbd diff stream has already ended".into(),
            ));
        }
        self.out.write_all(&[TAG_END])?;
        self.out.flush()?;
        self.stats.stream_bytes += 1;
        self.ended = true;
        Ok(self.stats)
    }

    /// The writer underneath.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads a v1 diff stream record by record.
pub struct DiffReader<R: Read> {
    inner: R,
    /// Stream offset of the next byte (for error messages).
    pos: u64,
    ended: bool,
}

fn corrupt(offset: u64, reason: Reason) -> Error {
    Error::corrupt(Structure::RbdStream, Some(offset), reason)
}

impl<R: Read> DiffReader<R> {
    /// Start reading `inner`: checks the header.
    pub fn new(inner: R) -> Result<DiffReader<R>> {
        let mut r = DiffReader {
            inner,
            pos: 0,
            ended: false,
        };
        let mut h = [0u8; 12];
        r.exact(&mut h, "the header")?;
        if &h != DIFF_V1_HEADER {
            return Err(corrupt(
                0,
                Reason::Invalid(format!(
                    "the stream does not start with \"rbd diff v1\\n\" (found {:?})",
                    String::from_utf8_lossy(&h)
                )),
            ));
        }
        Ok(r)
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(corrupt(
                        self.pos,
                        Reason::Truncated {
                            needed: buf.len() as u64,
                            found: got as u64,
                        },
                    )
                    .context_what(what))
                }
                Ok(n) => {
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn le64(&mut self, what: &'static str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn name(&mut self) -> Result<String> {
        let at = self.pos;
        let mut b = [0u8; 4];
        self.exact(&mut b, "a snapshot name's length")?;
        let len = u32::from_le_bytes(b);
        if len > MAX_SNAP_NAME {
            return Err(corrupt(
                at,
                Reason::BadField {
                    field: "snapshot name length",
                    value: len as u64,
                    problem: "longer than 4096 bytes",
                },
            ));
        }
        let mut name = vec![0u8; len as usize];
        self.exact(&mut name, "a snapshot name")?;
        String::from_utf8(name)
            .map_err(|_| corrupt(at, Reason::Invalid("a snapshot name is not UTF-8".into())))
    }

    /// The next record; after `End`, an error. The data of a `w` record
    /// is read in pieces, so a length larger than the stream ends as
    /// `Truncated` without a large allocation.
    pub fn next_record(&mut self) -> Result<DiffRecord> {
        if self.ended {
            return Err(Error::InvalidArgument(
                "the rbd diff stream has already ended".into(),
            ));
        }
        let at = self.pos;
        let mut tag = [0u8; 1];
        self.exact(&mut tag, "a record tag (the stream has no end record)")?;
        match tag[0] {
            TAG_FROM_SNAP => Ok(DiffRecord::FromSnap(self.name()?)),
            TAG_TO_SNAP => Ok(DiffRecord::ToSnap(self.name()?)),
            TAG_SIZE => Ok(DiffRecord::Size(self.le64("an image size")?)),
            TAG_WRITE => {
                let offset = self.le64("a data record's offset")?;
                let length = self.le64("a data record's length")?;
                check_extent(at, offset, length)?;
                if length > MAX_WRITE_RECORD {
                    return Err(corrupt(
                        at,
                        Reason::BadField {
                            field: "data record length",
                            value: length,
                            problem: "larger than 1 GiB",
                        },
                    ));
                }
                let mut data = Vec::new();
                let mut left = length;
                let mut chunk = vec![0u8; (1 << 20).min(length as usize)];
                while left > 0 {
                    let n = (chunk.len() as u64).min(left) as usize;
                    self.exact(&mut chunk[..n], "a data record's data")?;
                    data.extend_from_slice(&chunk[..n]);
                    left -= n as u64;
                }
                Ok(DiffRecord::Write { offset, data })
            }
            TAG_ZERO => {
                let offset = self.le64("a zero record's offset")?;
                let length = self.le64("a zero record's length")?;
                check_extent(at, offset, length)?;
                Ok(DiffRecord::Zero { offset, length })
            }
            TAG_END => {
                self.ended = true;
                Ok(DiffRecord::End)
            }
            t => Err(corrupt(
                at,
                Reason::BadField {
                    field: "record tag",
                    value: t as u64,
                    problem: "not a record type of rbd diff v1 (f, t, s, w, z, e)",
                },
            )),
        }
    }
}

fn check_extent(at: u64, offset: u64, length: u64) -> Result<()> {
    if offset.checked_add(length).is_none() {
        return Err(corrupt(
            at,
            Reason::Invalid(format!(
                "the extent at {offset} of {length} bytes ends past 2^64"
            )),
        ));
    }
    Ok(())
}

trait ContextWhat {
    fn context_what(self, what: &'static str) -> Error;
}

impl ContextWhat for Error {
    /// Name what was being read when a stream ended early.
    fn context_what(self, what: &'static str) -> Error {
        match self {
            Error::Corrupt(c) => match c.reason {
                Reason::Truncated { needed, found } => corrupt(
                    c.offset.unwrap_or(0),
                    Reason::Invalid(format!(
                        "the stream ends in {what} ({found} of {needed} bytes)"
                    )),
                ),
                _ => Error::Corrupt(c),
            },
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_reads_back_as_written() {
        let mut w = DiffWriter::new(Vec::new()).unwrap();
        w.from_snap("a").unwrap();
        w.to_snap("bé").unwrap();
        w.size(1 << 24).unwrap();
        w.write(4096, b"hello").unwrap();
        w.zero(8192, 512).unwrap();
        let st = w.end().unwrap();
        let bytes = w.into_inner();
        assert_eq!(st.stream_bytes, bytes.len() as u64);
        assert_eq!((st.data_bytes, st.zero_bytes), (5, 512));
        let mut r = DiffReader::new(&bytes[..]).unwrap();
        let mut got = Vec::new();
        loop {
            let rec = r.next_record().unwrap();
            let end = rec == DiffRecord::End;
            got.push(rec);
            if end {
                break;
            }
        }
        assert_eq!(
            got,
            vec![
                DiffRecord::FromSnap("a".into()),
                DiffRecord::ToSnap("bé".into()),
                DiffRecord::Size(1 << 24),
                DiffRecord::Write {
                    offset: 4096,
                    data: b"hello".to_vec()
                },
                DiffRecord::Zero {
                    offset: 8192,
                    length: 512
                },
                DiffRecord::End,
            ]
        );
        // The exact bytes of a small stream.
        let mut w = DiffWriter::new(Vec::new()).unwrap();
        w.to_snap("s1").unwrap();
        w.size(16 << 20).unwrap();
        w.end().unwrap();
        assert_eq!(
            w.into_inner(),
            b"rbd diff v1\nt\x02\x00\x00\x00s1s\x00\x00\x00\x01\x00\x00\x00\x00e"
        );
    }

    #[test]
    fn v2_records_carry_their_length() {
        let mut w = DiffWriter::new_v2(Vec::new()).unwrap();
        w.to_snap("s1").unwrap();
        w.size(1 << 23).unwrap();
        w.zero(512, 512).unwrap();
        let st = w.end().unwrap();
        let b = w.into_inner();
        let mut want = b"rbd diff v2\nt".to_vec();
        want.extend_from_slice(&6u64.to_le_bytes());
        want.extend_from_slice(&2u32.to_le_bytes());
        want.extend_from_slice(b"s1s");
        want.extend_from_slice(&8u64.to_le_bytes());
        want.extend_from_slice(&(1u64 << 23).to_le_bytes());
        want.push(b'z');
        want.extend_from_slice(&16u64.to_le_bytes());
        want.extend_from_slice(&512u64.to_le_bytes());
        want.extend_from_slice(&512u64.to_le_bytes());
        want.push(b'e');
        assert_eq!(b, want);
        assert_eq!(st.stream_bytes, b.len() as u64);
    }

    #[test]
    fn metadata_after_data_is_refused() {
        let mut w = DiffWriter::new(Vec::new()).unwrap();
        w.zero(0, 512).unwrap();
        assert!(w.size(1).is_err());
        assert!(w.from_snap("x").is_err());
        assert!(w.to_snap("").is_err());
    }

    #[test]
    fn bad_streams_are_corrupt_never_a_panic() {
        let good = {
            let mut w = DiffWriter::new(Vec::new()).unwrap();
            w.to_snap("snap").unwrap();
            w.write(0, &[7u8; 100]).unwrap();
            w.end().unwrap();
            w.into_inner()
        };
        // Every cut of the stream is an error, not a panic.
        for cut in 0..good.len() {
            let r = DiffReader::new(&good[..cut]).and_then(|mut r| loop {
                if r.next_record()? == DiffRecord::End {
                    return Ok(());
                }
            });
            assert!(r.is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[12] = b'q';
        let mut r = DiffReader::new(&bad[..]).unwrap();
        assert!(r.next_record().is_err());
        assert!(DiffReader::new(&b"rbd diff v2\n"[..]).is_err());
        // A huge length: refused without allocating it.
        let mut huge = DIFF_V1_HEADER.to_vec();
        huge.push(b'w');
        huge.extend_from_slice(&0u64.to_le_bytes());
        huge.extend_from_slice(&(1u64 << 29).to_le_bytes());
        let mut r = DiffReader::new(&huge[..]).unwrap();
        assert!(r.next_record().is_err());
        let mut name = DIFF_V1_HEADER.to_vec();
        name.push(b'f');
        name.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut r = DiffReader::new(&name[..]).unwrap();
        assert!(r.next_record().is_err());
    }
}
