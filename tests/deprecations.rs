//! Retired endpoints ([[deprecations]]): a caller of one is counted per source and
//! destination, whatever TLS it speaks, and `/legacy` and `tlspeek report` say that it
//! calls a retired endpoint and what replaces it; a caller of a current endpoint is not.
//! Entries with paths count where the path is seen: plain HTTP and upgrade mode. Real curl
//! through the proxy to real servers on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use common::*;
use std::time::{Duration, Instant};

/// `/legacy` once it has `n` rows.
fn legacy_rows(t: &Tlspeek, n: usize) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = t.admin_get("/legacy");
        assert_eq!(status, 200, "{body}");
        let rows: Vec<Value> = serde_json::from_str(&body).unwrap();
        if rows.len() >= n {
            return rows;
        }
        assert!(Instant::now() < end, "want {n} rows: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn row_of<'a>(rows: &'a [Value], destination: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["destination"] == destination)
        .unwrap_or_else(|| panic!("no row for {destination}: {rows:?}"))
}

#[test]
fn callers_of_retired_endpoints_are_counted_and_watched() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    // A user's own entry is added to the shipped ones.
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        "[[deprecations]]\nhosts = [\"legacy-sts.corp.example\"]\ndate = \"2026-06-30\"\n\
         error = \"WS-Trust 2005 is off\"\nreplacement = \"login.microsoftonline.com\"\n",
    );
    // Azure AD Graph, retired (shipped entry), with TLS 1.3: retired is not about TLS.
    assert_eq!(
        curl_via(t.proxy_port, up, "graph.windows.net", &[]).0,
        "200"
    );
    // The user's entry, with a legacy client; then a current endpoint.
    let mut legacy = vec!["--tlsv1.0"];
    legacy.extend_from_slice(TLS10_ONLY);
    assert_eq!(
        curl_via(t.proxy_port, up, "legacy-sts.corp.example", &legacy).0,
        "200"
    );
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &[]).0, "200");
    t.wait_metric(
        "tlspeek_client_hellos_total",
        &[],
        Duration::from_secs(10),
        |v| v >= 3.0,
    );
    let counted = |destination: &str| {
        t.metric(
            "tlspeek_deprecated_endpoint_connections_total",
            &[("source", "127.0.0.1"), ("destination", destination)],
        )
    };
    assert_eq!(counted("graph.windows.net"), 1.0);
    // The user's host is watched implicitly: its own label, not "other".
    assert_eq!(counted("legacy-sts.corp.example"), 1.0);
    assert_eq!(counted(LOGIN), 0.0);
    assert_eq!(
        t.metric("tlspeek_deprecated_endpoint_connections_total", &[]),
        2.0
    );
    assert!(
        t.stderr().contains("a caller of a retired endpoint"),
        "{}",
        t.stderr()
    );
    // /legacy says which rows call a retired endpoint, with the replacement.
    let rows = legacy_rows(&t, 3);
    let graph = &row_of(&rows, "graph.windows.net")["retired_endpoint"];
    assert_eq!(graph["since"], "2025-08-31", "{graph}");
    assert_eq!(
        graph["replacement"],
        "graph.microsoft.com (Microsoft Graph)"
    );
    assert_eq!(
        row_of(&rows, "legacy-sts.corp.example")["retired_endpoint"]["replacement"],
        "login.microsoftonline.com"
    );
    assert!(row_of(&rows, LOGIN)["retired_endpoint"].is_null());
    // The report (embedded default config): legacy callers and callers of retired
    // endpoints, even with TLS 1.3; not the modern caller of a current endpoint.
    let db = t.inventory_path();
    let (code, out, err) = tlspeek_cmd(&["report", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("    calls a retired endpoint: since 2025-08-31, callers get Azure AD Graph is retired: its requests no longer work; use graph.microsoft.com (Microsoft Graph)"),
        "{out}"
    );
    assert!(out.contains("legacy-sts.corp.example"), "{out}");
    assert!(!out.contains(LOGIN), "{out}");
}

#[test]
fn entries_with_paths_count_requests_under_them_in_plain_http_and_upgrade_mode() {
    if !require(&["curl", "openssl", "python3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Plain HTTP to a name (localhost resolves to 127.0.0.1 here).
    let (_origin, http) = http_origin(dir.path());
    // Upgrade mode: a TLS 1.0 client, re-originated to a TLS 1.2 server whose
    // certificate names the host.
    let host = "sts.corp.example";
    let (upca, leaf, leaf_key) = ca_and_leaf(dir.path(), host);
    let (_modern, tls) = openssl_server_with(&leaf, &leaf_key, &["-min_protocol", "TLSv1.2"]);
    let ca = proxy_ca(dir.path(), &["--permit", "corp.example"]);
    let entries = format!(
        "[[deprecations]]\nhosts = [\"localhost\", \"{host}\"]\npaths = [\"/adfs/services/trust/2005/\"]\n\
         date = \"2026-06-30\"\nerror = \"WS-Trust 2005 is off\"\nreplacement = \"/adfs/services/trust/13/\"\n\
         [[rules]]\nname = \"upgrade-sts\"\ndestinations = [\"{host}\"]\naction = \"upgrade\"\n"
    );
    let t = Tlspeek::start(
        &format!("allowed_ports = [{tls}]\nallowed_http_ports = [{http}]\n"),
        &format!("{}\n{entries}", upgrade_config(&ca, &upca, "", "")),
    );
    let plain = |path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-m",
                "10",
                "-x",
                &format!("http://127.0.0.1:{}", t.proxy_port),
            ])
            .arg(format!("http://localhost:{http}{path}"))
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(plain("/adfs/services/trust/2005/usernamemixed"), "404");
    assert_eq!(plain("/adfs/services/trust/13/usernamemixed"), "404");
    let upgraded = |path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-m",
                "10",
                "-x",
                &format!("http://127.0.0.1:{}", t.proxy_port),
            ])
            .args(["--connect-to", &format!("{host}:443:127.0.0.1:{tls}")])
            .arg("--cacert")
            .arg(&ca.0)
            .args(TLS10_ONLY)
            .arg(format!("https://{host}{path}"))
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = upgraded("/adfs/services/trust/2005/windowstransport");
    assert_eq!(code, "200", "{err}\n{}", t.stderr());
    let counted = |destination: &str| {
        t.metric(
            "tlspeek_deprecated_endpoint_connections_total",
            &[("source", "127.0.0.1"), ("destination", destination)],
        )
    };
    t.wait_metric(
        "tlspeek_deprecated_endpoint_connections_total",
        &[],
        Duration::from_secs(10),
        |v| v >= 2.0,
    );
    assert_eq!(counted("localhost"), 1.0, "only the path under the entry");
    assert_eq!(counted(host), 1.0);
    // The upgraded caller's row keeps the path, and /legacy names the entry by it.
    let rows = legacy_rows(&t, 1);
    let row = row_of(&rows, host);
    assert_eq!(
        row["retired_path"], "/adfs/services/trust/2005/windowstransport",
        "{row}"
    );
    assert_eq!(
        row["retired_endpoint"]["replacement"], "/adfs/services/trust/13/",
        "{row}"
    );
    // A current path through the same upgrade is not counted.
    let (code, err) = upgraded("/adfs/services/trust/13/windowstransport");
    assert_eq!(code, "200", "{err}");
    t.wait_events("two upgraded connections", |e| {
        e.iter().filter(|x| x["action"] == "upgraded").count() >= 2
    });
    assert_eq!(counted(host), 1.0);
}
