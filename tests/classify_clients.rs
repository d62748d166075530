//! Real clients of every TLS version through tlspeek to real local servers: each request
//! succeeds, and /metrics and the event line show the right version, legacy flag, reasons
//! and source. Hello counters move when the hello is parsed, not when the tunnel closes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn hello_count(t: &Tlspeek, labels: &[(&str, &str)]) -> f64 {
    sample(&t.metrics(), "tlspeek_client_hellos_total", labels).unwrap_or(0.0)
}

#[test]
fn curl_of_every_version_is_classified() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), "");
    let cases: &[(&str, bool, &[&str])] = &[
        (
            "TLS1.0",
            true,
            &[
                "--tlsv1.0",
                "--tls-max",
                "1.0",
                "--ciphers",
                "DEFAULT:@SECLEVEL=0",
            ],
        ),
        (
            "TLS1.1",
            true,
            &[
                "--tlsv1.1",
                "--tls-max",
                "1.1",
                "--ciphers",
                "DEFAULT:@SECLEVEL=0",
            ],
        ),
        ("TLS1.2", false, &["--tlsv1.2", "--tls-max", "1.2"]),
        ("TLS1.3", false, &["--tlsv1.3"]),
    ];
    for (version, legacy, args) in cases {
        let (code, err) = curl_via(t.proxy_port, up, LOGIN, args);
        assert_eq!(code, "200", "{version}: {err}");
        let legacy_s = if *legacy { "true" } else { "false" };
        let labels = [
            ("source", "127.0.0.1"),
            ("destination", LOGIN),
            ("version", *version),
            ("legacy", legacy_s),
        ];
        assert_eq!(hello_count(&t, &labels), 1.0, "{version}\n{}", t.metrics());
    }
    let ev = t.wait_events("4 TLS events", |e| e.len() >= 4);
    for (e, (version, legacy, _)) in ev.iter().zip(cases) {
        assert_eq!(e["kind"], "tls");
        assert_eq!(e["max_version"], *version, "{e}");
        assert_eq!(e["legacy"], *legacy, "{e}");
        assert_eq!(e["sni"], LOGIN);
        assert_eq!(e["source"], "127.0.0.1");
        assert_eq!(e["target_host"], "127.0.0.1");
        assert_eq!(e["outcome"], "closed");
        assert_eq!(e["action"], "passed");
        assert!(e["bytes_down"].as_u64().unwrap() > 500, "{e}");
        let ja3_version = match *version {
            "TLS1.0" => "769,",
            "TLS1.1" => "770,",
            _ => "771,",
        };
        assert!(e["ja3"].as_str().unwrap().starts_with(ja3_version), "{e}");
        assert_eq!(e["ja3_hash"].as_str().unwrap().len(), 32);
        let ja4 = e["ja4"].as_str().unwrap();
        assert!(ja4.starts_with(&format!("t1{}d", &version[5..])), "{ja4}");
        assert!(
            e["cipher_suites"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c.as_str().unwrap().len() == 6)
        );
        if *legacy {
            // What was negotiated first, then what the hello offered.
            let negotiated = if *version == "TLS1.0" {
                "negotiated_tls10"
            } else {
                "negotiated_tls11"
            };
            assert_eq!(
                e["legacy_reasons"],
                serde_json::json!([negotiated, "max_version_below_tls12"]),
                "{e}"
            );
            assert!(
                e["supported_versions"].as_array().unwrap().is_empty(),
                "{e}"
            );
        } else {
            assert!(e["legacy_reasons"].as_array().unwrap().is_empty());
        }
    }
    // TLS 1.3 clients list their versions; record and legacy client_version stay old.
    assert_eq!(ev[3]["client_version"], "TLS1.2");
    assert_eq!(ev[3]["supported_versions"][0], "TLS1.3");
    let m = t.metrics();
    assert_eq!(
        sample(
            &m,
            "tlspeek_legacy_connections_total",
            &[
                ("source", "127.0.0.1"),
                ("reason", "max_version_below_tls12")
            ]
        ),
        Some(2.0)
    );
    assert!(
        sample(
            &m,
            "tlspeek_source_last_legacy_timestamp_seconds",
            &[("source", "127.0.0.1"), ("destination", LOGIN)]
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        sample(&m, "tlspeek_actions_total", &[("action", "passed")]),
        Some(4.0)
    );
    // 4 tunnels, plus the harness's port probe(s), which connect and close without a byte.
    assert!(sample(&m, "tlspeek_connections_total", &[("outcome", "closed")]).unwrap() >= 4.0);
    assert!(sample(&m, "tlspeek_upstream_connect_seconds_count", &[]).unwrap() >= 4.0);
}

#[test]
fn openssl_s_client_tls1_and_tls1_3() {
    if !require(&["openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), "");
    for (flags, version, legacy) in [
        (
            &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"][..],
            "TLS1.0",
            "true",
        ),
        (&["-tls1_3"][..], "TLS1.3", "false"),
    ] {
        let out = s_client_get(t.proxy_port, up, flags);
        assert!(out.contains("HTTP/1.0 200 ok"), "{version}: {out}");
        let labels = [
            ("version", version),
            ("legacy", legacy),
            ("destination", LOGIN),
        ];
        assert_eq!(hello_count(&t, &labels), 1.0, "{version}");
    }
}

/// gnutls-cli (3DES only) → socat's CONNECT address → tlspeek → gnutls-serv.
#[test]
fn three_des_only_client_through_socat() {
    if !require(&["gnutls-cli", "gnutls-serv", "socat"]) {
        return;
    }
    let (_srv, up) = gnutls_server("NORMAL:+3DES-CBC:+VERS-TLS1.0:+VERS-TLS1.1");
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), "");
    let out = gnutls_via_proxy(
        t.proxy_port,
        up,
        "NORMAL:-CIPHER-ALL:+3DES-CBC:-VERS-TLS1.3",
        LOGIN,
    );
    assert!(
        out.contains("Handshake was completed") && out.contains("3DES"),
        "{out}"
    );
    let ev = t.wait_events("3DES event", |e| !e.is_empty());
    let e = &ev[0];
    assert_eq!(e["offers_3des"], true, "{e}");
    assert_eq!(e["legacy"], true);
    assert_eq!(
        e["legacy_reasons"],
        serde_json::json!(["negotiated_3des", "only_3des_ciphers"])
    );
    assert_eq!(e["max_version"], "TLS1.2");
    assert!(
        e["cipher_suites"]
            .as_array()
            .unwrap()
            .contains(&Value::from("0xc012")),
        "{e}"
    );
    let m = t.metrics();
    assert_eq!(
        sample(
            &m,
            "tlspeek_legacy_connections_total",
            &[("reason", "only_3des_ciphers"), ("destination", LOGIN)]
        ),
        Some(1.0)
    );
    assert_eq!(
        hello_count(&t, &[("version", "TLS1.2"), ("legacy", "true")]),
        1.0
    );
}

#[test]
fn sources_are_told_apart_and_named() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        "[[sources]]\ncidr = \"127.0.0.6/32\"\nname = \"build-agents\"\n",
    );
    for src in ["127.0.0.5", "127.0.0.6"] {
        let (code, err) = curl_via(
            t.proxy_port,
            up,
            LOGIN,
            &[
                "--interface",
                src,
                "--tlsv1.0",
                "--tls-max",
                "1.0",
                "--ciphers",
                "DEFAULT:@SECLEVEL=0",
            ],
        );
        assert_eq!(code, "200", "{err}");
    }
    // A name that is not watched is labelled "other".
    let (code, _) = curl_via(
        t.proxy_port,
        up,
        "example.com",
        &["--interface", "127.0.0.5"],
    );
    assert_eq!(code, "200");
    let m = t.metrics();
    let legacy = |src: &str| {
        sample(
            &m,
            "tlspeek_client_hellos_total",
            &[("source", src), ("legacy", "true"), ("version", "TLS1.0")],
        )
    };
    assert_eq!(legacy("127.0.0.5"), Some(1.0), "{m}");
    assert_eq!(legacy("build-agents"), Some(1.0), "{m}");
    assert_eq!(
        legacy("127.0.0.6"),
        None,
        "a [[sources]] name replaces the IP"
    );
    assert_eq!(
        sample(
            &m,
            "tlspeek_client_hellos_total",
            &[("source", "127.0.0.5"), ("destination", "other")]
        ),
        Some(1.0)
    );
    let ev = t.wait_events("3 events", |e| e.len() >= 3);
    let named = ev.iter().find(|e| e["source_ip"] == "127.0.0.6").unwrap();
    assert_eq!(named["source"], "build-agents");
}

/// `openssl s_client` through the proxy to `up` with `args`, holding its TLS session open
/// while its stdin is open (until the child is killed).
fn held_session(t: &Tlspeek, up: u16, args: &[&str]) -> std::process::Child {
    Command::new("openssl")
        .args(["s_client", "-proxy", &format!("127.0.0.1:{}", t.proxy_port)])
        .args(["-connect", &format!("127.0.0.1:{up}")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (at most 10 s) until `counted` reaches 1, then checks the tunnel is still open.
fn counted_while_open(t: &Tlspeek, what: &str, counted: impl Fn(&Tlspeek) -> f64) {
    let end = Instant::now() + Duration::from_secs(10);
    while counted(t) < 1.0 {
        assert!(
            Instant::now() < end,
            "{what} not counted while the tunnel is open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = t.metrics();
    assert_eq!(sample(&m, "tlspeek_active_tunnels", &[]), Some(1.0));
}

#[test]
fn hello_is_counted_while_the_tunnel_is_still_open() {
    if !require(&["openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), "");
    let mut child = held_session(
        &t,
        up,
        &[
            "-servername",
            LOGIN,
            "-tls1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ],
    );
    counted_while_open(&t, "hello", |t| {
        hello_count(t, &[("version", "TLS1.0"), ("legacy", "true")])
    });
    assert!(
        t.target_events().is_empty(),
        "the event line is written at close"
    );
    let _ = child.kill();
    let _ = child.wait();
    t.wait_events("event at close", |e| !e.is_empty());
}

/// The server's answer is taken as soon as the tap has it, not when the tunnel ends: the
/// negotiated version is counted while `openssl s_client` still holds its session open.
/// (The tap runs inside the connection's own task and is read with no waker; a missed read
/// would leave the count at zero until the close.)
#[test]
fn server_answer_is_counted_while_the_tunnel_is_still_open() {
    if !require(&["openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), "");
    let mut child = held_session(&t, up, &["-tls1_3"]);
    counted_while_open(&t, "the server's answer", |t| {
        sample(
            &t.metrics(),
            "tlspeek_handshakes_total",
            &[("version", "TLS1.3")],
        )
        .unwrap_or(0.0)
    });
    let _ = child.kill();
    let _ = child.wait();
}
