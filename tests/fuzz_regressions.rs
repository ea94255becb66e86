//! Replays every fuzzing finding (`fuzz/regressions/<target>/*`), the
//! committed seeds (`fuzz/seeds/<target>/*`), the generated seeds and, when
//! present, a few hundred inputs of the local corpus (`fuzz/corpus/<target>/`)
//! through the same bodies the fuzz targets run (`fuzz/src/harness.rs`).
//!
//! Each regression input runs in a child process (this test binary, run
//! again on one file) with a memory ceiling and a time limit, so that an
//! input that allocates without bound, hangs or aborts fails its own entry
//! and the others still run. The test fails when any body panics or
//! reports a violation.
//!
//! `CKPT_FUZZ_WRITE_SEEDS=1 cargo test --release --test fuzz_regressions
//! generated_seeds` rewrites `fuzz/seeds/` from the generated seeds.

#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live heap bytes; refuses (so the process aborts with "memory
/// allocation of N bytes failed") past `LIMIT`.
struct Ceiling;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

unsafe impl GlobalAlloc for Ceiling {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        if now > LIMIT.load(Ordering::Relaxed) {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
        if now > LIMIT.load(Ordering::Relaxed) {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `System` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            let grow = new - l.size();
            let now = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
            if now > LIMIT.load(Ordering::Relaxed) {
                LIVE.fetch_sub(grow, Ordering::Relaxed);
                return std::ptr::null_mut();
            }
        } else {
            LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
        }
        // SAFETY: `p` came from `System` with layout `l`.
        let q = unsafe { System.realloc(p, l, new) };
        if q.is_null() {
            // The old block is still live: undo the accounting.
            if new > l.size() {
                LIVE.fetch_sub(new - l.size(), Ordering::Relaxed);
            } else {
                LIVE.fetch_add(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Ceiling = Ceiling;

/// Heap ceiling of a child replaying one input.
const CHILD_MEMORY: usize = 1536 << 20;
/// Time limit of a child replaying one input.
const CHILD_TIME: Duration = Duration::from_secs(120);
/// Most corpus inputs replayed per target.
const CORPUS_PER_TARGET: usize = 200;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.') || n.ends_with(".md"))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The child side: replay the one input named by the environment.
#[test]
fn replay_one_child() {
    let (Ok(target), Ok(file)) = (
        std::env::var("CKPT_FUZZ_TARGET"),
        std::env::var("CKPT_FUZZ_FILE"),
    ) else {
        return;
    };
    let data = std::fs::read(&file).expect("read the input");
    // Build the valid images before the ceiling applies.
    let _ = harness::images();
    LIMIT.store(
        LIVE.load(Ordering::Relaxed) + CHILD_MEMORY,
        Ordering::Relaxed,
    );
    if let Err(v) = harness::run(&target, &data) {
        panic!("{target} {file}: violation: {v}");
    }
}

fn replay_in_child(target: &str, file: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "replay_one_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CKPT_FUZZ_TARGET", target)
        .env("CKPT_FUZZ_FILE", file)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let start = Instant::now();
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if start.elapsed() > CHILD_TIME {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = reader.join().unwrap_or_default();
    let tail: String = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note:"))
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n    ");
    match status {
        None => Err(format!("timed out after {CHILD_TIME:?}\n    {tail}")),
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(format!("{st}\n    {tail}")),
    }
}

/// Every committed finding, each in its own process.
#[test]
fn regressions() {
    let mut failures = Vec::new();
    let mut n = 0;
    for target in harness::TARGETS {
        for file in files_in(&fuzz_dir().join("regressions").join(target)) {
            n += 1;
            if let Err(e) = replay_in_child(target, &file) {
                failures.push(format!(
                    "{}: {e}",
                    file.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                        .unwrap_or(&file)
                        .display()
                ));
            }
        }
    }
    eprintln!("{n} regression inputs replayed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {n} fuzz regression inputs fail:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

fn replay_in_process(target: &str, name: &str, data: &[u8], failures: &mut Vec<String>) {
    let r = std::panic::catch_unwind(|| harness::run(target, data));
    match r {
        Ok(Ok(())) => {}
        Ok(Err(v)) => failures.push(format!("{target} {name}: violation: {v}")),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{target} {name}: panic: {msg}"));
        }
    }
}

/// The seeds generated in code and the committed ones pass every body.
#[test]
fn generated_seeds() {
    let write = std::env::var_os("CKPT_FUZZ_WRITE_SEEDS").is_some();
    let mut failures = Vec::new();
    for target in harness::TARGETS {
        let seeds = harness::seeds(target);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for (i, s) in seeds.iter().enumerate() {
            replay_in_process(target, &format!("generated seed {i}"), s, &mut failures);
            if write {
                let dir = fuzz_dir().join("seeds").join(target);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
        }
        for file in files_in(&fuzz_dir().join("seeds").join(target)) {
            let data = std::fs::read(&file).unwrap();
            replay_in_process(target, &file.display().to_string(), &data, &mut failures);
        }
    }
    assert!(
        failures.is_empty(),
        "seeds fail:\n  {}",
        failures.join("\n  ")
    );
}

/// Up to a few hundred inputs of a local corpus (not in git; present after
/// a fuzzing run), in process. Skipped when there is none.
#[test]
fn local_corpus() {
    let mut failures = Vec::new();
    let mut n = 0;
    for target in harness::TARGETS {
        let files = files_in(&fuzz_dir().join("corpus").join(target));
        let step = (files.len() / CORPUS_PER_TARGET).max(1);
        for file in files.iter().step_by(step).take(CORPUS_PER_TARGET) {
            let Ok(data) = std::fs::read(file) else {
                continue;
            };
            n += 1;
            replay_in_process(target, &file.display().to_string(), &data, &mut failures);
        }
    }
    eprintln!("{n} corpus inputs replayed");
    assert!(
        failures.is_empty(),
        "{} corpus inputs fail (add them to fuzz/regressions/):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The input decoder of `open_bytes` round-trips the valid images, so the
/// seeds really are those images.
#[test]
fn sparse_encoding_round_trips() {
    for img in harness::images() {
        let b = &img.layers[0];
        assert_eq!(
            &harness::decode_image(&harness::encode_image(b)),
            b,
            "{}",
            img.name
        );
    }
}
