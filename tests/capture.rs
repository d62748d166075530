//! Capturing every caller: plain-HTTP forwarding, transparent mode in a network namespace
//! the test creates (nothing is left behind on the host), callers without SNI, parent-proxy
//! chaining through a real tinyproxy, PROXY protocol v2, and the PAC file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// The Python origin server of tests/support/origin.py; returns (process, port, log path).
fn origin(dir: &Path) -> (Proc, u16, PathBuf) {
    let portfile = dir.join("origin.port");
    let log = dir.join("origin.log");
    let child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/origin.py"
        ))
        .arg(&portfile)
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = std::fs::read_to_string(&portfile) {
            if let Ok(port) = s.trim().parse() {
                return (p, port, log);
            }
        }
        assert!(Instant::now() < end, "origin server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn origin_log(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn curl_http(proxy: u16, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            "-x",
            &format!("http://127.0.0.1:{proxy}"),
        ])
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn plain_http_is_forwarded_with_keep_alive_and_chunked_bodies() {
    if !require(&["curl", "python3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_o, port, log) = origin(dir.path());
    let t = Tlspeek::start(
        &format!("allowed_ports = [443]\nallowed_http_ports = [{port}]\n"),
        "",
    );

    // Two requests in one curl: one client connection, reused (keep-alive).
    let (out, err) = curl_http(
        t.proxy_port,
        &[
            "-v",
            "-H",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            &format!("http://127.0.0.1:{port}/a?secret=1"),
            &format!("http://127.0.0.1:{port}/b"),
        ],
    );
    assert_eq!(out, "hello from origin\nhello from origin\n", "{err}");
    assert!(
        err.contains("Re-using existing connection") || err.contains("Reusing existing connection"),
        "{err}"
    );
    assert!(
        err.to_ascii_lowercase().contains("< via: 1.1 tlspeek"),
        "{err}"
    );
    let seen = origin_log(&log);
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert!(r["headers"].get("proxy-authorization").is_none(), "{r}");
        assert!(r["headers"].get("proxy-connection").is_none(), "{r}");
        assert_eq!(r["headers"]["via"], "1.1 tlspeek");
    }
    assert_eq!(
        seen[0]["path"], "/a?secret=1",
        "the origin gets the query; the event line does not"
    );

    // A chunked upload of 1 MiB arrives whole.
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 + 3) as u8).collect();
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let (out, err) = curl_http(
        t.proxy_port,
        &[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://127.0.0.1:{port}/upload"),
        ],
    );
    assert_eq!(out.trim(), hex::encode(Sha256::digest(&data)), "{err}");
    let seen = origin_log(&log);
    assert_eq!(seen[2]["body_len"], 1 << 20);

    // A port outside allowed_http_ports.
    let (out, _) = curl_http(
        t.proxy_port,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{}/x", port ^ 1),
        ],
    );
    assert_eq!(out, "403");

    let ev = t.wait_events("4 http events", |e| {
        e.iter().filter(|x| x["mode"] == "http").count() >= 4
    });
    let http: Vec<&Value> = ev.iter().filter(|x| x["mode"] == "http").collect();
    assert_eq!(
        http[0]["request"], "GET /a",
        "no query string in the event line"
    );
    assert_eq!(http[0]["outcome"], "closed");
    assert_eq!(http[0]["bytes_down"], 18);
    assert_eq!(http[2]["request"], "POST /upload");
    assert_eq!(http[2]["bytes_up"], 1 << 20);
    assert!(http.iter().any(|e| e["outcome"] == "refused_port"));
    assert!(
        ev.iter()
            .all(|e| e["mode"] != "connect" || e["target_host"].is_null()),
        "no connection-level line for http"
    );
    let m = t.metrics();
    assert_eq!(
        sample(
            &m,
            "tlspeek_connections_total",
            &[("mode", "http"), ("outcome", "closed")]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            "tlspeek_http_requests_total",
            &[("destination", "other")]
        ),
        Some(3.0)
    );
}

#[test]
fn http_to_a_name_that_resolves_to_a_denied_address_is_refused() {
    if !require(&["curl"]) {
        return;
    }
    let t = Tlspeek::start(
        "allowed_http_ports = [80]\ndeny_destinations = [\"127.0.0.0/8\", \"::1/128\"]\n",
        "",
    );
    for url in [
        "http://localhost/",
        "http://127.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
    ] {
        let (out, _) = curl_http(
            t.proxy_port,
            &["-o", "/dev/null", "-w", "%{http_code}", url],
        );
        assert_eq!(out, "403", "{url}");
    }
    let ev = t.wait_events("3 refusals", |e| e.len() >= 3);
    assert!(
        ev.iter().all(|e| e["outcome"] == "refused_destination"),
        "{ev:#?}"
    );
}

/// The config of the transparent-mode tests: proxy and admin on 127.0.0.1, the
/// `[transparent]` table's lines `transparent`, `up` allowed, nothing denied, a watched
/// internal name.
/// Returns the config's path and the event log's.
fn transparent_config(
    dir: &Path,
    proxy: u16,
    admin: u16,
    up: u16,
    transparent: &str,
) -> (PathBuf, PathBuf) {
    let events = dir.join("events.jsonl");
    let cfg = dir.join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{proxy}\"\nallowed_ports = [{up}]\ndeny_destinations = []\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n[events]\npath = \"{}\"\n[inventory]\npath = \"\"\n\
             [transparent]\n{transparent}\n\
             [metrics]\nwatched_destinations = [\"login.microsoftonline.com\", \"legacy-sts.corp.example\"]\n",
            events.display()
        ),
    )
    .unwrap();
    (cfg, events)
}

/// The `mode = "transparent"` event lines, once there are `n` (or after 10 s).
fn transparent_events(events: &Path, n: usize) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ev: Vec<Value> = std::fs::read_to_string(events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &Value| e["mode"] == "transparent")
            .collect();
        if ev.len() >= n || Instant::now() > end {
            return ev;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn transparent_mode_sees_clients_that_ignore_proxies() {
    if !require(&[
        "ip", "iptables", "setpriv", "unshare", "ss", "curl", "openssl",
    ]) {
        return;
    }
    if !is_root() {
        let why = "transparent mode test needs root (network namespace, iptables)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        println!("SKIP: {why}");
        return;
    }
    let ns = NetNs::new("tp");
    let dir = tempfile::tempdir().unwrap();
    let (up, tport, admin, proxy) = (24443u16, 24129u16, 24748u16, 24128u16);
    let _server = ns.tls_server(&format!("127.0.0.2:{up}"), up);
    // In tlspeek's own mount namespace, /etc/hosts gives the server's address a watched name.
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.2 legacy-sts.corp.example\n",
    )
    .unwrap();
    let (cfg, events) = transparent_config(
        dir.path(),
        proxy,
        admin,
        up,
        &format!("listen = \"127.0.0.1:{tport}\""),
    );
    let _tlspeek = ns.tlspeek(&cfg, &hosts, tport);
    // Connections user "nobody" opens to 127.0.0.2:up are redirected to tlspeek, which runs
    // as root: its own upstream connection is not redirected.
    ns.redirect_nobody("iptables", "127.0.0.2", up, tport);
    let as_nobody = |program: &str| ns.as_nobody(program);
    let out = as_nobody("curl")
        .args([
            "-sk",
            "-m",
            "10",
            "--tlsv1.0",
            "--tls-max",
            "1.0",
            "--ciphers",
            "DEFAULT:@SECLEVEL=0",
        ])
        .args(["--connect-to", &format!("{LOGIN}:443:127.0.0.2:{up}")])
        .args([
            &format!("https://{LOGIN}/"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client without SNI: labelled with the watched name of its destination address.
    let mut sc = as_nobody("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.2:{up}"),
            "-noservername",
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = sc
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n");
    let _ = sc.wait();
    // Loop protection: straight to the transparent port, not redirected.
    let direct = ns
        .cmd("curl")
        .args([
            "-sk",
            "-m",
            "5",
            &format!("https://127.0.0.1:{tport}/"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&direct.stdout), "200");

    let ev = transparent_events(&events, 3);
    let legacy = ev
        .iter()
        .find(|e| e["sni"] == LOGIN)
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(legacy["target_host"], "127.0.0.2");
    assert_eq!(legacy["target_port"], up);
    assert_eq!(
        (legacy["max_version"].as_str(), legacy["legacy"].as_bool()),
        (Some("TLS1.0"), Some(true))
    );
    // The redirected caller runs on tlspeek's host, as another user: named by its
    // executable and that user.
    assert_eq!(
        (legacy["process"].as_str(), legacy["process_user"].as_str()),
        (Some("/usr/bin/curl"), Some("nobody")),
        "{legacy}"
    );
    let nosni = ev
        .iter()
        .find(|e| e["sni"].is_null() && e["kind"] == "tls")
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(nosni["name_inferred"], true, "{nosni}");
    assert_eq!(
        (nosni["process"].as_str(), nosni["process_user"].as_str()),
        (Some("/usr/bin/openssl"), Some("nobody")),
        "{nosni}"
    );
    let looped = ev
        .iter()
        .find(|e| e["outcome"] == "refused_destination")
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert!(looped["note"].as_str().unwrap().contains("loop"));
    let m = ns.metrics(admin);
    assert!(
        sample(
            &m,
            "tlspeek_client_hellos_total",
            &[("destination", "legacy-sts.corp.example")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert!(
        sample(&m, "tlspeek_connections_total", &[("mode", "transparent")]).unwrap_or(0.0) >= 3.0
    );
    assert!(
        sample(
            &m,
            "tlspeek_local_process_lookups_total",
            &[("result", "named")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
}

#[test]
fn transparent_mode_over_ipv6() {
    // ip6tables REDIRECT: the original destination comes from IP6T_SO_ORIGINAL_DST, and a
    // locally made connection is redirected to ::1, where the transparent listener is.
    if !require(&[
        "ip",
        "ip6tables",
        "setpriv",
        "unshare",
        "ss",
        "curl",
        "openssl",
    ]) {
        return;
    }
    if !is_root() {
        let why = "transparent mode test needs root (network namespace, ip6tables)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        println!("SKIP: {why}");
        return;
    }
    let ns = NetNs::new("tp6");
    let (up, tport, admin, proxy) = (24543u16, 24229u16, 24848u16, 24228u16);
    let server_ip = "fd00:7c::2";
    assert!(
        ns.cmd("ip")
            .args([
                "-6",
                "addr",
                "add",
                &format!("{server_ip}/128"),
                "dev",
                "lo"
            ])
            .status()
            .unwrap()
            .success()
    );
    let _server = ns.tls_server(&format!("[{server_ip}]:{up}"), up);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("::1 localhost\n{server_ip} legacy-sts.corp.example\n"),
    )
    .unwrap();
    let (cfg, events) = transparent_config(
        dir.path(),
        proxy,
        admin,
        up,
        &format!("listen = \"[::1]:{tport}\""),
    );
    let _tlspeek = ns.tlspeek(&cfg, &hosts, tport);
    ns.redirect_nobody("ip6tables", server_ip, up, tport);
    // A TLS 1.0 caller with SNI, and one without SNI: both through the redirect, both get
    // their page.
    let body = dir.path().join("body");
    let out = ns
        .as_nobody("curl")
        .args(["-sk", "-m", "10", "--tlsv1.0", "--tls-max", "1.0"])
        .args(["--ciphers", "DEFAULT:@SECLEVEL=0"])
        .args(["--connect-to", &format!("{LOGIN}:443:[{server_ip}]:{up}")])
        .arg(format!("https://{LOGIN}/"))
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(cfg.with_file_name("err")).unwrap_or_default()
    );
    let mut sc = ns
        .as_nobody("openssl")
        .args(["s_client", "-connect", &format!("[{server_ip}]:{up}")])
        .args(["-noservername", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = sc
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n");
    let page = sc.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("200 ok"),
        "s_client without SNI got no page"
    );

    let ev = transparent_events(&events, 2);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    for e in &ev {
        // The original destination, not ::1 where the redirect delivered it.
        assert_eq!(e["upstream_ip"], server_ip, "{e}");
        assert_eq!(e["target_port"], up, "{e}");
        // curl may close with the server's close_notify unread (a reset).
        assert!(
            ["closed", "client_reset"].contains(&e["outcome"].as_str().unwrap_or("")),
            "{e}"
        );
    }
    let legacy = ev
        .iter()
        .find(|e| e["sni"] == LOGIN)
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(
        (legacy["max_version"].as_str(), legacy["legacy"].as_bool()),
        (Some("TLS1.0"), Some(true))
    );
    let nosni = ev
        .iter()
        .find(|e| e["sni"].is_null())
        .unwrap_or_else(|| panic!("{ev:#?}"));
    assert_eq!(nosni["name_inferred"], true, "{nosni}");
    // The inferred name labels the metrics (the event keeps the address as target_host).
    let m = ns.metrics(admin);
    assert_eq!(
        sample(
            &m,
            "tlspeek_client_hellos_total",
            &[("destination", "legacy-sts.corp.example")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "tlspeek_connections_total", &[("mode", "transparent")]),
        Some(2.0),
        "{m}"
    );
}

#[test]
fn transparent_mode_with_tproxy() {
    // TPROXY as on an egress router: a client namespace routes to a router namespace over
    // a veth pair; there, iptables TPROXY (mangle PREROUTING) hands the client's
    // connections to tlspeek's IP_TRANSPARENT listener, whose accepted socket's own
    // address is the original destination.
    if !require(&["ip", "iptables", "ss", "curl", "openssl"]) {
        return;
    }
    if !is_root() {
        let why = "TPROXY test needs root (network namespaces, iptables)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        println!("SKIP: {why}");
        return;
    }
    let router = NetNs::new("tpr");
    let client = NetNs::new("tpc");
    let (up, tport, admin, proxy) = (24643u16, 24329u16, 24948u16, 24328u16);
    let server_ip = "10.77.9.9";
    let ip = |ns: &NetNs, args: &str| {
        let ok = ns
            .cmd("ip")
            .args(args.split(' '))
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args}");
    };
    ip(
        &router,
        &format!("link add vr type veth peer name vc netns {}", client.0),
    );
    ip(&router, "addr add 10.77.0.1/24 dev vr");
    ip(&router, "link set vr up");
    ip(&router, &format!("addr add {server_ip}/32 dev lo"));
    ip(&router, "rule add fwmark 1 lookup 100");
    ip(&router, "route add local 0.0.0.0/0 dev lo table 100");
    ip(&client, "addr add 10.77.0.2/24 dev vc");
    ip(&client, "link set vc up");
    ip(&client, "route add 10.77.9.0/24 via 10.77.0.1");
    let rule = format!(
        "PREROUTING -i vr -p tcp -d {server_ip} --dport {up} -j TPROXY --on-port {tport} --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1"
    );
    assert!(
        router
            .cmd("iptables")
            .args(["-t", "mangle", "-A"])
            .args(rule.split(' '))
            .status()
            .unwrap()
            .success()
    );
    let _server = router.tls_server(&format!("{server_ip}:{up}"), up);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let (cfg, events) = transparent_config(
        dir.path(),
        proxy,
        admin,
        up,
        &format!("listen = \"0.0.0.0:{tport}\"\ntproxy = true"),
    );
    let _tlspeek = router.tlspeek(&cfg, &hosts, tport);

    let out = client
        .cmd("curl")
        .args(["-sk", "-m", "10", "--tlsv1.0", "--tls-max", "1.0"])
        .args(["--ciphers", "DEFAULT:@SECLEVEL=0"])
        .args(["--connect-to", &format!("{LOGIN}:443:{server_ip}:{up}")])
        .args([&format!("https://{LOGIN}/"), "-o", "/dev/null"])
        .args(["-w", "%{http_code}"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(cfg.with_file_name("err")).unwrap_or_default()
    );
    let ev = transparent_events(&events, 1);
    assert_eq!(ev.len(), 1, "{ev:#?}");
    let e = &ev[0];
    assert_eq!(e["source_ip"], "10.77.0.2", "{e}");
    // A caller on another host: no process lookup at all.
    assert!(e["process"].is_null() && e["process_user"].is_null(), "{e}");
    let m = router.metrics(admin);
    assert!(
        !m.contains("tlspeek_local_process_lookups_total{"),
        "no lookup for a non-local source: {m}"
    );
    assert_eq!(e["upstream_ip"], server_ip, "{e}");
    assert_eq!(e["target_port"], up, "{e}");
    assert_eq!(e["sni"], LOGIN, "{e}");
    assert_eq!(
        (e["max_version"].as_str(), e["legacy"].as_bool()),
        (Some("TLS1.0"), Some(true)),
        "{e}"
    );
}

#[test]
fn chaining_through_a_parent_proxy() {
    if !require(&["tinyproxy", "curl", "openssl", "python3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_s, up) = openssl_server(&[]);
    let (_o, http_port, log) = origin(dir.path());
    let parent_port = free_port();
    let conf = dir.path().join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {parent_port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nConnectPort {up}\nMaxClients 20\nLogLevel Error\nDisableViaHeader No\n"
        ),
    )
    .unwrap();
    let _parent = Proc(
        Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_port(parent_port, Duration::from_secs(10)),
        "tinyproxy did not start"
    );
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\nallowed_http_ports = [{http_port}]\n"),
        &format!("[upstream]\nproxy = \"http://127.0.0.1:{parent_port}\"\n"),
    );
    let (code, err) = curl_via(
        t.proxy_port,
        up,
        LOGIN,
        &[
            "--tlsv1.0",
            "--tls-max",
            "1.0",
            "--ciphers",
            "DEFAULT:@SECLEVEL=0",
        ],
    );
    assert_eq!(code, "200", "{err}");
    let (out, err) = curl_http(
        t.proxy_port,
        &[&format!("http://127.0.0.1:{http_port}/through")],
    );
    assert_eq!(out, "hello from origin\n", "{err}");
    let seen = origin_log(&log);
    let via = seen[0]["headers"]["via"].as_str().unwrap();
    assert!(
        via.contains("tlspeek") && via.contains("tinyproxy"),
        "both proxies in Via: {via}"
    );
    let ev = t.wait_events("tunnel + http", |e| {
        e.iter().any(|x| x["mode"] == "http") && e.iter().any(|x| x["kind"] == "tls")
    });
    let tls = ev.iter().find(|x| x["kind"] == "tls").unwrap();
    assert_eq!(
        (tls["legacy"].as_bool(), tls["max_version"].as_str()),
        (Some(true), Some("TLS1.0"))
    );
    assert_eq!(tls["negotiated_version"], "TLS1.0");
    assert!(tls["note"].as_str().unwrap().contains("via parent proxy"));
    // The parent refuses a port it does not allow: the client gets a 502 naming it.
    let other = free_port();
    let t2 = Tlspeek::start(
        &format!("allowed_ports = [{other}]\n"),
        &format!("[upstream]\nproxy = \"http://127.0.0.1:{parent_port}\"\n"),
    );
    let (_, status) = connect_tunnel(t2.proxy_port, &format!("127.0.0.1:{other}"));
    assert!(status.contains(" 502 "), "{status}");
}

fn proxy_v2(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = vec![
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0, 12,
    ];
    h.extend(src);
    h.extend([127, 0, 0, 1]);
    h.extend(sport.to_be_bytes());
    h.extend(3128u16.to_be_bytes());
    h
}

fn send_from(source: &str, port: u16, bytes: &[u8]) -> String {
    let mut s = connect_from(source, port, Duration::from_secs(10));
    s.write_all(bytes).unwrap();
    read_head(&mut s)
}

#[test]
fn proxy_protocol_v2_from_trusted_balancers_only() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let t = Tlspeek::start(
        &format!(
            "allowed_ports = [{echo}]\nallowed_sources = [\"127.0.0.0/8\", \"192.0.2.0/24\"]\nproxy_protocol_from = [\"127.0.0.1/32\"]\n"
        ),
        "",
    );
    let connect = format!("CONNECT 127.0.0.1:{echo} HTTP/1.1\r\n\r\n");
    let mut msg = proxy_v2([192, 0, 2, 7], 50123);
    msg.extend(connect.as_bytes());
    let head = send_from("127.0.0.1", t.proxy_port, &msg);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // The balancer without a header, and a header from a source that is not a balancer.
    assert!(send_from("127.0.0.1", t.proxy_port, connect.as_bytes()).starts_with("HTTP/1.1 400 "));
    assert!(send_from("127.0.0.3", t.proxy_port, &msg).starts_with("HTTP/1.1 400 "));
    // The real client must still be an allowed source.
    let mut stranger = proxy_v2([198, 51, 100, 1], 1);
    stranger.extend(connect.as_bytes());
    assert!(send_from("127.0.0.1", t.proxy_port, &stranger).starts_with("HTTP/1.1 403 "));
    let ev = t.wait_events("the tunnel", |e| e.iter().any(|x| x["target_port"] == echo));
    let tunnel = ev.iter().find(|e| e["target_port"] == echo).unwrap();
    assert_eq!(
        (tunnel["source_ip"].as_str(), tunnel["source_port"].as_u64()),
        (Some("192.0.2.7"), Some(50123))
    );
    assert_eq!(tunnel["source"], "192.0.2.7");
}

#[test]
fn the_pac_file_sends_only_watched_destinations_through_the_proxy() {
    if !require(&["node"]) {
        return;
    }
    let t = Tlspeek::start("allowed_ports = [443]\n", "");
    let (status, pac) = t.admin_get("/proxy.pac");
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.pac");
    std::fs::write(&file, &pac).unwrap();
    let script = format!(
        "const fs = require('fs'); eval(fs.readFileSync('{}', 'utf8'));\n\
         for (const h of ['login.microsoftonline.com', 'LOGIN.MICROSOFTONLINE.COM.', 'tenant.login.microsoftonline.com',\n\
                          'graph.microsoft.com', 'example.com', 'evillogin.microsoftonline.com', 'microsoftonline.com'])\n\
           console.log(h + ' ' + FindProxyForURL('https://' + h + '/', h));",
        file.display()
    );
    let out = Command::new("node").args(["-e", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let proxy = format!("PROXY 127.0.0.1:{}; DIRECT", t.proxy_port);
    for (host, via) in [
        ("login.microsoftonline.com", true),
        ("LOGIN.MICROSOFTONLINE.COM.", true),
        ("tenant.login.microsoftonline.com", true),
        ("graph.microsoft.com", true),
        ("example.com", false),
        ("evillogin.microsoftonline.com", false),
        ("microsoftonline.com", false),
    ] {
        let want = if via { proxy.as_str() } else { "DIRECT" };
        assert!(
            text.lines().any(|l| l == format!("{host} {want}")),
            "{host}: {text}"
        );
    }
}

#[test]
fn a_caller_without_sni_is_labelled_by_the_watched_name_of_its_address() {
    if !require(&["openssl"]) {
        return;
    }
    let (_s, up) = openssl_server(&[]);
    // "localhost" resolves to 127.0.0.1 through /etc/hosts on every machine.
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        "[metrics]\nwatched_destinations = [\"localhost\"]\n",
    );
    let (mut tunnel, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{up}"));
    assert!(status.contains(" 200 "));
    // A ClientHello without SNI (openssl s_client -noservername's, captured bytes).
    let mut hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/curl_tls10.bin"
    ))
    .unwrap();
    strip_sni(&mut hello);
    tunnel.write_all(&hello).unwrap();
    let mut buf = [0u8; 5];
    let _ = tunnel.read(&mut buf);
    drop(tunnel);
    let ev = t.wait_events("the event", |e| !e.is_empty());
    assert_eq!(ev[0]["sni"], Value::Null, "{}", ev[0]);
    assert_eq!(ev[0]["name_inferred"], true, "{}", ev[0]);
    assert_eq!(
        sample(
            &t.metrics(),
            "tlspeek_client_hellos_total",
            &[("destination", "localhost"), ("legacy", "true")]
        ),
        Some(1.0)
    );
}

/// Rewrites a one-record TLS ClientHello without its server_name extension (type 0).
fn strip_sni(rec: &mut Vec<u8>) {
    let body = &rec[5..];
    let mut p = 4 + 2 + 32;
    p += 1 + body[p] as usize;
    p += 2 + u16::from_be_bytes([body[p], body[p + 1]]) as usize;
    p += 1 + body[p] as usize;
    let ext_start = p + 2;
    let ext_len = u16::from_be_bytes([body[p], body[p + 1]]) as usize;
    let mut q = ext_start;
    let mut out = Vec::new();
    while q < ext_start + ext_len {
        let ty = u16::from_be_bytes([body[q], body[q + 1]]);
        let len = u16::from_be_bytes([body[q + 2], body[q + 3]]) as usize;
        if ty != 0 {
            out.extend_from_slice(&body[q..q + 4 + len]);
        }
        q += 4 + len;
    }
    let mut nb = body[..p].to_vec();
    nb.extend((out.len() as u16).to_be_bytes());
    nb.extend(out);
    let hs_len = (nb.len() - 4) as u32;
    nb[1..4].copy_from_slice(&hs_len.to_be_bytes()[1..]);
    let mut r = rec[..3].to_vec();
    r.extend((nb.len() as u16).to_be_bytes());
    r.extend(nb);
    *rec = r;
}
