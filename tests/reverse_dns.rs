//! Reverse DNS of sources through the system resolver, controlled by the test: tlspeek runs
//! in a private mount namespace where /etc/hosts and /etc/resolv.conf are the test's own
//! files (nothing on the host changes). The resolv.conf points at a UDP socket that never
//! answers, so a source without a hosts entry makes the resolver hang: the tunnel must not
//! wait for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ptr_names_are_confirmed_cached_and_never_delay_a_tunnel() {
    if !require(&["unshare", "mount", "curl", "openssl"]) {
        return;
    }
    if !is_root() {
        let why = "reverse DNS test needs root (a private mount namespace and a UDP port 53)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        println!("SKIP: {why}");
        return;
    }
    // A "DNS server" that swallows every query.
    let black_hole = UdpSocket::bind("127.0.0.77:53").expect("bind 127.0.0.77:53");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.23 agent23.corp.example\n\
         127.0.0.99 liar.corp.example\n127.0.0.26 liar.corp.example.\n",
    )
    .unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.77\noptions timeout:5 attempts:2\n",
    )
    .unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"",
        hosts.display(),
        resolv.display()
    );
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start_via(
        &format!("allowed_ports = [{up}]\n"),
        "[dns]\nreverse_lookup = true\ncache_ttl = \"10m\"\n",
        &["unshare", "-m", "sh", "-c", &script],
    );

    // A source whose name the resolver cannot find hangs in DNS for ~10 s: the tunnel
    // does not wait for it.
    let started = Instant::now();
    let (code, err) = curl_via(
        t.proxy_port,
        up,
        LOGIN,
        &["--interface", "127.0.0.24", "--tlsv1.3"],
    );
    assert_eq!(code, "200", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the tunnel waited for DNS: {:?}",
        started.elapsed()
    );

    // The named source: the first connection starts the lookup, later ones carry the name.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(
            curl_via(
                t.proxy_port,
                up,
                LOGIN,
                &["--interface", "127.0.0.23", "--tlsv1.3"]
            )
            .0,
            "200"
        );
        let named = t
            .target_events()
            .into_iter()
            .any(|e| e["source_ip"] == "127.0.0.23" && e["source_name"] == "agent23.corp.example");
        if named {
            break;
        }
        assert!(Instant::now() < end, "no source_name: {}", t.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    // A PTR name that does not resolve back to the address is not shown (127.0.0.26's name
    // is written with a trailing dot in the hosts file, so only 127.0.0.99 answers to it).
    for _ in 0..3 {
        assert_eq!(
            curl_via(
                t.proxy_port,
                up,
                LOGIN,
                &["--interface", "127.0.0.26", "--tlsv1.3"]
            )
            .0,
            "200"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ev = t.target_events();
    assert!(
        ev.iter()
            .filter(|e| e["source_ip"] == "127.0.0.26")
            .all(|e| e["source_name"].is_null()),
        "{ev:#?}"
    );
    let m = t.metrics();
    assert!(
        sample(&m, "tlspeek_ptr_lookups_total", &[("result", "found")]).unwrap() >= 1.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "tlspeek_ptr_lookups_total",
            &[("result", "unconfirmed")]
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    // The name never replaces the source label.
    assert!(ev.iter().all(|e| e["source"] == e["source_ip"]));
    // The inventory shows it beside the IP.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = t.admin_get("/legacy");
        if body.contains("agent23.corp.example") {
            break;
        }
        assert!(
            Instant::now() < end,
            "inventory without source_name: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(black_hole);
}
