//! A raw log-entry builder for tests ([MS-VHDX] §2.3.1), with data and
//! zero descriptors, sharing no code with the engine. Included by path
//! (`#[path = "support/rawlog.rs"] mod rawlog;`) next to `mod support;`.

#![allow(dead_code)]

use uuid::Uuid;

fn wr32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn wr64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn rd32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn rd64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// One descriptor of a raw log entry built by [`raw_entry`].
pub enum RawDesc {
    /// A data descriptor and its data sector: the full 4 KiB to write.
    Data(u64, Vec<u8>),
    /// A zero descriptor: (file offset, length).
    Zero(u64, u64),
}

/// Build one log entry with data and zero descriptors (at most 126), as
/// [MS-VHDX] §2.3.1 lays it out, independently of the engine.
pub fn raw_entry(
    g: Uuid,
    seq: u64,
    tail: u32,
    flushed: u64,
    last: u64,
    descs: &[RawDesc],
) -> Vec<u8> {
    assert!(descs.len() <= 126);
    let data: Vec<&Vec<u8>> = descs
        .iter()
        .filter_map(|d| match d {
            RawDesc::Data(_, v) => Some(v),
            RawDesc::Zero(..) => None,
        })
        .collect();
    let len = 4096 * (1 + data.len());
    let mut e = vec![0u8; len];
    wr32(&mut e, 0, 0x6567_6F6C);
    wr32(&mut e, 8, len as u32);
    wr32(&mut e, 12, tail);
    wr64(&mut e, 16, seq);
    wr32(&mut e, 24, descs.len() as u32);
    e[32..48].copy_from_slice(&g.to_bytes_le());
    wr64(&mut e, 48, flushed);
    wr64(&mut e, 56, last);
    let mut k = 0;
    for (i, d) in descs.iter().enumerate() {
        let o = 64 + 32 * i;
        match d {
            RawDesc::Zero(off, n) => {
                wr32(&mut e, o, 0x6F72_657A);
                wr64(&mut e, o + 8, *n);
                wr64(&mut e, o + 16, *off);
            }
            RawDesc::Data(off, v) => {
                wr32(&mut e, o, 0x6373_6564);
                wr32(&mut e, o + 4, rd32(v, 4092));
                wr64(&mut e, o + 8, rd64(v, 0));
                wr64(&mut e, o + 16, *off);
                k += 1;
                let s = 4096 * k;
                wr32(&mut e, s, 0x6174_6164);
                wr32(&mut e, s + 4, (seq >> 32) as u32);
                e[s + 8..s + 4092].copy_from_slice(&v[8..4092]);
                wr32(&mut e, s + 4092, seq as u32);
            }
        }
        wr64(&mut e, o + 24, seq);
    }
    let c = crc32c::crc32c(&e);
    wr32(&mut e, 4, c);
    e
}
