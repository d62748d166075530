//! `tlspeek analyze` end to end: captures made here with tcpdump on loopback while real
//! clients (curl TLS 1.0–1.3, openssl s_client, gnutls-cli with 3DES, a raw client that
//! writes a hello over several records and segments, an SSLv2-format hello) talk through
//! a real tlspeek to real servers — analyze must report what the proxy reported, and what
//! tshark reads; the same capture as pcapng, reordered with retransmissions, cut off, and
//! damaged; synthetic captures of every link type; a large one (mostly bulk data) in
//! bounded memory; progress, filters, the inventory file and the report.
//!
//! The loopback capture is made once and shared by the tests that read it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test
#[path = "../fuzz/checks.rs"]
mod checks;
mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use tlspeek::config::Config;
use tlspeek_loadgen::pcapgen::{self, Conn, Link, Record};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}.bin")).unwrap()
}

/// The fields of an event line that describe the ClientHello.
const HELLO_FIELDS: &[&str] = &[
    "kind",
    "record_version",
    "client_version",
    "supported_versions",
    "max_version",
    "cipher_suites",
    "offers_3des",
    "sni",
    "alpn",
    "ech",
    "ja3",
    "ja3_hash",
    "ja4",
];

/// The fields that depend on the server's answer: the final verdict.
const SERVER_FIELDS: &[&str] = &[
    "negotiated_version",
    "negotiated_cipher",
    "ja3s",
    "server_alert",
    "legacy",
    "legacy_reasons",
];

/// An SSLv2-compatible CLIENT-HELLO (2000s-era OpenSSL's default; see hello_fixtures.rs).
const SSLV2_COMPAT_HELLO: &[u8] = &[
    0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x39, 0x00, 0x00,
    0x35, 0x00, 0x00, 0x0a, 0x07, 0x00, 0xc0, 0x00, 0x00, 0x05, 0x01, 0x00, 0x80, 0x00, 0x00, 0xff,
    0x8c, 0x2e, 0x59, 0x14, 0x0b, 0x4d, 0x60, 0x19, 0x72, 0xa1, 0x09, 0xc3, 0x27, 0x3e, 0x55, 0x80,
];

// ---------------------------------------------------------------------------------------
// Running tlspeek analyze

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn analyze(args: &[&str]) -> Run {
    let out = Command::new(exe())
        .arg("analyze")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Analyses `pcap` with `--events` (plus `args`) and returns the event lines.
fn events_of(pcap: &Path, args: &[&str]) -> (Vec<Value>, Run) {
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("events.jsonl");
    let mut all = vec!["--quiet", "--events", ev.to_str().unwrap()];
    all.extend_from_slice(args);
    all.push(pcap.to_str().unwrap());
    let run = analyze(&all);
    assert_eq!(run.code, 0, "analyze failed: {}", run.stderr);
    (read_events(&ev), run)
}

fn pick(e: &Value, fields: &[&str]) -> BTreeMap<String, Value> {
    fields
        .iter()
        .map(|f| (f.to_string(), e[*f].clone()))
        .collect()
}

fn by_ts(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
    v
}

// ---------------------------------------------------------------------------------------
// The shared loopback capture

struct Real {
    pcap: PathBuf,
    /// The proxy's event lines, by start time.
    proxy: Vec<Value>,
    proxy_db: PathBuf,
    ports: Vec<u16>,
    /// Source ports of the direct raw clients (split hello, SSLv2 hello).
    split_port: u16,
    sslv2_port: u16,
}

fn real() -> Option<&'static Real> {
    if !require(&[
        "tcpdump",
        "curl",
        "openssl",
        "gnutls-cli",
        "gnutls-serv",
        "socat",
    ]) {
        return None;
    }
    static REAL: OnceLock<Real> = OnceLock::new();
    Some(REAL.get_or_init(record_real_traffic))
}

/// A ClientHello re-framed into `records` TLS records.
fn reframe(hello: &[u8], records: usize) -> Vec<u8> {
    let msg = &hello[5..5 + usize::from(u16::from_be_bytes([hello[3], hello[4]]))];
    let piece = msg.len().div_ceil(records);
    let mut out = Vec::new();
    for chunk in msg.chunks(piece) {
        out.extend_from_slice(&[0x16, hello[1], hello[2]]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A raw client that writes `bytes` in `pieces` segments (TCP_NODELAY, a pause between
/// writes), reads what the server answers for a moment, and closes. Returns its port.
fn raw_client(port: u16, bytes: &[u8], pieces: usize) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let local = s.local_addr().unwrap().port();
    for chunk in bytes.chunks(bytes.len().div_ceil(pieces)) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 16384];
    let _ = s.read(&mut buf);
    local
}

fn record_real_traffic() -> Real {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("analyze-real");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("loopback.pcap");

    let (_all, p_all) = openssl_server(&[]);
    let (_modern, p_mod) = openssl_server(&["-min_protocol", "TLSv1.2"]);
    let (_gnutls, p_gnu) = gnutls_server("NORMAL:+3DES-CBC:+VERS-TLS1.0:+VERS-TLS1.1");
    let t = Tlspeek::start(
        &format!("allowed_ports = [{p_all}, {p_mod}, {p_gnu}]\n"),
        "",
    );
    let dump = Tcpdump::start(
        &pcap,
        &format!("tcp port {p_all} or tcp port {p_mod} or tcp port {p_gnu}"),
    );

    let curl = |up: u16, args: &[&str]| curl_via(t.proxy_port, up, LOGIN, args);
    let old = ["--ciphers", "DEFAULT:@SECLEVEL=0"];
    for (min, max) in [("--tlsv1.0", "1.0"), ("--tlsv1.1", "1.1")] {
        let (code, err) = curl(p_all, &[min, "--tls-max", max, old[0], old[1]]);
        assert_eq!(code, "200", "curl TLS {max}: {err}");
    }
    let (code, err) = curl(p_all, &["--tls-max", "1.2"]);
    assert_eq!(code, "200", "curl TLS 1.2: {err}");
    let (code, err) = curl(p_all, &["--tlsv1.3"]);
    assert_eq!(code, "200", "curl TLS 1.3: {err}");
    let out = s_client_get(
        t.proxy_port,
        p_all,
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    );
    assert!(out.contains("200 ok"), "s_client: {out}");
    let out = gnutls_via_proxy(
        t.proxy_port,
        p_gnu,
        "NORMAL:-CIPHER-ALL:+3DES-CBC:-VERS-TLS1.3",
        LOGIN,
    );
    assert!(out.contains("3DES"), "gnutls-cli: {out}");
    // A TLS 1.0-only client against a TLS 1.2+ server: refused with an alert.
    let (code, _) = curl(p_mod, &["--tlsv1.0", "--tls-max", "1.0", old[0], old[1]]);
    assert_ne!(code, "200");
    let proxy = t.wait_events("the 7 proxied connections", |ev| ev.len() >= 7);

    // Direct raw clients: chromium's hello in 3 records over 6 segments; an SSLv2 hello.
    let split_port = raw_client(p_all, &reframe(&fixture("chromium"), 3), 6);
    let sslv2_port = raw_client(p_all, SSLV2_COMPAT_HELLO, 1);
    std::thread::sleep(Duration::from_millis(200));
    let stats = dump.stop();
    assert!(stats.contains("0 packets dropped"), "tcpdump: {stats}");
    let proxy_db = dir.join("proxy-inventory.sqlite");
    let mut t = t;
    assert!(t.terminate(Duration::from_secs(10)).is_some());
    // The database and its write-ahead log, as the proxy left them.
    std::fs::copy(t.inventory_path(), &proxy_db).unwrap();
    for ext in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{ext}", t.inventory_path().display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{ext}", proxy_db.display())).unwrap();
        }
    }
    Real {
        pcap,
        proxy: by_ts(proxy),
        proxy_db,
        ports: vec![p_all, p_mod, p_gnu],
        split_port,
        sslv2_port,
    }
}

/// analyze's events of the real capture: the proxied connections (by start time), then
/// the split-hello and SSLv2 ones.
fn real_events(r: &Real, pcap: &Path) -> (Vec<Value>, Value, Value) {
    let (ev, _) = events_of(pcap, &[]);
    let port = |e: &Value| e["source_port"].as_u64().unwrap() as u16;
    let split = ev.iter().find(|e| port(e) == r.split_port).cloned();
    let sslv2 = ev.iter().find(|e| port(e) == r.sslv2_port).cloned();
    let proxied: Vec<Value> = ev
        .into_iter()
        .filter(|e| port(e) != r.split_port && port(e) != r.sslv2_port)
        .collect();
    (
        by_ts(proxied),
        split.expect("the split-hello connection"),
        sslv2.expect("the SSLv2-hello connection"),
    )
}

#[test]
fn capture_reports_what_the_proxy_reported() {
    let Some(r) = real() else { return };
    let (ev, _, _) = real_events(r, &r.pcap);
    assert_eq!(ev.len(), r.proxy.len(), "connections: {ev:#?}");
    for (a, p) in ev.iter().zip(&r.proxy) {
        assert_eq!(a["mode"], "pcap");
        assert_eq!(p["mode"], "connect");
        let fields: Vec<&str> = HELLO_FIELDS.iter().chain(SERVER_FIELDS).copied().collect();
        assert_eq!(
            pick(a, &fields),
            pick(p, &fields),
            "\nanalyze: {a}\nproxy:   {p}"
        );
        assert_eq!(a["source_ip"], p["source_ip"]);
        assert!(
            r.ports
                .contains(&(a["target_port"].as_u64().unwrap() as u16))
        );
        assert_eq!(a["target_host"], LOGIN);
        assert_eq!(a["upstream_ip"], "127.0.0.1");
        assert!(a["bytes_up"].as_u64().unwrap() > 0);
        // The capture sees the proxy's upstream leg: how that leg ended can differ from
        // how the client's did (a server that resets after the client left), except for
        // a refusal by the server.
        if p["outcome"] == "rejected_by_server" {
            assert_eq!(a["outcome"], "rejected_by_server", "{a}");
        } else {
            let o = a["outcome"].as_str().unwrap();
            assert!(
                ["closed", "upstream_reset", "client_reset"].contains(&o),
                "{a}"
            );
        }
    }
    let versions: Vec<&str> = ev
        .iter()
        .map(|e| e["negotiated_version"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        versions,
        [
            "TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3", "TLS1.0", "TLS1.2", "-"
        ]
    );
    assert_eq!(ev[5]["legacy_reasons"][0], "negotiated_3des");
    assert_eq!(ev[6]["server_alert"], "protocol_version");
}

#[test]
fn hello_over_several_records_and_segments_and_sslv2() {
    let Some(r) = real() else { return };
    let (_, split, sslv2) = real_events(r, &r.pcap);
    // The same summary as the hello in one piece.
    let whole = synthetic_events(&[(Link::Raw, fixture("chromium"), None)], "pcap");
    assert_eq!(pick(&split, HELLO_FIELDS), pick(&whole[0], HELLO_FIELDS));
    assert_eq!(split["negotiated_version"], "TLS1.3", "{split}");
    assert_eq!(sslv2["kind"], "sslv2");
    assert_eq!(sslv2["record_version"], "SSL2.0");
    assert_eq!(sslv2["max_version"], "TLS1.0");
    assert_eq!(
        sslv2["cipher_suites"],
        serde_json::json!([
            "0x0039", "0x0035", "0x000a", "0x0700c0", "0x0005", "0x010080", "0x00ff"
        ])
    );
    assert_eq!(sslv2["legacy"], true);
    assert_eq!(
        sslv2["target_host"], "127.0.0.1",
        "no SNI: the server's address"
    );
}

#[test]
fn pcapng_gives_the_same_lines() {
    let Some(r) = real() else { return };
    let (linktype, records) = pcapgen::read_pcap(&std::fs::read(&r.pcap).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ng = dir.path().join("loopback.pcapng");
    std::fs::write(&ng, pcapgen::write_pcapng(linktype, &records)).unwrap();
    let (a, _) = events_of(&r.pcap, &[]);
    let (b, _) = events_of(&ng, &[]);
    assert_eq!(a, b);
    if require(&["editcap"]) {
        // And a pcapng written by Wireshark's own tool.
        let ws = dir.path().join("editcap.pcapng");
        let ok = Command::new("editcap")
            .args(["-F", "pcapng"])
            .arg(&r.pcap)
            .arg(&ws)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(events_of(&ws, &[]).0, a);
    }
}

/// Rewrites a capture: in every direction of every connection the first data segment
/// comes after the second (or just before the FIN) and twice (a retransmission).
fn reorder(records: &[Record]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut seen: HashMap<(u16, u16), usize> = HashMap::new();
    let mut held: HashMap<(u16, u16), Record> = HashMap::new();
    for r in records {
        let Some((sp, dp, _, flags, len)) = pcapgen::tcp_of_ethernet_v4(&r.data) else {
            out.push(r.clone());
            continue;
        };
        if len > 0 {
            let n = seen.entry((sp, dp)).or_default();
            *n += 1;
            if *n == 1 {
                held.insert((sp, dp), r.clone());
                continue;
            }
            out.push(r.clone());
        }
        if let Some(h) = held.remove(&(sp, dp)) {
            out.push(h.clone());
            out.push(h);
        }
        if len == 0 {
            out.push(r.clone());
        }
        let _ = flags;
    }
    out.extend(held.into_values());
    out
}

#[test]
fn reordered_and_retransmitted_segments() {
    let Some(r) = real() else { return };
    let (linktype, records) = pcapgen::read_pcap(&std::fs::read(&r.pcap).unwrap());
    let shuffled = reorder(&records);
    assert_ne!(shuffled, records);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("reordered.pcap");
    std::fs::write(&p, pcapgen::write_pcap(linktype, &shuffled)).unwrap();
    let (a, _) = events_of(&r.pcap, &[]);
    let (b, _) = events_of(&p, &[]);
    assert_eq!(a.len(), b.len());
    let fields: Vec<&str> = HELLO_FIELDS
        .iter()
        .chain(SERVER_FIELDS)
        .chain(&["source_port", "outcome"])
        .copied()
        .collect();
    let key = |v: &[Value]| {
        let mut k: Vec<_> = v.iter().map(|e| pick(e, &fields)).collect();
        k.sort_by_key(|m| m["source_port"].as_u64());
        k
    };
    assert_eq!(key(&a), key(&b));
    let more = |v: &[Value]| {
        v.iter()
            .map(|e| e["bytes_up"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert!(more(&b) > more(&a), "retransmitted bytes are counted");
}

#[test]
fn cut_off_and_damaged_captures() {
    let Some(r) = real() else { return };
    let bytes = std::fs::read(&r.pcap).unwrap();
    let (_, records) = pcapgen::read_pcap(&bytes);
    let (full, _) = events_of(&r.pcap, &[]);
    let dir = tempfile::tempdir().unwrap();

    // Cut in the middle of the first ServerHello from about 3/5 into the capture (not just
    // any record there: which connection is open at a given record depends on the timing
    // of the capture): everything before is found, and the connection whose ServerHello
    // is cut is reported as open when the capture ended.
    let mut offset = 24;
    let mut cut_at = 0;
    for (i, rec) in records.iter().enumerate() {
        // A TLS handshake record from a server: the client's hello is complete.
        let server_hello =
            pcapgen::tcp_of_ethernet_v4(&rec.data).is_some_and(|(sport, _, _, flags, len)| {
                r.ports.contains(&sport)
                    && len > 0
                    && flags & 0x05 == 0
                    && rec.data[rec.data.len() - len] == 0x16
            });
        if i >= records.len() * 3 / 5 && server_hello {
            cut_at = offset + 16 + rec.data.len() / 2;
            break;
        }
        offset += 16 + rec.data.len();
    }
    assert!(cut_at > 0, "no ServerHello after 3/5 of the capture");
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &bytes[..cut_at]).unwrap();
    let ev = dir.path().join("cut.jsonl");
    let run = analyze(&["--events", ev.to_str().unwrap(), cut.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("the capture is cut off at offset {}", offset)),
        "{}",
        run.stderr
    );
    let got = read_events(&ev);
    assert!(!got.is_empty() && got.len() <= full.len(), "{got:#?}");
    assert!(
        got.iter().any(|e| e["note"]
            .as_str()
            .is_some_and(|n| n.contains("the capture ended before the connection did"))),
        "{got:#?}"
    );

    // Damage: a record header overwritten in the middle; the rest is still read.
    let mut damaged = bytes.clone();
    let mut offset = 24;
    let mut hit = 0;
    for (i, rec) in records.iter().enumerate() {
        if i == records.len() / 2 {
            hit = offset;
            damaged[offset..offset + 16].fill(0xff);
            break;
        }
        offset += 16 + rec.data.len();
    }
    let bad = dir.path().join("damaged.pcap");
    std::fs::write(&bad, &damaged).unwrap();
    let ev = dir.path().join("damaged.jsonl");
    let run = analyze(&["--events", ev.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("damaged data at offset {hit}")),
        "{}",
        run.stderr
    );
    let got = read_events(&ev);
    assert!(
        got.len() + 1 >= full.len(),
        "{} of {}",
        got.len(),
        full.len()
    );
}

#[test]
fn tshark_reads_the_same_hellos() {
    let Some(r) = real() else { return };
    if !require(&["tshark"]) {
        return;
    }
    // Connections by (client port, server port): a port alone can come back on another
    // connection to another server.
    let (ev, _) = events_of(&r.pcap, &[]);
    let key = |e: &Value| {
        (
            e["source_port"].as_u64().unwrap(),
            e["target_port"].as_u64().unwrap(),
        )
    };
    let ev: BTreeMap<(u64, u64), Value> = ev.into_iter().map(|e| (key(&e), e)).collect();
    let rows = tshark(
        &r.pcap,
        &r.ports,
        "tls.handshake.type == 1",
        &[
            "tcp.srcport",
            "tls.handshake.extensions_server_name",
            "tls.handshake.version",
            "tls.handshake.ciphersuite",
            "tls.handshake.extensions.supported_version",
            "tls.handshake.extensions_alpn_str",
            "tls.handshake.ja3_full",
            "tls.handshake.ja3",
            "tls.handshake.cipherspec",
            "tcp.dstport",
        ],
    );
    // tshark gives one row per packet: a retransmitted hello (rare on loopback, but a
    // loaded machine can do it) is the same row twice.
    let mut clients: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    for c in rows {
        let k = (c[0].parse().unwrap(), c[9].parse().unwrap());
        if let Some(prev) = clients.insert(k, c.clone()) {
            assert_eq!(prev, c, "two different hellos on one connection {k:?}");
        }
    }
    assert_eq!(
        clients.keys().collect::<Vec<_>>(),
        ev.keys().collect::<Vec<_>>(),
        "connections with a ClientHello: tshark (left) and analyze (right)\n{clients:#?}"
    );
    for (k, c) in &clients {
        let e = &ev[k];
        if c[6].is_empty() {
            // The SSLv2-format hello: tshark gives its version, no JA3.
            assert_eq!(e["kind"], "sslv2", "{e}");
            assert_eq!(e["client_version"], version(&c[2]), "{e}");
            assert_eq!(
                e["cipher_suites"],
                serde_json::json!(hex_list(&c[8])),
                "{e}"
            );
            continue;
        }
        assert_eq!(e["sni"].as_str().unwrap_or(""), c[1], "{e}");
        assert_eq!(e["client_version"], version(&c[2]), "{e}");
        assert_eq!(
            e["cipher_suites"],
            serde_json::json!(hex_list(&c[3])),
            "{e}"
        );
        let versions: Vec<String> = hex_list(&c[4]).iter().map(|v| version(v)).collect();
        assert_eq!(e["supported_versions"], serde_json::json!(versions), "{e}");
        let alpn: Vec<&str> = c[5].split(',').filter(|s| !s.is_empty()).collect();
        assert_eq!(e["alpn"], serde_json::json!(alpn), "{e}");
        assert_eq!(e["ja3"], c[6], "{e}");
        assert_eq!(e["ja3_hash"], c[7], "{e}");
    }
    let servers = tshark(
        &r.pcap,
        &r.ports,
        "tls.handshake.type == 2",
        &[
            "tcp.dstport",
            "tls.handshake.version",
            "tls.handshake.extensions.supported_version",
            "tls.handshake.ciphersuite",
            "tls.handshake.ja3s",
            "tcp.srcport",
        ],
    );
    let servers: BTreeMap<(u64, u64), Vec<String>> = servers
        .into_iter()
        .map(|s| ((s[0].parse().unwrap(), s[5].parse().unwrap()), s))
        .collect();
    for (k, s) in &servers {
        let e = &ev[k];
        let v = if s[2].is_empty() { &s[1] } else { &s[2] };
        assert_eq!(e["negotiated_version"], version(v), "{e}");
        assert_eq!(e["negotiated_cipher"], s[3], "{e}");
        assert_eq!(e["ja3s"], s[4], "{e}");
    }
    let negotiated = ev.values().filter(|e| e["negotiated_version"].is_string());
    assert_eq!(negotiated.count(), servers.len());
}

/// `tshark -r FILE -Y FILTER -T fields` with the test ports decoded as TLS: one row per
/// packet, each field's values joined with ','.
fn tshark(pcap: &Path, ports: &[u16], filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap);
    for p in ports {
        cmd.args(["-d", &format!("tcp.port=={p},tls")]);
    }
    cmd.args([
        "-Y",
        filter,
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.stderr(Stdio::null()).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn is_grease(v: u32) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// tshark's `0x1301,0x0a0a,...` without GREASE, as tlspeek writes it.
fn hex_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .filter_map(|x| u32::from_str_radix(x.trim_start_matches("0x"), 16).ok())
        .filter(|v| !is_grease(*v))
        .map(|v| {
            if v > 0xffff {
                format!("0x{v:06x}")
            } else {
                format!("0x{v:04x}")
            }
        })
        .collect()
}

fn version(hex: &str) -> String {
    match hex {
        "0x0300" => "SSL3.0",
        "0x0301" => "TLS1.0",
        "0x0302" => "TLS1.1",
        "0x0303" => "TLS1.2",
        "0x0304" => "TLS1.3",
        _ => "unknown",
    }
    .to_string()
}

#[test]
fn inventory_file_and_report_are_the_proxys() {
    let Some(r) = real() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("analyze.sqlite");
    let db_s = db.to_str().unwrap();
    let pcap = r.pcap.to_str().unwrap();
    for format in ["table", "csv", "json"] {
        let run = analyze(&["--quiet", "--all", "--format", format, pcap]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let _ = std::fs::remove_file(&db);
        let with_db = analyze(&["--quiet", "--all", "--format", format, "--db", db_s, pcap]);
        assert_eq!(with_db.stdout, run.stdout);
        let report = Command::new(exe())
            .args(["report", "--all", "--format", format, "--db", db_s])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&report.stdout),
            run.stdout,
            "`tlspeek report` prints the same {format}"
        );
    }
    // Legacy callers by default, and the proxy's inventory has the same rows.
    let run = analyze(&["--quiet", "--format", "json", pcap]);
    let rows: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert!(rows.iter().all(|r| r["legacy"] == true));
    assert!(!rows.is_empty());
    let proxy = Command::new(exe())
        .args(["report", "--all", "--format", "json", "--db"])
        .arg(&r.proxy_db)
        .output()
        .unwrap();
    let proxy: Vec<Value> = serde_json::from_slice(&proxy.stdout).unwrap();
    let all: Vec<Value> =
        serde_json::from_str(&analyze(&["--quiet", "--all", "--format", "json", pcap]).stdout)
            .unwrap();
    let fields = [
        "source_ip",
        "destination",
        "ja4",
        "ja3_hash",
        "legacy",
        "legacy_reasons",
        "versions_offered",
        "versions_negotiated",
        "ciphers_negotiated",
        "connections",
        "software",
        "software_confidence",
        "fix",
    ];
    let mut ours: Vec<_> = all.iter().map(|r| pick(r, &fields)).collect();
    for p in &proxy {
        let p = pick(p, &fields);
        let at = ours.iter().position(|o| *o == p);
        assert!(
            at.is_some(),
            "the proxy's row {p:#?} is not in analyze's: {ours:#?}"
        );
        ours.remove(at.unwrap());
    }
    // What remains: the two direct raw clients (chromium's hello, the SSLv2 hello).
    assert_eq!(ours.len(), 2, "{ours:#?}");
}

#[test]
fn filters() {
    let Some(r) = real() else { return };
    let (all, _) = events_of(&r.pcap, &[]);
    let (legacy, _) = events_of(&r.pcap, &["--legacy-only"]);
    assert!(!legacy.is_empty() && legacy.len() < all.len());
    assert!(legacy.iter().all(|e| e["legacy"] == true));
    let (login, _) = events_of(&r.pcap, &["--destination", LOGIN]);
    assert_eq!(
        login.len(),
        all.len() - 1,
        "all but the SSLv2 hello (no SNI)"
    );
    let (pattern, _) = events_of(&r.pcap, &["--destination", "*.microsoftonline.com"]);
    assert_eq!(pattern.len(), login.len());
    let (by_ip, _) = events_of(&r.pcap, &["--destination", "127.0.0.1"]);
    assert_eq!(
        by_ip.len(),
        all.len(),
        "the server address matches every one"
    );
    let (none, _) = events_of(&r.pcap, &["--destination", "example.com"]);
    assert!(none.is_empty());
    // Times: the capture was made just now.
    let (recent, _) = events_of(&r.pcap, &["--since", "1h"]);
    assert_eq!(recent.len(), all.len());
    let (old, run) = events_of(&r.pcap, &["--until", "1h"]);
    assert!(old.is_empty());
    assert!(
        run.stdout.contains("no legacy callers in the capture"),
        "{}",
        run.stdout
    );
    let bad = analyze(&["--since", "yesterday", r.pcap.to_str().unwrap()]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("--since"), "{}", bad.stderr);
}

// ---------------------------------------------------------------------------------------
// Synthetic captures

/// A synthetic connection: link, ClientHello, ServerHello.
type SynthConn = (Link, Vec<u8>, Option<Vec<u8>>);

/// Writes one connection per entry — (link, ClientHello, ServerHello) — as a pcap (when
/// every link is the same) or pcapng (one interface per link), analyses it, and returns
/// the events by start time.
fn synthetic_events(conns: &[SynthConn], format: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("synthetic.{format}"));
    let linktype = |l: &Link| match l {
        Link::Ethernet(_) => pcapgen::LINKTYPE_ETHERNET,
        Link::Sll => pcapgen::LINKTYPE_LINUX_SLL,
        Link::Sll2 => pcapgen::LINKTYPE_LINUX_SLL2,
        Link::Raw => pcapgen::LINKTYPE_RAW,
    };
    let types: Vec<u32> = conns.iter().map(|c| linktype(&c.0)).collect();
    let mut w = if format == "pcap" {
        pcapgen::Writer::pcap(Vec::new(), types[0]).unwrap()
    } else {
        pcapgen::Writer::pcapng(Vec::new(), &types).unwrap()
    };
    let mut ts = 1_700_000_000_000_000u64;
    for (i, (link, hello, server)) in conns.iter().enumerate() {
        let v6 = i % 2 == 1;
        let client: SocketAddr = if v6 {
            format!("[2001:db8::{}]:{}", i + 1, 40000 + i)
                .parse()
                .unwrap()
        } else {
            format!("10.9.8.{}:{}", i + 1, 40000 + i).parse().unwrap()
        };
        let server_addr: SocketAddr = if v6 {
            "[2001:db8::443]:443".parse().unwrap()
        } else {
            "192.0.2.1:443".parse().unwrap()
        };
        let mut c = Conn::new(link.clone(), client, server_addr, 1000 * i as u32);
        let iface = if format == "pcap" { 0 } else { i as u32 };
        let mut frames = c.handshake();
        frames.push(c.client_data(hello));
        if let Some(s) = server {
            frames.push(c.server_data(s));
        }
        frames.push(c.client_fin());
        frames.push(c.server_fin());
        for f in frames {
            ts += 1000;
            w.frame_on(iface, ts, &f).unwrap();
        }
    }
    std::fs::write(&path, w.into_inner()).unwrap();
    events_of(&path, &["--all"]).0
}

#[test]
fn every_link_type_in_one_pcapng() {
    let conns = vec![
        (
            Link::Ethernet(vec![]),
            fixture("curl_tls10"),
            Some(fixture("server_openssl_tls10")),
        ),
        (
            Link::Ethernet(vec![0x8100]),
            fixture("curl_tls13"),
            Some(fixture("server_openssl_tls13")),
        ),
        (
            Link::Ethernet(vec![0x88a8, 0x8100]),
            fixture("gnutls_3des"),
            Some(fixture("server_gnutls_3des")),
        ),
        (
            Link::Sll,
            fixture("curl_tls11"),
            Some(fixture("server_openssl_tls11")),
        ),
        (
            Link::Sll2,
            fixture("curl_tls12"),
            Some(fixture("server_openssl_tls12")),
        ),
        (
            Link::Raw,
            fixture("curl_tls10"),
            Some(fixture("server_openssl_alert")),
        ),
        (Link::Raw, SSLV2_COMPAT_HELLO.to_vec(), None),
    ];
    let ev = synthetic_events(&conns, "pcapng");
    assert_eq!(ev.len(), conns.len(), "{ev:#?}");
    let got: Vec<(String, String, String, String)> = ev
        .iter()
        .map(|e| {
            (
                e["source_ip"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
                e["negotiated_version"].as_str().unwrap_or("-").to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("10.9.8.1", "tls", "TLS1.0", "closed"),
        ("2001:db8::2", "tls", "TLS1.3", "closed"),
        ("10.9.8.3", "tls", "TLS1.2", "closed"),
        ("2001:db8::4", "tls", "TLS1.1", "closed"),
        ("10.9.8.5", "tls", "TLS1.2", "closed"),
        ("2001:db8::6", "tls", "-", "rejected_by_server"),
        ("10.9.8.7", "sslv2", "-", "closed"),
    ];
    let want: Vec<(String, String, String, String)> = want
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        ev[1]["source"], "2001:db8::/64",
        "IPv6 sources grouped by /64"
    );
    assert_eq!(ev[2]["legacy_reasons"][0], "negotiated_3des");
    assert_eq!(ev[5]["server_alert"], "protocol_version");
    assert_eq!(
        ev[0]["ts"], "2023-11-14T22:13:20.001Z",
        "the capture's time"
    );
}

#[test]
fn connections_without_a_hello_and_without_a_syn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.pcap");
    let mut w = pcapgen::Writer::pcap(Vec::new(), pcapgen::LINKTYPE_ETHERNET).unwrap();
    let link = Link::Ethernet(vec![]);
    let server: SocketAddr = "192.0.2.1:443".parse().unwrap();
    let mut ts = 1_700_000_000_000_000u64;
    let mut put = |w: &mut pcapgen::Writer<Vec<u8>>, f: Vec<u8>, dt: u64| {
        ts += dt;
        w.frame(ts, &f).unwrap();
    };
    // 1. Refused: SYN, RST.
    let mut refused = Conn::new(link.clone(), "10.0.0.1:1001".parse().unwrap(), server, 5);
    let syn = refused.syn();
    put(&mut w, syn, 1000);
    let rst = pcapgen::frame(
        &link,
        server,
        refused.client,
        0,
        refused.cseq,
        pcapgen::RST | pcapgen::ACK,
        &[],
    );
    put(&mut w, rst, 1000);
    // 2. Unanswered SYN (times out: the flow idles past --flow-idle).
    let mut silent = Conn::new(link.clone(), "10.0.0.2:1002".parse().unwrap(), server, 6);
    let syn = silent.syn();
    put(&mut w, syn, 1000);
    // 3. Not TLS on port 443.
    let mut http = Conn::new(link.clone(), "10.0.0.3:1003".parse().unwrap(), server, 7);
    for f in http.handshake() {
        put(&mut w, f, 1000);
    }
    let f = http.client_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    put(&mut w, f, 1000);
    let f = http.client_fin();
    put(&mut w, f, 1000);
    let f = http.server_fin();
    put(&mut w, f, 1000);
    // 4. Began before the capture: no SYN, the hello first.
    let mut late = Conn::new(link.clone(), "10.0.0.4:1004".parse().unwrap(), server, 8);
    let f = late.client_data(&fixture("curl_tls12"));
    put(&mut w, f, 1000);
    let f = late.server_data(&fixture("server_openssl_tls12"));
    put(&mut w, f, 1000);
    // 5. Mid-stream bulk without a SYN: nothing to say.
    let mut bulk = Conn::new(link.clone(), "10.0.0.5:1005".parse().unwrap(), server, 9);
    let f = bulk.server_data(&[0x17; 1000]);
    put(&mut w, f, 1000);
    let f = bulk.client_data(&[0x17; 100]);
    put(&mut w, f, 1000);
    // 6. A hello cut off by the end of the connection (reset by the client).
    let mut cut = Conn::new(link.clone(), "10.0.0.6:1006".parse().unwrap(), server, 10);
    for f in cut.handshake() {
        put(&mut w, f, 1000);
    }
    let f = cut.client_data(&fixture("curl_tls13")[..100]);
    put(&mut w, f, 1000);
    let rst = pcapgen::frame(&link, cut.client, server, cut.cseq, 0, pcapgen::RST, &[]);
    put(&mut w, rst, 1000);
    // Ten seconds later, a packet of another flow: the unanswered SYN has idled out.
    let mut other = Conn::new(link.clone(), "10.0.0.7:1007".parse().unwrap(), server, 11);
    let syn = other.syn();
    put(&mut w, syn, 10_000_000);
    std::fs::write(&path, w.into_inner()).unwrap();

    let (ev, _) = events_of(&path, &["--flow-idle", "2s"]);
    let by_ip: HashMap<String, &Value> = ev
        .iter()
        .map(|e| (e["source_ip"].as_str().unwrap().to_string(), e))
        .collect();
    let get = |ip: &str, f: &str| by_ip[ip][f].clone();
    assert_eq!(get("10.0.0.1", "outcome"), "connect_failed");
    assert_eq!(get("10.0.0.1", "kind"), "none");
    assert_eq!(get("10.0.0.2", "outcome"), "connect_timeout");
    assert_eq!(get("10.0.0.3", "kind"), "not_tls");
    assert_eq!(get("10.0.0.4", "negotiated_version"), "TLS1.2");
    assert!(
        get("10.0.0.4", "note")
            .as_str()
            .unwrap()
            .contains("began before the capture")
    );
    assert!(
        !by_ip.contains_key("10.0.0.5"),
        "mid-stream bulk is no connection"
    );
    assert_eq!(get("10.0.0.6", "kind"), "truncated");
    assert_eq!(get("10.0.0.6", "outcome"), "client_reset");
    assert_eq!(get("10.0.0.7", "outcome"), "closed", "open at the end");
    assert!(
        get("10.0.0.7", "note")
            .as_str()
            .unwrap()
            .contains("capture ended")
    );
    assert_eq!(ev.len(), 6, "{ev:#?}");
}

#[test]
fn committed_fixture_capture() {
    // tcpdump -i lo while curl --tlsv1.0/1.1/1.2/1.3 talked to `openssl s_server`
    // (tests/fixtures/pcap/README.md); ja3/ja3s as tshark 4.0 computes them.
    let path = format!("{FIXTURES}/pcap/curl_tls10_to_13.pcap");
    let (ev, run) = events_of(Path::new(&path), &["--all", "--format", "csv"]);
    let got: Vec<(&str, &str, &str, &str)> = ev
        .iter()
        .map(|e| {
            (
                e["negotiated_version"].as_str().unwrap(),
                e["negotiated_cipher"].as_str().unwrap(),
                e["ja3_hash"].as_str().unwrap(),
                e["ja3s"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "TLS1.0",
                "0xc014",
                "147ef8a5dffeb8314533855613969f75",
                "aa6d7b9ef470624d6742bdcd9d86e7a0"
            ),
            (
                "TLS1.1",
                "0xc014",
                "ea502527edcb920e9d3676fda0761ee3",
                "0de1e101dee09e557bb154de4d1d9a6d"
            ),
            (
                "TLS1.2",
                "0xc030",
                "87b9bfc7da97115ed2276737b09f8d74",
                "e54965894d6b45ecb4323c7ea3d6c115"
            ),
            (
                "TLS1.3",
                "0x1302",
                "89dfc51e72bdcb94e4ba4622588002b1",
                "15af977ce25de452b96affa2addb1036"
            ),
        ]
    );
    assert!(
        ev.iter()
            .all(|e| e["mode"] == "pcap" && e["outcome"] == "closed")
    );
    assert_eq!(
        run.stdout.lines().count(),
        1 + 4,
        "CSV header and 4 callers: {}",
        run.stdout
    );
    assert!(run.stdout.starts_with("last_seen,first_seen,source_ip"));
}

#[test]
fn not_a_capture_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "these are not packets\n").unwrap();
    let run = analyze(&[text.to_str().unwrap()]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("not a pcap or pcapng capture: it looks like text"),
        "{}",
        run.stderr
    );
    let missing = analyze(&["/nonexistent/x.pcap"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("/nonexistent/x.pcap"),
        "{}",
        missing.stderr
    );
    // A good file next to a bad one is still analysed; the exit says something failed.
    let good = format!("{FIXTURES}/pcap/curl_tls10_to_13.pcap");
    let run = analyze(&["--all", text.to_str().unwrap(), &good]);
    assert_ne!(run.code, 0);
    assert_eq!(
        run.stdout.matches("login.microsoftonline.com").count(),
        4,
        "{}",
        run.stdout
    );
}

#[test]
fn progress_lines_quiet_and_terminal() {
    let good = format!("{FIXTURES}/pcap/curl_tls10_to_13.pcap");
    let quiet = analyze(&["--quiet", &good]);
    assert_eq!(quiet.stderr, "", "--quiet: nothing on stderr");
    let plain = analyze(&["--progress-interval", "0s", &good]);
    assert!(
        plain
            .stderr
            .contains("tlspeek: analyze: 44.3 kB of 44.3 kB (100%), 73 packets, 4 flows, 4 hellos"),
        "{}",
        plain.stderr
    );
    assert!(
        plain.stderr.contains("tlspeek: analyzed 44.3 kB in"),
        "{}",
        plain.stderr
    );
    if !require(&["script"]) {
        return;
    }
    // On a terminal: the bar (drawn at least once per file), no plain lines.
    let out = Command::new("script")
        .args(["-qec", &format!("{} analyze {good}", exe()), "/dev/null"])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("4 hellos"), "{screen}");
    assert!(screen.contains("44.34 kB/44.34 kB"), "{screen}");
    assert!(!screen.contains("tlspeek: analyze:"), "{screen}");
}

#[test]
fn large_capture_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("large.pcap");
    let hellos: Vec<Vec<u8>> = [
        "curl_tls10",
        "curl_tls11",
        "curl_tls12",
        "curl_tls13",
        "gnutls_3des",
        "openssl_tls10",
        "python_default",
        "chromium",
        "java17_httpclient",
        "node20_https",
    ]
    .iter()
    .map(|n| fixture(n))
    .collect();
    let servers: Vec<Vec<u8>> = ["server_openssl_tls12", "server_gnutls_3des"]
        .iter()
        .map(|n| fixture(n))
        .collect();
    let h: Vec<&[u8]> = hellos.iter().map(Vec::as_slice).collect();
    let s: Vec<&[u8]> = servers.iter().map(Vec::as_slice).collect();
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    let (w, made) = pcapgen::synthetic(file, &h, &s, 1500, 64, 200_000).unwrap();
    drop(w.into_inner().unwrap());
    assert!(made.bytes > 250_000_000, "{} bytes", made.bytes);

    let ev = dir.path().join("large.jsonl");
    let started = Instant::now();
    let run = analyze(&[
        "--all",
        "--progress-interval",
        "0s",
        "--events",
        ev.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    let took = started.elapsed().as_secs_f64();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rate = made.bytes as f64 / took / 1e6;
    println!(
        "large capture: {} MB, {} packets, {} connections in {took:.2} s = {rate:.0} MB/s (debug build)",
        made.bytes / 1_000_000,
        made.packets,
        made.connections
    );
    let summary = run.stderr.lines().last().unwrap_or_default();
    println!("{summary}");
    let events = read_events(&ev);
    assert_eq!(events.len() as u64, made.connections);
    // Every connection has its hello, each hello the fixture it was made from.
    let mut want: HashMap<String, u64> = HashMap::new();
    for (_, which) in &made.clients {
        let (_, hash) = analyze_hello(&hellos[*which]);
        *want.entry(hash).or_default() += 1;
    }
    let mut got: HashMap<String, u64> = HashMap::new();
    for e in &events {
        *got.entry(e["ja3_hash"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(got, want);
    assert!(run.stderr.contains("(100%)"), "progress lines");
    // Peak memory is the process's VmHWM: independent of the file's size.
    let peak: f64 = summary
        .split("peak memory ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("peak memory in the summary");
    assert!(
        peak < 64.0,
        "peak RSS {peak} MiB for a {} MB capture",
        made.bytes / 1_000_000
    );
}

/// (ja3, ja3 hash) of a hello, by the library.
fn analyze_hello(hello: &[u8]) -> (String, String) {
    match tlspeek::hello::detect_client_hello(hello, 1 << 16) {
        tlspeek::hello::Detection::Hello(h) => h.ja3_with_hash(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn in_memory_analysis_of_fixtures_and_fuzz_findings() {
    // The fuzz target's invariants over the committed captures and every finding kept
    // in tests/fixtures/regressions/capture/, plus every prefix of a small capture.
    let cfg = Config::embedded_default().unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for d in ["pcap", "regressions/capture"] {
        if let Ok(dir) = std::fs::read_dir(format!("{FIXTURES}/{d}")) {
            files.extend(
                dir.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_none_or(|x| x != "md")),
            );
        }
    }
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        checks::capture(&cfg, &bytes);
    }
    let small = std::fs::read(format!("{FIXTURES}/pcap/curl_tls10_to_13.pcap")).unwrap();
    for n in (0..small.len()).step_by(97) {
        checks::capture(&cfg, &small[..n]);
    }
}

#[test]
fn events_to_a_reader_that_goes_away() {
    // `tlspeek analyze --events - big.pcap | head -1`: the analysis stops when the pipe
    // closes, exits 0 and says nothing (as any Unix filter); the first line is whole.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.pcap");
    let hello = fixture("curl_tls12");
    let server = fixture("server_openssl_tls12");
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let (w, made) = pcapgen::synthetic(file, &[&hello], &[&server], 2000, 64, 2_000).unwrap();
    drop(w.into_inner().unwrap());
    let mut child = Command::new(exe())
        .args(["analyze", "--quiet", "--events", "-"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let e: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(e["mode"], "pcap");
    // The reader is gone; 2000 event lines (~3 MB) cannot fit in the pipe.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(made.connections, 2000);
}

#[test]
fn a_warning_alert_before_the_server_hello_is_read_past() {
    // tcpdump of curl --tlsv1.0 through a relay that sends a warning unrecognized_name
    // alert before the real server's flight (tests/fixtures/pcap/README.md).
    let path = format!("{FIXTURES}/pcap/warning_alert.pcap");
    let (ev, _) = events_of(Path::new(&path), &["--all", "--format", "json"]);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = &ev[0];
    assert_eq!(e["negotiated_version"], "TLS1.0", "{e}");
    assert_eq!(e["negotiated_cipher"], "0xc014", "{e}");
    assert_ne!(e["outcome"], "rejected_by_server", "{e}");
    assert_eq!(e["server_alert"], Value::Null, "{e}");
    assert_eq!(e["legacy_reasons"][0], "negotiated_tls10", "{e}");
}

#[test]
fn a_crl_fetch_in_a_capture_names_the_host_os_and_each_hello_its_library() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("win7.pcap");
    let mut w = pcapgen::Writer::pcap(Vec::new(), pcapgen::LINKTYPE_ETHERNET).unwrap();
    let link = Link::Ethernet(vec![]);
    let mut ts = 1_700_000_000_000_000u64;
    let mut put = |w: &mut pcapgen::Writer<Vec<u8>>, f: Vec<u8>| {
        ts += 1000;
        w.frame(ts, &f).unwrap();
    };
    // The host fetches a CRL over plain HTTP...
    let crl: SocketAddr = "192.0.2.80:80".parse().unwrap();
    let mut http = Conn::new(link.clone(), "10.0.0.9:2001".parse().unwrap(), crl, 21);
    for f in http.handshake() {
        put(&mut w, f);
    }
    let req = b"GET /pki/crl/products/root.crl HTTP/1.1\r\nHost: crl.microsoft.com\r\nUser-Agent: Microsoft-CryptoAPI/6.1\r\n\r\n";
    put(&mut w, http.client_data(req));
    put(&mut w, http.client_fin());
    put(&mut w, http.server_fin());
    // ... then speaks TLS 1.0 with an OpenSSL client.
    let login: SocketAddr = "192.0.2.1:443".parse().unwrap();
    let mut tls = Conn::new(link.clone(), "10.0.0.9:2002".parse().unwrap(), login, 22);
    for f in tls.handshake() {
        put(&mut w, f);
    }
    put(&mut w, tls.client_data(&fixture("curl_tls10")));
    put(&mut w, tls.server_data(&fixture("server_openssl_tls10")));
    put(&mut w, tls.client_fin());
    put(&mut w, tls.server_fin());
    std::fs::write(&path, w.into_inner()).unwrap();

    let (ev, run) = events_of(&path, &["--all", "--format", "json"]);
    let hello = ev.iter().find(|e| e["kind"] == "tls").unwrap();
    assert_eq!(hello["tls_library"], "openssl", "{hello:#}");
    let rows: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    let row = rows.iter().find(|r| r["source_ip"] == "10.0.0.9").unwrap();
    assert_eq!(row["tls_library"], "openssl");
    assert_eq!(
        row["source_os"]["name"], "Windows 7 / Server 2008 R2",
        "{row:#}"
    );
    assert_eq!(row["source_os"]["user_agent"], "Microsoft-CryptoAPI/6.1");
    let fix = row["fix"].as_str().unwrap();
    assert!(
        fix.contains("Windows 7") && !fix.contains("KB3140245"),
        "{fix}"
    );
    // Kept in the inventory too, and reported from it.
    let db = dir.path().join("inv.sqlite");
    let db_s = db.to_str().unwrap();
    let with_db = analyze(&[
        "--quiet",
        "--all",
        "--format",
        "json",
        "--db",
        db_s,
        path.to_str().unwrap(),
    ]);
    assert_eq!(with_db.code, 0, "{}", with_db.stderr);
    let out = Command::new(exe())
        .args(["report", "--all", "--format", "json", "--db", db_s])
        .output()
        .unwrap();
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows[0]["source_os"]["name"], "Windows 7 / Server 2008 R2",
        "{rows:#?}"
    );
}

/// A ClientHello with `shape`'s ciphers, extensions (in order), groups and signature
/// algorithms; the other extensions get the smallest valid body.
fn hello_of_shape(shape: &tlspeek::hello::stack::Shape, max_version: u16) -> Vec<u8> {
    // Each GREASE value in a list is a different one, as real clients send them (two equal
    // extension types would make the hello invalid).
    let grease = |v: &[u16]| -> Vec<u16> {
        let mut n = 0u16;
        v.iter()
            .map(|&x| {
                if x == 0x0a0a {
                    n += 1;
                    0x0a0a + (n - 1) * 0x1010
                } else {
                    x
                }
            })
            .collect()
    };
    let list16 = |v: &[u16]| {
        let v = grease(v);
        let mut d = ((v.len() * 2) as u16).to_be_bytes().to_vec();
        for x in v {
            d.extend(x.to_be_bytes());
        }
        d
    };
    let mut exts = Vec::new();
    for t in grease(&shape.extensions) {
        let body: Vec<u8> = match t {
            0x0000 => sni_body("login.microsoftonline.com"),
            0x000a => list16(&shape.groups),
            0x000d => list16(&shape.sig_algs),
            0x000b => vec![1, 0],
            0x0010 => vec![0, 3, 2, b'h', b'2'],
            0x002b => {
                let v = if max_version >= 0x0304 {
                    vec![0x0304u16, 0x0303]
                } else {
                    vec![max_version]
                };
                let mut d = vec![(v.len() * 2) as u8];
                for x in v {
                    d.extend(x.to_be_bytes());
                }
                d
            }
            0x002d => vec![1, 1],
            0x0033 => vec![0, 0],
            0x0005 => vec![1, 0, 0, 0, 0],
            0xff01 => vec![0],
            0x001b => vec![2, 0, 2],
            0x001c => vec![0x40, 0x01],
            0x0022 | 0x0032 => list16(&shape.sig_algs),
            0x4469 => vec![0, 3, 2, b'h', b'2'],
            _ => Vec::new(),
        };
        exts.push((t, body));
    }
    client_hello_record(max_version.min(0x0303), &grease(&shape.ciphers), &exts)
}

#[test]
fn analyze_names_the_library_of_every_hello_of_the_test_set() {
    use tlspeek::hello::stack::{StackTable, TLS_STACKS_TSV};
    let table = StackTable::parse(TLS_STACKS_TSV).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.pcap");
    let mut w = pcapgen::Writer::pcap(Vec::new(), pcapgen::LINKTYPE_ETHERNET).unwrap();
    let link = Link::Ethernet(vec![]);
    let server: SocketAddr = "192.0.2.1:443".parse().unwrap();
    let mut ts = 1_700_000_000_000_000u64;
    let mut expected = HashMap::new();
    for (i, e) in table.entries().iter().enumerate() {
        let client: SocketAddr = format!(
            "10.{}.{}.{}:{}",
            1 + i / 65536,
            (i / 256) % 256,
            i % 256,
            20000 + i % 40000
        )
        .parse()
        .unwrap();
        let mut c = Conn::new(link.clone(), client, server, i as u32);
        let hello = match e.source.strip_prefix("here:") {
            Some(file) => std::fs::read(format!(
                "{}/tests/fixtures/stacks/{file}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
            None => hello_of_shape(&e.shape, e.max_version),
        };
        let mut frames = c.handshake();
        frames.push(c.client_data(&hello));
        frames.push(c.client_fin());
        frames.push(c.server_fin());
        for f in frames {
            ts += 10;
            w.frame(ts, &f).unwrap();
        }
        // What the table itself says of this exact shape (the library, or unknown when
        // the same shape is labelled with two libraries).
        expected.insert(
            client.ip().to_string(),
            table.classify(&e.shape).library.as_str(),
        );
    }
    std::fs::write(&path, w.into_inner()).unwrap();
    let (ev, _) = events_of(&path, &[]);
    assert_eq!(ev.len(), table.entries().len(), "one connection per hello");
    let mut wrong = Vec::new();
    for e in &ev {
        let ip = e["source_ip"].as_str().unwrap();
        if e["tls_library"] != expected[ip] {
            wrong.push((ip.to_string(), e["tls_library"].clone(), expected[ip]));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}: {:?}",
        wrong.len(),
        ev.len(),
        &wrong[..wrong.len().min(10)]
    );
    let named = ev.iter().filter(|e| e["tls_library"] != "unknown").count();
    assert!(
        named * 100 >= ev.len() * 95,
        "{named} of {} named",
        ev.len()
    );
}

#[test]
fn server_answers_per_front_end_from_a_capture() {
    // One TLS 1.0 caller (curl's real hello) to three addresses of one name: a ServerHello,
    // an alert, a reset before any answer.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("front-ends.pcap");
    let mut w = pcapgen::Writer::pcap(Vec::new(), pcapgen::LINKTYPE_ETHERNET).unwrap();
    let link = Link::Ethernet(vec![]);
    let mut ts = 1_700_000_000_000_000u64;
    let answers: [(&str, Option<Vec<u8>>); 3] = [
        ("192.0.2.1:443", Some(fixture("server_openssl_tls10"))),
        ("192.0.2.2:443", Some(fixture("server_openssl_alert"))),
        ("192.0.2.3:443", None),
    ];
    for (i, (server, answer)) in answers.iter().enumerate() {
        let client: SocketAddr = format!("10.0.0.1:{}", 50000 + i).parse().unwrap();
        let mut c = Conn::new(link.clone(), client, server.parse().unwrap(), 7 * i as u32);
        let mut frames = c.handshake();
        frames.push(c.client_data(&fixture("curl_tls10")));
        match answer {
            Some(a) => {
                frames.push(c.server_data(a));
                frames.push(c.client_fin());
                frames.push(c.server_fin());
            }
            None => frames.push(c.segment(false, pcapgen::RST | pcapgen::ACK, &[])),
        }
        for f in frames {
            ts += 1000;
            w.frame(ts, &f).unwrap();
        }
    }
    std::fs::write(&path, w.into_inner()).unwrap();
    let run = analyze(&["--quiet", "--format", "json", path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    assert_eq!(
        (&r["server_accepted"], &r["server_rejected"]),
        (&Value::from(1), &Value::from(2)),
        "{r}"
    );
    assert_eq!(r["last_server_alert"], "reset", "the last rejection: {r}");
    let mut tally: Vec<(String, u64, u64)> = r["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["address"].as_str().unwrap().to_string(),
                s["accepted"].as_u64().unwrap(),
                s["rejected"].as_u64().unwrap(),
            )
        })
        .collect();
    tally.sort();
    assert_eq!(
        tally,
        [
            ("192.0.2.1".to_string(), 1, 0),
            ("192.0.2.2".to_string(), 0, 1),
            ("192.0.2.3".to_string(), 0, 1)
        ]
    );
}
