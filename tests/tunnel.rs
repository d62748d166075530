//! The tunnel itself: bytes arrive unchanged (SHA-256 at both ends), half-close is passed
//! on, a reset is passed on as a reset, upstream bytes flow before the client says anything,
//! non-TLS and truncated first flights pass through, and shutdown drains.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// A TCP echo server on 127.0.0.1 (one thread per connection); echoes until EOF, then
/// half-closes.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = c.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: fast, deterministic, incompressible enough for a checksum test.
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

#[test]
fn non_tls_tunnel_is_byte_exact_both_ways_with_half_close() {
    let echo = echo_server();
    let t = Tlspeek::start(&format!("allowed_ports = [{echo}]\n"), "");
    let (s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    assert!(status.contains(" 200 "), "{status}");
    let data = random_bytes(64 << 20, 7);
    let want = Sha256::digest(&data);
    let mut reader = s.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let got = thread::spawn(move || {
        let mut h = Sha256::new();
        let mut n = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k;
                }
                Err(e) => panic!("read failed after {n} bytes: {e}"),
            }
        }
        (h.finalize(), n)
    });
    let mut w = s;
    w.write_all(&data).unwrap();
    // Half-close: the echo server only answers the rest and closes after our EOF.
    w.shutdown(Shutdown::Write).unwrap();
    let (digest, n) = got.join().unwrap();
    assert_eq!(n, data.len());
    assert_eq!(digest, want, "SHA-256 of the echoed 64 MiB differs");
    let ev = t.wait_events("tunnel event", |e| !e.is_empty());
    assert_eq!(ev[0]["kind"], "not_tls");
    assert_eq!(ev[0]["outcome"], "closed");
    assert_eq!(ev[0]["bytes_up"], data.len() as u64);
    assert_eq!(ev[0]["bytes_down"], data.len() as u64);
    let m = t.metrics();
    assert!(
        sample(&m, "tlspeek_tunnel_bytes_total", &[("direction", "up")]).unwrap()
            >= data.len() as f64
    );
    assert_eq!(sample(&m, "tlspeek_active_tunnels", &[]), Some(0.0));
}

#[test]
fn client_half_close_still_gets_the_whole_response() {
    // The upstream reads the request until EOF, then sends a 4 MiB response.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let response = random_bytes(4 << 20, 11);
    let resp = response.clone();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut req = Vec::new();
        c.read_to_end(&mut req).unwrap();
        assert_eq!(req, b"request, then EOF");
        c.write_all(&resp).unwrap();
    });
    let t = Tlspeek::start(&format!("allowed_ports = [{port}]\n"), "");
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(status.contains(" 200 "));
    s.write_all(b"request, then EOF").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&response));
}

#[test]
fn upstream_reset_mid_transfer_reaches_the_client_as_a_reset() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
        c.write_all(&[b'x'; 1000]).unwrap();
        thread::sleep(Duration::from_millis(200));
        // Close with SO_LINGER 0: a reset, not a FIN.
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
    });
    let t = Tlspeek::start(&format!("allowed_ports = [{port}]\n"), "");
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(status.contains(" 200 "));
    s.write_all(b"hello").unwrap();
    let mut got = Vec::new();
    let err = loop {
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "clean EOF after {} bytes: the reset was not passed on",
                got.len()
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert_eq!(got.len(), 1000);
    let ev = t.wait_events("reset event", |e| !e.is_empty());
    assert_eq!(ev[0]["outcome"], "upstream_reset");
}

#[test]
fn client_reset_is_passed_to_the_upstream() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 4096];
        let r = loop {
            match c.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e.kind()),
            }
        };
        tx.send(r).unwrap();
    });
    let t = Tlspeek::start(&format!("allowed_ports = [{port}]\n"), "");
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(status.contains(" 200 "));
    s.write_all(b"not tls, just bytes").unwrap();
    thread::sleep(Duration::from_millis(200));
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(r, Err(ErrorKind::ConnectionReset));
    let ev = t.wait_events("reset event", |e| !e.is_empty());
    assert_eq!(ev[0]["outcome"], "client_reset");
}

#[test]
fn server_speaks_first_and_silent_clients_keep_working() {
    // An SMTP-like upstream: it greets first, then echoes one line.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            thread::spawn(move || {
                let mut c = c;
                let _ = c.write_all(b"220 hello from the server\r\n");
                let mut buf = [0u8; 1024];
                if let Ok(n) = c.read(&mut buf) {
                    let _ = c.write_all(&buf[..n]);
                }
            });
        }
    });
    let t = Tlspeek::start(
        &format!("allowed_ports = [{port}]\nhello_timeout = \"3s\"\n"),
        "",
    );
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{port}"));
    assert!(status.contains(" 200 "));
    // The greeting arrives while the proxy is still waiting for a ClientHello.
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"220 hello from the server\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "greeting was held back"
    );
    // After the hello timeout the client's bytes still pass.
    thread::sleep(Duration::from_millis(3200));
    s.write_all(b"EHLO me\r\n").unwrap();
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"EHLO me\r\n");
    drop(s);
    let ev = t.wait_events("event", |e| !e.is_empty());
    assert_eq!(ev[0]["kind"], "none");
    let m = t.metrics();
    assert_eq!(
        sample(&m, "tlspeek_first_flights_total", &[("kind", "none")]),
        Some(1.0)
    );
}

#[test]
fn on_hello_timeout_close_ends_silent_tunnels() {
    let echo = echo_server();
    let t = Tlspeek::start(
        &format!(
            "allowed_ports = [{echo}]\nhello_timeout = \"500ms\"\non_hello_timeout = \"close\"\n"
        ),
        "",
    );
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    assert!(status.contains(" 200 "));
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "tunnel should be closed");
    let ev = t.wait_events("event", |e| !e.is_empty());
    assert_eq!(ev[0]["kind"], "none");
    assert_eq!(ev[0]["outcome"], "closed");
}

#[test]
fn garbage_and_truncated_hellos_pass_through_unchanged() {
    let echo = echo_server();
    let t = Tlspeek::start(&format!("allowed_ports = [{echo}]\n"), "");
    // Not TLS at all.
    let (mut s, _) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // The first 40 bytes of a TLS record claiming 512 bytes, then EOF.
    let mut partial = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    partial.extend_from_slice(&[0xab; 29]);
    let (mut s, _) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    s.write_all(&partial).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, partial);
    let ev = t.wait_events("two events", |e| e.len() >= 2);
    let kinds: Vec<&str> = ev
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?"))
        .collect();
    assert!(kinds.contains(&"not_tls"), "{kinds:?}");
    assert!(kinds.contains(&"truncated"), "{kinds:?}");
    let m = t.metrics();
    assert_eq!(
        sample(&m, "tlspeek_first_flights_total", &[("kind", "truncated")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "tlspeek_first_flights_total", &[("kind", "not_tls")]),
        Some(1.0)
    );
}

#[test]
fn shutdown_stops_accepting_and_drains_open_tunnels() {
    let echo = echo_server();
    let mut t = Tlspeek::start(
        &format!("allowed_ports = [{echo}]\nshutdown_grace = \"10s\"\n"),
        "",
    );
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    assert!(status.contains(" 200 "));
    s.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    let _ = t.signal("TERM");
    // Readiness turns 503 while the open tunnel still works.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _) = t.admin_get("/readyz");
        if code == 503 {
            break;
        }
        assert!(Instant::now() < end, "readyz never turned 503");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        TcpStream::connect(("127.0.0.1", t.proxy_port)).is_err(),
        "still accepting"
    );
    s.write_all(b"during").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let status = t
        .terminate(Duration::from_secs(10))
        .expect("tlspeek did not exit after draining");
    assert!(status.success(), "{status:?}");
    let ev = t.target_events();
    assert_eq!(ev.len(), 1, "{ev:?}\n{}", t.stderr());
    assert_eq!(ev[0]["bytes_up"], 12);
}

#[test]
fn debug_tunnels_shows_each_open_tunnel_and_its_pumps() {
    let echo = spawn_echo();
    let t = Tlspeek::start(&format!("allowed_ports = [{echo}]\n"), "");
    let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    assert!(status.contains(" 200 "), "{status}");
    let hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/curl_tls12.bin"
    ))
    .unwrap();
    s.write_all(&hello).unwrap();
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).unwrap();
    let port = s.local_addr().unwrap().port();
    let find = || -> Option<Value> {
        let (code, body) = t.admin_get("/debug/tunnels");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["pipes"]["pooled"].is_u64() && v["buffers_pooled"].is_u64(),
            "{v}"
        );
        v["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["client"] == format!("127.0.0.1:{port}"))
            .cloned()
    };
    let end = Instant::now() + Duration::from_secs(5);
    let entry = loop {
        let e = find().expect("the open tunnel is listed");
        let idle = e["up"]["waiting"] == "readable" && e["down"]["waiting"] == "readable";
        if idle || Instant::now() > end {
            break e;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(entry["target"], format!("127.0.0.1:{echo}"), "{entry}");
    assert_eq!(entry["up"]["bytes"], hello.len(), "{entry}");
    assert_eq!(entry["down"]["bytes"], hello.len(), "{entry}");
    assert_eq!(
        entry["up"]["waiting"], "readable",
        "an idle tunnel waits to read: {entry}"
    );
    assert_eq!(entry["down"]["waiting"], "readable", "{entry}");
    assert!(
        ["copy", "splice"].contains(&entry["down"]["path"].as_str().unwrap()),
        "the ServerHello tap is done: {entry}"
    );
    drop(s);
    let end = Instant::now() + Duration::from_secs(5);
    while find().is_some() {
        assert!(Instant::now() < end, "a closed tunnel stays listed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `proxy.zero_copy` picks the pass-through path: `splice(2)` by default (Linux) once a
/// direction has moved `SPLICE_AFTER` bytes, so a short tunnel stays on the pooled
/// user-space copy; always the copy when it is false. Either way the bytes arrive
/// unchanged (SHA-256).
#[test]
fn zero_copy_setting_picks_the_pass_through_path_and_bytes_arrive_unchanged() {
    let hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/curl_tls12.bin"
    ))
    .unwrap();
    let short = tlspeek::net::splice::SPLICE_AFTER / 2;
    for (setting, extra, path) in [
        ("", 4 << 20, "splice"),
        ("", short, "copy"),
        ("zero_copy = false\n", 4 << 20, "copy"),
    ] {
        let echo = echo_server();
        let t = Tlspeek::start(&format!("allowed_ports = [{echo}]\n{setting}"), "");
        let (s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
        assert!(status.contains(" 200 "), "{status}");
        let mut data = hello.clone();
        data.extend(random_bytes(extra, 23));
        let want = Sha256::digest(&data);
        let len = data.len();
        let mut reader = s.try_clone().unwrap();
        reader
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // Reads exactly what was sent; the tunnel stays open to be looked at.
        let got = thread::spawn(move || {
            let mut back = vec![0u8; len];
            reader.read_exact(&mut back).unwrap();
            Sha256::digest(&back)
        });
        let mut w = s.try_clone().unwrap();
        w.write_all(&data).unwrap();
        assert_eq!(
            got.join().unwrap(),
            want,
            "echoed bytes differ ({setting:?}, {len} bytes)"
        );
        let port = s.local_addr().unwrap().port();
        // The pumps count a chunk after writing it: wait (bounded) for the last count.
        let end = Instant::now() + Duration::from_secs(5);
        let entry = loop {
            let (code, body) = t.admin_get("/debug/tunnels");
            assert_eq!(code, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            let e = v["tunnels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["client"] == format!("127.0.0.1:{port}"))
                .cloned()
                .unwrap_or_else(|| panic!("the open tunnel is not listed: {v}"));
            if e["up"]["bytes"] == len && e["down"]["bytes"] == len || Instant::now() > end {
                break e;
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            entry["up"]["path"], path,
            "{setting:?}, {len} bytes: {entry}"
        );
        assert_eq!(
            entry["down"]["path"], path,
            "{setting:?}, {len} bytes: {entry}"
        );
        assert_eq!(entry["up"]["bytes"], len, "{entry}");
        assert_eq!(entry["down"]["bytes"], len, "{entry}");
        drop(s);
        drop(w);
    }
}

/// `write(2)` calls made so far by the process's runtime threads (named `tlspeek`; the
/// event and inventory writers have names of their own), from `/proc/PID/task/*/io`.
fn runtime_writes(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "tlspeek" {
            continue;
        }
        let io = std::fs::read_to_string(dir.join("io")).unwrap_or_default();
        total += io
            .lines()
            .find_map(|l| l.strip_prefix("syscw:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// A quiet proxy arms a connection's timeouts (the dial, the wait for the hello) without
/// waking its own runtime. Tokio's timer writes to its eventfd for every timer due before
/// the soonest one pending, or when none is; that was two `write(2)`s per connection (and
/// the wake-ups they cause) until `keep_a_timer_armed` kept one pending. With the logs at
/// `warn` and local process naming off, the runtime threads write nothing else.
#[test]
fn a_quiet_proxy_arms_connection_timeouts_without_waking_itself() {
    const CONNECTIONS: u64 = 40;
    let echo = echo_server();
    let opts = StartOpts {
        rust_log: Some("warn".into()),
        ..StartOpts::default()
    };
    let t = Tlspeek::start_opts(
        &format!("allowed_ports = [{echo}]\nname_local_processes = false\n"),
        "",
        &opts,
    );
    let tunnel = |t: &Tlspeek| {
        let (mut s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
        assert!(status.contains(" 200 "), "{status}");
        // Sent only after the 200: the proxy waits for it with its hello timeout armed.
        s.write_all(CURL_TLS12_HELLO).unwrap();
        let mut back = vec![0u8; CURL_TLS12_HELLO.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, CURL_TLS12_HELLO);
    };
    tunnel(&t);
    let before = runtime_writes(t.pid());
    for _ in 0..CONNECTIONS {
        tunnel(&t);
    }
    let writes = runtime_writes(t.pid()) - before;
    assert!(
        writes < CONNECTIONS / 2,
        "{writes} write(2) calls by the runtime for {CONNECTIONS} connections: arming a \
         connection's timeouts wakes the runtime"
    );
}
