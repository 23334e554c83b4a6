//! `receiver [--config PATH] [--check-config]`: parses arguments, sets up
//! logging and signals, binds the listeners and hands them to
//! `labship_receiver::Receiver::run`. Exit codes: 0 clean stop, 1 runtime
//! failure, 2 invalid configuration.
//!
//! `--check-config` reads the configuration and every file it names as the
//! daemon would at start (`Receiver::check`), prints the warnings and exits
//! 0 (valid) or 2 (invalid), touching nothing.

use clap::Parser;
use labship_receiver::Receiver;
use labship_receiver::config::{Config, DEFAULT_PATH};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

/// The labship receiver: authenticates lab hosts, gates episodes on their code
/// stamp, stores archives durably.
#[derive(Debug, Parser)]
#[command(name = "receiver", version = labship_sys::LONG_VERSION, about)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Validate the configuration and the files it names (certificates, key,
    /// client CA, CRLs, tokens, gate), print warnings, and exit: 0 valid,
    /// 2 invalid. Starts nothing and writes nothing.
    #[arg(long)]
    check_config: bool,
}

/// `--check-config`: warnings on stderr, the verdict on stdout (or the error
/// on stderr).
fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path).and_then(|c| Receiver::check(&c)) {
        Ok(warnings) => {
            for w in &warnings {
                eprintln!("receiver: warning: {w}");
            }
            println!(
                "receiver: configuration OK: {} ({} warning(s))",
                path.display(),
                warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("receiver: invalid configuration: {e}");
            ExitCode::from(2)
        }
    }
}

async fn bind(
    file: &std::path::Path,
    key: &str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{}: {key}: cannot listen on {addr}: {e}", file.display()))
}

fn main() -> ExitCode {
    labship_sys::run_cli(run)
}

fn run(args: Args) -> ExitCode {
    labship_sys::init_logging("receiver");
    // One crypto provider for the whole process (see RECIPES: two would panic).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if args.check_config {
        return check_config(&args.config);
    }

    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("receiver: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // Before anything in storage.dir is cleaned: a second receiver there
    // would cut the first one's partial uploads under its feet.
    let _lock = match labship_receiver::lock_storage(&config) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("receiver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let receiver = match Receiver::prepare(config.clone()) {
        Ok(receiver) => receiver,
        Err(e) => {
            eprintln!("receiver: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("receiver: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (api, ops) = match (
            bind(&config.file, "listen", config.listen).await,
            bind(&config.file, "ops.listen", config.ops_listen).await,
        ) {
            (Ok(api), Ok(ops)) => (api, ops),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("receiver: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (hup_tx, hup_rx) = tokio::sync::watch::channel(0u64);
        let signals = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        );
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
            eprintln!("receiver: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => { hup_tx.send_modify(|n| *n += 1); continue; }
                }
            }
            let _ = stop_tx.send(true);
        });
        receiver.run(api, ops, stop_rx, hup_rx).await;
        ExitCode::SUCCESS
    })
}
