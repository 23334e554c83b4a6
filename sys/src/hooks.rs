//! Test hooks both daemons compile in debug builds only: named points where
//! the crash and fault suites stop a process (`LABSHIP_CRASH_AT`) or park a
//! task (`LABSHIP_PAUSE_AT`). Release builds compile them to nothing.

/// A named crash point: in debug builds, when `LABSHIP_CRASH_AT` names this
/// point, the process sends itself SIGKILL here (no unwinding, no
/// destructors, no flushing: as `kill -9` or a power cut would leave it).
#[inline]
pub fn crash_point(name: &'static str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("LABSHIP_CRASH_AT").is_some_and(|v| v == name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// A named pause point: in debug builds, when `LABSHIP_PAUSE_AT` names it,
/// the task that reaches it logs "paused at test pause point <name>" and
/// waits until it is cancelled (e.g. by shutdown), so a test can act there.
pub async fn pause_point(name: &'static str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("LABSHIP_PAUSE_AT").is_some_and(|v| v == name) {
        tracing::warn!("paused at test pause point {name}");
        std::future::pending::<()>().await;
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
