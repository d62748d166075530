//! Issue 15's findings, each against a running tlspeek with real peers on 127.0.0.1 (or in
//! a network namespace of the test's own): proxy authentication on every plain-HTTP
//! request and a failure limit concurrency cannot race, the admin port kept answerable
//! while refused or proxy-only sources hold connections, Host taken from the URL, a
//! series flood that cannot hide a new legacy caller, an SNI capped at 255 bytes, cloud
//! metadata and IPv4-carrying IPv6 destinations refused before any connect, and the
//! inventory's file mode.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A plain-HTTP origin: answers every request `200 ok` with keep-alive and records the Host
/// headers of each request it sees.
fn origin() -> (u16, Arc<Mutex<Vec<Vec<String>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let hosts: Vec<String> = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
                            .map(|(_, v)| v.trim().to_string())
                            .collect();
                        log.lock().unwrap().push(hosts);
                        if c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (port, seen)
}

/// Sends `bytes` on a fresh connection and reads until `responses` status lines have come
/// back (or the connection closes, or 15 s pass), then a moment more for anything extra.
fn exchange(port: u16, bytes: &[u8], responses: usize) -> String {
    let mut s = connect_from("127.0.0.1", port, Duration::from_millis(100));
    s.write_all(bytes).unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let mut out = Vec::new();
    let mut b = [0u8; 8192];
    let mut enough_at = None;
    loop {
        let now = Instant::now();
        if now > end || enough_at.is_some_and(|t: Instant| now > t) {
            break;
        }
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
        if enough_at.is_none() && statuses(&String::from_utf8_lossy(&out)).len() >= responses {
            enough_at = Some(Instant::now() + Duration::from_millis(300));
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answer.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn with_credentials(t_dir: &std::path::Path) -> String {
    let creds = t_dir.join("credentials");
    write_secret(&creds, &passwd("alice", "correct-horse-battery"));
    format!("[auth]\ncredentials_file = \"{}\"\n", creds.display())
}

#[test]
fn plain_http_keep_alive_asks_every_request_for_credentials() {
    let (http, seen) = origin();
    let dir = tempfile::tempdir().unwrap();
    let t = Tlspeek::start(
        &format!("allowed_http_ports = [{http}]\n"),
        &with_credentials(dir.path()),
    );
    let req = |auth: Option<String>| {
        format!(
            "GET http://127.0.0.1:{http}/k HTTP/1.1\r\nHost: 127.0.0.1:{http}\r\n{}\r\n",
            auth.map(|a| format!("Proxy-Authorization: {a}\r\n"))
                .unwrap_or_default()
        )
    };
    let good = Some(basic("alice", "correct-horse-battery"));
    // Pipelined on one connection: good, none, wrong, good.
    let pipelined = [
        req(good.clone()),
        req(None),
        req(Some(basic("alice", "nope"))),
        req(good),
    ]
    .concat();
    let answer = exchange(t.proxy_port, pipelined.as_bytes(), 4);
    assert_eq!(statuses(&answer), [200, 407, 407, 200], "{answer}");
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "only the authenticated requests reach the origin"
    );
    let ev = t.wait_events("four http events", |e| {
        e.iter().filter(|x| x["mode"] == "http").count() >= 4
    });
    let http: Vec<_> = ev.iter().filter(|x| x["mode"] == "http").collect();
    let users: Vec<_> = http.iter().map(|e| e["user"].clone()).collect();
    assert_eq!(
        users,
        [
            Value::from("alice"),
            Value::Null,
            Value::Null,
            Value::from("alice")
        ],
        "the refused requests carry no user"
    );
    let outcomes: Vec<_> = http.iter().map(|e| e["outcome"].clone()).collect();
    assert_eq!(outcomes[1], "auth_required");
    let m = t.metrics();
    // A missing header is normal for a first try and is not a failure; a wrong one is.
    assert_eq!(
        sample(&m, "tlspeek_auth_failures_total", &[("reason", "denied")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "tlspeek_auth_failures_total", &[("reason", "missing")]),
        Some(1.0)
    );
}

#[test]
fn concurrent_wrong_passwords_cannot_race_the_failure_limit() {
    let echo = spawn_echo();
    let dir = tempfile::tempdir().unwrap();
    let t = Tlspeek::start(
        &format!("allowed_ports = [{echo}]\n"),
        &with_credentials(dir.path()),
    );
    let target = format!("127.0.0.1:{echo}");
    let hashes = || sample(&t.metrics(), "tlspeek_auth_password_hashes_total", &[]).unwrap();
    let before = hashes();
    let port = t.proxy_port;
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..60)
            .map(|i| {
                let target = &target;
                s.spawn(move || {
                    connect_with(
                        port,
                        "127.0.0.33",
                        target,
                        Some(("alice", &format!("wrong{i}"))),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let hashed = hashes() - before;
    assert!(
        hashed <= 5.0,
        "60 concurrent wrong passwords hashed {hashed} times; the limit is 5"
    );
    let refused = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 429 "))
        .count();
    assert!(refused >= 55, "{refused} of 60 got 429");
    // An unknown user costs a hash like a known one (no timing oracle for user names).
    let before = hashes();
    let head = connect_with(port, "127.0.0.34", &target, Some(("mallory", "x")));
    assert!(head.starts_with("HTTP/1.1 407 "), "{head}");
    assert_eq!(hashes() - before, 1.0, "the unknown user was hashed");
}

#[test]
fn refused_and_proxy_only_sources_cannot_hold_the_admin_port() {
    let t = Tlspeek::start(
        "allowed_sources = [\"127.0.0.0/24\"]\n",
        "[admin]\nallowed_sources = [\"127.0.0.1/32\"]\n",
    );
    let admin = t.admin_port;
    // A source neither list allows is closed at accept, without an answer.
    for _ in 0..20 {
        let mut s = connect_from("127.0.1.5", admin, Duration::from_secs(2));
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(
            got.is_empty(),
            "a stranger got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // A proxy client may fetch the PAC file; any other path gets a 403 that closes.
    let mut s = connect_from("127.0.0.5", admin, Duration::from_secs(2));
    s.write_all(b"GET /proxy.pac HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 200 "));
    drop(s);
    let mut s = connect_from("127.0.0.5", admin, Duration::from_secs(2));
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 403 "), "{got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    // 80 idle connections from a proxy client take every slot they may; the admin's own
    // source still gets /healthz and /readyz at once.
    let holders: Vec<_> = (0..80)
        .map(|_| connect_from("127.0.0.5", admin, Duration::from_secs(2)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/healthz", "/readyz", "/healthz"] {
        let started = Instant::now();
        let (code, _) = t.admin_get(path);
        assert_eq!(
            code, 200,
            "{path} while proxy clients hold the shared slots"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{path} waited");
    }
    drop(holders);
}

#[test]
fn plain_http_host_is_the_urls_authority() {
    let (http, seen) = origin();
    let t = Tlspeek::start(&format!("allowed_http_ports = [{http}]\n"), "");
    let answer = exchange(
        t.proxy_port,
        format!("GET http://127.0.0.1:{http}/h HTTP/1.1\r\nHost: internal.corp.example\r\n\r\n")
            .as_bytes(),
        1,
    );
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(
        seen.lock().unwrap().last().unwrap(),
        &[format!("127.0.0.1:{http}")],
        "the origin gets the URL's authority"
    );
    let before = seen.lock().unwrap().len();
    let answer = exchange(
        t.proxy_port,
        format!(
            "GET http://127.0.0.1:{http}/h2 HTTP/1.1\r\nHost: 127.0.0.1:{http}\r\nHost: other\r\n\r\n"
        )
        .as_bytes(),
        1,
    );
    assert_eq!(statuses(&answer), [400], "{answer}");
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "nothing reached the origin"
    );
}

/// A TLS 1.0 ClientHello naming `sni` (any length up to what a record holds).
fn tls10_hello(sni: &[u8]) -> Vec<u8> {
    let be16 = |n: usize| (n as u16).to_be_bytes();
    let mut ext = vec![0, 0];
    ext.extend(be16(sni.len() + 5));
    ext.extend(be16(sni.len() + 3));
    ext.push(0);
    ext.extend(be16(sni.len()));
    ext.extend_from_slice(sni);
    let mut body = vec![3, 1];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0, 4, 0, 0x2f, 0, 0x35, 1, 0]);
    body.extend(be16(ext.len()));
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend(be16(hs.len()));
    rec.extend(hs);
    rec
}

/// CONNECT from `source`, send `hello`, close.
fn hello_through(proxy: u16, source: &str, target: &str, hello: &[u8]) {
    let mut s = connect_from(source, proxy, Duration::from_secs(5));
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    s.write_all(hello).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.read_to_end(&mut Vec::new());
}

#[test]
fn a_flood_of_watched_names_cannot_hide_a_new_legacy_caller() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_server, up) = openssl_server(&[]);
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        "[metrics]\nmax_series_per_metric = 200\n",
    );
    let target = format!("127.0.0.1:{up}");
    for i in 0..400 {
        let name = format!("leg{i}.login.microsoftonline.com");
        hello_through(
            t.proxy_port,
            "127.0.0.50",
            &target,
            &tls10_hello(name.as_bytes()),
        );
    }
    let labels = [("metric", "tlspeek_client_hellos_total")];
    t.wait_metric(
        "tlspeek_label_overflow_total",
        &labels,
        Duration::from_secs(20),
        |v| v >= 200.0,
    );
    let (code, err) = Command::new("curl")
        .args(["-sk", "-m", "10", "--interface", "127.0.0.77", "-x"])
        .arg(format!("http://127.0.0.1:{}", t.proxy_port))
        .args(TLS10_ONLY)
        .arg("--connect-to")
        .arg(format!("{LOGIN}:443:127.0.0.1:{up}"))
        .arg(format!("https://{LOGIN}/"))
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .output()
        .map(|o| {
            (
                String::from_utf8_lossy(&o.stdout).to_string(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        })
        .unwrap();
    assert_eq!(code, "200", "{err}");
    let newcomer = [("source", "127.0.0.77")];
    t.wait_metric(
        "tlspeek_legacy_connections_total",
        &newcomer,
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    let m = t.metrics();
    for name in [
        "tlspeek_client_hellos_total",
        "tlspeek_source_last_legacy_timestamp_seconds",
        "tlspeek_handshakes_total",
    ] {
        assert!(
            sample(
                &m,
                name,
                &[("source", "127.0.0.77"), ("destination", LOGIN)]
            )
            .is_some(),
            "{name} has the newcomer's own series"
        );
        let series = m
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .count();
        assert!(series <= 200, "{name}: {series} series over the budget");
    }
}

#[test]
fn an_sni_longer_than_a_host_name_is_cut_and_counted() {
    let echo = spawn_echo();
    let t = Tlspeek::start(&format!("allowed_ports = [{echo}]\n"), "");
    let long = vec!["a".repeat(63); 9].join(".") + ".example";
    hello_through(
        t.proxy_port,
        "127.0.0.1",
        &format!("127.0.0.1:{echo}"),
        &tls10_hello(long.as_bytes()),
    );
    let ev = t.wait_events("the long-SNI event", |e| {
        e.iter().any(|x| x["target_port"] == echo)
    });
    let e = ev.iter().find(|x| x["target_port"] == echo).unwrap();
    assert_eq!(e["kind"], "tls");
    let sni = e["sni"].as_str().unwrap();
    assert_eq!(sni.len(), 255, "cut to 255 bytes");
    assert!(long.starts_with(sni));
    assert_eq!(e["max_version"], "TLS1.0", "every other field is kept");
    assert_eq!(
        sample(
            &t.metrics(),
            "tlspeek_hello_anomalies_total",
            &[("reason", "sni_too_long")]
        ),
        Some(1.0)
    );
}

#[test]
fn metadata_and_ipv4_carrying_ipv6_destinations_are_refused_before_connecting() {
    if !require(&["unshare", "curl", "ip"]) {
        return;
    }
    // In a network namespace with only loopback, a connect to any of these could only
    // fail with "unreachable" (502): a 403 proves the refusal came first, and no packet
    // can leave.
    let dir = tempfile::tempdir().unwrap();
    let (pp, ap) = (free_port(), free_port());
    let events = dir.path().join("events.jsonl");
    let cfg = dir.path().join("deny.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{pp}\"\n[admin]\nlisten = \"127.0.0.1:{ap}\"\n\
             [events]\npath = \"{}\"\n[inventory]\npath = \"\"\n",
            events.display()
        ),
    )
    .unwrap();
    let targets = [
        "100.100.100.200",
        "192.0.0.192",
        "[::127.0.0.1]",
        "[::169.254.169.254]",
        "[64:ff9b::a9fe:a9fe]",
        "[::ffff:168.63.129.16]",
        "169.254.169.254",
    ];
    let script = format!(
        "ip link set lo up; \"$0\" run --config {cfg} 2>/dev/null & p=$!; \
         for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:{ap}/healthz && break; sleep 0.1; done; \
         for a in {targets}; do printf '%s ' \"$(curl -s -o /dev/null -w '%{{http_connect}}' -m 5 -p -x http://127.0.0.1:{pp} https://$a/)\"; done; \
         kill $p; wait $p",
        cfg = cfg.display(),
        targets = targets.map(|t| format!("'{t}'")).join(" "),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script, exe()])
        .output()
        .unwrap();
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        codes,
        vec!["403"; targets.len()],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(&events).unwrap();
    let refused = lines
        .lines()
        .filter(|l| l.contains("\"outcome\":\"refused_destination\""))
        .count();
    assert_eq!(refused, targets.len(), "{lines}");
}

#[test]
fn a_new_inventory_is_0640_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let pcap = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pcap/curl_tls10_to_13.pcap"
    );
    let dir = tempfile::tempdir().unwrap();
    for umask in ["000", "077", "022"] {
        let db = dir.path().join(format!("inv-{umask}.sqlite"));
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask}; exec \"$0\" analyze --quiet --db \"$1\" \"$2\" >/dev/null"
            ))
            .arg(exe())
            .arg(&db)
            .arg(pcap)
            .status()
            .unwrap();
        assert!(st.success());
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "umask {umask}");
    }
}
