//! The report for people (aligned rows, colored only on a terminal) and for
//! agents (`--json`: one document).

use super::{Level, Report};
use std::fmt::Write as _;

/// The human report: the headline, then `LEVEL  check  finding  [fix: …]`.
pub fn human(r: &Report, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", r.headline);
    let width = r.findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    for f in &r.findings {
        let level = f.level.as_str();
        let level = if color {
            let code = match f.level {
                Level::Ok => "32",
                Level::Warn => "33",
                Level::Fail => "31;1",
            };
            format!("\x1b[{code}m{level:<4}\x1b[0m")
        } else {
            format!("{level:<4}")
        };
        let _ = write!(out, "{level}  {:<width$}  {}", f.check, f.finding);
        if let Some(fix) = &f.fix {
            let _ = write!(out, "  fix: {fix}");
        }
        out.push('\n');
    }
    out
}

/// The `--json` document.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::super::{Finding, Fix, Level, Rank, Report};
    use super::*;

    #[test]
    fn rows_align_and_color_only_when_asked() {
        let r = Report::new(vec![
            Finding::ok("config", "fine"),
            Finding::new(
                Level::Warn,
                "disk",
                "9% free",
                Some(Fix::deletes("prune")),
                Rank::DiskLow,
            ),
        ]);
        assert_eq!(
            human(&r, false),
            "WARN 9% free — fix: prune\nWARN  disk    9% free  fix: prune\nOK    config  fine\n"
        );
        assert!(human(&r, true).contains("\x1b[33mWARN\x1b[0m"));
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["findings"][0]["fix"], "prune");
        assert_eq!(v["findings"][0]["disruptive"], true);
        assert_eq!(v["findings"][1]["disruptive"], false);
        assert_eq!(v["status"], "warn");
    }
}
