//! Plain-HTTP forwarding on the proxy listener: absolute-form requests
//! (`GET http://host/path HTTP/1.1`) to `allowed_http_ports`, forwarded with hyper —
//! keep-alive, chunked bodies streamed both ways, a `Via` header, hop-by-hop headers and
//! `Proxy-Authorization` removed. Windows fetches CRLs and OCSP through the same WinHTTP
//! proxy, and cleartext to an identity host is worth an event of its own.
//!
//! The upstream goes through the same parent-or-direct path as CONNECT (`upstream::open`:
//! resolved once, checked, connected to a checked address): a stock connector that
//! resolved again would bypass the deny-list. The task owns one record per request
//! (`mode = "http"`), and writes its event line when its response has been sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::authority::{Authority, parse_authority};
use super::error::ConnError;
use super::refusal::Refusal;
use super::session::Session;
use super::upstream::{self, Purpose};
use crate::config::Config;
use crate::net::streams::PrefixedStream;
use crate::shared::Shared;
use crate::telemetry::{ConnectionRecord, Mode, Outcome, SourceLabel, Who, destination_label};

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// What every request of one client connection shares.
pub struct HttpClient {
    pub shared: Arc<Shared>,
    pub cfg: Arc<Config>,
    pub peer: SocketAddr,
    pub src: SourceLabel,
    pub process: Option<crate::local_process::LocalProcess>,
}

/// Serves the client connection (its first head already read) as an HTTP/1.1 proxy.
pub async fn serve(s: &Session<'_>, head_and_rest: Vec<u8>) -> Result<Outcome, ConnError> {
    let ctx = Arc::new(HttpClient {
        shared: s.shared.clone(),
        cfg: s.cfg.clone(),
        peer: s.peer,
        src: s.src.clone(),
        process: s.process.clone(),
    });
    let timeout = ctx.cfg.proxy.header_timeout;
    let io = TokioIo::new(PrefixedStream::new(head_and_rest, s.client));
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(forward(ctx, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(true)
        .serve_connection(io, svc);
    conn.await
        .map(|()| Outcome::Closed)
        .map_err(ConnError::HttpClient)
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let body = format!("tlspeek: {body}\n");
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own credentials never travel on.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        headers.remove(n);
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(n);
    }
}

fn add_via(headers: &mut HeaderMap) {
    headers.append(header::VIA, HeaderValue::from_static("1.1 tlspeek"));
}

/// Counts a body's data bytes; calls `done` with the count when the body is dropped.
struct Counted<B> {
    inner: B,
    counter: Arc<AtomicU64>,
    done: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.counter.load(Ordering::Relaxed));
        }
    }
}

/// A request's end: its outcome, bytes (up, down) and duration into the record, the
/// metric, and its event line.
fn finish_request(
    shared: &Shared,
    mut rec: ConnectionRecord,
    outcome: Outcome,
    (up, down): (u64, u64),
    started: Instant,
) {
    rec.outcome = outcome;
    rec.bytes_up = up;
    rec.bytes_down = down;
    rec.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    shared.metrics.connection_ended(Mode::Http, outcome);
    shared.events.write(&rec);
}

/// One request: admission (URL, Host, credentials, port), then the relay to the upstream.
async fn forward(ctx: Arc<HttpClient>, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let mut rec = request_record(&ctx, &req);
    // What the source says in the clear about its OS and runtime (CRL and OCSP fetches
    // name the Windows version), kept per source in the inventory.
    if let (Some(inv), Some(ua)) = (&ctx.shared.inventory, &rec.user_agent) {
        inv.record_agent(&rec.source_ip, ua);
    }
    match admit(&ctx, &req, &mut rec).await {
        Ok((target, host)) => relay(&ctx, req, rec, &target, host, started).await,
        Err(r) => refuse(&ctx.shared, rec, r, started),
    }
}

/// The request's record: who, and "METHOD /path" and User-Agent (capped, no query).
fn request_record(ctx: &HttpClient, req: &Request<Incoming>) -> ConnectionRecord {
    let mut rec = ConnectionRecord::new(
        ctx.shared.next_id(),
        Mode::Http,
        ctx.peer,
        ctx.src.value.clone(),
    );
    if let Some(p) = &ctx.process {
        rec.set_process(p);
    }
    rec.request = Some(
        format!("{} {}", req.method(), req.uri().path())
            .chars()
            .take(256)
            .collect(),
    );
    rec.user_agent = req.headers().get(header::USER_AGENT).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(256)
            .collect()
    });
    rec
}

/// A refusal: logged, counted, its event line written, and the answer.
fn refuse(
    shared: &Shared,
    rec: ConnectionRecord,
    r: Refusal,
    started: Instant,
) -> Response<ProxyBody> {
    info!(outcome = r.outcome.as_str(), status = r.status, reason = %r.reason, "http request refused");
    finish_request(shared, rec, r.outcome, (0, 0), started);
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = text(status, r.reason);
    for (name, value) in r.headers.iter().filter_map(|h| h.split_once(": ")) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp
}

/// Only absolute-form `http://` URLs with a host; https goes through CONNECT.
fn url_authority(uri: &Uri) -> Result<&hyper::http::uri::Authority, Refusal> {
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(_) => {
            return Err(Refusal::bad_request(
                "only http:// URLs are forwarded; use CONNECT for https",
            ));
        }
        None => {
            return Err(Refusal::bad_request(
                "this is a proxy: send absolute-form requests (GET http://host/path) or CONNECT",
            ));
        }
    }
    uri.authority()
        .ok_or_else(|| Refusal::bad_request("the URL has no host"))
}

/// The checks before any upstream is touched: the URL, one Host header, the credentials,
/// the port. Returns the target and the Host header the upstream will get.
async fn admit(
    ctx: &HttpClient,
    req: &Request<Incoming>,
    rec: &mut ConnectionRecord,
) -> Result<(Authority, HeaderValue), Refusal> {
    let authority = url_authority(req.uri())?;
    // Two Host headers make the request ambiguous (RFC 9112 §3.2): refused, not guessed.
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Err(Refusal::bad_request("more than one Host header"));
    }
    let port = authority.port_u16().unwrap_or(80);
    let target = parse_authority(&format!("{}:{port}", authority.host()))
        .map_err(|why| Refusal::bad_request(format!("bad URL host: {why}")))?;
    rec.target_host = Some(target.host.to_string());
    rec.target_port = Some(port);
    // Proxy authentication for every request, not just a connection's first: a later
    // request without (good) credentials on the same keep-alive connection gets 407 too.
    // (After the URL is read, so that the refusal's event line names its target.)
    rec.user = authorize(ctx, req).await?;
    let cfg = &ctx.cfg;
    if !cfg.proxy.allowed_http_ports.contains(&port) {
        return Err(Refusal::new(
            403,
            "Forbidden",
            Outcome::RefusedPort,
            format!("port {port} is not allowed for http://"),
        ));
    }
    // Host is the URL's authority (RFC 9112 §3.2.2), whatever the client's Host said: the
    // upstream must serve the name the event line and the rules judged.
    let host = HeaderValue::from_str(&host_header(authority))
        .map_err(|_| Refusal::bad_request("the URL's host cannot be a Host header"))?;
    let destination = destination_label(cfg, target.name());
    ctx.shared
        .metrics
        .http_requests
        .with_label_values(&[&destination])
        .inc();
    if destination != crate::telemetry::guard::OTHER {
        info!(destination = %destination, source = %ctx.src.value, "cleartext HTTP to a watched destination");
    }
    let path = req.uri().path();
    if let Some(d) = target
        .name()
        .and_then(|n| cfg.deprecation_of(n, Some(path)))
    {
        let who = Who {
            source: &ctx.src.value,
            source_is_ip: ctx.src.is_ip,
            destination: &destination,
        };
        super::retired::called(&ctx.shared.metrics, &who, d, Some(path), false);
    }
    Ok((target, host))
}

/// The request's user when proxy authentication allows it (None without `[auth]` or for
/// an exempt source), else the 407/429 refusal.
async fn authorize(ctx: &HttpClient, req: &Request<Incoming>) -> Result<Option<String>, Refusal> {
    let Some(auth) = ctx.shared.auth.load_full() else {
        return Ok(None);
    };
    let given = req
        .headers()
        .get(header::PROXY_AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    auth.check(ctx.peer.ip(), given)
        .await
        .verdict()
        .map_err(|r| Refusal::auth(r, &ctx.shared.metrics.auth_failures))
}

/// The request as the upstream sees it: origin-form (absolute-form to a parent proxy), no
/// hop-by-hop headers, our Via, `host` as Host; its body counted into `up_count`.
fn upstream_request(
    cfg: &Config,
    req: Request<Incoming>,
    host: HeaderValue,
    up_count: &Arc<AtomicU64>,
) -> Request<Counted<Incoming>> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_via(&mut parts.headers);
    parts.headers.insert(header::HOST, host);
    match &cfg.upstream_proxy {
        Some(p) => {
            if let Some(auth) = p
                .authorization
                .as_deref()
                .and_then(|a| HeaderValue::from_str(a).ok())
            {
                parts.headers.insert(header::PROXY_AUTHORIZATION, auth);
            }
        }
        None => {
            let origin = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            parts.uri = origin.parse::<Uri>().unwrap_or_default();
        }
    }
    parts.version = hyper::Version::HTTP_11;
    let body = Counted {
        inner: body,
        counter: up_count.clone(),
        done: None,
    };
    Request::from_parts(parts, body)
}

/// Connects upstream, sends the request, and streams the answer back; the event line is
/// written when the answer's body ends.
async fn relay(
    ctx: &HttpClient,
    req: Request<Incoming>,
    mut rec: ConnectionRecord,
    target: &Authority,
    host: HeaderValue,
    started: Instant,
) -> Response<ProxyBody> {
    let shared = &ctx.shared;
    let upstream = match connect_upstream(ctx, target, &mut rec).await {
        Ok(u) => u,
        Err(r) => return refuse(shared, rec, r, started),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await {
            Ok(x) => x,
            Err(e) => {
                let r = Refusal::new(
                    502,
                    "Bad Gateway",
                    Outcome::ConnectFailed,
                    format!("upstream: {e}"),
                );
                return refuse(shared, rec, r, started);
            }
        };
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "upstream http connection ended with an error");
        }
    });
    let up_count = Arc::new(AtomicU64::new(0));
    let request = upstream_request(&ctx.cfg, req, host, &up_count);
    let wait = ctx.cfg.proxy.idle_timeout.min(Duration::from_secs(300));
    let response = match tokio::time::timeout(wait, sender.send_request(request)).await {
        Ok(Ok(r)) => r,
        failed => {
            let up = up_count.load(Ordering::Relaxed);
            let (outcome, status, why) = match failed {
                Ok(Err(e)) => {
                    info!(error = %e, "upstream http request failed");
                    (
                        Outcome::UpstreamReset,
                        StatusCode::BAD_GATEWAY,
                        format!("upstream: {e}"),
                    )
                }
                _ => (
                    Outcome::ConnectTimeout,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream did not answer in time".to_string(),
                ),
            };
            finish_request(shared, rec, outcome, (up, 0), started);
            return text(status, why);
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_via(&mut parts.headers);
    let shared2 = shared.clone();
    let body = Counted {
        inner: body,
        counter: Arc::new(AtomicU64::new(0)),
        done: Some(Box::new(move |down| {
            let up = up_count.load(Ordering::Relaxed);
            finish_request(&shared2, rec, Outcome::Closed, (up, down), started);
        })),
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// The Host header for a URL authority: host and explicit port, never the userinfo.
fn host_header(authority: &hyper::http::uri::Authority) -> String {
    match authority.port() {
        Some(p) => format!("{}:{}", authority.host(), p.as_str()),
        None => authority.host().to_string(),
    }
}

/// The upstream TCP connection for one request: through the parent proxy if there is one,
/// else resolved once, checked against the deny-list, and connected to a checked address.
async fn connect_upstream(
    ctx: &HttpClient,
    target: &Authority,
    rec: &mut ConnectionRecord,
) -> Result<TcpStream, Refusal> {
    let metric = &ctx.shared.metrics.upstream_connect_seconds;
    let up = upstream::open(&ctx.cfg, target, Purpose::Forward, metric)
        .await
        .map_err(|e| {
            e.answer()
                .unwrap_or_else(|| Refusal::bad_request(e.to_string()))
        })?;
    rec.upstream_ip = Some(crate::net::addr_text::ip_string(up.addr.ip()));
    Ok(up.stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_the_urls_authority_without_userinfo() {
        let a = |s: &str| s.parse::<Uri>().unwrap().authority().unwrap().clone();
        assert_eq!(
            host_header(&a("http://u:p@example.com:8080/x")),
            "example.com:8080"
        );
        assert_eq!(host_header(&a("http://example.com/")), "example.com");
        assert_eq!(host_header(&a("http://[::1]:81/")), "[::1]:81");
    }

    #[test]
    fn hop_by_hop_headers_and_proxy_credentials_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic Zm9vOmJhcg=="),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        add_via(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["accept"], "*/*");
        assert_eq!(h["via"], "1.1 tlspeek");
    }
}
