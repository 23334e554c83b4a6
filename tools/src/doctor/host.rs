//! The host checks: the unit's state (when a systemd manager runs), the
//! shipper's config (its own loader), the client certificate's expiry, a
//! ping of the receiver (the shipper's own) and free space on `data_dir`;
//! then, with the config loaded, the queue's directories (doctor/queue.rs).

use super::{Finding, Fix, Level, Options, Rank, UNIT, age};
use labship_shipper::config::{Config, ConfigError};
use labship_shipper::disk::Layout;
use labship_shipper::upload::{PingVerdict, Uploader};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Client certificates expiring sooner than this are a warning.
const CERT_WARN: Duration = Duration::from_secs(14 * 86_400);

/// The unit as the service manager sees it.
#[derive(Debug, Clone)]
pub struct Service {
    /// `None` when the state says nothing about running (not installed).
    pub running: Option<bool>,
    pub finding: Finding,
}

/// `systemctl show` of the unit; `None` when no systemd manager runs here.
pub fn service() -> Option<Service> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let out = std::process::Command::new("systemctl")
        .args([
            "show",
            UNIT,
            "--no-pager",
            "-p",
            "LoadState,ActiveState,SubState,Result,NRestarts,UnitFileState",
        ])
        .output()
        .ok()?;
    Some(verdict(&String::from_utf8_lossy(&out.stdout)))
}

/// The unit's state, from `systemctl show`'s `Key=value` lines.
fn verdict(text: &str) -> Service {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("")
            .to_owned()
    };
    let (load, active, sub, result, restarts, enabled) = (
        get("LoadState"),
        get("ActiveState"),
        get("SubState"),
        get("Result"),
        get("NRestarts"),
        get("UnitFileState"),
    );
    let state = format!("{active} ({sub})");
    let s = |running, level, finding: String, fix: Option<Fix>, rank| Service {
        running,
        finding: Finding::new(level, "service", finding, fix, rank).with_details(
            serde_json::json!({"load": load, "active": active, "sub": sub, "result": result,
                "restarts": restarts, "enabled": enabled}),
        ),
    };
    match (load.as_str(), active.as_str()) {
        ("not-found", _) => s(
            Some(false),
            Level::Fail,
            format!("{UNIT} is not installed"),
            Some(Fix::restart(
                "cd /opt/labship && sudo ./scripts/install-lab-host.sh",
            )),
            Rank::ServiceMissing,
        ),
        (_, "active") if enabled != "enabled" && enabled != "static" => s(
            Some(true),
            Level::Warn,
            format!("{UNIT} {state} but {enabled}: it will not start after a reboot"),
            Some(Fix::safe(format!("sudo systemctl enable {UNIT}"))),
            Rank::NotEnabled,
        ),
        (_, "active") => s(
            Some(true),
            Level::Ok,
            format!("{UNIT} {state}, {restarts} restart(s), {enabled}"),
            None,
            Rank::Ok,
        ),
        (_, "failed") => s(
            Some(false),
            Level::Fail,
            format!("{UNIT} has failed (result: {result}); see the journal findings for why"),
            Some(Fix::restart(format!("sudo systemctl restart {UNIT}"))),
            Rank::ServiceFailed,
        ),
        (_, "activating") if sub == "auto-restart" => s(
            Some(false),
            Level::Fail,
            format!(
                "{UNIT} keeps failing and restarting ({restarts} restart(s), result: {result})"
            ),
            Some(Fix::safe(format!("journalctl -u {UNIT} -n 30 --no-pager"))),
            Rank::RestartLoop,
        ),
        (_, "activating" | "reloading" | "deactivating") => s(
            Some(true),
            Level::Warn,
            format!("{UNIT} is {state}"),
            None,
            Rank::Transitioning,
        ),
        _ => s(
            Some(false),
            Level::Fail,
            format!("{UNIT} is not running ({state}, {enabled})"),
            Some(Fix::safe(format!("sudo systemctl enable --now {UNIT}"))),
            Rank::ServiceStopped,
        ),
    }
}

/// Every check that needs the config (loaded once by the caller).
pub async fn check(
    opts: &Options,
    loaded: &Result<Config, ConfigError>,
    running: Option<bool>,
) -> Vec<Finding> {
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            let denied = std::fs::File::open(&opts.config)
                .is_err_and(|m| m.kind() == std::io::ErrorKind::PermissionDenied);
            let fix = if e.key.is_empty() && denied {
                // Not missing: this user may not read it (/etc/labship is
                // root:labship 0750). The installer would change nothing.
                let doctor = std::env::current_exe().map_or_else(
                    |_| "/opt/labship/bin/doctor".into(),
                    |p| p.display().to_string(),
                );
                Fix::safe(format!(
                    "sudo {doctor} --config {}",
                    super::unsettled::sh_quote(&opts.config)
                ))
            } else if e.key.is_empty() && !opts.config.exists() {
                Fix::restart(reinstall())
            } else {
                Fix::restart(format!(
                    "sudoedit {} && sudo systemctl restart {UNIT}",
                    opts.config.display()
                ))
            };
            return vec![Finding::new(
                Level::Fail,
                "config",
                format!("invalid configuration: {e}"),
                Some(fix),
                Rank::ConfigInvalid,
            )];
        }
    };
    let mut out = vec![Finding::ok(
        "config",
        format!(
            "{} valid (host {}, receiver {})",
            opts.config.display(),
            config.host_id,
            config.url
        ),
    )];
    out.extend(service_reads(
        &opts.config,
        config,
        &super::unsettled::Reader::shipper(),
    ));
    out.extend(certificate(config, opts.now));
    if opts.no_ping {
        out.push(Finding::ok("receiver", "ping skipped (--no-ping)"));
    } else {
        out.push(ping(config).await);
    }
    out.extend(disk(config));
    out.extend(super::queue::check(config, opts.now, running));
    out
}

/// The files the shipper reads at start, judged for the user it runs as
/// (the unit's `User=labship` and its groups): doctor usually runs as root,
/// who reads everything, so a key installed `0600 root:root` looked fine
/// here while the shipper exited 2 at every start. One it cannot read is
/// ranked with an invalid config, above the journal's "failed to start"
/// that is its symptom, with the fix for that file or directory.
fn service_reads(
    config_file: &Path,
    config: &Config,
    reader: &super::unsettled::Reader,
) -> Vec<Finding> {
    use std::os::unix::fs::MetadataExt as _;
    let mut files = vec![("config", config_file.to_path_buf())];
    files.extend(config.ca_file.iter().map(|f| ("certificate", f.clone())));
    if let Some((cert, key)) = &config.auth.cert_and_key {
        files.push(("certificate", cert.clone()));
        files.push(("certificate", key.clone()));
    }
    files.extend(
        config
            .auth
            .token_file
            .iter()
            .map(|f| ("certificate", f.clone())),
    );
    files
        .into_iter()
        .filter_map(|(check, file)| {
            let (at, m) = reader.blocked_at(&file)?;
            let quoted = super::unsettled::sh_quote(&at);
            let fix = if m.is_dir() && reader.gids.contains(&m.gid()) {
                format!("sudo chmod g+x {quoted}")
            } else if m.is_dir() {
                format!("sudo chmod o+x {quoted}")
            } else {
                format!("sudo chgrp labship {quoted} && sudo chmod 640 {quoted}")
            };
            let what = if m.is_dir() { "enter" } else { "read" };
            Some(Finding::new(
                Level::Fail,
                check,
                format!(
                    "the shipper runs as user {} and may not {what} {} (owner {}:{}, mode {:04o}), so it cannot read {} and exits at start",
                    reader.name,
                    at.display(),
                    m.uid(),
                    m.gid(),
                    m.mode() & 0o7777,
                    file.display()
                ),
                Some(Fix::restart(format!("{fix} && sudo systemctl restart {UNIT}"))),
                Rank::ConfigInvalid,
            ))
        })
        .collect()
}

fn certificate(config: &Config, now: SystemTime) -> Vec<Finding> {
    let Some((cert, _)) = &config.auth.cert_and_key else {
        return vec![Finding::ok(
            "certificate",
            "no client certificate (bearer token)",
        )];
    };
    let pem = match std::fs::read(cert) {
        Ok(p) => p,
        Err(e) => {
            return vec![Finding::new(
                Level::Fail,
                "certificate",
                format!("cannot read {}: {e}", cert.display()),
                Some(Fix::safe(format!(
                    "sudo chgrp labship {} && sudo chmod 640 {}",
                    cert.display(),
                    cert.display()
                ))),
                Rank::CertUnreadable,
            )];
        }
    };
    let not_after = x509_parser::pem::parse_x509_pem(&pem)
        .ok()
        .and_then(|(_, p)| {
            p.parse_x509()
                .ok()
                .map(|c| c.validity().not_after.timestamp())
        });
    let Some(not_after) = not_after else {
        return vec![Finding::new(
            Level::Fail,
            "certificate",
            format!("{} is not a PEM certificate", cert.display()),
            None,
            Rank::CertUnreadable,
        )];
    };
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let until = humantime::format_rfc3339_seconds(
        SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64),
    );
    let left = not_after - now_s;
    // The running shipper re-reads its certificate and key (shipper/src/client.rs):
    // renewing needs no restart.
    let renew = Fix::safe(format!(
        "install a renewed certificate at {} (same key path {}; a new key first, then the certificate), check it: sudo -u labship /opt/labship/bin/shipper --check-config; the running shipper picks it up within seconds by itself",
        cert.display(),
        config
            .auth
            .cert_and_key
            .as_ref()
            .map_or(String::new(), |(_, k)| k.display().to_string())
    ));
    vec![if left <= 0 {
        Finding::new(
            Level::Fail,
            "certificate",
            format!("client certificate {} expired at {until}", cert.display()),
            Some(renew.clone()),
            Rank::CertExpired,
        )
    } else if (left as u64) < CERT_WARN.as_secs() {
        Finding::new(
            Level::Warn,
            "certificate",
            format!(
                "client certificate {} expires in {} ({until})",
                cert.display(),
                age(Duration::from_secs(left as u64))
            ),
            Some(renew),
            Rank::CertExpiring,
        )
    } else {
        Finding::ok(
            "certificate",
            format!("{} valid until {until}", cert.display()),
        )
    }]
}

async fn ping(config: &Config) -> Finding {
    let uploader = match Uploader::new(config) {
        Ok(u) => u,
        Err(e) => {
            return Finding::new(
                Level::Fail,
                "receiver",
                format!("cannot set up the client: {e}"),
                Some(Fix::safe(format!("sudoedit {}", config.file.display()))),
                Rank::ClientSetup,
            );
        }
    };
    let verdict = uploader.check(config, Duration::from_secs(5)).await;
    let line = verdict.to_string();
    let recheck = Fix::safe(format!(
        "sudo -u labship /opt/labship/bin/shipper --ping --config {}",
        config.file.display()
    ));
    match verdict {
        PingVerdict::Ok { .. } => Finding::ok("receiver", line),
        PingVerdict::HostMismatch { .. }
        | PingVerdict::Refused { .. }
        | PingVerdict::TlsRefused { .. } => Finding::new(
            Level::Fail,
            "receiver",
            line,
            Some(recheck),
            Rank::PingRefused,
        ),
        PingVerdict::Unreachable { .. } => Finding::new(
            Level::Fail,
            "receiver",
            line,
            Some(recheck),
            Rank::PingFailed,
        ),
        PingVerdict::Unexpected { .. } => Finding::new(
            Level::Fail,
            "receiver",
            line,
            Some(Fix::safe(format!(
                "sudoedit {}   # receiver.url",
                config.file.display()
            ))),
            Rank::PingFailed,
        ),
    }
}

/// The installer's command on this host: the package's copy (run as its
/// postinst runs it) where the .deb installed labship (its /opt/labship
/// holds only bin/), else the checkout's.
fn reinstall() -> String {
    let packaged = "/usr/share/labship-shipper/scripts/install-lab-host.sh";
    if Path::new(packaged).is_file() && !Path::new("/opt/labship/scripts").is_dir() {
        format!("sudo {packaged} --packaged")
    } else {
        "cd /opt/labship && sudo ./scripts/install-lab-host.sh".into()
    }
}

fn disk(config: &Config) -> Vec<Finding> {
    let dir = &config.data_dir;
    let st = match rustix::fs::statvfs(dir) {
        Ok(s) => s,
        Err(e) => {
            return vec![Finding::new(
                Level::Fail,
                "disk",
                format!("cannot stat {}: {e}", dir.display()),
                Some(Fix::restart(reinstall())),
                Rank::DataDirMissing,
            )];
        }
    };
    let total = st.f_blocks.max(1);
    let pct = st.f_bavail as f64 * 100.0 / total as f64;
    let free_gib = (st.f_bavail * st.f_frsize) as f64 / (1u64 << 30) as f64;
    let finding = format!("{:.1}% free on {} ({free_gib:.1} GiB)", pct, dir.display());
    let fix = Some(Fix::deletes(format!(
        "sudo find {} -mindepth 1 -maxdepth 1 -mtime +30 -exec rm -rf {{}} +   # delivered episodes older than 30 days",
        Layout::new(dir).shipped.display()
    )));
    vec![if pct < 2.0 {
        Finding::new(Level::Fail, "disk", finding, fix, Rank::DiskFull)
    } else if pct < 10.0 {
        Finding::new(Level::Warn, "disk", finding, fix, Rank::DiskLow)
    } else {
        Finding::ok("disk", finding)
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files the shipper reads at start, judged for its own user: a
    /// key only its owner may read, a directory it may not enter, each
    /// named with its fix; readable ones say nothing.
    #[test]
    fn files_the_service_user_cannot_read_are_named_with_their_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        // Whatever the umask: only the files below are closed to it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let write = |name: &str, mode: u32| {
            let p = etc.join(name);
            std::fs::write(&p, "x").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let (key, cert, ca) = (
            write("client.key", 0o600),
            write("client.pem", 0o644),
            write("ca.pem", 0o644),
        );
        let toml = format!(
            "host_id = 'lab-01'\ndata_dir = {:?}\n[receiver]\nurl = 'https://r.example.org:8443'\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n",
            dir.path().join("data")
        );
        let file = etc.join("shipper.toml");
        std::fs::write(&file, toml).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = labship_shipper::config::Config::load(&file).unwrap();
        // Someone who owns none of these and is in none of their groups.
        let stranger = super::super::unsettled::Reader {
            name: "labship".into(),
            uid: 4_000_000,
            gids: vec![4_000_000],
            producers: false,
        };
        let rows = service_reads(&file, &config, &stranger);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].rank, Rank::ConfigInvalid);
        assert!(
            rows[0].finding.contains("may not read")
                && rows[0].finding.contains("client.key")
                && rows[0].finding.contains("mode 0600"),
            "{}",
            rows[0].finding
        );
        let fix = rows[0].fix.as_deref().unwrap();
        assert!(
            fix.starts_with("sudo chgrp labship ") && fix.contains("&& sudo chmod 640 "),
            "{fix}"
        );

        // The directory closed to it: every file behind it, each naming it.
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700)).unwrap();
        let rows = service_reads(&file, &config, &stranger);
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert!(
            rows.iter().all(|r| r.finding.contains("may not enter")
                && r.fix.as_deref().unwrap().starts_with("sudo chmod o+x ")),
            "{rows:?}"
        );
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();

        // Root, or a reader who may: nothing to say.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(service_reads(&file, &config, &stranger).is_empty());
    }

    fn show(load: &str, active: &str, sub: &str, enabled: &str) -> Service {
        verdict(&format!(
            "LoadState={load}\nActiveState={active}\nSubState={sub}\nResult=exit-code\nNRestarts=2\nUnitFileState={enabled}\n"
        ))
    }

    /// `systemctl show`'s states, as each becomes a row.
    #[test]
    fn each_unit_state_reads_as_its_row() {
        let cases = [
            (
                show("not-found", "inactive", "dead", ""),
                Some(false),
                Level::Fail,
                Rank::ServiceMissing,
            ),
            (
                show("loaded", "active", "running", "disabled"),
                Some(true),
                Level::Warn,
                Rank::NotEnabled,
            ),
            (
                show("loaded", "active", "running", "enabled"),
                Some(true),
                Level::Ok,
                Rank::Ok,
            ),
            (
                show("loaded", "active", "running", "static"),
                Some(true),
                Level::Ok,
                Rank::Ok,
            ),
            (
                show("loaded", "failed", "failed", "enabled"),
                Some(false),
                Level::Fail,
                Rank::ServiceFailed,
            ),
            (
                show("loaded", "activating", "auto-restart", "enabled"),
                Some(false),
                Level::Fail,
                Rank::RestartLoop,
            ),
            (
                show("loaded", "reloading", "running", "enabled"),
                Some(true),
                Level::Warn,
                Rank::Transitioning,
            ),
            (
                show("loaded", "inactive", "dead", "enabled"),
                Some(false),
                Level::Fail,
                Rank::ServiceStopped,
            ),
        ];
        for (s, running, level, rank) in cases {
            assert_eq!(
                (s.running, s.finding.level, s.finding.rank),
                (running, level, rank),
                "{:?}",
                s.finding
            );
        }
        let failed = show("loaded", "failed", "failed", "enabled").finding;
        assert!(failed.finding.contains("result: exit-code"), "{failed:?}");
        assert!(failed.disruptive, "a restart: {failed:?}");
        assert_eq!(failed.details["restarts"], "2");
    }
}
