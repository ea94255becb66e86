//! The `ckpt` command-line tool: argument parsing, output and exit codes.
//! A thin shell over the library; no format logic here.
//!
//! This file parses the arguments and dispatches; the bodies of the
//! commands live by group: `create.rs` (create, convert), `info.rs` (info,
//! check), `io_cmds.rs` (read, write, bench), `chain.rs` (merge, changes,
//! reparent, a differencing child), `vm.rs` and `checkpoint.rs`.
//!
//! File by file: `mod.rs` the clap definitions, dispatch, the exit status
//! and the one-line errors, the progress bar; `create.rs` `create` and
//! `convert`; `info.rs` `info` (text and JSON) and `check`; `io_cmds.rs`
//! `read`, `write` and `bench`'s argument handling, with the benchmark
//! loop in `bench.rs`; `chain.rs` `merge`, `changes` (of a file), `reparent`, child
//! creation and absolute paths; `vm.rs` `ckpt vm …` and the helpers both
//! VM groups share (opening a VM, JSON printing, errors); `checkpoint.rs`
//! `ckpt checkpoint …` and its quiesce/thaw commands; `backup.rs` `changes
//! --since` (of a VM) and `verify-backup`; `compact.rs` `compact`; `resize.rs` `resize`;
//! `in_place.rs` `convert --in-place`; `size.rs` SIZE
//! parsing and human-readable sizes; `target.rs` the VM a command
//! changes, opened here or reached through its holder's control channel.
//!
//! Dependencies: only the public API of the `ckpt` library crate (its
//! `Disk`, `disk::…`, `checkpoint::…` and `Error`), clap and the standard
//! library. Never the C ABI (`ckpt::ffi`) and never the library's
//! internals: what a command needs and the library lacks goes into the
//! library first, so the CLI stays a thin shell with no format or
//! checkpoint logic of its own.
//!
//! Exit status: 0 on success, 1 on any error (including usage errors), with
//! one `error: …` line on stderr (`check` prints one per problem);
//! `monitor.rs` (`ckpt monitor`) ends with a monitoring plugin's status
//! instead (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, also for a bad
//! command line).

mod backup;
pub mod bench;
pub mod chain;
pub mod checkpoint;
mod compact;
mod create;
mod in_place;
mod info;
mod io_cmds;
mod monitor;
mod rbd;
mod resize;
pub mod size;
mod target;
pub mod vm;

use std::io::{IsTerminal, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use clap::error::ErrorKind as ClapErrorKind;
use clap::{Parser, Subcommand};

use ckpt::{CreateOptions, Disk, OpenMode};

use self::create::{convert_cmd, create, create_vhd};
use self::info::{check, info, with_bytes};
use self::io_cmds::{bench_cmd, read, write};
use self::size::{parse_sector_size, parse_size, parse_size_u32};
use ckpt::disk::convert::{ConvertOptions, Format};

/// Hyper-V VHDX virtual disks and differencing chains: create, inspect,
/// check, convert, read, write, benchmark, merge, list changes, re-parent;
/// VMs and their checkpoint trees.
///
/// SIZE is a byte count or a number with K, M, G or T (powers of 1024).
/// Every command that opens a differencing disk (AVHDX) opens its whole
/// chain of parents (read-only) and checks that each parent still matches.
#[derive(Debug, Parser)]
#[command(name = "ckpt", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new VHDX (dynamic unless --fixed), or with --parent a
    /// differencing disk on top of PARENT.
    Create {
        /// The new file (must not exist).
        file: PathBuf,
        /// Virtual size (a multiple of the logical sector size); required
        /// unless --parent is given.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: Option<u64>,
        /// Make a differencing disk whose parent is PARENT; it takes its
        /// virtual size and sector sizes from PARENT.
        #[arg(long, value_name = "PARENT")]
        parent: Option<PathBuf>,
        /// Allocate every block now (a fixed disk).
        #[arg(long)]
        fixed: bool,
        /// Block size: a power of two from 1M to 256M [default: 32M, or 2M
        /// with --parent].
        #[arg(long, value_name = "SIZE", value_parser = parse_size_u32)]
        block_size: Option<u32>,
        /// Logical sector size, 512 or 4096 [default: 512].
        #[arg(long, value_name = "BYTES", value_parser = parse_sector_size)]
        logical_sector: Option<u32>,
        /// Physical sector size, 512 or 4096 [default: 4096].
        #[arg(long, value_name = "BYTES", value_parser = parse_sector_size)]
        physical_sector: Option<u32>,
        /// Log size, a multiple of 1M [default: 1M].
        #[arg(long, value_name = "SIZE", value_parser = parse_size_u32)]
        log_size: Option<u32>,
        /// vhdx or vhd [default: vhd for a .vhd / .avhd FILE, else vhdx;
        /// with --parent, the parent's]. A VHD has 512-byte sectors and
        /// 2M blocks by default, and no log.
        #[arg(long, value_name = "FORMAT", value_parser = parse_image_format)]
        format: Option<ckpt::Format>,
        /// A dynamic disk (the default).
        #[arg(long, conflicts_with = "fixed")]
        dynamic: bool,
    },
    /// Show facts about a VHDX and its chain of parents (opens it read-only).
    Info {
        /// The VHDX.
        file: PathBuf,
        /// Print one JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Check a VHDX's structure without writing to it (this one file, not
    /// its parents).
    Check {
        /// The VHDX.
        file: PathBuf,
    },
    /// Convert between raw and VHDX images (output is sparse), or with
    /// --in-place a base VHDX between fixed and dynamic.
    ///
    /// A differencing SRC is read through its chain: the output is a
    /// standalone image with the chain's content and no parent.
    ///
    /// SRC's format comes from its content ("vhdxfile" → VHDX, else raw);
    /// DST's from -O, else its extension (.vhdx/.avhdx → VHDX, else raw).
    /// A raw SRC whose length is not a multiple of 512 is rounded up with
    /// zeros. An existing DST is never overwritten.
    ///
    /// `convert --in-place FILE --to fixed|dynamic` changes FILE itself:
    /// to fixed, every block it lacks is allocated (zeroed; refused, with
    /// nothing changed, when the volume lacks the room); to dynamic, the
    /// blocks that read as zeros are given back and the file shrinks. What
    /// the disk reads does not change, nor its DataWriteGuid (children
    /// stay linked). The file must not be in use; a differencing disk is
    /// refused. An interrupted conversion leaves a disk that reads the
    /// same, of the old kind or the new one; converting to fixed again
    /// finishes it (to dynamic: `ckpt compact --mode full`).
    Convert {
        /// The source image (with --in-place: the VHDX to convert).
        src: PathBuf,
        /// The new image (must not exist); not with --in-place.
        #[arg(required_unless_present = "in_place", conflicts_with = "in_place")]
        dst: Option<PathBuf>,
        /// Convert SRC itself, to the kind --to names.
        #[arg(long, requires = "to", conflicts_with_all = ["output_format", "fixed", "block_size", "no_sync"])]
        in_place: bool,
        /// With --in-place: fixed or dynamic.
        #[arg(long, value_name = "KIND", value_parser = parse_in_place_kind, requires = "in_place")]
        to: Option<ckpt::DiskKind>,
        /// With --in-place: print one JSON object (the report) instead.
        #[arg(long, requires = "in_place")]
        json: bool,
        /// Output format, raw or vhdx [default: from DST's extension].
        #[arg(short = 'O', value_name = "FORMAT", value_parser = parse_format)]
        output_format: Option<Format>,
        /// Make a fixed VHDX or VHD.
        #[arg(long)]
        fixed: bool,
        /// Block size of a VHDX or VHD output [default: VHDX the source's,
        /// or 32M; VHD 2M].
        #[arg(long, value_name = "SIZE", value_parser = parse_size_u32)]
        block_size: Option<u32>,
        /// Make an Azure-ready fixed VHD: the virtual size rounded up to a
        /// whole MiB (zeros at the end), then the footer.
        #[arg(long, conflicts_with = "in_place")]
        azure: bool,
        /// Do not sync the new image: faster, and complete for every reader
        /// when the command ends, but a power loss before the system writes
        /// it back may leave it torn (qemu-img convert's default; run
        /// `sync` after). Without it the image is durable when the command
        /// ends.
        #[arg(long)]
        no_sync: bool,
    },
    /// Copy LENGTH bytes of the virtual disk at OFFSET to stdout.
    Read {
        /// The VHDX.
        file: PathBuf,
        /// Where to start (SIZE).
        #[arg(value_parser = parse_size)]
        offset: u64,
        /// How many bytes (SIZE).
        #[arg(value_parser = parse_size)]
        length: u64,
    },
    /// Write stdin's bytes into the virtual disk at OFFSET, then flush and close.
    Write {
        /// The VHDX.
        file: PathBuf,
        /// Where to start (SIZE).
        #[arg(value_parser = parse_size)]
        offset: u64,
    },
    /// Run the workload of `qemu-img bench` (same options and defaults).
    ///
    /// COUNT requests of SIZE bytes, the first at OFFSET, each next one STEP
    /// further, wrapping around before the end of the disk like qemu-img.
    Bench {
        /// The VHDX.
        file: PathBuf,
        /// Write test (default: read test).
        #[arg(short = 'w', long = "write")]
        write: bool,
        /// Size of each request.
        #[arg(short = 's', long = "buffer-size", value_name = "SIZE", value_parser = parse_size, default_value = "4K")]
        size: u64,
        /// Number of requests.
        #[arg(short = 'c', long = "count", default_value_t = 75000)]
        count: u64,
        /// Offset increment between requests [default: SIZE].
        #[arg(short = 'S', long = "step-size", value_name = "STEP", value_parser = parse_size)]
        step: Option<u64>,
        /// Offset of the first request.
        #[arg(short = 'o', long = "offset", value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Threads sharing the disk; requests are dealt out round-robin.
        #[arg(short = 't', long = "threads", default_value_t = 1)]
        threads: usize,
        /// Byte a write test writes.
        #[arg(long, default_value_t = 0)]
        pattern: u8,
        /// Flush whenever the number of remaining requests is a multiple of this (write test).
        #[arg(long, value_name = "INTERVAL")]
        flush_interval: Option<u64>,
    },
    /// Merge a differencing disk into its parent (or into an older ancestor),
    /// then remove it, like deleting a checkpoint.
    ///
    /// Only the data the merged layers hold is copied. Differencing disks in
    /// CHILD's folder whose parent is CHILD are re-pointed at the
    /// destination. With --into, the layers between CHILD and ANCESTOR are
    /// merged too and removed as well. Refused when a disk that would change
    /// or disappear has other children (they would be broken). An
    /// interrupted merge leaves a chain that reads the same; running it again
    /// finishes it.
    Merge {
        /// The differencing disk to merge (removed on success).
        child: PathBuf,
        /// The ancestor to merge into [default: CHILD's parent].
        #[arg(long, value_name = "ANCESTOR")]
        into: Option<PathBuf>,
    },
    /// List the byte ranges a differencing disk changed, or (with --since)
    /// the ranges of a VM's disk that changed since a checkpoint.
    ///
    /// Without --base: the ranges FILE itself holds (its own layer; for a
    /// base disk, the ranges it holds data for). With --base: every range
    /// that may differ between ANCESTOR (a disk of FILE's chain below FILE)
    /// and FILE. With --since, FILE is a VM folder: every range of its disk
    /// K (--disk) that may differ between checkpoint REF and NAME (--to;
    /// default and --current: the current state), REF on the path to NAME
    /// or on another branch (then through their common ancestor), or a
    /// reference point (`ckpt checkpoint reference`); what an incremental
    /// export since REF copies. Exact to the logical sector (to 64 KiB for
    /// what a reference point's change map holds); sorted, adjacent ones
    /// joined.
    #[command(
        override_usage = "ckpt changes <FILE> [--base <ANCESTOR>] [--json]\n       \
                                ckpt changes <DIR> --since <REF> [--to <NAME> | --current] \
                                [--disk <K>] [--json]"
    )]
    Changes {
        /// The VHDX (with --since: the VM folder).
        file: PathBuf,
        /// Report the changes since this ancestor.
        #[arg(long, value_name = "ANCESTOR", conflicts_with = "since")]
        base: Option<PathBuf>,
        /// FILE is a VM folder: report the changes since checkpoint (or
        /// reference point) REF.
        #[arg(long, value_name = "REF")]
        since: Option<String>,
        /// With --since: up to checkpoint NAME [default: the current state].
        #[arg(
            long,
            value_name = "NAME",
            requires = "since",
            conflicts_with = "current"
        )]
        to: Option<String>,
        /// With --since: up to the current state (the default).
        #[arg(long, requires = "since")]
        current: bool,
        /// With --since: the VM's disk, by index in its disk order.
        #[arg(long, value_name = "K", default_value_t = 0, requires = "since")]
        disk: usize,
        /// Print {"ranges": [{"offset": N, "length": N}, …]} instead (with
        /// --since: the array [{"offset": N, "length": N}, …]).
        #[arg(long)]
        json: bool,
    },
    /// Check a backup set: export folders (a full export, then the
    /// incrementals made on it, oldest first), or only the newest (its
    /// chain is followed through the disks' parent locators).
    ///
    /// For each disk of the newest export: its whole chain opens (each
    /// parent found, its DataWriteGuid matching the child's linkage, same
    /// virtual size and sector size), every file's structure is sound and
    /// unchanged since its export (the DataWriteGuid its manifest
    /// recorded), each incremental starts where the export under it ended,
    /// and the chain reads end to end. One line per disk, OK or what is
    /// wrong; exit status 1 when any disk fails.
    VerifyBackup {
        /// The export folders, oldest first (or only the newest).
        #[arg(required = true)]
        dests: Vec<PathBuf>,
    },
    /// Point a differencing disk at another parent file (after the parent
    /// was moved or copied).
    ///
    /// NEWPARENT must be the disk the child was made on (its DataWriteGuid
    /// must match the child's linkage) unless --force is given.
    Reparent {
        /// The differencing disk.
        child: PathBuf,
        /// Its new parent.
        new_parent: PathBuf,
        /// Accept a NEWPARENT that does not match (same logical sector size;
        /// the sizes may differ); the child then reads NEWPARENT's data.
        #[arg(long)]
        force: bool,
    },
    /// Give back the space a dynamic or differencing VHDX no longer needs
    /// (like Optimize-VHD): blocks move down into the space of freed ones
    /// and the file is cut after its last used byte.
    ///
    /// Quick mode gives back blocks that no longer hold data (trimmed);
    /// full mode also blocks whose data reads as all zeros (in a
    /// differencing disk such a block keeps hiding the parent's data). What
    /// the disk reads does not change, nor its DataWriteGuid (children stay
    /// linked); parents are only read. The file must not be in use. A fixed
    /// disk is refused with an error (its blocks stay allocated). An
    /// interrupted compact leaves a disk that reads the same; running it
    /// again finishes it.
    Compact {
        /// The VHDX (or AVHDX).
        file: PathBuf,
        /// quick or full.
        #[arg(long, value_name = "MODE", value_parser = parse_compact_mode, default_value = "quick")]
        mode: ckpt::CompactMode,
        /// Print one JSON object (the report) instead.
        #[arg(long)]
        json: bool,
    },
    /// Change the virtual size of a VHDX (Resize-VHD): a base disk or the
    /// top of a chain (a differencing disk may be larger or smaller than
    /// its parent; past a parent's end it reads zeros).
    ///
    /// Growing: the new space reads as zeros (a fixed disk allocates it;
    /// the BAT moves to the end of the file when it has no room). Shrinking
    /// is refused when data lies past the new end, unless --allow-shrink
    /// (then it is dropped). SIZE must be a multiple of the logical sector
    /// size. A crash leaves the old or the new size with all data. A disk
    /// that has children in its folder is refused (its DataWriteGuid
    /// changes, which would break them); resize a VM's disk with `ckpt vm
    /// disk-resize`.
    Resize {
        /// The VHDX.
        file: PathBuf,
        /// The new virtual size (e.g. 64G, 1536M, bytes).
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Drop the data past a smaller size.
        #[arg(long)]
        allow_shrink: bool,
        /// Print one JSON object (the report) instead.
        #[arg(long)]
        json: bool,
    },
    /// Create, show and change VMs (a VM folder holds vm.json: the
    /// configuration, checkpoint settings, state and checkpoint tree).
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Take, list, apply, revert, delete, rename and export the
    /// checkpoints of a VM.
    #[command(subcommand)]
    Checkpoint(checkpoint::CheckpointCommand),
    /// Check VM folders for old, large or deep checkpoints, as a Nagios /
    /// Icinga plugin (or print Prometheus metrics or JSON).
    ///
    /// Reads each VM's vm.json without taking its lock (never waits for an
    /// operation, never holds one up) and the sizes of its differencing
    /// disks from file metadata. Exit status (nagios format): 0 OK, 1
    /// WARNING, 2 CRITICAL, 3 UNKNOWN (a VM folder that cannot be read, an
    /// interrupted operation, an operation holding the lock longer than
    /// --operation-timeout, no VM found, a bad command line). The first
    /// line is `CKPT STATE - summary | perfdata` with, per VM, the oldest
    /// checkpoint's age, the differencing disks' bytes, the deepest chain
    /// and the number of checkpoints; each further line names a VM or
    /// checkpoint over a threshold and why. Checkpoints of a VM with a role
    /// (`ckpt vm set --role`) are WARNING. The prometheus and json formats
    /// exit 0 once printed (the states are in the output).
    Monitor(monitor::MonitorArgs),
}

fn parse_in_place_kind(s: &str) -> Result<ckpt::DiskKind, String> {
    match ckpt::DiskKind::parse(s) {
        Some(k @ (ckpt::DiskKind::Fixed | ckpt::DiskKind::Dynamic)) => Ok(k),
        _ => Err(format!("unknown kind '{s}' (expected fixed or dynamic)")),
    }
}

fn parse_compact_mode(s: &str) -> Result<ckpt::CompactMode, String> {
    ckpt::CompactMode::parse(s)
        .ok_or_else(|| format!("unknown mode '{s}' (expected quick or full)"))
}

fn parse_image_format(s: &str) -> Result<ckpt::Format, String> {
    ckpt::Format::parse(s).ok_or_else(|| format!("unknown format '{s}' (expected vhdx or vhd)"))
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s.to_ascii_lowercase().as_str() {
        "raw" => Ok(Format::Raw),
        "vhdx" => Ok(Format::Vhdx),
        "vhd" | "vpc" => Ok(Format::Vhd),
        _ => Err(format!("unknown format '{s}' (expected raw, vhdx or vhd)")),
    }
}

/// A failure to report: one or more `error: ` lines.
#[derive(Debug)]
struct Failure(Vec<String>);

impl From<ckpt::Error> for Failure {
    fn from(e: ckpt::Error) -> Failure {
        Failure(vec![e.to_string()])
    }
}

fn fail(msg: impl Into<String>) -> Failure {
    Failure(vec![msg.into()])
}

type CliResult = Result<(), Failure>;

/// Run the tool on the process's arguments; returns the exit status.
pub fn main() -> i32 {
    // A panic (a bug) must not end in exit 101 with a backtrace on
    // stderr: keep its message and report it as one error line.
    let panic_msg = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    {
        let slot = panic_msg.clone();
        panic::set_hook(Box::new(move |info| {
            let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "panic".to_string()
            };
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if let Ok(mut g) = slot.lock() {
                g.get_or_insert(format!("{msg}{at}"));
            }
        }));
    }
    // `ckpt monitor` ends with a plugin's exit status, 3 (UNKNOWN) for
    // any failure, a bad command line included.
    let monitoring = monitor::is_monitor_call();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            Err(e) if monitoring => {
                return match usage_error(e) {
                    Ok(()) => Ok(0),
                    Err(f) => Ok(monitor::unknown(f)),
                }
            }
            Err(e) => return usage_error(e).map(|()| 0),
        };
        match cli.command {
            Command::Monitor(a) => Ok(monitor::run(&a)),
            command => run(command).map(|()| 0),
        }
    }));
    let result = match outcome {
        Ok(r) => r,
        Err(_) => {
            let msg = panic_msg
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_else(|| "panic".into());
            let f = fail(format!("internal error (a bug in libckpt): {msg}"));
            if monitoring {
                return monitor::unknown(f);
            }
            Err(f)
        }
    };
    match result {
        Ok(code) => code,
        Err(Failure(lines)) => {
            let mut err = std::io::stderr().lock();
            for l in lines {
                let _ = writeln!(err, "error: {}", one_line(&l));
            }
            1
        }
    }
}

/// Keep a message on one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help and version go to stdout with status 0; every usage error becomes
/// one `error:` line and status 1 (clap's own status would be 2).
fn usage_error(e: clap::Error) -> CliResult {
    match e.kind() {
        ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion => {
            let _ = e.print();
            Ok(())
        }
        ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        | ClapErrorKind::MissingSubcommand => Err(fail(format!(
            "no command given (try '{} --help')",
            usage_command(&e.render().to_string())
        ))),
        _ => {
            let text = e.render().to_string();
            let hint = usage_command(&text);
            let mut parts = Vec::new();
            for line in text.lines() {
                let line = line.trim();
                if line.starts_with("Usage:") || line.starts_with("For more information") {
                    break;
                }
                if line.is_empty() || line.starts_with("tip:") {
                    continue;
                }
                parts.push(line.strip_prefix("error: ").unwrap_or(line).to_string());
            }
            let mut msg = parts.join(" ");
            if msg.is_empty() {
                msg = "invalid command line".into();
            }
            Err(fail(format!("{msg} (try '{hint} --help')")))
        }
    }
}

/// The command a clap error is about ("ckpt", "ckpt vm create"), from the
/// "Usage:" line of its rendered text.
fn usage_command(rendered: &str) -> String {
    let words: Vec<&str> = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage:"))
        .map(|u| {
            u.split_whitespace()
                .take_while(|w| !w.starts_with(['<', '[', '-']))
                .collect()
        })
        .unwrap_or_default();
    if words.first() == Some(&"ckpt") {
        words.join(" ")
    } else {
        command_of_args()
    }
}

/// The command the process's arguments name ("ckpt", "ckpt vm set"): the
/// leading words that are subcommands, for errors whose text has no
/// "Usage:" line (an invalid value).
fn command_of_args() -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut words = vec!["ckpt".to_string()];
    for a in std::env::args().skip(1) {
        let Some(sub) = cmd.find_subcommand(&a).cloned() else {
            break;
        };
        words.push(a);
        cmd = sub;
    }
    words.join(" ")
}

fn run(command: Command) -> CliResult {
    match command {
        Command::Create {
            file,
            size,
            parent: Some(parent),
            fixed,
            block_size,
            logical_sector,
            physical_sector,
            log_size,
            format,
            dynamic: _,
        } => {
            if let Some(f) = format {
                chain::refuse_other_format(&parent, f)?;
            }
            let refused: Vec<&str> = [
                (size.is_some(), "--size"),
                (fixed, "--fixed"),
                (logical_sector.is_some(), "--logical-sector"),
                (physical_sector.is_some(), "--physical-sector"),
            ]
            .into_iter()
            .filter_map(|(given, flag)| given.then_some(flag))
            .collect();
            if !refused.is_empty() {
                return Err(fail(format!(
                    "{} cannot be combined with --parent: a differencing disk is dynamic and takes \
                     its virtual size and sector sizes from its parent",
                    refused.join(", ")
                )));
            }
            let mut opts = ckpt::ChildOptions::default();
            if let Some(v) = block_size {
                opts.block_size = v;
            }
            if let Some(v) = log_size {
                opts.log_size = v;
            }
            chain::create_child(&file, &parent, &opts)
        }
        Command::Create {
            file,
            size,
            parent: None,
            fixed,
            block_size,
            logical_sector,
            physical_sector,
            log_size,
            format,
            dynamic: _,
        } => {
            let Some(size) = size else {
                return Err(fail(
                    "missing --size SIZE (or --parent PARENT for a differencing disk) \
                     (try 'ckpt --help')",
                ));
            };
            let vhd = match format {
                Some(f) => f == ckpt::Format::Vhd,
                None => {
                    ckpt::disk::convert::format_from_extension(&file)
                        == ckpt::disk::convert::Format::Vhd
                }
            };
            if vhd {
                let refused: Vec<&str> = [
                    (logical_sector.is_some(), "--logical-sector"),
                    (physical_sector.is_some(), "--physical-sector"),
                    (log_size.is_some(), "--log-size"),
                ]
                .into_iter()
                .filter_map(|(given, flag)| given.then_some(flag))
                .collect();
                if !refused.is_empty() {
                    return Err(fail(format!(
                        "{} cannot be used for a VHD (512-byte sectors, no log)",
                        refused.join(", ")
                    )));
                }
                let mut opts = ckpt::VhdOptions::new(size).fixed(fixed);
                if let Some(v) = block_size {
                    opts = opts.block_size(v);
                }
                return create_vhd(&file, &opts);
            }
            let mut opts = CreateOptions::new(size).fixed(fixed);
            if let Some(v) = block_size {
                opts = opts.block_size(v);
            }
            if let Some(v) = logical_sector {
                opts = opts.logical_sector_size(v);
            }
            if let Some(v) = physical_sector {
                opts = opts.physical_sector_size(v);
            }
            if let Some(v) = log_size {
                opts = opts.log_size(v);
            }
            create(&file, &opts)
        }
        Command::Info { file, json } => info(&file, json),
        Command::Check { file } => check(&file),
        Command::Convert {
            src,
            in_place: true,
            to: Some(to),
            json,
            ..
        } => in_place::in_place_cmd(&src, to, json),
        Command::Convert {
            src,
            dst,
            output_format,
            fixed,
            block_size,
            no_sync,
            azure,
            ..
        } => match dst {
            Some(dst) => convert_cmd(
                &src,
                &dst,
                &ConvertOptions {
                    format: output_format,
                    fixed,
                    block_size,
                    no_sync,
                    azure,
                },
            ),
            None => Err(fail(
                "convert needs SRC and DST, or --in-place FILE --to KIND",
            )),
        },
        Command::Read {
            file,
            offset,
            length,
        } => read(&file, offset, length),
        Command::Write { file, offset } => write(&file, offset),
        Command::Bench {
            file,
            write,
            size,
            count,
            step,
            offset,
            threads,
            pattern,
            flush_interval,
        } => bench_cmd(
            &file,
            &bench::BenchParams {
                write,
                bufsize: size,
                count,
                step: step.unwrap_or(size),
                offset,
                threads,
                pattern,
                flush_interval,
            },
        ),
        Command::Merge { child, into } => chain::merge_cmd(&child, into.as_deref()),
        Command::Changes {
            file,
            since: Some(since),
            to,
            disk,
            json,
            ..
        } => backup::changes_vm_cmd(&file, &since, to.as_deref(), disk, json),
        Command::Changes {
            file, base, json, ..
        } => chain::changes_cmd(&file, base.as_deref(), json),
        Command::VerifyBackup { dests } => backup::verify_backup_cmd(&dests),
        Command::Reparent {
            child,
            new_parent,
            force,
        } => chain::reparent_cmd(&child, &new_parent, force),
        Command::Compact { file, mode, json } => compact::compact_cmd(&file, mode, json),
        Command::Resize {
            file,
            size,
            allow_shrink,
            json,
        } => resize::resize_cmd(&file, size, allow_shrink, json),
        Command::Vm(cmd) => vm::run(cmd),
        Command::Checkpoint(cmd) => checkpoint::run(cmd),
        // `main` runs `monitor` itself, for its exit status; here only for
        // completeness (a status other than OK as an error).
        Command::Monitor(a) => match monitor::run(&a) {
            0 => Ok(()),
            code => Err(fail(format!("the check ended with status {code}"))),
        },
    }
}

/// Open `path`, naming it in any error.
fn open(path: &Path, mode: OpenMode) -> Result<Disk, Failure> {
    Ok(Disk::open(path, mode).map_err(|e| e.in_file(path))?)
}

/// A progress bar on stderr when stderr is a terminal (none otherwise).
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(0), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}
