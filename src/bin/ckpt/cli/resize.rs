//! `ckpt resize FILE SIZE [--allow-shrink] [--json]`: the library's
//! `Disk::resize` with its report on stdout.

use std::path::Path;

use ckpt::{OpenMode, ResizeOptions, ResizeReport};

use super::{fail, open, with_bytes, CliResult};

/// `ckpt resize FILE SIZE`.
pub(super) fn resize_cmd(file: &Path, size: u64, allow_shrink: bool, json: bool) -> CliResult {
    let mut disk = open(file, OpenMode::ReadWrite)?;
    let r = disk.resize(size, ResizeOptions { allow_shrink })?;
    disk.close().map_err(|e| e.in_file(file))?;
    print_report(&file.to_string_lossy(), &r, json)
}

/// Print what a resize of `what` (a path, or a VM's disk) did.
pub(super) fn print_report(what: &str, r: &ResizeReport, json: bool) -> CliResult {
    if json {
        let v = serde_json::json!({
            "path": what,
            "old_size": r.old_size,
            "new_size": r.new_size,
            "bat_relocated": r.bat_relocated,
            "bytes_dropped": r.bytes_dropped,
            "file_size_before": r.file_size_before,
            "file_size_after": r.file_size_after,
        });
        let text =
            serde_json::to_string_pretty(&v).map_err(|e| fail(format!("JSON output: {e}")))?;
        println!("{text}");
    } else {
        println!(
            "Resized {}: {} -> {}{}{}",
            what,
            with_bytes(r.old_size),
            with_bytes(r.new_size),
            if r.bat_relocated { "; BAT moved" } else { "" },
            if r.bytes_dropped > 0 {
                format!("; {} of data dropped", with_bytes(r.bytes_dropped))
            } else {
                String::new()
            },
        );
    }
    Ok(())
}
