//! The open path against crafted files: a dirty log replayed identically by
//! a read-only open, a read-write open and QEMU (bug 5); huge or sparse logs
//! opened with bounded memory and reads linear in the log (bug 7, F3);
//! sparse zero replay (F2); header sequence numbers at the top of the range
//! (F5); unknown parent locator types (bug 8); BAT padding entries (F1); and
//! `check` naming each problem.

#[path = "support/rawlog.rs"]
mod rawlog;
mod support;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ckpt::io::{FileStorage, MemStorage, Storage};
use ckpt::{ChildOptions, CreateOptions, Disk, ErrorKind, OpenMode};
use uuid::Uuid;

use rawlog::{raw_entry, RawDesc};
use support::raw::*;
use support::{first_diff, qemu_img_bin, qemu_io_bin, read_all, run_ok, Counting};

const SIZE: u64 = 8 * MIB;
const KIB: u64 = 1024;
const LOCATOR_ITEM: &str = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C";

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// An 8 MiB dynamic disk with 1 MiB blocks: blocks 0, 1 and 3 allocated.
fn base_image() -> (Vec<u8>, Vec<u8>) {
    let mem = MemStorage::new();
    let opts = CreateOptions::new(SIZE).block_size(MIB as u32);
    let disk = Disk::create_on(Arc::new(mem.clone()), &opts).expect("create");
    let mut content = vec![0u8; SIZE as usize];
    for (i, b) in content[..(1536 * KIB) as usize].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    content[(3 * MIB) as usize..(3 * MIB + 100 * KIB) as usize].fill(0xcd);
    disk.write_at(&content[..(1536 * KIB) as usize], 0)
        .expect("write");
    disk.write_at(
        &content[(3 * MIB) as usize..(3 * MIB + 100 * KIB) as usize],
        3 * MIB,
    )
    .expect("write");
    disk.close().expect("close");
    (mem.snapshot(), content)
}

fn block_offset(img: &[u8], l: &Layout, block: u64) -> u64 {
    let e = l.bat_entry(img, block);
    assert_eq!(e & 7, 6, "block {block} is allocated");
    e & 0xFFFF_FFFF_FFF0_0000
}

fn write_file(dir: &Path, name: &str, img: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, img).expect("write image");
    p
}

/// A storage that counts the bytes read (and forwards hole queries), and
/// fails every read once `budget` bytes have been read.
#[derive(Debug)]
struct ReadBudget<S> {
    inner: S,
    read: AtomicU64,
    budget: u64,
}

impl<S: Storage> Storage for ReadBudget<S> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read.fetch_add(buf.len() as u64, Ordering::SeqCst) + buf.len() as u64;
        if n > self.budget {
            return Err(io::Error::other(format!(
                "read budget of {} bytes exhausted",
                self.budget
            )));
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn is_writable(&self) -> bool {
        false
    }
    fn data_after(&self, offset: u64) -> io::Result<Option<(u64, u64)>> {
        self.inner.data_after(offset)
    }
}

/// `(img, content)` with a dirty log whose one entry writes payload space:
/// data sectors into blocks 0 and 1 (one sector twice: the later wins) and
/// a zero range inside block 0. Returns the image and what it reads.
fn payload_log_image((mut img, mut want): (Vec<u8>, Vec<u8>)) -> (Vec<u8>, Vec<u8>) {
    let l = Layout::parse(&img);
    let (b0, b1) = (block_offset(&img, &l, 0), block_offset(&img, &l, 1));
    let g = Uuid::new_v4();
    let s1: Vec<u8> = (0..4096).map(|i| (i * 7 + 3) as u8).collect();
    let s2: Vec<u8> = (0..4096).map(|i| (i * 13 + 1) as u8).collect();
    let end = align_up(img.len() as u64, MIB);
    let e = raw_entry(
        g,
        5,
        0,
        end - MIB,
        end,
        &[
            RawDesc::Data(b0 + 8 * KIB, s1.clone()),
            RawDesc::Zero(b0 + 64 * KIB, 128 * KIB),
            RawDesc::Data(b1 + 20 * KIB, s2.clone()),
            // A later update of the same sector wins.
            RawDesc::Data(b0 + 8 * KIB, s2.clone()),
        ],
    );
    let at = l.log_offset as usize;
    img[at..at + e.len()].copy_from_slice(&e);
    edit_headers(&mut img, |h| wrguid(h, 48, g));
    // The model: what the replayed disk reads.
    want[(8 * KIB) as usize..(12 * KIB) as usize].copy_from_slice(&s2);
    want[(64 * KIB) as usize..(192 * KIB) as usize].fill(0);
    want[(MIB + 20 * KIB) as usize..(MIB + 24 * KIB) as usize].copy_from_slice(&s2);

    (img, want)
}

/// Bug 5: a dirty log whose descriptors write payload space (data sectors
/// into two blocks and a zero range inside a block) reads the same through
/// a read-only open, a read-write open, and QEMU (which replays the log
/// when it opens the file read-write).
#[test]
fn read_only_open_reads_payload_written_by_the_log() {
    let (img, want) = payload_log_image(base_image());
    let dir = tempfile::tempdir().expect("tempdir");
    let ro_path = write_file(dir.path(), "ro.vhdx", &img);
    let ro = Disk::open(&ro_path, OpenMode::ReadOnly).expect("read-only open");
    let got_ro = read_all(&ro);
    assert!(got_ro == want, "read-only: {}", first_diff(&got_ro, &want));
    // A sub-range read, and a sector read straddling a patched range.
    let mut buf = vec![0u8; 6000];
    ro.read_at(&mut buf, 7 * KIB).expect("read");
    assert_eq!(
        &buf[..],
        &want[(7 * KIB) as usize..(7 * KIB) as usize + 6000]
    );
    drop(ro);
    assert!(
        std::fs::read(&ro_path).expect("read") == img,
        "a read-only open wrote"
    );
    // `convert` reads through the same storage (a copy from a read-only layer).
    let raw_out = dir.path().join("ro.raw");
    let out = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .args(["convert", "-O", "raw"])
        .arg(&ro_path)
        .arg(&raw_out)
        .output()
        .expect("run ckpt convert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conv = std::fs::read(&raw_out).expect("read raw");
    assert!(
        conv == want,
        "convert of a dirty file: {}",
        first_diff(&conv, &want)
    );
    // `ckpt read` of a patched range.
    let out = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .arg("read")
        .arg(&ro_path)
        .args([(MIB + 16 * KIB).to_string(), (8 * KIB).to_string()])
        .output()
        .expect("run ckpt read");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        &out.stdout[..],
        &want[(MIB + 16 * KIB) as usize..(MIB + 24 * KIB) as usize]
    );

    let rw_path = write_file(dir.path(), "rw.vhdx", &img);
    let rw = Disk::open(&rw_path, OpenMode::ReadWrite).expect("read-write open");
    let got_rw = read_all(&rw);
    assert!(got_rw == want, "read-write: {}", first_diff(&got_rw, &want));
    rw.close().expect("close");

    match (qemu_img_bin(), qemu_io_bin()) {
        (Some(qimg), Some(qio)) => {
            let q_path = write_file(dir.path(), "q.vhdx", &img);
            run_ok(
                Command::new(qio)
                    .args(["-f", "vhdx", "-c", "flush"])
                    .arg(&q_path),
            );
            let q_raw = dir.path().join("q.raw");
            run_ok(
                Command::new(qimg)
                    .args(["convert", "-f", "vhdx", "-O", "raw"])
                    .arg(&q_path)
                    .arg(&q_raw),
            );
            let got_q = std::fs::read(&q_raw).expect("read qemu output");
            assert!(got_q == want, "qemu: {}", first_diff(&got_q, &want));
        }
        _ => {
            assert!(
                !support::in_ci(),
                "CI=true but qemu-img/qemu-io are missing"
            );
            eprintln!("NOTICE: qemu-img/qemu-io missing; QEMU comparison skipped");
        }
    }
}

/// F2: a log that zeroes a block and 512 MiB past the end of the file (and
/// says the file is that long) is replayed without writing zeros: the
/// file's allocated blocks stay small, and both modes read the same.
#[test]
fn zero_descriptors_are_replayed_sparsely() {
    let (mut img, mut want) = base_image();
    let l = Layout::parse(&img);
    let b0 = block_offset(&img, &l, 0);
    let g = Uuid::new_v4();
    let end = align_up(img.len() as u64, MIB);
    let e = raw_entry(
        g,
        9,
        0,
        end - MIB,
        end + 512 * MIB,
        &[RawDesc::Zero(b0, MIB), RawDesc::Zero(end, 512 * MIB)],
    );
    let at = l.log_offset as usize;
    img[at..at + e.len()].copy_from_slice(&e);
    edit_headers(&mut img, |h| wrguid(h, 48, g));
    want[..MIB as usize].fill(0);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "rw.vhdx", &img);
    let before = std::fs::metadata(&path).expect("stat").blocks() * 512;
    let rw = Disk::open(&path, OpenMode::ReadWrite).expect("read-write open");
    let got = read_all(&rw);
    assert!(got == want, "read-write: {}", first_diff(&got, &want));
    rw.close().expect("close");
    let m = std::fs::metadata(&path).expect("stat");
    assert!(
        m.len() >= end + 512 * MIB,
        "the file was grown to LastFileOffset"
    );
    let after = m.blocks() * 512;
    assert!(
        after <= before + 4 * MIB,
        "the replay wrote zeros: {before} bytes allocated before, {after} after"
    );

    let ro_path = write_file(dir.path(), "ro.vhdx", &img);
    let ro = Disk::open(&ro_path, OpenMode::ReadOnly).expect("read-only open");
    let got = read_all(&ro);
    assert!(got == want, "read-only: {}", first_diff(&got, &want));
}

/// F5: a current header whose SequenceNumber cannot be incremented is
/// refused by a read-write open (clear error, no write); a read-only open
/// still reads the disk.
#[test]
fn header_sequence_number_at_the_top_is_refused_for_writing() {
    let (mut img, want) = base_image();
    let l = Layout::parse(&img);
    let h = &mut img[l.current_header..l.current_header + HEADER_LEN];
    wr64(h, 8, u64::MAX);
    seal(h, 4);
    let mem = MemStorage::from_vec(img.clone());
    let ro = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadOnly).expect("read-only");
    assert!(read_all(&ro) == want);
    drop(ro);
    let rw = Counting::new(mem.clone(), true);
    match Disk::open_storage(rw.clone(), OpenMode::ReadWrite) {
        Ok(d) => {
            let r = d.write_at(&[1u8; 512], 0).and_then(|_| d.close());
            panic!("read-write open of a header at sequence 2^64-1 succeeded (write: {r:?})");
        }
        Err(e) => {
            let msg = e.to_string();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{msg}");
            assert!(msg.contains("SequenceNumber"), "{msg}");
        }
    }
    assert_eq!(rw.mutations(), 0, "the refused open wrote");
    assert!(mem.snapshot() == img);
}

/// Bug 3 (through `check`): LogLength 0 is reported, not "no problems".
#[test]
fn check_reports_a_zero_log_length() {
    let (mut img, _) = base_image();
    edit_headers(&mut img, |h| wr32(h, 68, 0));
    let r = ckpt::check_storage(Arc::new(MemStorage::from_vec(img)));
    assert!(!r.is_ok(), "check found no problem: {}", r.summary);
    assert!(
        r.problems.iter().any(|p| p.contains("LogLength")),
        "{:?}",
        r.problems
    );
}

/// Move the log of `img` to the (1 MiB aligned) end of the file with
/// `log_len` bytes; returns its offset. The file is extended to hold it.
fn relocate_log(img: &mut Vec<u8>, log_len: u64, g: Uuid) -> u64 {
    let off = align_up(img.len() as u64, MIB);
    img.resize((off + log_len) as usize, 0);
    edit_headers(img, |h| {
        wrguid(h, 48, g);
        wr32(h, 68, log_len as u32);
        wr64(h, 72, off);
    });
    off
}

/// The entry `craft_log` of the corrupt tests writes: block 0 becomes ZERO.
fn zero_block0_entry(
    img: &[u8],
    l: &Layout,
    g: Uuid,
    seq: u64,
    tail: u32,
    flushed: u64,
) -> Vec<u8> {
    let bat = l.bat_offset as usize;
    let mut sector = img[bat..bat + 4096].to_vec();
    wr64(&mut sector, 0, 2);
    raw_entry(
        g,
        seq,
        tail,
        flushed,
        flushed,
        &[RawDesc::Data(l.bat_offset, sector)],
    )
}

/// F3: a 64 MiB log full of valid-looking entries — one chain of 16383
/// entries whose head's tail lies outside it (so no start of the chain is
/// a valid sequence) plus one valid entry — opens after reading a few
/// times the log's length, not the square of its entry count.
#[test]
fn a_log_full_of_entries_is_scanned_in_linear_reads() {
    let (base, mut want) = base_image();
    let l = Layout::parse(&base);
    let g = Uuid::new_v4();
    let log_len = 64 * MIB;
    // Headers first, while the image is small: the BAT sector is the same.
    let mut img = base.clone();
    let off = relocate_log(&mut img, log_len, g);
    let flushed = off;
    let e0 = zero_block0_entry(&base, &l, g, 1_000_000, 0, flushed);
    assert_eq!(e0.len(), 8192);
    img[off as usize..off as usize + e0.len()].copy_from_slice(&e0);
    for s in 2..log_len / 4096 {
        let e = raw_entry(g, s, 0, flushed, flushed, &[]);
        let p = (off + s * 4096) as usize;
        img[p..p + 4096].copy_from_slice(&e);
    }
    want[..MIB as usize].fill(0);
    let budget = 8 * log_len;
    let s = Arc::new(ReadBudget {
        inner: MemStorage::from_vec(img.clone()),
        read: AtomicU64::new(0),
        budget,
    });
    let d = Disk::open_storage(s.clone(), OpenMode::ReadOnly)
        .unwrap_or_else(|e| panic!("open (read budget {budget} bytes): {e}"));
    let opened = s.read.load(Ordering::SeqCst);
    eprintln!("opened after reading {opened} bytes of a {log_len}-byte log");
    assert!(opened <= 4 * log_len, "{opened} bytes read to open");
    let got = read_all(&d);
    assert!(got == want, "{}", first_diff(&got, &want));
    drop(d);
    let rw = Disk::open_storage(Arc::new(MemStorage::from_vec(img)), OpenMode::ReadWrite)
        .expect("read-write open");
    assert!(read_all(&rw) == want);
}

const SPARSE_CHILD_ENV: &str = "CKPT_OPEN_PATH_SPARSE_CHILD";

/// Bug 7: a (sparse) 4 GiB log holding one real entry and a few entry
/// headers that claim to be 4 GiB long opens reading little (holes are
/// skipped) and allocating little: the opens also run in a child under a
/// 256 MiB address-space limit.
#[test]
fn a_sparse_4_gib_log_opens_with_bounded_memory_and_reads() {
    if let Some(p) = std::env::var_os(SPARSE_CHILD_ENV) {
        // Child, under the limit: both modes (the read-write one on a copy
        // made by the parent).
        let p = std::path::PathBuf::from(p);
        let d = Disk::open(&p, OpenMode::ReadOnly).expect("read-only open under the limit");
        drop(d);
        let d = Disk::open(p.with_extension("rw"), OpenMode::ReadWrite)
            .expect("read-write open under the limit");
        d.close().expect("close");
        return;
    }
    let (base, mut want) = base_image();
    let l = Layout::parse(&base);
    let g = Uuid::new_v4();
    let log_len = 0xFFF0_0000u64;
    let off = align_up(base.len() as u64, MIB);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sparse.vhdx");
    {
        let mut head = base.clone();
        edit_headers(&mut head, |h| {
            wrguid(h, 48, g);
            wr32(h, 68, log_len as u32);
            wr64(h, 72, off);
        });
        let f = std::fs::File::create(&path).expect("create");
        use std::os::unix::fs::FileExt;
        f.write_all_at(&head, 0).expect("write");
        f.set_len(off + log_len).expect("extend sparsely");
        // The real entry, at 2 GiB into the log, its own tail.
        let at = 2u64 << 30;
        let e = zero_block0_entry(&base, &l, g, 77, at as u32, off);
        f.write_all_at(&e, off + at).expect("write entry");
        // Headers of entries claiming nearly the whole log (bad checksums).
        for k in 0..8u64 {
            let mut h = vec![0u8; 4096];
            wr32(&mut h, 0, 0x6567_6F6C);
            wr32(&mut h, 8, (log_len - 4096 * (k + 1)) as u32);
            wr64(&mut h, 16, 100 + k);
            wrguid(&mut h, 32, g);
            f.write_all_at(&h, off + (2 * k + 1) * (128 << 20))
                .expect("write junk");
        }
    }
    want[..MIB as usize].fill(0);
    let s = Arc::new(ReadBudget {
        inner: FileStorage::open(&path, false).expect("open file"),
        read: AtomicU64::new(0),
        budget: 1 << 30,
    });
    let d = Disk::open_storage(s.clone(), OpenMode::ReadOnly).expect("read-only open");
    let opened = s.read.load(Ordering::SeqCst);
    eprintln!("opened after reading {opened} bytes of a {log_len}-byte sparse log");
    assert!(
        opened <= 64 * MIB,
        "{opened} bytes read to open a sparse log"
    );
    let got = read_all(&d);
    assert!(got == want, "{}", first_diff(&got, &want));
    drop(d);

    if !Path::new("/usr/bin/prlimit").exists()
        && Command::new("prlimit").arg("--version").output().is_err()
    {
        assert!(!support::in_ci(), "CI=true but prlimit is missing");
        eprintln!("NOTICE: prlimit is missing; skipping the allocation bound check");
        return;
    }
    let copy = path.with_extension("rw");
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(&path)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(st.success());
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new("prlimit")
        .arg(format!("--as={}", 256u64 << 20))
        .arg("--")
        .arg(exe)
        .args([
            "--exact",
            "a_sparse_4_gib_log_opens_with_bounded_memory_and_reads",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(SPARSE_CHILD_ENV, &path)
        .output()
        .expect("run the child under prlimit");
    assert!(
        out.status.success(),
        "the child under a 256 MiB address-space limit failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Disk::open(&copy, OpenMode::ReadOnly).expect("reopen after the replay");
    assert!(read_all(&d) == want, "the read-write replay lost the entry");
}

/// A base and a differencing child on it (in memory); returns the child's bytes.
fn child_image() -> (MemStorage, Vec<u8>) {
    let (base, _) = base_image();
    let parent = MemStorage::from_vec(base);
    let pd = Disk::open_storage(Arc::new(parent.clone()), OpenMode::ReadOnly).expect("parent");
    let child = MemStorage::new();
    Disk::create_child_on(Arc::new(child.clone()), &pd, &ChildOptions::default()).expect("child");
    drop(pd);
    (parent, child.snapshot())
}

/// Open `child` on `parent` in both modes: each must fail with `kind` and
/// a message containing `word`, without writing; `check` must report it.
fn child_fails(parent: &MemStorage, child: &[u8], kind: ErrorKind, word: &str) {
    for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
        let c = Counting::new(MemStorage::from_vec(child.to_vec()), true);
        let p: Arc<dyn Storage> = Arc::new(parent.clone());
        match Disk::open_storage_chain(vec![c.clone(), p], mode) {
            Ok(_) => panic!("{mode:?}: the damaged child opens"),
            Err(e) => {
                let msg = e.to_string();
                eprintln!("{mode:?}: {msg}");
                assert_eq!(e.kind(), kind, "{mode:?}: {msg}");
                assert!(msg.contains(word), "{mode:?}: {msg}");
            }
        }
        assert_eq!(c.mutations(), 0, "{mode:?}: the failed open wrote");
    }
    let r = ckpt::check_storage(Arc::new(MemStorage::from_vec(child.to_vec())));
    assert!(!r.is_ok(), "check found no problem: {}", r.summary);
    assert!(
        r.problems.iter().any(|p| p.contains(word)),
        "{:?}",
        r.problems
    );
}

/// Bug 8: a child whose parent locator has an unknown LocatorType is refused.
#[test]
fn unknown_parent_locator_type_is_refused() {
    let (parent, mut child) = child_image();
    // Undamaged, it opens.
    let c: Arc<dyn Storage> = Arc::new(MemStorage::from_vec(child.clone()));
    Disk::open_storage_chain(vec![c, Arc::new(parent.clone())], OpenMode::ReadOnly)
        .expect("undamaged child opens");
    let l = Layout::parse(&child);
    let p = l.item_pos(LOCATOR_ITEM);
    wrguid(&mut child, p, Uuid::new_v4());
    child_fails(&parent, &child, ErrorKind::Unsupported, "LocatorType");
}

/// F1: BAT entries past the last data block (the padding of a
/// differencing disk's last chunk) and sector-bitmap entries are validated.
#[test]
fn bat_padding_and_bitmap_entries_are_validated() {
    let (parent, child) = child_image();
    let l = Layout::parse(&child);
    let (blocks, ratio) = (l.data_blocks, l.chunk_ratio);
    assert!(blocks + 100 < ratio, "the last chunk has padding");
    let entry = |i: u64| (l.bat_offset + 8 * i) as usize;
    // Padding slot 100 pointing near 2^63: used to overflow `file_end`.
    let mut img = child.clone();
    wr64(&mut img, entry(blocks + 50), 0x7FFF_FFFF_FFF0_0000 | 6);
    child_fails(&parent, &img, ErrorKind::Corrupt, "padding");
    // Padding slot pointing past the end of the file.
    let mut img = child.clone();
    wr64(
        &mut img,
        entry(ratio - 1),
        (align_up(child.len() as u64, MIB) + 64 * MIB) | 6,
    );
    child_fails(&parent, &img, ErrorKind::Corrupt, "padding");
    // Padding slot with reserved bits.
    let mut img = child.clone();
    wr64(&mut img, entry(blocks + 1), 1 << 12);
    child_fails(&parent, &img, ErrorKind::Corrupt, "reserved");
    // Padding slot with the reserved state 4.
    let mut img = child.clone();
    wr64(&mut img, entry(blocks + 1), 4);
    child_fails(&parent, &img, ErrorKind::Corrupt, "reserved state");
    // The sector-bitmap entry with a reserved state.
    let mut img = child.clone();
    wr64(&mut img, entry(ratio), 3);
    child_fails(&parent, &img, ErrorKind::Corrupt, "sector bitmap");
}

/// Bug 5 through a chain: a child over a parent whose dirty log writes
/// payload space reads the replayed parent (the chain opens parents read-only).
#[test]
fn chain_reads_a_dirty_read_only_parent_as_replayed() {
    let (base, content) = base_image();
    let parent = MemStorage::from_vec(base.clone());
    let pd = Disk::open_storage(Arc::new(parent.clone()), OpenMode::ReadOnly).expect("parent");
    let child = MemStorage::new();
    Disk::create_child_on(Arc::new(child.clone()), &pd, &ChildOptions::default()).expect("child");
    drop(pd);
    // The child holds one sector of its own.
    let c: Arc<dyn Storage> = Arc::new(child.clone());
    let d =
        Disk::open_storage_chain(vec![c, Arc::new(parent)], OpenMode::ReadWrite).expect("chain");
    d.write_at(&[0x77; 512], 5 * MIB).expect("write");
    d.close().expect("close");
    let (dirty, mut want) = payload_log_image((base, content));
    want[(5 * MIB) as usize..(5 * MIB + 512) as usize].fill(0x77);
    let p = Counting::new(MemStorage::from_vec(dirty.clone()), false);
    let c: Arc<dyn Storage> = Arc::new(child);
    let d = Disk::open_storage_chain(vec![c, p.clone()], OpenMode::ReadOnly).expect("chain");
    let got = read_all(&d);
    assert!(got == want, "{}", first_diff(&got, &want));
    drop(d);
    assert_eq!(p.mutations(), 0);
}

/// Random single-byte damage to a dirty image (its headers, its log entry,
/// its BAT): never a panic, a read-only open never writes, and whenever both
/// modes open they read the same bytes (a read-only open reads exactly what
/// a read-write open would).
#[test]
fn damaged_dirty_logs_read_the_same_in_both_modes() {
    let (img, _) = payload_log_image(base_image());
    let l = Layout::parse(&img);
    let hot = [
        HEADERS[0]..HEADERS[0] + 80,
        HEADERS[1]..HEADERS[1] + 80,
        l.log_offset as usize..l.log_offset as usize + 4096 * 4,
        l.bat_offset as usize..l.bat_pos(l.data_blocks),
    ];
    let iterations: u64 = std::env::var("CKPT_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = support::Rng::new(0xD1A7);
    let mut both = 0;
    for i in 0..iterations {
        let r = &hot[rng.below(hot.len() as u64) as usize];
        let pos = r.start + rng.below((r.end - r.start) as u64) as usize;
        let mut bad = img.clone();
        bad[pos] ^= 1 + rng.below(255) as u8;
        // Re-seal the headers half of the time, so that their fields are judged.
        if rng.below(2) == 0 {
            for h in HEADERS {
                seal(&mut bad[h..h + HEADER_LEN], 4);
            }
        }
        let _ctx = support::Ctx(format!("mutation #{i} at {pos:#x}"));
        let ro = Counting::new(MemStorage::from_vec(bad.clone()), false);
        let got_ro = Disk::open_storage(ro.clone(), OpenMode::ReadOnly).map(|d| read_all(&d));
        assert_eq!(ro.mutations(), 0, "mutation #{i}: a read-only open wrote");
        let mem = MemStorage::from_vec(bad.clone());
        let got_rw = Disk::open_storage(Arc::new(mem.clone()), OpenMode::ReadWrite).map(|d| {
            let v = read_all(&d);
            let _ = d.close();
            v
        });
        match (got_ro, got_rw) {
            (Ok(a), Ok(b)) => {
                both += 1;
                assert!(a == b, "mutation #{i} at {pos:#x}: {}", first_diff(&a, &b));
            }
            (Err(_), Err(_)) => assert!(
                mem.snapshot() == bad,
                "mutation #{i} at {pos:#x}: a failed read-write open wrote"
            ),
            (a, b) => {
                panic!(
                    "mutation #{i} at {pos:#x}: read-only {:?}, read-write {:?}",
                    a.err(),
                    b.err()
                );
            }
        }
    }
    eprintln!("{iterations} mutations: {both} opened in both modes");
}
