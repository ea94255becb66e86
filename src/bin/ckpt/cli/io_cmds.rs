//! `ckpt read`, `ckpt write` and `ckpt bench`: I/O on a virtual disk,
//! streamed between the disk and stdin / stdout.

use std::io::Write;
use std::path::Path;

use ckpt::OpenMode;

use super::{bench, fail, open, CliResult, Failure};
use ckpt::disk::convert::read_full;

/// Streaming chunk for `read` and `write`.
const IO_CHUNK: u64 = 1 << 20;

pub(super) fn read(path: &Path, offset: u64, length: u64) -> CliResult {
    let disk = open(path, OpenMode::ReadOnly)?;
    let size = disk.virtual_size();
    if !fits(offset, length, size) {
        return Err(ckpt::Error::OutOfRange {
            offset,
            len: length,
            size,
        }
        .in_file(path)
        .into());
    }
    let mut buf = vec![0u8; length.min(IO_CHUNK) as usize];
    let mut out = std::io::stdout().lock();
    let mut done = 0u64;
    while done < length {
        let n = (length - done).min(IO_CHUNK) as usize;
        disk.read_at(&mut buf[..n], offset + done)
            .map_err(|e| e.in_file(path))?;
        out.write_all(&buf[..n])
            .map_err(|e| fail(format!("writing to stdout: {e}")))?;
        done += n as u64;
    }
    out.flush()
        .map_err(|e| fail(format!("writing to stdout: {e}")))
}

/// Whether `[offset, offset + len)` lies inside a disk of `size` bytes.
fn fits(offset: u64, len: u64, size: u64) -> bool {
    matches!(offset.checked_add(len), Some(end) if end <= size)
}

/// The bytes left in stdin when it is a regular file.
fn stdin_file_len() -> Option<u64> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let mut file = std::fs::File::from(fd);
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    use std::io::Seek;
    let pos = file.stream_position().ok()?;
    Some(meta.len().saturating_sub(pos))
}

pub(super) fn write(path: &Path, offset: u64) -> CliResult {
    let disk = open(path, OpenMode::ReadWrite)?;
    let size = disk.virtual_size();
    let result = (|| -> CliResult {
        if offset > size {
            return Err(ckpt::Error::OutOfRange {
                offset,
                len: 0,
                size,
            }
            .in_file(path)
            .into());
        }
        // When stdin is a regular file its length is known: refuse before
        // writing anything if it does not fit.
        if let Some(len) = stdin_file_len() {
            if !fits(offset, len, size) {
                return Err(ckpt::Error::OutOfRange { offset, len, size }
                    .in_file(path)
                    .into());
            }
        }
        let mut input = std::io::stdin().lock();
        let mut buf = vec![0u8; IO_CHUNK as usize];
        let mut pos = offset;
        loop {
            let n =
                read_full(&mut input, &mut buf).map_err(|e| fail(format!("reading stdin: {e}")))?;
            if n == 0 {
                break;
            }
            if !fits(pos, n as u64, size) {
                return Err(fail(format!(
                    "{}: the input is longer than the {} bytes from offset {offset} to the end of \
                     the virtual disk ({size} bytes); the first {} bytes were written",
                    path.display(),
                    size - offset,
                    pos - offset,
                )));
            }
            disk.write_at(&buf[..n], pos).map_err(|e| e.in_file(path))?;
            pos += n as u64;
        }
        Ok(disk.flush().map_err(|e| e.in_file(path))?)
    })();
    // Close in any case, so that what was written is flushed and the log
    // left empty; report the first error.
    let closed = disk.close().map_err(|e| Failure::from(e.in_file(path)));
    result.and(closed)
}

pub(super) fn bench_cmd(path: &Path, p: &bench::BenchParams) -> CliResult {
    let mode = if p.write {
        OpenMode::ReadWrite
    } else {
        OpenMode::ReadOnly
    };
    let disk = open(path, mode)?;
    println!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
        p.count,
        if p.write { "write" } else { "read" },
        p.bufsize,
        p.threads,
        p.offset,
        p.step
    );
    if let Some(n) = p.flush_interval {
        println!("Sending flush every {n} requests");
    }
    let run = bench::run(&disk, p).map_err(|e| e.in_file(path));
    let closed = disk.close().map_err(|e| e.in_file(path));
    let elapsed = run?;
    closed?;
    let secs = elapsed.as_secs_f64();
    println!("Run completed in {secs:3.3} seconds.");
    if secs > 0.0 {
        println!(
            "{:.0} requests/s, {:.1} MiB/s",
            p.count as f64 / secs,
            p.count as f64 * p.bufsize as f64 / secs / (1 << 20) as f64
        );
    }
    Ok(())
}
