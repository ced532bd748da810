//! The monitoring kit in `ops/` against the real service: the real `/metrics` scrape passes
//! `promtool check metrics`, the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), and every PromQL expression in `ops/` (alert rules and the Grafana
//! dashboard) names only metrics the running service exports (a renamed metric would otherwise
//! leave an alert or a panel silently empty).
//!
//! promtool comes from Debian's `prometheus` package; `scripts/setup.sh` puts it in the cache's
//! `bin/` (on PATH through `scripts/env.sh`).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::*;
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ops(rel: &str) -> PathBuf {
    repo().join("ops").join(rel)
}

/// Runs promtool with `args` (and `stdin`, if any); returns its output.
fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("promtool");
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("running {cmd:?}: {e}\npromtool is missing: run scripts/setup.sh (or put Debian's promtool on PATH)")
    });
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn shown(what: &str, out: &Output) -> String {
    format!(
        "{what} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A ready server that has answered one allowed and one denied check (so the check route's
/// series and the decision counters carry samples, as in production).
fn busy_server(dir: &Path) -> Server {
    let s = Server::start(&dir.join("data"));
    s.wait_ready();
    let c = s.client();
    let root = s.admin_token();
    let ws = c.post("/v1/workspaces", &root, json!({ "name": "ops" })).created("workspace")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": ["admin"] })).created("key")
        ["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let az = c.post("/v1/authorizations", &key, json!({ "subject": "u", "scopes": ["mail.read"] })).created("grant")
        ["authorization"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for scope in ["mail.read", "mail.send"] {
        let r = c.post("/v1/check", &key, json!({ "authorization_id": az, "scopes": [scope] }));
        assert_eq!(r.status, 200, "check {scope}: {}\n{}", r.text(), s.diagnostics());
    }
    s
}

/// GET /metrics, asserting 200.
fn scrape(s: &Server) -> String {
    let r = s.client().get("/metrics", None);
    assert_eq!(r.status, 200, "/metrics: {}\n{}", r.text(), s.diagnostics());
    r.text()
}

/// Sample names of a text exposition (`allowly_x_bucket`, `allowly_x_count`, ...).
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_real_metrics_scrape_passes_promtool_check_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let s = busy_server(dir.path());
    let text = scrape(&s);
    // Guard against checking an empty or truncated page: every registry must be there, with
    // labelled counters present at zero before their first event.
    for name in [
        "allowly_http_requests_total{",
        "allowly_engine_decisions_total{",
        "allowly_signer_fork_attempts_total",
        "allowly_build_info{version=\"",
        "allowly_http_requests_total{route=\"check\",status=\"503\"} 0",
        "process_resident_memory_bytes ",
        "allowly_webhook_attempts_total{result=\"timeout\"} 0",
        "allowly_webhook_store_errors_total{step=\"scan\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    let out = promtool(&["check", "metrics"], Some(&text));
    // promtool exits 0 only when the page parses and has no lint problems (3 = lint problems).
    assert!(out.status.success(), "{}\n--- /metrics ---\n{text}", shown("promtool check metrics", &out));
}

#[test]
fn alert_rules_and_scrape_config_pass_promtool_and_their_unit_tests() {
    let rules = ops("prometheus/rules.yml");
    let config = ops("prometheus/prometheus.yml");
    for args in [vec!["check", "rules", rules.to_str().unwrap()], vec!["check", "config", config.to_str().unwrap()]] {
        let out = promtool(&args, None);
        assert!(out.status.success(), "{}", shown(&format!("promtool {}", args.join(" ")), &out));
    }
    let tests = test_files();
    let mut args = vec!["test".to_owned(), "rules".to_owned()];
    args.extend(tests.iter().map(|p| p.to_str().unwrap().to_owned()));
    let out = promtool(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(out.status.success(), "{}", shown("promtool test rules", &out));

    // Each alert has a test that expects it to fire (exp_labels) and one that expects silence
    // (exp_alerts: []), and a runbook entry whose anchor its runbook_url names.
    let tests_text: String = tests.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    let runbook = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let rules_text = std::fs::read_to_string(&rules).unwrap();
    let alerts: Vec<&str> = rules_text.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 12, "expected the whole rule set, found {alerts:?}");
    for alert in alerts {
        let blocks: Vec<&str> = tests_text.split("alertname: ").skip(1).filter(|b| b.starts_with(alert)).collect();
        let fires = blocks.iter().any(|b| b.split("eval_time").next().unwrap().contains("exp_labels"));
        let quiet = blocks.iter().any(|b| b.split("eval_time").next().unwrap().contains("exp_alerts: []"));
        assert!(fires && quiet, "{alert}: needs a test where it fires and one where it stays quiet");
        let anchor = alert.to_lowercase();
        assert!(rules_text.contains(&format!("#{anchor}\n")), "{alert}: runbook_url should end in #{anchor}");
        assert!(runbook.contains(&format!("### {alert}\n")), "{alert}: no `### {alert}` runbook in docs/operations.md");
    }
}

fn test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(ops("prometheus/tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule tests in ops/prometheus/tests");
    files
}

#[test]
fn every_expression_in_ops_names_only_metrics_the_service_exports() {
    let dir = tempfile::tempdir().unwrap();
    let s = busy_server(dir.path());
    let exported = exported_names(&scrape(&s));

    let rules_text = std::fs::read_to_string(ops("prometheus/rules.yml")).unwrap();
    let exprs = rule_exprs(&rules_text);
    assert!(exprs.len() >= 20, "parsed too few expressions from rules.yml: {exprs:?}");
    // Recording rules are names too (`job:...`), defined by the rules themselves.
    let recorded: BTreeSet<String> =
        rules_text.lines().filter_map(|l| l.trim().strip_prefix("- record: ")).map(str::to_owned).collect();

    let mut unknown = Vec::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            // `up` is written by Prometheus itself for every scrape.
            if !(exported.contains(&name) || recorded.contains(&name) || name == "up") {
                unknown.push(format!("{name} (in `{}`)", expr.trim()));
            }
        }
    }
    // The dashboard: every `expr` of every panel target.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ops("grafana/dashboards/allowly.json")).unwrap()).unwrap();
    let mut panel_exprs = Vec::new();
    collect_exprs(&dashboard, &mut panel_exprs);
    assert!(panel_exprs.len() >= 30, "parsed too few expressions from the dashboard: {panel_exprs:?}");
    for expr in &panel_exprs {
        for name in metric_names(expr) {
            if !(exported.contains(&name) || recorded.contains(&name)) {
                unknown.push(format!("{name} (in dashboard `{expr}`)"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "names the service does not export:\n{}\n--- exported ---\n{exported:#?}",
        unknown.join("\n")
    );
}

/// Every string under an `expr` key, anywhere in a Grafana dashboard.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `expr:` of every rule: inline, or a `|` block (the lines indented deeper than `expr:`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let key = line.trim_start();
        let Some(rest) = key.strip_prefix("- ").unwrap_or(key).strip_prefix("expr:") else { continue };
        let indent = line.len() - line.trim_start().len();
        let rest = rest.trim();
        if rest == "|" {
            let body: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            out.push(body.join("\n"));
        } else {
            out.push(rest.to_owned());
        }
    }
    out
}

/// Metric names a PromQL expression selects: identifiers outside strings, label matchers
/// (`{...}`), ranges (`[...]`) and grouping clauses (`by (...)` and the like), that are neither
/// functions (followed by `(`) nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // Not always followed by `(`: `sum without (x) (...)`.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    // 1. Blank out strings, matchers and ranges (keeping the rest in place).
    let mut plain = String::with_capacity(expr.len());
    let (mut depth, mut quote) = (0usize, None::<char>);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth = depth.saturating_sub(1),
            (None, c) if depth == 0 => {
                plain.push(c);
                continue;
            }
            _ => {}
        }
        plain.push(' ');
    }
    // 2. Tokenise; drop functions, keywords, numbers and the label lists of grouping clauses.
    let mut names = BTreeSet::new();
    let chars: Vec<char> = plain.chars().collect();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if GROUPING.contains(&word.as_str()) {
                skip_group = true;
            } else if next == Some(&'(')
                || KEYWORDS.contains(&word.to_lowercase().as_str())
                || AGGREGATIONS.contains(&word.as_str())
            {
            } else {
                names.insert(word);
            }
            continue;
        }
        if c == '(' && skip_group {
            // Skip the label list `(a, b)` of a grouping clause.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        } else if c.is_ascii_digit() || c == '.' {
            // A number, perhaps with an exponent (1e9): not a name.
            while i + 1 < chars.len() && (chars[i + 1].is_ascii_alphanumeric() || chars[i + 1] == '.') {
                i += 1;
            }
        }
        i += 1;
    }
    names
}

#[test]
fn the_metric_name_parser_finds_what_a_selector_names() {
    let expr = r#"histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{route="x",le=~"b|c"}[5m]))) > 1e9
        and on (job) b_total offset 5m / ignoring(x) job:c:ratio unless sum without (d) (e{f="g"})"#;
    let got: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(got, ["a_bucket", "b_total", "e", "job:c:ratio"]);
    assert_eq!(
        rule_exprs("  - expr: up == 0\n    expr: |\n      a\n      / b\n    for: 1m\n"),
        ["up == 0", "      a\n      / b"]
    );
}
