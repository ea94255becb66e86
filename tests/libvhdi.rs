//! libvhdi (Debian `python3-libvhdi`, module `pyvhdi`) as the independent
//! reader of differencing chains written by libckpt.
//!
//! Each test grows one chain layer by layer (a base, then up to eight
//! differencing children with varied block sizes). Every layer writes a few
//! unaligned patterns, sub-sector writes, a write across a block boundary, a
//! whole-block write, a write at the very end of the disk, a trim of a whole
//! block and a partial trim. After every layer is closed, the whole chain is
//! read three ways and compared:
//!
//! - by libvhdi: every file opened with `pyvhdi.file()`, the chain composed
//!   with `child.set_parent(parent)` from the base upward (libvhdi checks
//!   each child's `parent_linkage` against its parent's DataWriteGuid), the
//!   whole top read with `read_buffer_at_offset(size, 0)`;
//! - by libckpt (`Disk::open` of the top, which opens the chain);
//! - from a plain byte vector that received the same writes and trims.
//!
//! libvhdi 20210425 cannot read a zero block (PAYLOAD_BLOCK_ZERO, what a
//! whole-block trim of a child leaves) of a differencing file: it consults
//! the sector bitmap whatever the block state, and returns the parent's data
//! or the child file's own first bytes there instead of zeros. The test
//! tracks what every layer holds (its sectors and its zero blocks) and
//! leaves exactly the sectors under such blocks out of the libvhdi
//! comparison; libckpt must read zeros there (checked against the model).
//!
//! Logical sector 4096 chains are included (QEMU cannot read those, libvhdi
//! can). Under `CI=true` a missing `pyvhdi` is a failure; otherwise the tests
//! print a notice and return.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};
use support::{assert_same, Rng, MIB};

/// The Python interpreter that has `pyvhdi` (Debian's).
const PYTHON: &str = "/usr/bin/python3";

/// Reads a chain with libvhdi. Arguments: the output file, then the chain's
/// files from the base up to the top. Prints one line per file
/// (`media_size bytes_per_sector disk_type`) and writes the top's whole
/// content into the output file.
const READ_CHAIN: &str = r#"
import sys
import pyvhdi

out = sys.argv[1]
paths = sys.argv[2:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for i in range(1, len(files)):
    files[i].set_parent(files[i - 1])
for f in files:
    print(f.get_media_size(), f.get_bytes_per_sector(), f.get_disk_type(),
          f.get_identifier(), f.get_parent_identifier() or "-",
          f.get_parent_filename() or "-", sep="\t")
top = files[-1]
size = top.get_media_size()
data = top.read_buffer_at_offset(size, 0)
if len(data) != size:
    sys.exit("short read: %d of %d bytes" % (len(data), size))
with open(out, "wb") as o:
    o.write(data)
for f in reversed(files):
    f.close()
"#;

/// libvhdi's disk type numbers (`LIBVHDI_DISK_TYPE_*`).
const LIBVHDI_FIXED: u32 = 2;
const LIBVHDI_DYNAMIC: u32 = 3;
const LIBVHDI_DIFFERENTIAL: u32 = 4;

/// `true` when `pyvhdi` can be imported; otherwise a notice (a panic under
/// `CI=true`) and `false`.
fn have_pyvhdi() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import pyvhdi"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        support::missing(
            "the Python module pyvhdi (Debian package python3-libvhdi) for /usr/bin/python3",
        );
    }
    ok
}

/// What libvhdi reports about one file of the chain.
#[derive(Debug, PartialEq, Eq)]
struct VhdiFile {
    media_size: u64,
    bytes_per_sector: u32,
    disk_type: u32,
    /// libvhdi's "identifier": the DataWriteGuid.
    identifier: String,
    /// The child's `parent_linkage` ("-" for a base).
    parent_identifier: String,
    /// The parent file name libvhdi finds in the locator ("-" for a base).
    parent_filename: String,
}

/// Read the chain `base_first` (base first, top last) with libvhdi: the
/// per-file facts and the top's whole content.
fn libvhdi_read(base_first: &[PathBuf], scratch: &Path) -> (Vec<VhdiFile>, Vec<u8>) {
    let out = scratch.join("libvhdi-read.raw");
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c").arg(READ_CHAIN).arg(&out).args(base_first);
    let stdout = support::run(&mut cmd);
    let num = |x: &str, l: &str| -> u64 {
        x.parse()
            .unwrap_or_else(|e| panic!("libvhdi output {l:?}: {e}"))
    };
    let facts = stdout
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split('\t').collect();
            assert_eq!(v.len(), 6, "libvhdi output line {l:?}");
            VhdiFile {
                media_size: num(v[0], l),
                bytes_per_sector: num(v[1], l) as u32,
                disk_type: num(v[2], l) as u32,
                identifier: v[3].to_string(),
                parent_identifier: v[4].to_string(),
                parent_filename: v[5].to_string(),
            }
        })
        .collect();
    let data = std::fs::read(&out).expect("read libvhdi's output");
    std::fs::remove_file(&out).expect("remove libvhdi's output");
    (facts, data)
}

/// What one layer holds, as far as a reader of the file can tell: the
/// sectors it defines itself (data, including zeros written over a partial
/// trim) and the whole blocks it trimmed (PAYLOAD_BLOCK_ZERO), per the
/// engine's documented allocation rules.
struct LayerTrack {
    has_parent: bool,
    size: u64,
    bs: u64,
    lss: u64,
    /// Per logical sector: this layer holds the sector's data.
    defined: Vec<bool>,
    /// Per block: the block was trimmed whole (reads as zeros, hides the parent).
    zero: Vec<bool>,
}

impl LayerTrack {
    fn new(disk: &Disk) -> LayerTrack {
        let size = disk.virtual_size();
        let bs = disk.block_size() as u64;
        let lss = disk.logical_sector_size() as u64;
        LayerTrack {
            has_parent: disk.depth() > 1,
            size,
            bs,
            lss,
            defined: vec![false; (size / lss) as usize],
            zero: vec![false; size.div_ceil(bs) as usize],
        }
    }

    fn define(&mut self, off: u64, len: u64) {
        let (s, e) = (off / self.lss, (off + len).div_ceil(self.lss));
        self.defined[s as usize..e as usize].fill(true);
    }

    /// A write of `[off, off+len)`: its sectors become this layer's; a write
    /// into a zeroed block allocates the whole block (zero-padded).
    fn write(&mut self, off: u64, len: u64) {
        for b in off / self.bs..(off + len).div_ceil(self.bs) {
            if self.zero[b as usize] {
                self.zero[b as usize] = false;
                let bend = ((b + 1) * self.bs).min(self.size);
                self.define(b * self.bs, bend - b * self.bs);
            }
        }
        self.define(off, len);
    }

    /// A trim: whole blocks of a child become zero blocks, the rest is
    /// written with zeros.
    fn trim(&mut self, off: u64, len: u64) {
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let b = pos / self.bs;
            let (bstart, bend) = (b * self.bs, ((b + 1) * self.bs).min(self.size));
            let n = (bend - pos).min(end - pos);
            if self.has_parent && pos == bstart && pos + n == bend {
                self.zero[b as usize] = true;
                let (s, e) = (bstart / self.lss, bend.div_ceil(self.lss));
                self.defined[s as usize..e as usize].fill(false);
            } else {
                self.write(pos, n);
            }
            pos += n;
        }
    }
}

/// The same writes and trims applied to the disk, to a byte vector and to
/// the layer's tracker.
struct Writer<'a> {
    disk: &'a Disk,
    model: &'a mut Vec<u8>,
    track: &'a mut LayerTrack,
}

impl Writer<'_> {
    fn write(&mut self, off: u64, data: &[u8]) {
        self.disk
            .write_at(data, off)
            .unwrap_or_else(|e| panic!("write {off}+{}: {e}", data.len()));
        self.model[off as usize..off as usize + data.len()].copy_from_slice(data);
        self.track.write(off, data.len() as u64);
    }
    fn trim(&mut self, off: u64, len: u64) {
        self.disk
            .trim(off, len)
            .unwrap_or_else(|e| panic!("trim {off}+{len}: {e}"));
        self.model[off as usize..(off + len) as usize].fill(0);
        self.track.trim(off, len);
    }
}

/// One layer's share of writes: unaligned patterns, sub-sector writes, a
/// write across a block boundary, a whole-block write, the last bytes of the
/// disk, a whole-block trim and a partial trim. Returns what the layer holds.
fn write_layer(disk: &Disk, model: &mut Vec<u8>, rng: &mut Rng) -> LayerTrack {
    let size = disk.virtual_size();
    let bs = disk.block_size() as u64;
    let lss = disk.logical_sector_size() as u64;
    let blocks = size.div_ceil(bs);
    let mut track = LayerTrack::new(disk);
    let mut w = Writer {
        disk,
        model,
        track: &mut track,
    };
    // Unaligned patterns, 1 byte to 300 KiB.
    for _ in 0..4 {
        let len = rng.range(1, 300 << 10).min(size);
        let off = rng.below(size - len + 1);
        w.write(off, &rng.bytes(len as usize));
    }
    // Sub-sector writes (inside one sector, or straddling two).
    for _ in 0..4 {
        let len = rng.range(1, lss - 1);
        let off = rng.below(size - len + 1);
        w.write(off, &rng.bytes(len as usize));
    }
    // A partial-block write across a block boundary.
    if blocks > 1 {
        let b = rng.range(1, blocks - 1);
        let before = rng.range(1, bs / 2);
        let after = rng.range(1, bs / 2).min(size - b * bs);
        w.write(b * bs - before, &rng.bytes((before + after) as usize));
    }
    // A whole block of this layer.
    let b = rng.below(blocks);
    let len = bs.min(size - b * bs);
    w.write(b * bs, &rng.bytes(len as usize));
    // The last bytes of the disk.
    let len = rng.range(1, 3 * lss);
    w.write(size - len, &rng.bytes(len as usize));
    // A whole block trimmed (in a child this hides the parent's data).
    let b = rng.below(blocks);
    w.trim(b * bs, bs.min(size - b * bs));
    // A partial, unaligned trim.
    let len = rng.range(1, 200 << 10);
    let off = rng.below(size - len + 1);
    w.trim(off, len);
    // Another whole block trimmed, then written in part (a write into a
    // zero block allocates the whole block, zero-padded).
    let b = rng.below(blocks);
    let blen = bs.min(size - b * bs);
    w.trim(b * bs, blen);
    let n = rng.range(1, blen / 2);
    w.write(b * bs + n / 2, &rng.bytes(n as usize));
    track
}

/// Which sectors libvhdi 20210425 reads correctly. It reads a payload
/// block of a differencing file whose state is not FULLY_PRESENT through
/// the sector bitmap whatever the state (`libvhdi_block_allocation_table.c`,
/// `libvhdi_block_descriptor.c`): for a zero block (PAYLOAD_BLOCK_ZERO,
/// which MS-VHDX says reads as zeros) it returns the parent's data where the
/// block's (stale) bitmap bits are 0 and the child file's own bytes from
/// offset 0 where they are 1. So the sectors under a zero block of any
/// child, and not redefined by a layer above it, are left out of the
/// libvhdi comparison (libckpt must still read them as zeros: the model
/// checks that). `known` is per logical sector, for the chain below
/// `track`; updated in place.
fn libvhdi_known(known: &mut [bool], track: &LayerTrack) {
    let (bs, lss) = (track.bs as usize, track.lss as usize);
    for (i, k) in known.iter_mut().enumerate() {
        if !track.has_parent {
            *k = true;
        } else if track.zero[i * lss / bs] {
            *k = false;
        } else if track.defined[i] {
            *k = true;
        }
    }
}

/// Compare libvhdi's read with the model on the sectors it reads correctly;
/// returns the number of bytes compared.
fn assert_same_known(what: &str, got: &[u8], want: &[u8], known: &[bool], lss: usize) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut compared = 0;
    let mut i = 0;
    while i < known.len() {
        if !known[i] {
            i += 1;
            continue;
        }
        let j = i + known[i..].iter().take_while(|k| **k).count();
        let (s, e) = (i * lss, j * lss);
        assert_same(what, &got[s..e], &want[s..e], s as u64);
        compared += e - s;
        i = j;
    }
    compared
}

/// Read the whole disk through libckpt.
fn read_all(disk: &Disk) -> Vec<u8> {
    let mut v = vec![0u8; disk.virtual_size() as usize];
    for (i, chunk) in v.chunks_mut(4 << 20).enumerate() {
        let off = i as u64 * (4 << 20);
        disk.read_at(chunk, off)
            .unwrap_or_else(|e| panic!("read {off}+{}: {e}", chunk.len()));
    }
    v
}

/// Compare the chain (top last in `base_first`) as read by libckpt against
/// `model`, and as read by libvhdi against `model` on the `known` sectors.
fn verify(
    what: &str,
    base_first: &[PathBuf],
    model: &[u8],
    known: &[bool],
    lss: u32,
    base_fixed: bool,
    dir: &Path,
) {
    let top = base_first.last().expect("a chain has a top");
    let disk = Disk::open(top, OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("{what}: open {}: {e}", top.display()));
    assert_eq!(disk.depth(), base_first.len(), "{what}: depth");
    let chain: Vec<PathBuf> = disk
        .chain()
        .into_iter()
        .map(|p| p.expect("opened from a path"))
        .collect();
    let mut want_chain = base_first.to_vec();
    want_chain.reverse();
    assert_eq!(
        chain, want_chain,
        "{what}: chain() lists the files top first"
    );
    assert_same(
        &format!("{what}: libckpt read vs model"),
        &read_all(&disk),
        model,
        0,
    );
    drop(disk);

    let (facts, data) = libvhdi_read(base_first, dir);
    assert_eq!(facts.len(), base_first.len(), "{what}: libvhdi facts");
    for (i, f) in facts.iter().enumerate() {
        let file = &base_first[i];
        let want_type = match (i, base_fixed) {
            (0, true) => LIBVHDI_FIXED,
            (0, false) => LIBVHDI_DYNAMIC,
            _ => LIBVHDI_DIFFERENTIAL,
        };
        assert_eq!(
            (f.media_size, f.bytes_per_sector, f.disk_type),
            (model.len() as u64, lss, want_type),
            "{what}: size, sector size and type libvhdi reports for {}",
            file.display()
        );
        let ours = Disk::open(file, OpenMode::ReadOnly)
            .unwrap_or_else(|e| panic!("{what}: open {}: {e}", file.display()))
            .info()
            .data_write_guid;
        assert_eq!(
            f.identifier,
            ours.to_string(),
            "{what}: DataWriteGuid of {}",
            file.display()
        );
        if i == 0 {
            assert_eq!(
                (f.parent_identifier.as_str(), f.parent_filename.as_str()),
                ("-", "-")
            );
        } else {
            let parent = &facts[i - 1];
            assert_eq!(
                f.parent_identifier,
                parent.identifier,
                "{what}: the linkage of {} is its parent's DataWriteGuid",
                file.display()
            );
            let name = base_first[i - 1]
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a name");
            assert!(
                f.parent_filename.ends_with(&format!("\\{name}")),
                "{what}: libvhdi finds the parent {name} in the locator of {}: {:?}",
                file.display(),
                f.parent_filename
            );
        }
    }
    let compared = assert_same_known(
        &format!("{what}: libvhdi read vs model"),
        &data,
        model,
        known,
        lss as usize,
    );
    // Most of the disk is judged by libvhdi; only zero blocks are left out.
    assert!(
        compared as u64 >= model.len() as u64 / 2,
        "{what}: libvhdi judged only {compared} of {} bytes",
        model.len()
    );
}

/// Grow a chain from a base made with `base` up to `children` differencing
/// layers (block sizes taken in turn from `child_blocks`), writing each
/// layer and checking the whole chain with libvhdi after each. Returns how
/// the most bytes of any step's chain that libvhdi was not judged on (under
/// zero blocks of children); `None` when `pyvhdi` is missing (outside CI).
fn grow_and_check(
    name: &str,
    base: CreateOptions,
    child_blocks: &[u32],
    children: usize,
    seed: u64,
) -> Option<usize> {
    if !have_pyvhdi() {
        return None;
    }
    let dir = support::tempdir();
    let size = base.virtual_size;
    let lss = base.logical_sector_size;
    let fixed = base.fixed;
    let mut rng = Rng::new(seed);
    let mut model = vec![0u8; size as usize];
    let mut known = vec![true; (size / lss as u64) as usize];
    let mut files = vec![dir.path().join("base.vhdx")];

    let disk = Disk::create(&files[0], &base).expect("create the base");
    let track = write_layer(&disk, &mut model, &mut rng);
    disk.close().expect("close the base");
    libvhdi_known(&mut known, &track);
    let mut unjudged = 0;
    verify(
        &format!("{name}: base alone"),
        &files,
        &model,
        &known,
        lss,
        fixed,
        dir.path(),
    );

    for level in 1..=children {
        let path = dir.path().join(format!("child{level}.avhdx"));
        let opts = ChildOptions {
            block_size: child_blocks[(level - 1) % child_blocks.len()],
            ..Default::default()
        };
        let parent = files.last().expect("a parent").clone();
        let disk = Disk::create_child(&path, &parent, &opts).unwrap_or_else(|e| {
            panic!("{name}: create child {level} on {}: {e}", parent.display())
        });
        assert_eq!(disk.depth(), level + 1, "{name}: depth of a new child");
        let track = write_layer(&disk, &mut model, &mut rng);
        disk.close()
            .unwrap_or_else(|e| panic!("{name}: close child {level}: {e}"));
        libvhdi_known(&mut known, &track);
        unjudged = unjudged.max(known.iter().filter(|k| !**k).count() * lss as usize);
        files.push(path);
        let what = format!(
            "{name}: {level} children (block size {} MiB)",
            opts.block_size as u64 / MIB
        );
        verify(&what, &files, &model, &known, lss, fixed, dir.path());
    }
    Some(unjudged)
}

#[test]
fn libvhdi_reads_chains_512() {
    let base = CreateOptions::new(24 * MIB).block_size(4 << 20);
    let blocks = [
        2 << 20,
        1 << 20,
        8 << 20,
        2 << 20,
        4 << 20,
        1 << 20,
        32 << 20,
        2 << 20,
    ];
    if let Some(n) = grow_and_check("512-byte sectors", base, &blocks, 8, 0x5eed_0512) {
        // Some chain had zero blocks of children (whole-block trims).
        assert!(n > 0, "no chain had a zero block of a child");
    }
}

#[test]
fn libvhdi_reads_chains_4k_sectors() {
    let base = CreateOptions::new(16 * MIB)
        .block_size(1 << 20)
        .logical_sector_size(4096)
        .physical_sector_size(4096);
    let blocks = [
        2 << 20,
        1 << 20,
        4 << 20,
        1 << 20,
        2 << 20,
        8 << 20,
        1 << 20,
        2 << 20,
    ];
    if let Some(n) = grow_and_check("4096-byte sectors", base, &blocks, 8, 0x5eed_4096) {
        // Some chain had zero blocks of children (whole-block trims).
        assert!(n > 0, "no chain had a zero block of a child");
    }
}

#[test]
fn libvhdi_reads_chains_on_a_fixed_base() {
    let base = CreateOptions::new(16 * MIB).fixed(true).block_size(2 << 20);
    grow_and_check(
        "fixed base",
        base,
        &[1 << 20, 2 << 20, 4 << 20],
        3,
        0x5eed_f1ed,
    );
}

#[test]
fn libvhdi_reads_4k_chain_on_a_fixed_base() {
    let base = CreateOptions::new(16 * MIB)
        .fixed(true)
        .block_size(1 << 20)
        .logical_sector_size(4096)
        .physical_sector_size(4096);
    grow_and_check(
        "4096-byte sectors, fixed base",
        base,
        &[2 << 20, 1 << 20],
        2,
        0x5eed_4512,
    );
}

#[test]
fn libvhdi_reads_chains_of_an_odd_size() {
    // The last block of every layer is partial.
    let base = CreateOptions::new(20 * MIB + 5 * 512).block_size(2 << 20);
    grow_and_check(
        "odd size",
        base,
        &[1 << 20, 4 << 20, 2 << 20, 8 << 20],
        4,
        0x5eed_0dd5,
    );
}

/// A child nothing was written to yet, and a child written in one chunk
/// only (two chunks: 4 GiB each at 512-byte sectors), read by libvhdi over
/// a base full of data: every unwritten sector comes from the parent. (A
/// chunk whose sector bitmap is not allocated is misread by libvhdi, so a
/// new child gets every chunk's bitmap, all zeros, at creation.)
#[test]
fn libvhdi_reads_pristine_chunks_of_a_child_from_the_parent() {
    if !have_pyvhdi() {
        assert!(!support::in_ci(), "CI must have pyvhdi");
        return;
    }
    let dir = support::tempdir();
    let size = 8 * 1024 * MIB + 4 * MIB;
    let base = dir.path().join("base.vhdx");
    let d = Disk::create(&base, &CreateOptions::new(size).block_size(2 << 20)).unwrap();
    let pattern: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    // Data at the start of each chunk and in the last block.
    let places = [0, 4096 * MIB, size - MIB];
    for &off in &places {
        d.write_at(&pattern, off).unwrap();
    }
    d.close().unwrap();
    let pristine = dir.path().join("pristine.avhdx");
    Disk::create_child(&pristine, &base, &ChildOptions::default())
        .unwrap()
        .close()
        .unwrap();
    let written = dir.path().join("written.avhdx");
    let c = Disk::create_child(&written, &base, &ChildOptions::default()).unwrap();
    c.write_at(&[0xeeu8; 512], 4096 * MIB + 4096).unwrap();
    c.close().unwrap();
    for child in [&pristine, &written] {
        let out = dir.path().join("vhdi.raw");
        let script = r#"
import sys
import pyvhdi
b = pyvhdi.file(); b.open(sys.argv[1])
c = pyvhdi.file(); c.open(sys.argv[2]); c.set_parent(b)
with open(sys.argv[3], "wb") as out:
    for off in map(int, sys.argv[4:]):
        out.write(c.read_buffer_at_offset(1 << 20, off))
"#;
        let mut cmd = Command::new(PYTHON);
        cmd.arg("-c").arg(script).arg(&base).arg(child).arg(&out);
        cmd.args(places.iter().map(|o| o.to_string()));
        support::run(&mut cmd);
        let got = std::fs::read(&out).unwrap();
        let top = Disk::open(child, OpenMode::ReadOnly).unwrap();
        for (i, &off) in places.iter().enumerate() {
            let mut want = vec![0u8; MIB as usize];
            top.read_at(&mut want, off).unwrap();
            let what = format!("{} at {off}", child.display());
            assert_same(
                &what,
                &got[i * MIB as usize..(i + 1) * MIB as usize],
                &want,
                0,
            );
            if child == &pristine || i != 1 {
                assert_same(&format!("{what} (libckpt)"), &want, &pattern, 0);
            }
        }
    }
}
