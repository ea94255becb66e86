//! libckpt in two minutes: create a dynamic VHDX, write to it, reopen it
//! read-only and read the bytes back, check it, convert it to raw and back,
//! and — when `qemu-img` is installed — let QEMU judge the result. Then put
//! a differencing disk (a checkpoint's AVHDX) on top, write to it, list what
//! it changed and merge it back into its parent.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::error::Error;
use std::path::Path;
use std::process::Command;

use ckpt::disk::convert;
use ckpt::disk::merge::{self, MergeOptions};
use ckpt::{ChildOptions, CreateOptions, Disk, OpenMode};

const MIB: u64 = 1 << 20;

/// The writes of this example: (offset, bytes).
fn patterns() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, b"hello from libckpt".to_vec()),
        // Crosses the boundary between the first two 2 MiB blocks.
        (2 * MIB - 1000, vec![0xa5; 5000]),
        (
            10 * MIB + 12_345,
            (0..=255u8).cycle().take(300_000).collect(),
        ),
        // The very last sector.
        (64 * MIB - 512, vec![0x5a; 512]),
    ]
}

fn step(n: u32, what: &str) {
    println!("\n[{n}] {what}");
}

/// Run a command, print what it printed, and return whether it succeeded.
fn show(cmd: &mut Command) -> Result<bool, Box<dyn Error>> {
    println!("    $ {cmd:?}");
    let out = cmd.output()?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("      {line}");
    }
    Ok(out.status.success())
}

fn have_qemu_img() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let vhdx = dir.path().join("disk.vhdx");
    let raw = dir.path().join("disk.raw");
    let again = dir.path().join("again.vhdx");
    println!(
        "libckpt {} — working in {}",
        ckpt::VERSION,
        dir.path().display()
    );

    step(1, "create a 64 MiB dynamic VHDX with 2 MiB blocks");
    let disk = Disk::create(&vhdx, &CreateOptions::new(64 * MIB).block_size(2 << 20))?;
    for (offset, bytes) in patterns() {
        disk.write_at(&bytes, offset)?;
        println!("    wrote {:>7} bytes at offset {offset}", bytes.len());
    }
    disk.close()?;
    println!("    closed (flushed, log empty)");

    step(2, "reopen read-only and read the bytes back");
    let disk = Disk::open(&vhdx, OpenMode::ReadOnly)?;
    for (offset, bytes) in patterns() {
        let mut buf = vec![0u8; bytes.len()];
        disk.read_at(&mut buf, offset)?;
        if buf != bytes {
            return Err(format!("bytes at offset {offset} differ after reopening").into());
        }
    }
    let mut gap = vec![0xffu8; 4096];
    disk.read_at(&mut gap, 32 * MIB)?;
    if gap.iter().any(|&b| b != 0) {
        return Err("an unwritten range does not read as zeros".into());
    }
    let info = disk.info();
    println!("    every pattern reads back; unwritten space reads as zeros");
    println!(
        "    {} disk, virtual size {} MiB, {} MiB allocated in a file of {} MiB",
        info.kind.as_str(),
        info.virtual_size / MIB,
        info.allocated_bytes / MIB,
        info.file_size / MIB
    );
    drop(disk);

    step(3, "check the structure");
    let report = ckpt::check(&vhdx)?;
    println!("    {}", report.summary);
    for note in &report.notes {
        println!("    note: {note}");
    }
    if !report.is_ok() {
        for p in &report.problems {
            println!("    problem: {p}");
        }
        return Err("the new disk does not pass the check".into());
    }

    step(4, "convert VHDX → raw → VHDX (sparse)");
    let opts = |format| convert::ConvertOptions {
        format: Some(format),
        fixed: false,
        block_size: None,
        no_sync: false,
        azure: false,
    };
    let s = convert::convert(&vhdx, &raw, &opts(convert::Format::Raw), &mut |_, _| {})?;
    println!(
        "    {} → {}: {} KiB of data written",
        vhdx.display(),
        raw.display(),
        s.data_bytes / 1024
    );
    let s = convert::convert(&raw, &again, &opts(convert::Format::Vhdx), &mut |_, _| {})?;
    println!(
        "    {} → {}: {} KiB of data written",
        raw.display(),
        again.display(),
        s.data_bytes / 1024
    );
    let mut expected = vec![0u8; (64 * MIB) as usize];
    for (offset, bytes) in patterns() {
        expected[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
    }
    if std::fs::read(&raw)? != expected {
        return Err("the raw image does not hold the bytes written".into());
    }
    same_bytes(&again, &raw)?;
    println!("    the round trip gives the same 64 MiB");

    step(5, "ask QEMU");
    if have_qemu_img() {
        let mut ok = show(
            Command::new("qemu-img")
                .args(["info", "-f", "vhdx"])
                .arg(&vhdx),
        )?;
        for img in [&vhdx, &again] {
            ok &= show(
                Command::new("qemu-img")
                    .args(["compare", "-f", "vhdx", "-F", "raw"])
                    .arg(img)
                    .arg(&raw),
            )?;
        }
        if !ok {
            return Err("qemu-img disagrees".into());
        }
    } else {
        println!("    qemu-img is not installed; skipped");
    }

    step(
        6,
        "a differencing child: write to it, list its changes, merge it back",
    );
    let child = dir.path().join("child.avhdx");
    let disk = Disk::create_child(&child, &vhdx, &ChildOptions::default())?;
    println!("    chain, top first: {:?}", disk.chain());
    disk.write_at(b"written in the child", 40 * MIB + 100)?;
    expected[(40 * MIB + 100) as usize..(40 * MIB + 120) as usize]
        .copy_from_slice(b"written in the child");
    for r in disk.changed_ranges(1)? {
        println!("    changed: {} bytes at offset {}", r.length, r.offset);
    }
    disk.close()?;
    same_bytes_as(&child, &expected)?;
    let report = merge::merge(&child, MergeOptions::default())?;
    println!(
        "    merged into {}: {} bytes copied, {} removed",
        report.destination.display(),
        report.bytes_copied,
        child.display()
    );
    same_bytes_as(&vhdx, &expected)?;
    println!("    the parent now holds the child's data; the child is gone");

    println!("\ndone");
    Ok(())
}

/// The virtual disk `vhdx` holds exactly the bytes of the file `raw`.
fn same_bytes(vhdx: &Path, raw: &Path) -> Result<(), Box<dyn Error>> {
    same_bytes_as(vhdx, &std::fs::read(raw)?)
}

/// The virtual disk `vhdx` (through its chain) holds exactly `want`.
fn same_bytes_as(vhdx: &Path, want: &[u8]) -> Result<(), Box<dyn Error>> {
    let disk = Disk::open(vhdx, OpenMode::ReadOnly)?;
    if disk.virtual_size() != want.len() as u64 {
        return Err(format!("{} has another size than expected", vhdx.display()).into());
    }
    let mut got = vec![0u8; want.len()];
    disk.read_at(&mut got, 0)?;
    if got != want {
        return Err(format!("{} does not hold the expected bytes", vhdx.display()).into());
    }
    Ok(())
}
