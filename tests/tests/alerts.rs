//! The alert rules and the dashboard (CONTRACT §11), held against their
//! peers: `promtool check rules` and `promtool test rules` (Debian package
//! `prometheus`) on `etc/prometheus/`, and every PromQL expression of
//! `etc/grafana/labship.json` against the metric names labship exports
//! (the contract's and `receiver/src/metrics.rs`'s), so a renamed metric
//! cannot leave an empty panel or a rule that never fires.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every metric name a rule or a panel may use: CONTRACT §11, the
/// receiver's registry (`receiver/src/metrics.rs`; counters end in
/// `_total`, histograms export `_bucket`, `_sum`, `_count`) and the
/// scrapes around them (`up`, blackbox `probe_success`, node_exporter's
/// filesystem).
const KNOWN: &[&str] = &[
    // CONTRACT §11, both sides
    "labship_build_info",
    // CONTRACT §11, receiver
    "labship_uploads_total",
    "labship_upload_bytes_total",
    "labship_host_last_stored_timestamp_seconds",
    "labship_host_client_cert_expiry_timestamp_seconds",
    "labship_host_shipper_info",
    "labship_tls_handshake_failures_total",
    "labship_gate_commits",
    "labship_gate_reload_failures_total",
    "labship_server_cert_expiry_timestamp_seconds",
    "labship_partial_uploads",
    // CONTRACT §11, shipper
    "labship_shipper_episodes_total",
    "labship_shipper_upload_bytes_total",
    "labship_shipper_backlog_episodes",
    "labship_shipper_backlog_bytes",
    "labship_shipper_oldest_pending_age_seconds",
    "labship_shipper_last_success_timestamp_seconds",
    "labship_shipper_quarantined_episodes",
    // shipper/src/metrics.rs
    "labship_shipper_upload_failures_total",
    "labship_shipper_settling_episodes",
    // receiver/src/metrics.rs
    "labship_requests_total",
    "labship_received_bytes_total",
    "labship_upload_duration_seconds_bucket",
    "labship_upload_duration_seconds_sum",
    "labship_upload_duration_seconds_count",
    "labship_uploads_in_flight",
    "labship_storage_errors_total",
    "labship_connections_open",
    "labship_connections_refused_total",
    "labship_store_operation_duration_seconds_bucket",
    "labship_store_operation_duration_seconds_sum",
    "labship_store_operation_duration_seconds_count",
    "labship_store_operation_errors_total",
    // around labship
    "up",
    "probe_success",
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
];

/// PromQL words that are neither metrics nor functions: operators, and
/// aggregations (written `sum by (l) (x)` as often as `sum(x)`).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/prometheus")
}

const RULES: &str = "labship-alerts.yml";
const RULE_TESTS: &str = "labship-alerts.test.yml";

/// `promtool ARGS` in `etc/prometheus/`; `None` when promtool is missing
/// (a skip, or a failure under `LABSHIP_NO_SKIP=1`).
fn promtool(test: &str, args: &[&str]) -> Option<String> {
    let exe = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    let out = match Command::new(&exe)
        .args(args)
        .current_dir(prometheus_dir())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            labship_tests::skip(
                test,
                "promtool not found (Debian package prometheus; scripts/lib/test-deps.sh installs it)",
            );
            return None;
        }
        Err(e) => panic!("cannot run {exe:?}: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    Some(text)
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let test = "promtool_checks_the_rules_and_runs_their_unit_tests";
    let Some(checked) = promtool(test, &["check", "rules", RULES]) else {
        return;
    };
    let n = alerts().len();
    assert!(
        checked.contains(&format!("SUCCESS: {n} rules found")),
        "promtool saw another number of rules than the {n} alerts in {RULES}:\n{checked}"
    );
    let tested = promtool(test, &["test", "rules", RULE_TESTS]).unwrap();
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// One alert rule as written in the rules file: its name and its lines.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(prometheus_dir().join(RULES)).unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            out.push((name.trim().to_owned(), String::new()));
        } else if line.trim_start().starts_with("- name:") {
            // A new group ends the last rule.
            out.push((String::new(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out.retain(|(name, _)| !name.is_empty());
    out
}

/// Each rule says how bad it is and what to do, naming where and how: a
/// severity, a summary and a description with a `{{ $labels... }}` and a
/// command in backticks.
#[test]
fn every_rule_has_severity_summary_and_a_first_command() {
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for (name, body) in &alerts {
        let severity = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .map(str::trim);
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity {severity:?}"
        );
        assert!(body.contains("summary:"), "{name}: no summary");
        let description = body
            .split("description:")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: no description"));
        assert!(
            description.contains("{{ $labels."),
            "{name}: the description names no host or receiver"
        );
        assert!(
            description.matches('`').count() >= 2,
            "{name}: the description gives no command to run first"
        );
    }
}

/// Every rule is unit-tested both ways: a case where it fires and one
/// (at its boundary) where it does not.
#[test]
fn every_rule_has_a_firing_and_a_quiet_unit_test() {
    let text = std::fs::read_to_string(prometheus_dir().join(RULE_TESTS)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut fires = std::collections::BTreeSet::new();
    let mut quiet = std::collections::BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("alertname:") else {
            continue;
        };
        let next = lines.get(i + 1).map_or("", |l| l.trim());
        if next == "exp_alerts: []" {
            quiet.insert(name.trim().to_owned());
        } else if next == "exp_alerts:" {
            fires.insert(name.trim().to_owned());
        }
    }
    for (name, _) in alerts() {
        assert!(fires.contains(&name), "{name}: no unit test where it fires");
        assert!(
            quiet.contains(&name),
            "{name}: no unit test where it stays quiet"
        );
    }
}

/// The metric names in one PromQL expression: strings, label matchers,
/// ranges and function names removed.
fn metric_names(expr: &str) -> Vec<String> {
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' if depth_brace == 0 => in_string = !in_string,
            _ if in_string => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
        if c == '{' || c == '[' {
            cleaned.push(' ');
        }
    }
    let mut names = Vec::new();
    let chars: Vec<char> = cleaned.chars().collect();
    let mut i = 0;
    // Words after by/without/on/ignoring in parentheses are label names.
    let mut label_list = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let rest = chars[i..].iter().collect::<String>();
            let is_call = rest.trim_start().starts_with('(');
            if KEYWORDS.contains(&word.as_str()) {
                label_list = is_call
                    && matches!(
                        word.as_str(),
                        "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    );
            } else if !is_call && !label_list {
                names.push(word);
            }
        } else {
            if c == ')' {
                label_list = false;
            }
            // A number (1e3, 0.05) is not a name.
            if c.is_ascii_digit() {
                while i + 1 < chars.len() && (chars[i + 1].is_ascii_alphanumeric()) {
                    i += 1;
                }
            }
            i += 1;
        }
    }
    names
}

#[test]
fn the_expression_reader_finds_metrics_and_only_metrics() {
    assert_eq!(
        metric_names(
            r#"sum by (instance, status) (rate(labship_requests_total{status=~"5..",route="a b"}[10m])) / on (instance) group_left up > 1e3"#
        ),
        ["labship_requests_total", "up"]
    );
    assert_eq!(
        metric_names("(time() - labship_shipper_last_success_timestamp_seconds) / 3600"),
        ["labship_shipper_last_success_timestamp_seconds"]
    );
}

/// The dashboard imports into Grafana (a `${DS_PROMETHEUS}` input, schema
/// 39), and each panel queries only metrics labship (or its scrapes) export.
#[test]
fn dashboard_panels_query_only_known_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/grafana/labship.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(doc["schemaVersion"], 39);
    assert_eq!(doc["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = doc["panels"].as_array().unwrap();
    let mut used = std::collections::BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} queries no metric");
            for n in names {
                assert!(
                    KNOWN.contains(&n.as_str()),
                    "{title}: {expr} uses {n}, which labship does not export (CONTRACT §11, receiver/src/metrics.rs)"
                );
                used.insert(n);
            }
        }
    }
    // The panels an operator opens first (issue 19).
    for must in [
        "labship_shipper_backlog_episodes",
        "labship_shipper_last_success_timestamp_seconds",
        "labship_uploads_total",
        "labship_upload_bytes_total",
        "labship_host_client_cert_expiry_timestamp_seconds",
        "labship_server_cert_expiry_timestamp_seconds",
        "labship_shipper_quarantined_episodes",
        "probe_success",
    ] {
        assert!(used.contains(must), "no panel shows {must}");
    }
}

/// The rules' expressions, too, use only names labship exports.
#[test]
fn rules_query_only_known_metrics() {
    for (name, body) in alerts() {
        // `expr:` up to the next key (`for:`, `labels:`), folded lines joined.
        let expr = body
            .split("expr:")
            .nth(1)
            .unwrap()
            .split("\n        for:")
            .next()
            .unwrap()
            .split("\n        labels:")
            .next()
            .unwrap()
            .replace(">-", "");
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{name}: {expr}");
        for n in names {
            assert!(KNOWN.contains(&n.as_str()), "{name}: {expr} uses {n}");
        }
    }
}
