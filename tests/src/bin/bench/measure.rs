//! Measuring one child process: wall time, CPU time and peak RSS.
//!
//! CPU comes from `/proc/<pid>/stat` read after the child exited but before
//! it is reaped (`waitid(WEXITED | WNOWAIT)`): the zombie's `utime + stime`
//! cover all its threads, and `cutime + cstime` the children it waited for
//! (the script's tar, zstd and curl). Peak RSS is `VmHWM` from
//! `/proc/<pid>/status`, polled every few milliseconds while the child runs
//! (a zombie has no memory map left to report; `VmHWM` only grows, so the
//! last poll is the peak up to within one interval). The workspace forbids
//! `unsafe`, so `wait4`'s rusage is not an option.

use crate::Bench;
use labship_tests::process::Receiver;
use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Linux reports times in `/proc` in USER_HZ, fixed at 100 by the ABI.
const TICKS_PER_S: u64 = 100;

/// What one run of a command cost.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) wall: Duration,
    /// User + system time of the process and the children it reaped.
    pub(crate) cpu: Duration,
    /// Peak resident set of the process itself (bytes).
    pub(crate) peak_rss: u64,
    pub(crate) status: ExitStatus,
    pub(crate) log: String,
    /// CPU the receiver spent meanwhile, when the caller measured it.
    pub(crate) receiver_cpu: Option<Duration>,
    /// The host a shipper run shipped as, when the caller set it.
    pub(crate) host: Option<String>,
}

/// `VmHWM` of `pid` in bytes, while it runs.
pub(crate) fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `utime + stime (+ cutime + cstime)` of `pid`.
pub(crate) fn cpu_time(pid: u32, children: bool) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    let mut ticks = f.get(11)? + f.get(12)?;
    if children {
        ticks += f.get(13)? + f.get(14)?;
    }
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_S))
}

/// Runs `cmd` to completion with its output in `log`, measuring it.
pub(crate) fn run(cmd: &mut Command, log: &Path) -> Run {
    let out = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let raw = Pid::from_raw(pid as i32).expect("child pid");
    let mut peak = 0;
    loop {
        if let Some(h) = vm_hwm(pid) {
            peak = peak.max(h);
        }
        let exited = waitid(
            WaitId::Pid(raw),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG,
        )
        .expect("waitid");
        if exited.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = started.elapsed();
    let cpu = cpu_time(pid, true).unwrap_or_default();
    let status = child.wait().expect("wait");
    Run {
        wall,
        cpu,
        peak_rss: peak,
        status,
        log: std::fs::read_to_string(log).unwrap_or_default(),
        receiver_cpu: None,
        host: None,
    }
}

/// The floor of the receiver's work on the archives `r` stored for `host`,
/// each part measured in this run.
pub(crate) struct Floor {
    /// `zstd -dc` and `openssl dgst -sha256` over them (CPU): decoding and
    /// hashing, the floor the issue names.
    pub(crate) decode: Duration,
    /// Reading them and writing them to one file, then fsyncing it (CPU of
    /// `bench --floor-store`: [`store_files`]): the bytes' way onto disk.
    pub(crate) store: Duration,
    /// AES-256-GCM over their bytes, estimated at `openssl speed`'s encrypt
    /// rate: the receiver decrypts every byte (the TLS 1.3 suite rustls picks
    /// first). Zero when `openssl speed` gave no rate (the bench says so).
    pub(crate) tls: Duration,
    /// The archives' bytes.
    pub(crate) bytes: u64,
}

impl Floor {
    /// Decoding, hashing, storing and decrypting: the work no receiver can
    /// skip.
    pub(crate) fn all(&self) -> Duration {
        self.decode + self.store + self.tls
    }
}

pub(crate) fn floor(b: &Bench, r: &Receiver, host: &str) -> Floor {
    let files: Vec<PathBuf> = r
        .stored(host)
        .iter()
        .filter(|n| n.ends_with(".tar.zst"))
        .map(|n| r.store.join(host).join(n))
        .collect();
    let bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("archive").len())
        .sum();
    let decode = script(
        b,
        "floor-decode",
        "zstd -q -dc \"$@\" >/dev/null; openssl dgst -sha256 \"$@\" >/dev/null",
        &files,
    );
    let out = b.env.path().join("floor-store.bin");
    let mut cmd = Command::new(std::env::current_exe().expect("the bench's own path"));
    cmd.arg(FLOOR_STORE).arg(&out).args(&files);
    let run = run(&mut cmd, &b.log("floor-store"));
    assert!(
        run.status.success(),
        "bench {FLOOR_STORE} failed:\n{}",
        run.log
    );
    let store = run.cpu;
    let _ = std::fs::remove_file(&out);
    Floor {
        decode,
        store,
        tls: aes_gcm_rate(b).map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(bytes as f64 / rate)
        }),
        bytes,
    }
}

/// `bench --floor-store OUT FILE...`: the floor's storing part in a child
/// process of its own (one process: a `dd` per archive would add an exec per
/// archive, and `cat` copies in the kernel with `copy_file_range`).
pub(crate) const FLOOR_STORE: &str = "--floor-store";

/// Reads `files` through a 256 KiB buffer (as the receiver's scratch writes
/// go) into a new file `out`, and fsyncs it.
pub(crate) fn store_files(out: &Path, files: &[PathBuf]) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut to = std::fs::File::create(out)?;
    let mut buf = vec![0u8; 256 * 1024];
    for f in files {
        let mut from = std::fs::File::open(f)?;
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            to.write_all(&buf[..n])?;
        }
    }
    to.sync_all()
}

/// CPU of `bash -c "set -e; {body}"` over `files`.
fn script(b: &Bench, name: &str, body: &str, files: &[PathBuf]) -> Duration {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!("set -e; {body}"))
        .arg(name)
        .args(files);
    let run = run(&mut cmd, &b.log(name));
    assert!(run.status.success(), "{name} failed:\n{}", run.log);
    run.cpu
}

/// AES-256-GCM bytes per second on 16 KiB records (a TLS record's size),
/// from `openssl speed -mr` (`+F:<n>:AES-256-GCM:<bytes per s>`); `None`,
/// said on stderr, when its output has no such line.
fn aes_gcm_rate(b: &Bench) -> Option<f64> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "speed",
        "-mr",
        "-evp",
        "aes-256-gcm",
        "-bytes",
        "16384",
        "-seconds",
        "1",
    ]);
    let run = run(&mut cmd, &b.log("floor-aes"));
    let rate = run
        .log
        .lines()
        .find_map(|l| l.strip_prefix("+F:")?.rsplit(':').next()?.parse().ok())
        .filter(|rate: &f64| *rate > 0.0);
    if rate.is_none() {
        eprintln!(
            "bench: no AES-256-GCM rate in openssl speed's output; the floor leaves decryption out:\n{}",
            run.log
        );
    }
    rate
}
