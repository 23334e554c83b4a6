//! `quarantine-unstamped [--config PATH | --data-dir DIR] [--dry-run]`:
//! parses arguments, runs `labship_tools::unstamped::run`, prints one line per
//! episode and a summary. Exit 0 (including nothing to do), 1 when a move
//! failed or the queue could not be listed, 2 for a bad config or argument.

use clap::Parser;
use labship_shipper::config::DEFAULT_PATH;
use labship_tools::unstamped::{self, Options, Outcome, Source};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Quarantine the finished episodes that have no valid code stamp.
///
/// Moves each episode in episodes/ whose meta.json has no valid
/// code_version.commit to quarantine/, with its reason file. Safe to run
/// while the shipper runs; a second run changes nothing.
#[derive(Debug, Parser)]
#[command(name = "quarantine-unstamped", version = labship_sys::LONG_VERSION)]
struct Args {
    /// The shipper's configuration (data_dir, host_id, settle_s)
    /// [default: /etc/labship/shipper.toml].
    #[arg(long, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Work on this data directory without a config: host_id in reason files
    /// is the hostname (or "unknown" when it is not a valid id), settle 30 s.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Say what would be moved; change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> ExitCode {
    labship_sys::run_cli(run)
}

fn run(args: Args) -> ExitCode {
    let source = match (args.data_dir, args.config) {
        (Some(dir), _) => Source::DataDir(dir),
        (None, config) => Source::Config(config.unwrap_or_else(|| DEFAULT_PATH.into())),
    };
    let opts = Options {
        source,
        dry_run: args.dry_run,
    };
    // Write errors (a closed pipe) are ignored: the moves matter, not the
    // printing, and a panic mid-run would only hide the summary.
    let mut out = std::io::stdout().lock();
    let result = unstamped::run(&opts, &mut |entry| {
        if let Outcome::Failed(_) = entry.outcome {
            let _ = writeln!(std::io::stderr(), "quarantine-unstamped: {entry}");
        } else {
            let _ = writeln!(out, "{entry}");
        }
    });
    match result {
        Ok(report) => {
            let _ = writeln!(out, "{}", report.summary());
            if report.failed() > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "quarantine-unstamped: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
