//! The bodies of the fuzz targets, as plain functions.
//!
//! Shared by the libFuzzer targets in `fuzz/fuzz_targets/` and by
//! `tests/fuzz_regressions.rs` (which includes this file with `#[path]`), so
//! that every input found by fuzzing is replayed by a plain `cargo test`.
//! Each body returns `Err(violation)` when the engine breaks a promise it
//! makes (data read back wrong, a write to a read-only storage, a file the
//! engine wrote that no longer opens, unbounded growth, ...). A panic is a
//! finding too.
//!
//! Only the public API of the `ckpt` crate is used, plus `crc32c` and
//! `tempfile` (both available to the main crate's tests).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ckpt::checkpoint::{Hooks, NoHooks, Vm, VmSpec};
use ckpt::io::{Cut, FaultStorage, MemStorage, Storage};
use ckpt::{ChildOptions, CreateOptions, Disk, Error, OpenMode};

/// What a body reports: `Err` names the broken promise.
pub type Outcome = Result<(), String>;

/// The fuzz targets, by name (the folder names under `fuzz/regressions/`).
pub const TARGETS: &[&str] = &[
    "open_bytes",
    "structure",
    "log_replay",
    "disk_ops",
    "vm_ops",
    "vhd",
];

/// Run the body of `target` on `data`.
pub fn run(target: &str, data: &[u8]) -> Outcome {
    match target {
        "open_bytes" => open_bytes(data),
        "structure" => structure(data),
        "log_replay" => log_replay(data),
        "disk_ops" => disk_ops(data).or_else(known),
        "vm_ops" => vm_ops(data).or_else(known),
        "vhd" => vhd(data),
        _ => Err(format!("unknown target {target}")),
    }
}

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

// ---------------------------------------------------------------------------
// Input reader: bytes in, numbers out; past the end everything reads as 0.

/// A cursor over the fuzzer's bytes.
pub struct In<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> In<'a> {
    /// Read from `data`.
    pub fn new(data: &'a [u8]) -> In<'a> {
        In { data, pos: 0 }
    }
    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let s = self.pos.min(self.data.len());
        let e = s.saturating_add(n).min(self.data.len());
        self.pos = e;
        &self.data[s..e]
    }
    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }
    fn fill<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    /// A byte.
    pub fn u8(&mut self) -> u8 {
        self.fill::<1>()[0]
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fill())
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fill())
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fill())
    }
    /// A bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.u32() as u64 % n
        }
    }
    /// An "interesting" value for a field of `width` bytes whose current
    /// value is `old`, in a file of `file_len` bytes.
    pub fn value(&mut self, width: usize, old: u64, file_len: u64) -> u64 {
        let max = if width >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * width)) - 1
        };
        let v = match self.u8() % 12 {
            0 => 0,
            1 => max,
            2 => old.wrapping_add(1),
            3 => old.wrapping_sub(1),
            4 => 1u64 << (self.u8() % 64),
            5 => file_len,
            6 => file_len.wrapping_add(MIB * self.u8() as u64),
            7 => MIB * self.u16() as u64,
            8 => old ^ (1u64 << (self.u8() % 64)),
            9 => old.wrapping_add(MIB * (self.u8() as u64 + 1)),
            10 => max / 2 + 1,
            _ => self.u64(),
        };
        v & max
    }
}

// ---------------------------------------------------------------------------
// Storage that watches what the engine does.

/// A memory storage that records writes the engine must not make: any
/// mutation of a read-only storage, and growth past `limit` (refused, so
/// that a runaway file cannot eat the machine's memory).
#[derive(Debug)]
pub struct Watch {
    mem: MemStorage,
    writable: bool,
    limit: u64,
    forbidden: AtomicU64,
    over: AtomicBool,
    max_seen: AtomicU64,
}

impl Watch {
    /// Read-only storage over `bytes`.
    pub fn ro(bytes: Vec<u8>) -> Arc<Watch> {
        Arc::new(Watch::new(MemStorage::from_vec(bytes), false, u64::MAX))
    }
    /// Writable storage over `mem`, refusing to grow past `limit` bytes.
    pub fn rw(mem: MemStorage, limit: u64) -> Arc<Watch> {
        Arc::new(Watch::new(mem, true, limit))
    }
    fn new(mem: MemStorage, writable: bool, limit: u64) -> Watch {
        Watch {
            mem,
            writable,
            limit,
            forbidden: AtomicU64::new(0),
            over: AtomicBool::new(false),
            max_seen: AtomicU64::new(0),
        }
    }
    /// The bytes now held.
    pub fn bytes(&self) -> Vec<u8> {
        self.mem.snapshot()
    }
    /// Complaints about what the engine did to this storage.
    pub fn complaint(&self, what: &str) -> Option<String> {
        let n = self.forbidden.load(Ordering::SeqCst);
        if n > 0 {
            return Some(format!("{what}: {n} mutating calls on a read-only storage"));
        }
        if self.over.load(Ordering::SeqCst) {
            return Some(format!(
                "{what}: the engine tried to grow the file to {:#x} bytes, past the limit {:#x}",
                self.max_seen.load(Ordering::SeqCst),
                self.limit
            ));
        }
        None
    }
    fn mutate(&self, end: Option<u64>) -> io::Result<()> {
        if !self.writable {
            self.forbidden.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "fuzz: write to a read-only storage",
            ));
        }
        let end = end.ok_or_else(|| io::Error::other("fuzz: range overflows"))?;
        if end > self.limit {
            self.over.store(true, Ordering::SeqCst);
            self.max_seen.fetch_max(end, Ordering::SeqCst);
            return Err(io::Error::other("fuzz: storage limit"));
        }
        Ok(())
    }
}

impl Storage for Watch {
    fn len(&self) -> io::Result<u64> {
        self.mem.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.mutate(offset.checked_add(buf.len() as u64))?;
        self.mem.write_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate(Some(len))?;
        self.mem.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        if !self.writable {
            self.forbidden.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset.checked_add(len);
        self.mutate(end)?;
        let cur = self.mem.len()?;
        let end = end.unwrap_or(u64::MAX).min(cur);
        if offset < end {
            ckpt::io::write_zeros(&self.mem, offset, end - offset)?;
        }
        Ok(())
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        self.mutate(offset.checked_add(len))?;
        self.mem.allocate(offset, len)
    }
    fn is_writable(&self) -> bool {
        self.writable
    }
}

// ---------------------------------------------------------------------------
// Valid images, built once.

/// A valid image (one file, or a child and its parents, top first) and
/// where its structures are.
#[derive(Debug, Clone)]
pub struct Image {
    /// What it is.
    pub name: &'static str,
    /// The files, top first.
    pub layers: Vec<Vec<u8>>,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn put(b: &mut [u8], o: usize, width: usize, v: u64) {
    if o.checked_add(width).is_some_and(|e| e <= b.len()) {
        b[o..o + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn close_mem(disk: Disk) -> Result<(), String> {
    disk.close().map_err(|e| format!("building an image: {e}"))
}

fn dynamic_image(lss: u32, fixed: bool) -> Vec<u8> {
    let mem = MemStorage::new();
    let opts = CreateOptions::new(if fixed { 4 * MIB } else { 8 * MIB })
        .block_size(MIB as u32)
        .logical_sector_size(lss)
        .fixed(fixed);
    let d = Disk::create_on(Arc::new(mem.clone()), &opts).expect("create");
    d.write_at(&pattern(8192, 1), 0).expect("write");
    d.write_at(&pattern(5000, 2), 3 * MIB + 700).expect("write");
    d.flush().expect("flush");
    close_mem(d).expect("close");
    mem.snapshot()
}

fn differencing_image() -> Vec<Vec<u8>> {
    let parent = MemStorage::from_vec(dynamic_image(512, false));
    let child = MemStorage::new();
    {
        let p = Disk::open_storage(Arc::new(parent.clone()), OpenMode::ReadOnly).expect("parent");
        let opts = ChildOptions {
            block_size: MIB as u32,
            log_size: MIB as u32,
        };
        Disk::create_child_on(Arc::new(child.clone()), &p, &opts).expect("child");
    }
    let chain: Vec<Arc<dyn Storage>> = vec![Arc::new(child.clone()), Arc::new(parent.clone())];
    let d = Disk::open_storage_chain(chain, OpenMode::ReadWrite).expect("open chain");
    d.write_at(&pattern(3000, 3), 4096 + 100).expect("write");
    d.write_at(&pattern(4096, 4), 5 * MIB).expect("write");
    d.trim(2 * MIB, MIB).expect("trim");
    close_mem(d).expect("close");
    vec![child.snapshot(), parent.snapshot()]
}

/// A dynamic disk whose log holds an entry not yet applied: a write
/// stream cut during a flush that allocates blocks.
fn dirty_image() -> Vec<u8> {
    let base = {
        let mem = MemStorage::new();
        let opts = CreateOptions::new(8 * MIB).block_size(MIB as u32);
        let d = Disk::create_on(Arc::new(mem.clone()), &opts).expect("create");
        close_mem(d).expect("close");
        mem.snapshot()
    };
    // The last cut point that leaves a dirty log: its log holds the
    // flush's descriptors (BAT and bitmap updates), not only the empty
    // entry that opens a session.
    let mut last = None;
    for crash_at in 0..400 {
        let fault = Arc::new(FaultStorage::new(
            MemStorage::from_vec(base.clone()),
            crash_at,
            Cut::Clean,
        ));
        let r = (|| -> ckpt::Result<()> {
            let d = Disk::open_storage(fault.clone(), OpenMode::ReadWrite)?;
            d.write_at(&pattern(4096, 5), 0)?;
            d.write_at(&pattern(4096, 6), 6 * MIB)?;
            d.trim(MIB, MIB)?;
            d.flush()?;
            std::mem::forget(d);
            Ok(())
        })();
        if r.is_ok() {
            break;
        }
        let bytes = fault.inner().snapshot();
        let s = Arc::new(MemStorage::from_vec(bytes.clone()));
        if Disk::open_storage(s, OpenMode::ReadOnly).is_ok_and(|d| d.info().log_dirty) {
            last = Some(bytes);
        }
    }
    last.expect("no cut point left a dirty log")
}

/// Every kind of valid image, built once per process.
pub fn images() -> &'static [Image] {
    static IMAGES: OnceLock<Vec<Image>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        vec![
            Image {
                name: "dynamic",
                layers: vec![dynamic_image(512, false)],
            },
            Image {
                name: "fixed",
                layers: vec![dynamic_image(512, true)],
            },
            Image {
                name: "dynamic-4k",
                layers: vec![dynamic_image(4096, false)],
            },
            Image {
                name: "differencing",
                layers: differencing_image(),
            },
            Image {
                name: "dirty-log",
                layers: vec![dirty_image()],
            },
        ]
    })
}

/// Where the structures of one file are (read from its bytes, leniently).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Current header's log offset and length.
    pub log: (u64, u64),
    /// BAT region offset and length.
    pub bat: (u64, u64),
    /// Metadata region offset.
    pub meta: u64,
    /// Metadata items: offset (in the file) and length.
    pub items: Vec<(u64, u64)>,
    /// The parent locator item, if any.
    pub locator: Option<(u64, u64)>,
    /// Payload blocks, sector-bitmap chunk ratio and BAT entries in use.
    pub bat_geometry: (u64, u64, u64),
}

const HEADERS: [usize; 2] = [64 * 1024, 128 * 1024];
const REGIONS: [usize; 2] = [192 * 1024, 256 * 1024];
const BAT_GUID: [u8; 16] = guid_le(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const META_GUID: [u8; 16] = guid_le(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const FILE_PARAMS_GUID: [u8; 16] = guid_le(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VIRTUAL_SIZE_GUID: [u8; 16] = guid_le(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const LSS_GUID: [u8; 16] = guid_le(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const LOCATOR_GUID: [u8; 16] = guid_le(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);

const fn guid_le(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Read the layout of a (valid) file.
pub fn layout(b: &[u8]) -> Layout {
    let mut l = Layout::default();
    if b.len() < MIB as usize {
        return l;
    }
    let h = if le64(b, HEADERS[0] + 8) >= le64(b, HEADERS[1] + 8) {
        HEADERS[0]
    } else {
        HEADERS[1]
    };
    l.log = (le64(b, h + 72), le32(b, h + 68) as u64);
    let r = REGIONS[0];
    let count = (le32(b, r + 8) as usize).min(2047);
    for i in 0..count {
        let e = r + 16 + 32 * i;
        let off = le64(b, e + 16);
        let len = le32(b, e + 24) as u64;
        if b[e..e + 16] == BAT_GUID {
            l.bat = (off, len);
        } else if b[e..e + 16] == META_GUID {
            l.meta = off;
        }
    }
    let m = l.meta as usize;
    if m == 0 || m.checked_add(64 * 1024).is_none_or(|e| e > b.len()) {
        return l;
    }
    let n = (le16(b, m + 10) as usize).min(2047);
    let (mut bs, mut vs, mut lss, mut parent) = (0u64, 0u64, 0u64, false);
    for i in 0..n {
        let e = m + 32 + 32 * i;
        let off = l.meta.saturating_add(le32(b, e + 16) as u64);
        let len = le32(b, e + 20) as u64;
        l.items.push((off, len));
        if b[e..e + 16] == LOCATOR_GUID {
            l.locator = Some((off, len));
        }
        let o = off as usize;
        if o.checked_add(8).is_some_and(|e| e <= b.len()) {
            if b[e..e + 16] == FILE_PARAMS_GUID {
                bs = le32(b, o) as u64;
                parent = le32(b, o + 4) & 2 != 0;
            } else if b[e..e + 16] == VIRTUAL_SIZE_GUID {
                vs = le64(b, o);
            } else if b[e..e + 16] == LSS_GUID {
                lss = le32(b, o) as u64;
            }
        }
    }
    if bs > 0 && lss > 0 {
        let blocks = vs.div_ceil(bs);
        let ratio = ((1u64 << 23) * lss / bs).max(1);
        let total = if parent {
            blocks.div_ceil(ratio) * (ratio + 1)
        } else {
            blocks + blocks.saturating_sub(1) / ratio
        };
        l.bat_geometry = (blocks, ratio, total);
    }
    l
}

// ---------------------------------------------------------------------------
// Checksums.

fn crc_fix(b: &mut [u8], start: usize, len: usize, field: usize) {
    if start.checked_add(len).is_none_or(|e| e > b.len()) || field + 4 > len {
        return;
    }
    put(b, start + field, 4, 0);
    let c = crc32c::crc32c(&b[start..start + len]);
    put(b, start + field, 4, c as u64);
}

/// Recompute the header and region-table checksums.
pub fn fix_header_crcs(b: &mut [u8]) {
    for h in HEADERS {
        crc_fix(b, h, 4096, 4);
    }
}

/// Recompute the region-table checksums.
pub fn fix_region_crcs(b: &mut [u8]) {
    for r in REGIONS {
        crc_fix(b, r, 64 * 1024, 4);
    }
}

/// Recompute the checksum of every entry in the log that has an entry
/// signature and a plausible length; with `guid`, also stamp it into them.
pub fn fix_log_crcs(b: &mut [u8], log: (u64, u64), guid: Option<[u8; 16]>) {
    let (off, len) = log;
    let (Ok(off), Ok(len)) = (usize::try_from(off), usize::try_from(len)) else {
        return;
    };
    if off.checked_add(len).is_none_or(|e| e > b.len()) || len < 4096 {
        return;
    }
    let mut pos = 0usize;
    while pos + 4096 <= len {
        let e = off + pos;
        if le32(b, e) != 0x6567_6F6C {
            pos += 4096;
            continue;
        }
        if let Some(g) = guid {
            b[e + 32..e + 48].copy_from_slice(&g);
        }
        let el = le32(b, e + 8) as usize;
        if el == 0 || el % 4096 != 0 || pos + el > len {
            pos += 4096;
            continue;
        }
        crc_fix(b, e, el, 4);
        pos += el;
    }
}

// ---------------------------------------------------------------------------
// What every opened image goes through.

const READ_BUDGET: u64 = MIB;
/// The engine lets a log grow a file by LastFileOffset up to 1 GiB past
/// what the file justifies (`disk::replay::MAX_LOG_GROWTH`, sparse); more is
/// a violation.
const MAX_GROWTH: u64 = 1024 * MIB + 64 * MIB;

fn reads_of(d: &Disk, plan: &[(u64, usize)]) -> Vec<Result<Vec<u8>, String>> {
    plan.iter()
        .map(|&(off, len)| {
            let mut b = vec![0u8; len];
            d.read_at(&mut b, off).map(|_| b).map_err(|e| e.to_string())
        })
        .collect()
}

fn read_plan(d: &Disk, inp: &mut In) -> Vec<(u64, usize)> {
    let size = d.virtual_size();
    let mut plan = Vec::new();
    if size == 0 {
        return plan;
    }
    plan.push((0, size.min(128 * KIB) as usize));
    let mut budget = READ_BUDGET;
    let ext = if size <= 4096 * MIB {
        d.extents()
    } else {
        d.extents_in(0, 64 * MIB.min(size))
    };
    if let Ok(ext) = ext {
        for e in ext.iter().filter(|e| e.allocated).take(16) {
            let n = e.length.min(64 * KIB);
            if n <= budget {
                budget -= n;
                plan.push((e.offset, n as usize));
            }
        }
    }
    for _ in 0..4 {
        let off = inp.u64() % size;
        let n = (inp.u32() as u64 % (64 * KIB)).min(size - off).max(1);
        plan.push((off, n as usize));
    }
    plan.push((size - size.min(4096), size.min(4096) as usize));
    plan
}

const LOCATOR_VHDX: [u8; 16] = guid_le(
    0xB04A_EFB7,
    0xD19E,
    0x4A81,
    [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
);

/// What the spec says about a file, read independently of the engine.
struct Promises {
    /// The current header ([MS-VHDX] 2.2.2: valid signature and checksum,
    /// highest sequence number): sequence, DataWriteGuid, whether its log
    /// has entries to replay.
    header: Option<(u64, [u8; 16], bool, [u8; 16])>,
    /// The parent locator's type GUID.
    locator_type: Option<[u8; 16]>,
    /// A payload BAT entry (padding included) that says the block is in
    /// the file at an offset outside it (checked when the log is empty).
    bad_bat: Option<String>,
}

/// Whether region table 1 is one an implementation must use ([MS-VHDX]
/// 2.2.3: signature and checksum; its BAT at or past 1 MiB, 1 MiB aligned).
/// When it is not, the engine may use table 2, which `layout` does not read.
fn region_table1_usable(b: &[u8], bat_offset: u64) -> bool {
    let r = REGIONS[0];
    let Some(t) = b.get(r..r + 64 * 1024) else {
        return false;
    };
    let mut c = t.to_vec();
    put(&mut c, 4, 4, 0);
    le32(t, 0) == 0x6967_6572
        && crc32c::crc32c(&c) == le32(t, 4)
        && bat_offset >= MIB
        && bat_offset % MIB == 0
}

fn bad_bat_entry(b: &[u8]) -> Option<String> {
    let l = layout(b);
    let (blocks, ratio, total) = l.bat_geometry;
    let (off, len) = l.bat;
    if ratio == 0
        || total > len / 8
        || off.checked_add(len).is_none_or(|e| e > b.len() as u64)
        || !region_table1_usable(b, off)
    {
        return None;
    }
    let file_len = b.len() as u64;
    (0..total).find_map(|i| {
        if i % (ratio + 1) == ratio {
            return None;
        }
        let e = le64(b, (off + 8 * i) as usize);
        let at = e & 0xFFFF_FFFF_FFF0_0000;
        let block = i / (ratio + 1) * ratio + i % (ratio + 1);
        let padding = if block >= blocks { " (padding past the last block)" } else { "" };
        (matches!(e & 7, 6 | 7) && (at < MIB || at >= file_len)).then(|| {
            format!("BAT entry {i}{padding} = {e:#x} places a block outside the file ({file_len:#x} bytes)")
        })
    })
}

impl Promises {
    fn of(b: &[u8]) -> Promises {
        let header = HEADERS
            .iter()
            .filter(|&&h| b.len() >= h + 4096)
            .map(|&h| &b[h..h + 4096])
            .filter(|h| {
                let mut c = h.to_vec();
                put(&mut c, 4, 4, 0);
                le32(h, 0) == 0x6461_6568 && crc32c::crc32c(&c) == le32(h, 4)
            })
            .max_by_key(|h| le64(h, 8))
            .map(|h| {
                (
                    le64(h, 8),
                    h[32..48].try_into().unwrap(),
                    h[48..64].iter().any(|&x| x != 0),
                    h[16..32].try_into().unwrap(),
                )
            });
        let locator_type = layout(b).locator.and_then(|(off, _)| {
            let o = usize::try_from(off).ok()?;
            b.get(o..o.checked_add(16)?).map(|t| t.try_into().unwrap())
        });
        let log_empty = header.is_none_or(|h| !h.2);
        Promises {
            header,
            locator_type,
            bad_bat: if log_empty { bad_bat_entry(b) } else { None },
        }
    }
}

/// What a successful open promises about the file it opened.
fn spec_promises(p: &Promises, info: &ckpt::DiskInfo, depth: usize) -> Outcome {
    if let Some((seq, dwg, log, fwg)) = p.header {
        if info.data_write_guid.to_bytes_le() != dwg
            || info.file_write_guid.to_bytes_le() != fwg
            || (log && !info.log_dirty)
        {
            return Err(format!(
                "the open did not use the current header (sequence {seq}, log {}): it reports DataWriteGuid {}, FileWriteGuid {} and log_dirty {}",
                if log { "to replay" } else { "empty" },
                info.data_write_guid,
                info.file_write_guid,
                info.log_dirty
            ));
        }
    }
    if let Some(b) = &p.bad_bat {
        return Err(format!("the open accepted a file whose {b}"));
    }
    if depth > 1 {
        if let Some(t) = p.locator_type.filter(|t| *t != LOCATOR_VHDX) {
            return Err(format!(
                "a differencing disk whose parent locator type is {t:02x?}, not the VHDX type, opened"
            ));
        }
    }
    Ok(())
}

static SKIP_KNOWN: AtomicBool = AtomicBool::new(false);

/// For a campaign only (the fuzz targets call it when the environment
/// variable `CKPT_FUZZ_SKIP_KNOWN` is set): skip inputs that trigger an
/// already known, not yet fixed bug, so that the campaign finds new ones
/// instead of the same crash again. The regression replay never skips.
pub fn skip_known_bugs_from_env() {
    if std::env::var_os("CKPT_FUZZ_SKIP_KNOWN").is_some() {
        SKIP_KNOWN.store(true, Ordering::Relaxed);
    }
}

/// In a campaign that skips known bugs, the violations that are known
/// bugs of issue 8 end the input quietly: bug 6 (the open did not use the
/// current header), bug 8 (unknown locator type), F2 (log replay grows the
/// file), bug 11 (the current state under a hidden checkpoint), bug 2 (a
/// crash inside a multi-entry flush).
fn known(v: String) -> Outcome {
    const KNOWN: [&str; 6] = [
        "did not use the current header",
        // bug 6 again: the older header used, the current one overwritten
        "after a write session the current header's sequence number",
        "parent locator type",
        "read-write open: the engine tried to grow",
        // bug 11: the current state hangs under a deleted (hidden) checkpoint
        "hangs under Some(\"(hidden)",
        // bug 2: a crash inside a flush of several log entries
        "is PARTIALLY_PRESENT but its sector bitmap block is not present",
    ];
    if SKIP_KNOWN.load(Ordering::Relaxed) && KNOWN.iter().any(|k| v.contains(k)) {
        return Ok(());
    }
    Err(v)
}

/// Whether a file shows the trigger of a known bug (issue 8): a header
/// with LogLength 0 (bug 3), a sequence number near u64::MAX (F5), a
/// non-zero BAT entry past the last payload block (F1).
fn known_trigger(b: &[u8]) -> bool {
    if b.len() < MIB as usize {
        return false;
    }
    for h in HEADERS {
        if le32(b, h) == 0x6461_6568
            && (le32(b, h + 68) == 0 || le64(b, h + 8) > u64::MAX - (1 << 20))
        {
            return true;
        }
    }
    let l = layout(b);
    let (blocks, ratio, total) = l.bat_geometry;
    let (off, len) = l.bat;
    if ratio == 0 || total > len / 8 || off.checked_add(len).is_none_or(|e| e > b.len() as u64) {
        return false;
    }
    if bad_bat_entry(b).is_some() {
        return true;
    }
    (0..total).any(|i| {
        let in_chunk = i % (ratio + 1);
        let block = i / (ratio + 1) * ratio + in_chunk;
        in_chunk != ratio && block >= blocks && le64(b, (off + 8 * i) as usize) != 0
    })
}

/// Open `layers` (top first) read-only and read-write, read them, write
/// to the read-write copy, reopen. Returns the violations found.
pub fn exercise(layers: Vec<Vec<u8>>, inp: &mut In) -> Outcome {
    exercise_inner(layers, inp).or_else(known)
}

fn exercise_inner(mut layers: Vec<Vec<u8>>, inp: &mut In) -> Outcome {
    if layers.is_empty() {
        return Ok(());
    }
    if SKIP_KNOWN.load(Ordering::Relaxed) && layers.iter().any(|b| known_trigger(b)) {
        return Ok(());
    }
    let top = std::mem::take(&mut layers[0]);
    let promises = Promises::of(&top);
    let top_len = top.len() as u64;
    // One read-only storage per layer, shared by every read-only use.
    let rw = Watch::rw(
        MemStorage::from_vec(top.clone()),
        top_len.saturating_add(MAX_GROWTH),
    );
    let ro_top = Watch::ro(top);
    let parents: Vec<Arc<Watch>> = layers.drain(1..).map(Watch::ro).collect();
    let complaints = |what: &str| -> Outcome {
        if let Some(c) = ro_top.complaint(what) {
            return Err(c);
        }
        for (i, w) in parents.iter().enumerate() {
            if let Some(c) = w.complaint(&format!("{what} (parent layer {})", i + 1)) {
                return Err(c);
            }
        }
        Ok(())
    };
    // The structural check must not write, whatever the file.
    // A file the check passes must also be writable.
    let check_ok = ckpt::check_storage(ro_top.clone()).is_ok();
    complaints("check")?;
    let chain_with = |top: Arc<dyn Storage>| -> Vec<Arc<dyn Storage>> {
        let mut c = vec![top];
        c.extend(parents.iter().map(|w| w.clone() as Arc<dyn Storage>));
        c
    };
    // Read-only open.
    let (plan, ro_reads) =
        match Disk::open_storage_chain(chain_with(ro_top.clone()), OpenMode::ReadOnly) {
            Ok(d) => {
                let info = d.info();
                let _ = format!("{info:?}");
                spec_promises(&promises, &info, d.depth())?;
                let plan = read_plan(&d, inp);
                let reads = reads_of(&d, &plan);
                drop(d);
                (Some(plan), Some(reads))
            }
            Err(e) => {
                let _ = e.to_string();
                (None, None)
            }
        };
    complaints("read-only open")?;
    // Read-write open of a copy; parents stay read-only.
    let opened = Disk::open_storage_chain(chain_with(rw.clone()), OpenMode::ReadWrite);
    if let Some(c) = rw.complaint("read-write open") {
        return Err(c);
    }
    let d = match opened {
        Ok(d) => d,
        Err(_) => return complaints("read-write open"),
    };
    let plan = plan.unwrap_or_else(|| read_plan(&d, inp));
    let rw_reads = reads_of(&d, &plan);
    if let Some(ro_reads) = &ro_reads {
        for (i, (a, b)) in ro_reads.iter().zip(&rw_reads).enumerate() {
            if let (Ok(a), Ok(b)) = (a, b) {
                if a != b {
                    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
                    return Err(format!(
                        "a read-only open and a read-write open read different bytes at virtual offset {:#x}",
                        plan[i].0 + at as u64
                    ));
                }
            }
        }
    }
    // A few writes, a flush, a close and a reopen.
    let size = d.virtual_size();
    let small_blocks = d.block_size() as u64 <= 32 * MIB;
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    if size > 0 && small_blocks {
        for k in 0..3u64 {
            let off = inp.u64() % size;
            let n = (1 + inp.u16() as u64 % (64 * KIB)).min(size - off);
            let data = pattern(n as usize, 100 + k);
            if writes
                .iter()
                .any(|(o, b)| off < o + b.len() as u64 && *o < off + n)
            {
                continue;
            }
            if let Err(e) = d.write_at(&data, off) {
                if let Some(c) = rw.complaint("writes through a read-write open") {
                    return Err(c);
                }
                if check_ok {
                    return Err(format!(
                        "the check reports no problems, but a write of {n} bytes at {off:#x} fails: {e}"
                    ));
                }
                break;
            }
            writes.push((off, data));
        }
    }
    let done = d.flush().and_then(|_| d.close());
    complaints("read-write open")?;
    if let Some(c) = rw.complaint("writes through a read-write open") {
        return Err(c);
    }
    if let (Err(e), true) = (&done, check_ok) {
        return Err(format!(
            "the check reports no problems, but flush and close after {} writes fail: {e}",
            writes.len()
        ));
    }
    let flushed = done.is_ok();
    // A session that wrote must leave a newer current header.
    if let (false, Some((before, ..))) = (writes.is_empty() || !flushed, promises.header) {
        let after = Promises::of(&rw.bytes()).header.map(|h| h.0);
        if after.is_none_or(|a| a <= before) {
            return Err(format!(
                "after a write session the current header's sequence number is {after:?}, it was {before}"
            ));
        }
    }
    if !flushed {
        return Ok(());
    }
    let d = Disk::open_storage_chain(chain_with(rw.clone()), OpenMode::ReadOnly).map_err(|e| {
        format!("a file the engine opened, wrote ({} writes) and closed without error no longer opens: {e}", writes.len())
    })?;
    for (off, data) in &writes {
        let mut b = vec![0u8; data.len()];
        d.read_at(&mut b, *off)
            .map_err(|e| format!("reading back a write at {off:#x}: {e}"))?;
        if &b != data {
            let at = b.iter().zip(data).position(|(x, y)| x != y).unwrap_or(0);
            return Err(format!(
                "a write of {} bytes at virtual offset {off:#x} reads back differently at {:#x} after close and reopen",
                data.len(),
                off + at as u64
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Target (a): arbitrary bytes.

/// Magic that makes [`decode_image`] read a sparse encoding.
pub const SPARSE_MAGIC: &[u8; 4] = b"SPRS";
const MAX_IMAGE: u64 = 64 * MIB;

/// The file an `open_bytes` input stands for: the bytes themselves, or,
/// after [`SPARSE_MAGIC`], `u32 length` then records `u32 offset, u16
/// length, bytes` (so that small inputs can describe multi-MiB files).
pub fn decode_image(data: &[u8]) -> Vec<u8> {
    if !data.starts_with(SPARSE_MAGIC) {
        return data.to_vec();
    }
    let mut inp = In::new(&data[4..]);
    let len = (inp.u32() as u64).min(MAX_IMAGE) as usize;
    let mut img = vec![0u8; len];
    while !inp.is_empty() {
        let off = inp.u32() as usize;
        let n = inp.u16() as usize;
        let b = inp.bytes(n);
        if off < len {
            let m = b.len().min(len - off);
            img[off..off + m].copy_from_slice(&b[..m]);
        }
    }
    img
}

/// The sparse encoding of `img` (its non-zero 4 KiB sectors).
pub fn encode_image(img: &[u8]) -> Vec<u8> {
    let mut out = SPARSE_MAGIC.to_vec();
    out.extend_from_slice(&(img.len() as u32).to_le_bytes());
    for (i, s) in img.chunks(4096).enumerate() {
        if s.iter().any(|&b| b != 0) {
            let last = s.iter().rposition(|&b| b != 0).unwrap_or(0) + 1;
            out.extend_from_slice(&((i * 4096) as u32).to_le_bytes());
            out.extend_from_slice(&(last as u16).to_le_bytes());
            out.extend_from_slice(&s[..last]);
        }
    }
    out
}

/// Target (a): open and read a file made of arbitrary bytes.
pub fn open_bytes(data: &[u8]) -> Outcome {
    let img = decode_image(data);
    // Trailing input bytes steer the reads and writes.
    let tail = &data[data.len().saturating_sub(64)..];
    exercise(vec![img], &mut In::new(tail))
}

// ---------------------------------------------------------------------------
// Target (b): structure-aware mutations of valid images.

/// Apply one structure-aware mutation read from `inp` to `b`.
fn mutate(b: &mut [u8], l: &Layout, inp: &mut In) {
    let file_len = b.len() as u64;
    let field = |b: &mut [u8], inp: &mut In, at: usize, width: usize| {
        if at.checked_add(width).is_none_or(|e| e > b.len()) {
            return;
        }
        let mut a = [0u8; 8];
        a[..width].copy_from_slice(&b[at..at + width]);
        let old = u64::from_le_bytes(a);
        let v = inp.value(width, old, file_len);
        put(b, at, width, v);
    };
    match inp.u8() % 10 {
        0 => {
            // Header fields: sequence, GUIDs, versions, log length and offset.
            let h = HEADERS[inp.below(2) as usize];
            const F: [(usize, usize); 10] = [
                (8, 8),
                (16, 8),
                (32, 8),
                (48, 8),
                (56, 8),
                (64, 2),
                (66, 2),
                (68, 4),
                (72, 8),
                (0, 4),
            ];
            let (o, w) = F[inp.below(F.len() as u64) as usize];
            field(b, inp, h + o, w);
        }
        1 => {
            // Region table: count or an entry's offset / length / required flag.
            let r = REGIONS[inp.below(2) as usize];
            let i = inp.below(4) as usize;
            const F: [(usize, usize); 5] = [(16, 8), (24, 4), (28, 4), (0, 8), (8, 8)];
            let (o, w) = F[inp.below(F.len() as u64) as usize];
            if inp.u8() % 4 == 0 {
                field(b, inp, r + 8, 4);
            } else {
                field(b, inp, r + 16 + 32 * i + o, w);
            }
        }
        2 => {
            // Metadata table: count or an entry's id / offset / length / flags.
            let m = l.meta as usize;
            let i = inp.below(8) as usize;
            const F: [(usize, usize); 5] = [(16, 4), (20, 4), (24, 4), (0, 8), (8, 8)];
            let (o, w) = F[inp.below(F.len() as u64) as usize];
            if inp.u8() % 4 == 0 {
                field(b, inp, m + 10, 2);
            } else {
                field(b, inp, m + 32 + 32 * i + o, w);
            }
        }
        3 => {
            // Metadata item contents (block size, flags, sizes, disk id, ...).
            if l.items.is_empty() {
                return;
            }
            let (off, len) = l.items[inp.below(l.items.len() as u64) as usize];
            let w = [1usize, 2, 4, 8][inp.below(4) as usize];
            let at = off + inp.below(len.max(1));
            field(b, inp, at as usize, w);
        }
        4 => {
            // Parent locator: type, count, key/value offsets and lengths, text.
            let Some((off, len)) = l.locator else {
                return;
            };
            let off = off as usize;
            match inp.below(4) {
                0 => {
                    let at = off + inp.below(16) as usize;
                    field(b, inp, at, 1)
                }
                1 => field(b, inp, off + 18, 2),
                2 => {
                    let i = inp.below(6) as usize;
                    let (o, w) = [(0, 4), (4, 4), (8, 2), (10, 2)][inp.below(4) as usize];
                    field(b, inp, off + 20 + 12 * i + o, w);
                }
                _ => {
                    let at = off + inp.below(len.max(1)) as usize;
                    field(b, inp, at, 2);
                }
            }
        }
        5 | 6 => {
            // A BAT entry (payload or sector bitmap, below or past the data blocks).
            let (off, len) = l.bat;
            let (blocks, ratio, total) = l.bat_geometry;
            let n = total.clamp(1, (len / 8).max(1));
            let i = match inp.u8() % 6 {
                0 => inp.below(16),
                1 => n - 1 - inp.below(n.min(4)),
                // Around the last payload block (and the padding after it).
                2 => (blocks + blocks / ratio.max(1)).saturating_sub(2) + inp.below(4),
                // The first sector-bitmap entry.
                3 => ratio,
                4 => inp.below(n),
                _ => inp.below((len / 8).max(1)),
            };
            let at = (off + 8 * i) as usize;
            if inp.bool() {
                field(b, inp, at, 8);
            } else {
                let state = inp.below(8);
                let mb = match inp.u8() % 4 {
                    0 => 0,
                    1 => file_len / MIB + inp.below(4),
                    2 => inp.below(file_len / MIB + 2),
                    _ => inp.u64() >> 20,
                };
                put(b, at, 8, state | (mb << 20));
            }
        }
        7 => {
            // The log: entry header and descriptor fields, data sector stamps.
            let (off, len) = l.log;
            if len < 4096 {
                return;
            }
            let sector = inp.below(len / 4096) * 4096;
            let at = match inp.below(3) {
                0 => {
                    let (o, w) = [(8, 4), (12, 4), (16, 8), (24, 4), (48, 8), (56, 8), (0, 4)]
                        [inp.below(7) as usize];
                    (off + o, w)
                }
                1 => {
                    let d = 64 + 32 * inp.below(4);
                    let (o, w) = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8)][inp.below(5) as usize];
                    (off + d + o, w)
                }
                _ => (off + sector + [0u64, 4, 4092][inp.below(3) as usize], 4),
            };
            field(b, inp, at.0 as usize, at.1);
        }
        8 => {
            // Raw bytes anywhere in the first structures or the file.
            let at = if inp.bool() {
                inp.below(file_len.min(2 * MIB))
            } else {
                inp.below(file_len)
            } as usize;
            let n = (inp.u8() % 16) as usize;
            let bytes = inp.bytes(n).to_vec();
            let m = bytes.len().min(b.len().saturating_sub(at));
            b[at..at + m].copy_from_slice(&bytes[..m]);
        }
        _ => {
            // Copy one header over the other, or swap the region tables.
            if inp.bool() {
                let (s, d) = if inp.bool() {
                    (HEADERS[0], HEADERS[1])
                } else {
                    (HEADERS[1], HEADERS[0])
                };
                b.copy_within(s..s + 4096, d);
            } else {
                let (s, d) = if inp.bool() {
                    (REGIONS[0], REGIONS[1])
                } else {
                    (REGIONS[1], REGIONS[0])
                };
                b.copy_within(s..s + 64 * 1024, d);
            }
        }
    }
}

/// Target (b): a valid image of each kind, mutated where its structures are.
pub fn structure(data: &[u8]) -> Outcome {
    let mut inp = In::new(data);
    let imgs = images();
    let img = &imgs[inp.below(imgs.len() as u64) as usize];
    let mut layers = img.layers.clone();
    let which = if layers.len() > 1 && inp.u8() % 4 == 0 {
        1
    } else {
        0
    };
    let fix = inp.u8();
    let count = 1 + inp.below(4);
    {
        let b = &mut layers[which];
        let l = layout(b);
        for _ in 0..count {
            mutate(b, &l, &mut inp);
        }
        // Truncate or extend, sometimes.
        if fix & 0x80 != 0 {
            let n = match inp.below(3) {
                0 => b.len() as u64 - inp.below(b.len() as u64 / 2),
                1 => b.len() as u64 + MIB * inp.below(4),
                _ => (b.len() as u64 / MIB).saturating_sub(inp.below(4)) * MIB,
            };
            b.resize(n as usize, 0);
        }
        // Fix the checksums with high probability, so that deeper checks run.
        if fix & 0x03 != 0x03 {
            fix_header_crcs(b);
        }
        if fix & 0x0C != 0x0C {
            fix_region_crcs(b);
        }
        if fix & 0x30 != 0x30 {
            let l2 = layout(b);
            fix_log_crcs(b, l.log, None);
            if l2.log != l.log {
                fix_log_crcs(b, l2.log, None);
            }
        }
    }
    exercise(layers, &mut inp)
}

// ---------------------------------------------------------------------------
// Target (c): log replay.

/// The GUID the `log_replay` target gives the header and the entries.
pub const LOG_GUID: [u8; 16] = *b"fuzz-log-guid-01";

/// Target (c): the dirty-log image with its log replaced by the input
/// (`flags` byte, then the log bytes), the header pointing at it, the
/// entries' GUID and checksums fixed up (unless the flags say not to).
pub fn log_replay(data: &[u8]) -> Outcome {
    let mut inp = In::new(data);
    let flags = inp.u8();
    let steer = inp.bytes(32);
    let log_bytes = inp.rest();
    let img = &images()[4];
    let mut b = img.layers[0].clone();
    let l = layout(&b);
    let (off, len) = (l.log.0 as usize, l.log.1 as usize);
    b[off..off + len].fill(0);
    let n = log_bytes.len().min(len);
    b[off..off + n].copy_from_slice(&log_bytes[..n]);
    for h in HEADERS {
        b[h + 48..h + 64].copy_from_slice(&LOG_GUID);
    }
    fix_header_crcs(&mut b);
    if flags & 1 == 0 {
        fix_log_crcs(&mut b, l.log, (flags & 2 == 0).then_some(LOG_GUID));
    }
    exercise(vec![b], &mut In::new(steer))
}

/// Seed for [`log_replay`]: the dirty image's own log (trailing zeros cut).
pub fn log_replay_seed() -> Vec<u8> {
    let b = &images()[4].layers[0];
    let l = layout(b);
    let log = &b[l.log.0 as usize..(l.log.0 + l.log.1) as usize];
    let end = log.iter().rposition(|&x| x != 0).map_or(0, |p| p + 1);
    let mut out = vec![0u8];
    out.extend_from_slice(&[0u8; 32]);
    out.extend_from_slice(&log[..end]);
    out
}

// ---------------------------------------------------------------------------
// Target (d): operations against a byte model, on storage that crashes.

const OPS_SIZE: u64 = 4 * MIB;
const MAX_OPS: usize = 24;

struct Model {
    /// What the disk must read now.
    now: Vec<u8>,
    /// What it read at the last successful flush or close.
    durable: Vec<u8>,
    /// Per 512-byte sector written since then: every content it had.
    pending: HashMap<u64, Vec<Vec<u8>>>,
}

impl Model {
    fn apply(&mut self, off: u64, data: Option<&[u8]>, len: u64) {
        let (s, e) = (off as usize, (off + len) as usize);
        match data {
            Some(d) => self.now[s..e].copy_from_slice(d),
            None => self.now[s..e].fill(0),
        }
        for sec in off / 512..(off + len).div_ceil(512) {
            let a = (sec * 512) as usize;
            self.pending
                .entry(sec)
                .or_default()
                .push(self.now[a..a + 512].to_vec());
        }
    }
    fn durable_now(&mut self) {
        self.durable = self.now.clone();
        self.pending.clear();
    }
}

fn read_all(d: &Disk) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut b, 0).map_err(|e| format!("read: {e}"))?;
    Ok(b)
}

/// After a crash: `got` must hold, per sector, the durable content or one
/// written since (byte by byte for a torn write).
fn check_crashed(m: &Model, got: &[u8], torn: bool, ctx: &str) -> Outcome {
    for (sec, (g, d)) in got.chunks(512).zip(m.durable.chunks(512)).enumerate() {
        if g == d {
            continue;
        }
        let cands = m.pending.get(&(sec as u64));
        let ok = cands.is_some_and(|c| {
            c.iter().any(|x| x == g)
                || (torn
                    && g.iter()
                        .enumerate()
                        .all(|(i, y)| *y == d[i] || c.iter().any(|x| x[i] == *y)))
        });
        if !ok {
            return Err(format!(
                "{ctx}: after the crash, sector {sec} (offset {:#x}) holds neither its flushed content nor one written since ({} candidates)",
                sec * 512,
                cands.map_or(0, |c| c.len())
            ));
        }
    }
    Ok(())
}

fn open_chain_of(layers: &[MemStorage], mode: OpenMode) -> ckpt::Result<Disk> {
    Disk::open_storage_chain(
        layers
            .iter()
            .map(|m| Arc::new(m.clone()) as Arc<dyn Storage>)
            .collect(),
        mode,
    )
}

/// Verify the state left by a crash: the surviving bytes open (read-only,
/// then read-write), hold what was flushed, and agree between the two opens.
fn verify_crash(m: &Model, layers: &[MemStorage], torn: bool, ctx: &str) -> Outcome {
    let snap: Vec<MemStorage> = layers
        .iter()
        .map(|l| MemStorage::from_vec(l.snapshot()))
        .collect();
    let ro = open_chain_of(&snap, OpenMode::ReadOnly)
        .map_err(|e| format!("{ctx}: after the crash the disk does not open read-only: {e}"))?;
    let a = read_all(&ro)?;
    drop(ro);
    check_crashed(m, &a, torn, &format!("{ctx} (read-only open)"))?;
    let rw = open_chain_of(&snap, OpenMode::ReadWrite)
        .map_err(|e| format!("{ctx}: after the crash the disk does not open read-write: {e}"))?;
    let b = read_all(&rw)?;
    if a != b {
        let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0);
        return Err(format!(
            "{ctx}: after the crash a read-only and a read-write open differ at {at:#x}"
        ));
    }
    rw.close()
        .map_err(|e| format!("{ctx}: closing the recovered disk: {e}"))?;
    let again = open_chain_of(&snap, OpenMode::ReadOnly)
        .map_err(|e| format!("{ctx}: the recovered disk does not reopen: {e}"))?;
    if read_all(&again)? != a {
        return Err(format!("{ctx}: the recovered disk changed after close"));
    }
    Ok(())
}

/// Target (d): write, trim, flush, reopen, create a child, flatten the
/// chain into a new base disk — on storage that crashes after a countdown
/// (clean or torn); after the crash the surviving bytes are checked.
pub fn disk_ops(data: &[u8]) -> Outcome {
    if data.first().is_some_and(|b| b & 0xC0 == 0xC0) {
        return big_flush(&data[1..]);
    }
    let mut inp = In::new(data);
    let lss = if inp.bool() { 4096u32 } else { 512 };
    let fixed = inp.u8() % 4 == 0;
    let torn = inp.bool();
    let cut = if torn { Cut::Torn } else { Cut::Clean };
    let crash_raw = inp.u16() as u64;
    let mut budget = if crash_raw >= 0xF000 {
        u64::MAX
    } else {
        crash_raw % 600
    };
    let opts = CreateOptions::new(OPS_SIZE)
        .block_size(MIB as u32)
        .logical_sector_size(lss)
        .fixed(fixed);
    let base = MemStorage::new();
    close_mem(Disk::create_on(Arc::new(base.clone()), &opts).map_err(|e| e.to_string())?)?;
    let mut layers: Vec<MemStorage> = vec![base];
    let mut m = Model {
        now: vec![0u8; OPS_SIZE as usize],
        durable: vec![0u8; OPS_SIZE as usize],
        pending: HashMap::new(),
    };
    let open = |layers: &[MemStorage], budget: u64| -> ckpt::Result<(Disk, Arc<FaultStorage>)> {
        let f = Arc::new(FaultStorage::new(layers[0].clone(), budget, cut));
        let mut chain: Vec<Arc<dyn Storage>> = vec![f.clone()];
        chain.extend(
            layers[1..]
                .iter()
                .map(|s| Arc::new(s.clone()) as Arc<dyn Storage>),
        );
        Ok((Disk::open_storage_chain(chain, OpenMode::ReadWrite)?, f))
    };
    let (mut disk, mut fault) = open(&layers, budget).map_err(|e| format!("first open: {e}"))?;
    let mut log = Vec::new();
    for step in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8() % 10;
        let mut off = inp.below(OPS_SIZE);
        let mut len = 1 + inp.below(64 * KIB);
        match inp.u8() % 4 {
            0 => {
                off -= off % lss as u64;
                len = len.div_ceil(lss as u64) * lss as u64;
            }
            1 => {
                off -= off % MIB;
                len = MIB;
            }
            _ => {}
        }
        len = len.min(OPS_SIZE - off);
        log.push(format!("{op}@{off:#x}+{len:#x}"));
        let ctx =
            format!("step {step} ops {log:?} crash_at {budget} {cut:?} lss {lss} fixed {fixed}");
        // Returns Err(e) when the operation failed.
        let r: ckpt::Result<()> = match op {
            0..=3 => {
                let data = pattern(len as usize, step as u64 + 7);
                m.apply(off, Some(&data), len);
                disk.write_at(&data, off)
            }
            4 => {
                m.apply(off, None, len);
                disk.trim(off, len)
            }
            5 | 6 => disk.flush().map(|_| m.durable_now()),
            7 => {
                // Close and reopen.
                match disk.close() {
                    Ok(()) => {
                        m.durable_now();
                        budget = budget.saturating_sub(fault.events());
                        match open(&layers, budget) {
                            Ok((d, f)) => {
                                disk = d;
                                fault = f;
                                Ok(())
                            }
                            Err(e) => {
                                return Err(format!("{ctx}: reopen after a clean close: {e}"))
                            }
                        }
                    }
                    Err(e) => {
                        // The disk is gone; verify what is left.
                        return finish_crash(&m, &layers, &fault, torn, &ctx, e);
                    }
                }
            }
            8 => {
                // Close, then give the chain a new child.
                if layers.len() >= 4 {
                    continue;
                }
                match disk.close() {
                    Ok(()) => m.durable_now(),
                    Err(e) => return finish_crash(&m, &layers, &fault, torn, &ctx, e),
                }
                budget = budget.saturating_sub(fault.events());
                let child = MemStorage::new();
                let cf = Arc::new(FaultStorage::new(child.clone(), budget, cut));
                let made = open_chain_of(&layers, OpenMode::ReadOnly).and_then(|p| {
                    Disk::create_child_on(
                        cf.clone(),
                        &p,
                        &ChildOptions {
                            block_size: MIB as u32,
                            log_size: MIB as u32,
                        },
                    )
                });
                budget = budget.saturating_sub(cf.events());
                if let Err(e) = made {
                    if cf.crashed() {
                        // A child cut while being made: the old chain must be intact.
                        return verify_crash(
                            &m,
                            &layers,
                            torn,
                            &format!("{ctx} (crash creating a child)"),
                        );
                    }
                    return Err(format!("{ctx}: create child: {e}"));
                }
                layers.insert(0, child);
                match open(&layers, budget) {
                    Ok((d, f)) => {
                        disk = d;
                        fault = f;
                        Ok(())
                    }
                    Err(e) => return Err(format!("{ctx}: opening a new child: {e}")),
                }
            }
            _ => {
                // Close, then flatten the chain into a new base disk.
                match disk.close() {
                    Ok(()) => m.durable_now(),
                    Err(e) => return finish_crash(&m, &layers, &fault, torn, &ctx, e),
                }
                budget = budget.saturating_sub(fault.events());
                let nb = MemStorage::new();
                let nf = Arc::new(FaultStorage::new(nb.clone(), budget, cut));
                let made = (|| -> ckpt::Result<()> {
                    let src = open_chain_of(&layers, OpenMode::ReadOnly)?;
                    let dst = Disk::create_on(nf.clone(), &opts)?;
                    src.copy_to(&dst, None)?;
                    dst.close()
                })();
                budget = budget.saturating_sub(nf.events());
                if let Err(e) = made {
                    if nf.crashed() {
                        return verify_crash(
                            &m,
                            &layers,
                            torn,
                            &format!("{ctx} (crash flattening)"),
                        );
                    }
                    return Err(format!("{ctx}: flatten: {e}"));
                }
                let flat = open_chain_of(std::slice::from_ref(&nb), OpenMode::ReadOnly)
                    .and_then(|d| {
                        read_all(&d).map_err(|e| {
                            Error::corrupt(ckpt::Structure::Layout, None, ckpt::Reason::Invalid(e))
                        })
                    })
                    .map_err(|e| format!("{ctx}: reading the flattened disk: {e}"))?;
                if flat != m.now {
                    return Err(format!("{ctx}: the flattened disk differs from the chain"));
                }
                layers = vec![nb];
                match open(&layers, budget) {
                    Ok((d, f)) => {
                        disk = d;
                        fault = f;
                        Ok(())
                    }
                    Err(e) => return Err(format!("{ctx}: opening the flattened disk: {e}")),
                }
            }
        };
        if let Err(e) = r {
            return finish_crash(&m, &layers, &fault, torn, &ctx, e);
        }
        // A read of a range against the model.
        let ro = inp.below(OPS_SIZE);
        let rl = (1 + inp.below(128 * KIB)).min(OPS_SIZE - ro);
        let mut b = vec![0u8; rl as usize];
        if let Err(e) = disk.read_at(&mut b, ro) {
            return Err(format!("{ctx}: read at {ro:#x}+{rl:#x}: {e}"));
        }
        if b[..] != m.now[ro as usize..(ro + rl) as usize] {
            return Err(format!(
                "{ctx}: read at {ro:#x}+{rl:#x} differs from the model"
            ));
        }
    }
    let ctx = format!("end, ops {log:?} crash_at {budget} {cut:?} lss {lss} fixed {fixed}");
    match disk.close() {
        Ok(()) => m.durable_now(),
        Err(e) => return finish_crash(&m, &layers, &fault, torn, &ctx, e),
    }
    let d =
        open_chain_of(&layers, OpenMode::ReadOnly).map_err(|e| format!("{ctx}: reopen: {e}"))?;
    if read_all(&d)? != m.now {
        return Err(format!("{ctx}: the closed disk differs from the model"));
    }
    Ok(())
}

const BIG_SIZE: u64 = 128 << 30;

/// Part of `disk_ops` (first byte >= 0xC0): flushes too big for one log
/// entry. A 128 GiB parent with data here and there, a differencing child
/// on storage that crashes after a countdown, then writes anywhere, trims
/// up to the whole disk (a guest's fstrim) and flushes: one flush can
/// change hundreds of BAT and bitmap sectors. The model follows only the
/// sectors ever written or probed; after the crash the chain must open and
/// each of them hold its flushed content or one written since.
pub fn big_flush(data: &[u8]) -> Outcome {
    let mut inp = In::new(data);
    let torn = inp.bool();
    let cut = if torn { Cut::Torn } else { Cut::Clean };
    let crash_at = inp.u16() as u64 % 2000;
    let parent = MemStorage::new();
    let opts = CreateOptions::new(BIG_SIZE).block_size(MIB as u32);
    let mut probes: BTreeMap<u64, (Vec<u8>, Vec<Vec<u8>>)> = BTreeMap::new();
    {
        let d = Disk::create_on(Arc::new(parent.clone()), &opts).map_err(|e| e.to_string())?;
        for k in 0..8u64 {
            let off = (inp.u64() % (BIG_SIZE / 512)) * 512;
            let b = pattern(512, 1000 + k);
            d.write_at(&b, off).map_err(|e| e.to_string())?;
            probes.insert(off / 512, (b, Vec::new()));
        }
        close_mem(d)?;
    }
    let child = MemStorage::new();
    {
        let p = Disk::open_storage(Arc::new(parent.clone()), OpenMode::ReadOnly)
            .map_err(|e| e.to_string())?;
        let co = ChildOptions {
            block_size: MIB as u32,
            log_size: MIB as u32,
        };
        Disk::create_child_on(Arc::new(child.clone()), &p, &co).map_err(|e| e.to_string())?;
    }
    let fault = Arc::new(FaultStorage::new(child.clone(), crash_at, cut));
    let chain: Vec<Arc<dyn Storage>> = vec![fault.clone(), Arc::new(parent.clone())];
    let disk = Disk::open_storage_chain(chain, OpenMode::ReadWrite).map_err(|e| e.to_string())?;
    let mut log = Vec::new();
    let mut crashed = None;
    for step in 0..12u64 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8() % 6;
        let r = match op {
            0 | 1 => {
                let sec = inp.u64() % (BIG_SIZE / 512);
                let n = 1 + inp.below(16);
                let n = n.min(BIG_SIZE / 512 - sec);
                let b = pattern((n * 512) as usize, 2000 + step);
                log.push(format!("write {:#x}+{:#x}", sec * 512, n * 512));
                for i in 0..n {
                    let e = probes
                        .entry(sec + i)
                        .or_insert_with(|| (vec![0u8; 512], Vec::new()));
                    e.1.push(b[(i * 512) as usize..((i + 1) * 512) as usize].to_vec());
                }
                disk.write_at(&b, sec * 512)
            }
            2 | 3 => {
                // Whole blocks mostly: the whole disk, from a block to the
                // end, from the start to a block.
                let (off, len) = match inp.u8() % 4 {
                    0 => (0, BIG_SIZE),
                    1 => {
                        let o = inp.below(BIG_SIZE / MIB) * MIB;
                        (o, BIG_SIZE - o)
                    }
                    2 => (0, inp.below(BIG_SIZE / MIB) * MIB),
                    _ => {
                        let o = inp.below(BIG_SIZE / 512) * 512;
                        (
                            o,
                            (1 + inp.below(4 * MIB / 512)).min(BIG_SIZE / 512 - o / 512) * 512,
                        )
                    }
                };
                log.push(format!("trim {off:#x}+{len:#x}"));
                for (_, (_, c)) in probes.range_mut(off / 512..(off + len) / 512) {
                    c.push(vec![0u8; 512]);
                }
                disk.trim(off, len)
            }
            _ => {
                log.push("flush".into());
                disk.flush().map(|_| {
                    for (d, c) in probes.values_mut() {
                        if let Some(last) = c.pop() {
                            *d = last;
                        }
                        c.clear();
                    }
                })
            }
        };
        if let Err(e) = r {
            if !fault.crashed() {
                return Err(format!("{log:?}: failed before the crash point: {e}"));
            }
            crashed = Some(e);
            break;
        }
    }
    let ctx = format!("big flush {log:?} crash_at {crash_at} {cut:?}");
    if crashed.is_none() {
        match disk.close() {
            Ok(()) => {
                for (d, c) in probes.values_mut() {
                    if let Some(last) = c.pop() {
                        *d = last;
                    }
                    c.clear();
                }
            }
            Err(e) if fault.crashed() => crashed = Some(e),
            Err(e) => return Err(format!("{ctx}: close: {e}")),
        }
    } else {
        drop(disk);
    }
    let layers = [MemStorage::from_vec(child.snapshot()), parent];
    for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
        let d = open_chain_of(&layers, mode).map_err(|e| {
            format!("{ctx}: after the crash ({crashed:?}) the chain does not open {mode:?}: {e}")
        })?;
        for (sec, (dur, cands)) in &probes {
            let mut g = vec![0u8; 512];
            d.read_at(&mut g, sec * 512)
                .map_err(|e| format!("{ctx}: read sector {sec}: {e}"))?;
            let ok = &g == dur
                || cands.iter().any(|c| c == &g)
                || (torn
                    && g.iter()
                        .enumerate()
                        .all(|(i, y)| *y == dur[i] || cands.iter().any(|c| c[i] == *y)));
            if !ok {
                return Err(format!(
                    "{ctx}: {mode:?} open after the crash: sector {sec} (offset {:#x}) holds neither its flushed content nor one written since",
                    sec * 512
                ));
            }
        }
        if mode == OpenMode::ReadWrite {
            d.close()
                .map_err(|e| format!("{ctx}: closing the recovered chain: {e}"))?;
        }
    }
    Ok(())
}

/// A `disk_ops` input for [`big_flush`]: trim from the start to block
/// 61440 and from block 61441 to the end, a partial write in block 61440
/// (chunk 15: its BAT and bitmap sectors fall on both sides of a log entry
/// boundary), flush — one flush of ~260 sectors; no crash (the fuzzer moves
/// the crash point into it).
fn big_flush_seed() -> Vec<u8> {
    let mut b = vec![0xC0, 0];
    b.extend_from_slice(&1999u16.to_le_bytes());
    for k in 0..8u64 {
        b.extend_from_slice(&((k * 0x123_4567 + 99) * 8000).to_le_bytes());
    }
    b.extend_from_slice(&[2, 2]);
    b.extend_from_slice(&61440u32.to_le_bytes());
    b.extend_from_slice(&[2, 1]);
    b.extend_from_slice(&61441u32.to_le_bytes());
    b.push(0);
    b.extend_from_slice(&((61440 * MIB + 1536) / 512).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.push(5);
    b
}

fn finish_crash(
    m: &Model,
    layers: &[MemStorage],
    fault: &FaultStorage,
    torn: bool,
    ctx: &str,
    e: Error,
) -> Outcome {
    if !fault.crashed() {
        return Err(format!(
            "{ctx}: an operation failed before the crash point: {e}"
        ));
    }
    verify_crash(m, layers, torn, ctx)
}

// ---------------------------------------------------------------------------
// Target (e): checkpoint-tree operations against a model.

const VM_DISK: u64 = 2 * MIB;
const MAX_VM_OPS: usize = 10;

#[derive(Debug, Clone)]
struct Snap {
    content: Vec<u8>,
    parent: Option<String>,
}

struct Cancel;
impl Hooks for Cancel {
    fn progress(&mut self, _done: u64, _total: u64) -> bool {
        false
    }
}

fn read_path(p: &Path) -> Result<Vec<u8>, String> {
    let d = Disk::open(p, OpenMode::ReadOnly).map_err(|e| format!("open {}: {e}", p.display()))?;
    read_all(&d)
}

fn first_diff(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at {i:#x}: {:#04x} vs {:#04x}", a[i], b[i]),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

fn vm_verify(
    vm: &Vm,
    snaps: &BTreeMap<String, Snap>,
    cur: &[u8],
    cur_parent: &Option<String>,
    ctx: &str,
) -> Outcome {
    let data = vm.data();
    let got = read_path(&data.current.disks[0])?;
    if got != cur {
        return Err(format!(
            "{ctx}: the current disk differs from the model ({})",
            first_diff(&got, cur)
        ));
    }
    // What users see (and revert goes back to): the nearest visible
    // ancestor; the raw tree parent may be a hidden branch point.
    let got_parent = data.current_checkpoint().map(|c| c.name.clone());
    let want = cur_parent.clone();
    if got_parent != want {
        return Err(format!(
            "{ctx}: the current state hangs under {got_parent:?}, the model says {want:?}"
        ));
    }
    let visible: Vec<&str> = data
        .checkpoints
        .iter()
        .filter(|c| !c.hidden)
        .map(|c| c.name.as_str())
        .collect();
    let mut visible_sorted = visible.clone();
    visible_sorted.sort();
    let names: Vec<&str> = snaps.keys().map(|s| s.as_str()).collect();
    if visible_sorted != names {
        return Err(format!(
            "{ctx}: checkpoints {visible_sorted:?}, the model has {names:?}"
        ));
    }
    for c in data.checkpoints.iter().filter(|c| !c.hidden) {
        let s = &snaps[&c.name];
        let got = read_path(&c.disks[0])?;
        if got != s.content {
            return Err(format!(
                "{ctx}: checkpoint {} reads differently from when it was taken ({})",
                c.name,
                first_diff(&got, &s.content)
            ));
        }
        let p = c
            .parent
            .as_ref()
            .and_then(|id| data.checkpoints.iter().find(|x| &x.id == id))
            .filter(|x| !x.hidden)
            .map(|x| x.name.clone());
        let _ = p;
    }
    Ok(())
}

fn scratch_dir() -> io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("ckpt-fuzz-")
            .tempdir_in(shm)
        {
            return Ok(d);
        }
    }
    tempfile::Builder::new().prefix("ckpt-fuzz-").tempdir()
}

/// Target (e): create, apply (with or without saving the current state),
/// revert, delete (sometimes cancelled), rename, export, write, reopen —
/// on a one-disk VM in a scratch folder, each checkpoint's disk checked
/// against what it held when taken.
pub fn vm_ops(data: &[u8]) -> Outcome {
    let mut inp = In::new(data);
    let dir = scratch_dir().map_err(|e| format!("tempdir: {e}"))?;
    let disk: PathBuf = dir.path().join("disks").join("d.vhdx");
    std::fs::create_dir_all(disk.parent().unwrap()).map_err(|e| e.to_string())?;
    Disk::create(&disk, &CreateOptions::new(VM_DISK).block_size(MIB as u32))
        .and_then(|d| d.close())
        .map_err(|e| format!("create disk: {e}"))?;
    let vmdir = dir.path().join("vm");
    let mut vm = Vm::create(&vmdir, &VmSpec::new("fuzz", vec![disk]))
        .map_err(|e| format!("create vm: {e}"))?;
    let mut snaps: BTreeMap<String, Snap> = BTreeMap::new();
    let mut cur = vec![0u8; VM_DISK as usize];
    let mut cur_parent: Option<String> = None;
    let mut next = 0u32;
    let mut log: Vec<String> = Vec::new();
    for step in 0..MAX_VM_OPS {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8() % 11;
        let names: Vec<String> = snaps.keys().cloned().collect();
        let pick = |inp: &mut In| -> String {
            if names.is_empty() || inp.u8() % 16 == 0 {
                "missing".to_string()
            } else {
                names[inp.below(names.len() as u64) as usize].clone()
            }
        };
        match op {
            0 | 1 => {
                let off = inp.below(VM_DISK);
                let len = (1 + inp.below(256 * KIB)).min(VM_DISK - off);
                let byte = inp.u8();
                log.push(format!("write {off:#x}+{len:#x}={byte:#x}"));
                let p = vm.data().current.disks[0].clone();
                let d = Disk::open(&p, OpenMode::ReadWrite)
                    .map_err(|e| format!("{log:?}: open current: {e}"))?;
                let b = vec![byte; len as usize];
                d.write_at(&b, off)
                    .and_then(|_| d.close())
                    .map_err(|e| format!("{log:?}: write: {e}"))?;
                cur[off as usize..(off + len) as usize].copy_from_slice(&b);
            }
            2 | 3 => {
                let name = format!("c{next}");
                next += 1;
                log.push(format!("create {name}"));
                vm.create_checkpoint(&name, None, &mut NoHooks)
                    .map_err(|e| format!("{log:?}: create: {e}"))?;
                snaps.insert(
                    name.clone(),
                    Snap {
                        content: cur.clone(),
                        parent: cur_parent.clone(),
                    },
                );
                cur_parent = Some(name);
            }
            4 => {
                let name = pick(&mut inp);
                let save = inp.bool().then(|| {
                    next += 1;
                    format!("c{}", next - 1)
                });
                log.push(format!("apply {name} saving {save:?}"));
                let r = vm.apply(&name, save.as_deref(), &mut NoHooks);
                let expect_ok = snaps.contains_key(&name);
                match (r, expect_ok) {
                    (Ok(()), true) => {
                        if let Some(s) = save {
                            snaps.insert(
                                s,
                                Snap {
                                    content: cur.clone(),
                                    parent: cur_parent.clone(),
                                },
                            );
                        }
                        cur = snaps[&name].content.clone();
                        cur_parent = Some(name);
                    }
                    (Err(_), false) => {}
                    (Ok(()), false) => {
                        return Err(format!(
                            "{log:?}: apply succeeded, the model expected an error"
                        ))
                    }
                    (Err(e), true) => return Err(format!("{log:?}: apply: {e}")),
                }
            }
            5 => {
                log.push("revert".into());
                let r = vm.revert();
                match (r, &cur_parent) {
                    (Ok(()), Some(p)) => cur = snaps[p].content.clone(),
                    (Err(_), None) => {}
                    (Ok(()), None) => {
                        return Err(format!("{log:?}: revert with no checkpoint succeeded"))
                    }
                    (Err(e), Some(_)) => return Err(format!("{log:?}: revert: {e}")),
                }
            }
            6 | 7 => {
                let name = pick(&mut inp);
                // (Bug 10 of issue 8, a cancelled delete that changes the
                // checkpoint, is known: a campaign skipping known bugs never cancels.)
                let cancel = inp.u8() % 3 == 0 && !SKIP_KNOWN.load(Ordering::Relaxed);
                log.push(format!("delete {name} cancel {cancel}"));
                let r = if cancel {
                    vm.delete(&name, false, &mut Cancel)
                } else {
                    vm.delete(&name, false, &mut NoHooks)
                };
                match r {
                    Ok(()) => {
                        let Some(s) = snaps.remove(&name) else {
                            return Err(format!(
                                "{log:?}: deleting a missing checkpoint succeeded"
                            ));
                        };
                        for x in snaps.values_mut() {
                            if x.parent.as_deref() == Some(name.as_str()) {
                                x.parent = s.parent.clone();
                            }
                        }
                        if cur_parent.as_deref() == Some(name.as_str()) {
                            cur_parent = s.parent.clone();
                        }
                    }
                    Err(Error::Cancelled) if cancel => {}
                    Err(_) if !snaps.contains_key(&name) => {}
                    Err(e) => return Err(format!("{log:?}: delete: {e}")),
                }
            }
            8 => {
                let name = pick(&mut inp);
                let new = format!("c{next}");
                next += 1;
                log.push(format!("rename {name} {new}"));
                match vm.rename(&name, &new) {
                    Ok(()) => {
                        let Some(s) = snaps.remove(&name) else {
                            return Err(format!(
                                "{log:?}: renaming a missing checkpoint succeeded"
                            ));
                        };
                        snaps.insert(new.clone(), s);
                        for x in snaps.values_mut() {
                            if x.parent.as_deref() == Some(name.as_str()) {
                                x.parent = Some(new.clone());
                            }
                        }
                        if cur_parent.as_deref() == Some(name.as_str()) {
                            cur_parent = Some(new);
                        }
                    }
                    Err(_) if !snaps.contains_key(&name) => {}
                    Err(e) => return Err(format!("{log:?}: rename: {e}")),
                }
            }
            9 => {
                let name = if inp.bool() {
                    None
                } else {
                    Some(pick(&mut inp))
                };
                log.push(format!("export {name:?}"));
                let dest = dir.path().join(format!("export{step}"));
                match vm.export(name.as_deref(), &dest, &mut NoHooks) {
                    Ok(files) => {
                        let want = match &name {
                            None => &cur,
                            Some(n) => match snaps.get(n) {
                                Some(s) => &s.content,
                                None => {
                                    return Err(format!(
                                        "{log:?}: exporting a missing checkpoint succeeded"
                                    ))
                                }
                            },
                        };
                        let disk = files
                            .iter()
                            .find(|f| f.extension().is_some_and(|e| e == "vhdx" || e == "avhdx"))
                            .ok_or_else(|| format!("{log:?}: export made no disk: {files:?}"))?;
                        let got = read_path(disk)?;
                        if &got != want {
                            return Err(format!(
                                "{log:?}: the exported disk differs ({})",
                                first_diff(&got, want)
                            ));
                        }
                        let d = Disk::open(disk, OpenMode::ReadOnly).map_err(|e| e.to_string())?;
                        if d.depth() != 1 {
                            return Err(format!("{log:?}: the exported disk is not standalone"));
                        }
                    }
                    Err(_) if name.as_ref().is_some_and(|n| !snaps.contains_key(n)) => {}
                    Err(e) => return Err(format!("{log:?}: export: {e}")),
                }
            }
            _ => {
                log.push("reopen".into());
                drop(vm);
                vm = Vm::open(&vmdir).map_err(|e| format!("{log:?}: reopen: {e}"))?;
            }
        }
        vm_verify(&vm, &snaps, &cur, &cur_parent, &format!("{log:?}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Target `vhd`: structure-aware damage of valid VHD files.

/// Three small valid VHDs: a dynamic disk with data, a fixed disk, and a
/// differencing child (with data) over the dynamic one; made once.
pub fn vhd_images() -> &'static [Vec<Vec<u8>>] {
    static IMAGES: std::sync::OnceLock<Vec<Vec<Vec<u8>>>> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| {
        let opts = ckpt::VhdOptions::new(MIB).block_size(64 * 1024);
        let base = Arc::new(MemStorage::new());
        let d = Disk::create_vhd_on(base.clone(), &opts).expect("create a VHD");
        d.write_at(&[0x11; 4096], 0).expect("write");
        d.write_at(&[0x22; 70000], 300 * KIB).expect("write");
        d.close().expect("close");
        let fixed = Arc::new(MemStorage::new());
        let f = Disk::create_vhd_on(fixed.clone(), &opts.clone().fixed(true)).expect("create");
        f.write_at(&[0x33; 512], 512).expect("write");
        f.close().expect("close");
        let parent = Disk::open_storage(base.clone(), OpenMode::ReadOnly).expect("open");
        let child = Arc::new(MemStorage::new());
        Disk::create_child_on(
            child.clone(),
            &parent,
            &ckpt::ChildOptions {
                block_size: 64 * 1024,
                ..Default::default()
            },
        )
        .expect("create a child");
        drop(parent);
        let c = Disk::open_storage_chain(vec![child.clone(), base.clone()], OpenMode::ReadWrite)
            .expect("open the chain");
        c.write_at(&[0x44; 8192], 310 * KIB).expect("write");
        c.close().expect("close");
        vec![
            vec![base.snapshot()],
            vec![fixed.snapshot()],
            vec![child.snapshot(), base.snapshot()],
        ]
    })
}

/// `vhd`: pick one of [`vhd_images`], damage its top with up to 8
/// byte edits aimed at its structures (0: the trailing footer, 1: the
/// footer copy, 2: the dynamic header, 3: the BAT, 4: the locators' data,
/// 5: a block's sector bitmap, 6: anywhere; then an offset and a value,
/// set or xor), optionally cut its length, then run every operation
/// [`exercise`] runs.
pub fn vhd(data: &[u8]) -> Outcome {
    let mut inp = In::new(data);
    let images = vhd_images();
    let mut layers = images[inp.u8() as usize % images.len()].clone();
    let b = &mut layers[0];
    let n = b.len();
    for _ in 0..(inp.u8() % 9) {
        let region = inp.u8() % 7;
        let at = inp.u16() as usize;
        let v = inp.u8();
        let xor = inp.u8() & 1 == 1;
        let pos = match region {
            0 => n - 512 + at % 512,
            1 => at % 512,
            2 => 512 + at % 1024,
            3 => 1536 + at % 512,
            4 => 2048 + at % 8192,
            5 => 3584 + at % 1024,
            _ => (at * 97) % n,
        } % n;
        if xor {
            b[pos] ^= v;
        } else {
            b[pos] = v;
        }
    }
    if inp.u8() == 0xff {
        let cut = inp.u32() as usize % n;
        b.truncate(cut);
    }
    exercise(layers, &mut inp)
}

// ---------------------------------------------------------------------------
// Seeds.

/// A few small inputs per target, generated (not stored in git).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "open_bytes" => images()
            .iter()
            .map(|i| encode_image(&i.layers[0]))
            .collect(),
        "structure" => (0..images().len() as u8)
            .flat_map(|i| {
                // image (u32), which layer (differencing only), fix flags, count (u32)
                let mut head = vec![i, 0, 0, 0];
                if images()[i as usize].layers.len() > 1 {
                    head.push(1);
                }
                head.extend_from_slice(&[0, 0, 0, 0, 0]);
                let with = |m: &[u8]| [head.clone(), m.to_vec()].concat();
                [
                    // raw bytes, none: the valid image itself
                    with(&[8, 0, 0, 0, 0, 0, 0]),
                    // BAT entry 0 := old + 1
                    with(&[5, 4, 0, 0, 0, 0, 1, 2]),
                    // first metadata item, first byte := old ^ bit
                    with(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
                ]
            })
            .collect(),
        "log_replay" => vec![log_replay_seed(), vec![0; 64]],
        "disk_ops" => vec![
            big_flush_seed(),
            vec![
                0, 1, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5,
            ],
            (0..96u8).collect(),
            (0..96u8).map(|x| x.wrapping_mul(37)).collect(),
        ],
        "vm_ops" => vec![
            vec![2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11, 2, 5],
            (0..64u8).collect(),
        ],
        "vhd" => vec![
            vec![0, 0],
            vec![1, 0],
            vec![2, 0],
            vec![2, 1, 3, 4, 0, 0x10, 1],
            vec![0, 2, 2, 28, 0, 0xff, 0, 0, 0, 0, 0, 0],
            (0..64u8).collect(),
        ],
        _ => Vec::new(),
    }
}
