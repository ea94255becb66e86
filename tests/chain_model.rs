//! Differencing chains against a reference model: random sequences of
//! writes (any offset, 1 byte to a few MiB), trims, flushes, new layers
//! (a child created on top), reopens (read-write, or read-only and back) and
//! merges (the top into its parent, a middle layer into its parent, a layer
//! into an older ancestor), compared with a plain byte vector after every
//! step (the affected range, or the whole disk after a change of the chain)
//! and fully at the end, where every remaining file must also pass
//! `ckpt::check` and the chain must list exactly the expected files.
//!
//! Files live in a temporary folder (merges work on paths). Disks are
//! 12 MiB (or 3.5 KiB less, so that every layer's last block is partial)
//! with 1, 2 or 4 MiB blocks so that every case stays small.

mod support;

use std::path::PathBuf;

use ckpt::disk::merge::{merge, MergeOptions};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::{pattern, MIB};

const SIZE: u64 = 12 * MIB;
/// A size whose last block is partial in every layer.
const ODD_SIZE: u64 = SIZE - 7 * 512;
/// Most layers a case builds (the base included).
const MAX_LAYERS: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    /// Write `pattern(seed)` at `off` (clamped to the disk).
    Write { off: u64, len: u64, seed: u64 },
    /// Trim `[off, off+len)` (clamped).
    Trim { off: u64, len: u64 },
    /// Flush.
    Flush,
    /// Close and reopen read-write (`via_ro`: check a read-only open first).
    Reopen { via_ro: bool },
    /// A new child on top with this block size (1 or 2 MiB).
    NewLayer { block_mib: u32 },
    /// Merge the top into its parent.
    MergeTop { search: bool },
    /// Merge the middle layer picked by `pick` into its parent.
    MergeMiddle { pick: usize, search: bool },
    /// Merge the layer picked by `child` into the ancestor picked by `dest`
    /// (at least two layers below it).
    MergeInto {
        child: usize,
        dest: usize,
        search: bool,
    },
}

/// Offsets: anywhere, near a 1 MiB boundary, or sector-aligned.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..SIZE,
        (0..=SIZE / MIB, -1536i64..1536)
            .prop_map(|(b, d)| (b as i64 * MIB as i64 + d).clamp(0, SIZE as i64 - 1) as u64),
        (0..SIZE / 512).prop_map(|s| s * 512),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (offset(), 1u64..=300 << 10, any::<u64>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        2 => (offset(), 1u64..=1100, any::<u64>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        1 => (offset(), 1u64..=5 * MIB, any::<u64>()).prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        1 => (0..SIZE / MIB, 1..=3u64, any::<u64>())
            .prop_map(|(b, n, seed)| Op::Write { off: b * MIB, len: n * MIB, seed }),
        2 => (offset(), prop_oneof![1u64..8192, 1u64..=3 * MIB]).prop_map(|(off, len)| Op::Trim { off, len }),
        1 => (0..SIZE / MIB, 1..=4u64).prop_map(|(b, n)| Op::Trim { off: b * MIB, len: n * MIB }),
        1 => Just(Op::Flush),
        1 => any::<bool>().prop_map(|via_ro| Op::Reopen { via_ro }),
        3 => (1u32..=2).prop_map(|block_mib| Op::NewLayer { block_mib }),
        1 => any::<bool>().prop_map(|search| Op::MergeTop { search }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, search)| Op::MergeMiddle { pick, search }),
        1 => (any::<usize>(), any::<usize>(), any::<bool>())
            .prop_map(|(child, dest, search)| Op::MergeInto { child, dest, search }),
    ]
}

/// The chain under test: its files (base first), the open top, the model.
struct Chain {
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
    disk: Option<Disk>,
    model: Vec<u8>,
    made: usize,
    size: u64,
}

type R<T = ()> = Result<T, TestCaseError>;

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

impl Chain {
    fn new(base_block: u32, size: u64) -> R<Chain> {
        let dir = support::tempdir();
        let base = dir.path().join("base.vhdx");
        let disk = Disk::create(&base, &CreateOptions::new(size).block_size(base_block))
            .map_err(|e| fail(format!("create the base: {e}")))?;
        Ok(Chain {
            dir,
            files: vec![base],
            disk: Some(disk),
            model: vec![0u8; size as usize],
            made: 0,
            size,
        })
    }

    fn disk(&self) -> &Disk {
        self.disk.as_ref().expect("the top is open")
    }

    fn top(&self) -> PathBuf {
        self.files.last().expect("a chain has a top").clone()
    }

    /// Compare `[off, off+len)` (clamped) with the model.
    fn check_range(&self, what: &str, off: u64, len: u64) -> R {
        let off = off.min(self.size);
        let end = (off + len).min(self.size);
        let mut buf = vec![0u8; (end - off) as usize];
        self.disk()
            .read_at(&mut buf, off)
            .map_err(|e| fail(format!("{what}: read {off}+{}: {e}", buf.len())))?;
        if let Some(i) = buf
            .iter()
            .zip(&self.model[off as usize..end as usize])
            .position(|(a, b)| a != b)
        {
            let at = off + i as u64;
            return Err(fail(format!(
                "{what}: byte {at} ({at:#x}) reads {:#04x}, the model has {:#04x} (chain of {} layers)",
                buf[i],
                self.model[at as usize],
                self.files.len()
            )));
        }
        Ok(())
    }

    fn check_all(&self, what: &str) -> R {
        let d = self.disk();
        prop_assert_eq!(d.depth(), self.files.len(), "{}: depth", what);
        let want: Vec<Option<PathBuf>> = self.files.iter().rev().cloned().map(Some).collect();
        prop_assert_eq!(d.chain(), want, "{}: the chain's files", what);
        self.check_range(what, 0, self.size)
    }

    fn close(&mut self) -> R {
        if let Some(d) = self.disk.take() {
            d.close().map_err(|e| fail(format!("close: {e}")))?;
        }
        Ok(())
    }

    fn open(&mut self, mode: OpenMode) -> R {
        let top = self.top();
        let d = Disk::open(&top, mode).map_err(|e| fail(format!("open {}: {e}", top.display())))?;
        self.disk = Some(d);
        Ok(())
    }

    /// Merge `files[c]` into `files[d]` (`d < c`); the layers above `d` up
    /// to `c` disappear.
    fn merge(&mut self, c: usize, d: usize, search: bool, what: &str) -> R {
        self.close()?;
        let child = self.files[c].clone();
        let above: Vec<PathBuf> = self.files.get(c + 1).cloned().into_iter().collect();
        let opts = MergeOptions {
            into: (d + 1 != c).then(|| self.files[d].clone()),
            descendants: if search { None } else { Some(above.clone()) },
            ..MergeOptions::default()
        };
        let report = merge(&child, opts)
            .map_err(|e| fail(format!("{what}: merge {}: {e}", child.display())))?;
        let removed: Vec<PathBuf> = self.files[d + 1..=c].iter().rev().cloned().collect();
        prop_assert_eq!(&report.destination, &self.files[d], "{}: destination", what);
        prop_assert_eq!(&report.removed, &removed, "{}: removed files", what);
        prop_assert_eq!(
            &report.repointed,
            &above,
            "{}: re-pointed descendants",
            what
        );
        for p in &removed {
            prop_assert!(!p.exists(), "{}: {} is gone", what, p.display());
        }
        self.files.drain(d + 1..=c);
        for p in &self.files {
            prop_assert!(p.exists(), "{}: {} is still there", what, p.display());
        }
        self.open(OpenMode::ReadWrite)?;
        self.check_all(what)
    }

    fn apply(&mut self, i: usize, op: &Op) -> R {
        let what = format!("step {i} ({op:?})");
        match *op {
            Op::Write { off, len, seed } => {
                let off = off.min(self.size - 1);
                let len = len.min(self.size - off);
                let data = pattern(seed, off, len as usize);
                self.disk()
                    .write_at(&data, off)
                    .map_err(|e| fail(format!("{what}: {e}")))?;
                self.model[off as usize..(off + len) as usize].copy_from_slice(&data);
                self.check_range(&what, off.saturating_sub(4096), len + 8192)?;
            }
            Op::Trim { off, len } => {
                let off = off.min(self.size - 1);
                let len = len.min(self.size - off);
                self.disk()
                    .trim(off, len)
                    .map_err(|e| fail(format!("{what}: {e}")))?;
                self.model[off as usize..(off + len) as usize].fill(0);
                self.check_range(&what, off.saturating_sub(4096), len + 8192)?;
            }
            Op::Flush => self
                .disk()
                .flush()
                .map_err(|e| fail(format!("{what}: {e}")))?,
            Op::Reopen { via_ro } => {
                self.close()?;
                if via_ro {
                    self.open(OpenMode::ReadOnly)?;
                    self.check_all(&format!("{what}, read-only"))?;
                    let refused = self.disk().write_at(b"x", 0);
                    prop_assert!(
                        refused.is_err(),
                        "{}: a read-only chain refuses writes",
                        what
                    );
                    self.disk = None;
                }
                self.open(OpenMode::ReadWrite)?;
                self.check_all(&what)?;
            }
            Op::NewLayer { block_mib } => {
                if self.files.len() >= MAX_LAYERS {
                    return Ok(());
                }
                self.close()?;
                self.made += 1;
                let path = self.dir.path().join(format!("layer{}.avhdx", self.made));
                let opts = ChildOptions {
                    block_size: block_mib << 20,
                    ..ChildOptions::default()
                };
                let d = Disk::create_child(&path, self.top(), &opts)
                    .map_err(|e| fail(format!("{what}: {e}")))?;
                self.files.push(path);
                self.disk = Some(d);
                self.check_all(&what)?;
            }
            Op::MergeTop { search } => {
                let n = self.files.len();
                if n >= 2 {
                    self.merge(n - 1, n - 2, search, &what)?;
                }
            }
            Op::MergeMiddle { pick, search } => {
                let n = self.files.len();
                if n >= 3 {
                    // Middle layers: 1 ..= n-2.
                    let c = 1 + pick % (n - 2);
                    self.merge(c, c - 1, search, &what)?;
                }
            }
            Op::MergeInto {
                child,
                dest,
                search,
            } => {
                let n = self.files.len();
                if n >= 3 {
                    // A child 2 ..= n-1 and an ancestor at least two below it.
                    let c = 2 + child % (n - 2);
                    let d = dest % (c - 1);
                    self.merge(c, d, search, &what)?;
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> R {
        self.check_all("at the end")?;
        self.close()?;
        self.open(OpenMode::ReadOnly)?;
        self.check_all("at the end, reopened read-only")?;
        self.disk = None;
        for p in &self.files {
            let report = ckpt::check(p).map_err(|e| fail(format!("check {}: {e}", p.display())))?;
            prop_assert!(
                report.is_ok(),
                "check {}: {:?} ({})",
                p.display(),
                report.problems,
                report.summary
            );
        }
        // Nothing else is left in the folder.
        let mut left: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map_err(|e| fail(format!("list the folder: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        left.sort();
        let mut want = self.files.clone();
        want.sort();
        prop_assert_eq!(left, want, "the folder holds exactly the chain");
        Ok(())
    }
}

fn run(base_block: u32, size: u64, ops: &[Op]) -> R {
    let mut chain = Chain::new(base_block, size)?;
    // Start from a child so that most operations run on a differencing layer.
    chain.apply(0, &Op::NewLayer { block_mib: 2 })?;
    for (i, op) in ops.iter().enumerate() {
        chain.apply(i + 1, op)?;
    }
    chain.finish()
}

fn cases() -> u32 {
    std::env::var("CKPT_CHAIN_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn chains_match_the_model(
        base_block in prop_oneof![Just(1u32 << 20), Just(2u32 << 20), Just(4u32 << 20)],
        size in prop_oneof![3 => Just(SIZE), 1 => Just(ODD_SIZE)],
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(base_block, size, &ops)?;
    }
}

/// A fixed sequence that exercises every kind of merge at least once.
#[test]
fn every_merge_kind_in_one_sequence() {
    let w = |off: u64, len: u64, seed: u64| Op::Write { off, len, seed };
    let ops = vec![
        w(100, 3 * MIB, 1),
        Op::NewLayer { block_mib: 1 },
        w(MIB - 7, 10_000, 2),
        Op::Trim {
            off: 2 * MIB,
            len: MIB,
        },
        Op::NewLayer { block_mib: 2 },
        w(5 * MIB + 3, 700_000, 3),
        Op::Trim {
            off: 4 * MIB,
            len: 2 * MIB,
        },
        Op::NewLayer { block_mib: 1 },
        w(0, 1, 4),
        Op::Flush,
        Op::MergeMiddle {
            pick: 1,
            search: true,
        },
        w(11 * MIB, MIB, 5),
        Op::NewLayer { block_mib: 2 },
        w(3 * MIB + 511, 513, 6),
        Op::MergeInto {
            child: 1,
            dest: 0,
            search: false,
        },
        Op::Reopen { via_ro: true },
        Op::NewLayer { block_mib: 1 },
        Op::Trim { off: 0, len: SIZE },
        w(SIZE - 1000, 1000, 7),
        Op::MergeTop { search: true },
        Op::MergeTop { search: false },
    ];
    for size in [SIZE, ODD_SIZE] {
        if let Err(e) = run(2 << 20, size, &ops) {
            panic!("size {size}: {e}");
        }
    }
}
