//! `tlspeek-loadgen`: drives a forward proxy (tlspeek, Squid, tinyproxy) or goes direct,
//! and prints one JSON line of results on stdout (a human summary on stderr).
//!
//! - `serve`: the upstreams — a TLS 1.3 HTTPS server (`/` small page, `/bulk/N` N bytes)
//!   and a raw TCP source/sink — on 127.0.0.1, with a self-signed certificate.
//! - `handshake`: N connections at concurrency C: CONNECT → 200 → TLS 1.3 handshake
//!   through the tunnel (no resumption) → one small GET → close. Connections/s and latency
//!   percentiles; with `--pid`, the proxy's CPU time per connection.
//! - `throughput`: bulk bytes through S tunnels at once, raw TCP down or up, or a TLS
//!   download, in MB/s.
//! - `idle`: K tunnels (each with a finished TLS handshake) held idle for S seconds; the
//!   proxy's RSS per tunnel from `/proc/PID/status`; then one GET on every tunnel, so a
//!   tunnel the proxy dropped counts as an error.
//! - `pcap`: writes a large synthetic capture (mostly bulk data, hellos from the test
//!   fixtures) for the `tlspeek analyze` speed benchmark; no network at all.
//!
//! Every run is bounded in count and time and talks to the addresses it is given only
//! (the benchmark scripts give it 127.0.0.1).

mod client;
pub mod pcapgen;
mod proc;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;

use client::Route;

#[derive(Parser)]
#[command(name = "tlspeek-loadgen", version, about)]
pub struct Cli {
    /// Tokio worker threads (default: one per core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the upstreams: TLS server and raw TCP source/sink.
    Serve(serve::ServeArgs),
    /// Connection rate and latency: CONNECT + TLS handshake + small GET per connection.
    Handshake(HandshakeArgs),
    /// Bulk transfer rate through tunnels.
    Throughput(ThroughputArgs),
    /// Hold idle tunnels and report the proxy's RSS per tunnel.
    Idle(IdleArgs),
    /// Write a synthetic capture of mostly bulk data (for `tlspeek analyze` benchmarks).
    Pcap(PcapArgs),
}

#[derive(Args)]
pub struct PcapArgs {
    /// The pcap file to write.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Approximate size in MB (4 connections of ~250 kB bulk each per MB).
    #[arg(long, default_value_t = 1000)]
    mb: u64,
    /// Directory of the hello fixtures (`curl_tls10.bin`, `server_openssl_tls12.bin`, ...).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: std::path::PathBuf,
}

/// The hellos of the synthetic capture: clients cycle through these ...
pub const PCAP_CLIENT_HELLOS: &[&str] = &[
    "curl_tls10",
    "curl_tls12",
    "curl_tls13",
    "gnutls_3des",
    "chromium",
];
/// ... and servers through these.
pub const PCAP_SERVER_HELLOS: &[&str] = &[
    "server_openssl_tls10",
    "server_openssl_tls12",
    "server_openssl_tls13",
    "server_gnutls_3des",
];

fn write_pcap(a: PcapArgs) -> Result<()> {
    let read = |names: &[&str]| -> Result<Vec<Vec<u8>>> {
        names
            .iter()
            .map(|n| {
                let p = a.fixtures.join(format!("{n}.bin"));
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
            })
            .collect()
    };
    let hellos = read(PCAP_CLIENT_HELLOS)?;
    let servers = read(PCAP_SERVER_HELLOS)?;
    let h: Vec<&[u8]> = hellos.iter().map(Vec::as_slice).collect();
    let s: Vec<&[u8]> = servers.iter().map(Vec::as_slice).collect();
    let file =
        std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let w = std::io::BufWriter::with_capacity(1 << 20, file);
    let (w, made) = pcapgen::synthetic(w, &h, &s, a.mb * 4, 64, 250_000)
        .with_context(|| format!("writing {}", a.out.display()))?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "{{\"mode\":\"pcap\",\"path\":{:?},\"connections\":{},\"packets\":{},\"bytes\":{}}}",
        a.out.display().to_string(),
        made.connections,
        made.packets,
        made.bytes
    );
    Ok(())
}

#[derive(Args, Clone)]
pub struct Target {
    /// The proxy (host:port); omit with --direct.
    #[arg(long, required_unless_present = "direct")]
    proxy: Option<SocketAddr>,
    /// Connect straight to the target, without a proxy.
    #[arg(long, conflicts_with = "proxy")]
    direct: bool,
    /// The upstream (host:port) the tunnel goes to.
    #[arg(long)]
    target: SocketAddr,
    /// The TLS server name to send (SNI).
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Give up on any one step (connect, CONNECT answer, handshake, response) after this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    step_timeout: Duration,
}

impl Target {
    fn route(&self) -> Route {
        Route {
            proxy: if self.direct { None } else { self.proxy },
            target: self.target,
            sni: self.sni.clone(),
            step_timeout: self.step_timeout,
        }
    }
}

#[derive(Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    to: Target,
    /// Connections in all.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    /// Connections at once.
    #[arg(short = 'c', long, default_value_t = 32)]
    concurrency: usize,
    /// Proxy process(es) whose CPU time (/proc/PID/stat) is read around the run.
    #[arg(long)]
    pid: Vec<u32>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Direction {
    /// Raw TCP, upstream → client.
    Down,
    /// Raw TCP, client → upstream.
    Up,
    /// HTTPS download (`GET /bulk/N`) through the tunnel.
    TlsDown,
}

#[derive(Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    to: Target,
    #[arg(long, value_enum, default_value = "down")]
    dir: Direction,
    /// Bytes per stream.
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
    /// Streams (tunnels) at once.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Read/write buffer of the client.
    #[arg(long, default_value_t = 256 << 10)]
    buf: usize,
    /// Proxy process(es) whose CPU time (/proc/PID/stat) is read around the transfer.
    #[arg(long)]
    pid: Vec<u32>,
}

#[derive(Args)]
pub struct IdleArgs {
    #[command(flatten)]
    to: Target,
    /// Tunnels to hold.
    #[arg(short = 'k', long, default_value_t = 1000)]
    tunnels: usize,
    /// How long to hold them.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Tunnels being opened at once.
    #[arg(long, default_value_t = 32)]
    open_concurrency: usize,
    /// Proxy process(es) whose RSS (/proc/PID/status VmRSS) is read.
    #[arg(long)]
    pid: Vec<u32>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the load generator with command-line `args` (the first is the program name), as
/// the binary does; the main crate's smoke test calls it in-process.
pub fn run_with_args<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Cli::try_parse_from(args)?)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().context("tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve::run(a).await,
            Cmd::Handshake(a) => handshake(a).await,
            Cmd::Throughput(a) => throughput(a).await,
            Cmd::Idle(a) => idle(a).await,
            Cmd::Pcap(a) => write_pcap(a),
        }
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

async fn handshake(a: HandshakeArgs) -> Result<()> {
    let route = Arc::new(a.to.route());
    let tls = client::tls_connector()?;
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = proc::cpu_us(&a.pid)?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency.max(1) {
        let (route, tls, next) = (route.clone(), tls.clone(), next.clone());
        let n = a.connections;
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let mut errors = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let t0 = Instant::now();
                match client::one_request(&route, &tls).await {
                    Ok(()) => {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let _ = hist.record(us.max(1));
                    }
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = new_histogram();
    let mut errors = Vec::new();
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(h).ok();
        errors.extend(e);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = proc::cpu_us(&a.pid)?;
    let ok = hist.len();
    let cpu_per_conn = match (cpu_before, cpu_after) {
        (Some(b), Some(e)) if a.connections > 0 => {
            format!("{:.1}", (e - b) as f64 / a.connections as f64)
        }
        _ => "null".into(),
    };
    eprintln!(
        "handshake via {}: {ok} ok, {} errors in {elapsed:.2}s: {:.0} conn/s, p50 {} µs, p90 {} µs, p99 {} µs, proxy CPU/conn {cpu_per_conn} µs",
        route.describe(),
        errors.len(),
        ok as f64 / elapsed,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
    );
    for e in errors.iter().take(5) {
        eprintln!("  error: {e}");
    }
    println!(
        "{{\"mode\":\"handshake\",\"ok\":{ok},\"errors\":{},\"concurrency\":{},\"elapsed_s\":{elapsed:.4},\"conn_per_s\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"proxy_cpu_us_per_conn\":{cpu_per_conn}}}",
        errors.len(),
        a.concurrency,
        ok as f64 / elapsed,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
    );
    if !errors.is_empty() {
        bail!("{} of {} connections failed", errors.len(), a.connections);
    }
    Ok(())
}

async fn throughput(a: ThroughputArgs) -> Result<()> {
    let route = Arc::new(a.to.route());
    let tls = client::tls_connector()?;
    let mut tasks = Vec::new();
    let cpu_before = proc::cpu_us(&a.pid)?;
    let start = Instant::now();
    for _ in 0..a.streams.max(1) {
        let (route, tls) = (route.clone(), tls.clone());
        let (dir, bytes, buf) = (a.dir, a.bytes, a.buf);
        tasks.push(tokio::spawn(async move {
            match dir {
                Direction::Down => client::raw_down(&route, bytes, buf).await,
                Direction::Up => client::raw_up(&route, bytes, buf).await,
                Direction::TlsDown => client::tls_down(&route, &tls, bytes, buf).await,
            }
        }));
    }
    let mut moved = 0u64;
    let mut transfer_s = 0f64;
    for t in tasks {
        let (n, took) = t.await??;
        moved += n;
        transfer_s = transfer_s.max(took.as_secs_f64());
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu_after = proc::cpu_us(&a.pid)?;
    let mbps = moved as f64 / 1e6 / transfer_s.max(1e-9);
    // Proxy CPU seconds per GB moved (the whole run, connection setup included).
    let cpu_per_gb = match (cpu_before, cpu_after) {
        (Some(b), Some(e)) if moved > 0 => {
            format!("{:.3}", (e - b) as f64 / 1e6 / (moved as f64 / 1e9))
        }
        _ => "null".into(),
    };
    let dir = match a.dir {
        Direction::Down => "down",
        Direction::Up => "up",
        Direction::TlsDown => "tls-down",
    };
    eprintln!(
        "throughput {dir} via {}: {} streams, {moved} bytes in {transfer_s:.3}s (wall {wall:.3}s): {mbps:.1} MB/s, proxy CPU {cpu_per_gb} s/GB",
        route.describe(),
        a.streams
    );
    println!(
        "{{\"mode\":\"throughput\",\"dir\":\"{dir}\",\"streams\":{},\"bytes\":{moved},\"transfer_s\":{transfer_s:.4},\"mb_per_s\":{mbps:.1},\"proxy_cpu_s_per_gb\":{cpu_per_gb}}}",
        a.streams
    );
    Ok(())
}

async fn idle(a: IdleArgs) -> Result<()> {
    let route = Arc::new(a.to.route());
    let tls = client::tls_connector()?;
    let rss_before = proc::rss_kib(&a.pid)?;
    let opened_at = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.open_concurrency.max(1)));
    let mut opening = Vec::with_capacity(a.tunnels);
    for _ in 0..a.tunnels {
        let (route, tls, sem) = (route.clone(), tls.clone(), sem.clone());
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            client::open_tls_tunnel(&route, &tls).await
        }));
    }
    let mut tunnels = Vec::with_capacity(a.tunnels);
    let mut open_errors = Vec::new();
    for t in opening {
        match t.await? {
            Ok(s) => tunnels.push(s),
            Err(e) => open_errors.push(format!("{e:#}")),
        }
    }
    let open_s = opened_at.elapsed().as_secs_f64();
    tokio::time::sleep(a.hold).await;
    let rss_held = proc::rss_kib(&a.pid)?;
    // Every tunnel must still carry a request and its answer.
    let held = tunnels.len();
    let mut checks = Vec::with_capacity(held);
    for s in tunnels {
        let (route, sem) = (route.clone(), sem.clone());
        checks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            client::get_small(s, &route).await
        }));
    }
    let mut check_errors = Vec::new();
    for t in checks {
        if let Err(e) = t.await? {
            check_errors.push(format!("{e:#}"));
        }
    }
    let per = match (rss_before, rss_held) {
        (Some(b), Some(h)) if held > 0 => format!("{:.2}", (h as f64 - b as f64) / held as f64),
        _ => "null".into(),
    };
    let show = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    eprintln!(
        "idle via {}: {held} tunnels opened in {open_s:.2}s ({} failed), held {:?}, {} failed the final GET; proxy RSS {} → {} KiB: {per} KiB per tunnel",
        route.describe(),
        open_errors.len(),
        a.hold,
        check_errors.len(),
        show(rss_before),
        show(rss_held),
    );
    for e in open_errors.iter().chain(&check_errors).take(5) {
        eprintln!("  error: {e}");
    }
    println!(
        "{{\"mode\":\"idle\",\"tunnels\":{held},\"open_errors\":{},\"check_errors\":{},\"rss_before_kib\":{},\"rss_held_kib\":{},\"rss_per_tunnel_kib\":{per}}}",
        open_errors.len(),
        check_errors.len(),
        show(rss_before),
        show(rss_held),
    );
    if !open_errors.is_empty() || !check_errors.is_empty() {
        bail!(
            "{} tunnels failed to open, {} failed after the hold",
            open_errors.len(),
            check_errors.len()
        );
    }
    Ok(())
}
