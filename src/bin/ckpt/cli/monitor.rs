//! `ckpt monitor`: check VM folders as a Nagios / Icinga plugin, or print
//! their facts as Prometheus metrics or JSON. A thin shell over
//! [`ckpt::monitor`]: the arguments, the clock, the output and the exit
//! status (the plugin's state; 3, UNKNOWN, for a command line that cannot
//! be used, whatever the format).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use ckpt::monitor::{self, Thresholds};

use super::size::parse_size;
use super::vm::parse_duration;
use super::Failure;

/// What `--format` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plugin output; the exit status is the state.
    Nagios,
    /// Prometheus text exposition; exit 0 once printed.
    Prometheus,
    /// One JSON object; exit 0 once printed.
    Json,
}

fn parse_format(s: &str) -> Result<Format, String> {
    match s.to_ascii_lowercase().as_str() {
        "nagios" | "icinga" => Ok(Format::Nagios),
        "prometheus" => Ok(Format::Prometheus),
        "json" => Ok(Format::Json),
        _ => Err(format!(
            "unknown format '{s}' (expected nagios, prometheus or json)"
        )),
    }
}

/// The arguments of `ckpt monitor`.
#[derive(Debug, clap::Args)]
pub struct MonitorArgs {
    /// VM folders (with --recursive: folders searched for VM folders).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Checkpoint age for WARNING [default: each VM's own age warning,
    /// else 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    warn_age: Option<u64>,
    /// Checkpoint age for CRITICAL.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "72h")]
    crit_age: u64,
    /// Bytes a VM's differencing disks use, for WARNING.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "50G")]
    warn_size: u64,
    /// Bytes a VM's differencing disks use, for CRITICAL.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "200G")]
    crit_size: u64,
    /// Layers of a VM's deepest disk chain, for WARNING.
    #[arg(long, value_name = "N", default_value_t = 8)]
    warn_depth: u32,
    /// Layers of a VM's deepest disk chain, for CRITICAL.
    #[arg(long, value_name = "N", default_value_t = 16)]
    crit_depth: u32,
    /// How long an operation may hold a VM's lock before the VM is UNKNOWN
    /// (a lock held too long).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    operation_timeout: u64,
    /// Search each PATH for VM folders (skipping what cannot be read, and
    /// saying so).
    #[arg(short = 'r', long)]
    recursive: bool,
    /// nagios (plugin output, exit status 0-3), prometheus (text
    /// exposition for node_exporter's textfile collector) or json.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, default_value = "nagios")]
    format: Format,
    /// Test hook: take "now" as these seconds since the Unix epoch instead
    /// of the system clock (tests age checkpoints with it).
    #[arg(long, value_name = "SECONDS", hide = true)]
    now: Option<u64>,
}

/// Whether the process was started as `ckpt monitor …` (its first word
/// that is not an option), so that even a command line clap refuses ends
/// as a plugin's UNKNOWN.
pub fn is_monitor_call() -> bool {
    std::env::args_os()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'))
        .is_some_and(|a| a == "monitor")
}

/// A failure as the plugin's UNKNOWN: one status line on stdout, exit 3.
pub fn unknown(f: Failure) -> i32 {
    let msg = f.0.join("; ");
    println!("CKPT UNKNOWN - {}", super::one_line(&msg).replace('|', "/"));
    3
}

/// Run the check; the exit status.
pub fn run(a: &MonitorArgs) -> i32 {
    let now = a.now.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let t = Thresholds {
        warn_age: a.warn_age,
        crit_age: a.crit_age,
        warn_size: a.warn_size,
        crit_size: a.crit_size,
        warn_depth: a.warn_depth,
        crit_depth: a.crit_depth,
        operation_timeout: a.operation_timeout,
    };
    let report = monitor::evaluate(monitor::scan(&a.paths, a.recursive), &t, now);
    let (text, code) = match a.format {
        Format::Nagios => (monitor::nagios(&report), report.state.code()),
        Format::Prometheus => (monitor::prometheus(&report), 0),
        Format::Json => match super::vm::json_text(&monitor::json(&report)) {
            Ok(t) => (t, 0),
            Err(f) => return unknown(f),
        },
    };
    match super::vm::print(&text) {
        Ok(()) => code,
        Err(f) => {
            eprintln!("error: {}", f.0.join("; "));
            3
        }
    }
}
