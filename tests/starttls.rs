//! STARTTLS mail, directory and chat clients through the transparent listener, in a network
//! namespace the test makes: real clients (`openssl s_client -starttls`, `gnutls-cli
//! --starttls-proto`, curl's SMTP) as user nobody, redirected by iptables to tlspeek, which
//! relays the cleartext prelude to a scripted responder (tests/support/starttls_server.py)
//! whose TLS part is real (Python's ssl, i.e. OpenSSL). The same sessions captured with
//! tcpdump are read by `tlspeek analyze`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// The protocols on their standard ports (the namespace is the test's own, so they are
/// free), and what the client types once TLS is up.
const PROTOCOLS: [(&str, u16, &str); 5] = [
    ("smtp", 587, "QUIT\r\n"),
    ("imap", 143, "a9 LOGOUT\r\n"),
    ("pop3", 110, "QUIT\r\n"),
    ("ldap", 389, ""),
    ("xmpp", 5222, "</stream:stream>"),
];

const MAIL_HOST: &str = "smtp.office365.com";

/// A namespace with a STARTTLS server per protocol on 127.0.0.2, and tlspeek in it.
struct Lab {
    ns: NetNs,
    dir: tempfile::TempDir,
    cfg: PathBuf,
    events: PathBuf,
    admin: u16,
    proxy: u16,
    _servers: Vec<Proc>,
    _tlspeek: Proc,
}

impl Lab {
    fn start(tag: &str) -> Option<Lab> {
        if !require(&[
            "ip",
            "iptables",
            "setpriv",
            "unshare",
            "ss",
            "curl",
            "openssl",
            "gnutls-cli",
            "python3",
            "tcpdump",
        ]) {
            return None;
        }
        if !is_root() {
            let why = "STARTTLS tests need root (network namespace, iptables)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            println!("SKIP: {why}");
            return None;
        }
        let ns = NetNs::new(tag);
        let dir = tempfile::tempdir().unwrap();
        let c = certs();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/starttls_server.py");
        let mut servers = Vec::new();
        for (protocol, port, _) in PROTOCOLS {
            servers.push(Proc(
                ns.cmd("python3")
                    .arg(&script)
                    .args([protocol, &format!("127.0.0.2:{port}")])
                    .arg(&c.crt)
                    .arg(&c.key)
                    .arg(dir.path().join(format!("{protocol}.log")))
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            ));
            ns.wait_listening(port);
        }
        let (proxy, admin, tport) = (3128u16, 9090u16, 3129u16);
        let events = dir.path().join("events.jsonl");
        let cfg = dir.path().join("t.toml");
        // The default [starttls] table; CONNECT allows 587 too (allowed_ports), the
        // transparent listener admits every STARTTLS port by itself.
        std::fs::write(
            &cfg,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:{proxy}\"\nallowed_ports = [443, 587]\ndeny_destinations = []\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n[events]\npath = \"{}\"\n[inventory]\npath = \"\"\n\
                 [transparent]\nlisten = \"127.0.0.1:{tport}\"\n",
                events.display()
            ),
        )
        .unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(
            &hosts,
            format!("127.0.0.1 localhost\n127.0.0.2 {MAIL_HOST}\n"),
        )
        .unwrap();
        let tlspeek = ns.tlspeek(&cfg, &hosts, tport);
        for (_, port, _) in PROTOCOLS {
            ns.redirect_nobody("iptables", "127.0.0.2", port, tport);
        }
        Some(Lab {
            ns,
            dir,
            cfg,
            events,
            admin,
            proxy,
            _servers: servers,
            _tlspeek: tlspeek,
        })
    }

    /// The event lines, once `pred` holds for them (or after 10 s).
    fn events_when(&self, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let ev: Vec<Value> = std::fs::read_to_string(&self.events)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if pred(&ev) || Instant::now() > end {
                return ev;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What a protocol's server logged: one JSON object per session.
    fn server_log(&self, protocol: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join(format!("{protocol}.log")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Runs `cmd` with `input` on its stdin; its output (stdout and stderr).
    fn run(cmd: &mut Command, input: &str) -> String {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(input.as_bytes());
        // s_client reads its stdin only after the handshake: closing it at once ends the
        // session once the input is sent.
        std::thread::sleep(Duration::from_millis(300));
        drop(stdin);
        wait_with_timeout(child, Duration::from_secs(20))
    }

    fn openssl(&self, protocol: &str, port: u16, input: &str) -> String {
        Lab::run(
            self.ns.as_nobody("openssl").args([
                "s_client",
                "-starttls",
                protocol,
                "-connect",
                &format!("127.0.0.2:{port}"),
                "-servername",
                MAIL_HOST,
                "-tls1",
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ]),
            input,
        )
    }

    fn gnutls(&self, protocol: &str, port: u16, input: &str) -> String {
        Lab::run(
            self.ns.as_nobody("gnutls-cli").args([
                "--insecure",
                &format!("--starttls-proto={protocol}"),
                "--sni-hostname",
                MAIL_HOST,
                "-p",
                &port.to_string(),
                "127.0.0.2",
            ]),
            input,
        )
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.ns.metrics(self.admin), name, labels).unwrap_or(0.0)
    }
}

fn starttls_events<'a>(ev: &'a [Value], protocol: &str) -> Vec<&'a Value> {
    ev.iter().filter(|e| e["starttls"] == protocol).collect()
}

#[test]
fn every_starttls_protocol_is_read_through_the_transparent_listener_and_in_a_capture() {
    let Some(lab) = Lab::start("st") else {
        return;
    };
    // Only tlspeek's legs to the servers: the ports a capture at the egress would see.
    let pcap = lab.dir.path().join("starttls.pcap");
    let filter = PROTOCOLS
        .iter()
        .map(|(_, port, _)| format!("tcp port {port}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let dump = Tcpdump::start_with(lab.ns.cmd("tcpdump"), &pcap, &filter);
    for (protocol, port, input) in PROTOCOLS {
        let out = lab.openssl(protocol, port, input);
        assert!(
            out.contains("Protocol  : TLSv1\n") || out.contains("Protocol: TLSv1\n"),
            "openssl -starttls {protocol}: {out}"
        );
        let out = lab.gnutls(protocol, port, input);
        assert!(
            out.contains("Handshake was completed"),
            "gnutls-cli --starttls-proto={protocol}: {out}"
        );
    }
    let ev = lab.events_when(|ev| {
        PROTOCOLS
            .iter()
            .all(|(p, _, _)| starttls_events(ev, p).len() >= 2)
    });
    for (protocol, port, _) in PROTOCOLS {
        let sessions = starttls_events(&ev, protocol);
        assert_eq!(sessions.len(), 2, "{protocol}: {ev:#?}");
        for e in &sessions {
            assert_eq!(
                (
                    e["mode"].as_str(),
                    e["target_port"].as_u64(),
                    e["kind"].as_str()
                ),
                (Some("transparent"), Some(u64::from(port)), Some("tls")),
                "{e}"
            );
            assert_eq!(e["sni"], MAIL_HOST, "{e}");
            assert_eq!(e["outcome"], "closed", "{e}");
        }
        // openssl -tls1: a legacy caller, judged on the hello and on the server's answer.
        let legacy = sessions
            .iter()
            .find(|e| e["max_version"] == "TLS1.0")
            .unwrap_or_else(|| panic!("{protocol}: no TLS 1.0 hello: {sessions:#?}"));
        assert_eq!(
            (
                legacy["negotiated_version"].as_str(),
                legacy["legacy"].as_bool()
            ),
            (Some("TLS1.0"), Some(true)),
            "{legacy}"
        );
        assert_eq!(legacy["process"], "/usr/bin/openssl", "{legacy}");
        // gnutls-cli's defaults: a modern caller on the same port.
        let modern = sessions
            .iter()
            .find(|e| e["max_version"] == "TLS1.3")
            .unwrap_or_else(|| panic!("{protocol}: no TLS 1.3 hello: {sessions:#?}"));
        assert_eq!(modern["legacy"], false, "{modern}");
        assert_eq!(modern["tls_library"], "gnutls", "{modern}");
        // The server saw both upgrades: nothing of the prelude was lost or changed.
        let log = lab.server_log(protocol);
        let versions: Vec<&str> = log
            .iter()
            .filter_map(|s| s["tls_version"].as_str())
            .collect();
        assert_eq!(log.len(), 2, "{protocol}: {log:#?}");
        assert!(versions.contains(&"TLSv1"), "{protocol}: {log:#?}");
        assert!(
            lab.metric(
                "tlspeek_starttls_sessions_total",
                &[("protocol", protocol), ("upgraded", "true")]
            ) >= 2.0
        );
    }
    assert!(
        lab.metric(
            "tlspeek_client_hellos_total",
            &[("destination", MAIL_HOST), ("legacy", "true")]
        ) >= 5.0,
        "smtp.office365.com is watched by default"
    );
    drop(dump);

    // The capture, read by `analyze` with the default [starttls] table.
    let out_events = lab.dir.path().join("analyze.jsonl");
    let (code, stdout, stderr) = tlspeek_cmd(&[
        "analyze",
        "--quiet",
        "--all",
        "--events",
        out_events.to_str().unwrap(),
        pcap.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let aev: Vec<Value> = std::fs::read_to_string(&out_events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (protocol, _, _) in PROTOCOLS {
        let sessions = starttls_events(&aev, protocol);
        assert_eq!(sessions.len(), 2, "analyze, {protocol}: {aev:#?}");
        assert!(
            sessions.iter().any(|e| e["max_version"] == "TLS1.0"
                && e["negotiated_version"] == "TLS1.0"
                && e["legacy"] == true
                && e["sni"] == MAIL_HOST),
            "analyze, {protocol}: {sessions:#?}"
        );
        assert!(
            sessions
                .iter()
                .any(|e| e["negotiated_version"] == "TLS1.3" && e["legacy"] == false),
            "analyze, {protocol}: {sessions:#?}"
        );
    }
    let _ = &lab.cfg;
}

/// Mail text, CRLF lines of printable bytes (no line starts with a dot).
fn mail_body(lines: usize) -> Vec<u8> {
    let raw = pseudo_random(lines * 60, 7);
    let mut body = b"Subject: scan\r\n\r\n".to_vec();
    for chunk in raw.chunks(60) {
        body.extend(chunk.iter().map(|b| b'A' + b % 26));
        body.extend_from_slice(b"\r\n");
    }
    body
}

fn curl_mail(lab: &Lab, body: &Path, tls: bool) -> String {
    let mut cmd = lab.ns.as_nobody("curl");
    cmd.args(["-sS", "-m", "20", "smtp://127.0.0.2:587"])
        .args([
            "--mail-from",
            "scanner@contoso.com",
            "--mail-rcpt",
            "it@contoso.com",
        ])
        .arg("-T")
        .arg(body);
    if tls {
        cmd.args([
            "--ssl-reqd",
            "-k",
            "--tlsv1.0",
            "--tls-max",
            "1.0",
            "--ciphers",
            "DEFAULT:@SECLEVEL=0",
        ]);
    }
    let out = cmd.output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn mail_arrives_unchanged_upgraded_or_not_and_connect_tunnels_get_the_same_reading() {
    let Some(lab) = Lab::start("sm") else {
        return;
    };
    let body = lab.dir.path().join("mail.eml");
    // 4,000 lines: far past prelude_max_bytes when the session stays in cleartext.
    let text = mail_body(4000);
    std::fs::write(&body, &text).unwrap();
    let sha = hex::encode(Sha256::digest(&text));
    // A scanner that sends with STARTTLS and TLS 1.0, then one that never upgrades.
    assert_eq!(curl_mail(&lab, &body, true), "", "curl --ssl-reqd");
    assert_eq!(curl_mail(&lab, &body, false), "", "curl without TLS");
    // Through the proxy listener: CONNECT to 587, then the same prelude.
    let out = Lab::run(
        lab.ns.cmd("openssl").args([
            "s_client",
            "-proxy",
            &format!("127.0.0.1:{}", lab.proxy),
            "-starttls",
            "smtp",
            "-connect",
            "127.0.0.2:587",
            "-servername",
            MAIL_HOST,
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ]),
        "QUIT\r\n",
    );
    assert!(
        out.contains("Protocol  : TLSv1.1\n"),
        "{out}\nevents: {}",
        std::fs::read_to_string(&lab.events).unwrap_or_default()
    );

    let log = lab.server_log("smtp");
    assert_eq!(log.len(), 3, "{log:#?}");
    let mailed: Vec<&Value> = log
        .iter()
        .filter(|s| s["data_sha256"].is_string())
        .collect();
    assert_eq!(mailed.len(), 2, "{log:#?}");
    for s in &mailed {
        assert_eq!(
            s["data_sha256"],
            sha.as_str(),
            "the message arrived changed: {s}"
        );
    }
    assert!(
        mailed.iter().any(|s| s["tls_version"] == "TLSv1"),
        "{log:#?}"
    );
    assert!(mailed.iter().any(|s| s["upgraded"] == false), "{log:#?}");

    let ev = lab.events_when(|ev| starttls_events(ev, "smtp").len() >= 3);
    let smtp = starttls_events(&ev, "smtp");
    assert_eq!(smtp.len(), 3, "{ev:#?}");
    let upgraded = smtp
        .iter()
        .find(|e| e["mode"] == "transparent" && e["kind"] == "tls")
        .unwrap_or_else(|| panic!("{smtp:#?}"));
    assert_eq!(
        (
            upgraded["negotiated_version"].as_str(),
            upgraded["legacy"].as_bool()
        ),
        (Some("TLS1.0"), Some(true)),
        "{upgraded}"
    );
    assert_eq!(upgraded["process"], "/usr/bin/curl", "{upgraded}");
    let plain = smtp
        .iter()
        .find(|e| e["kind"] == "not_tls")
        .unwrap_or_else(|| panic!("{smtp:#?}"));
    assert_eq!(plain["outcome"], "closed", "{plain}");
    assert!(
        plain["bytes_up"].as_u64().unwrap() > text.len() as u64,
        "the whole message went through: {plain}"
    );
    let tunnel = smtp
        .iter()
        .find(|e| e["mode"] == "connect")
        .unwrap_or_else(|| panic!("{smtp:#?}"));
    assert_eq!(
        (
            tunnel["max_version"].as_str(),
            tunnel["legacy"].as_bool(),
            tunnel["kind"].as_str()
        ),
        (Some("TLS1.1"), Some(true), Some("tls")),
        "{tunnel}"
    );
    assert_eq!(
        lab.metric(
            "tlspeek_starttls_sessions_total",
            &[("protocol", "smtp"), ("upgraded", "false")]
        ),
        1.0
    );
    assert_eq!(
        lab.metric(
            "tlspeek_starttls_sessions_total",
            &[("protocol", "smtp"), ("upgraded", "true")]
        ),
        2.0
    );
}

#[test]
fn a_prelude_past_its_time_bound_is_passed_on_unwatched_and_unchanged() {
    use std::io::Read;
    // No namespace needed: a CONNECT tunnel on 127.0.0.1 to an echo server configured as an
    // SMTP port, with a short prelude_timeout.
    let echo = spawn_echo();
    let t = Tlspeek::start(
        &format!("allowed_ports = [{echo}]\n"),
        &format!("[starttls]\nsmtp = [{echo}]\nprelude_timeout = \"300ms\"\n"),
    );
    let (mut s, head) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{echo}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echoed = |s: &mut std::net::TcpStream, bytes: &[u8]| {
        s.write_all(bytes).unwrap();
        let mut back = vec![0u8; bytes.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, bytes, "the bytes came back changed");
    };
    echoed(&mut s, b"EHLO printer\r\n");
    std::thread::sleep(Duration::from_millis(700));
    // Past the bound: a STARTTLS and a hello now go through unread.
    let hello = client_hello_record(0x0301, &[0x002f], &[(0, sni_body(MAIL_HOST))]);
    let late = [b"STARTTLS\r\n".as_slice(), &hello].concat();
    echoed(&mut s, &late);
    drop(s);
    let ev = t.wait_events("the session's line", |ev| {
        ev.iter().any(|e| e["starttls"] == "smtp")
    });
    let e = ev.iter().find(|e| e["starttls"] == "smtp").unwrap();
    assert_eq!(
        (e["kind"].as_str(), e["sni"].as_str(), e["outcome"].as_str()),
        (Some("not_tls"), None, Some("closed")),
        "{e}"
    );
    assert_eq!(e["bytes_up"].as_u64(), Some(14 + late.len() as u64), "{e}");
    assert_eq!(
        t.metric(
            "tlspeek_starttls_sessions_total",
            &[("protocol", "smtp"), ("upgraded", "false")]
        ),
        1.0
    );
}
