//! `doctor [--config PATH] [--since 10min] [--json] [--journal-file FILE] [--no-ping]`:
//! what is wrong on this lab host, worst first, with the command that fixes
//! it. Exit 0 all OK, 1 warnings, 2 failures (CONTRACT §5).

use clap::Parser;
use labship_tools::doctor::{self, Options, render};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Diagnose the labship shipper on this host, worst problem first.
///
/// The first line is the worst finding and the command that fixes it, then
/// one row per check. Exit 0 all OK, 1 warnings, 2 failures.
#[derive(Debug, Parser)]
#[command(name = "doctor", version = labship_sys::LONG_VERSION)]
struct Args {
    /// The shipper's configuration file.
    #[arg(long, default_value = labship_shipper::config::DEFAULT_PATH)]
    config: PathBuf,
    /// How far back to read the journal (e.g. 10min, 2h, 1day).
    #[arg(long, default_value = "10min", value_parser = humantime::parse_duration)]
    since: std::time::Duration,
    /// One JSON document instead of rows (for agents).
    #[arg(long)]
    json: bool,
    /// Read captured `journalctl -o json` output instead of the journal.
    #[arg(long)]
    journal_file: Option<PathBuf>,
    /// Do not ping the receiver (offline diagnosis).
    #[arg(long)]
    no_ping: bool,
}

fn main() -> ExitCode {
    labship_sys::run_cli(run)
}

fn run(args: Args) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let opts = Options {
        config: args.config,
        since: args.since,
        journal_file: args.journal_file,
        no_ping: args.no_ping,
        now: std::time::SystemTime::now(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("FAIL doctor cannot start its async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = runtime.block_on(doctor::run(&opts));
    if args.json {
        println!("{}", render::json(&report));
    } else {
        print!(
            "{}",
            render::human(&report, std::io::stdout().is_terminal())
        );
    }
    ExitCode::from(report.exit_code)
}
