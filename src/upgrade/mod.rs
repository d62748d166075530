//! Upgrade mode: keep a legacy caller working by re-originating its connection with TLS
//! 1.2+. Order matters: **first** the upstream TLS (rustls, verified for the name, the
//! client's ALPN offered), **then** a leaf for that name and the client's TLS terminated
//! (OpenSSL), answering the ALPN the upstream chose; then plaintext is spliced between the
//! two sessions. Anything that fails before the client's handshake is answered with a TLS
//! alert and a log line saying why.

pub mod ca;
pub mod client_side;
pub mod upstream;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::config::UpgradeConfig;
use crate::hello::ClientHelloSummary;
use crate::names::HostName;
use crate::net::splice::{self, Flow, NoTap, PooledBuf, PumpError, Side, Tap, Tapped, TunnelStats};
use crate::telemetry::{Metrics, Outcome};

use crate::net::streams::{PrefixedStream, SharedStream};
use ca::{Ca, CaError, MintError};
use client_side::Acceptor;
use upstream::{Upstream, UpstreamSetupError};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("upgrade CA: {0}")]
    Ca(#[from] CaError),
    #[error("{0}")]
    Upstream(#[from] UpstreamSetupError),
    #[error("OpenSSL for the legacy-facing side: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

pub struct Upgrader {
    ca: Arc<Ca>,
    acceptor: Acceptor,
    upstream: Upstream,
}

/// What was negotiated and seen, for the event line and the inventory (filled in as far
/// as the upgrade got).
#[derive(Debug, Default)]
pub struct UpgradeReport {
    /// What the client negotiated with tlspeek (version, suite).
    pub client_version: Option<u16>,
    pub client_cipher: Option<u16>,
    pub upstream_version: Option<&'static str>,
    pub upstream_cipher: Option<String>,
    /// First HTTP/1.x request of the client: User-Agent and "METHOD /path" (no query).
    pub user_agent: Option<String>,
    pub request: Option<String>,
}

/// Why an upgrade failed. The text goes into the event line's `note`
/// (`upgrade failed: …`).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0} is not a usable server name")]
    ServerName(HostName),
    #[error("upstream TLS handshake timed out")]
    UpstreamTimeout,
    #[error("upstream TLS failed: {0}")]
    UpstreamTls(std::io::Error),
    #[error("the upstream asks for a client certificate, which cannot be relayed")]
    ClientCertificateAsked,
    #[error("cannot mint a certificate: {0}")]
    Mint(#[from] MintError),
    #[error("OpenSSL: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("client TLS handshake failed: {0}")]
    ClientTls(openssl::ssl::Error),
    #[error("client TLS handshake timed out")]
    ClientTimeout,
}

impl UpgradeError {
    /// The alert tlspeek sends the client, when it has to (after the client's handshake
    /// started, OpenSSL has answered, or the client went quiet).
    fn alert(&self) -> Option<u8> {
        use crate::hello::alert::{ALERT_HANDSHAKE_FAILURE, ALERT_INTERNAL_ERROR};
        match self {
            UpgradeError::ServerName(_)
            | UpgradeError::UpstreamTimeout
            | UpgradeError::UpstreamTls(_)
            | UpgradeError::ClientCertificateAsked => Some(ALERT_HANDSHAKE_FAILURE),
            UpgradeError::Mint(_) | UpgradeError::OpenSsl(_) => Some(ALERT_INTERNAL_ERROR),
            UpgradeError::ClientTls(_) | UpgradeError::ClientTimeout => None,
        }
    }
}

/// The longest User-Agent / request line kept.
const FIELD_CAP: usize = 256;
/// Client plaintext examined for the first request head at most.
const SNIFF_MAX: usize = 8 * 1024;

impl Upgrader {
    /// Loads the CA and builds both TLS sides; `None` when no CA is configured.
    pub fn from_config(cfg: &UpgradeConfig) -> Result<Option<Arc<Upgrader>>, SetupError> {
        let (Some(cert), Some(key)) = (&cfg.ca_cert, &cfg.ca_key) else {
            return Ok(None);
        };
        Ok(Some(Arc::new(Upgrader {
            ca: Arc::new(Ca::load(cert, key)?),
            acceptor: Acceptor::new()?,
            upstream: Upstream::new(cfg.upstream_extra_ca.as_deref())?,
        })))
    }

    /// Why this connection cannot be upgraded here, if it cannot.
    pub fn cannot(&self, hello: &ClientHelloSummary, name: &HostName) -> Option<String> {
        if !self.ca.permits(name) {
            return Some(format!(
                "{name} is outside the upgrade CA's name constraints"
            ));
        }
        self.acceptor.unsupported(hello)
    }

    /// Runs the upgrade described by `job` on an open tunnel whose client has sent
    /// `job.held` (its ClientHello, not yet forwarded): verified TLS 1.2+ upstream first,
    /// then the client's TLS terminated with a minted leaf, then plaintext both ways. What
    /// was negotiated goes into `report`; the result is how the plaintext tunnel ended.
    pub async fn run(
        &self,
        mut job: UpgradeJob<'_>,
        report: &mut UpgradeReport,
    ) -> Result<Outcome, UpgradeError> {
        let held = std::mem::take(&mut job.held);
        let job = job;
        let refuse = |e: UpgradeError| {
            if let Some(alert) = e.alert() {
                tracing::warn!(name = %job.name, reason = %e, "upgrade failed; the client gets a TLS alert");
                let _ = job
                    .client
                    .try_write(&crate::hello::alert_record(job.hello, alert));
            }
            e
        };
        let mut up_tls = self.upstream_tls(&job, report).await.map_err(refuse)?;
        let mut client_tls = self
            .client_tls(&job, held, alpn_of(&up_tls))
            .await
            .map_err(refuse)?;
        report.client_version = client_tls.ssl().version2().map(ssl_version_code);
        report.client_cipher = client_tls
            .ssl()
            .current_cipher()
            .map(|c| u16::from_be_bytes(c.protocol_id()));
        tracing::info!(
            name = %job.name,
            client_version = ?report.client_version.map(crate::hello::version_name),
            upstream_version = ?report.upstream_version,
            "upgraded"
        );
        Ok(splice_plaintext(
            &mut client_tls,
            &mut up_tls,
            job.idle,
            job.stats,
            job.metrics,
            report,
        )
        .await)
    }

    /// Step 1: verified TLS 1.2+ to the upstream for the name, the client's ALPN offered.
    /// Records what was negotiated.
    async fn upstream_tls<'a>(
        &self,
        job: &UpgradeJob<'a>,
        report: &mut UpgradeReport,
    ) -> Result<tokio_rustls::client::TlsStream<SharedStream<'a>>, UpgradeError> {
        let Some(server_name) = Upstream::server_name(job.name.as_str()) else {
            return Err(UpgradeError::ServerName(job.name.clone()));
        };
        let (config, probe) = self.upstream.config(&job.hello.alpn);
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(
            job.handshake_timeout,
            connector.connect(server_name, SharedStream(job.upstream)),
        )
        .await;
        let up_tls = match tls {
            Ok(Ok(t)) if !probe.asked() => t,
            Err(_) => return Err(UpgradeError::UpstreamTimeout),
            Ok(Err(e)) if !probe.asked() => return Err(UpgradeError::UpstreamTls(e)),
            Ok(_) => return Err(UpgradeError::ClientCertificateAsked),
        };
        let (_, conn) = up_tls.get_ref();
        report.upstream_version = conn
            .protocol_version()
            .map(|v| crate::hello::version_name(u16::from(v)));
        report.upstream_cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("0x{:04x}", u16::from(s.suite())));
        Ok(up_tls)
    }

    /// Step 2: the client's side — a leaf for the name, OpenSSL with the upstream's ALPN
    /// choice, the handshake over the held hello and then the socket.
    async fn client_tls<'a>(
        &self,
        job: &UpgradeJob<'a>,
        held: Vec<u8>,
        alpn: Option<Vec<u8>>,
    ) -> Result<SslStream<PrefixedStream<'a>>, UpgradeError> {
        let leaf = self.ca.leaf(job.name.as_str()).await?;
        let ssl = self
            .acceptor
            .ssl(&leaf.cert, self.ca.leaf_key(), self.ca.cert(), alpn)?;
        let held = PrefixedStream::new(held, job.client);
        let mut client_tls = SslStream::new(ssl, held)?;
        match tokio::time::timeout(job.handshake_timeout, Pin::new(&mut client_tls).accept()).await
        {
            Ok(Ok(())) => Ok(client_tls),
            Ok(Err(e)) => {
                tracing::warn!(name = %job.name, error = %e, "upgrade failed: the client's TLS handshake with tlspeek failed");
                Err(UpgradeError::ClientTls(e))
            }
            Err(_) => Err(UpgradeError::ClientTimeout),
        }
    }
}

/// What an upgrade works on: the tunnel's two sockets, the client's held hello, the name,
/// the limits, and where bytes are counted.
pub struct UpgradeJob<'a> {
    pub client: &'a TcpStream,
    pub upstream: &'a TcpStream,
    /// The client's ClientHello, read but not forwarded.
    pub held: Vec<u8>,
    pub hello: &'a ClientHelloSummary,
    pub name: &'a HostName,
    /// Each TLS handshake gets at most this long.
    pub handshake_timeout: Duration,
    /// `idle_timeout` of the plaintext splice.
    pub idle: Duration,
    pub stats: &'a TunnelStats,
    pub metrics: &'a Metrics,
}

/// The ALPN protocol the upstream chose.
fn alpn_of(t: &tokio_rustls::client::TlsStream<SharedStream<'_>>) -> Option<Vec<u8>> {
    t.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

fn ssl_version_code(v: openssl::ssl::SslVersion) -> u16 {
    use openssl::ssl::SslVersion;
    if v == SslVersion::TLS1 {
        0x0301
    } else if v == SslVersion::TLS1_1 {
        0x0302
    } else if v == SslVersion::TLS1_2 {
        0x0303
    } else if v == SslVersion::TLS1_3 {
        0x0304
    } else if v == SslVersion::SSL3 {
        0x0300
    } else {
        0
    }
}

/// "METHOD /path" (query removed) and the User-Agent of the first request head, once it
/// is complete within `SNIFF_MAX` bytes.
fn sniff_request(buf: &[u8]) -> Option<(String, Option<String>)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let method = req.method.unwrap_or("?");
            let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
            let line: String = format!("{method} {path}").chars().take(FIELD_CAP).collect();
            let ua = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("user-agent"))
                .map(|h| {
                    String::from_utf8_lossy(h.value)
                        .chars()
                        .take(FIELD_CAP)
                        .collect()
                });
            Some((line, ua))
        }
        _ => None,
    }
}

async fn splice_plaintext<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    stats: &TunnelStats,
    metrics: &Metrics,
    report: &mut UpgradeReport,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut sniff = RequestSniff::default();
    let outcome = {
        let up_flow = stats.flow(Side::Client, &metrics.bytes_up);
        let down_flow = stats.flow(Side::Upstream, &metrics.bytes_down);
        let up = copy_plain(&mut cr, &mut uw, up_flow, &mut sniff);
        let mut no_tap = NoTap;
        let down = copy_plain(&mut ur, &mut cw, down_flow, &mut no_tap);
        let idle_watch = splice::idle_watch(&stats.activity, idle);
        tokio::pin!(up, down, idle_watch);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            if up_done && down_done {
                break Outcome::Closed;
            }
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(e) => break side_failed(e),
                },
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(e) => break side_failed(e),
                },
                _ = &mut idle_watch => break Outcome::IdleTimeout,
            }
        }
    };
    if let Some((request, ua)) = sniff.found {
        report.request = Some(request);
        report.user_agent = ua;
    }
    outcome
}

fn side_failed(e: PumpError) -> Outcome {
    tracing::debug!(error = %e.error, "upgraded tunnel side failed");
    Outcome::reset_by(e.culprit)
}

/// One direction of an upgraded tunnel's plaintext: copies until end of stream, then
/// half-closes `w`; `tap` sees the bytes until it is done, `flow` counts them.
async fn copy_plain<R, W>(
    r: &mut R,
    w: &mut W,
    flow: Flow<'_>,
    tap: &mut impl Tap,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let fail = |culprit, error| PumpError { culprit, error };
    let mut buf = PooledBuf::take();
    let mut tapping = true;
    loop {
        let n = match r.read(buf.as_mut()).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => return Err(fail(flow.from, e)),
        };
        let chunk = buf.as_mut().get(..n).unwrap_or_default();
        if tapping {
            tapping = matches!(tap.see(chunk), Tapped::More);
        }
        w.write_all(chunk)
            .await
            .map_err(|e| fail(flow.from.other(), e))?;
        flow.moved(n);
    }
}

/// Taps the client's first plaintext bytes for the request line and User-Agent (at most
/// [`SNIFF_MAX`] bytes).
#[derive(Default)]
struct RequestSniff {
    buf: Vec<u8>,
    found: Option<(String, Option<String>)>,
}

impl Tap for RequestSniff {
    fn see(&mut self, chunk: &[u8]) -> Tapped {
        self.buf.extend_from_slice(chunk);
        if let Some(found) = sniff_request(&self.buf) {
            self.found = Some(found);
        } else if self.buf.len() <= SNIFF_MAX {
            return Tapped::More;
        }
        self.buf = Vec::new();
        Tapped::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_sniffing_drops_the_query_and_caps() {
        let (line, ua) = sniff_request(
            b"POST /contoso.onmicrosoft.com/oauth2/token?login_hint=alice%40contoso.com HTTP/1.1\r\nUser-Agent: WindowsPowerShell/5.1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(line, "POST /contoso.onmicrosoft.com/oauth2/token");
        assert_eq!(ua.as_deref(), Some("WindowsPowerShell/5.1"));
        assert!(
            sniff_request(b"GET / HTTP/1.1\r\nHost: x\r\n").is_none(),
            "incomplete"
        );
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1000));
        assert_eq!(
            sniff_request(long.as_bytes()).unwrap().0.chars().count(),
            FIELD_CAP
        );
    }
}
