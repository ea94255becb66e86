//! A sparse in-memory storage that can crash like `ckpt::io::FaultStorage`
//! (clean or torn cut at event N), for crash sweeps over images that are
//! large but mostly empty (thousands of allocated blocks): only the 4 KiB
//! pages really written take memory, so a cut image costs its data, not its
//! length.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use ckpt::io::{Cut, Storage};

const PAGE: u64 = 4096;

#[derive(Debug, Clone, Default)]
struct Pages {
    len: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Pages {
    fn write(&mut self, buf: &[u8], offset: u64) {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (p, within) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - within).min(buf.len() - done);
            let page = self
                .pages
                .entry(p)
                .or_insert_with(|| vec![0u8; PAGE as usize].into_boxed_slice());
            page[within..within + n].copy_from_slice(&buf[done..done + n]);
            done += n;
        }
        self.len = self.len.max(offset + buf.len() as u64);
    }
    fn zero(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let (p, within) = (pos / PAGE, pos % PAGE);
            let n = (PAGE - within).min(end - pos);
            if n == PAGE {
                self.pages.remove(&p);
            } else if let Some(page) = self.pages.get_mut(&p) {
                page[within as usize..(within + n) as usize].fill(0);
            }
            pos += n;
        }
    }
    fn set_len(&mut self, len: u64) {
        if len < self.len {
            // Bytes past the new end read as zeros if the storage grows again.
            let within = (len % PAGE) as usize;
            if within != 0 {
                if let Some(page) = self.pages.get_mut(&(len / PAGE)) {
                    page[within..].fill(0);
                }
            }
            self.pages.retain(|&p, _| p * PAGE < len);
        }
        self.len = len;
    }
    fn read(&self, buf: &mut [u8], offset: u64) {
        buf.fill(0);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (p, within) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - within).min(buf.len() - done);
            if pos < self.len {
                if let Some(page) = self.pages.get(&p) {
                    let m = n.min((self.len - pos) as usize);
                    buf[done..done + m].copy_from_slice(&page[within..within + m]);
                }
            }
            done += n;
        }
    }
}

/// See the module documentation. `crash_at = u64::MAX` only counts.
#[derive(Debug)]
pub struct SparseStorage {
    state: RwLock<Pages>,
    crash_at: u64,
    cut: Cut,
    events: AtomicU64,
}

impl SparseStorage {
    /// Empty storage that crashes at event `crash_at`.
    pub fn new(crash_at: u64, cut: Cut) -> SparseStorage {
        SparseStorage {
            state: RwLock::new(Pages::default()),
            crash_at,
            cut,
            events: AtomicU64::new(0),
        }
    }
    /// A copy of the bytes (that never crashes), or one that crashes at `crash_at`.
    pub fn copy(&self, crash_at: u64, cut: Cut) -> SparseStorage {
        SparseStorage {
            state: RwLock::new(self.lock().clone()),
            crash_at,
            cut,
            events: AtomicU64::new(0),
        }
    }
    /// Events seen so far.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }
    /// Whether the crash point has been reached.
    pub fn crashed(&self) -> bool {
        self.events() > self.crash_at
    }
    /// Call `f(offset, bytes)` for every page held, in order (the bytes
    /// past the end are left out).
    pub fn for_each_page(&self, mut f: impl FnMut(u64, &[u8])) {
        let st = self.lock();
        for (&p, page) in &st.pages {
            let off = p * PAGE;
            if off < st.len {
                f(off, &page[..(st.len - off).min(PAGE) as usize]);
            }
        }
    }
    /// Bytes of memory the pages take.
    pub fn resident(&self) -> u64 {
        self.lock().pages.len() as u64 * PAGE
    }
    fn lock(&self) -> std::sync::RwLockReadGuard<'_, Pages> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
    fn lock_mut(&self) -> std::sync::RwLockWriteGuard<'_, Pages> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
    /// `Ok(true)`: this is the cut point.
    fn event(&self) -> io::Result<bool> {
        let n = self.events.fetch_add(1, Ordering::SeqCst);
        if n > self.crash_at {
            return Err(io::Error::other("simulated crash: storage is gone"));
        }
        Ok(n == self.crash_at)
    }
}

fn crash() -> io::Error {
    io::Error::other("simulated crash")
}

impl Storage for SparseStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.lock().read(buf, offset);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.event()? {
            if self.cut == Cut::Torn && !buf.is_empty() {
                let last = buf.len().saturating_sub(512);
                let keep = last + (buf.len() - last) / 2;
                self.lock_mut().write(&buf[..keep], offset);
            }
            return Err(crash());
        }
        self.lock_mut().write(buf, offset);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.event()? {
            return Err(crash());
        }
        self.lock_mut().set_len(len);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        if self.event()? {
            return Err(crash());
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.event()? {
            return Err(crash());
        }
        self.lock_mut().zero(offset, len);
        Ok(())
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.event()? {
            return Err(crash());
        }
        let mut st = self.lock_mut();
        st.len = st.len.max(offset + len);
        Ok(())
    }
}
