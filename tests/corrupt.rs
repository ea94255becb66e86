//! Bad input: take a valid image (made by the engine, and one made by
//! qemu-img when it is available), damage exactly one structure, and check
//! that `Disk::open` in both modes gives the right error (or, where the
//! format tolerates the damage, opens with the right contents) — never a
//! panic, a hang, a huge allocation, or a write to the damaged file.
//!
//! The damage is done with the independent raw parser in
//! `tests/support/raw.rs`; checksums are re-sealed where the test wants the
//! damaged field itself to be judged.

#[path = "support/rawlog.rs"]
mod rawlog;
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use ckpt::io::MemStorage;
use ckpt::{CreateOptions, Disk, ErrorKind, OpenMode};
use uuid::Uuid;

use rawlog::{raw_entry, RawDesc};
use support::raw::*;
use support::{
    first_diff, open_with_timeout, qemu_img_bin, qemu_io_bin, read_all, run_ok, Counting, Ctx, Rng,
};

const SIZE: u64 = 8 * MIB;
const KIB: u64 = 1024;
const OPEN_TIMEOUT: u64 = 30;

/// The virtual contents of both base images.
fn expected_content() -> Vec<u8> {
    let mut v = vec![0u8; SIZE as usize];
    v[..(1536 * KIB) as usize].fill(0xab);
    v[(3 * MIB) as usize..(3 * MIB + 100 * KIB) as usize].fill(0xcd);
    v
}

/// An 8 MiB dynamic disk with 1 MiB blocks made by the engine: blocks 0, 1
/// and 3 allocated.
fn engine_image() -> Vec<u8> {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let mem = MemStorage::new();
        let opts = CreateOptions::new(SIZE).block_size(MIB as u32);
        let disk = Disk::create_on(Arc::new(mem.clone()), &opts).expect("create base image");
        disk.write_at(&vec![0xab; (1536 * KIB) as usize], 0)
            .expect("write");
        disk.write_at(&vec![0xcd; (100 * KIB) as usize], 3 * MIB)
            .expect("write");
        disk.close().expect("close base image");
        mem.snapshot()
    })
    .clone()
}

/// The same disk made by qemu-img / qemu-io, when they are available.
fn qemu_image() -> Option<Vec<u8>> {
    static IMG: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    IMG.get_or_init(|| {
        let (qimg, qio) = (qemu_img_bin()?, qemu_io_bin()?);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("q.vhdx");
        run_ok(
            Command::new(qimg)
                .args([
                    "create",
                    "-q",
                    "-f",
                    "vhdx",
                    "-o",
                    "subformat=dynamic,block_size=1M,log_size=1M",
                ])
                .arg(&p)
                .arg("8M"),
        );
        run_ok(
            Command::new(qio)
                .args([
                    "-f",
                    "vhdx",
                    "-c",
                    "write -P 0xab 0 1536k",
                    "-c",
                    "write -P 0xcd 3M 100k",
                ])
                .arg(&p),
        );
        Some(std::fs::read(&p).expect("read qemu image"))
    })
    .clone()
}

/// The base images to damage, by name.
fn bases() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = vec![("engine", engine_image())];
    if let Some(q) = qemu_image() {
        v.push(("qemu", q));
    }
    v
}

/// What a damaged image must do.
enum Expect {
    /// Open in both modes and read these contents (None: the base contents).
    Opens(Option<Vec<u8>>),
    /// Fail in both modes with one of these kinds and a message containing
    /// at least one of these words (lower case).
    Fails(&'static [ErrorKind], &'static [&'static str]),
}

fn opens() -> Expect {
    Expect::Opens(None)
}
fn corrupt(words: &'static [&'static str]) -> Expect {
    Expect::Fails(&[ErrorKind::Corrupt], words)
}
fn unsupported(words: &'static [&'static str]) -> Expect {
    Expect::Fails(&[ErrorKind::Unsupported], words)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Damage every base image with `damage` and judge the result.
fn run_case(name: &str, damage: impl Fn(&mut Vec<u8>, &Layout) -> Expect) {
    for (base_name, base) in bases() {
        let layout = Layout::parse(&base);
        let mut img = base.clone();
        let expect = damage(&mut img, &layout);
        let _ctx = Ctx(format!("case {name} on the {base_name} image"));
        judge(&format!("{name} [{base_name} image]"), &img, &expect);
    }
}

fn judge(ctx: &str, img: &[u8], expect: &Expect) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("damaged.vhdx");
    std::fs::write(&path, img).expect("write damaged image");
    for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
        let res = open_with_timeout(&path, mode, OPEN_TIMEOUT);
        match (res, expect) {
            (Ok(disk), Expect::Opens(content)) => {
                let want = content.clone().unwrap_or_else(expected_content);
                let got = read_all(&disk);
                assert!(
                    got == want,
                    "{ctx} {mode:?}: opens but reads wrong contents: {}",
                    first_diff(&got, &want)
                );
                if mode == OpenMode::ReadWrite {
                    disk.close()
                        .unwrap_or_else(|e| panic!("{ctx}: close after a read-write open: {e}"));
                    // What the read-write session left must open cleanly.
                    let d = open_with_timeout(&path, OpenMode::ReadOnly, OPEN_TIMEOUT)
                        .unwrap_or_else(|e| panic!("{ctx}: reopen after read-write: {e}"));
                    let again = read_all(&d);
                    assert!(
                        again == want,
                        "{ctx}: contents changed after the read-write session"
                    );
                } else {
                    drop(disk);
                }
            }
            (Ok(disk), Expect::Fails(kinds, words)) => {
                drop(disk);
                panic!(
                    "{ctx} {mode:?}: opens, but should fail with {kinds:?} naming one of {words:?}"
                );
            }
            (Err(e), Expect::Opens(_)) => {
                panic!("{ctx} {mode:?}: should open (the damage is tolerated), but: {e}");
            }
            (Err(e), Expect::Fails(kinds, words)) => {
                let msg = e.to_string();
                eprintln!("{ctx} {mode:?}: {msg}");
                let lower = msg.to_lowercase();
                assert!(
                    kinds.contains(&e.kind()),
                    "{ctx} {mode:?}: error kind {:?}, expected one of {kinds:?}: {msg}",
                    e.kind()
                );
                assert!(
                    words.iter().any(|w| lower.contains(w)),
                    "{ctx} {mode:?}: the message names none of {words:?}: {msg}"
                );
                assert!(
                    msg.contains("damaged.vhdx"),
                    "{ctx} {mode:?}: the message does not name the file: {msg}"
                );
            }
        }
        // A read-only open, and a failed read-write open, never write.
        let now = std::fs::read(&path).expect("read back");
        if mode == OpenMode::ReadOnly || matches!(expect, Expect::Fails(..)) {
            assert!(
                now == img,
                "{ctx} {mode:?}: the open wrote to the damaged file: {}",
                first_diff(&now, img)
            );
        }
    }
}

macro_rules! cases {
    ($($name:ident => $damage:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run_case(stringify!($name), $damage);
            }
        )*
    };
}

/// Remove metadata table entry `index` (shift the rest up, count - 1).
fn remove_meta_entry(img: &mut [u8], l: &Layout, index: usize) {
    let count = l.meta.len();
    let from = l.meta_entry_pos(index);
    let end = l.meta_entry_pos(count);
    img.copy_within(from + 32..end, from);
    img[end - 32..end].fill(0);
    wr16(img, l.meta_offset as usize + 10, (count - 1) as u16);
}

/// Add a metadata item with a fresh GUID and 8 bytes of value.
fn add_meta_item(img: &mut [u8], l: &Layout, flags: u32) {
    let count = l.meta.len();
    let end = l
        .meta
        .iter()
        .map(|m| m.offset + m.length)
        .max()
        .expect("items");
    let off = align_up(end as u64, 8) as u32;
    assert!(off as u64 + 8 <= l.meta_length as u64);
    let e = l.meta_entry_pos(count);
    wrguid(img, e, Uuid::new_v4());
    wr32(img, e + 16, off);
    wr32(img, e + 20, 8);
    wr32(img, e + 24, flags);
    wr32(img, e + 28, 0);
    wr64(
        img,
        l.meta_offset as usize + off as usize,
        0x1122_3344_5566_7788,
    );
    wr16(img, l.meta_offset as usize + 10, (count + 1) as u16);
}

/// Add a 1 MiB region with a fresh GUID at the (aligned) end of the file.
fn add_region(img: &mut Vec<u8>, l: &Layout, required: u32) {
    let at = align_up(img.len() as u64, MIB);
    img.resize((at + MIB) as usize, 0);
    let count = l.regions.len();
    let g = Uuid::new_v4();
    edit_region_tables(img, |t| {
        let e = 16 + 32 * count;
        wrguid(t, e, g);
        wr64(t, e + 16, at);
        wr32(t, e + 24, MIB as u32);
        wr32(t, e + 28, required);
        wr32(t, 8, (count + 1) as u32);
    });
}

/// Set one field of a region entry (by region GUID) in both tables.
fn edit_region(img: &mut [u8], l: &Layout, g: &str, offset: Option<u64>, length: Option<u32>) {
    let r = l.region(g);
    edit_region_tables(img, |t| {
        let e = 16 + 32 * r.index;
        if let Some(o) = offset {
            wr64(t, e + 16, o);
        }
        if let Some(n) = length {
            wr32(t, e + 24, n);
        }
    });
}

fn set_bat(img: &mut [u8], l: &Layout, block: u64, entry: u64) {
    wr64(img, l.bat_pos(block), entry);
}

/// A crafted, valid log: one entry (at the start of the log) that rewrites
/// the first BAT sector with block 0 in the PAYLOAD_BLOCK_ZERO state. The
/// headers get the entry's LogGuid. Returns the entry's file offset.
fn craft_log(img: &mut [u8], l: &Layout, flushed: Option<u64>) -> usize {
    let g = Uuid::new_v4();
    let bat = l.bat_offset as usize;
    let mut sector = img[bat..bat + 4096].to_vec();
    assert_eq!(l.bat_pos(0), bat);
    wr64(&mut sector, 0, 2);
    let file_end = (img.len() as u64) / MIB * MIB;
    let entry = log_entry(
        g,
        0x3CA9_3A92_0D19_0A97,
        0,
        flushed.unwrap_or(file_end),
        file_end,
        &[LogWrite {
            file_offset: l.bat_offset,
            data: sector,
        }],
    );
    let at = l.log_offset as usize;
    img[at..at + entry.len()].copy_from_slice(&entry);
    edit_headers(img, |h| wrguid(h, 48, g));
    at
}

/// Put `entry` at the start of the log and give both headers its LogGuid.
fn install_log(img: &mut [u8], l: &Layout, g: Uuid, entry: &[u8]) {
    let at = l.log_offset as usize;
    img[at..at + entry.len()].copy_from_slice(entry);
    edit_headers(img, |h| wrguid(h, 48, g));
}

/// Edit only the current header (and re-seal it).
fn edit_current_header(img: &mut [u8], l: &Layout, f: impl Fn(&mut [u8])) {
    let h = &mut img[l.current_header..l.current_header + HEADER_LEN];
    f(h);
    seal(h, 4);
}

/// The header that is not current.
fn older_header(l: &Layout) -> usize {
    if l.current_header == HEADERS[0] {
        HEADERS[1]
    } else {
        HEADERS[0]
    }
}

cases! {
    file_identifier_signature => |img, _l| {
        img[7] = b'X';
        corrupt(&["signature", "identifier"])
    };
    header_1_checksum => |img, _l| {
        img[HEADERS[0] + 200] ^= 0x40;
        opens()
    };
    header_2_checksum => |img, _l| {
        img[HEADERS[1] + 200] ^= 0x40;
        opens()
    };
    current_header_signature => |img, l| {
        img[l.current_header] ^= 0x01;
        opens()
    };
    both_headers_checksum => |img, _l| {
        img[HEADERS[0] + 200] ^= 0x40;
        img[HEADERS[1] + 300] ^= 0x40;
        corrupt(&["header"])
    };
    header_version => |img, _l| {
        edit_headers(img, |h| wr16(h, 66, 2));
        Expect::Fails(&[ErrorKind::Corrupt, ErrorKind::Unsupported], &["version", "header"])
    };
    header_log_version_with_empty_log => |img, _l| {
        // A non-zero LogVersion is tolerated while the log is empty.
        edit_headers(img, |h| wr16(h, 64, 1));
        opens()
    };
    header_log_offset_unaligned => |img, _l| {
        edit_headers(img, |h| {
            let v = rd64(h, 72);
            wr64(h, 72, v + 4096)
        });
        corrupt(&["log", "header"])
    };
    header_log_length_unaligned => |img, _l| {
        edit_headers(img, |h| {
            let v = rd32(h, 68);
            wr32(h, 68, v + 4096)
        });
        corrupt(&["log", "header"])
    };
    header_log_in_header_area => |img, _l| {
        edit_headers(img, |h| wr64(h, 72, 0));
        corrupt(&["log", "header", "overlap"])
    };
    header_log_overlaps_bat => |img, l| {
        let bat = l.bat_offset;
        edit_headers(img, |h| wr64(h, 72, bat));
        corrupt(&["log", "overlap", "bat"])
    };
    header_log_length_zero => |img, _l| {
        // Bug 3: the first write used to panic dividing by the log length.
        edit_headers(img, |h| wr32(h, 68, 0));
        corrupt(&["loglength"])
    };
    header_log_length_zero_offset_zero => |img, _l| {
        // Bug 3: with LogOffset 0 the first write destroyed the signature.
        edit_headers(img, |h| {
            wr32(h, 68, 0);
            wr64(h, 72, 0)
        });
        corrupt(&["loglength", "logoffset"])
    };
    header_log_past_eof => |img, _l| {
        let past = align_up(img.len() as u64, MIB) + 4 * MIB;
        edit_headers(img, |h| wr64(h, 72, past));
        corrupt(&["log"])
    };
    current_header_log_version_with_dirty_log => |img, l| {
        // Bug 6: the current header (dirty log, LogVersion 1) must not be
        // skipped for the older, clean one.
        let g = Uuid::new_v4();
        let bat = l.bat_offset as usize;
        let mut sector = img[bat..bat + 4096].to_vec();
        wr64(&mut sector, 0, 2);
        let end = (img.len() as u64) / MIB * MIB;
        let e = raw_entry(g, 1, 0, end, end, &[RawDesc::Data(l.bat_offset, sector)]);
        let at = l.log_offset as usize;
        img[at..at + e.len()].copy_from_slice(&e);
        edit_current_header(img, l, |h| {
            wrguid(h, 48, g);
            wr16(h, 64, 1);
        });
        Expect::Fails(&[ErrorKind::Unsupported, ErrorKind::Corrupt], &["logversion"])
    };
    current_header_bad_version_older_valid => |img, l| {
        // Bug 6: a current header with a bad field is refused, not skipped.
        let older = older_header(l);
        assert!(rd64(img, older + 8) < rd64(img, l.current_header + 8));
        edit_current_header(img, l, |h| wr16(h, 66, 2));
        corrupt(&["version"])
    };
    current_header_log_length_zero_older_valid => |img, l| {
        edit_current_header(img, l, |h| wr32(h, 68, 0));
        corrupt(&["loglength"])
    };
    log_last_file_offset_huge_with_zero_range => |img, l| {
        // F2: a log that zeroes up to 1 TiB and claims the file is that long.
        let g = Uuid::new_v4();
        let end = align_up(img.len() as u64, MIB);
        let e = raw_entry(g, 1, 0, end / MIB * MIB - MIB, 1 << 40, &[RawDesc::Zero(end, (1 << 40) - end)]);
        install_log(img, l, g, &e);
        corrupt(&["lastfileoffset"])
    };
    log_zero_range_past_last_file_offset => |img, l| {
        let g = Uuid::new_v4();
        let end = align_up(img.len() as u64, MIB);
        let e = raw_entry(g, 1, 0, end - MIB, end, &[RawDesc::Zero(end, 1 << 40)]);
        install_log(img, l, g, &e);
        corrupt(&["log entry", "outside"])
    };
    log_bat_region_past_real_end => |img, l| {
        // F4: the BAT region lies past the real end of the file, inside
        // what the log's LastFileOffset claims: nothing there to read.
        let g = Uuid::new_v4();
        let end = align_up(img.len() as u64, MIB);
        let past = end + 16 * MIB;
        edit_region(img, l, BAT_GUID, Some(past), None);
        let meta = l.meta_offset as usize;
        let same = img[meta..meta + 4096].to_vec();
        let e = raw_entry(g, 1, 0, end - MIB, past + 2 * MIB, &[RawDesc::Data(l.meta_offset, same)]);
        install_log(img, l, g, &e);
        corrupt(&["past the end", "bat"])
    };
    region_table_1_checksum => |img, _l| {
        img[REGION_TABLES[0] + 0x8000] ^= 0x01;
        opens()
    };
    region_table_2_checksum => |img, _l| {
        img[REGION_TABLES[1] + 0x8000] ^= 0x01;
        opens()
    };
    region_tables_both_checksum => |img, _l| {
        img[REGION_TABLES[0] + 0x8000] ^= 0x01;
        img[REGION_TABLES[1] + 0x20] ^= 0x01;
        corrupt(&["region"])
    };
    region_entry_count_huge => |img, _l| {
        edit_region_tables(img, |t| wr32(t, 8, u32::MAX));
        corrupt(&["region", "entr", "count"])
    };
    region_bat_offset_unaligned => |img, l| {
        edit_region(img, l, BAT_GUID, Some(l.bat_offset + 4096), None);
        corrupt(&["region", "bat", "align", "offset"])
    };
    region_bat_past_eof => |img, l| {
        let past = align_up(img.len() as u64, MIB) + 16 * MIB;
        edit_region(img, l, BAT_GUID, Some(past), None);
        corrupt(&["region", "bat", "eof", "end of", "past", "beyond", "outside", "truncat"])
    };
    region_metadata_past_eof => |img, l| {
        let past = align_up(img.len() as u64, MIB) + 16 * MIB;
        edit_region(img, l, METADATA_GUID, Some(past), None);
        corrupt(&["region", "metadata", "eof", "end of", "past", "beyond", "outside", "truncat"])
    };
    region_bat_empty => |img, l| {
        edit_region(img, l, BAT_GUID, None, Some(0));
        corrupt(&["region", "bat", "small", "length", "size"])
    };
    region_metadata_overlaps_bat => |img, l| {
        edit_region(img, l, METADATA_GUID, Some(l.bat_offset), None);
        corrupt(&["overlap", "region"])
    };
    region_bat_overlaps_log => |img, l| {
        edit_region(img, l, BAT_GUID, Some(l.log_offset), None);
        corrupt(&["overlap", "region", "log"])
    };
    region_bat_in_header_area => |img, l| {
        edit_region(img, l, BAT_GUID, Some(0), None);
        corrupt(&["region", "bat", "header", "overlap", "offset"])
    };
    region_unknown_required => |img, l| {
        add_region(img, l, 1);
        unsupported(&["region"])
    };
    region_unknown_optional => |img, l| {
        add_region(img, l, 0);
        opens()
    };
    metadata_signature => |img, l| {
        img[l.meta_offset as usize] ^= 0x20;
        corrupt(&["metadata", "signature"])
    };
    metadata_entry_count_2048 => |img, l| {
        wr16(img, l.meta_offset as usize + 10, 2048);
        corrupt(&["metadata", "entr", "count"])
    };
    metadata_entry_count_max => |img, l| {
        wr16(img, l.meta_offset as usize + 10, u16::MAX);
        corrupt(&["metadata", "entr", "count"])
    };
    metadata_missing_file_parameters => |img, l| {
        remove_meta_entry(img, l, l.item(FILE_PARAMETERS).index);
        corrupt(&["file parameters", "block size", "missing", "required"])
    };
    metadata_missing_virtual_size => |img, l| {
        remove_meta_entry(img, l, l.item(VIRTUAL_SIZE).index);
        corrupt(&["virtual disk size", "virtual size", "missing", "required"])
    };
    metadata_missing_logical_sector_size => |img, l| {
        remove_meta_entry(img, l, l.item(LOGICAL_SECTOR).index);
        corrupt(&["sector", "missing", "required"])
    };
    metadata_unknown_required_item => |img, l| {
        add_meta_item(img, l, 4);
        unsupported(&["metadata", "item"])
    };
    metadata_unknown_optional_item => |img, l| {
        add_meta_item(img, l, 0);
        opens()
    };
    metadata_item_length_huge => |img, l| {
        let e = l.meta_entry_pos(l.item(FILE_PARAMETERS).index);
        wr32(img, e + 20, u32::MAX);
        corrupt(&["metadata", "length", "file parameters", "item"])
    };
    metadata_item_offset_outside_region => |img, l| {
        let e = l.meta_entry_pos(l.item(VIRTUAL_SIZE).index);
        wr32(img, e + 16, l.meta_length + (MIB as u32));
        corrupt(&["metadata", "offset", "item", "outside", "region"])
    };
    block_size_not_power_of_two => |img, l| {
        wr32(img, l.item_pos(FILE_PARAMETERS), 3 << 20);
        corrupt(&["block size", "block"])
    };
    block_size_too_big => |img, l| {
        wr32(img, l.item_pos(FILE_PARAMETERS), 512 << 20);
        corrupt(&["block size", "block"])
    };
    block_size_too_small => |img, l| {
        wr32(img, l.item_pos(FILE_PARAMETERS), 512 << 10);
        corrupt(&["block size", "block"])
    };
    virtual_size_zero => |img, l| {
        wr64(img, l.item_pos(VIRTUAL_SIZE), 0);
        corrupt(&["size"])
    };
    virtual_size_not_sector_multiple => |img, l| {
        wr64(img, l.item_pos(VIRTUAL_SIZE), SIZE + 1);
        corrupt(&["size", "sector"])
    };
    virtual_size_over_64_tib => |img, l| {
        wr64(img, l.item_pos(VIRTUAL_SIZE), (64u64 << 40) + MIB);
        corrupt(&["size"])
    };
    virtual_size_64_tib_bat_region_too_small => |img, l| {
        // Legal size, but the 1 MiB BAT region cannot hold 64 Mi entries:
        // must be refused before anything that large is allocated.
        wr64(img, l.item_pos(VIRTUAL_SIZE), 64u64 << 40);
        corrupt(&["bat", "region", "small", "size"])
    };
    logical_sector_size_1000 => |img, l| {
        wr32(img, l.item_pos(LOGICAL_SECTOR), 1000);
        Expect::Fails(&[ErrorKind::Corrupt, ErrorKind::Unsupported], &["sector"])
    };
    physical_sector_size_1000 => |img, l| {
        wr32(img, l.item_pos(PHYSICAL_SECTOR), 1000);
        Expect::Fails(&[ErrorKind::Corrupt, ErrorKind::Unsupported], &["sector"])
    };
    bat_reserved_state => |img, l| {
        let e = l.bat_entry(img, 0);
        set_bat(img, l, 0, (e & !7) | 4);
        corrupt(&["bat", "state"])
    };
    bat_partially_present_in_dynamic_disk => |img, l| {
        let e = l.bat_entry(img, 0);
        set_bat(img, l, 0, (e & !7) | 7);
        corrupt(&["bat", "state", "partial"])
    };
    bat_offset_in_header_area => |img, l| {
        set_bat(img, l, 0, 6);
        corrupt(&["bat", "offset", "header", "overlap"])
    };
    bat_offset_past_eof => |img, l| {
        let past = align_up(img.len() as u64, MIB) + 64 * MIB;
        set_bat(img, l, 0, past | 6);
        corrupt(&["bat", "eof", "end of", "past", "beyond", "outside", "truncat"])
    };
    bat_offset_in_log => |img, l| {
        set_bat(img, l, 0, l.log_offset | 6);
        corrupt(&["bat", "overlap", "log"])
    };
    bat_offset_in_metadata_region => |img, l| {
        set_bat(img, l, 0, l.meta_offset | 6);
        corrupt(&["bat", "overlap", "metadata", "region"])
    };
    bat_two_blocks_same_offset => |img, l| {
        let e0 = l.bat_entry(img, 0);
        assert_eq!(e0 & 7, 6);
        set_bat(img, l, 3, e0);
        corrupt(&["bat", "overlap", "twice", "same", "duplicate", "block"])
    };
    bat_reserved_bits => |img, l| {
        let e = l.bat_entry(img, 0);
        set_bat(img, l, 0, e | (1 << 10));
        corrupt(&["bat", "reserved"])
    };
    log_guid_without_valid_entry => |img, _l| {
        let g = Uuid::new_v4();
        edit_headers(img, |h| wrguid(h, 48, g));
        corrupt(&["log"])
    };
    log_crafted_entry_is_replayed => |img, l| {
        craft_log(img, l, None);
        let mut want = expected_content();
        want[..MIB as usize].fill(0);
        Expect::Opens(Some(want))
    };
    log_entry_bad_crc => |img, l| {
        let at = craft_log(img, l, None);
        img[at + 4096 + 100] ^= 0x01;
        corrupt(&["log"])
    };
    log_entry_bad_data_sector_signature => |img, l| {
        let at = craft_log(img, l, None);
        wr32(img, at + 4096, 0x6174_6165);
        let entry = img[at..at + 8192].to_vec();
        let mut e = entry;
        seal(&mut e, 4);
        img[at..at + 8192].copy_from_slice(&e);
        corrupt(&["log"])
    };
    log_flushed_offset_past_eof => |img, l| {
        let past = align_up(img.len() as u64, MIB) + MIB;
        craft_log(img, l, Some(past));
        corrupt(&["log", "truncat", "flushed", "short"])
    };
    truncated_to_100_kib => |img, _l| {
        img.truncate(100 * KIB as usize);
        corrupt(&["truncat", "short", "header", "region", "eof", "end of", "signature", "checksum"])
    };
    truncated_inside_bat => |img, l| {
        img.truncate(l.bat_offset as usize + 4096);
        corrupt(&["truncat", "short", "bat", "metadata", "region", "eof", "end of", "past", "beyond", "outside", "signature"])
    };
    truncated_inside_metadata => |img, l| {
        img.truncate(l.meta_offset as usize + 100);
        corrupt(&["truncat", "short", "bat", "metadata", "region", "eof", "end of", "past", "beyond", "outside", "signature"])
    };
    truncated_before_last_block => |img, l| {
        let last = l.allocated(img).iter().map(|&(_, o)| o).max().expect("allocated blocks");
        assert!(last >= l.end_of_structures(img) - l.block_size as u64, "payload is last");
        img.truncate(last as usize);
        corrupt(&["bat", "truncat", "eof", "end of", "past", "beyond", "outside", "block"])
    };
    empty_file => |img, _l| {
        img.clear();
        corrupt(&["truncat", "short", "empty", "signature", "identifier", "eof", "end of", "header"])
    };
}

/// The base images themselves open and read right (so that every failure
/// above is due to the damage).
#[test]
fn undamaged_bases_open() {
    for (name, img) in bases() {
        judge(&format!("undamaged {name} image"), &img, &opens());
    }
}

/// A few thousand random single-byte mutations in the first 4 MiB of a
/// small image: whatever the damage, opening (and, when it opens, reading
/// and closing) never panics, and a read-only open never writes.
#[test]
fn random_single_byte_mutations() {
    let base = engine_image();
    let l = Layout::parse(&base);
    // Bytes where a mutation is interesting: the structures' fields.
    let mut hot: Vec<std::ops::Range<usize>> = vec![
        0..16,
        HEADERS[0]..HEADERS[0] + 80,
        HEADERS[1]..HEADERS[1] + 80,
        REGION_TABLES[0]..REGION_TABLES[0] + 16 + 32 * l.regions.len(),
        REGION_TABLES[1]..REGION_TABLES[1] + 16 + 32 * l.regions.len(),
        l.log_offset as usize..l.log_offset as usize + 4096,
        l.bat_offset as usize..l.bat_pos(l.data_blocks),
        l.meta_offset as usize..l.meta_entry_pos(l.meta.len()),
    ];
    for m in &l.meta {
        let p = l.meta_offset as usize + m.offset as usize;
        hot.push(p..p + m.length as usize);
    }
    let limit = (4 * MIB as usize).min(base.len());
    let iterations: u64 = std::env::var("CKPT_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng::new(0xC0FFEE);
    let mut opened = [0u64; 2];
    for i in 0..iterations {
        let pos = if rng.below(2) == 0 {
            rng.below(limit as u64) as usize
        } else {
            let r = &hot[rng.below(hot.len() as u64) as usize];
            r.start + rng.below((r.end - r.start) as u64) as usize
        };
        let old = base[pos];
        let new = old ^ (1 + rng.below(255) as u8);
        let _ctx = Ctx(format!(
            "mutation #{i}: byte {pos:#x} {old:#04x} -> {new:#04x}"
        ));
        let mut img = base.clone();
        img[pos] = new;

        // Read-only: must never write.
        let ro = Counting::new(MemStorage::from_vec(img.clone()), false);
        if let Ok(disk) = Disk::open_storage(ro.clone(), OpenMode::ReadOnly) {
            opened[0] += 1;
            poke(&disk);
            drop(disk);
        }
        assert_eq!(ro.mutations(), 0, "a read-only open wrote");

        // Read-write: whatever happens, no panic; a failed open does not write.
        let mem = MemStorage::from_vec(img.clone());
        let rw = Counting::new(mem.clone(), true);
        match Disk::open_storage(rw.clone(), OpenMode::ReadWrite) {
            Ok(disk) => {
                opened[1] += 1;
                poke(&disk);
                let _ = disk.write_at(&[0x5a; 1000], 7 * MIB + 3);
                let _ = disk.close();
            }
            Err(_) => assert!(mem.snapshot() == img, "a failed read-write open wrote"),
        }
    }
    eprintln!(
        "{iterations} mutations: {} opened read-only, {} read-write",
        opened[0], opened[1]
    );
}

/// Read a little at every block start and at the end (errors allowed).
fn poke(disk: &Disk) {
    let size = disk.virtual_size();
    let mut buf = vec![0u8; 4096];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(4096) as usize;
        let _ = disk.read_at(&mut buf[..n], off);
        off += MIB;
    }
    let _ = disk.extents();
}

/// A way to damage an image.
type Damage = dyn Fn(&mut Vec<u8>, &Layout);

const CHILD_ENV: &str = "CKPT_CORRUPT_ALLOC_CHILD";

/// Damage that announces huge sizes or counts must be refused before the
/// engine allocates anything that large. Proven by re-running this test in a
/// child process under a small address-space limit (`prlimit --as`).
#[test]
fn huge_counts_are_refused_before_allocating() {
    let cases: Vec<(&str, Box<Damage>)> = vec![
        (
            "virtual size 64 TiB",
            Box::new(|img, l| wr64(img, l.item_pos(VIRTUAL_SIZE), 64u64 << 40)),
        ),
        (
            "virtual size 2^63",
            Box::new(|img, l| wr64(img, l.item_pos(VIRTUAL_SIZE), 1u64 << 63)),
        ),
        (
            "region entry count",
            Box::new(|img, _l| edit_region_tables(img, |t| wr32(t, 8, u32::MAX))),
        ),
        (
            "metadata entry count",
            Box::new(|img, l| wr16(img, l.meta_offset as usize + 10, u16::MAX)),
        ),
        (
            "metadata item length",
            Box::new(|img, l| {
                let e = l.meta_entry_pos(l.item(FILE_PARAMETERS).index);
                wr32(img, e + 20, u32::MAX)
            }),
        ),
        (
            "BAT region length 4 GiB - 1 MiB",
            Box::new(|img, l| {
                edit_region(img, l, BAT_GUID, None, Some(u32::MAX - (MIB as u32) + 1))
            }),
        ),
        (
            "log length 4 GiB - 1 MiB",
            Box::new(|img, _l| edit_headers(img, |h| wr32(h, 68, u32::MAX - (MIB as u32) + 1))),
        ),
        (
            "log entry length 4 GiB - 4 KiB",
            Box::new(|img, l| {
                let at = craft_log(img, l, None);
                let mut e = img[at..at + 8192].to_vec();
                wr32(&mut e, 8, u32::MAX - 4095);
                seal(&mut e, 4);
                img[at..at + 8192].copy_from_slice(&e);
            }),
        ),
        (
            "64 TiB disk whose 513 MiB BAT lies past the real end, inside the log's LastFileOffset",
            Box::new(|img, l| {
                let g = Uuid::new_v4();
                let end = align_up(img.len() as u64, MIB);
                let bat_len = align_up(((64u64 << 40) / MIB + (64 << 40) / MIB / 4096) * 8, MIB);
                let past = end + MIB;
                wr64(img, l.item_pos(VIRTUAL_SIZE), 64u64 << 40);
                edit_region(img, l, BAT_GUID, Some(past), Some(bat_len as u32));
                let meta = l.meta_offset as usize;
                let same = img[meta..meta + 4096].to_vec();
                let e = raw_entry(
                    g,
                    1,
                    0,
                    end - MIB,
                    past + bat_len,
                    &[RawDesc::Data(l.meta_offset, same)],
                );
                install_log(img, l, g, &e);
            }),
        ),
        (
            "log descriptor count",
            Box::new(|img, l| {
                let at = craft_log(img, l, None);
                let mut e = img[at..at + 8192].to_vec();
                wr32(&mut e, 24, u32::MAX);
                seal(&mut e, 4);
                img[at..at + 8192].copy_from_slice(&e);
            }),
        ),
    ];
    let child = std::env::var_os(CHILD_ENV).is_some();
    if !child {
        // In this process: each must fail, in both modes.
        for (name, damage) in &cases {
            for (base_name, base) in bases() {
                let l = Layout::parse(&base);
                let mut img = base.clone();
                damage(&mut img, &l);
                for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
                    let r = Disk::open_storage(Arc::new(MemStorage::from_vec(img.clone())), mode);
                    assert!(r.is_err(), "{name} [{base_name}] {mode:?}: opens");
                }
            }
        }
        // In a child under a 256 MiB address-space limit: no allocation that
        // large may even be attempted (an abort fails the child).
        let exe = std::env::current_exe().expect("current exe");
        if !Path::new("/usr/bin/prlimit").exists()
            && Command::new("prlimit").arg("--version").output().is_err()
        {
            assert!(!support::in_ci(), "CI=true but prlimit is missing");
            eprintln!("NOTICE: prlimit is missing; skipping the allocation bound check");
            return;
        }
        // The child must not run qemu under the limit: hand it the image.
        let dir = tempfile::tempdir().expect("tempdir");
        let qemu_copy = dir.path().join("qemu.vhdx");
        if let Some(q) = qemu_image() {
            std::fs::write(&qemu_copy, q).expect("write qemu image");
        }
        let out = Command::new("prlimit")
            .arg(format!("--as={}", 256u64 << 20))
            .arg("--")
            .arg(exe)
            .args([
                "--exact",
                "huge_counts_are_refused_before_allocating",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD_ENV, &qemu_copy)
            .output()
            .expect("run the child under prlimit");
        assert!(
            out.status.success(),
            "the child under a 256 MiB address-space limit failed ({}): some damage makes the engine \
             allocate a huge buffer:\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    // Child: the allocations must stay small; it says which case it is on,
    // so that an abort names the culprit.
    let mut child_bases = vec![("engine", engine_image())];
    if let Some(q) = std::env::var_os(CHILD_ENV).and_then(|p| std::fs::read(p).ok()) {
        child_bases.push(("qemu", q));
    }
    for (name, damage) in &cases {
        for (base_name, base) in child_bases.clone() {
            let l = Layout::parse(&base);
            let mut img = base.clone();
            damage(&mut img, &l);
            eprintln!("child: {name} [{base_name}]");
            for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
                let _ = Disk::open_storage(Arc::new(MemStorage::from_vec(img.clone())), mode);
            }
        }
    }
}

/// The real dirty-log image from QEMU's test suite: its one valid log entry
/// (sequence 7) is what makes MiB 17 read as data. With one byte of that
/// entry flipped, the log is dirty with no valid sequence: both modes must
/// refuse it, without writing.
#[test]
fn real_dirty_log_with_a_damaged_entry() {
    let dir = std::env::var_os("CKPT_TESTDATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"));
    let src = dir.join("iotest-dirtylog-10G-4M.vhdx.bz2");
    if !src.exists() {
        assert!(
            !support::in_ci(),
            "CI=true but {} is missing",
            src.display()
        );
        eprintln!("NOTICE: {} is missing; skipping", src.display());
        return;
    }
    let out = Command::new("bzip2").arg("-dc").arg(&src).output();
    let img = match out {
        Ok(o) if o.status.success() => o.stdout,
        _ => {
            assert!(
                !support::in_ci(),
                "CI=true but bzip2 cannot decompress {}",
                src.display()
            );
            eprintln!("NOTICE: bzip2 is missing; skipping");
            return;
        }
    };
    let l = Layout::parse(&img);
    assert!(!l.log_guid.is_nil(), "the sample has a dirty log");
    // Find the entries carrying the header's LogGuid.
    let log = l.log_offset as usize..l.log_offset as usize + l.log_length as usize;
    let live: Vec<usize> = log
        .clone()
        .step_by(4096)
        .filter(|&p| rd32(&img, p) == 0x6567_6F6C && rdguid(&img, p + 32) == l.log_guid)
        .collect();
    assert_eq!(live.len(), 1, "one entry with the live LogGuid");

    // Undamaged: the replay makes MiB 17 read as data (0xa5), without writing.
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("damaged.vhdx");
    std::fs::write(&path, &img).expect("write");
    let d =
        open_with_timeout(&path, OpenMode::ReadOnly, OPEN_TIMEOUT).expect("undamaged sample opens");
    let mut buf = vec![0u8; 4096];
    d.read_at(&mut buf, 17 * MIB).expect("read");
    assert!(
        buf.iter().all(|&b| b == 0xa5),
        "the log entry was not replayed"
    );
    drop(d);

    let mut bad = img.clone();
    bad[live[0] + 4096 + 200] ^= 0x10;
    judge_failure("real dirty log, entry damaged", &bad, &["log"]);
}

/// Both modes fail with a Corrupt error naming one of `words`; no write.
fn judge_failure(ctx: &str, img: &[u8], words: &'static [&'static str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("damaged.vhdx");
    std::fs::write(&path, img).expect("write");
    for mode in [OpenMode::ReadOnly, OpenMode::ReadWrite] {
        match open_with_timeout(&path, mode, OPEN_TIMEOUT) {
            Ok(_) => panic!("{ctx} {mode:?}: opens"),
            Err(e) => {
                let msg = e.to_string();
                eprintln!("{ctx} {mode:?}: {msg}");
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{ctx} {mode:?}: {msg}");
                let lower = msg.to_lowercase();
                assert!(
                    words.iter().any(|w| lower.contains(w)),
                    "{ctx} {mode:?}: {msg}"
                );
            }
        }
        let now = std::fs::read(&path).expect("read back");
        assert!(
            now == img,
            "{ctx} {mode:?}: the failed open wrote: {}",
            first_diff(&now, img)
        );
    }
}

/// The error of a crafted corrupt file says, in data, which structure is
/// damaged, at which file offset, and why (not only in its message).
#[test]
fn corruption_names_the_structure_and_offset_in_data() {
    use ckpt::{Reason, Structure};
    let base = engine_image();
    let l = Layout::parse(&base);
    let cases: Vec<(&str, Vec<u8>, Structure, Option<u64>)> = vec![
        {
            let mut img = base.clone();
            img[7] = b'X';
            (
                "file identifier signature",
                img,
                Structure::FileIdentifier,
                Some(0),
            )
        },
        {
            let mut img = base.clone();
            img[l.meta_offset as usize] ^= 1;
            (
                "metadata table signature",
                img,
                Structure::MetadataTable,
                Some(l.meta_offset),
            )
        },
        {
            let mut img = base.clone();
            edit_current_header(&mut img, &l, |h| wr32(h, 68, 0));
            (
                "current header LogLength",
                img,
                Structure::Header,
                Some(l.current_header as u64),
            )
        },
        {
            let mut img = base.clone();
            set_bat(&mut img, &l, 1, 4);
            (
                "BAT entry state",
                img,
                Structure::Bat,
                Some(l.bat_pos(1) as u64),
            )
        },
        {
            let mut img = base.clone();
            edit_region_tables(&mut img, |t| wr32(t, 8, 4000));
            ("region table EntryCount", img, Structure::RegionTable, None)
        },
    ];
    for (name, img, structure, offset) in cases {
        let err = match Disk::open_storage(Arc::new(MemStorage::from_vec(img)), OpenMode::ReadOnly)
        {
            Ok(_) => panic!("{name}: the damaged image opens"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{name}: {err}");
        let c = err
            .corruption()
            .unwrap_or_else(|| panic!("{name}: not a corruption: {err:?}"));
        assert_eq!(c.structure, structure, "{name}: {err}");
        if offset.is_some() {
            assert_eq!(c.offset, offset, "{name}: {err}");
        }
        let why = c.reason.clone();
        match name {
            "file identifier signature" | "metadata table signature" => {
                assert!(
                    matches!(why, Reason::BadSignature { .. }),
                    "{name}: {why:?}"
                )
            }
            "current header LogLength" => assert!(
                matches!(
                    why,
                    Reason::BadField {
                        field: "LogLength",
                        value: 0,
                        ..
                    }
                ),
                "{name}: {why:?}"
            ),
            _ => {}
        }
    }
}
