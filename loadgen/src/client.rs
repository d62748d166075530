//! The client side: a tunnel (CONNECT through a proxy, or a direct connection), then TLS
//! 1.3 without resumption, or raw bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where a connection goes.
pub struct Route {
    pub proxy: Option<SocketAddr>,
    pub target: SocketAddr,
    pub sni: String,
    pub step_timeout: Duration,
}

impl Route {
    pub fn describe(&self) -> String {
        match self.proxy {
            Some(p) => format!("proxy {p} to {}", self.target),
            None => format!("direct to {}", self.target),
        }
    }

    async fn step<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        timeout(self.step_timeout, f)
            .await
            .map_err(|_| anyhow!("{what}: timed out after {:?}", self.step_timeout))?
            .with_context(|| what.to_string())
    }

    /// A TCP stream to the target: through the proxy's CONNECT, or direct.
    pub async fn tunnel(&self) -> Result<TcpStream> {
        let Some(proxy) = self.proxy else {
            let s = self
                .step("connect", async {
                    Ok(TcpStream::connect(self.target).await?)
                })
                .await?;
            s.set_nodelay(true)?;
            return Ok(s);
        };
        let mut s = self
            .step("connect to proxy", async {
                Ok(TcpStream::connect(proxy).await?)
            })
            .await?;
        s.set_nodelay(true)?;
        let req = format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n", t = self.target);
        s.write_all(req.as_bytes()).await?;
        self.step("CONNECT answer", read_connect_answer(&mut s))
            .await?;
        Ok(s)
    }
}

/// Reads the proxy's answer head; our upstreams never speak first, so no byte may follow it.
async fn read_connect_answer(s: &mut TcpStream) -> Result<()> {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    loop {
        let n = s.read(buf.get_mut(len..).unwrap_or_default()).await?;
        if n == 0 {
            bail!("proxy closed before answering CONNECT");
        }
        len += n;
        let got = buf.get(..len).unwrap_or_default();
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let status = got.split(|&b| b == b' ').nth(1).unwrap_or_default();
            if status != b"200" {
                bail!(
                    "proxy answered {:?}",
                    String::from_utf8_lossy(got.get(..end).unwrap_or_default())
                );
            }
            if end + 4 != len {
                bail!("proxy sent bytes after its 200 before the upstream spoke");
            }
            return Ok(());
        }
        if len == buf.len() {
            bail!("CONNECT answer head too large");
        }
    }
}

/// Accepts the server's certificate without a chain (the benchmark server's is
/// self-signed) but checks the handshake signatures, so the client does the work a real
/// client does per handshake.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS 1.3 only, no resumption (every connection is a full handshake).
pub fn tls_connector() -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

pub async fn open_tls_tunnel(route: &Route, tls: &TlsConnector) -> Result<TlsStream<TcpStream>> {
    let tcp = route.tunnel().await?;
    let name = ServerName::try_from(route.sni.clone())?;
    route
        .step("TLS handshake", async { Ok(tls.connect(name, tcp).await?) })
        .await
}

/// `GET /` on an open TLS stream, read to the end; checks the status.
pub async fn get_small(mut s: TlsStream<TcpStream>, route: &Route) -> Result<()> {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        route.sni
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::with_capacity(256);
    route
        .step("response", async { Ok(s.read_to_end(&mut resp).await?) })
        .await?;
    if !resp.starts_with(b"HTTP/1.1 200 ") {
        bail!(
            "bad response: {:?}",
            String::from_utf8_lossy(resp.get(..resp.len().min(64)).unwrap_or_default())
        );
    }
    Ok(())
}

/// One connection of the handshake scenario.
pub async fn one_request(route: &Route, tls: &TlsConnector) -> Result<()> {
    let s = open_tls_tunnel(route, tls).await?;
    get_small(s, route).await
}

/// Raw download of `bytes`: returns (bytes, time from the request to the last byte).
pub async fn raw_down(route: &Route, bytes: u64, buf: usize) -> Result<(u64, Duration)> {
    let mut s = route.tunnel().await?;
    let mut cmd = [0u8; 9];
    cmd[0] = b'D';
    cmd[1..].copy_from_slice(&bytes.to_be_bytes());
    let t0 = Instant::now();
    s.write_all(&cmd).await?;
    let mut b = vec![0u8; buf.max(1)];
    let mut got = 0u64;
    loop {
        let n = route
            .step("read", async { Ok(s.read(&mut b).await?) })
            .await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let took = t0.elapsed();
    if got != bytes {
        bail!("received {got} bytes, expected {bytes}");
    }
    Ok((got, took))
}

/// Raw upload of `bytes`: returns (bytes, time from the first byte to the sink's ack).
pub async fn raw_up(route: &Route, bytes: u64, buf: usize) -> Result<(u64, Duration)> {
    let mut s = route.tunnel().await?;
    let mut cmd = [0u8; 9];
    cmd[0] = b'U';
    cmd[1..].copy_from_slice(&bytes.to_be_bytes());
    let b = vec![0x5au8; buf.max(1)];
    let t0 = Instant::now();
    s.write_all(&cmd).await?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(b.len());
        let chunk = b.get(..n).unwrap_or_default();
        route
            .step("write", async { Ok(s.write_all(chunk).await?) })
            .await?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    route
        .step("sink ack", async { Ok(s.read_exact(&mut ack).await?) })
        .await?;
    let took = t0.elapsed();
    if &ack != b"K" {
        bail!("bad ack from the sink");
    }
    Ok((bytes, took))
}

/// HTTPS download of `bytes` (`GET /bulk/N`): returns (body bytes, time from the request
/// to the last byte).
pub async fn tls_down(
    route: &Route,
    tls: &TlsConnector,
    bytes: u64,
    buf: usize,
) -> Result<(u64, Duration)> {
    let mut s = open_tls_tunnel(route, tls).await?;
    let req = format!(
        "GET /bulk/{bytes} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        route.sni
    );
    let t0 = Instant::now();
    s.write_all(req.as_bytes()).await?;
    let mut b = vec![0u8; buf.max(1)];
    let mut got = 0u64;
    // The response head, until its end is seen: any server's (nginx's differs from ours).
    let mut head = Vec::new();
    let mut head_len = None;
    loop {
        let n = route
            .step("read", async { Ok(s.read(&mut b).await?) })
            .await?;
        if n == 0 {
            break;
        }
        got += n as u64;
        if head_len.is_none() && head.len() < 16 * 1024 {
            head.extend_from_slice(b.get(..n).unwrap_or_default());
            head_len = head
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p as u64 + 4);
        }
    }
    let took = t0.elapsed();
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        bail!(
            "the bulk download was not answered 200: {:?}",
            String::from_utf8_lossy(head.get(..head.len().min(64)).unwrap_or_default())
        );
    }
    let Some(head_len) = head_len else {
        bail!("the bulk download's response head never ended");
    };
    if got != bytes + head_len {
        bail!("received {got} bytes, expected {}", bytes + head_len);
    }
    Ok((bytes, took))
}
