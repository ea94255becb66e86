//! The incremental-backup commands: `ckpt changes DIR --since REF` (the
//! changes between two points of a VM's tree) and `ckpt verify-backup`
//! (the restore check of a backup set). The incremental export itself is
//! `ckpt checkpoint export … --since REF --base PREVIOUS` (`checkpoint.rs`).

use std::path::{Path, PathBuf};

use ckpt::checkpoint::backup::verify_backup;

use super::info::with_bytes;
use super::vm::{open_vm, vm_error};
use super::{fail, CliResult, Failure};

/// `ckpt changes DIR --since REF [--to NAME | --current] [--disk K]
/// [--json]`: the (offset, length) extents of disk K that may differ
/// between checkpoint REF and NAME (default: the current state); JSON: an
/// array of `{"offset": N, "length": N}`.
pub(super) fn changes_vm_cmd(
    dir: &Path,
    since: &str,
    to: Option<&str>,
    disk: usize,
    json: bool,
) -> CliResult {
    let mut vm = open_vm(dir)?;
    let n = vm.data().disks.len();
    if disk >= n {
        return Err(fail(format!(
            "--disk {disk}: VM \"{}\" has {n} disk(s) (0 to {})",
            vm.data().config.name,
            n.saturating_sub(1)
        )));
    }
    let all = vm.changes(since, to).map_err(vm_error)?;
    let ranges = &all[disk];
    let json_ranges = json.then(|| super::chain::ranges_json(ranges));
    super::chain::print_ranges(ranges, json_ranges)
}

/// `ckpt verify-backup DEST…`: one line per disk of the newest export
/// (`OK` with its chain, or what is wrong); exit status 1 when any disk
/// fails.
pub(super) fn verify_backup_cmd(dests: &[PathBuf]) -> CliResult {
    let verdicts = verify_backup(dests).map_err(vm_error)?;
    let mut failed = Vec::new();
    for v in &verdicts {
        match &v.error {
            None => println!(
                "OK {} ({}, a chain of {} export{})",
                v.file.display(),
                with_bytes(v.virtual_size),
                v.chain.len(),
                if v.chain.len() == 1 { "" } else { "s" }
            ),
            Some(e) => {
                // The error names the file it is about.
                println!("FAILED {}", v.file.display());
                failed.push(e.clone());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure(failed))
    }
}
