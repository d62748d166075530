//! Fault injection on 127.0.0.1: upstreams and clients that reset, stall, close early or
//! half-close at the worst moment; an event log that cannot be written; running out of
//! file descriptors. Each test asserts what the client sees AND the outcome in the event
//! line and in `tlspeek_connections_total`.
//!
//! Covered elsewhere (not repeated here): an upstream reset after a non-TLS first flight
//! and a client reset after the peek (`tunnel.rs`); the 502/504 answers and their counts
//! for a DNS failure, a closed port and a connect timeout (`refusals.rs`, whose event
//! lines are checked here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const SECS: Duration = Duration::from_secs(15);

/// A one-connection upstream running `serve` on the accepted socket.
fn upstream(serve: impl FnOnce(TcpStream) + Send + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((c, _)) = l.accept() {
            c.set_read_timeout(Some(SECS)).unwrap();
            serve(c);
        }
    });
    port
}

fn proxy_to(port: u16, proxy_extra: &str) -> Tlspeek {
    Tlspeek::start(&format!("allowed_ports = [{port}]\n{proxy_extra}"), "")
}

fn tunnel(t: &Tlspeek, port: u16) -> TcpStream {
    let (s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(status.contains(" 200 "), "{status}");
    s
}

/// Reads until EOF or an error; returns the bytes and the error, if any.
fn read_all(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Some(e)),
        }
    }
}

/// `closed` outcomes so far: the harness's own port probe (connect, then close without a
/// request) counts as one once the proxy has accepted and ended it, which on a loaded
/// machine can come later than the test's first connection; wait for it, so tests compare
/// against a settled baseline.
fn closed_now(t: &Tlspeek) -> f64 {
    t.wait_metric(
        "tlspeek_connections_total",
        &[("mode", "connect"), ("outcome", "closed")],
        SECS,
        |v| v >= 1.0,
    );
    t.outcome_count("closed")
}

/// Waits until `closed` is exactly `n` (it moves when the connection task ends).
fn wait_closed(t: &Tlspeek, n: f64) {
    t.wait_metric(
        "tlspeek_connections_total",
        &[("mode", "connect"), ("outcome", "closed")],
        SECS,
        |v| v == n,
    );
}

fn one_event(t: &Tlspeek) -> Value {
    let ev = t.wait_events("one event", |e| !e.is_empty());
    assert_eq!(ev.len(), 1, "{ev:#?}");
    ev.into_iter().next().unwrap()
}

#[test]
fn upstream_reset_mid_transfer_after_a_real_hello() {
    let hello_len = CURL_TLS12_HELLO.len();
    let port = upstream(move |mut c| {
        let mut got = vec![0u8; hello_len + 64 * 1024];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got[..hello_len], CURL_TLS12_HELLO);
        c.write_all(&[0x17; 10_000]).unwrap();
        thread::sleep(Duration::from_millis(200));
        // SO_LINGER 0: close with a reset while the client is still uploading.
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let t = proxy_to(port, "");
    let s = tunnel(&t, port);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = w.write_all(CURL_TLS12_HELLO);
        let chunk = pseudo_random(64 * 1024, 3);
        for _ in 0..64 {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut r = s;
    let (got, err) = read_all(&mut r);
    let err = err.expect("a clean EOF: the upstream reset was not passed on");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(got.len(), 10_000);
    writer.join().unwrap();
    let e = one_event(&t);
    assert_eq!(e["outcome"], "upstream_reset");
    assert_eq!(e["kind"], "tls");
    assert_eq!(e["sni"], LOGIN);
    assert_eq!(e["bytes_down"], 10_000);
    assert_eq!(t.outcome_count("upstream_reset"), 1.0);
    assert_eq!(t.metric("tlspeek_active_tunnels", &[]), 0.0);
}

#[test]
fn upstream_that_never_answers_is_closed_at_idle_timeout() {
    let (tx, rx) = mpsc::channel();
    let port = upstream(move |mut c| {
        let mut got = vec![0u8; CURL_TLS12_HELLO.len()];
        c.read_exact(&mut got).unwrap();
        // Never answer; report what the proxy does to this side.
        let mut b = [0u8; 1];
        tx.send(c.read(&mut b).map_err(|e| e.kind())).unwrap();
    });
    let t = proxy_to(port, "idle_timeout = \"1s\"\n");
    let mut s = tunnel(&t, port);
    s.write_all(CURL_TLS12_HELLO).unwrap();
    let started = Instant::now();
    let (got, err) = read_all(&mut s);
    let waited = started.elapsed();
    assert!(err.is_none(), "expected a clean close, got {err:?}");
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "closed after {waited:?} with idle_timeout = 1s"
    );
    // The upstream side is closed too (EOF), not left open.
    assert_eq!(rx.recv_timeout(SECS).unwrap(), Ok(0));
    let e = one_event(&t);
    assert_eq!(e["outcome"], "idle_timeout");
    assert_eq!(e["kind"], "tls");
    assert_eq!(t.outcome_count("idle_timeout"), 1.0);
    assert_eq!(t.metric("tlspeek_active_tunnels", &[]), 0.0);
}

#[test]
fn upstream_closing_before_the_server_hello() {
    // Raw client: the upstream reads the whole hello, then closes (FIN, no alert).
    let port = upstream(|mut c| {
        let mut got = vec![0u8; CURL_TLS12_HELLO.len()];
        c.read_exact(&mut got).unwrap();
    });
    let t = proxy_to(port, "");
    let closed0 = closed_now(&t);
    let mut s = tunnel(&t, port);
    s.write_all(CURL_TLS12_HELLO).unwrap();
    let (got, err) = read_all(&mut s);
    assert!(err.is_none(), "expected EOF, got {err:?}");
    assert!(got.is_empty(), "no alert or other byte expected: {got:?}");
    drop(s);
    let e = one_event(&t);
    assert_eq!(e["outcome"], "closed");
    assert_eq!(e["kind"], "tls");
    assert_eq!(e["bytes_down"], 0);
    assert!(e["negotiated_version"].is_null());
    wait_closed(&t, closed0 + 1.0);
    assert_eq!(
        t.metric("tlspeek_first_flights_total", &[("kind", "tls")]),
        1.0
    );

    // A real client gets a failed handshake, not a hang, and the hello is still counted.
    if !require(&["curl"]) {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port2 = l.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            // Read what arrives within a moment (the whole hello), then close.
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut b = [0u8; 4096];
            while let Ok(n) = c.read(&mut b) {
                if n == 0 {
                    break;
                }
            }
        }
    });
    let t = proxy_to(port2, "");
    let closed0 = closed_now(&t);
    let started = Instant::now();
    let (code, err) = curl_via(t.proxy_port, port2, LOGIN, &["--tls-max", "1.2"]);
    assert_eq!(code, "000", "curl: {err}");
    assert!(started.elapsed() < Duration::from_secs(9), "curl hung");
    let e = one_event(&t);
    assert_eq!(e["outcome"], "closed");
    assert_eq!(e["kind"], "tls");
    assert_eq!(e["max_version"], "TLS1.2");
    wait_closed(&t, closed0 + 1.0);
}

#[test]
fn client_reset_during_the_peek_resets_the_upstream() {
    let (tx, rx) = mpsc::channel();
    let port = upstream(move |mut c| {
        let (got, err) = read_all(&mut c);
        tx.send((got.len(), err.map(|e| e.kind()))).unwrap();
    });
    let t = proxy_to(port, "");
    let mut s = tunnel(&t, port);
    // Part of a hello: the proxy is still waiting for the rest (nothing forwarded yet).
    s.write_all(&CURL_TLS12_HELLO[..40]).unwrap();
    thread::sleep(Duration::from_millis(200));
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let (forwarded, err) = rx.recv_timeout(SECS).unwrap();
    assert_eq!(forwarded, 0, "a partial hello was forwarded");
    assert_eq!(
        err,
        Some(ErrorKind::ConnectionReset),
        "upstream saw no reset"
    );
    let e = one_event(&t);
    assert_eq!(e["outcome"], "client_reset");
    assert_eq!(e["bytes_up"], 0);
    assert_eq!(t.outcome_count("client_reset"), 1.0);
    assert_eq!(t.metric("tlspeek_active_tunnels", &[]), 0.0);
}

#[test]
fn client_half_close_after_a_hello_and_mid_hello() {
    // 1. A whole hello and a request, then FIN: the upstream gets exactly those bytes and
    //    EOF, and its 1 MiB answer reaches the client whole.
    let answer = pseudo_random(1 << 20, 9);
    let want = Sha256::digest(&answer);
    let (tx, rx) = mpsc::channel();
    let port = upstream(move |mut c| {
        let (got, err) = read_all(&mut c);
        tx.send((got, err.map(|e| e.kind()))).unwrap();
        c.write_all(&answer).unwrap();
    });
    let t = proxy_to(port, "");
    let closed0 = closed_now(&t);
    let mut s = tunnel(&t, port);
    let mut sent = CURL_TLS12_HELLO.to_vec();
    sent.extend_from_slice(b"application data after the hello");
    s.write_all(&sent).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, err) = read_all(&mut s);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        Sha256::digest(&got),
        want,
        "answer after half-close differs"
    );
    let (up, up_err) = rx.recv_timeout(SECS).unwrap();
    assert_eq!(up_err, None);
    assert_eq!(up, sent, "upstream got other bytes than sent");
    drop(s);
    let e = one_event(&t);
    assert_eq!(e["outcome"], "closed");
    assert_eq!(e["kind"], "tls");
    assert_eq!(e["bytes_up"], sent.len());
    assert_eq!(e["bytes_down"], 1 << 20);
    wait_closed(&t, closed0 + 1.0);

    // 2. FIN in the middle of a hello: the part is forwarded unchanged, then EOF.
    let (tx, rx) = mpsc::channel();
    let port = upstream(move |mut c| {
        let (got, err) = read_all(&mut c);
        tx.send((got, err.map(|e| e.kind()))).unwrap();
        c.write_all(b"bye").unwrap();
    });
    let t = proxy_to(port, "");
    let closed0 = closed_now(&t);
    let mut s = tunnel(&t, port);
    s.write_all(&CURL_TLS12_HELLO[..100]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (got, err) = read_all(&mut s);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, b"bye");
    let (up, up_err) = rx.recv_timeout(SECS).unwrap();
    assert_eq!(up_err, None);
    assert_eq!(up, &CURL_TLS12_HELLO[..100]);
    drop(s);
    let e = one_event(&t);
    assert_eq!(e["outcome"], "closed");
    assert_eq!(e["kind"], "truncated");
    wait_closed(&t, closed0 + 1.0);
    assert_eq!(
        t.metric("tlspeek_first_flights_total", &[("kind", "truncated")]),
        1.0
    );
}

#[test]
fn unresolvable_name_and_closed_port_event_lines() {
    let closed = free_port();
    let t = Tlspeek::start(&format!("allowed_ports = [443, {closed}]\n"), "");
    let (_, status) = connect_tunnel(t.proxy_port, "no-such-host.invalid:443");
    assert!(status.contains(" 502 "), "{status}");
    let (_, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{closed}"));
    assert!(status.contains(" 502 "), "{status}");
    let ev = t.wait_events("two refusals", |e| e.len() >= 2);
    let dns = ev
        .iter()
        .find(|e| e["outcome"] == "dns_failed")
        .expect("dns_failed event");
    assert_eq!(dns["target_host"], "no-such-host.invalid");
    assert!(
        dns["upstream_ip"].is_null() && dns["kind"].is_null(),
        "{dns}"
    );
    let refused = ev
        .iter()
        .find(|e| e["outcome"] == "connect_failed")
        .expect("connect_failed event");
    assert_eq!(refused["target_port"], closed);
    assert_eq!(refused["bytes_up"], 0);
    assert_eq!(t.outcome_count("dns_failed"), 1.0);
    assert_eq!(t.outcome_count("connect_failed"), 1.0);
    assert_eq!(t.metric("tlspeek_active_tunnels", &[]), 0.0);
}

/// Runs a few tunnels through the proxy and checks every byte comes back.
fn tunnels_still_work(t: &Tlspeek, echo: u16, n: usize) {
    for i in 0..n {
        let mut s = tunnel(t, echo);
        let data = pseudo_random(32 * 1024, i as u64 + 1);
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let (got, err) = read_all(&mut s);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, data);
    }
}

fn assert_event_log_errors_counted(t: &Tlspeek, echo: u16) {
    tunnels_still_work(t, echo, 3);
    t.wait_metric(
        "tlspeek_connections_total",
        &[("outcome", "closed")],
        SECS,
        |v| v >= 3.0,
    );
    t.wait_metric("tlspeek_event_log_errors_total", &[], SECS, |v| v >= 1.0);
    let err = t.stderr();
    assert!(err.contains("cannot write the event log"), "{err}");
    // Still serving after the errors, and the proxy stayed up.
    tunnels_still_work(t, echo, 2);
    t.wait_metric(
        "tlspeek_connections_total",
        &[("outcome", "closed")],
        SECS,
        |v| v >= 5.0,
    );
    let (status, _) = t.admin_get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn event_log_in_a_missing_directory() {
    let echo = spawn_echo();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/events.jsonl");
    let opts = StartOpts {
        events_path: Some(path.display().to_string()),
        ..StartOpts::default()
    };
    let t = Tlspeek::start_opts(&format!("allowed_ports = [{echo}]\n"), "", &opts);
    assert_event_log_errors_counted(&t, echo);
    assert!(!path.exists());
}

#[test]
fn event_log_on_a_full_disk() {
    // /dev/full: opening works, every write fails with ENOSPC.
    let echo = spawn_echo();
    let opts = StartOpts {
        events_path: Some("/dev/full".into()),
        ..StartOpts::default()
    };
    let t = Tlspeek::start_opts(&format!("allowed_ports = [{echo}]\n"), "", &opts);
    assert_event_log_errors_counted(&t, echo);
    assert!(
        t.stderr().contains("No space left on device"),
        "{}",
        t.stderr()
    );
}

/// Sends a CONNECT on a fresh socket and reads the status line within `within`; None when
/// no answer came (e.g. the proxy could not accept).
fn try_connect(proxy_port: u16, target: &str, within: Duration) -> (TcpStream, Option<String>) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let head = read_head(&mut s);
    let status = head.lines().next().map(str::to_string);
    s.set_read_timeout(Some(SECS)).unwrap();
    (s, status.filter(|l| !l.is_empty()))
}

#[test]
fn out_of_file_descriptors_backs_off_and_recovers() {
    if !require(&["prlimit", "getconf"]) {
        return;
    }
    // An upstream that holds every connection open until the test lets go.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held2 = held.clone();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            held2.lock().unwrap().push(c);
        }
    });
    thread::spawn(move || {
        let _ = release_rx.recv();
        held.lock().unwrap().clear();
    });
    let opts = StartOpts {
        nofile: Some(48),
        rust_log: Some("info".into()),
        ..StartOpts::default()
    };
    let t = Tlspeek::start_opts(&format!("allowed_ports = [{port}]\n"), "", &opts);
    let pid = t.pid();
    let target = format!("127.0.0.1:{port}");
    assert_eq!(proc_nofile(pid), 48, "ulimit -n not applied");
    let idle_fds = t.fds();
    assert!(idle_fds < 40, "tlspeek holds {idle_fds} fds at idle");

    // Open tunnels until one is not answered with 200 (each holds two descriptors).
    let mut tunnels = Vec::new();
    let mut refused = None;
    for _ in 0..40 {
        let (s, status) = try_connect(t.proxy_port, &target, Duration::from_secs(3));
        match status {
            Some(l) if l.contains(" 200 ") => tunnels.push(s),
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    assert!(refused.is_some(), "48 descriptors never ran out");
    // More clients at once: accept() itself now fails with EMFILE.
    let waiting: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", t.proxy_port)).unwrap();
            write!(s, "CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    // Out of descriptors, the accept loop backs off instead of spinning.
    let cpu0 = proc_cpu_seconds(pid);
    let wall = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let cpu = (proc_cpu_seconds(pid) - cpu0) / wall.elapsed().as_secs_f64();
    eprintln!(
        "fds: {idle_fds} at idle, {} tunnels before {refused:?}; {cpu:.3} of a core while out",
        tunnels.len()
    );
    assert!(
        cpu < 0.3,
        "tlspeek used {cpu:.2} of a core while out of fds"
    );
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        !state.is_empty() && !state.contains(") Z "),
        "tlspeek exited"
    );

    // Descriptors come back: the waiting clients and new ones are served.
    drop(tunnels);
    release_tx.send(()).unwrap();
    let end = Instant::now() + SECS;
    let recovered = loop {
        let (_s, status) = try_connect(t.proxy_port, &target, Duration::from_secs(3));
        if status.as_deref().is_some_and(|l| l.contains(" 200 ")) {
            break true;
        }
        if Instant::now() > end {
            break false;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(recovered, "not serving again after descriptors returned");
    for mut s in waiting {
        let status = read_head(&mut s);
        assert!(
            status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.1 50"),
            "a client queued during the shortage got {status:?}"
        );
    }
    assert!(
        t.metric("tlspeek_accept_errors_total", &[("listener", "proxy")]) >= 1.0,
        "accept errors not counted"
    );
    let err = t.stderr();
    assert!(err.contains("out of resources"), "{err}");
}
