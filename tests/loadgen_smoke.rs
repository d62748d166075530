//! Keeps the benchmark tools from rotting: every mode of `tlspeek-loadgen` runs for a
//! handful of connections through a real tlspeek (and direct), `benches/compare.sh`
//! passes `bash -n` and its `--dry-run`/`--help` paths, and `benches/transparent.sh` and
//! `benches/instructions.sh` their `bash -n` and `--help`. No timing is asserted here: the
//! performance goals live in `BENCHMARKS.md`, measured by `benches/compare.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn loadgen(args: &[&str]) -> anyhow::Result<()> {
    tlspeek_loadgen::run_with_args(std::iter::once("tlspeek-loadgen").chain(args.iter().copied()))
}

#[test]
fn loadgen_runs_every_mode_through_tlspeek() {
    let (tls_port, raw_port) = (free_port(), free_port());
    let (tls, raw) = (
        format!("127.0.0.1:{tls_port}"),
        format!("127.0.0.1:{raw_port}"),
    );
    {
        let (tls, raw) = (tls.clone(), raw.clone());
        std::thread::spawn(move || {
            let r = loadgen(&[
                "serve",
                "--tls-listen",
                &tls,
                "--raw-listen",
                &raw,
                "--lifetime",
                "120s",
            ]);
            if let Err(e) = r {
                eprintln!("loadgen serve: {e:#}");
            }
        });
    }
    assert!(
        wait_port(tls_port, Duration::from_secs(10)),
        "serve did not start"
    );
    assert!(
        wait_port(raw_port, Duration::from_secs(10)),
        "serve did not start"
    );
    let t = Tlspeek::start(&format!("allowed_ports = [{tls_port}, {raw_port}]\n"), "");
    let proxy = format!("127.0.0.1:{}", t.proxy_port);
    let pid = t.pid().to_string();
    let via: [&[&str]; 2] = [&["--direct"], &["--proxy", &proxy]];
    for v in via {
        let run = |args: &[&str]| {
            let all: Vec<&str> = args.iter().chain(v).copied().collect();
            loadgen(&all).unwrap_or_else(|e| panic!("loadgen {all:?}: {e:#}\n{}", t.stderr()));
        };
        run(&[
            "handshake",
            "--target",
            &tls,
            "-n",
            "12",
            "-c",
            "3",
            "--pid",
            &pid,
        ]);
        run(&[
            "throughput",
            "--target",
            &raw,
            "--dir",
            "down",
            "--bytes",
            "3000000",
            "--streams",
            "2",
        ]);
        run(&[
            "throughput",
            "--target",
            &raw,
            "--dir",
            "up",
            "--bytes",
            "3000000",
        ]);
        run(&[
            "throughput",
            "--target",
            &tls,
            "--dir",
            "tls-down",
            "--bytes",
            "2000000",
        ]);
    }
    loadgen(&[
        "idle", "--proxy", &proxy, "--target", &tls, "-k", "10", "--hold", "200ms", "--pid", &pid,
    ])
    .unwrap_or_else(|e| panic!("loadgen idle: {e:#}"));

    // Through the proxy: 12 handshakes + 1 TLS download + 10 idle tunnels, each one TLS
    // connection with the loadgen's SNI, recorded by tlspeek.
    let ev = t.wait_events("the loadgen's TLS connections", |e| {
        e.iter().filter(|e| e["sni"] == "localhost").count() >= 23
    });
    let tls_events: Vec<_> = ev.iter().filter(|e| e["sni"] == "localhost").collect();
    assert!(
        tls_events
            .iter()
            .all(|e| e["kind"] == "tls" && e["max_version"] == "TLS1.3")
    );
    assert!(
        tls_events
            .iter()
            .all(|e| e["ja4"].as_str().is_some_and(|j| j.starts_with("t13d")))
    );
    // The raw transfers: 3 tunnels, not TLS, bytes counted in full.
    let raw_events: Vec<_> = ev.iter().filter(|e| e["kind"] == "not_tls").collect();
    assert_eq!(raw_events.len(), 3, "{raw_events:?}");
    assert!(raw_events.iter().all(|e| e["outcome"] == "closed"));
    let down: u64 = raw_events
        .iter()
        .filter_map(|e| e["bytes_down"].as_u64())
        .sum();
    assert!(down >= 3_000_000, "bytes_down {down}");

    // A connection that fails must fail the run: a port tlspeek refuses.
    let refused = loadgen(&[
        "handshake",
        "--proxy",
        &proxy,
        "--target",
        "127.0.0.1:9",
        "-n",
        "1",
        "-c",
        "1",
    ]);
    assert!(
        refused.is_err(),
        "a refused CONNECT was not reported as an error"
    );
}

/// `bash -n` passes, `--help` succeeds and names each of `help_names`, and an unknown
/// option exits 2.
fn script_parses_and_explains_itself(script: &str, help_names: &[&str]) {
    let syntax = Command::new("bash").arg("-n").arg(script).output().unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let help = Command::new("bash")
        .arg(script)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for name in help_names {
        assert!(
            text.contains(name),
            "{script} --help does not name {name}: {text}"
        );
    }
    let bad = Command::new("bash")
        .arg(script)
        .arg("--no-such-option")
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{script} took an unknown option"
    );
}

#[test]
fn compare_script_parses_and_dry_runs() {
    if !require(&["bash", "python3"]) {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/compare.sh");
    script_parses_and_explains_itself(script, &["--dry-run", "--runs"]);
    let dry = Command::new("bash")
        .arg(script)
        .arg("--dry-run")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(out.contains("squid peek+splice") && out.contains("dry run: nothing installed"));
}

#[test]
fn transparent_script_parses_and_explains_itself() {
    if !require(&["bash"]) {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/transparent.sh");
    script_parses_and_explains_itself(script, &["unshare -n", "--rounds"]);
}

#[test]
fn instructions_script_parses_and_explains_itself() {
    if !require(&["bash"]) {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/instructions.sh");
    script_parses_and_explains_itself(script, &["callgrind", "--bin"]);
}
