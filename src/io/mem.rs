//! [`MemStorage`]: an image in memory (tests, fuzzing, scratch disks).

use std::io;
use std::sync::{Arc, RwLock};

use super::Storage;

/// Storage in memory. Clones share the same bytes.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    data: Arc<RwLock<Vec<u8>>>,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }
    /// Storage holding `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> MemStorage {
        MemStorage {
            data: Arc::new(RwLock::new(bytes)),
        }
    }
    /// A copy of the current bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

const MAX_MEM: u64 = 1 << 40;

impl Storage for MemStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let len = d.len() as u64;
        if offset >= len {
            buf.fill(0);
            return Ok(());
        }
        let start = offset as usize;
        let n = ((len - offset) as usize).min(buf.len());
        buf[..n].copy_from_slice(&d[start..start + n]);
        buf[n..].fill(0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= MAX_MEM)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write too large"))?;
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        if (d.len() as u64) < end {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > MAX_MEM {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too large"));
        }
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len as usize, 0);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_retry_is_safe(&self) -> bool {
        // Memory never loses a write it accepted.
        true
    }
}
