//! Naming the software behind a legacy caller, end to end: real clients through a real
//! tlspeek. A Windows 7 host fetches a CRL over plain HTTP (`Microsoft-CryptoAPI/6.1`),
//! then speaks TLS 1.0 with curl (OpenSSL) and with a replayed Windows 7 SChannel hello.
//! The inventory names each hello's TLS library, learns the host's OS from its
//! User-Agent, and writes each library's fix (the Windows 7 fix for SChannel only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Internet Explorer on Windows 7: TLS 1.0 at most, its cipher order, and server_name,
/// status_request, supported_groups, ec_point_formats, renegotiation_info.
fn schannel_win7_hello(name: &str) -> Vec<u8> {
    let exts = [
        (0x0000, sni_body(name)),
        (0x0005, vec![1, 0, 0, 0, 0]),
        (0x000a, vec![0, 6, 0, 0x17, 0, 0x18, 0, 0x19]),
        (0x000b, vec![1, 0]),
        (0xff01, vec![0]),
    ];
    let ciphers = [
        0x002f, 0x0035, 0x0005, 0x000a, 0xc009, 0xc00a, 0xc013, 0xc014, 0x0032, 0x0038, 0x0013,
        0x0004,
    ];
    client_hello_record(0x0301, &ciphers, &exts)
}

fn report_rows(db: &std::path::Path, format: &str) -> String {
    let out = Command::new(exe())
        .args(["report", "--db"])
        .arg(db)
        .args(["--all", "--format", format])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_windows_7_host_is_named_by_its_crl_fetch_and_each_hello_by_its_library() {
    if !require(&["curl", "openssl", "python3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.crl"), b"crl\n").unwrap();
    let (_origin, http_port) = http_origin(dir.path());
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\nallowed_http_ports = [{http_port}]\n"),
        "",
    );
    let crl = curl_http_from(
        t.proxy_port,
        "127.0.0.5",
        "Microsoft-CryptoAPI/6.1",
        &format!("http://127.0.0.1:{http_port}/root.crl"),
    );
    assert_eq!(crl, "200");
    let mut args = vec!["--interface", "127.0.0.5"];
    args.extend_from_slice(TLS10_ONLY);
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &args).0, "200");
    // The replayed SChannel hello, from the same host.
    let (mut s, status) =
        connect_tunnel_from("127.0.0.5", t.proxy_port, &format!("127.0.0.1:{up}"));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    s.write_all(&schannel_win7_hello(LOGIN)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read(&mut [0u8; 4096]);
    drop(s);

    let events = t.wait_events("both hellos", |ev| {
        ev.iter()
            .filter(|e| e["kind"] == "tls" && e["source_ip"] == "127.0.0.5")
            .count()
            >= 2
    });
    let tls: Vec<&Value> = events.iter().filter(|e| e["kind"] == "tls").collect();
    assert!(
        tls.iter().all(|e| e.get("tls_library").is_some()),
        "{tls:#?}"
    );
    let libs: Vec<&str> = tls
        .iter()
        .filter_map(|e| e["tls_library"].as_str())
        .collect();
    assert!(
        libs.contains(&"openssl") && libs.contains(&"schannel"),
        "{libs:?}"
    );

    let db = t.inventory_path();
    let end = Instant::now() + Duration::from_secs(10);
    let rows: Vec<Value> = loop {
        let rows: Vec<Value> = serde_json::from_str(&report_rows(&db, "json")).unwrap_or_default();
        let named = rows
            .iter()
            .filter(|r| r["source_ip"] == "127.0.0.5")
            .count();
        if named >= 2 && rows.iter().any(|r| !r["source_os"].is_null()) {
            break rows;
        }
        assert!(Instant::now() < end, "rows: {rows:#?}\n{}", t.stderr());
        std::thread::sleep(Duration::from_millis(200));
    };
    let row = |lib: &str| {
        rows.iter()
            .find(|r| r["source_ip"] == "127.0.0.5" && r["tls_library"] == lib)
            .unwrap_or_else(|| panic!("no {lib} row: {rows:#?}"))
    };
    let ossl = row("openssl");
    let fix = ossl["fix"].as_str().unwrap();
    assert!(
        !fix.contains("SchUseStrongCrypto") && !fix.contains("KB3140245"),
        "{fix}"
    );
    assert_eq!(
        ossl["source_os"]["name"], "Windows 7 / Server 2008 R2",
        "{ossl:#}"
    );
    assert_eq!(ossl["source_os"]["user_agent"], "Microsoft-CryptoAPI/6.1");
    assert!(
        ossl["source_os"]["seen"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z'))
    );
    let sch = row("schannel");
    assert!(
        sch["fix"].as_str().unwrap().contains("KB3140245"),
        "{sch:#}"
    );
    assert!(
        ["structural", "heuristic", "exact"]
            .contains(&sch["software_confidence"].as_str().unwrap())
    );
    // The same in CSV and on /legacy.
    let csv = report_rows(&db, "csv");
    let header = csv.lines().next().unwrap();
    for col in [
        "tls_library",
        "source_os",
        "source_os_user_agent",
        "source_os_seen",
        "source_runtime",
        "source_runtime_user_agent",
        "source_runtime_seen",
    ] {
        assert!(
            header.contains(&format!("\"{col}\"")) || header.split(',').any(|c| c == col),
            "{col}: {header}"
        );
    }
    let (status, body) = t.admin_get("/legacy");
    assert_eq!(status, 200);
    assert!(
        body.contains("\"tls_library\"") && body.contains("Microsoft-CryptoAPI/6.1"),
        "{body}"
    );
}

#[test]
fn an_inventory_of_the_previous_version_is_reported_with_new_fields() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.sqlite");
    let conn = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3\nc=sqlite3.connect({:?})\n\
             c.executescript('''CREATE TABLE callers (source_ip TEXT NOT NULL, destination TEXT NOT NULL, ja4 TEXT NOT NULL, source TEXT NOT NULL, source_name TEXT, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, last_legacy_seen INTEGER, connections INTEGER NOT NULL, legacy_connections INTEGER NOT NULL, legacy INTEGER NOT NULL, versions_offered TEXT NOT NULL, versions_negotiated TEXT NOT NULL, ciphers_negotiated TEXT NOT NULL, legacy_reasons TEXT NOT NULL, ja3_hash TEXT NOT NULL, software TEXT NOT NULL, software_confidence TEXT NOT NULL, fix TEXT NOT NULL, last_sni TEXT, user_agent TEXT, PRIMARY KEY (source_ip, destination, ja4));\n\
             CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); INSERT INTO meta VALUES ('schema_version','1');\n\
             INSERT INTO callers VALUES ('10.1.2.3','login.microsoftonline.com','j','10.1.2.3',NULL,1700000000,1700000000,1700000000,1,1,1,'TLS1.0','','','max_version_below_tls12','h','unknown','unknown','generic',NULL,NULL);''')\nc.commit()\n",
            db.display().to_string()
        ))
        .status()
        .unwrap();
    assert!(conn.success());
    let rows: Vec<Value> = serde_json::from_str(&report_rows(&db, "json")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["tls_library"], "unknown");
    assert!(rows[0]["source_os"].is_null() && rows[0]["source_runtime"].is_null());
}
