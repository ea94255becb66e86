//! `ckpt convert --in-place FILE --to fixed|dynamic [--json]`: the
//! library's `Disk::convert_in_place` with a progress bar on stderr and
//! its report on stdout.

use std::path::Path;

use ckpt::{DiskKind, InPlaceOptions, OpenMode};

use super::{fail, open, progress_bar, with_bytes, CliResult};

/// `ckpt convert --in-place FILE --to KIND`.
pub(super) fn in_place_cmd(file: &Path, to: DiskKind, json: bool) -> CliResult {
    let mut disk = open(file, OpenMode::ReadWrite)?;
    let bar = progress_bar();
    let mut progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
        true
    };
    let result = disk.convert_in_place(
        to,
        InPlaceOptions {
            progress: Some(&mut progress),
            space_limit: None,
        },
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let r = result?;
    disk.close().map_err(|e| e.in_file(file))?;
    if json {
        let v = serde_json::json!({
            "path": file.to_string_lossy(),
            "from": r.from.as_str(),
            "to": r.to.as_str(),
            "changed": r.changed,
            "blocks_allocated": r.blocks_allocated,
            "blocks_freed": r.blocks_freed,
            "blocks_moved": r.blocks_moved,
            "bytes_before": r.bytes_before,
            "bytes_after": r.bytes_after,
        });
        let text =
            serde_json::to_string_pretty(&v).map_err(|e| fail(format!("JSON output: {e}")))?;
        println!("{text}");
    } else if !r.changed {
        println!(
            "{} is a {} disk already: nothing to do",
            file.display(),
            r.to.as_str()
        );
    } else {
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        let detail = match r.to {
            DiskKind::Fixed => format!(
                "{} block{} allocated",
                r.blocks_allocated,
                plural(r.blocks_allocated)
            ),
            _ => format!(
                "{} block{} freed, {} moved",
                r.blocks_freed,
                plural(r.blocks_freed),
                r.blocks_moved
            ),
        };
        println!(
            "Converted {} in place ({} -> {}): {} -> {}; {detail}",
            file.display(),
            r.from.as_str(),
            r.to.as_str(),
            with_bytes(r.bytes_before),
            with_bytes(r.bytes_after),
        );
    }
    Ok(())
}
