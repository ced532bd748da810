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
    busy_server_with(dir, &[])
}

/// [`busy_server`] started with `extra` arguments.
fn busy_server_with(dir: &Path, extra: &[&str]) -> Server {
    let s = Server::start_with(&dir.join("data"), extra);
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
    let mut exported = exported_names(&scrape(&s));
    // The store's own figures differ by store: a server on PostgreSQL exports its pool's.
    let conninfo = allowly_store_postgres::test_cluster::shared().fresh_database("allowly_ops_names");
    let pg = Server::start_with(&dir.path().join("pg"), &["--postgres", &conninfo]);
    exported.extend(exported_names(&scrape(&pg)));

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
    let panel_exprs = dashboard_exprs();
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

/// The `expr` of every panel target of `ops/grafana/dashboards/allowly.json`.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ops("grafana/dashboards/allowly.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 30, "parsed too few expressions from the dashboard: {exprs:?}");
    exprs
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

/// The series of a page (`name{labels}`, values dropped), from every sample line.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(series, _value)| series).to_owned())
        .collect()
}

/// The value of the sample `series` (exactly `name` or `name{labels}`) on a page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A scrape that carries the signer's series (fetched in the background: the first scrapes
/// after a start may not have them yet).
fn scrape_with_signer(s: &Server) -> String {
    eventually(
        "the signer's series on /metrics",
        || s.diagnostics(),
        || {
            let text = scrape(s);
            text.contains("allowly_signer_leaves_signed_total ").then_some(text)
        },
    )
}

/// One workspace with a key, a grant and one allowed check.
fn workspace_with_a_check(s: &Server, name: &str) {
    let t = tenant(s, name, &["mail.read"]);
    let r = s.client().post("/v1/check", &t.checker, json!({ "authorization_id": t.az, "scopes": ["mail.read"] }));
    assert_eq!(r.status, 200, "check in {name}: {}\n{}", r.text(), s.diagnostics());
}

#[test]
fn the_series_do_not_grow_with_workspaces() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.wait_ready();
    for i in 0..2 {
        workspace_with_a_check(&s, &format!("ws {i}"));
    }
    scrape_with_signer(&s);
    // A second page: the first scrape's own request shows only on the next one.
    let few = scrape(&s);
    for i in 2..200 {
        workspace_with_a_check(&s, &format!("ws {i}"));
    }
    let many = scrape_with_signer(&s);
    // Same label sets: no series is per workspace, authorization or key.
    let (a, b) = (series(&few), series(&many));
    let added: Vec<&String> = b.difference(&a).collect();
    let gone: Vec<&String> = a.difference(&b).collect();
    assert!(added.is_empty() && gone.is_empty(), "2 → 200 workspaces: added {added:#?}\ngone {gone:#?}");
    // ... and the page really counted the 200 (so it is not simply stale).
    assert_eq!(sample(&many, r#"allowly_engine_decisions_total{decision="allow",reason="granted"}"#), Some(200.0));
    assert_eq!(sample(&many, r#"allowly_http_requests_total{route="check",status="200"}"#), Some(200.0));
    for name in [
        "allowly_store_write_stopped",
        "allowly_store_delayed_write_rate_bytes_per_second",
        "allowly_store_pending_compaction_bytes",
        "allowly_store_running_compactions",
        "allowly_store_live_data_bytes",
        "allowly_store_memtable_bytes",
        "allowly_engine_escalations_pending",
        "allowly_engine_confirmations_pending",
        r#"allowly_engine_hitl_answers_total{kind="escalation",outcome="expired"}"#,
        r#"allowly_engine_decisions_total{decision="escalate",reason="escalation_required"}"#,
        "allowly_webhook_outbox_deliveries",
        "allowly_webhook_outbox_oldest_age_seconds",
        "allowly_engine_signer_metrics_age_seconds",
        "allowly_signer_process_resident_memory_bytes",
        "process_open_fds",
        r#"allowly_signer_receipts_refused_total{reason="time_future"}"#,
    ] {
        assert!(sample(&many, name).is_some(), "{name} missing from /metrics:\n{many}");
    }
    assert_eq!(sample(&many, "allowly_store_write_stopped"), Some(0.0));
    assert!(sample(&many, "allowly_store_memtable_bytes").unwrap() > 0.0, "{many}");
    let out = promtool(&["check", "metrics"], Some(&many));
    assert!(out.status.success(), "{}\n--- /metrics ---\n{many}", shown("promtool check metrics", &out));
}

#[test]
fn pending_confirmations_escalations_and_webhook_deliveries_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(&dir.path().join("data"), &["--webhook-allow-private-networks"]);
    s.wait_ready();
    let c = s.client();
    let root = s.admin_token();
    let rules = json!({ "mail.send": "confirm", "payments.*": "escalate" });
    let ws = c.post("/v1/workspaces", &root, json!({ "name": "hitl", "scope_rules": rules })).created("workspace")
        ["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = c.post(&format!("/v1/workspaces/{ws}/api-keys"), &root, json!({ "roles": ["admin"] })).created("key")
        ["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    // A receiver that is not there: the deliveries stay in the outbox, retried later.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let hook = json!({ "url": format!("http://127.0.0.1:{port}/hook"), "events": ["escalation.requested"] });
    c.post("/v1/webhooks", &admin, hook).created("webhook");
    let az = c
        .post("/v1/authorizations", &admin, json!({ "subject": "u", "scopes": ["mail.*", "payments.*"] }))
        .created("grant")["authorization"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let check = |scope: &str| {
        let r = c.post("/v1/check", &admin, json!({ "authorization_id": az, "scopes": [scope] }));
        assert_eq!(r.status, 200, "check {scope}: {}\n{}", r.text(), s.diagnostics());
        r.json()
    };
    let nonces: Vec<String> =
        (0..3).map(|_| check("mail.send")["confirmation"]["nonce"].as_str().unwrap().to_owned()).collect();
    let escalations: Vec<String> =
        (0..2).map(|_| check("payments.wire")["escalation"]["id"].as_str().unwrap().to_owned()).collect();

    let text = scrape(&s);
    assert_eq!(sample(&text, "allowly_engine_confirmations_pending"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "allowly_engine_escalations_pending"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "allowly_webhook_outbox_deliveries"), Some(2.0), "{text}");

    let answer = json!({ "outcome": "approved", "by": "u", "shown": "send it" });
    assert_eq!(c.post(&format!("/v1/confirmations/{}", nonces[0]), &admin, answer).status, 200);
    let deny = json!({ "outcome": "declined", "by": "cfo" });
    assert_eq!(c.post(&format!("/v1/escalations/{}/resolve", escalations[0]), &admin, deny).status, 200);

    let text = scrape(&s);
    assert_eq!(sample(&text, "allowly_engine_confirmations_pending"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "allowly_engine_escalations_pending"), Some(1.0), "{text}");
    let answers = |kind: &str, outcome: &str| {
        sample(&text, &format!(r#"allowly_engine_hitl_answers_total{{kind="{kind}",outcome="{outcome}"}}"#))
    };
    assert_eq!(answers("confirmation", "approved"), Some(1.0), "{text}");
    assert_eq!(answers("escalation", "declined"), Some(1.0), "{text}");
    assert_eq!(answers("escalation", "approved"), Some(0.0), "{text}");
    // The deliveries are still unfinished, and their age is the age of their events.
    let age = sample(&text, "allowly_webhook_outbox_oldest_age_seconds").unwrap();
    assert!(sample(&text, "allowly_webhook_outbox_deliveries").unwrap() >= 2.0, "{text}");
    assert!(age > 0.0 && age < 600.0, "oldest delivery age {age}:\n{text}");
}

#[test]
fn a_hung_signer_neither_holds_up_the_scrape_nor_takes_its_series_away() {
    let dir = tempfile::tempdir().unwrap();
    // A signer timeout far above the scrape's own wait (100 ms): a scrape that waited for the
    // hung signer would take 5 s.
    let s = busy_server_with(dir.path(), &["--signer-timeout-ms", "5000"]);
    let before = scrape_with_signer(&s);
    let signer = s.signer_pid();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(signer as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    let _resume = Resume(signer);
    // The probe marks it down once a ping times out; every scrape meanwhile is served.
    let text = eventually(
        "the signer reported down",
        || s.diagnostics(),
        || {
            let started = std::time::Instant::now();
            let text = scrape(&s);
            let took = started.elapsed();
            assert!(took < std::time::Duration::from_secs(4), "a scrape waited {took:?} for the hung signer");
            (sample(&text, "allowly_engine_signer_up") == Some(0.0)).then_some(text)
        },
    );
    // Its series are still there, as they were last fetched.
    let signer_series =
        |t: &str| series(t).into_iter().filter(|n| n.starts_with("allowly_signer_")).collect::<Vec<_>>();
    assert!(!signer_series(&before).is_empty());
    assert_eq!(signer_series(&text), signer_series(&before), "{text}");
    assert!(sample(&text, "allowly_engine_signer_metrics_age_seconds").unwrap() > 0.0, "{text}");
}

/// Resumes a stopped process when dropped (a failing test must not leave it stopped).
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
        }
    }
}

/// A real Prometheus (Debian's, unpacked by `scripts/setup.sh`) scraping a busy server with the
/// rules of `ops/`: it loads every rule and evaluates each without error, no alert fires on a
/// healthy server, and every panel of the Grafana dashboard, asked of that Prometheus as Grafana
/// would ask it (`$job` and `$__rate_interval` filled in), is valid PromQL that returns data. The
/// name check above cannot see a wrong label, a `by` over a label the series lack, a recording
/// rule that never evaluates, or a query Prometheus rejects: this can.
#[test]
fn a_real_prometheus_evaluates_every_rule_and_every_dashboard_panel_against_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let s = busy_server(dir.path());
    let prom = Prometheus::start(dir.path(), s.addr);
    let diag = || format!("{}\n{}", prom.diagnostics(), s.diagnostics());

    // Three scrapes of the server (rates need two) and every rule group evaluated since.
    eventually("three scrapes of the service", diag, || {
        let v = prom.query(r#"count_over_time(up{job="allowly"}[1m]) >= 3 and up{job="allowly"} == 1"#);
        (!v.as_array()?.is_empty()).then_some(())
    });
    let groups = eventually("every rule evaluated", diag, || {
        let r = prom.get("/api/v1/rules");
        let groups = r["data"]["groups"].as_array()?.clone();
        let rules: Vec<&serde_json::Value> =
            groups.iter().flat_map(|g| g["rules"].as_array().unwrap().iter()).collect();
        let evaluated = |r: &&serde_json::Value| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001-"));
        (!rules.is_empty() && rules.iter().all(evaluated)).then_some(groups)
    });
    let mut problems = Vec::new();
    let mut alerts = 0;
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        if rule["health"] != "ok" {
            problems.push(format!("rule {}: health {} {}", rule["name"], rule["health"], rule["lastError"]));
        }
        if rule["type"] == "alerting" {
            alerts += 1;
            if rule["state"] == "firing" {
                problems.push(format!("alert {} fires on a healthy server: {}", rule["name"], rule["alerts"]));
            }
        }
    }
    assert!(alerts >= 12, "Prometheus loaded too few alerts ({alerts}): {groups:#?}");

    let panel_exprs = dashboard_exprs();
    for expr in &panel_exprs {
        // What Grafana sends for the dashboard's variables: the job of ops/prometheus, and a
        // rate window of at least four scrape intervals.
        let q = expr.replace("$__rate_interval", "1m").replace("$job", "allowly");
        let r = prom.get(&format!("/api/v1/query?query={}", percent_encode(&q)));
        if r["status"] != "success" {
            problems.push(format!("panel `{expr}`: {}", r));
        } else if r["data"]["result"].as_array().is_none_or(|v| v.is_empty()) {
            problems.push(format!("panel `{expr}`: no data"));
        }
    }
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), diag());
}

/// A Prometheus server of our own: its config scrapes one target every second with the rules
/// of `ops/prometheus/rules.yml`; killed on drop.
struct Prometheus {
    child: std::process::Child,
    client: Client,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: std::net::SocketAddr) -> Self {
        // Prometheus prints the address it was given, not the one it bound: pick a free port.
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: allowly\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = ops("prometheus/rules.yml").display()
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("running {cmd:?}: {e}\nprometheus is missing: run scripts/setup.sh (it unpacks Debian's)")
        });
        let p = Self { child, client: Client { addr: ([127, 0, 0, 1], port).into() }, log };
        eventually(
            "Prometheus ready",
            || p.diagnostics(),
            || try_request(p.client.addr, "GET", "/-/ready", "", b"").filter(|r| r.status == 200),
        );
        p
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let r = self.client.get(path, None);
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}: {r}\n{}", self.diagnostics()))
    }

    /// The `result` of an instant query.
    fn query(&self, q: &str) -> serde_json::Value {
        self.get(&format!("/api/v1/query?query={}", percent_encode(q)))["data"]["result"].clone()
    }

    fn diagnostics(&self) -> String {
        format!("--- prometheus log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A query string value: every byte but the unreserved ones percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
