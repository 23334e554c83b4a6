//! The order of doctor's rows, declared once: among findings of one
//! [`super::Level`], the one whose [`Rank`] comes first heads the report and
//! becomes the headline. The variants are in that order; rows of equal rank
//! keep the order their checks ran in (service, journal, host, unsettled).
//!
//! The order puts first what stops everything (nothing installed, nothing
//! running, a config that does not load), then what loses a ship for a
//! reason the operator must fix (out of the receiver's window before
//! unstamped: a 412 is the host's code, a 400 the producer's), then what
//! retries on its own, then what merely needs watching.

/// Where a finding stands in the report (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rank {
    /// The unit is not installed.
    ServiceMissing,
    /// `shipper.toml` does not load.
    ConfigInvalid,
    /// The config loads but the client cannot be built from it.
    ClientSetup,
    /// The journal: the shipper exited at start-up (a bad config, files).
    StartFailed,
    /// The unit is in `failed`.
    ServiceFailed,
    /// The unit keeps failing and restarting.
    RestartLoop,
    /// The unit is stopped.
    ServiceStopped,
    /// `data_dir` cannot even be stat'ed.
    DataDirMissing,
    /// `status.json`: an upload hung, or no pass completes.
    Stalled,
    /// The journal: 412, the host's code is outside the receiver's window.
    OutOfWindow,
    /// Under 2% free on `data_dir`.
    DiskFull,
    /// The journal: systemd killed the shipper for missing its watchdog.
    Watchdog,
    /// The client certificate has expired.
    CertExpired,
    /// The client certificate cannot be read or parsed.
    CertUnreadable,
    /// The journal: the receiver refused this host's identity (401/403).
    AuthRefused,
    /// The ping: the receiver refused this host (TLS, identity).
    PingRefused,
    /// The ping: no receiver answered, or something else did.
    PingFailed,
    /// The journal: the shipper could not read or move files in `data_dir`.
    LocalIo,
    /// The journal: episodes quarantined without a usable code stamp.
    Unstamped,
    /// The journal: episodes quarantined for another of the receiver's codes.
    Rejected,
    /// The journal: 409, a different archive is stored under the same id.
    Conflict,
    /// The journal: 413, over the receiver's size limit.
    TooLarge,
    /// The journal: an episode that cannot be packed.
    ArchiveFailed,
    /// The journal: transient failures reaching the receiver.
    Unreachable,
    /// The journal: 507, the receiver's store is full.
    StoreFull,
    /// The journal: the last reload did not load the config.
    ReloadFailed,
    /// The journal: an upload task ended without an answer.
    UploadTaskFailed,
    /// Finished episodes that can never settle: why the backlog waits.
    Unsettled,
    /// `status.json`: no success for long while episodes wait.
    NoRecentShip,
    /// The journal may not be read by this user.
    JournalDenied,
    /// Episodes waiting for over an hour.
    Backlog,
    /// The journal could not be read for another reason.
    JournalUnreadable,
    /// No line from the unit and no service manager to ask.
    JournalSilent,
    /// Under 10% free on `data_dir`.
    DiskLow,
    /// The unit runs but will not start after a reboot.
    NotEnabled,
    /// The client certificate expires within two weeks.
    CertExpiring,
    /// Episodes quarantined in the last day.
    QuarantineRecent,
    /// No `state/status.json` yet.
    StatusMissing,
    /// Old files in `outbox/`.
    OutboxStale,
    /// The journal: systemd restarted the shipper.
    Restarts,
    /// Directories without `meta.json`, idle for over a day.
    Unfinished,
    /// The unit is starting, reloading or stopping.
    Transitioning,
    /// No `journalctl` on this machine.
    NoJournalctl,
    /// Every OK row.
    Ok,
}
