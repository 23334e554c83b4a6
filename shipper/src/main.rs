//! `shipper [--config PATH] [--ping | --once | --check-config [--json | --print KEY]]`:
//! parses arguments, sets up logging and signals, and hands over to the
//! library. Exit codes (CONTRACT §5, §11): `--ping` 0 ok, 2 config, 3 TLS/auth
//! refused, 4 unreachable, 5 unexpected; `--once` 0, 1 when a transient
//! failure left work, 2 config; `--check-config` 0 valid (warnings allowed),
//! 2 invalid; daemon 0 on a clean stop, 2 on bad config.

use clap::Parser;
use labship_shipper::check;
use labship_shipper::config::{Config, DEFAULT_PATH};
use labship_shipper::queue::Shipper;
use labship_shipper::systemd;
use labship_shipper::upload::Uploader;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The labship shipper: ships finished episodes to the receiver.
#[derive(Debug, Parser)]
#[command(name = "shipper", version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// One authenticated ping of the receiver; one line out.
    #[arg(long, conflicts_with = "once")]
    ping: bool,
    /// One pass: ship every ready episode, print a summary, exit.
    #[arg(long)]
    once: bool,
    /// Validate the config and read every file it names (certificate and key
    /// match, host_id is the certificate's identity, no certificate expires
    /// within 14 days); touch nothing else. Exit 0 valid, 2 invalid.
    #[arg(long, conflicts_with_all = ["ping", "once"])]
    check_config: bool,
    /// With --check-config: one JSON document (validity, errors, warnings,
    /// certificates and the resolved paths).
    #[arg(long, requires = "check_config", conflicts_with = "print")]
    json: bool,
    /// With --check-config: print only this resolved path (one line; empty
    /// when unset), also when the config is otherwise invalid; nothing when
    /// the file is not TOML. The exit code still says valid (0) or not (2).
    #[arg(long, value_name = "KEY", requires = "check_config")]
    print: Option<PathKey>,
    /// Print a man page or a shell completion for this binary and exit
    /// (for packagers: scripts/build-debs.sh).
    #[arg(long, value_name = "KIND", hide = true)]
    generate: Option<labship_sys::Generate>,
}

/// The paths `--check-config --print` can name (shipper.toml's keys).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PathKey {
    #[value(name = "data_dir")]
    DataDir,
    #[value(name = "ca_file")]
    CaFile,
    #[value(name = "cert_file")]
    CertFile,
    #[value(name = "key_file")]
    KeyFile,
    #[value(name = "token_file")]
    TokenFile,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(kind) = args.generate {
        return labship_sys::generate_to_stdout(kind, <Args as clap::CommandFactory>::command());
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if args.check_config {
        return check_config(&args);
    }
    init_logging();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shipper: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shipper: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let uploader = match Uploader::new(&config) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("shipper: invalid configuration: {e}");
                return ExitCode::from(2);
            }
        };
        if args.ping {
            return ping(&config, &uploader).await;
        }
        let mut shipper = match Shipper::new(config.clone(), uploader) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                eprintln!("shipper: {}: {e}", config.data_dir.display());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("shipper: {}: data_dir: cannot prepare {}: {e}", config.file.display(), config.data_dir.display());
                return ExitCode::from(2);
            }
        };
        if args.once {
            let s = shipper.pass(&|| {}).await;
            println!(
                "shipped {}, already present {}, quarantined {}, left pending {} ({} by a transient failure)",
                s.shipped, s.already_present, s.quarantined, s.pending, s.transient
            );
            return if s.transient > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
        daemon(shipper, &config).await
    });
    // A pack or seal still running on a blocking thread (SIGTERM mid-pass)
    // is not waited for: its temp file, or its archive without a sidecar, in
    // outbox/ is cleared at the next start, and the stop must not outlast
    // systemd's TimeoutStopSec.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

/// Logs go to the journal as native fields (`EVENT`, `EPISODE_ID`,
/// `HTTP_STATUS`, `ERROR_CODE`, `REMEDIATION`, …: tracing fields uppercased, no
/// prefix) when stderr is the journal, or when `LABSHIP_JOURNAL=1`; otherwise
/// readable lines on stderr.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LABSHIP_LOG")
        .unwrap_or_else(|_| "info".into());
    let journal = (stderr_is_journal()
        || std::env::var_os("LABSHIP_JOURNAL").is_some_and(|v| v == "1"))
    .then(|| tracing_journald::layer().ok())
    .flatten()
    .map(|l| {
        l.with_field_prefix(None)
            .with_syslog_identifier("shipper".into())
    });
    let registry = tracing_subscriber::registry().with(filter);
    match journal {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for a service whose stderr is the
/// journal; it only counts when it matches our actual stderr.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr())
        .is_ok_and(|st| dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino))
}

/// `--check-config`: the report on stdout (human, `--json`, or one `--print`ed
/// path); exit 0 valid, 2 invalid.
fn check_config(args: &Args) -> ExitCode {
    let now = std::time::SystemTime::now();
    let report = check::check(&args.config, now);
    if let Some(key) = args.print {
        match &report.paths {
            Some(p) => {
                let value = match key {
                    PathKey::DataDir => Some(&p.data_dir),
                    PathKey::CaFile => p.ca_file.as_ref(),
                    PathKey::CertFile => p.cert_file.as_ref(),
                    PathKey::KeyFile => p.key_file.as_ref(),
                    PathKey::TokenFile => p.token_file.as_ref(),
                };
                println!(
                    "{}",
                    value.map_or(String::new(), |v| v.display().to_string())
                );
            }
            None => eprint!("{}", report.human()),
        }
    } else if args.json {
        println!("{}", report.json(now));
    } else {
        print!("{}", report.human());
    }
    ExitCode::from(report.exit_code())
}

async fn ping(config: &Config, uploader: &Uploader) -> ExitCode {
    let verdict = uploader
        .check(config, config.connect_timeout + Duration::from_secs(10))
        .await;
    println!("{verdict}");
    ExitCode::from(verdict.exit_code())
}

async fn daemon(mut shipper: Shipper, config: &Config) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("shipper: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let watchdog = systemd::Watchdog::from_env();
    systemd::ready(&format!("shipping to {}", config.url));
    tracing::info!(host = %config.host_id, receiver = %config.url, data_dir = %config.data_dir.display(), "shipper ready");
    let progress = shipper.progress();
    // Progress and SIGHUP run beside the work loop, never cutting a pass
    // and never pinging the watchdog.
    tokio::spawn(labship_shipper::progress::ticker(progress.clone()));
    let (mut running, limiter) = (config.clone(), progress.limiter.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            labship_shipper::reload::reload(&mut running, &limiter);
        }
    });
    let alive = || watchdog.alive();
    loop {
        let pass = shipper.pass(&alive);
        // A pass is never cut in the middle: every move in it is atomic, and an
        // upload cut by SIGTERM is retried after restart. So stop between steps.
        let summary = tokio::select! {
            s = pass => s,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        watchdog.alive();
        systemd::status(&format!(
            "pending {} shipped {} quarantined {} transient {}; {}",
            summary.pending,
            summary.shipped + summary.already_present,
            summary.quarantined,
            summary.transient,
            progress.cap_text()
        ));
        tokio::select! {
            () = tokio::time::sleep(config.scan_interval) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    systemd::stopping();
    tracing::info!("shipper stopped");
    ExitCode::SUCCESS
}
