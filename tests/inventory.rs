//! The legacy-caller inventory: written from real traffic, survives kill -9, served at
//! /legacy and /legacy.csv with filters, printed by `tlspeek report` (table, CSV, JSON,
//! merged), and a database that cannot be written does not stop the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn report(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    tlspeek_cmd(&all)
}

fn legacy_json(t: &Tlspeek, query: &str) -> Vec<Value> {
    let (status, body) = t.admin_get(&format!("/legacy{query}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<Value>>(&body).unwrap()
}

/// Waits until /legacy has `n` rows (the writer flushes every flush_interval).
fn wait_rows(t: &Tlspeek, n: usize) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = legacy_json(t, "");
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < end,
            "inventory has {} rows, want {n}: {}",
            rows.len(),
            t.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const OLD10: &[&str] = &[
    "--tlsv1.0",
    "--tls-max",
    "1.0",
    "--ciphers",
    "DEFAULT:@SECLEVEL=0",
];

#[test]
fn inventory_from_real_clients_survives_kill_9_and_is_reported() {
    if !require(&["curl", "openssl", "python3"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let mut t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        "[[sources]]\ncidr = \"127.0.0.6/32\"\nname = \"build-agents\"\n",
    );
    let mut legacy_args = vec!["--interface", "127.0.0.5"];
    legacy_args.extend_from_slice(OLD10);
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &legacy_args).0, "200");
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &legacy_args).0, "200");
    assert_eq!(
        curl_via(
            t.proxy_port,
            up,
            LOGIN,
            &["--interface", "127.0.0.6", "--tlsv1.3"]
        )
        .0,
        "200"
    );
    // A modern caller of a destination that is not watched is not kept.
    assert_eq!(
        curl_via(
            t.proxy_port,
            up,
            "example.com",
            &["--interface", "127.0.0.6"]
        )
        .0,
        "200"
    );
    // Python's default client (OpenSSL 3) is named too.
    let py = format!(
        "import socket,ssl\nc=ssl.create_default_context();c.check_hostname=False;c.verify_mode=ssl.CERT_NONE\n\
         s=socket.create_connection(('127.0.0.1',{p}));s.sendall(b'CONNECT 127.0.0.1:{up} HTTP/1.1\\r\\n\\r\\n')\n\
         h=b''\nwhile not h.endswith(b'\\r\\n\\r\\n'): h+=s.recv(1)\n\
         t=c.wrap_socket(s,server_hostname='{LOGIN}');t.close()\n",
        p = t.proxy_port
    );
    let out = Command::new("python3").args(["-c", &py]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows = wait_rows(&t, 3);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let legacy: Vec<&Value> = rows.iter().filter(|r| r["legacy"] == true).collect();
    assert_eq!(legacy.len(), 1);
    let l = legacy[0];
    assert_eq!(l["source_ip"], "127.0.0.5");
    assert_eq!(l["destination"], LOGIN);
    assert_eq!(l["connections"], 2);
    assert_eq!(l["versions_offered"], serde_json::json!(["TLS1.0"]));
    assert_eq!(l["versions_negotiated"], serde_json::json!(["TLS1.0"]));
    assert_eq!(
        l["legacy_reasons"],
        serde_json::json!(["negotiated_tls10", "max_version_below_tls12"])
    );
    assert_eq!(l["software"], "curl (OpenSSL 3.0)");
    assert_eq!(l["software_confidence"], "exact");
    assert!(l["fix"].as_str().unwrap().contains("--tls-max"), "{l}");
    assert_eq!(l["last_sni"], LOGIN);
    let named = rows.iter().find(|r| r["source_ip"] == "127.0.0.6").unwrap();
    assert_eq!(named["source"], "build-agents");
    assert!(
        rows.iter()
            .any(|r| r["software"] == "Python 3 ssl (OpenSSL 3.0)"),
        "{rows:#?}"
    );

    // Filters.
    assert_eq!(legacy_json(&t, "?legacy=true").len(), 1);
    assert_eq!(legacy_json(&t, "?legacy=false").len(), 2);
    assert_eq!(
        legacy_json(&t, "?destination=LOGIN.microsoftonline.com").len(),
        3
    );
    assert_eq!(legacy_json(&t, "?destination=example.com").len(), 0);
    assert_eq!(legacy_json(&t, "?since=1h").len(), 3);
    assert_eq!(legacy_json(&t, "?since=2099-01-01").len(), 0);
    assert_eq!(t.admin_get("/legacy?since=yesterday").0, 400);
    let (status, csv) = t.admin_get("/legacy.csv?legacy=true");
    assert_eq!(status, 200);
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("last_seen,first_seen,source_ip,source,")
    );
    let row = lines.next().unwrap();
    assert!(
        row.contains(",\"127.0.0.5\",") && row.contains("curl (OpenSSL 3.0)"),
        "{row}"
    );
    assert!(lines.next().is_none());

    // kill -9 after the flush: nothing is lost.
    t.kill9();
    let db = t.inventory_path();
    let (code, out, err) = report(&["--db", db.to_str().unwrap(), "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "header + the legacy row: {out}");
    t.restart();
    assert_eq!(wait_rows(&t, 3).len(), 3);
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &legacy_args).0, "200");
    let end = Instant::now() + Duration::from_secs(10);
    while legacy_json(&t, "?legacy=true")[0]["connections"] != 3 {
        assert!(Instant::now() < end, "the row after restart did not grow");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The report: table (default), JSON, --all.
    let (code, table, _) = report(&["--db", db.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        table.contains("127.0.0.5") && table.contains("negotiated_tls10"),
        "{table}"
    );
    assert!(table.contains("fix: "), "{table}");
    assert!(!table.contains("127.0.0.6"), "--all not given: {table}");
    let (_, json, _) = report(&["--db", db.to_str().unwrap(), "--format", "json", "--all"]);
    let v: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(v.len(), 3);
}

#[test]
fn report_merges_instances_and_says_when_there_is_nothing() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let a = Tlspeek::start(
        &format!("allowed_ports = [{up}]\nshutdown_grace = \"1s\"\n"),
        "",
    );
    let b = Tlspeek::start(
        &format!("allowed_ports = [{up}]\nshutdown_grace = \"1s\"\n"),
        "",
    );
    for t in [&a, &b] {
        assert_eq!(curl_via(t.proxy_port, up, LOGIN, OLD10).0, "200");
    }
    wait_rows(&a, 1);
    wait_rows(&b, 1);
    let (da, db) = (a.inventory_path(), b.inventory_path());
    let (code, out, _) = report(&[
        "--db",
        da.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v.len(),
        1,
        "same source × destination × JA4 merges into one row"
    );
    assert_eq!(v[0]["connections"], 2);

    // An empty result: exit 0 and say since when.
    let (code, out, _) = report(&[
        "--db",
        da.to_str().unwrap(),
        "--destination",
        "nothing.example",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("no legacy callers seen since 20"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[inventory]\npath = \"{}\"\n", da.display())).unwrap();
    let (code, out, _) = report(&["--config", cfg.to_str().unwrap(), "--format", "csv"]);
    assert_eq!(code, 0);
    assert!(out.contains("127.0.0.1"), "{out}");
    let (code, _, err) = report(&["--db", "/nonexistent/inv.sqlite"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no inventory at /nonexistent/inv.sqlite"),
        "{err}"
    );
}

#[test]
fn an_unwritable_inventory_does_not_stop_the_proxy() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let dir = tempfile::tempdir().unwrap();
    // A path inside a file (not a directory): SQLite cannot create it, even as root.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let db = blocker.join("inventory.sqlite");
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        &format!(
            "[inventory]\npath = \"{}\"\nflush_interval = \"200ms\"\n",
            db.display()
        ),
    );
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, OLD10).0, "200");
    let end = Instant::now() + Duration::from_secs(10);
    while sample(&t.metrics(), "tlspeek_inventory_errors_total", &[]).unwrap_or(0.0) < 2.0 {
        assert!(
            Instant::now() < end,
            "no inventory error counted: {}",
            t.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        t.stderr().contains("cannot write the inventory"),
        "{}",
        t.stderr()
    );
    // Still proxying, still classifying.
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, OLD10).0, "200");
    assert_eq!(
        sample(
            &t.metrics(),
            "tlspeek_client_hellos_total",
            &[("legacy", "true")]
        ),
        Some(2.0)
    );
    assert_eq!(
        t.admin_get("/legacy").0,
        200,
        "an inventory that never got written reads as empty"
    );
}

/// SIGTERM writes the rows the writer still holds: with `flush_interval = "1h"` nothing is
/// written before the shutdown, so the row in the file after exit is the shutdown's.
#[test]
fn sigterm_writes_the_rows_still_held() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let mut t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\nshutdown_grace = \"1s\"\n"),
        "[inventory]\nflush_interval = \"1h\"\n",
    );
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, OLD10).0, "200");
    t.wait_events("the legacy connection", |ev| !ev.is_empty());
    assert!(
        legacy_json(&t, "").is_empty(),
        "written before the shutdown: the test would prove nothing"
    );
    let status = t.terminate(Duration::from_secs(15)).expect("tlspeek exits");
    assert!(status.success(), "{status:?}");
    let db = t.inventory_path();
    let (code, out, err) = report(&["--db", db.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v.len(),
        1,
        "the held row was lost at shutdown: {out}\n{}",
        t.stderr()
    );
    assert_eq!(v[0]["connections"], 1);
}
