//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (liveness),
//! `/readyz` (503 once shutdown begins), `/legacy` (JSON) and `/legacy.csv` (the inventory,
//! with `?since=`, `?destination=`, `?legacy=true|false`, `?limit=`), `POST /-/reload`,
//! `/debug/tunnels` (every open tunnel: bytes, idle time, each direction's path and wait,
//! the buffer and pipe pools).
//! Every request is checked against `[admin] allowed_sources`; `/legacy*` and reload need
//! `Authorization: Bearer <token>` when `[admin] token_file` is set; admin connections are
//! bounded in number and time. A source that neither the admin's nor the proxy's
//! allow-list names is closed at accept; proxy clients (they may fetch `/proxy.pac`) never
//! take the slots reserved for the admin's own sources; every 403 closes its connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock::unix_now;
use crate::inventory::{Db, Filter, Location, parse_since, report};
use crate::shared::Shared;

/// Admin connections served at once.
const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Of those, slots only the admin's own allowed sources may take, so that `/healthz` and
/// `/readyz` are answered however many proxy clients hold `/proxy.pac` connections.
const RESERVED_FOR_ADMIN: usize = 8;
/// An admin connection (keep-alive included) lasts at most this long.
const ADMIN_CONNECTION_LIMIT: Duration = Duration::from_secs(60);
/// An allowed admin source waits at most this long for a free slot.
const SLOT_WAIT: Duration = Duration::from_secs(5);

/// Connection slots: a shared pool, and a reserve for the admin's allowed sources.
struct Slots {
    shared: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
}

impl Slots {
    fn new() -> Slots {
        Slots {
            shared: Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS - RESERVED_FOR_ADMIN)),
            reserved: Arc::new(Semaphore::new(RESERVED_FOR_ADMIN)),
        }
    }

    /// A slot for an admin source: any free one, waiting a little when all are taken.
    async fn for_admin(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.shared.clone().try_acquire_owned() {
            return Some(p);
        }
        let wait = async {
            tokio::select! {
                p = self.reserved.clone().acquire_owned() => p.ok(),
                p = self.shared.clone().acquire_owned() => p.ok(),
            }
        };
        tokio::time::timeout(SLOT_WAIT, wait).await.ok().flatten()
    }

    /// A slot for a proxy client (`/proxy.pac` only): never one of the reserve, never waits.
    fn for_proxy_client(&self) -> Option<OwnedSemaphorePermit> {
        self.shared.clone().try_acquire_owned().ok()
    }
}

/// Which sources the admin listener talks to at all, decided at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Admin,
    ProxyClient,
    Stranger,
}

fn caller(cfg: &crate::config::Config, ip: std::net::IpAddr) -> Caller {
    if cfg.admin.allowed_sources.contains(ip) {
        Caller::Admin
    } else if cfg.proxy.allowed_sources.contains(ip) {
        Caller::ProxyClient
    } else {
        Caller::Stranger
    }
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let slots = Arc::new(Slots::new());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A source neither list allows is closed at once: it never holds a slot.
        let who = caller(&shared.config.load(), peer.ip());
        let permit = match who {
            Caller::Stranger => {
                debug!(%peer, "admin connection from a source that is not allowed: closed");
                drop(stream);
                continue;
            }
            Caller::ProxyClient => match slots.for_proxy_client() {
                Some(p) => Some(p),
                None => {
                    debug!(%peer, "admin slots for proxy clients are all taken: closed");
                    continue;
                }
            },
            Caller::Admin => None,
        };
        let shared = shared.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let _permit = match permit {
                Some(p) => p,
                None => match slots.for_admin().await {
                    Some(p) => p,
                    None => {
                        debug!(%peer, "no admin slot came free in time: closed");
                        return;
                    }
                },
            };
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, peer, &req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(ADMIN_CONNECTION_LIMIT, conn).await {
                Ok(Err(e)) => debug!(error = %e, %peer, "admin connection error"),
                Err(_) => debug!(%peer, "admin connection time limit"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// A 403 that ends the connection: a refused client gets no keep-alive to hold a slot with.
fn forbidden(body: &'static str) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::FORBIDDEN, body);
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn route(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let cfg = shared.config.load();
    let path = req.uri().path();
    // The PAC file is for the proxy's clients; it tells nothing but the watched names.
    if path == "/proxy.pac"
        && (cfg.admin.allowed_sources.contains(peer.ip())
            || cfg.proxy.allowed_sources.contains(peer.ip()))
    {
        return pac(&cfg, req);
    }
    if let Some(refused) = refusal(shared, &cfg, peer, req) {
        return refused;
    }
    if path == "/-/reload" {
        return reload(shared, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => with_type(
            text(StatusCode::OK, shared.metrics.render()),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/readyz" if shared.draining.is_cancelled() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/legacy" | "/legacy.csv" => legacy(shared, path == "/legacy.csv", req.uri().query()).await,
        "/debug/tunnels" => {
            let body = serde_json::to_string(&shared.tunnels.snapshot())
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            with_type(text(StatusCode::OK, body), "application/json")
        }
        _ => text(StatusCode::OK, "ok\n"),
    }
}

/// The paths the admin listener answers (besides `/proxy.pac`).
const ADMIN_PATHS: &[&str] = &[
    "/metrics",
    "/healthz",
    "/readyz",
    "/legacy",
    "/legacy.csv",
    "/-/reload",
    "/debug/tunnels",
];

/// The inventory and the tunnel list name internal hosts, and reload changes the proxy:
/// they need the bearer token when one is configured.
const TOKEN_PATHS: &[&str] = &["/legacy", "/legacy.csv", "/-/reload", "/debug/tunnels"];

/// The answer to a request the admin's source allow-list, its paths or its bearer token
/// refuse; None when it may be served.
fn refusal(
    shared: &Shared,
    cfg: &crate::config::Config,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path();
    if !cfg.admin.allowed_sources.contains(peer.ip()) {
        debug!(%peer, "admin request from a source that is not allowed");
        return Some(forbidden("forbidden\n"));
    }
    if !ADMIN_PATHS.contains(&path) {
        return Some(text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz, /legacy, /legacy.csv, /debug/tunnels, POST /-/reload\n",
        ));
    }
    if TOKEN_PATHS.contains(&path) {
        if let Some(token) = shared.admin_token.load_full() {
            if !bearer_matches(req, &token) {
                let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"tlspeek\""),
                );
                return Some(r);
            }
        }
    }
    None
}

/// `r` with its Content-Type set.
fn with_type(mut r: Response<Full<Bytes>>, content_type: &'static str) -> Response<Full<Bytes>> {
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// `/proxy.pac`: a PAC file that sends only the watched destinations through tlspeek and
/// everything else `DIRECT`, so a team can start with the smallest blast radius. The proxy
/// address is `proxy.listen`, or, when that is a wildcard address, the host name the PAC
/// file was fetched by (the `Host` header) with the proxy's port.
fn pac(cfg: &crate::config::Config, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    use crate::names::HostPattern;
    let listen = cfg.proxy.listen;
    let proxy = if listen.ip().is_unspecified() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| match h.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => h,
            })
            .filter(|h| {
                h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
            })
            .unwrap_or("127.0.0.1");
        format!("{host}:{}", listen.port())
    } else {
        listen.to_string()
    };
    let (mut exact, mut below, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for p in &cfg.metrics.watched_destinations.0 {
        match p {
            HostPattern::Exact(n) => exact.push(format!("\"{n}\"")),
            HostPattern::AnyBelow(d) => below.push(format!("\"{d}\"")),
            HostPattern::FirstLabel(l) => first.push(format!("\"{l}\"")),
        }
    }
    let body = format!(
        r#"// tlspeek: only the watched destinations go through the proxy; everything else is DIRECT.
// If the proxy cannot be reached, the browser falls back to DIRECT.
function FindProxyForURL(url, host) {{
  var proxy = "PROXY {proxy}; DIRECT";
  host = host.toLowerCase();
  if (host.charAt(host.length - 1) == ".") host = host.substring(0, host.length - 1);
  var exact = [{exact}];
  var below = [{below}];
  var first = [{first}];
  for (var i = 0; i < exact.length; i++) {{
    if (host == exact[i]) return proxy;
  }}
  for (var j = 0; j < below.length; j++) {{
    var d = "." + below[j];
    if (host.length > d.length && host.substring(host.length - d.length) == d) return proxy;
  }}
  for (var k = 0; k < first.length; k++) {{
    if (host.indexOf(first[k] + ".") == 0 && host.length > first[k].length + 1) return proxy;
  }}
  return "DIRECT";
}}
"#,
        exact = exact.join(", "),
        below = below.join(", "),
        first = first.join(", "),
    );
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ns-proxy-autoconfig"),
    );
    r
}

/// Compares the request's bearer token with `token` in constant time.
fn bearer_matches(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /-/reload` only: a GET (a link, a crawler) never reloads, and a request a browser
/// sends on behalf of another site (it carries `Origin`) is refused.
async fn reload(shared: &Arc<Shared>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "reload is POST /-/reload\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return r;
    }
    if req.headers().contains_key(header::ORIGIN) {
        return forbidden("cross-origin reload refused\n");
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let asked = shared.reload_requests.send(reply).await;
    let result = match (asked, answer.await) {
        (Ok(()), Ok(r)) => r,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "reload failed, configuration unchanged: the proxy is shutting down\n",
            );
        }
    };
    match result {
        Ok(restart) if restart.is_empty() => text(StatusCode::OK, "reloaded\n"),
        Ok(restart) => text(
            StatusCode::OK,
            format!(
                "reloaded; needs a restart to apply: {}\n",
                restart.join(", ")
            ),
        ),
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("reload failed, configuration unchanged: {e}\n"),
        ),
    }
}

/// Rows answered at most by `/legacy` unless `?limit=` says otherwise.
const DEFAULT_LIMIT: usize = 10_000;

fn filter_from(query: Option<&str>) -> Result<Filter, String> {
    let mut f = Filter {
        limit: Some(DEFAULT_LIMIT),
        ..Filter::default()
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "since" => {
                f.since = Some(parse_since(&v, unix_now()).ok_or_else(|| {
                    format!(
                        "since={v:?}: use RFC 3339, a date, Unix seconds or a duration like 24h"
                    )
                })?)
            }
            "destination" => f.destination = Some(v.to_ascii_lowercase()),
            "legacy" => {
                f.legacy = match v.as_ref() {
                    "true" | "1" => Some(true),
                    "false" | "0" => Some(false),
                    _ => return Err(format!("legacy={v:?}: true or false")),
                }
            }
            "limit" => {
                f.limit = Some(v.parse().map_err(|_| format!("limit={v:?}: a number"))?);
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(f)
}

async fn legacy(shared: &Arc<Shared>, csv: bool, query: Option<&str>) -> Response<Full<Bytes>> {
    let filter = match filter_from(query) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some(inv) = &shared.inventory else {
        return text(
            StatusCode::NOT_FOUND,
            "the inventory is off ([inventory] path = \"\")\n",
        );
    };
    let at = inv.location().clone();
    let rows = tokio::task::spawn_blocking(move || {
        if let Location::File(path) = &at {
            if !path.exists() {
                return Ok(Vec::new());
            }
        }
        Db::open_read_only(&at).and_then(|mut db| db.query(&filter))
    })
    .await;
    let mut rows = match rows {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            warn!(error = %e, "cannot read the inventory");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the inventory: {e}\n"),
            );
        }
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    };
    // Marked with the configuration now in force.
    let cfg = shared.config.load();
    for r in &mut rows {
        r.mark_retired(&cfg);
    }
    let (body, content_type) = if csv {
        (report::to_csv(&rows), "text/csv; charset=utf-8")
    } else {
        (report::to_json(&rows), "application/json")
    };
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}
