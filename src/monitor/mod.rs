//! Monitoring many VMs: the facts `ckpt monitor` reports (each checkpoint's
//! age, kind and size, each VM's chain depth, role and pending operation),
//! judged against thresholds, in the forms monitoring systems read.
//!
//! The steps, one file each:
//! - `facts.rs`: [`scan`] reads VM folders (or searches folders for them)
//!   without taking any VM's lock, so it never waits for, nor holds up, an
//!   operation: `vm.json` as last committed, the sizes of the differencing
//!   disks from their file metadata (no disk is opened), the journal of an
//!   operation under way or interrupted;
//! - `eval.rs`: [`evaluate`], a pure function of those facts, the
//!   [`Thresholds`] and the time "now" (so tests control the clock), giving a
//!   [`Report`]: a [`State`] per checkpoint, per VM and overall, and the
//!   findings that say why;
//! - `nagios.rs`: [`nagios`], the output of a Nagios / Icinga plugin (the
//!   Monitoring Plugins development guidelines: status line with
//!   performance data, then long output), with [`State::code`] the exit
//!   status;
//! - `prometheus.rs`: [`prometheus`], the Prometheus text exposition format
//!   (for node_exporter's textfile collector);
//! - `json.rs`: [`json`], the report as one JSON object;
//! - `text.rs`: durations and byte counts for people, and the cleaning of
//!   names put into one line of output.
//!
//! Depends on [`crate::checkpoint`] (the VM file, the journal) and
//! [`crate::io`] (the lock probe) only; never on the C ABI or the CLI.
//!
//! ```
//! use ckpt::monitor::{evaluate, nagios, scan, State, Thresholds};
//! # let dir = tempfile::tempdir().unwrap();
//! // A folder searched for VM folders (here: none).
//! let facts = scan(&[dir.path().to_path_buf()], true);
//! let report = evaluate(facts, &Thresholds::default(), 1_700_000_000);
//! assert_eq!(report.state, State::Unknown);
//! assert!(nagios(&report).starts_with("CKPT UNKNOWN - "));
//! ```

mod eval;
mod facts;
mod json;
mod nagios;
mod prometheus;
mod text;

pub use eval::{
    evaluate, CheckpointReport, Finding, Report, State, Thresholds, VmReport, DEFAULT_WARN_AGE,
};
pub use facts::{read_vm, scan, CheckpointFacts, Found, Operation, Scan, Skipped, VmFacts};
pub use json::json;
pub use nagios::nagios;
pub use prometheus::prometheus;
pub use text::{human_bytes, human_duration};
