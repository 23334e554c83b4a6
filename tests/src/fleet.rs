//! What the receiver's fleet suites (`receiver_fleet`, `receiver_readyz`,
//! `receiver_rotation`, `receiver_journald`) share: archives and PUTs with a
//! chosen `User-Agent`, raw GETs on the ops listener, reading samples out of
//! an exposition, `promtool check metrics`, SIGHUP with a file replaced.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed unwrap is a failed test"
)]

use crate::GOOD_COMMIT;
use crate::episode::{RawTar, digest_header, noise};
use crate::process::Receiver;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const HOST: &str = "lab-01";
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn archive(id: &str, random: usize) -> Vec<u8> {
    RawTar::new()
        .dir(&format!("{id}/"))
        .file(&format!("{id}/data"), &noise(random, id.len() as u64))
        .meta(id, GOOD_COMMIT)
        .finish_zst()
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Unix seconds of an RFC 3339 time.
pub fn unix(rfc3339: &str) -> f64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The calendar day `days` from now, `YYYY-MM-DD` (what [`Variant::ExpiresSoon`]
/// and [`labship_tests::pki::Pki::server_until`] put at 00:00 UTC).
pub fn day_in(days: u64) -> String {
    let t = SystemTime::now() + Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

/// PUT `body` as `host/id` stamped `commit` with `user_agent`; the status.
pub async fn put(
    c: &reqwest::Client,
    r: &Receiver,
    host: &str,
    id: &str,
    commit: &str,
    body: &[u8],
    user_agent: &str,
) -> u16 {
    c.put(format!("{}/v1/episodes/{host}/{id}", r.url))
        .header("X-Labship-Commit", commit)
        .header("Content-Digest", digest_header(body))
        .header("User-Agent", user_agent)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A GET on the ops listener with an optional `Accept`: (status,
/// Content-Type, body).
pub fn ops_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// The value of the sample `series` (name and labels exactly as exposed).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    })
}

pub fn value(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
}

/// The classic text exposition (no Accept), checking its Content-Type.
pub fn scrape(r: &Receiver) -> String {
    let (status, content_type, body) = ops_get(r.ops_addr, "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(content_type, CLASSIC);
    body
}

pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `promtool check metrics` on `text`: (success, its output).
pub fn promtool_check(text: &str) -> (bool, String) {
    let mut child = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/lib/test-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Writes `text` to `path` atomically (as an operator's `mv` would).
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Sends SIGHUP and waits for the receiver to log `needle` once more.
pub async fn sighup(r: &Receiver, needle: &str) {
    let before = r.log_text().matches(needle).count();
    r.signal(1);
    wait_until(needle, Duration::from_secs(10), || {
        r.log_text().matches(needle).count() > before
    })
    .await;
}
