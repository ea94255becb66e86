//! The commands about differencing chains: `create --parent`, `merge`,
//! `changes`, `reparent`, and the chain list of `info`.

use std::io::Write;
use std::path::{Path, PathBuf};

use ckpt::disk::merge::{self, MergeOptions, Range};
use ckpt::{ChildOptions, Disk, Error, OpenMode};

use super::size::human;
use super::{fail, open, progress_bar, with_bytes, CliResult, Failure};
use ckpt::disk::convert::is_already_exists;

/// `p` as an absolute path: canonical when it exists, else made absolute
/// against the current folder (the library's one helper).
pub use ckpt::disk::path::canonical_or_absolute as absolute;

/// The absolute paths of the files of `disk`'s chain, top first (`path` is
/// the top file, as given on the command line).
pub fn chain_paths(disk: &Disk, path: &Path) -> Vec<PathBuf> {
    disk.chain()
        .into_iter()
        .enumerate()
        .map(|(level, p)| match p {
            Some(p) => absolute(&p),
            None if level == 0 => absolute(path),
            None => PathBuf::from("(unknown)"),
        })
        .collect()
}

/// "a, b, c".
fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The level of `ancestor` in `disk`'s chain (whose top is `file`), with an
/// error naming both and the chain when it is not there or is `file` itself.
fn ancestor_level(disk: &Disk, file: &Path, ancestor: &Path, what: &str) -> Result<usize, Failure> {
    let files = chain_paths(disk, file);
    let below = || {
        if files.len() > 1 {
            format!("its ancestors are {}", list(&files[1..]))
        } else {
            "it is a base disk, without ancestors".to_string()
        }
    };
    match disk.level_of(ancestor) {
        Ok(0) => Err(fail(format!(
            "{what} {} is {} itself: give one of its ancestors ({})",
            ancestor.display(),
            file.display(),
            below()
        ))),
        Ok(level) => Ok(level),
        Err(Error::InvalidArgument(_)) => Err(fail(format!(
            "{what} {} is not in the chain of {} ({})",
            ancestor.display(),
            file.display(),
            below()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `ckpt create CHILD --parent PARENT`.
/// Refuse `--format F` for a child of a parent of another format (a
/// child always has its parent's format: mixed chains are refused).
pub(super) fn refuse_other_format(parent: &Path, f: ckpt::Format) -> CliResult {
    let s = ckpt::io::FileStorage::open(parent, false)
        .map_err(|e| ckpt::Error::from(e).in_file(parent))?;
    let pf = ckpt::Format::detect(&s)?;
    if pf != f {
        return Err(fail(format!(
            "{} is a {}: its child is a {} too (a chain mixing VHD and VHDX is refused)",
            parent.display(),
            pf.as_str(),
            pf.as_str()
        )));
    }
    Ok(())
}

pub(super) fn create_child(path: &Path, parent: &Path, opts: &ChildOptions) -> CliResult {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(fail(format!(
            "{}: already exists; refusing to overwrite it",
            path.display()
        )));
    }
    let disk = Disk::create_child(path, parent, opts).map_err(|e| {
        // The file did not exist a moment ago: whatever is there now is a
        // leftover of this failed creation.
        if !is_already_exists(&e) {
            let _ = std::fs::remove_file(path);
        }
        e.in_file(path)
    })?;
    let files = chain_paths(&disk, path);
    let info = disk.info();
    disk.close().map_err(|e| e.in_file(path))?;
    println!(
        "Created {} (differencing, parent {}, virtual size {}, block size {})",
        path.display(),
        files
            .get(1)
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        human(info.virtual_size),
        human(info.block_size as u64),
    );
    Ok(())
}

/// `ckpt merge CHILD [--into ANCESTOR]`.
pub(super) fn merge_cmd(child: &Path, into: Option<&Path>) -> CliResult {
    {
        let disk = open(child, OpenMode::ReadOnly)?;
        if disk.depth() < 2 {
            return Err(fail(format!(
                "{}: not a differencing disk: it has no parent to merge into",
                child.display()
            )));
        }
        if let Some(a) = into {
            ancestor_level(&disk, child, a, "--into")?;
        }
    }
    // A merge that would break another differencing disk is refused by the
    // library (`merge::merge` without `descendants`), before anything
    // changes; it knows which children an interrupted run already re-pointed.
    let bar = progress_bar();
    let mut progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
        true
    };
    let result = merge::merge(
        child,
        MergeOptions {
            into: into.map(Path::to_path_buf),
            descendants: None,
            progress: Some(&mut progress),
            skip_space_check: false,
            space_limit: None,
        },
    );
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = result?;
    let removed: Vec<PathBuf> = report
        .removed
        .iter()
        .filter(|p| absolute(p) != absolute(child))
        .cloned()
        .collect();
    let mut line = format!(
        "Merged {} into {}: copied {}",
        child.display(),
        absolute(&report.destination).display(),
        with_bytes(report.bytes_copied),
    );
    if !removed.is_empty() {
        line.push_str(&format!(", also removed {}", list(&removed)));
    }
    match report.repointed.len() {
        0 => line.push_str(", re-pointed 0 descendants"),
        n => line.push_str(&format!(
            ", re-pointed {n} descendant{}: {}",
            if n == 1 { "" } else { "s" },
            list(&report.repointed)
        )),
    }
    println!("{line}");
    Ok(())
}

/// `ckpt changes FILE [--base ANCESTOR] [--json]`.
pub(super) fn changes_cmd(file: &Path, base: Option<&Path>, json: bool) -> CliResult {
    let disk = open(file, OpenMode::ReadOnly)?;
    let levels = match base {
        Some(a) => ancestor_level(&disk, file, a, "--base")?,
        None => 1,
    };
    let ranges = disk.changed_ranges(levels).map_err(|e| e.in_file(file))?;
    let json_ranges = json.then(|| serde_json::json!({ "ranges": ranges_json(&ranges) }));
    print_ranges(&ranges, json_ranges)
}

/// `ranges` as a JSON array of `{"offset": N, "length": N}`.
pub(super) fn ranges_json(ranges: &[Range]) -> serde_json::Value {
    ranges
        .iter()
        .map(|r| serde_json::json!({"offset": r.offset, "length": r.length}))
        .collect()
}

/// Print `json` when given, else `ranges` one `OFFSET LENGTH` line each
/// and a total line.
pub(super) fn print_ranges(ranges: &[Range], json: Option<serde_json::Value>) -> CliResult {
    let text = match json {
        Some(v) => {
            serde_json::to_string_pretty(&v).map_err(|e| fail(format!("JSON output: {e}")))? + "\n"
        }
        None => {
            let mut s = String::new();
            for r in ranges {
                s.push_str(&format!("{} {}\n", r.offset, r.length));
            }
            let total: u64 = ranges.iter().map(|r| r.length).sum();
            s.push_str(&format!(
                "total: {} in {} range{}\n",
                with_bytes(total),
                ranges.len(),
                if ranges.len() == 1 { "" } else { "s" }
            ));
            s
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| fail(format!("writing to stdout: {e}")))
}

/// `ckpt reparent CHILD NEWPARENT [--force]`.
pub(super) fn reparent_cmd(child: &Path, new_parent: &Path, force: bool) -> CliResult {
    match merge::reparent(child, new_parent, force) {
        Ok(()) => {
            println!(
                "Re-pointed {} at {}",
                child.display(),
                absolute(new_parent).display()
            );
            Ok(())
        }
        Err(e @ Error::ParentMismatch { .. }) => Err(fail(format!(
            "{e}; give --force to re-point it anyway (the child then reads {}'s data under its own)",
            new_parent.display()
        ))),
        Err(e) => Err(e.into()),
    }
}
