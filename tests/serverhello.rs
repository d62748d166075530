//! The ServerHello peek: what was really negotiated decides the verdict; a server alert is
//! `rejected_by_server`; a ServerHello in many small writes or an alert is read without
//! holding a byte back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::time::{Duration, Instant};

use common::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}.bin",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn event_for(t: &Tlspeek, port: u16) -> Value {
    let ev = t.wait_events("event of the port", |e| {
        e.iter().any(|x| x["target_port"] == port)
    });
    ev.into_iter().find(|x| x["target_port"] == port).unwrap()
}

#[test]
fn negotiated_version_decides_the_verdict() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_a, all) = openssl_server(&[]);
    let (_b, tls10) = openssl_server(&["-min_protocol", "TLSv1", "-max_protocol", "TLSv1"]);
    let (_c, modern) = openssl_server(&["-min_protocol", "TLSv1.2"]);
    let t = Tlspeek::start(&format!("allowed_ports = [{all}, {tls10}, {modern}]\n"), "");

    // Offers TLS 1.3, is served TLS 1.0: legacy by what was negotiated.
    let (code, err) = curl_via(
        t.proxy_port,
        tls10,
        LOGIN,
        &["--ciphers", "DEFAULT:@SECLEVEL=0"],
    );
    assert_eq!(code, "200", "{err}");
    let e = event_for(&t, tls10);
    assert_eq!(e["max_version"], "TLS1.3");
    assert_eq!(e["negotiated_version"], "TLS1.0");
    assert_eq!(e["legacy"], true);
    assert_eq!(
        e["legacy_reasons"],
        serde_json::json!(["negotiated_tls10"]),
        "{e}"
    );
    assert_eq!(e["ja3s"].as_str().unwrap().len(), 32);
    assert!(e["negotiated_cipher"].as_str().unwrap().starts_with("0x"));
    let m = t.metrics();
    assert_eq!(
        sample(
            &m,
            "tlspeek_client_hellos_total",
            &[("version", "TLS1.3"), ("legacy", "false")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "tlspeek_legacy_connections_total",
            &[("reason", "negotiated_tls10"), ("destination", LOGIN)]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "tlspeek_handshakes_total",
            &[("version", "TLS1.0"), ("source", "127.0.0.1")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            "tlspeek_source_last_legacy_timestamp_seconds",
            &[("destination", LOGIN)]
        )
        .is_some()
    );

    // A TLS 1.0-only client against a TLS 1.2+ server: the server's alert.
    let (code, _) = curl_via(
        t.proxy_port,
        modern,
        LOGIN,
        &[
            "--tlsv1.0",
            "--tls-max",
            "1.0",
            "--ciphers",
            "DEFAULT:@SECLEVEL=0",
        ],
    );
    assert_ne!(code, "200");
    let e = event_for(&t, modern);
    assert_eq!(e["outcome"], "rejected_by_server", "{e}");
    assert_eq!(e["server_alert"], "protocol_version");
    assert_eq!(e["negotiated_version"], Value::Null);
    assert_eq!(e["legacy_reasons"][0], "max_version_below_tls12");
    assert_eq!(
        sample(
            &t.metrics(),
            "tlspeek_connections_total",
            &[("outcome", "rejected_by_server")]
        ),
        Some(1.0)
    );

    // TLS 1.3 both ways: not legacy, the cipher by its IANA name.
    let (code, _) = curl_via(t.proxy_port, all, LOGIN, &["--tlsv1.3"]);
    assert_eq!(code, "200");
    let e = event_for(&t, all);
    assert_eq!(
        (e["negotiated_version"].as_str(), e["legacy"].as_bool()),
        (Some("TLS1.3"), Some(false))
    );
    let m = t.metrics();
    assert!(
        m.lines().any(|l| l.starts_with("tlspeek_handshakes_total{")
            && l.contains("version=\"TLS1.3\"")
            && l.contains("cipher=\"TLS_AES_")),
        "{m}"
    );
}

#[test]
fn negotiated_3des_between_gnutls_peers() {
    if !require(&["gnutls-cli", "gnutls-serv", "socat"]) {
        return;
    }
    let (_srv, up) = gnutls_server("NORMAL:+3DES-CBC:+VERS-TLS1.0:+VERS-TLS1.1");
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), "");
    let text = gnutls_via_proxy(
        t.proxy_port,
        up,
        "NORMAL:-CIPHER-ALL:+3DES-CBC:-VERS-TLS1.3",
        LOGIN,
    );
    assert!(text.contains("Handshake was completed"), "{text}");
    let e = event_for(&t, up);
    assert!(
        ["0xc012", "0x000a", "0x0016", "0xc008"]
            .contains(&e["negotiated_cipher"].as_str().unwrap()),
        "{e}"
    );
    assert_eq!(e["legacy_reasons"][0], "negotiated_3des", "{e}");
    assert!(
        e["legacy_reasons"]
            .as_array()
            .unwrap()
            .contains(&Value::from("only_3des_ciphers"))
    );
    let m = t.metrics();
    assert!(
        m.lines().any(|l| l.starts_with("tlspeek_handshakes_total{")
            && l.contains("_WITH_3DES_EDE_CBC_SHA\"")),
        "{m}"
    );
    // Known legacy at hello time already: counted once, by its hello reason.
    assert_eq!(
        sample(&m, "tlspeek_legacy_connections_total", &[]),
        Some(1.0)
    );
}

/// A scripted upstream: reads the client's first flight, then answers with `answer` in
/// `chunk`-byte writes with a pause between them, then echoes until EOF.
fn scripted_server(answer: Vec<u8>, chunk: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = c.read(&mut buf);
        for piece in answer.chunks(chunk) {
            if c.write_all(piece).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::io::copy(&mut c.try_clone().unwrap(), &mut c);
    });
    port
}

#[test]
fn server_hello_in_small_writes_arrives_unchanged_and_is_read() {
    let answer = fixture("server_openssl_tls10");
    let port = scripted_server(answer.clone(), 7);
    let t = Tlspeek::start(&format!("allowed_ports = [{port}]\n"), "");
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(status.contains(" 200 "));
    s.write_all(&fixture("curl_tls13")).unwrap();
    let mut got = vec![0u8; answer.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, answer, "the ServerHello bytes changed on the way");
    s.shutdown(Shutdown::Write).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    let e = event_for(&t, port);
    assert_eq!(e["negotiated_version"], "TLS1.0");
    assert_eq!(e["negotiated_cipher"], "0xc014");
    assert_eq!(e["legacy_reasons"], serde_json::json!(["negotiated_tls10"]));
}

#[test]
fn an_alert_instead_of_a_server_hello_is_rejected_by_server() {
    let alert = fixture("server_openssl_alert");
    let port = scripted_server(alert.clone(), 3);
    let t = Tlspeek::start(&format!("allowed_ports = [{port}]\n"), "");
    let (mut s, _) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    s.write_all(&fixture("curl_tls10")).unwrap();
    let mut got = vec![0u8; alert.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, alert);
    s.shutdown(Shutdown::Write).unwrap();
    let _ = s.read_to_end(&mut Vec::new());
    let e = event_for(&t, port);
    assert_eq!(e["outcome"], "rejected_by_server");
    assert_eq!(e["server_alert"], "protocol_version");
    assert!(
        t.stderr()
            .contains("server refused the handshake with an alert")
    );
}

#[test]
fn first_byte_from_the_server_is_not_held_back() {
    // The server answers before the client says anything, and before the hello timeout.
    let answer = fixture("server_openssl_tls12");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let a = answer.clone();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.write_all(&a).unwrap();
        let _ = c.read(&mut [0u8; 16]);
    });
    let t = Tlspeek::start(
        &format!("allowed_ports = [{port}]\nhello_timeout = \"3s\"\n"),
        "",
    );
    let (mut s, _) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    let started = Instant::now();
    let mut got = vec![0u8; answer.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, answer);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the server's bytes waited for the peek"
    );
}

/// A relay in front of `upstream` that writes a warning-level `unrecognized_name` alert to
/// the client just before the server's first bytes (older IIS and Apache do this when the
/// SNI matches no site, and the handshake goes on). Serves `connections` connections.
fn warning_alert_relay(upstream: u16, connections: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((client, _)) = l.accept() else { return };
            let server = std::net::TcpStream::connect(("127.0.0.1", upstream)).unwrap();
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut s_write);
                let _ = s_write.shutdown(Shutdown::Write);
            });
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut first = true;
                loop {
                    let n = match s_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if first {
                        first = false;
                        if c_write
                            .write_all(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x70])
                            .is_err()
                        {
                            break;
                        }
                    }
                    if c_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_write.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn a_warning_alert_before_the_server_hello_is_not_a_rejection() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_server, up) = openssl_server(&[]);
    let relay = warning_alert_relay(up, 1);
    let t = Tlspeek::start(&format!("allowed_ports = [{relay}]\n"), "");
    let (code, err) = curl_via(t.proxy_port, relay, LOGIN, TLS10_ONLY);
    assert_eq!(code, "200", "curl through the relay: {err}");
    let e = event_for(&t, relay);
    assert_eq!(e["negotiated_version"], "TLS1.0", "{e}");
    assert_eq!(e["outcome"], "closed", "{e}");
    assert_eq!(e["server_alert"], Value::Null, "{e}");
    assert_eq!(e["legacy_reasons"][0], "negotiated_tls10", "{e}");
    let m = t.metrics();
    assert_eq!(
        sample(
            &m,
            "tlspeek_handshakes_total",
            &[("version", "TLS1.0"), ("destination", LOGIN)]
        ),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn tls13_draft_server_hellos_are_named_and_not_legacy() {
    for (fixture_name, cipher) in [
        ("server_draft_7f12", "0x1301"),
        ("server_draft_7f17", "0x1301"),
    ] {
        let answer = fixture(fixture_name);
        let port = scripted_server(answer.clone(), 1024);
        let t = Tlspeek::start(&format!("allowed_ports = [{port}]\n"), "");
        let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
        assert!(status.contains(" 200 "), "{status}");
        s.write_all(&fixture("curl_tls13")).unwrap();
        let mut got = vec![0u8; answer.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, answer, "{fixture_name}: bytes changed on the way");
        s.shutdown(Shutdown::Write).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
        let e = event_for(&t, port);
        assert_eq!(
            e["negotiated_version"], "TLS1.3-draft",
            "{fixture_name}: {e}"
        );
        assert_eq!(e["negotiated_cipher"], cipher, "{fixture_name}: {e}");
        assert_eq!(e["legacy"], false, "{fixture_name}: {e}");
    }
}
