//! The command line: `tlspeek` with no arguments, `check-config`, bad configs refused with
//! the key named, flags overriding the file, `--version`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("tlspeek "), "{out}");
    let (code, out, _) = run(&["help"]);
    assert_eq!(code, 0);
    assert!(out.contains("check-config") && out.contains("run"), "{out}");
}

#[test]
fn check_config_accepts_the_shipped_default_and_prints_the_effective_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/tlspeek.toml");
    let (code, out, err) = run(&["check-config", shipped]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:3128\""), "{out}");
    assert!(out.contains("login.microsoftonline.com"), "{out}");
}

#[test]
fn check_config_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[proxy]\nlisten = \"127.0.0.1:1\"\nallowed_sources = [\"10.0.0.300/8\"]\nallowed_ports = [0]\n\
         idle_timeout = \"forever\"\nnonsense = true\n\
         [[sources]]\ncidr = \"10.0.0.0/8\"\nname = \"a\"\n[[sources]]\ncidr = \"10.1.0.0/16\"\nname = \"a\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", &path_str(&bad)]);
    assert_ne!(code, 0);
    assert!(out.is_empty(), "{out}");
    for key in [
        "proxy.allowed_sources[0]",
        "proxy.allowed_ports[0]: port 0",
        "proxy.idle_timeout",
        "proxy.nonsense: unknown key",
        "sources[1].name: duplicate source name",
    ] {
        assert!(err.contains(key), "missing {key:?} in:\n{err}");
    }
    // `run` refuses the same file and starts nothing.
    let (code, _, err) = run(&["run", "--config", &path_str(&bad)]);
    assert_ne!(code, 0);
    assert!(err.contains("proxy.allowed_sources[0]"), "{err}");
    let (code, _, err) = run(&["check-config", "/nonexistent/tlspeek.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[proxy]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    let (p, a) = (free_port(), free_port());
    let events = dir.path().join("ev.jsonl");
    let child = Command::new(exe())
        .current_dir(dir.path())
        .args(["run", "--config", &path_str(&cfg)])
        .args([
            "--listen",
            &format!("127.0.0.1:{p}"),
            "--admin-listen",
            &format!("127.0.0.1:{a}"),
        ])
        .args(["--event-log", &path_str(&events)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Proc(child);
    assert!(wait_port(p, Duration::from_secs(10)) && wait_port(a, Duration::from_secs(5)));
    assert_eq!(http_get(a, "/healthz"), (200, "ok\n".to_string()));
    // The port probe above is a connection: its event line lands in the --event-log file.
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&events)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < end,
            "no event in the --event-log file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tlspeek` alone: the embedded default config, proxy on 127.0.0.1:3128, admin on 9748,
/// event lines on stdout, logs on stderr.
#[test]
fn no_arguments_runs_the_embedded_default() {
    let busy = |port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    assert!(
        !busy(3128) && !busy(9748),
        "ports 3128/9748 are taken on this machine: stop what holds them to run this test"
    );
    // The default inventory path is relative: run where it may be written.
    let cwd = tempfile::tempdir().unwrap();
    let child = Command::new(exe())
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Proc(child);
    assert!(
        wait_port(3128, Duration::from_secs(10)),
        "proxy did not listen on 3128"
    );
    assert!(
        wait_port(9748, Duration::from_secs(5)),
        "admin did not listen on 9748"
    );
    let (status, body) = http_get(9748, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("tlspeek_build_info"), "{body}");
    // Loopback destinations are denied by default.
    let (_, status) = connect_tunnel(3128, "127.0.0.1:443");
    assert!(status.contains(" 403 "), "{status}");
    let _ = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status();
    let out = guard_wait(&mut guard);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout
        .lines()
        .find(|l| l.contains("refused_destination"))
        .unwrap_or_default();
    let line: Value = serde_json::from_str(first).unwrap_or(Value::Null);
    assert_eq!(line["outcome"], "refused_destination", "stdout: {stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tlspeek listening"));
}

fn guard_wait(guard: &mut Proc) -> std::process::Output {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if let Ok(Some(_)) = guard.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    if let Some(mut o) = guard.0.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    if let Some(mut e) = guard.0.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    std::process::Output {
        status: guard.0.wait().unwrap(),
        stdout,
        stderr,
    }
}

/// `run` on `cfg`: its exit code and stderr. It must refuse before binding, so it ends on
/// its own; a run that is still going after 10 s is killed and reported as started.
fn run_refuses(cfg: &std::path::Path) -> (Option<i32>, String) {
    let mut child = Command::new(exe())
        .args(["run", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, "still running: run accepted the config".into())
}

#[test]
fn check_config_and_run_give_the_same_verdict_on_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[proxy]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n[inventory]\npath = \"\"\n",
        free_port(),
        free_port()
    );
    let short = dir.path().join("short-token");
    write_secret(&short, "abcde\n");
    let repetitive = dir.path().join("aaaa-token");
    write_secret(&repetitive, "aaaaaaaaaaaaaaaaaaaa\n");
    let readable = dir.path().join("readable-token");
    std::fs::write(&readable, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let creds_readable = dir.path().join("creds");
    std::fs::write(&creds_readable, passwd("alice", "pw-for-the-test")).unwrap();
    std::fs::set_permissions(&creds_readable, std::fs::Permissions::from_mode(0o604)).unwrap();
    let cases = [
        (
            format!("[admin]\ntoken_file = \"{}\"\n", short.display()),
            "at least 16 characters",
        ),
        (
            format!("[admin]\ntoken_file = \"{}\"\n", repetitive.display()),
            "distinct characters",
        ),
        (
            format!("[admin]\ntoken_file = \"{}\"\n", readable.display()),
            "readable by others (mode 0644)",
        ),
        (
            format!(
                "[auth]\ncredentials_file = \"{}\"\n",
                dir.path().join("missing").display()
            ),
            "auth.credentials_file",
        ),
        (
            format!(
                "[auth]\ncredentials_file = \"{}\"\n",
                creds_readable.display()
            ),
            "chmod 640",
        ),
    ];
    for (i, (extra, why)) in cases.iter().enumerate() {
        // `[admin]` may appear twice in text: merge by writing the admin keys into one table.
        let text = if extra.starts_with("[admin]") {
            base.replace("[admin]\n", extra)
        } else {
            format!("{base}{extra}")
        };
        let cfg = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let (code, out, err) = run(&["check-config", &path_str(&cfg)]);
        assert_ne!(code, 0, "check-config accepted case {i}: {out}");
        assert!(err.contains(why), "check-config, case {i}: {err}");
        let (code, err) = run_refuses(&cfg);
        assert!(code.is_some_and(|c| c != 0), "run accepted case {i}: {err}");
        assert!(err.contains(why), "run, case {i}: {err}");
        // An image build checks keys and values only.
        let (code, _, err) = run(&["check-config", "--skip-files", &path_str(&cfg)]);
        assert_eq!(code, 0, "--skip-files, case {i}: {err}");
    }
}

#[test]
fn check_config_redacts_the_parent_proxy_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[upstream]\nproxy = \"http://egress-user:Sup3r-S3cret-pw@127.0.0.1:3129\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", &path_str(&cfg)]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("Sup3r-S3cret-pw"), "{out}");
    assert!(
        out.contains("proxy = \"http://egress-user:REDACTED@127.0.0.1:3129\""),
        "{out}"
    );
}

/// `RUST_LOG` sets the stderr level whether it names a level alone (unset or empty means
/// info; a static filter) or per-target directives (an `EnvFilter`): a connection that
/// closes without a hello logs at debug, the start at info, and before any connection.
#[test]
fn rust_log_sets_the_level_plain_or_per_target() {
    for (spec, info, debug) in [
        ("", true, false),
        ("info", true, false),
        ("debug", true, true),
        ("warn", false, false),
        ("warn,tlspeek=debug", true, true),
        ("info,tlspeek::app=warn", false, false),
        ("tlspeek=loud", true, false),
    ] {
        let opts = StartOpts {
            rust_log: Some(spec.into()),
            ..StartOpts::default()
        };
        let upstream = silent_server();
        let t = Tlspeek::start_opts(&format!("allowed_ports = [{upstream}]\n"), "", &opts);
        let (s, status) = connect_tunnel(t.proxy_port, &format!("127.0.0.1:{upstream}"));
        assert!(status.contains(" 200 "), "RUST_LOG={spec:?}: {status}");
        drop(s);
        // The connection's event line is written after its debug line would be.
        t.wait_events("the tunnel's event", |ev| !ev.is_empty());
        let err = t.stderr();
        assert_eq!(
            err.contains("tlspeek listening"),
            info,
            "RUST_LOG={spec:?}: {err}"
        );
        assert_eq!(
            err.contains("no ClientHello from the client"),
            debug,
            "RUST_LOG={spec:?}: {err}"
        );
        // The start is logged before the first connection can be accepted.
        if let (Some(start), Some(conn)) = (
            err.find("tlspeek listening"),
            err.find("no ClientHello from the client"),
        ) {
            assert!(start < conn, "RUST_LOG={spec:?}: {err}");
        }
    }
}

/// The harness's check that the port it waited on is tlspeek's: a listener of this process
/// is this process's, and not another's.
#[test]
fn listens_on_tells_whose_listener_it_is() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let other = Proc(Command::new("sleep").arg("30").spawn().unwrap());
    assert!(listens_on(std::process::id(), port));
    assert!(!listens_on(other.0.id(), port));
    drop(l);
    assert!(!listens_on(std::process::id(), port));
}
