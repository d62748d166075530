//! The upstreams the scenarios talk to, built in so a benchmark needs nothing else:
//! - a TLS server (rustls, TLS 1.2/1.3, self-signed ECDSA certificate for `localhost`, no
//!   session tickets) answering one HTTP/1.1 request per connection: `GET /` → a small
//!   page, `GET /bulk/N` → N bytes;
//! - a raw TCP source/sink: the client sends `D` + u64 N (big-endian) to receive N bytes,
//!   or `U` + u64 N then N bytes, and gets `K` once they are all in.
//!
//! Prints one JSON line with the bound addresses on stdout, and exits after `--lifetime`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

#[derive(Args)]
pub struct ServeArgs {
    /// Address of the TLS server.
    #[arg(long, default_value = "127.0.0.1:0")]
    tls_listen: SocketAddr,
    /// Address of the raw TCP source/sink.
    #[arg(long, default_value = "127.0.0.1:0")]
    raw_listen: SocketAddr,
    /// Exit after this long (a forgotten server never outlives its benchmark by much).
    #[arg(long, default_value = "1h", value_parser = crate::parse_duration)]
    lifetime: Duration,
}

const SMALL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello world\n";
const CHUNK: usize = 256 * 1024;
static ZEROS: [u8; CHUNK] = [0u8; CHUNK];

/// The head of a `/bulk/N` answer (the client needs its length).
pub fn bulk_head(n: u64) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
    )
}

fn acceptor() -> Result<TlsAcceptor> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .context("generating the certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

pub async fn run(a: ServeArgs) -> Result<()> {
    let tls = acceptor()?;
    let tls_l = TcpListener::bind(a.tls_listen)
        .await
        .context("binding the TLS server")?;
    let raw_l = TcpListener::bind(a.raw_listen)
        .await
        .context("binding the raw server")?;
    println!(
        "{{\"tls\":\"{}\",\"raw\":\"{}\"}}",
        tls_l.local_addr()?,
        raw_l.local_addr()?
    );
    let tls_loop = async {
        loop {
            let Ok((s, _)) = tls_l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                if let Ok(s) = tls.accept(s).await {
                    let _ = http_once(s).await;
                }
            });
        }
    };
    let raw_loop = async {
        loop {
            let Ok((s, _)) = raw_l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = raw_once(s).await;
            });
        }
    };
    tokio::select! {
        _ = tls_loop => {},
        _ = raw_loop => {},
        _ = tokio::time::sleep(a.lifetime) => eprintln!("serve: lifetime over, exiting"),
    }
    Ok(())
}

/// Reads one request head, answers it, closes (with close_notify).
async fn http_once<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Result<()> {
    let mut head = [0u8; 4096];
    let mut len = 0;
    let end = loop {
        let n = s.read(head.get_mut(len..).unwrap_or_default()).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let got = head.get(..len).unwrap_or_default();
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if len == head.len() {
            bail!("request head too large");
        }
    };
    let line = head.get(..end).unwrap_or_default();
    let path = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
    if let Some(n) = path.strip_prefix(b"/bulk/") {
        let n: u64 = std::str::from_utf8(n)?.parse()?;
        s.write_all(bulk_head(n).as_bytes()).await?;
        let mut left = n;
        while left > 0 {
            let k = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            s.write_all(ZEROS.get(..k).unwrap_or_default()).await?;
            left -= k as u64;
        }
    } else {
        s.write_all(SMALL).await?;
    }
    s.shutdown().await?;
    Ok(())
}

async fn raw_once(mut s: TcpStream) -> Result<()> {
    let _ = s.set_nodelay(true);
    let mut cmd = [0u8; 9];
    s.read_exact(&mut cmd).await?;
    let mut nb = [0u8; 8];
    nb.copy_from_slice(cmd.get(1..).unwrap_or_default());
    let n = u64::from_be_bytes(nb);
    match cmd[0] {
        b'D' => {
            let mut left = n;
            while left > 0 {
                let k = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                s.write_all(ZEROS.get(..k).unwrap_or_default()).await?;
                left -= k as u64;
            }
        }
        b'U' => {
            let mut buf = vec![0u8; CHUNK];
            let mut left = n;
            while left > 0 {
                let r = s.read(&mut buf).await?;
                if r == 0 {
                    bail!("client stopped {left} bytes short");
                }
                left = left.saturating_sub(r as u64);
            }
            s.write_all(b"K").await?;
        }
        _ => bail!("unknown command"),
    }
    s.shutdown().await?;
    Ok(())
}
