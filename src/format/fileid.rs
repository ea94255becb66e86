//! The file type identifier at offset 0.

use crate::error::{Error, Result};
use crate::format::le64;

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
        if b.len() < SIZE {
            return Err(Error::Corrupt(
                "file is too short for a VHDX file identifier".into(),
            ));
        }
        let sig = le64(b, 0);
        if sig != SIGNATURE {
            return Err(Error::BadSignature {
                structure: "file identifier (not a VHDX file)",
                offset: 0,
                found: sig,
            });
        }
        let units: Vec<u16> = b[8..520]
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
        b[..8].copy_from_slice(&SIGNATURE.to_le_bytes());
        for (i, u) in self.creator.encode_utf16().take(255).enumerate() {
            b[8 + 2 * i..10 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        b
    }
}
