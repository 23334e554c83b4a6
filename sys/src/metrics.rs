//! The `/metrics` exposition both daemons serve: a prometheus_client
//! registry encoded in the format the scraper asks for, with the
//! Content-Type of that format. OpenMetrics text (what prometheus_client
//! writes) when the `Accept` header names `application/openmetrics-text`, as
//! Prometheus does; otherwise the classic text format 0.0.4 that older tools
//! and `promtool check metrics` read.

use prometheus_client::registry::Registry;
use std::collections::HashMap;

/// The Content-Type of OpenMetrics text 1.0.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Content-Type of the classic Prometheus text format 0.0.4.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `registry` as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// `registry` in the format `accept` (the request's `Accept` header, all
/// its values) asks for: (Content-Type, body).
pub fn encode_for(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let text = encode(registry);
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (OPENMETRICS, text)
    } else {
        (CLASSIC, classic(&text))
    }
}

/// OpenMetrics text as the classic Prometheus text format 0.0.4: counters
/// are named with their `_total` in HELP and TYPE, `_created` samples,
/// `# UNIT` and `# EOF` go, `info` becomes a gauge named `_info` and
/// `unknown` is `untyped`.
pub fn classic(openmetrics: &str) -> String {
    let kinds: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let renamed = |name: &str| match kinds.get(name) {
        Some(&"counter") => format!("{name}_total"),
        Some(&"info") => format!("{name}_info"),
        _ => name.to_owned(),
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "info" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else if line.starts_with('#') {
            // # UNIT, # EOF: not in the classic format.
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let created = name
                .strip_suffix("_created")
                .is_some_and(|base| kinds.get(base) == Some(&"counter"));
            // (No exemplars are recorded, so none need stripping.)
            if !created {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total_and_drops_what_it_lacks() {
        let om = "# HELP labship_uploads PUT answers.\n# TYPE labship_uploads counter\n\
                  labship_uploads_total{status=\"201\",error=\"\"} 2\n\
                  labship_uploads_created{status=\"201\",error=\"\"} 1.5\n\
                  # HELP labship_up Up.\n# TYPE labship_up gauge\n# UNIT labship_up seconds\nlabship_up 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP labship_uploads_total PUT answers.\n# TYPE labship_uploads_total counter\n\
             labship_uploads_total{status=\"201\",error=\"\"} 2\n\
             # HELP labship_up Up.\n# TYPE labship_up gauge\nlabship_up 1\n"
        );
    }

    #[test]
    fn the_format_follows_the_accept_header() {
        let mut r = Registry::with_prefix("labship");
        r.register(
            "things",
            "Things",
            prometheus_client::metrics::counter::Counter::<u64>::default(),
        );
        let (ct, om) = encode_for(
            &r,
            Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        );
        assert_eq!(ct, OPENMETRICS);
        assert!(om.ends_with("# EOF\n"), "{om}");
        let (ct, text) = encode_for(&r, None);
        assert_eq!(ct, CLASSIC);
        assert!(
            text.contains("# TYPE labship_things_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }
}
