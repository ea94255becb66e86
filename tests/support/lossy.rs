//! A storage with a volatile write cache, for crash tests harsher than
//! `ckpt::io::FaultStorage`: writes land in order, but at a crash only what
//! was followed by a completed `sync` is certain to survive; each write made
//! since the last sync may or may not have reached the media, in any
//! combination (the cache may write back in any order).
//!
//! Like `FaultStorage`, every mutating call (write, resize, discard,
//! allocate, sync) is one event; event `crash_at` and everything after it
//! fail. After the crash, [`LossyStorage::survivor`] builds the bytes a
//! given choice of surviving unsynced writes leaves behind.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ckpt::io::{MemStorage, Storage};

/// One mutation not yet covered by a sync.
#[derive(Debug, Clone)]
enum Mutation {
    Write { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    SetLen(u64),
    Grow(u64),
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Mutation::Write { offset, data } => {
                let end = *offset as usize + data.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[*offset as usize..end].copy_from_slice(data);
            }
            Mutation::Zero { offset, len } => {
                let end = (*offset + *len) as usize;
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[*offset as usize..end].fill(0);
            }
            Mutation::SetLen(n) => bytes.resize(*n as usize, 0),
            Mutation::Grow(n) => {
                if bytes.len() < *n as usize {
                    bytes.resize(*n as usize, 0);
                }
            }
        }
    }
}

#[derive(Debug)]
struct State {
    /// The bytes as of the last completed sync.
    synced: Vec<u8>,
    /// Mutations since then, in order.
    unsynced: Vec<Mutation>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct LossyStorage {
    inner: MemStorage,
    crash_at: u64,
    events: AtomicU64,
    state: Mutex<State>,
}

impl LossyStorage {
    /// Start from `bytes` (all of them durable); crash at event `crash_at`.
    pub fn new(bytes: Vec<u8>, crash_at: u64) -> LossyStorage {
        LossyStorage {
            inner: MemStorage::from_vec(bytes.clone()),
            crash_at,
            events: AtomicU64::new(0),
            state: Mutex::new(State {
                synced: bytes,
                unsynced: Vec::new(),
            }),
        }
    }
    /// Events seen so far (including refused ones).
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::SeqCst)
    }
    /// Whether the crash point has been reached.
    pub fn crashed(&self) -> bool {
        self.events() > self.crash_at
    }
    /// Mutations made since the last completed sync.
    pub fn unsynced(&self) -> usize {
        self.lock().unsynced.len()
    }
    /// The bytes left when exactly the unsynced mutations `i` with
    /// `keep(i)` reached the media.
    pub fn survivor(&self, keep: impl Fn(usize) -> bool) -> Vec<u8> {
        let st = self.lock();
        let mut bytes = st.synced.clone();
        for (i, m) in st.unsynced.iter().enumerate() {
            if keep(i) {
                m.apply(&mut bytes);
            }
        }
        bytes
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn event(&self) -> io::Result<()> {
        let n = self.events.fetch_add(1, Ordering::SeqCst);
        if n >= self.crash_at {
            return Err(io::Error::other("simulated crash (lossy cache)"));
        }
        Ok(())
    }
}

impl Storage for LossyStorage {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.lock();
        self.event()?;
        self.inner.write_at(buf, offset)?;
        st.unsynced.push(Mutation::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        self.event()?;
        self.inner.set_len(len)?;
        st.unsynced.push(Mutation::SetLen(len));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut st = self.lock();
        self.event()?;
        let State { synced, unsynced } = &mut *st;
        for m in unsynced.drain(..) {
            m.apply(synced);
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        self.event()?;
        ckpt::io::write_zeros(&self.inner, offset, len)?;
        st.unsynced.push(Mutation::Zero { offset, len });
        Ok(())
    }
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        self.event()?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range overflows"))?;
        self.inner.allocate(offset, len)?;
        st.unsynced.push(Mutation::Grow(end));
        Ok(())
    }
}
