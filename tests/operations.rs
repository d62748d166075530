//! Operating at the egress: proxy authentication, a locked-down admin plane, hot reload that
//! never drops a tunnel nor accepts a bad file, log rotation, slow clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn proxy_authentication() {
    let echo = echo_server();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    write_secret(&creds, &passwd("alice", "correct horse"));
    let t = Tlspeek::start(
        &format!("allowed_ports = [{echo}]\n"),
        &format!(
            "[auth]\ncredentials_file = \"{}\"\nexempt_sources = [\"127.0.0.9/32\"]\n",
            creds.display()
        ),
    );
    let target = format!("127.0.0.1:{echo}");
    let head = connect_with(t.proxy_port, "127.0.0.1", &target, None);
    assert!(head.starts_with("HTTP/1.1 407 "), "{head}");
    assert!(
        head.contains("Proxy-Authenticate: Basic realm=\"tlspeek\""),
        "{head}"
    );
    let head = connect_with(t.proxy_port, "127.0.0.1", &target, Some(("alice", "wrong")));
    assert!(head.starts_with("HTTP/1.1 407 "), "{head}");
    let head = connect_with(
        t.proxy_port,
        "127.0.0.1",
        &target,
        Some(("alice", "correct horse")),
    );
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let head = connect_with(t.proxy_port, "127.0.0.9", &target, None);
    assert!(head.starts_with("HTTP/1.1 200 "), "exempt source: {head}");

    // Failures past the limit: 429 at once, without hashing.
    for _ in 0..5 {
        connect_with(t.proxy_port, "127.0.0.5", &target, Some(("alice", "guess")));
    }
    let hashes = sample(&t.metrics(), "tlspeek_auth_password_hashes_total", &[]).unwrap();
    let head = connect_with(
        t.proxy_port,
        "127.0.0.5",
        &target,
        Some(("alice", "correct horse")),
    );
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    let m = t.metrics();
    assert_eq!(
        sample(&m, "tlspeek_auth_password_hashes_total", &[]),
        Some(hashes)
    );
    assert_eq!(
        sample(
            &m,
            "tlspeek_auth_failures_total",
            &[("reason", "rate_limited")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "tlspeek_auth_failures_total", &[("reason", "denied")]),
        Some(6.0)
    );
    assert_eq!(
        sample(&m, "tlspeek_auth_failures_total", &[("reason", "missing")]),
        Some(1.0)
    );
    // Other sources are unaffected.
    let head = connect_with(
        t.proxy_port,
        "127.0.0.6",
        &target,
        Some(("alice", "correct horse")),
    );
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    t.wait_events("3 tunnels", |e| {
        e.iter().filter(|x| x["outcome"] == "closed").count() >= 3
    });
    let ev = t.events();
    assert!(ev.iter().any(|e| e["user"] == "alice"), "{ev:#?}");
    assert_eq!(
        ev.iter()
            .filter(|e| e["outcome"] == "auth_required")
            .count(),
        8,
        "{ev:#?}"
    );
    assert!(
        ev.iter()
            .filter(|e| e["source_ip"] == "127.0.0.9")
            .all(|e| e["user"].is_null())
    );
}

fn admin_request(port: u16, source: &str, request: &str) -> String {
    let mut s = connect_from(source, port, Duration::from_secs(10));
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn the_admin_plane_is_locked_down() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    write_secret(&token, "0123456789abcdef0123456789abcdef\n");
    let t = Tlspeek::start(
        "allowed_ports = [443]\n",
        &format!(
            "[admin]\nallowed_sources = [\"127.0.0.1/32\"]\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    let get = |source: &str, path: &str, extra: &str| {
        admin_request(
            t.admin_port,
            source,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"),
        )
    };
    // Another source learns nothing, not even metrics.
    for path in ["/metrics", "/legacy", "/legacy.csv", "/healthz"] {
        assert!(
            get("127.0.0.2", path, "").starts_with("HTTP/1.1 403"),
            "{path}"
        );
    }
    assert!(get("127.0.0.1", "/metrics", "").starts_with("HTTP/1.1 200"));
    assert!(get("127.0.0.1", "/legacy", "").starts_with("HTTP/1.1 401"));
    assert!(
        get(
            "127.0.0.1",
            "/legacy.csv",
            "Authorization: Bearer wrong-token-wrong-token\r\n"
        )
        .starts_with("HTTP/1.1 401")
    );
    let ok = get(
        "127.0.0.1",
        "/legacy",
        "Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // Reload: never by GET, never cross-origin, only with the token.
    let bearer = "Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n";
    assert!(get("127.0.0.1", "/-/reload", bearer).starts_with("HTTP/1.1 405"));
    let post = |extra: &str| {
        admin_request(
            t.admin_port,
            "127.0.0.1",
            &format!(
                "POST /-/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
            ),
        )
    };
    assert!(post("").starts_with("HTTP/1.1 401"));
    assert!(post(&format!("{bearer}Origin: http://evil.example\r\n")).starts_with("HTTP/1.1 403"));
    let m = t.metrics();
    assert_eq!(
        sample(&m, "tlspeek_config_reloads_total", &[("result", "success")]),
        Some(0.0)
    );
    assert!(post(bearer).starts_with("HTTP/1.1 200"));
    assert_eq!(
        sample(
            &t.metrics(),
            "tlspeek_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0)
    );
}

#[test]
fn reload_applies_to_new_connections_and_never_breaks_a_tunnel() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_s, up) = openssl_server(&[]);
    let echo = echo_server();
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}, {echo}]\nmax_connections_per_source = 50\n"),
        "",
    );
    let cfg_path = t.dir.path().join("tlspeek.toml");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let tls10 = [
        "--tlsv1.0",
        "--tls-max",
        "1.0",
        "--ciphers",
        "DEFAULT:@SECLEVEL=0",
    ];

    // A tunnel opened before any reload.
    let (mut tunnel, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    assert!(status.contains(" 200 "));
    let mut check_tunnel = |round: u8| {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i as u8) ^ round).collect();
        tunnel.write_all(&payload).unwrap();
        let mut got = vec![0u8; payload.len()];
        tunnel.read_exact(&mut got).unwrap();
        assert_eq!(got, payload, "round {round}");
    };
    check_tunnel(1);

    // An invalid file: refused, counted, the old configuration stays.
    std::fs::write(&cfg_path, format!("{good}\n[proxy\nnot toml\n")).unwrap();
    assert!(t.signal("HUP"));
    t.wait_metric(
        "tlspeek_config_reloads_total",
        &[("result", "failure")],
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    assert!(
        t.stderr().contains("configuration reload failed"),
        "{}",
        t.stderr()
    );
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &tls10).0, "200");
    check_tunnel(2);

    // A valid block rule: the next connection is blocked; the open tunnel carries on.
    std::fs::write(
        &cfg_path,
        format!("{good}\n[[rules]]\ndestinations = [\"login.microsoftonline.com\"]\naction = \"block\"\n"),
    )
    .unwrap();
    assert!(t.signal("HUP"));
    t.wait_metric(
        "tlspeek_config_reloads_total",
        &[("result", "success")],
        Duration::from_secs(10),
        |v| v == 1.0,
    );
    let (code, err) = curl_via(t.proxy_port, up, LOGIN, &tls10);
    assert_ne!(code, "200", "{err}");
    assert!(err.contains("alert protocol version"), "{err}");
    check_tunnel(3);

    // A listener change is reported as needing a restart (POST /-/reload answers it).
    let moved = good.replace(&format!("127.0.0.1:{}", t.proxy_port), "127.0.0.1:1");
    std::fs::write(&cfg_path, moved).unwrap();
    let answer = admin_request(
        t.admin_port,
        "127.0.0.1",
        "POST /-/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        answer.contains("needs a restart to apply: proxy.listen"),
        "{answer}"
    );
    // Still listening where it was; the rule is gone again.
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &tls10).0, "200");
    check_tunnel(4);
    tunnel.shutdown(Shutdown::Write).unwrap();
    let _ = tunnel.read_to_end(&mut Vec::new());
    let ev = t.wait_events("the long tunnel's event", |e| {
        e.iter().any(|x| x["target_port"] == echo)
    });
    let long = ev.iter().find(|x| x["target_port"] == echo).unwrap();
    assert_eq!(long["outcome"], "closed");
    assert_eq!(long["bytes_up"], 800_000);
}

#[test]
fn the_event_log_reopens_on_sigusr1_with_mode_0640() {
    use std::os::unix::fs::PermissionsExt;
    let echo = echo_server();
    let t = Tlspeek::start(&format!("allowed_ports = [{echo}]\n"), "");
    let one = |tag: &str| {
        let (mut s, _) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
        s.write_all(tag.as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    };
    one("first");
    t.wait_events("first", |e| !e.is_empty());
    assert_eq!(
        std::fs::metadata(&t.events_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    let rotated = t.events_path.with_extension("jsonl.1");
    std::fs::rename(&t.events_path, &rotated).unwrap();
    assert!(t.signal("USR1"));
    let end = Instant::now() + Duration::from_secs(10);
    while !t.events_path.exists() {
        assert!(
            Instant::now() < end,
            "no new event file after SIGUSR1: {}",
            t.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    one("second");
    t.wait_events("second in the new file", |e| !e.is_empty());
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(
        old.lines()
            .filter(|l| l.contains("\"kind\":\"not_tls\""))
            .count(),
        1,
        "{old}"
    );
    let new = std::fs::read_to_string(&t.events_path).unwrap();
    assert_eq!(
        new.lines()
            .filter(|l| l.contains("\"kind\":\"not_tls\""))
            .count(),
        1,
        "{new}"
    );
    assert_eq!(
        std::fs::metadata(&t.events_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
}

#[test]
fn a_client_sending_one_byte_a_second_is_cut_at_header_timeout() {
    let t = Tlspeek::start("allowed_ports = [443]\nheader_timeout = \"3s\"\n", "");
    let mut s = TcpStream::connect(("127.0.0.1", t.proxy_port)).unwrap();
    let started = Instant::now();
    let mut cut = false;
    for b in b"CONNECT login.microsoftonline.com:443 HTTP/1.1\r\nHost: x\r\n\r\n" {
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        if let Ok(n) = s.read(&mut buf) {
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(n == 0 || head.starts_with("HTTP/1.1 408 "), "{head}");
            cut = true;
            break;
        }
        s.set_nonblocking(false).unwrap();
    }
    assert!(cut, "still reading after {:?}", started.elapsed());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "{took:?}"
    );
}
