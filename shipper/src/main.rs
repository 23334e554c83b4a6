//! `shipper [--config PATH] [--ping | --once | --check-config [--print KEY]] [--json]`:
//! parses arguments, sets up logging and signals, and hands over to the
//! library. Exit codes (CONTRACT §5, §11): `--ping` 0 ok, 2 config, 3 TLS/auth
//! refused, 4 unreachable, 5 unexpected; `--once` 0, 1 when a transient
//! failure left work, 2 config; `--check-config` 0 valid (warnings allowed),
//! 2 invalid; daemon 0 on a clean stop, 2 on bad config. `--json` makes
//! `--ping`, `--once` and `--check-config` print one JSON document on stdout
//! instead (same exit codes; docs/operations.md lists the fields).

use clap::Parser;
use labship_shipper::check;
use labship_shipper::config::{Config, DEFAULT_PATH};
use labship_shipper::driver::Shipper;
use labship_shipper::systemd;
use labship_shipper::upload::{PingVerdict, Uploader};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The labship shipper: ships finished episodes to the receiver.
#[derive(Debug, Parser)]
#[command(name = "shipper", version = labship_sys::LONG_VERSION, about)]
#[command(group(clap::ArgGroup::new("mode").args(["ping", "once", "check_config"])))]
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
    /// With --ping, --once or --check-config: one JSON document on stdout
    /// (same exit codes; fields in docs/operations.md).
    #[arg(long, requires = "mode", conflicts_with = "print")]
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
    labship_sys::init_logging("shipper");
    let json = args.json;
    if json {
        json_on_panic();
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                json,
                2,
                "invalid_config",
                format!("invalid configuration: {e}"),
            );
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                json,
                1,
                "runtime_failed",
                format!("cannot start the async runtime: {e}"),
            );
        }
    };
    let code = runtime.block_on(async move {
        let uploader = match Uploader::new(&config) {
            Ok(u) => u,
            Err(e) => {
                return fail(
                    json,
                    2,
                    "invalid_config",
                    format!("invalid configuration: {e}"),
                );
            }
        };
        if args.ping {
            return ping(&config, &uploader, json).await;
        }
        let mut shipper = match Shipper::new(config.clone(), uploader) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return fail(
                    json,
                    1,
                    "locked",
                    format!("{}: {e}", config.data_dir.display()),
                );
            }
            Err(e) => {
                let why = format!(
                    "{}: data_dir: cannot prepare {}: {e}",
                    config.file.display(),
                    config.data_dir.display()
                );
                return fail(json, 2, "invalid_config", why);
            }
        };
        if args.once {
            return once(&mut shipper, json).await;
        }
        if let Some(why) = outlasts_the_watchdog(&config) {
            tracing::error!(key = "receiver.stall_timeout_s", "{why}");
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

/// With `--json`, a panic still prints one document on stdout (then the
/// process aborts: `panic = "abort"`, killed by SIGABRT, so `exit_code` is
/// null).
fn json_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        println!(
            "{}",
            json!({"result": "panic", "exit_code": null, "message": info.to_string(), "shipper_version": labship_sys::LONG_VERSION})
        );
    }));
}

/// A failure before `--ping` or `--once` could start: the message on
/// stderr, and with `--json` the document on stdout.
fn fail(json: bool, code: u8, result: &str, message: String) -> ExitCode {
    eprintln!("shipper: {message}");
    if json {
        println!(
            "{}",
            json!({"result": result, "exit_code": code, "message": message, "shipper_version": labship_sys::LONG_VERSION})
        );
    }
    ExitCode::from(code)
}

async fn ping(config: &Config, uploader: &Uploader, json: bool) -> ExitCode {
    let verdict = uploader
        .check(config, config.connect_timeout + Duration::from_secs(10))
        .await;
    if json {
        println!("{}", ping_json(&verdict, config));
    } else {
        println!("{verdict}");
    }
    ExitCode::from(verdict.exit_code())
}

/// `--ping --json`: `result` names the verdict; the human line is `message`.
fn ping_json(v: &PingVerdict, config: &Config) -> Value {
    let mut doc = json!({
        "exit_code": v.exit_code(),
        "message": v.to_string(),
        "host_id": config.host_id.as_str(),
        "receiver_url": config.url.as_str(),
        "shipper_version": labship_sys::LONG_VERSION,
    });
    let extra = match v {
        PingVerdict::Ok { pong, .. } => json!({
            "result": "ok",
            "known_as": pong.host_id,
            "receiver_version": pong.receiver_version,
            "gate": pong.gate,
        }),
        PingVerdict::HostMismatch { known_as, .. } => {
            json!({"result": "host_mismatch", "known_as": known_as})
        }
        PingVerdict::Refused { status, body, .. } => {
            json!({"result": "refused", "status": status, "body": body})
        }
        PingVerdict::TlsRefused { .. } => json!({"result": "tls_refused"}),
        PingVerdict::Unreachable { .. } => json!({"result": "unreachable"}),
        PingVerdict::Unexpected { status, body, .. } => {
            json!({"result": "unexpected", "status": status, "body": body})
        }
    };
    if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
        doc.extend(extra);
    }
    doc
}

/// `--once`: one pass, its summary on stdout; exit 1 when a transient
/// failure left work.
async fn once(shipper: &mut Shipper, json: bool) -> ExitCode {
    let s = shipper.pass(&|| {}).await;
    let code: u8 = if s.transient > 0 { 1 } else { 0 };
    if json {
        println!(
            "{}",
            json!({
                "result": if code == 0 { "ok" } else { "transient" },
                "exit_code": code,
                "shipped": s.shipped,
                "already_present": s.already_present,
                "quarantined": s.quarantined,
                "pending": s.pending,
                "transient": s.transient,
                "shipper_version": labship_sys::LONG_VERSION,
            })
        );
    } else {
        println!(
            "shipped {}, already present {}, quarantined {}, left pending {} ({} by a transient failure)",
            s.shipped, s.already_present, s.quarantined, s.pending, s.transient
        );
    }
    ExitCode::from(code)
}

/// `[ops] listen`: binds and serves `/metrics` beside the work loop. An
/// address that cannot be bound is logged and shipping goes on.
async fn ops_listener(listen: std::net::SocketAddr, config: &Config) {
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => {
            // /healthz fails once the work loop has shown no progress for
            // longer than a pass may honestly wait (a HEAD or an answer).
            let stall = (config.stall_timeout * 2 + config.scan_interval)
                .max(std::time::Duration::from_secs(300));
            tokio::spawn(labship_shipper::ops::serve(listener, stall));
        }
        Err(e) => tracing::error!(
            event = "ops_listen_failed", listen = %listen, config = %config.file.display(), error = %e,
            "cannot serve /metrics on {listen} ([ops] listen in {}): {e}; shipping goes on without it: free the port or set another address (\"\" turns it off)",
            config.file.display()
        ),
    }
}

/// Under a watchdog, the longest quiet stretch of the work loop (an upload
/// whose body is sent, awaiting its answer: `receiver.stall_timeout_s` plus
/// [`ANSWER_GRACE`]) must fit in the unit's `WatchdogSec`, or systemd kills
/// an upload that waits that long as a hung shipper. Said loudly at start,
/// naming the key and both ways out; not refused: a short `WatchdogSec`
/// (a drop-in to catch wedges sooner) is the operator's trade.
fn outlasts_the_watchdog(config: &Config) -> Option<String> {
    use labship_shipper::upload::ANSWER_GRACE;
    let watchdog = systemd::watchdog_sec()?;
    let quiet = config.stall_timeout + ANSWER_GRACE;
    (quiet >= watchdog).then(|| {
        format!(
            "{}: receiver.stall_timeout_s = {}: with the {} s an answer may take after the body, the work loop may stay quiet {} s, not under this unit's WatchdogSec ({} s): systemd will kill an upload that awaits its answer that long; set at most {} s, or raise WatchdogSec in a drop-in (systemctl edit labship-shipper.service)",
            config.file.display(),
            config.stall_timeout.as_secs(),
            ANSWER_GRACE.as_secs(),
            quiet.as_secs(),
            watchdog.as_secs(),
            watchdog.saturating_sub(ANSWER_GRACE + Duration::from_secs(1)).as_secs()
        )
    })
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
    if let Some(listen) = config.ops_listen {
        ops_listener(listen, config).await;
        // A readdir and a stat per entry of shipped/: after READY=1, off
        // the async threads (it only ever raises the gauge, so a pass that
        // ships first is not undone).
        let data_dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            labship_shipper::metrics::get().last_success_from_disk(&data_dir);
        });
    }
    systemd::ready(&format!("shipping to {}", config.url));
    // EVENT=ready settles doctor's "failed to start" row: a start that
    // failed before a fix is history once a later one got here.
    tracing::info!(host = %config.host_id, receiver = %config.url, data_dir = %config.data_dir.display(), event = "ready", "shipper ready");
    let progress = shipper.progress();
    // Progress and SIGHUP run beside the work loop, never cutting a pass
    // and never pinging the watchdog.
    tokio::spawn(labship_shipper::progress::ticker(progress.clone()));
    let (mut running, limiter) = (config.clone(), progress.limiter.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            systemd::reloading();
            labship_shipper::reload::reload(&mut running, &limiter);
            systemd::reloaded();
        }
    });
    labship_shipper::ops::alive();
    // The work loop's sign of life: the watchdog's ping, `/healthz`'s clock,
    // and `alive_at` in status.json (what doctor reads; the ticker only
    // writes it down).
    let alive = || {
        watchdog.alive();
        labship_shipper::ops::alive();
        progress.alive();
    };
    loop {
        let pass = shipper.pass(&alive);
        // A pass is never cut in the middle: every move in it is atomic, and an
        // upload cut by SIGTERM is retried after restart. So stop between steps.
        let summary = tokio::select! {
            s = pass => s,
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        alive();
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
    // No upload outlives the process: status.json must not list one.
    progress.stopped();
    systemd::stopping();
    tracing::info!("shipper stopped");
    ExitCode::SUCCESS
}
