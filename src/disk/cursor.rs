//! `std::io::{Read, Write, Seek}` over a [`Disk`].

use super::Disk;
use crate::error::Error;

impl Disk {
    /// A `Read + Write + Seek` view of the disk starting at offset 0.
    pub fn cursor(&self) -> DiskCursor<'_> {
        DiskCursor { disk: self, pos: 0 }
    }
}

/// `std::io::{Read, Write, Seek}` over a [`Disk`].
#[derive(Debug)]
pub struct DiskCursor<'a> {
    disk: &'a Disk,
    pos: u64,
}

fn to_io(e: Error) -> std::io::Error {
    match e {
        Error::Io(e) => e,
        e => std::io::Error::other(e),
    }
}

impl std::io::Read for DiskCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.disk.virtual_size();
        if self.pos >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - self.pos) as usize;
        self.disk.read_at(&mut buf[..n], self.pos).map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Write for DiskCursor<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let size = self.disk.virtual_size();
        if self.pos >= size && !buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "end of virtual disk",
            ));
        }
        let n = (buf.len() as u64).min(size.saturating_sub(self.pos)) as usize;
        self.disk.write_at(&buf[..n], self.pos).map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.disk.flush().map_err(to_io)
    }
}

impl std::io::Seek for DiskCursor<'_> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let size = self.disk.virtual_size() as i128;
        let new = match pos {
            std::io::SeekFrom::Start(p) => p as i128,
            std::io::SeekFrom::End(d) => size + d as i128,
            std::io::SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 || new > u64::MAX as i128 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}
