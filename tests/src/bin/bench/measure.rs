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

use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
use std::path::Path;
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
    }
}
