//! What the server answered, per caller: one TLS 1.0 client (real curl) calls one name
//! whose three "front ends" (127.0.0.1, .2 and .3, real servers) answer differently — one
//! accepts TLS 1.0, one refuses it with an alert (openssl s_server -min_protocol TLSv1.2),
//! one resets the connection after reading the hello. The inventory keeps the caller's
//! accepted and rejected counts, the last alert and each address's counts; `/legacy`,
//! `tlspeek report` and `tlspeek_server_rejections_total` say so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;

/// A front end on 127.0.0.3 that reads the first bytes (the hello) of `n` connections and
/// resets each (SO_LINGER 0).
fn resetting_front_end(n: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.3:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut c, _)) = l.accept() else { return };
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            socket2::SockRef::from(&c)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    });
    port
}

/// curl with TLS 1.0 only to LOGIN, sent to `ip:port` through the proxy.
fn call(proxy: u16, ip: &str, port: u16) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sSk",
            "-m",
            "10",
            "-x",
            &format!("http://127.0.0.1:{proxy}"),
        ])
        .args(["--connect-to", &format!("{LOGIN}:443:{ip}:{port}")])
        .args(TLS10_ONLY)
        .arg(format!("https://{LOGIN}/"))
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_caller_rejected_by_some_front_ends_and_accepted_by_others() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_a, accepting) = openssl_server_on([127, 0, 0, 1], &[]);
    let (_b, refusing) = openssl_server_on([127, 0, 0, 2], &["-min_protocol", "TLSv1.2"]);
    let resetting = resetting_front_end(1);
    let t = Tlspeek::start(
        &format!("allowed_ports = [{accepting}, {refusing}, {resetting}]\n"),
        "",
    );
    assert_eq!(call(t.proxy_port, "127.0.0.1", accepting), "200");
    assert_eq!(call(t.proxy_port, "127.0.0.1", accepting), "200");
    assert_eq!(call(t.proxy_port, "127.0.0.2", refusing), "000");
    assert_eq!(call(t.proxy_port, "127.0.0.3", resetting), "000");

    let rejections = |alert: &str| {
        t.metric(
            "tlspeek_server_rejections_total",
            &[
                ("source", "127.0.0.1"),
                ("destination", LOGIN),
                ("alert", alert),
            ],
        )
    };
    t.wait_metric(
        "tlspeek_server_rejections_total",
        &[],
        Duration::from_secs(10),
        |v| v >= 2.0,
    );
    assert_eq!(rejections("protocol_version"), 1.0);
    assert_eq!(rejections("reset"), 1.0);
    assert_eq!(t.metric("tlspeek_server_rejections_total", &[]), 2.0);

    // The inventory: one row for the caller, its answers per front end.
    let end = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let (status, body) = t.admin_get("/legacy");
        assert_eq!(status, 200, "{body}");
        let rows: Vec<Value> = serde_json::from_str(&body).unwrap();
        let done = rows.iter().find(|r| {
            r["destination"] == LOGIN
                && r["server_accepted"].as_u64().unwrap_or(0)
                    + r["server_rejected"].as_u64().unwrap_or(0)
                    >= 4
        });
        if let Some(r) = done {
            break r.clone();
        }
        assert!(Instant::now() < end, "no row with 4 answers: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row["connections"], 4, "{row}");
    assert_eq!(row["server_accepted"], 2, "{row}");
    assert_eq!(row["server_rejected"], 2, "{row}");
    assert_eq!(
        row["last_server_alert"], "reset",
        "the last rejection: {row}"
    );
    let servers = row["servers"].as_array().unwrap();
    let of = |ip: &str| {
        let s = servers
            .iter()
            .find(|s| s["address"] == ip)
            .unwrap_or_else(|| panic!("{ip} missing: {row}"));
        (
            s["accepted"].as_u64().unwrap(),
            s["rejected"].as_u64().unwrap(),
        )
    };
    assert_eq!(servers.len(), 3, "{row}");
    assert_eq!(of("127.0.0.1"), (2, 0));
    assert_eq!(of("127.0.0.2"), (0, 1));
    assert_eq!(of("127.0.0.3"), (0, 1));

    // The report says it in words; the CSV has the per-address counts.
    let db = t.inventory_path();
    let (code, out, err) = tlspeek_cmd(&["report", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("    server: accepted 2, rejected 2 (last reset, 20"),
        "{out}"
    );
    assert!(
        out.contains("rejected by 2 of 3 front ends, accepted by 1"),
        "{out}"
    );
    let (code, csv, err) =
        tlspeek_cmd(&["report", "--db", db.to_str().unwrap(), "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let line = csv.lines().nth(1).unwrap();
    let servers_col = header.iter().position(|h| *h == "servers").unwrap();
    let mut cell: Vec<&str> = line
        .split("\",\"")
        .nth(servers_col)
        .unwrap()
        .split(';')
        .collect();
    cell.sort_unstable();
    assert_eq!(
        cell,
        ["127.0.0.1 2/0", "127.0.0.2 0/1", "127.0.0.3 0/1"],
        "{line}"
    );
}
