//! A sparse reference model of a virtual disk ([`Model`]) and the
//! comparisons the tests judge contents with: byte ranges, files, a disk
//! against the model, `ckpt::check`.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// A sparse reference model of a virtual disk: the writes in order (later
/// ones win), zeros elsewhere. Cheap for large, mostly empty disks.
#[derive(Debug, Clone)]
pub struct Model {
    /// Virtual size in bytes.
    pub size: u64,
    writes: Vec<(u64, Fill)>,
}

#[derive(Debug, Clone)]
enum Fill {
    Byte(u8, u64),
    Data(Vec<u8>),
}

impl Fill {
    fn len(&self) -> u64 {
        match self {
            Fill::Byte(_, n) => *n,
            Fill::Data(d) => d.len() as u64,
        }
    }
}

impl Model {
    /// An all-zero disk of `size` bytes.
    pub fn new(size: u64) -> Model {
        Model {
            size,
            writes: Vec::new(),
        }
    }
    fn check(&self, off: u64, len: u64) {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.size),
            "model write {off}+{len} outside {} bytes",
            self.size
        );
    }
    /// `len` bytes of `byte` at `off` (like `qemu-io write -P`).
    pub fn fill(&mut self, off: u64, len: u64, byte: u8) {
        self.check(off, len);
        self.writes.push((off, Fill::Byte(byte, len)));
    }
    /// Zeros over `[off, off+len)` (a trim, or `write -z`).
    pub fn zero(&mut self, off: u64, len: u64) {
        self.fill(off, len, 0);
    }
    /// `data` at `off`.
    pub fn write(&mut self, off: u64, data: &[u8]) {
        self.check(off, data.len() as u64);
        self.writes.push((off, Fill::Data(data.to_vec())));
    }
    /// The expected contents of `[off, off+buf.len())`.
    pub fn read(&self, buf: &mut [u8], off: u64) {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for (woff, fill) in &self.writes {
            let wend = woff + fill.len();
            let (s, e) = ((*woff).max(off), wend.min(end));
            if s >= e {
                continue;
            }
            let dst = &mut buf[(s - off) as usize..(e - off) as usize];
            match fill {
                Fill::Byte(b, _) => dst.fill(*b),
                Fill::Data(d) => dst.copy_from_slice(&d[(s - woff) as usize..(e - woff) as usize]),
            }
        }
    }
    /// Write the model as a raw image file of `size` bytes (sparse).
    pub fn write_raw(&self, path: &Path) {
        let mut f = File::create(path).expect("create raw model");
        f.set_len(self.size).expect("size raw model");
        for (off, fill) in &self.writes {
            f.seek(SeekFrom::Start(*off)).expect("seek");
            match fill {
                Fill::Byte(b, n) => f.write_all(&vec![*b; *n as usize]),
                Fill::Data(d) => f.write_all(d),
            }
            .expect("write raw model");
        }
    }
}

// --------------------------------------------------------- comparisons

/// Assert two byte slices are equal, naming the first differing offset
/// (`base` is the absolute offset of the slices) instead of dumping them.
pub fn assert_same(what: &str, got: &[u8], want: &[u8], base: u64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if got != want {
        let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
        let n = got[i..]
            .iter()
            .zip(&want[i..])
            .take_while(|(a, b)| a != b)
            .count();
        panic!(
            "{what}: first difference at offset {} ({:#x}): got {:#04x}, expected {:#04x} ({} differing bytes in a row)",
            base + i as u64,
            base + i as u64,
            got[i],
            want[i],
            n
        );
    }
}

/// Compare `len` bytes produced by two readers in `chunk`-sized pieces.
/// Each closure fills its buffer with the bytes at the given offset.
pub fn compare_ranges(
    what: &str,
    len: u64,
    chunk: usize,
    mut got: impl FnMut(&mut [u8], u64),
    mut want: impl FnMut(&mut [u8], u64),
) {
    let mut a = vec![0u8; chunk];
    let mut b = vec![0u8; chunk];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk as u64) as usize;
        got(&mut a[..n], off);
        want(&mut b[..n], off);
        assert_same(what, &a[..n], &b[..n], off);
        off += n as u64;
    }
}

/// Read `buf.len()` bytes of a file at `off` (zeros past its end).
pub fn read_file_at(f: &File, buf: &mut [u8], off: u64) {
    use std::os::unix::fs::FileExt;
    buf.fill(0);
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The first offset where two files differ (length included), or `None`.
pub fn first_file_difference(a: &Path, b: &Path) -> Option<u64> {
    let fa = File::open(a).expect("open file");
    let fb = File::open(b).expect("open file");
    let (la, lb) = (
        fa.metadata().expect("stat").len(),
        fb.metadata().expect("stat").len(),
    );
    const CHUNK: usize = 1 << 20;
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut off = 0;
    while off < la.min(lb) {
        read_file_at(&fa, &mut x, off);
        read_file_at(&fb, &mut y, off);
        if x != y {
            let i = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(0);
            return Some(off + i as u64);
        }
        off += CHUNK as u64;
    }
    (la != lb).then_some(la.min(lb))
}

/// Assert that two files hold the same bytes.
pub fn assert_files_identical(what: &str, a: &Path, b: &Path) {
    if let Some(off) = first_file_difference(a, b) {
        panic!(
            "{what}: {} and {} differ at offset {off} ({off:#x})",
            a.display(),
            b.display()
        );
    }
}

/// Copy a file (for a before/after comparison).
pub fn snapshot(path: &Path, to: &Path) {
    std::fs::copy(path, to).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
}

// ------------------------------------------------------------- ckpt helpers

/// Compare the whole of an open disk against a model, in 4 MiB reads.
pub fn assert_disk_matches(what: &str, disk: &ckpt::Disk, model: &Model) {
    assert_eq!(disk.virtual_size(), model.size, "{what}: virtual size");
    compare_ranges(
        what,
        model.size,
        4 << 20,
        |b, o| {
            disk.read_at(b, o)
                .unwrap_or_else(|e| panic!("{what}: read {}+{}: {e}", o, b.len()))
        },
        |b, o| model.read(b, o),
    );
}

/// Open a disk read-write, panicking with the path and the error.
pub fn open_rw(path: &Path) -> ckpt::Disk {
    ckpt::Disk::open(path, ckpt::OpenMode::ReadWrite)
        .unwrap_or_else(|e| panic!("open {} read-write: {e}", path.display()))
}

/// `ckpt::check` must find no problems.
pub fn assert_ckpt_check(path: &Path) -> ckpt::CheckReport {
    let report =
        ckpt::check(path).unwrap_or_else(|e| panic!("ckpt::check {}: {e}", path.display()));
    assert!(
        report.is_ok(),
        "ckpt::check {}: problems {:?} (notes {:?}, {})",
        path.display(),
        report.problems,
        report.notes,
        report.summary
    );
    report
}
