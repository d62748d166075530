//! Enforcement with real clients: block answers a legacy hello with the right TLS alert;
//! upgrade makes a TLS 1.0-only client reach a TLS 1.2-only server (upstream certificate
//! verified every time); dry runs count what would happen; rules match by name (case and
//! trailing dot normalized) and source, with exemptions, expiry, first-match order and the
//! kill switch; the CA is handled safely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TLS10: &[&str] = &[
    "--tlsv1.0",
    "--tls-max",
    "1.0",
    "--ciphers",
    "DEFAULT:@SECLEVEL=0",
];
const DES_ONLY: &str = "NORMAL:-CIPHER-ALL:+3DES-CBC:-VERS-TLS1.3";

fn prerequisites() -> bool {
    require(&["curl", "openssl", "gnutls-cli", "socat"])
}

/// curl through the proxy, trusting `cacert`; returns (http_code, stderr, body).
fn curl_trusting(
    proxy: u16,
    upstream: u16,
    host: &str,
    cacert: &Path,
    args: &[&str],
) -> (String, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            "-x",
            &format!("http://127.0.0.1:{proxy}"),
        ])
        .args(["--connect-to", &format!("{host}:443:127.0.0.1:{upstream}")])
        .arg("--cacert")
        .arg(cacert)
        .args(args)
        .arg(format!("https://{host}/"))
        .args(["-w", "\n%{http_code}"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", ""));
    (
        code.to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        body.to_string(),
    )
}

fn event_for(t: &Tlspeek, port: u16) -> Value {
    let ev = t.wait_events("event of the port", |e| {
        e.iter().any(|x| x["target_port"] == port)
    });
    ev.into_iter()
        .rev()
        .find(|x| x["target_port"] == port)
        .unwrap()
}

#[test]
fn upgrade_lets_a_tls10_client_reach_a_tls12_only_server() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (upca, leaf, leaf_key) = ca_and_leaf(dir.path(), LOGIN);
    let (_modern, modern) = openssl_server_with(&leaf, &leaf_key, &["-min_protocol", "TLSv1.2"]);
    let (_selfsigned, selfsigned) = openssl_server(&["-min_protocol", "TLSv1.2"]);
    let (_certreq, certreq) = openssl_server_with(
        &leaf,
        &leaf_key,
        &["-min_protocol", "TLSv1.2", "-Verify", "1"],
    );
    let ca = proxy_ca(dir.path(), &[]);

    // Sanity: direct, the TLS 1.0 client cannot talk to this server.
    let direct = Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "--connect-to",
            &format!("{LOGIN}:443:127.0.0.1:{modern}"),
        ])
        .arg("--cacert")
        .arg(&upca)
        .args(TLS10)
        .arg(format!("https://{LOGIN}/"))
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&direct.stdout), "200");

    let rules = "[[rules]]\nname = \"upgrade-login\"\ndestinations = [\"login.microsoftonline.com\"]\naction = \"upgrade\"\n";
    let t = Tlspeek::start(
        &format!("allowed_ports = [{modern}, {selfsigned}, {certreq}]\n"),
        &upgrade_config(&ca, &upca, rules, ""),
    );
    let (code, err, body) = curl_trusting(t.proxy_port, modern, LOGIN, &ca.0, TLS10);
    assert_eq!(code, "200", "{err}");
    assert!(body.contains("s_server"), "the upstream's page: {body}");
    let e = event_for(&t, modern);
    assert_eq!(e["action"], "upgraded", "{e}");
    assert_eq!(e["rule"], "upgrade-login");
    assert_eq!(e["negotiated_version"], "TLS1.0");
    assert!(
        ["TLS1.2", "TLS1.3"].contains(&e["upstream_version"].as_str().unwrap()),
        "{e}"
    );
    assert!(e["upstream_cipher"].as_str().unwrap().starts_with("0x"));
    assert!(
        e["user_agent"].as_str().unwrap().starts_with("curl/"),
        "{e}"
    );
    assert_eq!(e["request"], "GET /");
    assert_eq!(e["outcome"], "closed");
    assert_eq!(e["legacy"], true);
    let m = t.metrics();
    assert_eq!(
        sample(&m, "tlspeek_actions_total", &[("action", "upgraded")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "tlspeek_handshakes_total", &[("version", "TLS1.0")]),
        Some(1.0)
    );

    // A modern client under the same rule is not legacy: passed untouched, its own cert.
    let (code, err, _) = curl_trusting(t.proxy_port, modern, LOGIN, &upca, &["--tlsv1.2"]);
    assert_eq!(code, "200", "{err}");

    // An upstream whose certificate is not trusted: the client gets an alert, the log why.
    let (code, err, _) = curl_trusting(t.proxy_port, selfsigned, LOGIN, &ca.0, TLS10);
    assert_ne!(code, "200");
    assert!(err.contains("alert handshake failure"), "{err}");
    let e = event_for(&t, selfsigned);
    assert_eq!(e["outcome"], "upgrade_failed");
    assert!(
        e["note"].as_str().unwrap().contains("upstream TLS failed"),
        "{e}"
    );
    assert!(
        t.stderr()
            .contains("upgrade failed; the client gets a TLS alert"),
        "{}",
        t.stderr()
    );

    // An upstream that asks for a client certificate is not upgraded.
    let (code, _, _) = curl_trusting(t.proxy_port, certreq, LOGIN, &ca.0, TLS10);
    assert_ne!(code, "200");
    let e = event_for(&t, certreq);
    assert!(
        e["note"].as_str().unwrap().contains("client certificate"),
        "{e}"
    );
}

#[test]
fn three_des_only_clients_fall_back_and_never_upgrade_hosts_pass() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (upca, leaf, leaf_key) = ca_and_leaf(dir.path(), LOGIN);
    let (_g, gnutls) = gnutls_server("NORMAL:+3DES-CBC:+VERS-TLS1.0:+VERS-TLS1.1");
    let (_old, old) = openssl_server_with(&leaf, &leaf_key, &["-min_protocol", "TLSv1"]);
    let ca = proxy_ca(dir.path(), &[]);
    let rules = "[[rules]]\ndestinations = [\"*.login.microsoftonline.com\", \"login.microsoftonline.com\"]\naction = \"upgrade\"\n";
    for (fallback, completes) in [("block", false), ("pass", true)] {
        let t = Tlspeek::start(
            &format!("allowed_ports = [{gnutls}, {old}]\n"),
            &upgrade_config(
                &ca,
                &upca,
                rules,
                &format!("on_unsupported = \"{fallback}\""),
            ),
        );
        let out = gnutls_via_proxy(t.proxy_port, gnutls, DES_ONLY, LOGIN);
        assert_eq!(
            out.contains("Handshake was completed"),
            completes,
            "{fallback}: {out}"
        );
        if !completes {
            assert!(
                out.contains("Insufficient security") || out.contains("[71]"),
                "{out}"
            );
        }
        let e = event_for(&t, gnutls);
        assert!(e["note"].as_str().unwrap().contains("3DES"), "{e}");
        assert_eq!(e["action"], if completes { "passed" } else { "blocked" });
        assert!(t.stderr().contains("cannot upgrade this client"));
    }
    // device.login.microsoftonline.com is in never_upgrade by default: passed untouched.
    let t = Tlspeek::start(
        &format!("allowed_ports = [{gnutls}, {old}]\n"),
        &upgrade_config(&ca, &upca, rules, ""),
    );
    let (code, err, _) = curl_trusting(
        t.proxy_port,
        old,
        "device.login.microsoftonline.com",
        &upca,
        TLS10,
    );
    assert_eq!(code, "200", "{err}");
    let e = event_for(&t, old);
    assert_eq!(e["action"], "passed");
    assert!(e["note"].as_str().unwrap().contains("never_upgrade"), "{e}");
}

#[test]
fn block_answers_with_the_alert_that_says_why() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (upca, leaf, leaf_key) = ca_and_leaf(dir.path(), LOGIN);
    let (_m, modern) = openssl_server_with(&leaf, &leaf_key, &["-min_protocol", "TLSv1"]);
    let t = Tlspeek::start(
        &format!("allowed_ports = [{modern}]\n"),
        "[[rules]]\nname = \"no-legacy-login\"\ndestinations = [\"login.microsoftonline.com\"]\naction = \"block\"\n",
    );
    // The alert arrives at once (measured from the hello, not from a process start).
    let (mut tunnel, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{modern}"));
    assert!(status.contains(" 200 "), "{status}");
    let hello = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/curl_tls10.bin"
    ))
    .unwrap();
    let started = Instant::now();
    tunnel.write_all(&hello).unwrap();
    let mut alert = [0u8; 7];
    std::io::Read::read_exact(&mut tunnel, &mut alert).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "blocking must be fast"
    );
    assert_eq!(
        alert,
        [0x15, 3, 1, 0, 2, 2, 70],
        "fatal protocol_version in TLS 1.0"
    );
    let (code, err, _) = curl_trusting(t.proxy_port, modern, LOGIN, &upca, TLS10);
    assert_ne!(code, "200");
    assert!(err.contains("tlsv1 alert protocol version"), "{err}");
    let e = event_for(&t, modern);
    assert_eq!(
        (e["action"].as_str(), e["outcome"].as_str()),
        (Some("blocked"), Some("blocked"))
    );
    assert_eq!(e["rule"], "no-legacy-login");
    let log = t.stderr();
    assert!(log.contains("blocked with a TLS alert") && log.contains("no-legacy-login"));
    // A hello the policy acts on is recorded before the action: its log line comes first.
    let said = |what: &str| log.find(what).unwrap_or(usize::MAX);
    assert!(
        said("legacy ClientHello") < said("blocked with a TLS alert"),
        "{log}"
    );
    for modern_args in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"][..]] {
        let (code, err, _) = curl_trusting(t.proxy_port, modern, LOGIN, &upca, modern_args);
        assert_eq!(code, "200", "{err}");
    }
    let out = gnutls_via_proxy(t.proxy_port, modern, DES_ONLY, LOGIN);
    assert!(!out.contains("Handshake was completed"), "{out}");
    assert!(
        out.contains("Insufficient security") || out.contains("[71]"),
        "{out}"
    );
    let m = t.metrics();
    // The raw hello, curl's TLS 1.0 and gnutls's 3DES were blocked; two modern clients passed.
    assert_eq!(
        sample(&m, "tlspeek_actions_total", &[("action", "blocked")]),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, "tlspeek_actions_total", &[("action", "passed")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, "tlspeek_connections_total", &[("outcome", "blocked")]),
        Some(3.0)
    );
}

/// openssl s_client with a chosen SNI (upper case, trailing dot) from a chosen source.
fn s_client(t: &Tlspeek, upstream: u16, sni: &str, source: &str) -> bool {
    // s_client has no way to bind a source address: go through a tunnel we open ourselves.
    let (mut tunnel, status) =
        connect_tunnel_from(source, t.proxy_port, &format!("127.0.0.1:{upstream}"));
    assert!(status.contains(" 200 "), "{status}");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut t2 = tunnel.try_clone().unwrap();
                let mut c2 = c.try_clone().unwrap();
                let a = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut t2);
                    let _ = t2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut tunnel, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = a.join();
            }
        });
        port
    };
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            sni,
        ])
        .args(["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n");
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("HTTP/1.0 200 ok")
}

#[test]
fn rules_match_names_sources_exemptions_expiry_and_order() {
    if !prerequisites() {
        return;
    }
    let (_s, up) = openssl_server(&[]);
    let rules = r#"
[[rules]]
name = "watch-five"
sources = ["127.0.0.5/32"]
action = "observe"
[[rules]]
name = "old"
expires = "2020-01-01"
action = "block"
[[rules]]
name = "login"
destinations = ["login.microsoftonline.com"]
sources = ["127.0.0.0/8"]
exempt = ["127.0.0.7", "lab"]
action = "block"
[[sources]]
cidr = "127.0.0.8/32"
name = "lab"
"#;
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), rules);
    // Upper case and a trailing dot do not slip past the rule.
    assert!(
        !s_client(&t, up, "LOGIN.MICROSOFTONLINE.COM.", "127.0.0.1"),
        "blocked"
    );
    assert!(
        !s_client(&t, up, "login.microsoftonline.com", "127.0.0.6"),
        "blocked"
    );
    // First match wins: the observe rule for .5 comes first.
    assert!(s_client(&t, up, "login.microsoftonline.com", "127.0.0.5"));
    // Exempt by address and by [[sources]] name.
    assert!(s_client(&t, up, "login.microsoftonline.com", "127.0.0.7"));
    assert!(s_client(&t, up, "login.microsoftonline.com", "127.0.0.8"));
    // Another destination: no rule applies (the expired catch-all is skipped).
    assert!(s_client(&t, up, "example.com", "127.0.0.6"));
    let ev = t.wait_events("6 events", |e| e.len() >= 6);
    let rules_seen: Vec<&str> = ev
        .iter()
        .map(|e| e["rule"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        rules_seen,
        ["login", "login", "watch-five", "-", "-", "-"],
        "{ev:#?}"
    );
}

#[test]
fn dry_run_and_the_kill_switch_count_what_would_happen() {
    if !prerequisites() {
        return;
    }
    let (_s, up) = openssl_server(&[]);
    for (extra, label) in [
        (
            "[[rules]]\ndestinations = [\"login.microsoftonline.com\"]\naction = \"block\"\ndry_run = true\n",
            "dry run",
        ),
        (
            "[enforcement]\nenabled = false\n[[rules]]\ndestinations = [\"login.microsoftonline.com\"]\naction = \"block\"\n",
            "kill switch",
        ),
    ] {
        let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), extra);
        let (code, err) = curl_via(t.proxy_port, up, LOGIN, TLS10);
        assert_eq!(code, "200", "{label}: {err}");
        let (code, _) = curl_via(t.proxy_port, up, LOGIN, &["--tlsv1.3"]);
        assert_eq!(code, "200");
        let m = t.metrics();
        assert_eq!(
            sample(&m, "tlspeek_actions_total", &[("action", "would_block")]),
            Some(1.0),
            "{label}"
        );
        assert_eq!(
            sample(&m, "tlspeek_actions_total", &[("action", "passed")]),
            Some(2.0),
            "{label}"
        );
        assert_eq!(
            sample(&m, "tlspeek_actions_total", &[("action", "blocked")]),
            None,
            "{label}"
        );
        let ev = t.wait_events("2 events", |e| e.len() >= 2);
        assert_eq!(
            (ev[0]["action"].as_str(), ev[0]["would"].as_str()),
            (Some("passed"), Some("would_block"))
        );
        assert_eq!(
            ev[1]["would"],
            Value::Null,
            "a modern hello would not be blocked"
        );
    }
}

#[test]
fn the_ca_is_handled_safely() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = proxy_ca(dir.path(), &[]);
    let again = Command::new(exe())
        .args([
            "ca",
            "init",
            "--out",
            dir.path().join("ca").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&crt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("X509v3 Name Constraints: critical")
            && text.contains("DNS:microsoftonline.com"),
        "{text}"
    );

    // A CA key others can read stops start-up with a clear message.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upgrade]\nca_cert = \"{}\"\nca_key = \"{}\"\n",
            crt.display(),
            key.display()
        ),
    )
    .unwrap();
    let r = Command::new(exe())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("upgrade.ca_key") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A leaf for a name outside the CA's constraints is never minted.
    let narrow = proxy_ca(&dir.path().join("narrow"), &["--permit", "example.org"]);
    let (upca, leaf, leaf_key) = ca_and_leaf(dir.path(), LOGIN);
    let (_m, modern) = openssl_server_with(&leaf, &leaf_key, &["-min_protocol", "TLSv1.2"]);
    let t = Tlspeek::start(
        &format!("allowed_ports = [{modern}]\n"),
        &upgrade_config(&narrow, &upca, "[[rules]]\naction = \"upgrade\"\n", ""),
    );
    let (code, _, _) = curl_trusting(t.proxy_port, modern, LOGIN, &narrow.0, TLS10);
    assert_ne!(code, "200");
    let e = event_for(&t, modern);
    assert!(
        e["note"]
            .as_str()
            .unwrap()
            .contains("outside the upgrade CA's name constraints"),
        "{e}"
    );
}
