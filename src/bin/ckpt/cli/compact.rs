//! `ckpt compact FILE [--mode quick|full] [--json]`: the library's
//! `Disk::compact` with a progress bar on stderr and its report on stdout.

use std::path::Path;

use ckpt::{CompactMode, CompactOptions, OpenMode};

use super::{fail, open, progress_bar, with_bytes, CliResult};

/// `ckpt compact FILE`.
pub(super) fn compact_cmd(file: &Path, mode: CompactMode, json: bool) -> CliResult {
    let disk = open(file, OpenMode::ReadWrite)?;
    let bar = progress_bar();
    let mut progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
        true
    };
    let result = disk.compact(CompactOptions {
        mode,
        progress: Some(&mut progress),
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let r = result?;
    disk.close().map_err(|e| e.in_file(file))?;
    if json {
        let mut v = ckpt::checkpoint::json::compact_report_json(&r);
        v["path"] = file.to_string_lossy().into();
        let text =
            serde_json::to_string_pretty(&v).map_err(|e| fail(format!("JSON output: {e}")))?;
        println!("{text}");
    } else {
        println!(
            "Compacted {} ({}): {} -> {}; {} block{} freed, {} moved",
            file.display(),
            r.mode.as_str(),
            with_bytes(r.bytes_before),
            with_bytes(r.bytes_after),
            r.blocks_freed,
            if r.blocks_freed == 1 { "" } else { "s" },
            r.blocks_moved,
        );
    }
    Ok(())
}
