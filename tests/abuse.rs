//! Hostile clients on 127.0.0.1: CONNECT floods, huge headers, SSRF to loopback by every
//! spelling, absurd ports, CR/LF injection in the authority, and first flights that lie
//! about their length. Each test asserts the answer (or the bytes passed through) and the
//! count in the metrics, and that the proxy goes on serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const SECS: Duration = Duration::from_secs(15);

/// An upstream that holds each connection until the client's EOF, counting connections.
fn holding_upstream() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            c2.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut c = c;
                let _ = std::io::copy(&mut c, &mut std::io::sink());
            });
        }
    });
    (port, count)
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

fn still_serves(t: &Tlspeek, echo: u16) {
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    assert!(status.contains(" 200 "), "{status}");
    s.write_all(b"still here").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"still here");
}

#[test]
fn connect_flood_from_one_source_holds_the_per_source_limit() {
    let (port, _) = holding_upstream();
    let limit = 20;
    let t = Tlspeek::start(
        &format!(
            "allowed_ports = [{port}]\nmax_connections_per_source = {limit}\nmax_connections = 1000\n"
        ),
        "",
    );
    let target = format!("127.0.0.1:{port}");
    // 160 CONNECTs from 127.0.0.1 at once, from 8 threads; every tunnel is held open.
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let target = target.clone();
            let proxy = t.proxy_port;
            thread::spawn(move || {
                (0..20)
                    .map(|_| connect_tunnel(proxy, &target))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let started = Instant::now();
    let results: Vec<(TcpStream, String)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let ok = results.iter().filter(|(_, s)| s.contains(" 200 ")).count();
    let limited = results.iter().filter(|(_, s)| s.contains(" 503 ")).count();
    assert_eq!(ok, limit, "tunnels admitted from one source");
    assert_eq!(limited, 160 - limit, "refused with 503");
    assert!(started.elapsed() < Duration::from_secs(30));
    t.wait_metric(
        "tlspeek_connections_total",
        &[("outcome", "refused_limit")],
        SECS,
        |v| v == (160 - limit) as f64,
    );
    // Other sources are still served while 127.0.0.1 is at its limit.
    let others: Vec<_> = (0..5)
        .map(|_| {
            let (s, status) = connect_tunnel_from("127.0.0.9", t.proxy_port, &target);
            assert!(status.contains(" 200 "), "127.0.0.9: {status}");
            s
        })
        .collect();
    // The gauge is raised once the tunnel is served, just after its `200` went out.
    let open = (limit + others.len()) as f64;
    t.wait_metric("tlspeek_active_tunnels", &[], SECS, |v| v == open);
    // The limit is released with the tunnels.
    drop(results);
    drop(others);
    t.wait_metric("tlspeek_active_tunnels", &[], SECS, |v| v == 0.0);
    let (_s, status) = connect_tunnel(t.proxy_port, &target);
    assert!(status.contains(" 200 "), "after release: {status}");
}

#[test]
fn one_mib_headers_from_many_clients_get_431() {
    let echo = spawn_echo();
    let t = Tlspeek::start(&format!("allowed_ports = [{echo}]\n"), "");
    let rss0 = t.rss_kib();
    let proxy = t.proxy_port;
    let workers: Vec<_> = (0..16)
        .map(|i| {
            thread::spawn(move || {
                let mut big =
                    format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nX-Big-{i}: ").into_bytes();
                big.extend(std::iter::repeat_n(b'a', 1 << 20));
                big.extend_from_slice(b"\r\n\r\n");
                let mut s = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
                s.set_read_timeout(Some(SECS)).unwrap();
                let _ = s.write_all(&big); // the proxy stops reading at 16 KiB
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                String::from_utf8_lossy(&out).to_string()
            })
        })
        .collect();
    for w in workers {
        let r = w.join().unwrap();
        assert_eq!(status_of(&r), 431, "{}", status_line(&r));
    }
    t.wait_metric(
        "tlspeek_connections_total",
        &[("outcome", "bad_request")],
        SECS,
        |v| v == 16.0,
    );
    // The heads were never buffered whole (16 × 1 MiB).
    assert!(
        t.rss_kib() < rss0 + 8 * 1024,
        "RSS {} KiB -> {} KiB",
        rss0,
        t.rss_kib()
    );
    still_serves(&t, echo);
}

#[test]
fn loopback_by_any_spelling_is_refused_after_resolution() {
    // The embedded default deny list (loopback, 0.0.0.0/8, link-local, ...).
    let (port, connects) = holding_upstream();
    let opts = StartOpts {
        default_deny: true,
        ..StartOpts::default()
    };
    let t = Tlspeek::start_opts(&format!("allowed_ports = [{port}]\n"), "", &opts);
    // Refused by the deny list after parsing and resolution: 403.
    let denied = [
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:2]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "localhost",
        "LOCALHOST.",
        "0x7f000001", // a valid host name that the resolver reads as 127.0.0.1
        "127.0.0.1",
        "127.255.255.254",
        "0.0.0.0", // connecting to it reaches loopback on Linux
        "[::]",
        "[::1]",
    ];
    for host in denied {
        let (_, status) = connect_tunnel(t.proxy_port, &format!("{host}:{port}"));
        assert!(status.contains(" 403 "), "{host}: {status}");
    }
    // Not host names at all (numeric last label): 400, never resolved.
    for host in ["2130706433", "127.1", "017700000001"] {
        let (_, status) = connect_tunnel(t.proxy_port, &format!("{host}:{port}"));
        assert!(status.contains(" 400 "), "{host}: {status}");
    }
    t.wait_metric(
        "tlspeek_connections_total",
        &[("outcome", "refused_destination")],
        SECS,
        |v| v == denied.len() as f64,
    );
    // Counted when the connection ends, just after its answer went out.
    t.wait_metric(
        "tlspeek_connections_total",
        &[("outcome", "bad_request")],
        SECS,
        |v| v == 3.0,
    );
    assert_eq!(
        connects.load(Ordering::SeqCst),
        0,
        "a denied target was reached"
    );
    let ev = t.wait_events("refusal events", |e| e.len() >= denied.len());
    assert_eq!(ev.len(), denied.len());
    for e in &ev {
        assert_eq!(e["outcome"], "refused_destination", "{e}");
        assert!(e["upstream_ip"].is_null(), "{e}");
    }
}

#[test]
fn absurd_ports_are_bad_requests() {
    let echo = spawn_echo();
    let t = Tlspeek::start(&format!("allowed_ports = [{echo}]\n"), "");
    let ports = [
        "0",
        "65536",
        "99999999999",
        "184467440737095516160443",
        "-1",
        "-443",
        "+443",
        "443abc",
        "0x1bb",
        "",
        "４４３",
    ];
    for p in ports {
        let r = raw_request(
            t.proxy_port,
            format!("CONNECT 127.0.0.1:{p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(status_of(&r), 400, "port {p:?}: {}", status_line(&r));
    }
    t.wait_metric(
        "tlspeek_connections_total",
        &[("outcome", "bad_request")],
        SECS,
        |v| v == ports.len() as f64,
    );
    still_serves(&t, echo);
}

#[test]
fn cr_lf_injection_in_the_authority_is_refused() {
    let (port, connects) = holding_upstream();
    let t = Tlspeek::start(&format!("allowed_ports = [{port}]\n"), "");
    let attacks: Vec<Vec<u8>> = vec![
        format!("CONNECT 127.0.0.1:{port}\r\nInjected: 1 HTTP/1.1\r\n\r\n").into_bytes(),
        format!("CONNECT 127.0.0.1\r\n:{port} HTTP/1.1\r\n\r\n").into_bytes(),
        format!("CONNECT a\rb:{port} HTTP/1.1\r\n\r\n").into_bytes(),
        format!("CONNECT a\nb:{port} HTTP/1.1\r\n\r\n").into_bytes(),
        format!("CONNECT 127.0.0.1:{port}\r HTTP/1.1\r\n\r\n").into_bytes(),
        format!("CONNECT a%0d%0aX-Injected:1:{port} HTTP/1.1\r\n\r\n").into_bytes(),
        format!("CONNECT 127.0.0.1:{port}%0d%0a HTTP/1.1\r\n\r\n").into_bytes(),
        format!("CONNECT 127.0.0.1:{port}\0 HTTP/1.1\r\n\r\n").into_bytes(),
    ];
    for a in &attacks {
        let r = raw_request(t.proxy_port, a);
        assert_eq!(
            status_of(&r),
            400,
            "{:?}: {}",
            String::from_utf8_lossy(a),
            status_line(&r)
        );
    }
    t.wait_metric(
        "tlspeek_connections_total",
        &[("outcome", "bad_request")],
        SECS,
        |v| v == attacks.len() as f64,
    );
    assert_eq!(
        connects.load(Ordering::SeqCst),
        0,
        "an injected CONNECT went out"
    );
    // Nothing peer-controlled reached the log raw.
    assert!(!t.stderr().contains("Injected: 1\n"));
}

/// Sends `first` through a tunnel to the echo upstream without closing, and reads the same
/// number of bytes back: the first flight is decided at once, never held.
fn passes_unchanged_at_once(t: &Tlspeek, echo: u16, first: &[u8]) {
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    assert!(status.contains(" 200 "), "{status}");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    s.write_all(first).unwrap();
    let mut got = vec![0u8; first.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("bytes held back ({e}) for {:?}", started.elapsed()));
    assert!(got == first, "bytes changed on the way");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn first_flights_lying_about_their_length_pass_through_unchanged() {
    let echo = spawn_echo();
    // hello_timeout longer than the test's read timeout: a held flight would fail.
    let t = Tlspeek::start(
        &format!("allowed_ports = [{echo}]\nhello_timeout = \"10s\"\n"),
        "",
    );
    // SSLv2 CLIENT-HELLO whose record length (255) cannot equal its parts (9 + 3 + 16).
    let mut sslv2 = vec![
        0x80, 0xff, 0x01, 0x03, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10,
    ];
    sslv2.extend_from_slice(&[0x00, 0x00, 0x35]);
    sslv2.extend_from_slice(&pseudo_random(300, 5));
    passes_unchanged_at_once(&t, echo, &sslv2);
    // The largest SSLv2 length (0x7fff) with the same lie.
    let mut sslv2_max = sslv2.clone();
    sslv2_max[0] = 0xff;
    passes_unchanged_at_once(&t, echo, &sslv2_max);
    // A TLS record of 65535 bytes (over the 2^14 + 2048 bound).
    let mut rec64k = vec![
        0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00, 0xff, 0xfb, 0x03, 0x03,
    ];
    rec64k.extend_from_slice(&pseudo_random(3000, 6));
    passes_unchanged_at_once(&t, echo, &rec64k);
    // A ClientHello claiming 16 MiB in a normal record.
    let mut hello16m = vec![
        0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xff, 0xff, 0xff, 0x03, 0x03,
    ];
    hello16m.extend_from_slice(&pseudo_random(59, 7));
    passes_unchanged_at_once(&t, echo, &hello16m);

    let ev = t.wait_events("four events", |e| e.len() >= 4);
    let kinds: Vec<&str> = ev
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "not_tls").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "too_large").count(),
        2,
        "{kinds:?}"
    );
    assert!(ev.iter().all(|e| e["outcome"] == "closed"), "{ev:#?}");
    let m = t.metrics();
    assert_eq!(
        sample(&m, "tlspeek_first_flights_total", &[("kind", "not_tls")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, "tlspeek_first_flights_total", &[("kind", "too_large")]),
        Some(2.0)
    );
    assert_eq!(sample(&m, "tlspeek_client_hellos_total", &[]), None);
    still_serves(&t, echo);
}
