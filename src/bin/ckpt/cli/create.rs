//! `ckpt create` (a base disk; a differencing child is made in `chain.rs`)
//! and `ckpt convert`: the commands that make a new disk file.

use std::path::Path;

use ckpt::CreateOptions;

use super::size::human;
use super::{fail, progress_bar, CliResult};
use ckpt::disk::convert::{self, ConvertOptions};

pub(super) fn create(path: &Path, opts: &CreateOptions) -> CliResult {
    // Refuse an existing file before the library gets to it, so that a
    // failed creation can safely remove what it left behind.
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(fail(format!(
            "{}: already exists; refusing to overwrite it",
            path.display()
        )));
    }
    let disk = convert::create_vhdx(path, opts)?;
    disk.close().map_err(|e| e.in_file(path))?;
    println!(
        "Created {} ({}, virtual size {}, block size {})",
        path.display(),
        if opts.fixed { "fixed" } else { "dynamic" },
        human(opts.virtual_size),
        human(opts.block_size as u64),
    );
    Ok(())
}

/// `ckpt create --format vhd`: a fixed or dynamic VHD.
pub(super) fn create_vhd(path: &Path, opts: &ckpt::VhdOptions) -> CliResult {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(fail(format!(
            "{}: already exists; refusing to overwrite it",
            path.display()
        )));
    }
    let disk = convert::create_vhd(path, opts)?;
    disk.close().map_err(|e| e.in_file(path))?;
    println!(
        "Created {} (VHD, {}, virtual size {}, block size {})",
        path.display(),
        if opts.fixed { "fixed" } else { "dynamic" },
        human(opts.virtual_size),
        human(opts.block_size as u64),
    );
    Ok(())
}

pub(super) fn convert_cmd(src: &Path, dst: &Path, opts: &ConvertOptions) -> CliResult {
    let bar = progress_bar();
    let mut progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let result = convert::convert(src, dst, opts, &mut progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let stats = result?;
    println!(
        "Converted {} ({}) to {} ({}): virtual size {}, {} of data written",
        src.display(),
        stats.src_format.as_str(),
        dst.display(),
        stats.dst_format.as_str(),
        human(stats.virtual_size),
        human(stats.data_bytes),
    );
    if stats.rounded_up {
        println!(
            "note: {}'s length is not a multiple of 512; rounded up to {} bytes with zeros",
            src.display(),
            stats.virtual_size
        );
    }
    Ok(())
}
