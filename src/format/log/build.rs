//! Building new log entries.

use uuid::Uuid;

use super::*;

/// Largest number of 4 KiB data sectors one entry can carry in a log of `log_len` bytes
/// while staying at most half of the log.
pub fn max_data_sectors(log_len: u64) -> usize {
    let sectors = (log_len as usize / SECTOR) / 2;
    // n data sectors need desc_sectors(n) + n sectors.
    let mut n = sectors.saturating_sub(1);
    while n > 0 && desc_sectors(n) + n > sectors {
        n -= 1;
    }
    n
}

/// Build an entry holding 4 KiB sector writes `(file_offset, sector)`.
///
/// [MS-VHDX] §2.3.1.1 wants FlushedFileOffset and LastFileOffset to be
/// multiples of 1 MiB: `flushed_file_offset` (a size the file durably has)
/// is rounded down and `last_file_offset` (a size every structure fits in)
/// up, so callers may pass raw file lengths.
pub fn build_entry(
    guid: &Uuid,
    sequence: u64,
    tail: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: &[(u64, &[u8])],
) -> Vec<u8> {
    let mib = crate::format::MIB;
    let flushed_file_offset = flushed_file_offset / mib * mib;
    let last_file_offset =
        crate::format::align_up(last_file_offset, mib).unwrap_or(u64::MAX / mib * mib);
    let ds = desc_sectors(writes.len());
    let length = SECTOR * (ds + writes.len());
    let mut b = vec![0u8; length];
    put32(&mut b, ENTRY_SIGNATURE_OFFSET, ENTRY_SIGNATURE);
    put32(&mut b, ENTRY_LENGTH_OFFSET, length as u32);
    put32(&mut b, ENTRY_TAIL_OFFSET, tail as u32);
    put64(&mut b, ENTRY_SEQUENCE_OFFSET, sequence);
    put32(&mut b, ENTRY_DESCRIPTOR_COUNT_OFFSET, writes.len() as u32);
    put_guid(&mut b, ENTRY_LOG_GUID_OFFSET, guid);
    put64(
        &mut b,
        ENTRY_FLUSHED_FILE_OFFSET_OFFSET,
        flushed_file_offset,
    );
    put64(&mut b, ENTRY_LAST_FILE_OFFSET_OFFSET, last_file_offset);
    for (i, (off, data)) in writes.iter().enumerate() {
        let o = desc_offset(i);
        put32(&mut b, o + DESC_SIGNATURE_OFFSET, DATA_DESC_SIGNATURE);
        b[o + DESC_TRAILING_OFFSET..o + DESC_TRAILING_OFFSET + 4]
            .copy_from_slice(&data[DATA_SEQUENCE_LOW_OFFSET..SECTOR]);
        b[o + DESC_LEADING_OFFSET..o + DESC_LEADING_OFFSET + 8]
            .copy_from_slice(&data[..DATA_OFFSET]);
        put64(&mut b, o + DESC_FILE_OFFSET_OFFSET, *off);
        put64(&mut b, o + DESC_SEQUENCE_OFFSET, sequence);
        let s = (ds + i) * SECTOR;
        b[s + DATA_OFFSET..s + DATA_SEQUENCE_LOW_OFFSET]
            .copy_from_slice(&data[DATA_OFFSET..DATA_SEQUENCE_LOW_OFFSET]);
        put32(&mut b, s + DATA_SIGNATURE_OFFSET, DATA_SECTOR_SIGNATURE);
        put32(
            &mut b,
            s + DATA_SEQUENCE_HIGH_OFFSET,
            (sequence >> 32) as u32,
        );
        put32(&mut b, s + DATA_SEQUENCE_LOW_OFFSET, sequence as u32);
    }
    let crc = crc32c::crc32c(&b);
    put32(&mut b, ENTRY_CHECKSUM_OFFSET, crc);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn build_entry_aligns_file_offsets() {
        let e = build_entry(&Uuid::from_u128(1), 1, 0, 5 << 20 | 12345, 5 << 20 | 1, &[]);
        assert_eq!(le64(&e, 48), 5 << 20);
        assert_eq!(le64(&e, 56), 6 << 20);
        let e = build_entry(&Uuid::from_u128(1), 1, 0, 3 << 20, 3 << 20, &[]);
        assert_eq!((le64(&e, 48), le64(&e, 56)), (3 << 20, 3 << 20));
    }

    #[test]
    fn golden_entry_written_by_hand() {
        let guid = uuid::uuid!("00112233-4455-6677-8899-AABBCCDDEEFF");
        let data: Vec<u8> = (0..SECTOR).map(|i| (i % 251) as u8).collect();
        let seq = 0x0000_0002_0000_0001u64;
        let mut b = vec![0u8; 2 * SECTOR];
        b[0..4].copy_from_slice(b"loge");
        b[8..12].copy_from_slice(&0x2000u32.to_le_bytes()); // EntryLength
        b[16..24].copy_from_slice(&seq.to_le_bytes());
        b[24] = 1; // DescriptorCount
        b[32..48].copy_from_slice(&[
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        b[48 + 2] = 0x10; // FlushedFileOffset 1 MiB
        b[56 + 2] = 0x20; // LastFileOffset 2 MiB
        b[64..68].copy_from_slice(b"desc");
        b[68..72].copy_from_slice(&data[4092..4096]);
        b[72..80].copy_from_slice(&data[0..8]);
        b[80 + 2] = 0x30; // FileOffset 3 MiB
        b[88..96].copy_from_slice(&seq.to_le_bytes());
        b[SECTOR..SECTOR + 4].copy_from_slice(b"data");
        b[SECTOR + 4] = 2; // SequenceHigh
        b[SECTOR + 8..SECTOR + 4092].copy_from_slice(&data[8..4092]);
        b[SECTOR + 4092] = 1; // SequenceLow
        let crc = crc32c::crc32c(&b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        let built = build_entry(&guid, seq, 0, 1 << 20, 2 << 20, &[(3 << 20, &data)]);
        assert_eq!(built, b);
        let read = |p: u64, buf: &mut [u8]| -> Result<()> {
            buf.copy_from_slice(&b[p as usize..p as usize + buf.len()]);
            Ok(())
        };
        let e = read_entry(&read, b.len() as u64, &guid, 0)
            .unwrap()
            .unwrap();
        assert_eq!((e.sequence, e.descriptor_count), (seq, 1));
        let mut updates = Vec::new();
        for_each_update(&read, b.len() as u64, &e, |u| {
            updates.push(u);
            Ok(())
        })
        .unwrap();
        let Update::Data {
            file_offset,
            log_position,
            leading,
            trailing,
        } = updates[0].clone()
        else {
            panic!("{updates:?}")
        };
        assert_eq!(
            (updates.len(), file_offset, log_position),
            (1, 3 << 20, SECTOR as u64)
        );
        let mut out = vec![0u8; SECTOR];
        read_data_sector(
            &read,
            b.len() as u64,
            log_position,
            &leading,
            &trailing,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, data);
        // Any single damaged byte makes the entry invalid, never a panic.
        for i in (0..b.len()).step_by(61) {
            let mut d = b.clone();
            d[i] ^= 0x5a;
            let read = |p: u64, buf: &mut [u8]| -> Result<()> {
                buf.copy_from_slice(&d[p as usize..p as usize + buf.len()]);
                Ok(())
            };
            assert_eq!(
                read_entry(&read, d.len() as u64, &guid, 0).unwrap(),
                None,
                "{i}"
            );
        }
    }
}
