//! `dashboards/`: the Grafana dashboard, the Prometheus alert rules and the example scrape
//! config, proven against real things.
//!
//! - promtool checks the rules and the example config and runs the rules' unit tests; every
//!   alert has a firing and a non-firing case.
//! - The dashboard is importable (`__inputs`, a datasource variable, no datasource UID) and
//!   every query honours the `instance`, `source` and `destination` variables.
//! - Every `tlspeek_*` name (and selector label) used by the dashboard and the rules is
//!   exported by tlspeek after real traffic.
//! - Two tlspeek instances carry real traffic (curl TLS 1.0–1.3, gnutls-cli 3DES, raw
//!   hellos, a blocked and a dry-run caller) from distinct loopback sources, a real
//!   Prometheus scrapes both every second with the rules loaded, and every dashboard query
//!   is evaluated through its HTTP API: each parses, returns data, aggregates over the
//!   instances, and matches the traffic exactly where the query allows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("tlspeek.json")).expect("tlspeek.json is JSON")
}

/// One query of a panel.
#[derive(Debug, Clone)]
struct Query {
    panel: String,
    ref_id: String,
    expr: String,
    instant: bool,
}

fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner.iter());
        }
    }
    out
}

fn queries(dash: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                panel: p["title"].as_str().unwrap().to_string(),
                ref_id: t["refId"].as_str().unwrap().to_string(),
                expr: t["expr"]
                    .as_str()
                    .expect("a target without expr")
                    .to_string(),
                instant: t["instant"] == true,
            });
        }
    }
    out
}

/// Every string under a key named `key`, anywhere in the JSON.
fn strings_under(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                strings_under(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| strings_under(x, key, out)),
        _ => {}
    }
}

/// The `tlspeek_*` names in a text.
fn tlspeek_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("tlspeek_") {
        let start = i + pos;
        // A recording rule's name (`source:tlspeek_…:increase5m`) is not an exported metric.
        let boundary = start == 0
            || !(b[start - 1].is_ascii_alphanumeric()
                || b[start - 1] == b'_'
                || b[start - 1] == b':');
        let mut end = start + "tlspeek_".len();
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every `name{...}` selector in a PromQL text: (metric name, label names matched).
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    for (open, _) in expr.match_indices('{') {
        let mut s = open;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_' || b[s - 1] == b':') {
            s -= 1;
        }
        let name = &expr[s..open];
        if name.is_empty() {
            continue;
        }
        let close = open + expr[open..].find('}').expect("unclosed selector");
        let body = &expr[open + 1..close];
        let mut labels = Vec::new();
        let mut in_str = false;
        let mut cur = String::new();
        let mut prev = ' ';
        for c in body.chars() {
            if in_str {
                if c == '"' && prev != '\\' {
                    in_str = false;
                }
            } else if c == '"' {
                in_str = true;
                labels.push(
                    cur.trim()
                        .trim_end_matches(['=', '~', '!'])
                        .trim()
                        .to_string(),
                );
                cur.clear();
            } else if c != ',' {
                cur.push(c);
            }
            prev = c;
        }
        out.push((name.to_string(), labels));
    }
    out
}

/// The label names in every `by (...)`, `on (...)` and `without (...)` clause.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for kw in ["by", "on", "without", "group_left", "group_right"] {
        let mut i = 0;
        while let Some(pos) = expr[i..].find(kw) {
            let start = i + pos;
            i = start + kw.len();
            let before = expr[..start].chars().last().unwrap_or(' ');
            if before.is_ascii_alphanumeric() || before == '_' {
                continue;
            }
            let rest = expr[i..].trim_start();
            if let Some(r) = rest.strip_prefix('(') {
                let inner = &r[..r.find(')').unwrap()];
                for l in inner.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                    out.insert(l.to_string());
                }
            }
        }
    }
    out
}

/// Metric name → label names, from a /metrics exposition.
fn exported(metrics: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let body = &line[end + 1..line.rfind('}').unwrap()];
            for part in body.split("\",") {
                if let Some((k, _)) = part.split_once('=') {
                    labels.insert(k.trim_start_matches(',').to_string());
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------

#[test]
fn rules_and_config_pass_promtool_and_every_alert_has_both_cases() {
    if !require(&["promtool"]) {
        return;
    }
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
        ["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every alert: a severity, a summary, a description pointing to the README.
    let rules = read("alerts.yml");
    let mut alerts = Vec::new();
    for block in rules.split("- alert: ").skip(1) {
        let name = block.lines().next().unwrap().trim().to_string();
        let body = block.split("\n  - name:").next().unwrap();
        for needle in ["severity:", "summary:", "description:", "README.md#"] {
            assert!(body.contains(needle), "{name} has no {needle}");
        }
        alerts.push(name);
    }
    for must in [
        "TlspeekNewLegacySource",
        "TlspeekLegacyToAzureAD",
        "TlspeekBlockedConnectionsRising",
        "TlspeekUpstreamErrorRatioHigh",
        "TlspeekDown",
        "TlspeekTargetsMissing",
        "TlspeekLabelOverflow",
    ] {
        assert!(alerts.iter().any(|a| a == must), "no alert {must}");
    }
    assert!(rules.contains("up{job=\"tlspeek\"} == 0"));
    assert!(rules.contains("absent(up{job=\"tlspeek\"})"));

    // Every alert has a firing and a non-firing case in the unit tests.
    let tests = read("alerts.test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.strip_prefix("alertname: ") {
            let next = lines[i + 1..].iter().find(|x| !x.is_empty()).unwrap();
            if *next == "exp_alerts: []" {
                silent.insert(name.to_string());
            } else {
                assert_eq!(*next, "exp_alerts:", "{name}");
                firing.insert(name.to_string());
            }
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "{a} has no firing unit test");
        assert!(silent.contains(a), "{a} has no non-firing unit test");
    }
}

const SOURCE_METRICS: &[&str] = &[
    "tlspeek_client_hellos_total",
    "tlspeek_handshakes_total",
    "tlspeek_legacy_connections_total",
    "tlspeek_actions_total",
    "tlspeek_source_last_legacy_timestamp_seconds",
];

#[test]
fn dashboard_is_importable_and_every_query_honours_the_variables() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(
        dash["id"].is_null(),
        "an exported dashboard has no database id"
    );
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );

    // Variables: the datasource (defaulting to the import input), then instance, source,
    // destination from label_values, multi-valued with an All of ".*".
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |n: &str| {
        vars.iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("no variable {n}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    assert_eq!(ds["current"]["value"], "${DS_PROMETHEUS}");
    for (name, needs_instance) in [("instance", false), ("source", true), ("destination", true)] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        let q = v["query"]["query"]
            .as_str()
            .unwrap_or_else(|| v["query"].as_str().unwrap());
        assert!(
            q.starts_with("label_values(") && q.ends_with(&format!(", {name})")),
            "{q}"
        );
        assert_eq!(v["definition"].as_str(), Some(q));
        assert!(
            !needs_instance || q.contains("instance=~\"$instance\""),
            "{q}"
        );
        assert_eq!(
            (&v["multi"], &v["includeAll"]),
            (&Value::Bool(true), &Value::Bool(true))
        );
        assert_eq!(v["allValue"], ".*", "{name}: All must match new values too");
        assert_eq!(v["datasource"]["uid"], "${datasource}");
    }

    // No hard-coded datasource: every Prometheus reference is the variable.
    fn check_ds(v: &Value, path: &str) {
        match v {
            Value::Object(m) => {
                if let Some(d) = m.get("datasource") {
                    if d.is_string() {
                        panic!("{path}: datasource by name {d}");
                    }
                    if d["type"] == "prometheus" {
                        assert_eq!(d["uid"], "${datasource}", "{path}");
                    } else if !d.is_null() {
                        assert_eq!(d["type"], "grafana", "{path}: {d}");
                    }
                }
                for (k, x) in m {
                    check_ds(x, &format!("{path}.{k}"));
                }
            }
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| check_ds(x, &format!("{path}[{i}]"))),
            _ => {}
        }
    }
    check_ds(&dash, "$");

    // Panels: unique ids, no overlap, every non-row panel has queries.
    let all = panels(&dash);
    let ids: BTreeSet<u64> = all.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "duplicate panel ids");
    let rects: Vec<(&str, u64, u64, u64, u64)> = all
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_u64().unwrap();
            (p["title"].as_str().unwrap(), n("x"), n("y"), n("w"), n("h"))
        })
        .collect();
    for (i, a) in rects.iter().enumerate() {
        assert!(a.1 + a.3 <= 24, "{} is wider than the grid", a.0);
        for b in &rects[i + 1..] {
            let apart =
                a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1 || a.2 + a.4 <= b.2 || b.2 + b.4 <= a.2;
            assert!(apart, "{} overlaps {}", a.0, b.0);
        }
    }
    let titles: BTreeSet<&str> = all.iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(titles.len(), all.len(), "duplicate panel titles");
    for p in &all {
        if p["type"] != "row" {
            assert!(
                p["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{} has no query",
                p["title"]
            );
        }
    }

    // Every query: each tlspeek selector is filtered by the variables it can honour; the
    // only `expr` keys in the file are panel targets.
    let qs = queries(&dash);
    let mut exprs = Vec::new();
    strings_under(&dash, "expr", &mut exprs);
    assert_eq!(exprs.len(), qs.len(), "an expr outside a panel target");
    for q in &qs {
        for (name, labels) in selectors(&q.expr) {
            let has = |l: &str| labels.iter().any(|x| x == l);
            if name.starts_with("tlspeek_") || name == "up" {
                assert!(
                    has("instance"),
                    "{}/{}: {name} without $instance",
                    q.panel,
                    q.ref_id
                );
            }
            if SOURCE_METRICS.contains(&name.as_str()) {
                assert!(
                    has("source") && has("destination"),
                    "{}/{}: {name} without $source/$destination",
                    q.panel,
                    q.ref_id
                );
            }
        }
        for v in ["$instance", "$source", "$destination"] {
            let n = q.expr.matches(v).count();
            let m = q.expr.matches(&format!("=~\"{v}\"")).count();
            assert_eq!(
                n, m,
                "{}/{}: {v} used other than as =~\"{v}\"",
                q.panel, q.ref_id
            );
        }
    }

    // The legacy-caller table comes from the last-seen gauge, never from rate()/increase().
    let a = qs
        .iter()
        .find(|q| q.panel == "Legacy callers now" && q.ref_id == "A")
        .expect("Legacy callers now / A");
    assert!(a.instant);
    assert!(a.expr.contains(
        "max by (source, destination) (max_over_time(tlspeek_source_last_legacy_timestamp_seconds{"
    ));
    assert!(
        !a.expr.contains("rate(") && !a.expr.contains("increase("),
        "{}",
        a.expr
    );

    // The panels the issue asks for.
    for title in [
        "Legacy callers now",
        "Offered TLS versions",
        "Legacy share of hellos over time",
        "Top legacy sources",
        "Legacy callers of Azure AD / Entra hosts",
        "Negotiated TLS versions",
        "Negotiated cipher suites",
        "Policy actions",
        "Active tunnels",
        "Connections by outcome",
        "Upstream connect latency",
        "Throughput",
        "Label overflow",
        "Instances and versions",
    ] {
        assert!(titles.contains(title), "no panel {title}");
    }
    // Offered versions are stacked; 3DES is highlighted.
    let offered = all
        .iter()
        .find(|p| p["title"] == "Offered TLS versions")
        .unwrap();
    assert_eq!(
        offered["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"],
        "normal"
    );
    let ciphers = all
        .iter()
        .find(|p| p["title"] == "Negotiated cipher suites")
        .unwrap();
    assert!(
        ciphers["fieldConfig"]["overrides"]
            .to_string()
            .contains("3DES")
    );
}

#[test]
fn every_metric_name_in_the_dashboard_and_rules_is_exported() {
    if !require(&["curl", "openssl", "gnutls-cli", "socat"]) {
        return;
    }
    let (_s, up) = openssl_server(&[]);
    let (_g, gs) = gnutls_server("NORMAL:+3DES-CBC:+VERS-TLS1.0:+VERS-TLS1.1");
    let (_r, refusing) = openssl_server(&["-min_protocol", "TLSv1.2"]);
    let t = Tlspeek::start(&format!("allowed_ports = [{up}, {gs}, {refusing}]\n"), "");
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, TLS10).0, "200");
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, TLS13).0, "200");
    let out = gnutls_via_proxy(t.proxy_port, gs, DES_ONLY, LOGIN);
    assert!(out.contains("3DES"), "{out}");
    // A retired endpoint, and a front end that rejects TLS 1.0.
    assert_eq!(
        curl_via(t.proxy_port, up, "graph.windows.net", TLS13).0,
        "200"
    );
    assert_ne!(curl_via(t.proxy_port, refusing, LOGIN, TLS10).0, "200");
    let end = Instant::now() + Duration::from_secs(10);
    while sample(&t.metrics(), "tlspeek_handshakes_total", &[]) < Some(4.0)
        || sample(&t.metrics(), "tlspeek_server_rejections_total", &[]) < Some(1.0)
    {
        assert!(Instant::now() < end, "{}", t.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    let have = exported(&t.metrics());

    let texts = [
        ("tlspeek.json", read("tlspeek.json")),
        ("alerts.yml", read("alerts.yml")),
        ("alerts.test.yml", read("alerts.test.yml")),
    ];
    let mut missing = Vec::new();
    for (file, text) in &texts {
        for name in tlspeek_names(text) {
            if !have.contains_key(&name) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\n{have:#?}"
    );

    // The labels each selector matches exist on that metric, and every by/on label exists
    // on some metric of the expression.
    let mut exprs: Vec<(String, String)> = queries(&dashboard())
        .into_iter()
        .map(|q| (format!("{}/{}", q.panel, q.ref_id), q.expr))
        .collect();
    exprs.push(("alerts.yml".into(), read("alerts.yml")));
    let generic = ["instance", "job", "le", "__name__"];
    for (what, expr) in &exprs {
        let mut known: BTreeSet<String> = generic.iter().map(|s| s.to_string()).collect();
        for name in tlspeek_names(expr) {
            known.extend(have[&name].iter().cloned());
        }
        for (name, labels) in selectors(expr) {
            if let Some(ls) = have.get(&name) {
                for l in labels {
                    assert!(
                        ls.contains(&l) || generic.contains(&l.as_str()),
                        "{what}: {name} has no label {l} (has {ls:?})"
                    );
                }
            }
        }
        for l in grouping_labels(expr) {
            assert!(known.contains(&l), "{what}: grouping by unknown label {l}");
        }
    }
}

// ---- The live test ---------------------------------------------------------------------

const TLS10: &[&str] = &[
    "--tlsv1.0",
    "--tls-max",
    "1.0",
    "--ciphers",
    "DEFAULT:@SECLEVEL=0",
];
const TLS11: &[&str] = &[
    "--tlsv1.1",
    "--tls-max",
    "1.1",
    "--ciphers",
    "DEFAULT:@SECLEVEL=0",
];
const TLS12: &[&str] = &["--tlsv1.2", "--tls-max", "1.2"];
const TLS13: &[&str] = &["--tlsv1.3"];
const DES_ONLY: &str = "NORMAL:-CIPHER-ALL:+3DES-CBC:-VERS-TLS1.3";
const OTHER_HOST: &str = "example.org";

/// TLS 1.0 ×2 and TLS 1.3 on the first instance, TLS 1.0 on the second.
const S_MIXED: &str = "127.0.0.11";
/// Only modern TLS (1.3, and 1.2 to a host that is not watched).
const S_MODERN: &str = "127.0.0.12";
const S_TLS11: &str = "127.0.0.13";
/// One TLS 1.0 ClientHello to an upstream that never answers, and nothing else, ever.
const S_ONCE: &str = "127.0.0.14";
/// gnutls-cli offering only 3DES, under a dry-run block rule.
const S_3DES: &str = "127.0.0.15";
/// One SSL 3.0 ClientHello to an upstream that never answers.
const S_SSL3: &str = "127.0.0.16";
/// TLS 1.0 to a host that is not watched (destination "other").
const S_OTHER: &str = "127.0.0.17";
/// TLS 1.0, blocked by a rule.
const S_BLOCKED: &str = "127.0.0.18";

/// Panels whose data comes from traffic of their own, in
/// `retired_endpoint_and_front_end_panels_and_alerts_answer_on_a_real_prometheus`.
const OWN_TRAFFIC: &[&str] = &[
    "Callers of retired endpoints",
    "Rejected by some front ends, accepted by others",
];

fn curl_from(t: &Tlspeek, source: &str, up: u16, host: &str, tls: &[&str]) -> String {
    let mut args = vec!["--interface", source];
    args.extend_from_slice(tls);
    let (code, err) = curl_via(t.proxy_port, up, host, &args);
    if code != "200" {
        eprintln!("curl from {source} {tls:?}: {code} {err}");
    }
    code
}

fn hellos_from(t: &Tlspeek, source: &str) -> f64 {
    sample(
        &t.metrics(),
        "tlspeek_client_hellos_total",
        &[("source", source)],
    )
    .unwrap_or(0.0)
}

/// Sends one raw ClientHello from `source` through a CONNECT tunnel to an upstream that
/// never answers, waits until tlspeek counted it, then closes.
fn raw_hello_from(t: &Tlspeek, source: &str, silent: u16, hello: &[u8]) {
    let before = hellos_from(t, source);
    let (mut s, status) = connect_tunnel_from(source, t.proxy_port, &format!("127.0.0.1:{silent}"));
    assert!(status.contains(" 200"), "{status}");
    s.write_all(hello).unwrap();
    wait_for("the raw hello to be counted", 10, || {
        hellos_from(t, source) > before
    });
}

/// A real Prometheus with `alerts.yml`, once it has scraped every one of `admin_ports`.
fn prometheus_scraping(admin_ports: &[u16]) -> Prometheus {
    let prom = Prometheus::start(admin_ports, &[&dir().join("alerts.yml")]);
    let targets = admin_ports.len() as f64;
    wait_for("every target up", 20, || {
        prom.query("sum(up{job=\"tlspeek\"})", now())
            .is_ok_and(|r| r.len() == 1 && r[0].value == targets)
    });
    prom
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}.bin",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Grafana's rendering of a multi-value variable inside `=~"..."`: regex-escaped values
/// (the backslash itself escaped for the PromQL string), alternated in a group.
fn grafana_regex(values: &[String]) -> String {
    let esc: Vec<String> = values
        .iter()
        .map(|v| {
            let mut s = String::new();
            for c in v.chars() {
                if "\\.+*?^$()[]{}|".contains(c) {
                    s.push_str("\\\\");
                }
                s.push(c);
            }
            s
        })
        .collect();
    if esc.len() == 1 {
        esc[0].clone()
    } else {
        format!("({})", esc.join("|"))
    }
}

/// The expression as Grafana sends it: variables, `$__rate_interval` (1m) and `$__range`
/// (`FULL`, longer than the whole test, so "in range" means "since the instances started",
/// unless another range is given).
fn substitute(expr: &str, vars: &[(&str, String)]) -> String {
    substitute_range(expr, vars, FULL)
}

const FULL: &str = "1h";

fn substitute_range(expr: &str, vars: &[(&str, String)], range: &str) -> String {
    let mut e = expr
        .replace("${__rate_interval}", "1m")
        .replace("$__rate_interval", "1m")
        .replace("${__range}", range)
        .replace("$__range", range);
    for (name, value) in vars {
        e = e
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(!e.contains('$'), "unsubstituted variable in {e}");
    e
}

type Results = BTreeMap<(String, String), Vec<PromSample>>;

fn evaluate(prom: &Prometheus, qs: &[Query], vars: &[(&str, String)], at: f64) -> Results {
    evaluate_range(prom, qs, vars, at, FULL)
}

fn evaluate_range(
    prom: &Prometheus,
    qs: &[Query],
    vars: &[(&str, String)],
    at: f64,
    range: &str,
) -> Results {
    let mut out = BTreeMap::new();
    let mut failed = Vec::new();
    for q in qs {
        let e = substitute_range(&q.expr, vars, range);
        match prom.query(&e, at) {
            Ok(r) => {
                out.insert((q.panel.clone(), q.ref_id.clone()), r);
            }
            Err(err) => failed.push(format!("{}/{}: {err}\n{e}", q.panel, q.ref_id)),
        }
    }
    assert!(
        failed.is_empty(),
        "queries Prometheus refused:\n{}",
        failed.join("\n\n")
    );
    out
}

fn get<'a>(r: &'a Results, panel: &str, ref_id: &str) -> &'a Vec<PromSample> {
    r.get(&(panel.to_string(), ref_id.to_string()))
        .unwrap_or_else(|| panic!("no query {panel}/{ref_id}"))
}

/// The samples keyed by the values of `labels` (each key must be unique).
fn by(samples: &[PromSample], labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    let mut out = BTreeMap::new();
    for s in samples {
        let key: Vec<String> = labels
            .iter()
            .map(|l| s.labels.get(*l).cloned().unwrap_or_default())
            .collect();
        assert!(
            out.insert(key.clone(), s.value).is_none(),
            "duplicate {key:?}"
        );
    }
    out
}

fn expect_map(got: BTreeMap<Vec<String>, f64>, want: &[(&[&str], f64)], what: &str) {
    let want: BTreeMap<Vec<String>, f64> = want
        .iter()
        .map(|(k, v)| (k.iter().map(|s| s.to_string()).collect(), *v))
        .collect();
    assert_eq!(got, want, "{what}");
}

fn single(r: &Results, panel: &str, ref_id: &str) -> f64 {
    let s = get(r, panel, ref_id);
    assert_eq!(s.len(), 1, "{panel}/{ref_id}: {s:?}");
    s[0].value
}

#[test]
fn every_dashboard_query_answers_on_a_real_prometheus_scraping_two_instances() {
    if !require(&[
        "prometheus",
        "curl",
        "openssl",
        "gnutls-cli",
        "gnutls-serv",
        "socat",
    ]) {
        return;
    }
    let started = Instant::now();
    let t0 = now();
    let (_s, up) = openssl_server(&[]);
    let (_g, gs) = gnutls_server("NORMAL:+3DES-CBC:+VERS-TLS1.0:+VERS-TLS1.1");
    let silent = silent_server();
    let ports = format!("allowed_ports = [{up}, {gs}, {silent}]\n");
    let t1 = Tlspeek::start(
        &ports,
        &format!(
            "[[rules]]\nname = \"dry-run-3des\"\nsources = [\"{S_3DES}/32\"]\naction = \"block\"\ndry_run = true\n"
        ),
    );
    let t2 = Tlspeek::start(
        &ports,
        &format!(
            "[[rules]]\nname = \"block-one\"\nsources = [\"{S_BLOCKED}/32\"]\naction = \"block\"\n"
        ),
    );
    let inst1 = format!("127.0.0.1:{}", t1.admin_port);
    let inst2 = format!("127.0.0.1:{}", t2.admin_port);
    // Both targets scraped before the traffic, so counters have a "before" sample.
    let prom = prometheus_scraping(&[t1.admin_port, t2.admin_port]);

    // The traffic.
    assert_eq!(curl_from(&t1, S_MIXED, up, LOGIN, TLS10), "200");
    assert_eq!(curl_from(&t1, S_MIXED, up, LOGIN, TLS10), "200");
    assert_eq!(curl_from(&t1, S_MIXED, up, LOGIN, TLS13), "200");
    assert_eq!(curl_from(&t2, S_MIXED, up, LOGIN, TLS10), "200");
    assert_eq!(curl_from(&t1, S_MODERN, up, LOGIN, TLS13), "200");
    assert_eq!(curl_from(&t1, S_MODERN, up, LOGIN, TLS13), "200");
    assert_eq!(curl_from(&t1, S_MODERN, up, OTHER_HOST, TLS12), "200");
    assert_eq!(curl_from(&t2, S_MODERN, up, LOGIN, TLS13), "200");
    assert_eq!(curl_from(&t1, S_TLS11, up, LOGIN, TLS11), "200");
    assert_eq!(curl_from(&t2, S_OTHER, up, OTHER_HOST, TLS10), "200");
    assert_ne!(
        curl_from(&t2, S_BLOCKED, up, LOGIN, TLS10),
        "200",
        "blocked"
    );
    let out = gnutls_via_proxy_from(S_3DES, t1.proxy_port, gs, DES_ONLY, LOGIN);
    assert!(out.contains("3DES"), "{out}");

    // Wait until every tunnel has ended and Prometheus has the instances' current values.
    let caught_up = || {
        wait_for("all tunnels closed", 15, || {
            [&t1, &t2]
                .iter()
                .all(|t| sample(&t.metrics(), "tlspeek_active_tunnels", &[]) == Some(0.0))
        });
        let counters = [
            "tlspeek_client_hellos_total",
            "tlspeek_handshakes_total",
            "tlspeek_legacy_connections_total",
            "tlspeek_actions_total",
            "tlspeek_tunnel_bytes_total",
            "tlspeek_connections_total",
        ];
        wait_for("Prometheus to scrape the current values", 20, || {
            counters.iter().all(|c| {
                [(&t1, &inst1), (&t2, &inst2)].iter().all(|(t, i)| {
                    let direct = sample(&t.metrics(), c, &[]).unwrap_or(0.0);
                    prom.query(&format!("sum({c}{{instance=\"{i}\"}})"), now())
                        .is_ok_and(|r| r.len() == 1 && r[0].value == direct)
                })
            })
        });
    };
    // A dashboard range that starts here holds only the two raw hellos that follow.
    caught_up();
    let mid = now();
    raw_hello_from(&t2, S_ONCE, silent, &fixture("curl_tls10"));
    let mut ssl3 = fixture("curl_tls10");
    ssl3[9..11].copy_from_slice(&[3, 0]); // client_version SSL 3.0
    raw_hello_from(&t1, S_SSL3, silent, &ssl3);
    caught_up();
    // Two more scrapes, so rate() has samples on both sides of the traffic.
    std::thread::sleep(Duration::from_millis(2500));
    let at = now();

    // The variables' own queries (label_values) return the real values.
    let dash = dashboard();
    let qs = queries(&dash);
    let mut values: HashMap<String, Vec<String>> = HashMap::new();
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap();
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .unwrap()
            .strip_suffix(')')
            .unwrap();
        let (selector, label) = inner.rsplit_once(", ").unwrap();
        let selector = substitute(selector, &[("instance", ".*".to_string())]);
        let vals = prom.label_values(label, &selector).unwrap();
        values.insert(name.to_string(), vals);
    }
    let set = |n: &str| values[n].iter().cloned().collect::<BTreeSet<String>>();
    assert_eq!(
        set("instance"),
        BTreeSet::from([inst1.clone(), inst2.clone()])
    );
    let sources = [
        S_MIXED, S_MODERN, S_TLS11, S_ONCE, S_3DES, S_SSL3, S_OTHER, S_BLOCKED,
    ];
    assert_eq!(
        set("source"),
        sources.iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(
        set("destination"),
        BTreeSet::from([LOGIN.to_string(), "other".to_string()])
    );

    let real: Vec<(&str, String)> = ["instance", "source", "destination"]
        .iter()
        .map(|n| (*n, grafana_regex(&values[*n])))
        .collect();
    let all: Vec<(&str, String)> = ["instance", "source", "destination"]
        .iter()
        .map(|n| (*n, ".*".to_string()))
        .collect();
    let r = evaluate(&prom, &qs, &real, at);

    // Every query returns data, no result is split by instance unless the query says so,
    // and "All" (.*) gives the same answers as every value selected. The panels of retired
    // endpoints and front ends have traffic of their own (the next test).
    let empty: Vec<String> = r
        .iter()
        .filter(|((p, _), v)| v.is_empty() && !OWN_TRAFFIC.contains(&p.as_str()))
        .map(|((p, id), _)| format!("{p}/{id}"))
        .collect();
    assert!(
        empty.is_empty(),
        "queries without data after the traffic: {empty:?}"
    );
    for q in &qs {
        let res = get(&r, &q.panel, &q.ref_id);
        let per_instance = q.expr.contains("by (instance");
        for s in res {
            assert_eq!(
                s.labels.contains_key("instance"),
                per_instance,
                "{}/{}: {:?}",
                q.panel,
                q.ref_id,
                s.labels
            );
            assert!(!s.labels.contains_key("job"), "{}/{}", q.panel, q.ref_id);
        }
    }
    let r_all = evaluate(&prom, &qs, &all, at);
    for (k, v) in &r {
        let w = &r_all[k];
        let norm = |x: &Vec<PromSample>| {
            let mut x: Vec<String> = x
                .iter()
                .map(|s| {
                    format!(
                        "{:?} {}",
                        s.labels.iter().collect::<BTreeMap<_, _>>(),
                        s.value
                    )
                })
                .collect();
            x.sort();
            x
        };
        assert_eq!(
            norm(v),
            norm(w),
            "{k:?}: All differs from every value selected"
        );
    }
    // Graphs: the range query Grafana sends returns series too.
    for q in qs.iter().filter(|q| !q.instant) {
        let e = substitute(&q.expr, &real);
        let n = prom
            .query_range(&e, at - 60.0, at, 2.0)
            .unwrap_or_else(|err| panic!("{}/{}: {err}", q.panel, q.ref_id));
        assert!(
            n > 0,
            "{}/{}: no series over the last minute",
            q.panel,
            q.ref_id
        );
    }

    // Exact answers where the query allows.
    let login = LOGIN;
    let legacy_pairs: &[(&[&str], f64)] = &[
        (&[S_MIXED, login], 3.0),
        (&[S_TLS11, login], 1.0),
        (&[S_ONCE, login], 1.0),
        (&[S_3DES, login], 1.0),
        (&[S_SSL3, login], 1.0),
        (&[S_OTHER, "other"], 1.0),
        (&[S_BLOCKED, login], 1.0),
    ];
    let sd = ["source", "destination"];
    // The legacy-caller table: exactly the sources that sent legacy hellos (the one-hello
    // source included), once each across both instances, last seen during the test.
    let callers = get(&r, "Legacy callers now", "A");
    let got: BTreeSet<Vec<String>> = by(callers, &sd).into_keys().collect();
    let want: BTreeSet<Vec<String>> = legacy_pairs
        .iter()
        .map(|(k, _)| k.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(got, want, "legacy callers");
    for s in callers {
        assert!(
            s.value >= (t0 - 1.0) * 1000.0 && s.value <= (at + 1.0) * 1000.0,
            "last seen {s:?}"
        );
    }
    expect_map(
        by(get(&r, "Legacy callers now", "B"), &sd),
        legacy_pairs,
        "legacy connections",
    );
    expect_map(
        by(get(&r, "Legacy callers now", "C"), &sd),
        &[
            (&[S_MIXED, login], 3.0),
            (&[S_ONCE, login], 1.0),
            (&[S_OTHER, "other"], 1.0),
            (&[S_BLOCKED, login], 1.0),
        ],
        "offered TLS 1.0",
    );
    expect_map(
        by(get(&r, "Legacy callers now", "D"), &sd),
        &[(&[S_TLS11, login], 1.0)],
        "TLS 1.1",
    );
    expect_map(
        by(get(&r, "Legacy callers now", "E"), &sd),
        &[(&[S_SSL3, login], 1.0)],
        "SSL",
    );
    expect_map(
        by(get(&r, "Legacy callers now", "F"), &sd),
        &[
            (&[S_MIXED, login], 3.0),
            (&[S_TLS11, login], 1.0),
            (&[S_OTHER, "other"], 1.0),
        ],
        "negotiated below TLS 1.2",
    );
    expect_map(
        by(get(&r, "Legacy callers now", "G"), &sd),
        &[(&[S_3DES, login], 1.0)],
        "3DES",
    );
    expect_map(
        by(get(&r, "Top legacy sources", "A"), &["source"]),
        &legacy_pairs
            .iter()
            .map(|(k, v)| (&k[..1], *v))
            .collect::<Vec<_>>(),
        "top legacy sources",
    );
    // Azure AD / Entra: everything but the caller of a host that is not watched.
    let aad: Vec<(&[&str], f64)> = legacy_pairs
        .iter()
        .filter(|(k, _)| k[1] != "other")
        .cloned()
        .collect();
    expect_map(
        by(
            get(&r, "Legacy callers of Azure AD / Entra hosts", "B"),
            &sd,
        ),
        &aad,
        "AAD",
    );
    let aad_callers: BTreeSet<Vec<String>> = by(
        get(&r, "Legacy callers of Azure AD / Entra hosts", "A"),
        &sd,
    )
    .into_keys()
    .collect();
    assert_eq!(aad_callers.len(), aad.len(), "{aad_callers:?}");
    assert_eq!(single(&r, "Legacy sources", "A"), 7.0);
    assert_eq!(single(&r, "Legacy connections", "A"), 9.0);
    assert_eq!(
        single(&r, "Legacy connections to Azure AD / Entra", "A"),
        8.0
    );
    let share = single(&r, "Legacy share of hellos", "A");
    assert!((share - 900.0 / 14.0).abs() < 1e-9, "legacy share {share}");
    assert_eq!(single(&r, "3DES handshakes", "A"), 1.0);
    assert_eq!(single(&r, "Blocked connections", "A"), 1.0);
    let suites = by(
        get(&r, "Cipher suites in range", "A"),
        &["version", "cipher"],
    );
    assert_eq!(suites.values().sum::<f64>(), 11.0, "{suites:?}");
    let versions = |v: &str| {
        suites
            .iter()
            .filter(|(k, _)| k[0] == v)
            .map(|(_, n)| n)
            .sum::<f64>()
    };
    assert_eq!(
        [
            versions("TLS1.0"),
            versions("TLS1.1"),
            versions("TLS1.2"),
            versions("TLS1.3")
        ],
        [4.0, 1.0, 2.0, 4.0],
        "{suites:?}"
    );
    let des: Vec<_> = suites
        .iter()
        .filter(|(k, _)| k[1].contains("3DES"))
        .collect();
    assert_eq!(des.len(), 1, "{suites:?}");
    assert_eq!((des[0].0[0].as_str(), *des[0].1), ("TLS1.2", 1.0));
    expect_map(
        by(get(&r, "Actions in range", "A"), &["action"]),
        &[
            (&["passed"], 13.0),
            (&["blocked"], 1.0),
            (&["would_block"], 1.0),
        ],
        "actions",
    );
    expect_map(
        by(
            get(&r, "Blocked, upgraded and would-be callers", "A"),
            &["source", "destination", "action"],
        ),
        &[
            (&[S_3DES, login, "would_block"], 1.0),
            (&[S_BLOCKED, login, "blocked"], 1.0),
        ],
        "enforcement callers",
    );
    expect_map(
        by(
            get(&r, "Instances and versions", "A"),
            &["instance", "version"],
        ),
        &[
            (&[inst1.as_str(), env!("CARGO_PKG_VERSION")], 1.0),
            (&[inst2.as_str(), env!("CARGO_PKG_VERSION")], 1.0),
        ],
        "build info",
    );
    assert_eq!(single(&r, "Active tunnels", "A"), 0.0);
    assert_eq!(single(&r, "Instances up", "A"), 2.0);
    assert_eq!(single(&r, "Instances up", "B"), 2.0);
    assert_eq!(single(&r, "Label overflow", "A"), 0.0);
    assert_eq!(single(&r, "Upstream error ratio", "A"), 0.0);
    let offered: BTreeSet<String> = get(&r, "Offered TLS versions", "A")
        .iter()
        .map(|s| s.labels["version"].clone())
        .collect();
    assert_eq!(
        offered,
        ["SSL3.0", "TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3"]
            .map(String::from)
            .into(),
        "offered versions"
    );
    let latency = get(&r, "Upstream connect latency", "B");
    assert!(
        latency[0].value > 0.0 && latency[0].value < 1.0,
        "p99 {latency:?}"
    );

    // The variables filter: one source, one instance, one destination.
    let with = |name: &str, value: &str| -> Vec<(&str, String)> {
        real.iter()
            .map(|(n, v)| {
                (
                    *n,
                    if *n == name {
                        grafana_regex(&[value.to_string()])
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    };
    let one_source = evaluate(&prom, &qs, &with("source", S_MIXED), at);
    expect_map(
        by(get(&one_source, "Top legacy sources", "A"), &["source"]),
        &[(&[S_MIXED], 3.0)],
        "source=",
    );
    assert_eq!(
        by(get(&one_source, "Legacy callers now", "A"), &sd).len(),
        1
    );
    assert_eq!(single(&one_source, "Legacy share of hellos", "A"), 75.0);
    let one_instance = evaluate(&prom, &qs, &with("instance", &inst2), at);
    expect_map(
        by(get(&one_instance, "Top legacy sources", "A"), &["source"]),
        &[
            (&[S_MIXED], 1.0),
            (&[S_ONCE], 1.0),
            (&[S_OTHER], 1.0),
            (&[S_BLOCKED], 1.0),
        ],
        "instance=",
    );
    assert_eq!(single(&one_instance, "Instances up", "B"), 1.0);
    expect_map(
        by(get(&one_instance, "Actions in range", "A"), &["action"]),
        &[(&["passed"], 4.0), (&["blocked"], 1.0)],
        "instance= actions",
    );
    let other = evaluate(&prom, &qs, &with("destination", "other"), at);
    expect_map(
        by(get(&other, "Legacy callers now", "B"), &sd),
        &[(&[S_OTHER, "other"], 1.0)],
        "destination=",
    );
    assert!(get(&other, "Legacy callers of Azure AD / Entra hosts", "A").is_empty());

    // A range that starts after the curl and gnutls traffic: only the two raw hellos (two new
    // callers, each one hello) are in it; callers seen before it are not listed, and counters
    // that did not move count zero.
    let since_mid = format!("{}ms", ((at - mid) * 1000.0) as u64);
    let late = evaluate_range(&prom, &qs, &real, at, &since_mid);
    let late_pairs: BTreeSet<Vec<String>> = [S_ONCE, S_SSL3]
        .iter()
        .map(|s| vec![s.to_string(), LOGIN.to_string()])
        .collect();
    let got: BTreeSet<Vec<String>> = by(get(&late, "Legacy callers now", "A"), &sd)
        .into_keys()
        .collect();
    assert_eq!(got, late_pairs, "legacy callers in a short range");
    assert_eq!(single(&late, "Legacy sources", "A"), 2.0);
    assert_eq!(single(&late, "Legacy connections", "A"), 2.0);
    assert_eq!(single(&late, "Legacy share of hellos", "A"), 100.0);
    expect_map(
        by(get(&late, "Top legacy sources", "A"), &["source"]),
        &[(&[S_ONCE], 1.0), (&[S_SSL3], 1.0)],
        "top legacy sources in a short range",
    );
    expect_map(
        by(get(&late, "Actions in range", "A"), &["action"]),
        &[
            (&["passed"], 2.0),
            (&["blocked"], 0.0),
            (&["would_block"], 0.0),
        ],
        "actions in a short range",
    );
    assert!(get(&late, "Cipher suites in range", "A").is_empty());

    // The alert rules, loaded into the same Prometheus, evaluate cleanly and fire for
    // exactly the legacy callers (all new; the Azure AD ones recent).
    let firing = |name: &str| -> BTreeSet<Vec<String>> {
        let (_, v) = prom.get("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .map(|a| {
                sd.iter()
                    .map(|l| a["labels"][*l].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .collect()
    };
    let aad_keys: BTreeSet<Vec<String>> = aad
        .iter()
        .map(|(k, _)| k.iter().map(|s| s.to_string()).collect())
        .collect();
    wait_for("the legacy alerts to fire", 10, || {
        firing("TlspeekLegacyToAzureAD") == aad_keys && firing("TlspeekNewLegacySource") == want
    });
    let (_, rules) = prom.get("/api/v1/rules");
    let mut names = Vec::new();
    for g in rules["data"]["groups"].as_array().unwrap() {
        for rule in g["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            names.push(rule["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(names.len(), 12, "{names:?}");
    // The sign-in burst figure is recorded for the sources that reached an identity host.
    wait_for("the identity-connection figure to be recorded", 10, || {
        prom.query("source:tlspeek_identity_connections:increase5m", now())
            .is_ok_and(|v| !v.is_empty())
    });
    for quiet in [
        "TlspeekSignInBurst",
        "TlspeekRetiredEndpointCalled",
        "TlspeekServerRejectsCaller",
        "TlspeekDown",
        "TlspeekTargetsMissing",
        "TlspeekLabelOverflow",
        "TlspeekInventoryBehind",
        "TlspeekUpstreamErrorRatioHigh",
        "TlspeekBlockedConnectionsRising",
    ] {
        assert!(firing(quiet).is_empty(), "{quiet} fires");
    }
    eprintln!(
        "dashboards live test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(started.elapsed() < Duration::from_secs(50), "too slow");
}

/// TLS 1.0 to one name: accepted by one front end, rejected by another.
const S_FRONTS: &str = "127.0.0.31";
/// Azure AD Graph (retired), with TLS 1.3.
const S_GRAPH: &str = "127.0.0.32";
/// TLS 1.0, only ever rejected.
const S_REJECTED: &str = "127.0.0.33";

#[test]
fn retired_endpoint_and_front_end_panels_and_alerts_answer_on_a_real_prometheus() {
    if !require(&["prometheus", "curl", "openssl"]) {
        return;
    }
    let (_a, accepting) = openssl_server(&[]);
    let (_r, refusing) = openssl_server(&["-min_protocol", "TLSv1.2"]);
    let t = Tlspeek::start(&format!("allowed_ports = [{accepting}, {refusing}]\n"), "");
    let prom = prometheus_scraping(&[t.admin_port]);
    assert_eq!(curl_from(&t, S_FRONTS, accepting, LOGIN, TLS10), "200");
    assert_ne!(curl_from(&t, S_FRONTS, refusing, LOGIN, TLS10), "200");
    assert_ne!(curl_from(&t, S_FRONTS, refusing, LOGIN, TLS10), "200");
    assert_eq!(
        curl_from(&t, S_GRAPH, accepting, "graph.windows.net", TLS13),
        "200"
    );
    // A source only rejected is not in the "some accept, some reject" table.
    assert_ne!(curl_from(&t, S_REJECTED, refusing, LOGIN, TLS10), "200");
    wait_for("Prometheus to scrape the current values", 20, || {
        [
            ("tlspeek_server_rejections_total", 3.0),
            ("tlspeek_deprecated_endpoint_connections_total", 1.0),
            ("tlspeek_handshakes_total", 2.0),
        ]
        .iter()
        .all(|(m, v)| {
            prom.query(&format!("sum({m})"), now())
                .is_ok_and(|r| r.len() == 1 && r[0].value == *v)
        })
    });
    std::thread::sleep(Duration::from_millis(2500));
    let at = now();
    let qs: Vec<Query> = queries(&dashboard())
        .into_iter()
        .filter(|q| OWN_TRAFFIC.contains(&q.panel.as_str()))
        .collect();
    assert_eq!(qs.len(), OWN_TRAFFIC.len());
    let all: Vec<(&str, String)> = ["instance", "source", "destination"]
        .iter()
        .map(|n| (*n, ".*".to_string()))
        .collect();
    let r = evaluate(&prom, &qs, &all, at);
    expect_map(
        by(
            get(&r, "Callers of retired endpoints", "A"),
            &["source", "destination"],
        ),
        &[(&[S_GRAPH, "graph.windows.net"], 1.0)],
        "retired endpoints",
    );
    expect_map(
        by(
            get(&r, "Rejected by some front ends, accepted by others", "A"),
            &["source", "destination", "alert"],
        ),
        &[(&[S_FRONTS, LOGIN, "protocol_version"], 2.0)],
        "front ends",
    );
    // One source selected: the other's rows go.
    let one = evaluate(
        &prom,
        &qs,
        &[
            ("instance", ".*".into()),
            ("source", S_GRAPH.into()),
            ("destination", ".*".into()),
        ],
        at,
    );
    assert!(get(&one, "Rejected by some front ends, accepted by others", "A").is_empty());

    // The alerts fire for exactly these callers.
    let firing = |name: &str| -> BTreeSet<(String, String)> {
        let (_, v) = prom.get("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .map(|a| {
                (
                    a["labels"]["source"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    a["labels"]["destination"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    };
    let pair = |s: &str, d: &str| BTreeSet::from([(s.to_string(), d.to_string())]);
    let rejected = BTreeSet::from([
        (S_FRONTS.to_string(), LOGIN.to_string()),
        (S_REJECTED.to_string(), LOGIN.to_string()),
    ]);
    wait_for("the endpoint alerts to fire", 10, || {
        firing("TlspeekRetiredEndpointCalled") == pair(S_GRAPH, "graph.windows.net")
            && firing("TlspeekServerRejectsCaller") == rejected
    });
}
