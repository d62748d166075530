//! Every refusal before the tunnel: its status code, its body naming the reason, and its
//! count in tlspeek_connections_total{mode,outcome}.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn outcome(t: &Tlspeek, outcome: &str) -> f64 {
    sample(
        &t.metrics(),
        "tlspeek_connections_total",
        &[("mode", "connect"), ("outcome", outcome)],
    )
    .unwrap_or(-1.0)
}

/// Waits for the outcome counter to reach `n` (it moves when the connection task ends).
fn wait_outcome(t: &Tlspeek, name: &str, n: f64) {
    let end = Instant::now() + Duration::from_secs(10);
    while outcome(t, name) < n {
        assert!(
            Instant::now() < end,
            "{name} did not reach {n}: {}",
            t.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn request_errors_get_their_status_body_and_count() {
    let t = Tlspeek::start("allowed_ports = [443]\nheader_timeout = \"1s\"\n", "");
    let r = raw_request(
        t.proxy_port,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status_of(&r), 403, "{r}");
    assert!(r.contains("port 22 is not allowed"), "{r}");
    wait_outcome(&t, "refused_port", 1.0);

    for bad in [
        "bad host:443",
        "login.microsoftonline.com",
        "a\tb:443",
        "10.0.0.300:443",
        "[::1:443",
        "h:0",
    ] {
        let r = raw_request(
            t.proxy_port,
            format!("CONNECT {bad} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert!(matches!(status_of(&r), 400), "{bad}: {r}");
    }
    let r = raw_request(
        t.proxy_port,
        b"CONNECT x\r\n.example.com:443 HTTP/1.1\r\n\r\n",
    );
    assert_eq!(status_of(&r), 400, "CR/LF in the authority: {r}");

    let r = raw_request(t.proxy_port, b"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&r), 405, "{r}");
    assert!(r.contains("Allow: CONNECT"), "{r}");

    // Oversized head: 1 MiB of header is cut at 16 KiB with 431.
    let mut big = b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    let mut s = TcpStream::connect(("127.0.0.1", t.proxy_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&big); // the proxy stops reading; the write may fail
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let r = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&r), 431, "{r}");

    // Garbage instead of HTTP (a TLS hello sent to the proxy port).
    let r = raw_request(t.proxy_port, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00");
    assert_eq!(status_of(&r), 400, "{r}");

    // Slow client: one byte, then silence, is cut at header_timeout with 408.
    let started = Instant::now();
    let r = raw_request(t.proxy_port, b"C");
    assert_eq!(status_of(&r), 408, "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let bad = 6.0 + 1.0 + 1.0 + 1.0 + 1.0 + 1.0;
    wait_outcome(&t, "bad_request", bad);
    let err = t.stderr();
    assert!(
        err.contains("refused") && err.contains("bad_request"),
        "{err}"
    );
}

#[test]
fn source_outside_the_allow_list_gets_403() {
    let t = Tlspeek::start(
        "allowed_ports = [443]\nallowed_sources = [\"127.0.0.2/32\"]\n",
        "",
    );
    let r = raw_request(
        t.proxy_port,
        b"CONNECT login.microsoftonline.com:443 HTTP/1.1\r\n\r\n",
    );
    assert_eq!(status_of(&r), 403, "{r}");
    assert!(r.contains("source 127.0.0.1 is not allowed"), "{r}");
    wait_outcome(&t, "refused_source", 1.0);
    let end = Instant::now() + Duration::from_secs(10);
    let ev = loop {
        let ev: Vec<Value> = t
            .events()
            .into_iter()
            .filter(|e| e["outcome"] == "refused_source")
            .collect();
        if !ev.is_empty() || Instant::now() > end {
            break ev;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(ev[0]["outcome"], "refused_source");
    assert_eq!(ev[0]["source_ip"], "127.0.0.1");
}

#[test]
fn denied_destinations_are_checked_after_resolution() {
    let (_srv, port) = openssl_server(&[]);
    // The default deny list (loopback included).
    let t = Tlspeek::start(
        &format!(
            "allowed_ports = [{port}]\ndeny_destinations = [\"127.0.0.0/8\", \"::1/128\", \"169.254.0.0/16\"]\n"
        ),
        "",
    );
    for target in [
        format!("localhost:{port}"),
        format!("LOCALHOST.:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.1.2.3:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (_, status) = connect_tunnel(t.proxy_port, &target);
        assert!(status.contains(" 403 "), "{target}: {status}");
    }
    wait_outcome(&t, "refused_destination", 6.0);
    let ev = t.wait_events("6 refusals", |e| e.len() >= 6);
    assert_eq!(ev.len(), 6);
    assert!(
        ev.iter()
            .all(|e| e["outcome"] == "refused_destination" && e["upstream_ip"].is_null())
    );
}

#[test]
fn upstream_failures_get_502_and_504() {
    // A closed port: connection refused → 502 connect_failed.
    let closed = free_port();
    // A listener that never accepts, its backlog filled: further SYNs are dropped, so the
    // connect times out (on loopback, without leaving the machine).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let full = sock.local_addr().unwrap().as_socket().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) =
            TcpStream::connect_timeout(&([127, 0, 0, 1], full).into(), Duration::from_millis(300))
        {
            fillers.push(s);
        }
    }
    let t = Tlspeek::start(
        &format!("allowed_ports = [443, {closed}, {full}]\nconnect_timeout = \"1s\"\n"),
        "",
    );
    let (_, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{closed}"));
    assert!(status.contains(" 502 "), "{status}");
    wait_outcome(&t, "connect_failed", 1.0);

    let started = Instant::now();
    let (_, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{full}"));
    assert!(status.contains(" 504 "), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    wait_outcome(&t, "connect_timeout", 1.0);

    let (_, status) = connect_tunnel(t.proxy_port, "no-such-host.invalid:443");
    assert!(status.contains(" 502 "), "{status}");
    wait_outcome(&t, "dns_failed", 1.0);
    drop(fillers);
}

#[test]
fn connection_limits_answer_503_at_once() {
    // A listener that holds each connection until the client's EOF (openssl s_server
    // would serve one at a time).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let _ = std::io::copy(&mut c, &mut std::io::sink());
            });
        }
    });
    let t = Tlspeek::start(
        &format!("allowed_ports = [{port}]\nmax_connections_per_source = 2\nmax_connections = 3\n"),
        "",
    );
    // The harness's readiness probe was a connection from this source too: its slot must
    // be back before the limit is counted.
    t.wait_metric(
        "tlspeek_connections_total",
        &[],
        Duration::from_secs(5),
        |v| v >= 1.0,
    );
    let (a, sa) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    let (b, sb) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(sa.contains(" 200 ") && sb.contains(" 200 "), "{sa} {sb}");
    let started = Instant::now();
    let (_, sc) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(sc.contains(" 503 "), "per-source limit: {sc}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Another source is still served (global limit 3 not reached), then the global limit.
    let (_d, sd) = connect_tunnel_from("127.0.0.7", t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(sd.contains(" 200 "), "other source: {sd}");
    let (_, se) = connect_tunnel_from("127.0.0.8", t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(se.contains(" 503 "), "global limit: {se}");
    wait_outcome(&t, "refused_limit", 2.0);
    drop((a, b));
    // Slots come back when tunnels close.
    std::thread::sleep(Duration::from_millis(300));
    let (_c, sc) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(sc.contains(" 200 "), "after release: {sc}");
}
