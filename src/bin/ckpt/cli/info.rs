//! `ckpt info` and `ckpt check`: what a disk file (and its chain) is, and
//! whether its structures are sound. Output only; the facts come from the
//! library.

use std::io::Write;
use std::path::{Path, PathBuf};

use ckpt::{DiskInfo, OpenMode};

use super::size::human;
use super::{chain, fail, one_line, open, CliResult, Failure};

/// The JSON object `ckpt info --json` prints. `chain` holds the absolute
/// paths of the files of the chain, `path`'s first, then each parent.
fn info_json(path: &Path, i: &DiskInfo, chain: &[PathBuf]) -> serde_json::Value {
    let text = |p: &PathBuf| p.to_string_lossy().into_owned();
    serde_json::json!({
        "path": path.to_string_lossy(),
        "format": i.format.as_str(),
        "kind": i.kind.as_str(),
        "virtual_size": i.virtual_size,
        "block_size": i.block_size,
        "logical_sector_size": i.logical_sector_size,
        "physical_sector_size": i.physical_sector_size,
        "file_size": i.file_size,
        "allocated_bytes": i.allocated_bytes,
        "parent": chain.get(1).map(text),
        "chain": chain.iter().map(text).collect::<Vec<_>>(),
        "log_dirty": i.log_dirty,
        "creator": i.creator,
        "disk_id": i.disk_id.to_string(),
        "data_write_guid": i.data_write_guid.to_string(),
        "file_write_guid": i.file_write_guid.to_string(),
    })
}

/// "64 MiB (67108864 bytes)", or "512 bytes".
pub(super) fn with_bytes(n: u64) -> String {
    if n < 1024 {
        human(n)
    } else {
        format!("{} ({n} bytes)", human(n))
    }
}

pub(super) fn info(path: &Path, json: bool) -> CliResult {
    let disk = open(path, OpenMode::ReadOnly)?;
    let i = disk.info();
    let files = chain::chain_paths(&disk, path);
    let mut out = std::io::stdout().lock();
    let text = if json {
        let v = info_json(path, &i, &files);
        serde_json::to_string_pretty(&v).map_err(|e| fail(format!("JSON output: {e}")))? + "\n"
    } else {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<22}{v}\n"));
        line("image:", path.display().to_string());
        line(
            "format:",
            format!("{} ({})", i.format.as_str(), i.kind.as_str()),
        );
        line("virtual size:", with_bytes(i.virtual_size));
        line("file size:", with_bytes(i.file_size));
        line("allocated:", with_bytes(i.allocated_bytes));
        line("block size:", human(i.block_size as u64));
        line(
            "sector size:",
            format!(
                "{} logical, {} physical",
                i.logical_sector_size, i.physical_sector_size
            ),
        );
        line(
            "parent:",
            files
                .get(1)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
        );
        if files.len() > 1 {
            // Top first: the file itself, then each parent down to the base.
            let mut list = String::new();
            for (level, f) in files.iter().enumerate() {
                if level > 0 {
                    list.push_str(&format!("\n{:<22}", ""));
                }
                list.push_str(&format!("{level}: {}", f.display()));
            }
            line(&format!("chain ({} files):", files.len()), list);
        }
        if i.format == ckpt::Format::Vhd {
            // A VHD has no log and one id (its footer's unique id).
            if i.log_dirty {
                line(
                    "footer:",
                    "the trailing footer is lost; the copy at offset 0 is used (a read-write \
                     open writes it again)"
                        .into(),
                );
            }
            line("creator:", i.creator.clone());
            line("unique id:", i.disk_id.to_string());
        } else {
            line(
                "log:",
                if i.log_dirty {
                    "dirty (replayed in memory; open read-write to replay into the file)".into()
                } else {
                    "clean".into()
                },
            );
            line("creator:", i.creator.clone());
            line("disk id:", i.disk_id.to_string());
            line("data write guid:", i.data_write_guid.to_string());
            line("file write guid:", i.file_write_guid.to_string());
        }
        s
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| fail(format!("writing to stdout: {e}")))
}

pub(super) fn check(path: &Path) -> CliResult {
    let report = ckpt::check(path).map_err(|e| e.in_file(path))?;
    let mut out = std::io::stdout().lock();
    let verdict = if report.is_ok() { "ok" } else { "DAMAGED" };
    let _ = writeln!(
        out,
        "{}: {verdict}: {}",
        path.display(),
        one_line(&report.summary)
    );
    for note in &report.notes {
        let _ = writeln!(out, "note: {}", one_line(note));
    }
    let _ = out.flush();
    if report.is_ok() {
        return Ok(());
    }
    Err(Failure(
        report
            .problems
            .iter()
            .map(|p| format!("{}: {}", path.display(), p))
            .collect(),
    ))
}
