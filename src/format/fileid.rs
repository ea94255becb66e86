//! The file type identifier at offset 0.

use crate::error::{Error, Reason, Result, Structure};
use crate::format::Reader;

// Byte layout of the file type identifier (MS-VHDX 2.2.1), 64 KiB at offset 0:
//
//   0     8  Signature "vhdxfile"
//   8   512  Creator: UTF-16LE, NUL-padded (diagnostic only)
// 520        reserved to 64 KiB

const SIGNATURE_OFFSET: usize = 0;
const CREATOR_OFFSET: usize = 8;
const CREATOR_SIZE: usize = 512;
const _: () = assert!(CREATOR_OFFSET + CREATOR_SIZE == SIZE);

/// "vhdxfile".
pub const SIGNATURE: u64 = 0x656C_6966_7864_6876;
/// Bytes of the identifier this crate reads and writes (the structure is 64 KiB, the rest reserved).
pub const SIZE: usize = 520;

/// The file type identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    /// The creator string (diagnostic only).
    pub creator: String,
}

impl FileIdentifier {
    /// Parse the first [`SIZE`] bytes of a file.
    pub fn parse(b: &[u8]) -> Result<FileIdentifier> {
        const S: Structure = Structure::FileIdentifier;
        let r = Reader::new(b, S);
        let sig = r.u64(SIGNATURE_OFFSET).map_err(|e| e.at(0))?;
        if sig != SIGNATURE {
            return Err(Error::corrupt(
                S,
                Some(0),
                Reason::BadSignature { found: sig },
            ));
        }
        let units: Vec<u16> = r
            .bytes(CREATOR_OFFSET, CREATOR_SIZE)
            .map_err(|e| e.at(0))?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Ok(FileIdentifier {
            creator: String::from_utf16_lossy(&units),
        })
    }

    /// Serialise into [`SIZE`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; SIZE];
        b[SIGNATURE_OFFSET..SIGNATURE_OFFSET + 8].copy_from_slice(&SIGNATURE.to_le_bytes());
        for (i, u) in self
            .creator
            .encode_utf16()
            .take(CREATOR_SIZE / 2 - 1)
            .enumerate()
        {
            let o = CREATOR_OFFSET + 2 * i;
            b[o..o + 2].copy_from_slice(&u.to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let f = FileIdentifier {
            creator: "libckpt 0.1 ü".into(),
        };
        assert_eq!(FileIdentifier::parse(&f.to_bytes()).unwrap(), f);
    }

    #[test]
    fn golden_bytes_written_by_hand() {
        let mut b = vec![0u8; SIZE];
        b[..8].copy_from_slice(b"vhdxfile");
        b[8..14].copy_from_slice(&[b'q', 0, b'e', 0, b'm', 0]);
        let f = FileIdentifier::parse(&b).unwrap();
        assert_eq!(f.creator, "qem");
        assert_eq!(f.to_bytes(), b);
    }

    #[test]
    fn a_long_creator_is_cut_and_keeps_its_terminator() {
        let f = FileIdentifier {
            creator: "x".repeat(1000),
        };
        let b = f.to_bytes();
        assert_eq!(b.len(), SIZE);
        assert_eq!(FileIdentifier::parse(&b).unwrap().creator.len(), 255);
    }

    #[test]
    fn short_or_garbage_input_is_an_error_never_a_panic() {
        for n in [0, 7, 8, SIZE - 1] {
            assert!(FileIdentifier::parse(&vec![0u8; n]).is_err());
        }
        let mut b = vec![0xd8u8; SIZE]; // unpaired surrogates
        b[..8].copy_from_slice(b"vhdxfile");
        assert!(FileIdentifier::parse(&b).is_ok());
        b[0] = b'V';
        assert!(FileIdentifier::parse(&b).is_err());
    }
}
