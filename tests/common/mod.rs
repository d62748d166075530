//! Test harness: real tlspeek processes, real TLS servers (`openssl s_server`,
//! `gnutls-serv`) and real clients (`curl`, `openssl s_client`, `gnutls-cli` via `socat`),
//! all on 127.0.0.1, all killed when the test ends.
//!
//! A test whose prerequisite (a command) is missing must not pass silently: with `CI=true`
//! it fails; otherwise it prints `SKIP: <why>` and returns (`.ci/run` fails on any SKIP).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub mod netns;
pub mod postgres;
#[allow(unused_imports)]
pub use netns::{NetNs, is_root};

/// Returns true when every command exists. Otherwise fails under CI, or prints SKIP.
pub fn require(cmds: &[&str]) -> bool {
    let missing: Vec<&str> = cmds
        .iter()
        .copied()
        .filter(|c| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {c}"))
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing commands: {} (apt-get install gnutls-bin socat ...)",
        missing.join(", ")
    );
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("prerequisite missing under CI: {why}");
    }
    println!("SKIP: {why}");
    eprintln!("SKIP: {why}");
    // cargo test hides a passing test's output: leave a mark that .ci/run checks.
    let marks = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-skips.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(marks)
    {
        let _ = writeln!(f, "SKIP: {why}");
    }
    false
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a socket of process `pid` listens on TCP `port`. A port picked by `free_port`
/// can be bound by a parallel test before tlspeek binds it; `wait_port` then answers for
/// the other listener, and the test would talk to the wrong process.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    let tables: String = ["tcp", "tcp6"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default())
        .collect();
    let inodes: Vec<String> = tables
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let listening = f.get(1)?.ends_with(&suffix) && *f.get(3)? == "0A";
            let inode = f.get(9)?;
            listening.then(|| format!("socket:[{inode}]"))
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
}

/// Waits until something accepts on 127.0.0.1:port.
pub fn wait_port(port: u16, within: Duration) -> bool {
    wait_port_on([127, 0, 0, 1], port, within)
}

/// Waits until something accepts on ip:port (a loopback address).
pub fn wait_port_on(ip: [u8; 4], port: u16, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(200))
            .is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

pub struct Certs {
    pub dir: PathBuf,
    pub crt: PathBuf,
    pub key: PathBuf,
}

/// A self-signed certificate for login.microsoftonline.com (and *.login..., localhost),
/// made once per test binary.
pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tlspeek-test-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let crt = dir.join("server.crt");
        let key = dir.join("server.key");
        let ok = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .args([
                "-subj",
                "/CN=login.microsoftonline.com",
                "-addext",
                "subjectAltName=DNS:login.microsoftonline.com,DNS:*.login.microsoftonline.com,DNS:localhost",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl req failed");
        Certs { dir, crt, key }
    })
}

fn spawn_server(make: impl FnMut(u16) -> Command) -> (Proc, u16) {
    spawn_server_on([127, 0, 0, 1], make)
}

/// A server listening on `ip` (a loopback address), on a free port.
fn spawn_server_on(ip: [u8; 4], mut make: impl FnMut(u16) -> Command) -> (Proc, u16) {
    for _ in 0..5 {
        let port = free_port();
        let child = make(port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let mut p = Proc(child);
        if wait_port_on(ip, port, Duration::from_secs(10)) {
            return (p, port);
        }
        let _ = p.0.kill();
    }
    panic!("server did not start");
}

/// `openssl s_server -www` accepting TLS 1.0–1.3 (narrow it with `extra`).
pub fn openssl_server(extra: &[&str]) -> (Proc, u16) {
    openssl_server_on([127, 0, 0, 1], extra)
}

/// `openssl_server` on another loopback address (a second "front end" of one name).
pub fn openssl_server_on(ip: [u8; 4], extra: &[&str]) -> (Proc, u16) {
    let c = certs();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let addr = std::net::Ipv4Addr::from(ip);
    spawn_server_on(ip, |port| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_server", "-accept", &format!("{addr}:{port}")])
            .arg("-cert")
            .arg(&c.crt)
            .arg("-key")
            .arg(&c.key)
            .args(["-www", "-quiet", "-cipher", "ALL:@SECLEVEL=0"]);
        if !extra
            .iter()
            .any(|a| a.starts_with("-min_protocol") || a.starts_with("-tls1"))
        {
            cmd.args(["-min_protocol", "TLSv1"]);
        }
        cmd.args(&extra);
        cmd
    })
}

/// `gnutls-serv --http` (3DES and TLS 1.0/1.1 enabled by default here).
pub fn gnutls_server(priority: &str) -> (Proc, u16) {
    let c = certs();
    let priority = priority.to_string();
    spawn_server(|port| {
        let mut cmd = Command::new("gnutls-serv");
        cmd.args(["--http", "--port", &port.to_string()])
            .arg("--x509certfile")
            .arg(&c.crt)
            .arg("--x509keyfile")
            .arg(&c.key)
            .args(["--priority", &priority]);
        cmd
    })
}

/// A running tlspeek with its own config, event file and stderr log.
pub struct Tlspeek {
    pub proc: Proc,
    pub proxy_port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub events_path: PathBuf,
    pub stderr_path: PathBuf,
}

pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_tlspeek")
}

impl Tlspeek {
    /// Starts tlspeek. `proxy_extra` lines go into `[proxy]` (after listen), `extra` after
    /// the other sections (e.g. `[[sources]]`). Loopback is not denied unless `proxy_extra`
    /// sets `deny_destinations`, since the test upstreams live there.
    pub fn start(proxy_extra: &str, extra: &str) -> Tlspeek {
        Tlspeek::start_opts(proxy_extra, extra, &StartOpts::default())
    }

    /// Like `start`, with `launcher` words in front of the tlspeek command line (e.g.
    /// `unshare -m sh -c '...; exec "$0" "$@"'`).
    pub fn start_via(proxy_extra: &str, extra: &str, launcher: &[&str]) -> Tlspeek {
        let opts = StartOpts {
            launcher: launcher.iter().map(|w| w.to_string()).collect(),
            ..StartOpts::default()
        };
        Tlspeek::start_opts(proxy_extra, extra, &opts)
    }

    /// Starts another tlspeek on the same config file, ports and event file (after a crash).
    pub fn restart(&mut self) {
        let cfg_path = self.dir.path().join("tlspeek.toml");
        let child = Command::new(exe())
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "info,tlspeek=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&self.stderr_path)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.proc = Proc(child);
        assert!(
            wait_port(self.proxy_port, Duration::from_secs(10))
                && wait_port(self.admin_port, Duration::from_secs(5)),
            "restart failed: {}",
            self.stderr()
        );
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.proc.0.kill();
        let _ = self.proc.0.wait();
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin_port, path)
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.dir.path().join("inventory.sqlite")
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "metrics: {body}");
        body
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.events_path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Events of connections that got as far as naming a target (leaves out the harness's
    /// own port probes, which connect and close without a request).
    pub fn target_events(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["target_host"].is_string())
            .collect()
    }

    /// Polls the event file until `pred` holds for the events so far (or panics).
    pub fn wait_events(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let ev = self.target_events();
            if pred(&ev) {
                return ev;
            }
            if Instant::now() > end {
                panic!(
                    "timed out waiting for events: {what}\nevents: {ev:#?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (`"HUP"`, `"USR1"`, `"TERM"`, ...) with kill(1); whether it was
    /// delivered (not when the process is already gone).
    pub fn signal(&self, signal: &str) -> bool {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = self.signal("TERM");
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.proc.0.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// The configuration a test instance runs with: its ports, its event file and inventory in
/// its own directory, loopback not denied (the test upstreams live there) — then the
/// test's `proxy_extra` (keys of `[proxy]`) and `extra` (any tables, `[admin]` included)
/// merged over it key by key.
fn harness_table(
    proxy_port: u16,
    admin_port: u16,
    events_path: &Path,
    dir: &Path,
    proxy_extra: &str,
    extra: &str,
) -> toml::Table {
    let base = format!(
        "[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\ndeny_destinations = []\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [events]\npath = \"{}\"\n\
         [inventory]\npath = \"{}\"\n",
        events_path.display(),
        dir.join("inventory.sqlite").display()
    );
    let mut table: toml::Table = base.parse().unwrap();
    let proxy: toml::Table = proxy_extra
        .parse()
        .unwrap_or_else(|e| panic!("proxy_extra: {e}"));
    let extra: toml::Table = extra.parse().unwrap_or_else(|e| panic!("extra: {e}"));
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut wrapped = toml::Table::new();
    wrapped.insert("proxy".into(), toml::Value::Table(proxy));
    merge(&mut table, wrapped);
    merge(&mut table, extra);
    table
}

/// A minimal HTTP/1.0 GET on 127.0.0.1:port; returns (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Sum of the samples of `name` whose labels include all of `labels`; None if no sample.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in metrics.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let got: HashMap<&str, &str> = label_text
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.trim_start_matches(','), v.trim_end_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| got.get(k) == Some(v)) {
            *total.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

/// curl through the proxy to `https://<host>/` with `--connect-to host:443:127.0.0.1:PORT`
/// (so curl sends `CONNECT 127.0.0.1:PORT` and the SNI `host`). Returns (http_code, stderr).
pub fn curl_via(
    proxy_port: u16,
    upstream_port: u16,
    host: &str,
    args: &[&str],
) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sSk",
            "-m",
            "10",
            "-x",
            &format!("http://127.0.0.1:{proxy_port}"),
        ])
        .args([
            "--connect-to",
            &format!("{host}:443:127.0.0.1:{upstream_port}"),
        ])
        .args(args)
        .arg(format!("https://{host}/"))
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub const LOGIN: &str = "login.microsoftonline.com";
pub const OLD: &[&str] = &["--ciphers", "DEFAULT:@SECLEVEL=0"];
/// curl flags for a TLS 1.0-only client (OpenSSL 3 needs security level 0 for it).
pub const TLS10_ONLY: &[&str] = &[
    "--tlsv1.0",
    "--tls-max",
    "1.0",
    "--ciphers",
    "DEFAULT:@SECLEVEL=0",
];

/// Opens a raw CONNECT tunnel; returns the stream and the status line.
pub fn connect_tunnel(proxy_port: u16, target: &str) -> (TcpStream, String) {
    connect_tunnel_from("127.0.0.1", proxy_port, target)
}

/// A TCP connection to 127.0.0.1:`port` from another loopback source address (e.g.
/// "127.0.0.7"), reads timing out after `read_timeout`.
pub fn connect_from(source: &str, port: u16, read_timeout: Duration) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: std::net::IpAddr = source.parse().unwrap();
    sock.bind(&SocketAddr::new(src, 0).into()).unwrap();
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// Like `connect_tunnel`, from another loopback source address (e.g. "127.0.0.7").
pub fn connect_tunnel_from(source: &str, proxy_port: u16, target: &str) -> (TcpStream, String) {
    let mut s = connect_from(source, proxy_port, Duration::from_secs(15));
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let head = read_head(&mut s);
    let status = head.lines().next().unwrap_or_default().to_string();
    (s, status)
}

/// Reads a response head byte by byte (so nothing after it is consumed).
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_string()
}

/// Sends raw bytes to the proxy and returns the whole response (until close).
pub fn raw_request(proxy_port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A credentials line from `tlspeek passwd`.
pub fn passwd(user: &str, password: &str) -> String {
    let mut child = Command::new(exe())
        .args(["passwd", user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// A `Basic` credentials header value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A CONNECT from `source` with optional Basic credentials; returns the response head.
pub fn connect_with(proxy: u16, source: &str, target: &str, auth: Option<(&str, &str)>) -> String {
    let mut s = connect_from(source, proxy, Duration::from_secs(10));
    let header = auth
        .map(|(u, p)| format!("Proxy-Authorization: {}\r\n", basic(u, p)))
        .unwrap_or_default();
    write!(
        s,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{header}\r\n"
    )
    .unwrap();
    read_head(&mut s)
}

/// Writes a secret file as an operator would (mode 0600): tlspeek refuses secret files
/// that others can read.
pub fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A test CA and a leaf for `cn` signed by it (openssl CLI). Returns (ca.crt, leaf.crt, leaf.key).
pub fn ca_and_leaf(dir: &Path, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        "upca.key",
        "-out",
        "upca.crt",
        "-subj",
        "/CN=Test Upstream CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        &format!("/CN={cn}"),
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        format!("subjectAltName=DNS:{cn},DNS:*.{cn}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "upca.crt",
        "-CAkey",
        "upca.key",
        "-CAcreateserial",
        "-out",
        "leaf.crt",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    (
        dir.join("upca.crt"),
        dir.join("leaf.crt"),
        dir.join("leaf.key"),
    )
}

/// `openssl s_server -www` with the given certificate.
pub fn openssl_server_with(crt: &Path, key: &Path, extra: &[&str]) -> (Proc, u16) {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let (crt, key) = (crt.to_path_buf(), key.to_path_buf());
    spawn_server(move |port| {
        let mut cmd = Command::new("openssl");
        cmd.args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&crt)
            .arg("-key")
            .arg(&key)
            .args(["-www", "-quiet", "-cipher", "ALL:@SECLEVEL=0"])
            .args(&extra);
        cmd
    })
}

/// gnutls-cli through socat's CONNECT address to `upstream_port` via the proxy; returns
/// its combined output.
pub fn gnutls_via_proxy(proxy_port: u16, upstream_port: u16, priority: &str, sni: &str) -> String {
    gnutls_via_proxy_from("127.0.0.1", proxy_port, upstream_port, priority, sni)
}

// ---------------------------------------------------------------------------------------
// Reliability harness (tests/faults.rs, abuse.rs, load.rs): start options, /proc sampling,
// an echo upstream, metric polling.

/// How `Tlspeek::start_opts` starts tlspeek, beyond `start`'s config lines.
#[derive(Clone, Debug, Default)]
pub struct StartOpts {
    /// `events.path` (default: `events.jsonl` in the instance's temp dir).
    pub events_path: Option<String>,
    /// Keep the embedded default `deny_destinations` (loopback denied) instead of
    /// clearing it.
    pub default_deny: bool,
    /// Start under `ulimit -n N` (`sh -c 'ulimit -n N; exec tlspeek ...'`: same pid); when
    /// N is above the hard limit and raising it is not permitted, the hard limit.
    pub nofile: Option<u64>,
    /// `RUST_LOG` (default `info,tlspeek=debug`).
    pub rust_log: Option<String>,
    /// Words in front of the tlspeek command line (not with `nofile`).
    pub launcher: Vec<String>,
}

impl Tlspeek {
    /// Like `start`, with `StartOpts`.
    pub fn start_opts(proxy_extra: &str, extra: &str, opts: &StartOpts) -> Tlspeek {
        for _ in 0..5 {
            if let Some(t) = Tlspeek::try_start_opts(proxy_extra, extra, opts) {
                return t;
            }
        }
        panic!("tlspeek did not start");
    }

    fn try_start_opts(proxy_extra: &str, extra: &str, opts: &StartOpts) -> Option<Tlspeek> {
        let dir = tempfile::tempdir().unwrap();
        let (proxy_port, admin_port) = (free_port(), free_port());
        let events_path = match &opts.events_path {
            Some(p) => PathBuf::from(p),
            None => dir.path().join("events.jsonl"),
        };
        let stderr_path = dir.path().join("tlspeek.err");
        let mut cfg = harness_table(
            proxy_port,
            admin_port,
            &events_path,
            dir.path(),
            proxy_extra,
            extra,
        );
        if opts.default_deny && !proxy_extra.contains("deny_destinations") {
            if let Some(toml::Value::Table(proxy)) = cfg.get_mut("proxy") {
                proxy.remove("deny_destinations");
            }
        }
        let cfg = toml::to_string(&cfg).unwrap();
        let cfg_path = dir.path().join("tlspeek.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut cmd = match opts.nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    // Lowering always works; raising past the hard limit needs a
                    // privilege a sandbox may lack: then take the hard limit.
                    .arg(format!(
                        "ulimit -n {n} 2>/dev/null || ulimit -Sn {n} 2>/dev/null || ulimit -Sn \"$(ulimit -Hn)\"; exec \"$0\" run --config \"$1\""
                    ))
                    .arg(exe())
                    .arg(&cfg_path);
                c
            }
            None => {
                let mut c = match opts.launcher.split_first() {
                    Some((first, rest)) => {
                        let mut c = Command::new(first);
                        c.args(rest).arg(exe());
                        c
                    }
                    None => Command::new(exe()),
                };
                c.arg("run").arg("--config").arg(&cfg_path);
                c
            }
        };
        assert!(
            opts.nofile.is_none() || opts.launcher.is_empty(),
            "nofile and launcher together"
        );
        let child = cmd
            .env(
                "RUST_LOG",
                opts.rust_log.as_deref().unwrap_or("info,tlspeek=debug"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut proc = Proc(child);
        let pid = proc.0.id();
        let up = wait_port(proxy_port, Duration::from_secs(10))
            && wait_port(admin_port, Duration::from_secs(5))
            && listens_on(pid, proxy_port)
            && listens_on(pid, admin_port);
        if !up {
            let _ = proc.0.kill();
            eprintln!(
                "tlspeek failed to start: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
            return None;
        }
        Some(Tlspeek {
            proc,
            proxy_port,
            admin_port,
            dir,
            events_path,
            stderr_path,
        })
    }

    /// Open file descriptors of the tlspeek process.
    pub fn fds(&self) -> usize {
        proc_fds(self.pid())
    }

    /// Open descriptors other than pipes: splice(2) keeps a bounded pool of pipes (at most
    /// 64 pairs) for reuse, which is not a leak.
    pub fn non_pipe_fds(&self) -> usize {
        proc_fds(self.pid()) - proc_pipe_fds(self.pid())
    }

    /// Resident memory of the tlspeek process, KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_rss_kib(self.pid())
    }

    /// One sample of `name` (summed over series matching `labels`), 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// Polls `/metrics` until `pred` holds for the sample (or panics after `within`).
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        within: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let end = Instant::now() + within;
        loop {
            let v = self.metric(name, labels);
            if pred(v) {
                return v;
            }
            if Instant::now() > end {
                panic!(
                    "{name}{labels:?} = {v}: condition not met within {within:?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `tlspeek_connections_total{mode="connect",outcome}`.
    pub fn outcome_count(&self, outcome: &str) -> f64 {
        self.metric(
            "tlspeek_connections_total",
            &[("mode", "connect"), ("outcome", outcome)],
        )
    }
}

/// The soft RLIMIT_NOFILE of a process.
pub fn proc_nofile(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(0)
}

/// Open descriptors that are pipes (splice's pooled pipes).
pub fn proc_pipe_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .map(|l| l.to_string_lossy().starts_with("pipe:"))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

pub fn proc_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

pub fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of a process so far, in seconds.
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces, inside parentheses).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    ticks / hz
}

/// Raises this (test) process's soft RLIMIT_NOFILE to at least `n` when it is lower
/// (with `prlimit`, up to the hard limit; root may raise the hard limit too).
pub fn ensure_nofile(n: u64) {
    let soft = proc_nofile(std::process::id());
    if soft >= n {
        return;
    }
    // The soft limit alone first (no privilege needed below the hard limit).
    let ok = [format!("--nofile={n}:"), format!("--nofile={n}:{n}")]
        .iter()
        .any(|arg| {
            Command::new("prlimit")
                .args(["--pid", &std::process::id().to_string(), arg])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
    assert!(ok, "cannot raise RLIMIT_NOFILE to {n} (soft limit {soft})");
}

/// A TCP echo upstream on 127.0.0.1 (a thread per connection): echoes until EOF, then
/// half-closes.
pub fn spawn_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = vec![0u8; 64 * 1024];
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
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// Deterministic incompressible bytes (xorshift64).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
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

/// A real captured ClientHello (curl, TLS 1.2 max), as the first flight of a tunnel.
pub const CURL_TLS12_HELLO: &[u8] = include_bytes!("../fixtures/curl_tls12.bin");

// ---- Helpers for the dashboards tests (a real Prometheus, sources other than 127.0.0.1) ----

/// Like `gnutls_via_proxy`, with socat's connection to the proxy bound to `source` (e.g.
/// "127.0.0.15"), so the proxy sees that source.
/// Like `gnutls_via_proxy`, with socat's connection to the proxy bound to `source`.
pub fn gnutls_via_proxy_from(
    source: &str,
    proxy_port: u16,
    upstream_port: u16,
    priority: &str,
    sni: &str,
) -> String {
    let fwd = free_port();
    let _socat = Proc(
        Command::new("socat")
            .arg(format!("TCP-LISTEN:{fwd},bind=127.0.0.1,reuseaddr"))
            .arg(format!(
                "PROXY:127.0.0.1:127.0.0.1:{upstream_port},proxyport={proxy_port},bind={source}"
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let end = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .contains(&format!(":{fwd:04X} 00000000:0000 0A"))
    {
        assert!(Instant::now() < end, "socat did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut child = Command::new("gnutls-cli")
        .args([
            "--insecure",
            "--port",
            &fwd.to_string(),
            "--sni-hostname",
            sni,
            "--priority",
            priority,
            "127.0.0.1",
        ])
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
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A TCP server on 127.0.0.1 that never sends a byte (an upstream that does not answer the
/// ClientHello): it reads until the peer closes, then closes too.
pub fn silent_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            });
        }
    });
    port
}

/// One sample of a Prometheus query result: its labels and value.
#[derive(Debug, Clone)]
pub struct PromSample {
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// A real Prometheus (the Debian `prometheus` binary) on 127.0.0.1 with its own storage in a
/// temporary directory, scraping `targets` (job "tlspeek") every second and evaluating
/// `rule_files` every second. Killed on drop.
pub struct Prometheus {
    pub proc: Proc,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[u16], rule_files: &[&Path]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let rules: String = rule_files
            .iter()
            .map(|r| format!("  - \"{}\"\n", r.display()))
            .collect();
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: tlspeek\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let cfg_path = dir.path().join("prometheus.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", cfg_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("prometheus.err")).unwrap())
                .spawn()
                .expect("spawn prometheus");
            let mut proc = Proc(child);
            if wait_port(port, Duration::from_secs(20)) {
                let p = Prometheus { proc, port, dir };
                let end = Instant::now() + Duration::from_secs(20);
                while p.get("/-/ready").0 != 200 {
                    assert!(Instant::now() < end, "prometheus not ready: {}", p.stderr());
                    std::thread::sleep(Duration::from_millis(100));
                }
                return p;
            }
            let _ = proc.0.kill();
        }
        panic!("prometheus did not start");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.err")).unwrap_or_default()
    }

    /// GET on the web API; returns the status and the body parsed as JSON (Null if not JSON).
    pub fn get(&self, path_and_query: &str) -> (u16, Value) {
        let (status, body) = http_get(self.port, path_and_query);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// An instant query at `time` (Unix seconds). Err carries Prometheus's error text.
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<PromSample>, String> {
        let (status, v) = self.get(&format!(
            "/api/v1/query?query={}&time={time:.3}",
            url_encode(expr)
        ));
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {}", v["error"]));
        }
        let data = &v["data"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| PromSample {
                    labels: s["metric"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect(),
                    value: s["value"][1].as_str().unwrap().parse().unwrap(),
                })
                .collect()),
            Some("scalar") => Ok(vec![PromSample {
                labels: HashMap::new(),
                value: data["result"][1].as_str().unwrap().parse().unwrap(),
            }]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }

    /// A range query; returns the number of series.
    pub fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<usize, String> {
        let (status, v) = self.get(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            url_encode(expr)
        ));
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {}", v["error"]));
        }
        Ok(v["data"]["result"].as_array().map(|a| a.len()).unwrap_or(0))
    }

    /// The values of `label` on series matching `selector` (Grafana's `label_values`).
    pub fn label_values(&self, label: &str, selector: &str) -> Result<Vec<String>, String> {
        let (status, v) = self.get(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            url_encode(selector)
        ));
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {}", v["error"]));
        }
        Ok(v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect())
    }
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `openssl s_client` with `flags` through the proxy to 127.0.0.1:`up` (SNI
/// login.microsoftonline.com), sending one `GET / HTTP/1.0`; its stdout and stderr, or
/// `[timed out] stderr` after 15 s.
pub fn s_client_get(proxy_port: u16, up: u16, flags: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-proxy", &format!("127.0.0.1:{proxy_port}")])
        .args(["-connect", &format!("127.0.0.1:{up}"), "-servername", LOGIN])
        .arg("-quiet")
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    wait_with_timeout(child, Duration::from_secs(15))
}

/// A child's stdout and stderr once it exits, or `[timed out] stderr` (killed) after `limit`.
pub fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> String {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            return format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!(
        "[timed out] {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The body of a `server_name` extension naming `name`.
pub fn sni_body(name: &str) -> Vec<u8> {
    let n = name.as_bytes();
    let mut d = ((n.len() + 3) as u16).to_be_bytes().to_vec();
    d.push(0);
    d.extend((n.len() as u16).to_be_bytes());
    d.extend(n);
    d
}

/// One TLS record holding a ClientHello: `version`, `ciphers` and the extensions
/// `(type, body)` in order.
pub fn client_hello_record(version: u16, ciphers: &[u16], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext = Vec::new();
    for (t, d) in exts {
        ext.extend(t.to_be_bytes());
        ext.extend((d.len() as u16).to_be_bytes());
        ext.extend(d);
    }
    let mut body = version.to_be_bytes().to_vec();
    body.extend([7u8; 32]);
    body.push(0);
    body.extend(((ciphers.len() * 2) as u16).to_be_bytes());
    for c in ciphers {
        body.extend(c.to_be_bytes());
    }
    body.extend([1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![1];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

/// Runs `tlspeek ARGS`: (exit code, stdout, stderr).
pub fn tlspeek_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

// ---------------------------------------------------------------------------------------
// tcpdump on loopback

pub struct Tcpdump {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Tcpdump {
    /// Starts tcpdump and returns once it is capturing.
    pub fn start(path: &Path, filter: &str) -> Tcpdump {
        Tcpdump::start_with(Command::new("tcpdump"), path, filter)
    }

    /// Starts `tcpdump` (e.g. `ip netns exec NS tcpdump`) on `lo`; returns once it is
    /// capturing.
    pub fn start_with(mut tcpdump: Command, path: &Path, filter: &str) -> Tcpdump {
        let mut child = tcpdump
            .args([
                "-i",
                "lo",
                "-n",
                "--immediate-mode",
                "-U",
                "-Z",
                "root",
                "-w",
            ])
            .arg(path)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.contains("listening on") => break,
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("tcpdump ended: {e}"),
            }
            assert!(Instant::now() < end, "tcpdump did not start capturing");
        }
        Tcpdump { child, lines }
    }

    /// SIGINT, then waits for tcpdump to write its last packets and exit.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < end, "tcpdump did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        self.lines.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's own CA, made with `tlspeek ca init`.
pub fn proxy_ca(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let out = dir.join("ca");
    let r = Command::new(exe())
        .args(["ca", "init", "--out", out.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    (out.join("ca.crt"), out.join("ca.key"))
}

pub fn upgrade_config(
    ca: &(PathBuf, PathBuf),
    upstream_ca: &Path,
    rules: &str,
    extra_upgrade: &str,
) -> String {
    format!(
        "[upgrade]\nca_cert = \"{}\"\nca_key = \"{}\"\nupstream_extra_ca = \"{}\"\n{extra_upgrade}\n{rules}",
        ca.0.display(),
        ca.1.display(),
        upstream_ca.display()
    )
}

/// curl from `source` through the proxy to a plain `http://` `url`, sending `user_agent`;
/// returns the HTTP status curl got ("000" when none).
pub fn curl_http_from(proxy_port: u16, source: &str, user_agent: &str, url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "--interface", source, "-x"])
        .arg(format!("http://127.0.0.1:{proxy_port}"))
        .args([
            "-A",
            user_agent,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A plain-HTTP origin on 127.0.0.1 serving `dir` (`python3 -m http.server`).
pub fn http_origin(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
            "-d",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    assert!(
        wait_port(port, Duration::from_secs(10)),
        "origin did not start"
    );
    (p, port)
}
