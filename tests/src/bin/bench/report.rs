//! The bench's table (stdout) and JSON file.

use crate::measure::Run;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// One line of the table: a measure, its baseline, the target and the verdict.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    name: String,
    value: f64,
    baseline: Option<f64>,
    /// `value / baseline` must reach it (`higher`), or `value` must stay under it (`lower`).
    target: f64,
    higher: bool,
}

impl Row {
    /// Higher is better: `value / baseline >= min_ratio`.
    pub(crate) fn higher(name: String, value: f64, baseline: Option<f64>, min_ratio: f64) -> Self {
        Self {
            name,
            value,
            baseline,
            target: min_ratio,
            higher: true,
        }
    }

    /// A comparison without a target (labship against an older build).
    pub(crate) fn info(name: String, value: f64, baseline: f64) -> Self {
        Self {
            name,
            value,
            baseline: Some(baseline),
            target: f64::NAN,
            higher: true,
        }
    }

    /// Lower is better: `value <= max`.
    pub(crate) fn lower(name: String, value: f64, max: f64) -> Self {
        Self {
            name,
            value,
            baseline: None,
            target: max,
            higher: false,
        }
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline.map(|b| self.value / b)
    }

    fn met(&self) -> bool {
        if self.target.is_nan() {
            true
        } else if self.higher {
            self.ratio().is_some_and(|r| r >= self.target)
        } else {
            self.value <= self.target
        }
    }

    fn target_text(&self) -> String {
        if self.target.is_nan() {
            "-".into()
        } else if self.higher {
            format!(">= {:.2}x", self.target)
        } else {
            format!("<= {}", self.target)
        }
    }
}

#[derive(Debug)]
pub(crate) struct Report {
    size: &'static str,
    rows: Vec<Row>,
    notes: Vec<String>,
    raw: serde_json::Map<String, Value>,
    elapsed: Duration,
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "kernel": kernel.trim(),
        "mem_gib": mem_kb / (1 << 20),
    })
}

impl Report {
    pub(crate) fn new(size: &'static str) -> Self {
        Self {
            size,
            rows: vec![],
            notes: vec![],
            raw: Default::default(),
            elapsed: Duration::ZERO,
        }
    }

    pub(crate) fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub(crate) fn elapsed(&mut self, d: Duration) {
        self.elapsed = d;
    }

    /// Every measured run of a scenario, for the JSON file.
    pub(crate) fn raw(&mut self, scenario: &str, kinds: &[(&str, &[Run])], input_bytes: u64) {
        let mut m = serde_json::Map::new();
        for (kind, runs) in kinds {
            let list: Vec<Value> = runs
                .iter()
                .map(|r| {
                    json!({
                        "wall_s": r.wall.as_secs_f64(),
                        "cpu_s": r.cpu.as_secs_f64(),
                        "peak_rss_mib": r.peak_rss as f64 / (1 << 20) as f64,
                        "receiver_cpu_s": r.receiver_cpu.map(|d| d.as_secs_f64()),
                    })
                })
                .collect();
            m.insert((*kind).to_owned(), Value::Array(list));
        }
        m.insert("input_bytes".into(), input_bytes.into());
        self.raw.insert(scenario.to_owned(), Value::Object(m));
    }

    pub(crate) fn all_met(&self) -> bool {
        self.rows.iter().all(Row::met)
    }

    pub(crate) fn print(&self) {
        let w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(10);
        println!(
            "\n{:<w$}  {:>10}  {:>10}  {:>7}  {:>9}  result",
            format!("labship bench ({} size)", self.size),
            "labship",
            "baseline",
            "ratio",
            "target"
        );
        for r in &self.rows {
            println!(
                "{:<w$}  {:>10.2}  {:>10}  {:>7}  {:>9}  {}",
                r.name,
                r.value,
                r.baseline.map_or("-".into(), |b| format!("{b:.2}")),
                r.ratio().map_or("-".into(), |x| format!("{x:.2}x")),
                r.target_text(),
                if r.target.is_nan() {
                    "info"
                } else if r.met() {
                    "PASS"
                } else {
                    "MISS"
                }
            );
        }
        for n in &self.notes {
            println!("  {n}");
        }
        println!("  ({:.0} s in all)", self.elapsed.as_secs_f64());
    }

    pub(crate) fn write_json(&self, path: &Path) {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "measure": r.name,
                    "labship": r.value,
                    "baseline": r.baseline,
                    "ratio": r.ratio(),
                    "target": r.target_text(),
                    "met": r.met(),
                })
            })
            .collect();
        let doc = json!({
            "size": self.size,
            "machine": machine(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "rows": rows,
            "notes": self.notes,
            "runs": self.raw,
        });
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        match std::fs::write(path, text) {
            Ok(()) => println!("  JSON: {}", path.display()),
            Err(e) => eprintln!("bench: cannot write {}: {e}", path.display()),
        }
    }
}
