//! Where a daemon's log goes: to the journal as native fields (tracing
//! fields uppercased, no prefix: `EVENT`, `EPISODE_ID`, `HTTP_STATUS`, …;
//! `PRIORITY` from the level) when stderr is the journal (a systemd service)
//! or when `LABSHIP_JOURNAL=1`; otherwise readable lines on stderr. The
//! level filter is `LABSHIP_LOG` (default `info`).

/// Installs the global subscriber; `identifier` is the journal's
/// `SYSLOG_IDENTIFIER` (the binary's name).
pub fn init_logging(identifier: &str) {
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
            .with_syslog_identifier(identifier.to_owned())
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

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for a service whose stderr is
/// the journal; it only counts when it matches our actual stderr.
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
