//! The composition root: builds `Shared` from a configuration, binds the listeners,
//! starts the accept loops, the admin listener and the background tasks (metric series
//! expiry, the watched-address refresh), serves signals and reload requests, and shuts
//! down gracefully. `proxy`, `admin` and the rest sit below it.

pub mod reload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::access::limits::Limits;
use crate::admin;
use crate::config::Config;
use crate::dns::ReverseDns;
use crate::inventory::Inventory;
use crate::proxy::listener;
use crate::shared::{ReloadResult, Shared};
use crate::telemetry::{EventLog, Metrics, Mode};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start a writer thread: {0}")]
    Events(std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// Signals the running proxy reacts to.
pub enum Control {
    /// Stop accepting, drain for `shutdown_grace`, then stop.
    Shutdown,
    /// Reopen the event log file (logrotate).
    ReopenEvents,
    /// Read the configuration again (SIGHUP).
    Reload,
}

/// Runs tlspeek until a `Control::Shutdown` arrives on `control`, then drains. `source`
/// says where `cfg` came from, for reloads.
pub async fn run(
    cfg: Config,
    source: crate::shared::ConfigSource,
    mut control: tokio::sync::mpsc::Receiver<Control>,
) -> Result<(), RunError> {
    // Refuse to start on what cannot be used (the upgrade CA, credentials, the admin
    // token) before binding anything.
    let metrics = Arc::new(Metrics::new(
        cfg.metrics.max_series_per_metric,
        cfg.metrics.series_idle_expiry,
    )?);
    let built = reload::build(cfg, None, &metrics).map_err(RunError::Setup)?;
    let cfg = built.cfg;
    let proxy_addr = cfg.proxy.listen;
    let admin_addr = cfg.admin.listen;
    let proxy_listener = TcpListener::bind(proxy_addr)
        .await
        .map_err(|source| RunError::Bind {
            what: "proxy.listen",
            addr: proxy_addr,
            source,
        })?;
    let transparent_listener = match cfg.transparent_listen {
        Some(addr) => Some(bind_transparent(addr, cfg.transparent_tproxy)?),
        None => None,
    };
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .map_err(|source| RunError::Bind {
            what: "admin.listen",
            addr: admin_addr,
            source,
        })?;
    let events = EventLog::start(&cfg.events, metrics.clone()).map_err(RunError::Events)?;
    let inventory = Inventory::start(&cfg.inventory, metrics.clone()).map_err(RunError::Events)?;
    let dns = cfg
        .dns
        .reverse_lookup
        .then(|| ReverseDns::new(cfg.dns.cache_ttl, metrics.clone()));
    let (reload_tx, mut reload_rx) =
        tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<ReloadResult>>(4);
    let shared = Arc::new(Shared {
        reload_requests: reload_tx,
        inventory,
        dns,
        watched_addresses: Default::default(),
        watched_changed: tokio::sync::Notify::new(),
        upgrader: ArcSwapOption::new(built.upgrader),
        auth: ArcSwapOption::new(built.auth),
        admin_token: ArcSwapOption::new(built.admin_token),
        source,
        reload_lock: tokio::sync::Mutex::new(()),
        limits: Limits::new(
            cfg.proxy.max_connections,
            cfg.proxy.max_connections_per_source,
        ),
        tunnels: Default::default(),
        config: ArcSwap::from_pointee(cfg),
        metrics: metrics.clone(),
        events,
        next_id: AtomicU64::new(1),
        tracker: TaskTracker::new(),
        hard_stop: CancellationToken::new(),
        draining: CancellationToken::new(),
    });

    // Names for callers without SNI are known before the first connection is accepted.
    let watched = shared.config.load().metrics.watched_destinations.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        shared.watched_addresses.refresh(&watched),
    )
    .await;
    let stop_accepting = CancellationToken::new();
    // The admin listener stays up while draining (readiness says 503, metrics still scrape).
    let stop_admin = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        shared.clone(),
        stop_admin.clone(),
    ));
    let expiry_task = tokio::spawn(expire_series(shared.clone(), stop_admin.clone()));
    let watched_task = tokio::spawn(refresh_watched(shared.clone(), stop_admin.clone()));
    let accept_task = tokio::spawn(listener::accept_loop(
        proxy_listener,
        shared.clone(),
        stop_accepting.clone(),
        Mode::Connect,
    ));
    let transparent_task = transparent_listener.map(|l| {
        tokio::spawn(listener::accept_loop(
            l,
            shared.clone(),
            stop_accepting.clone(),
            Mode::Transparent,
        ))
    });
    info!(proxy = %proxy_addr, admin = %admin_addr, transparent = ?shared.config.load().transparent_listen, version = env!("CARGO_PKG_VERSION"), "tlspeek listening");

    loop {
        tokio::select! {
            msg = control.recv() => match msg {
                Some(Control::ReopenEvents) => shared.events.reopen(),
                Some(Control::Reload) => {
                    let _ = reload::reload(&shared).await;
                }
                Some(Control::Shutdown) | None => break,
            },
            Some(reply) = reload_rx.recv() => {
                let _ = reply.send(reload::reload(&shared).await);
            }
        }
    }

    let grace = shared.config.load().proxy.shutdown_grace;
    let open = shared.tracker.len();
    info!(open_connections = open, grace = ?grace, "shutting down: no new connections, draining");
    shared.draining.cancel();
    stop_accepting.cancel();
    let _ = accept_task.await;
    if let Some(t) = transparent_task {
        let _ = t.await;
    }
    shared.tracker.close();
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open_connections = shared.tracker.len(),
            "shutdown grace over: closing open tunnels"
        );
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.tracker.wait()).await;
    }
    stop_admin.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), admin_task).await;
    let _ = expiry_task.await;
    watched_task.abort();
    let events_shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || events_shared.events.close(Duration::from_secs(5)))
        .await;
    info!("tlspeek stopped");
    Ok(())
}

/// The transparent listener; with TPROXY it needs IP_TRANSPARENT (CAP_NET_ADMIN).
fn bind_transparent(addr: SocketAddr, tproxy: bool) -> Result<TcpListener, RunError> {
    let bind = |source: std::io::Error| RunError::Bind {
        what: "transparent.listen",
        addr,
        source,
    };
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(bind)?;
    sock.set_reuse_address(true).map_err(bind)?;
    if tproxy {
        #[cfg(target_os = "linux")]
        sock.set_ip_transparent_v4(true).map_err(bind)?;
    }
    sock.set_nonblocking(true).map_err(bind)?;
    sock.bind(&addr.into()).map_err(bind)?;
    sock.listen(1024).map_err(bind)?;
    TcpListener::from_std(sock.into()).map_err(bind)
}

/// Keeps the watched-address map fresh: at start, every few minutes, and after a reload.
async fn refresh_watched(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(crate::dns::WATCHED_REFRESH) => {}
            _ = shared.watched_changed.notified() => {}
        }
        let patterns = shared.config.load().metrics.watched_destinations.clone();
        shared.watched_addresses.refresh(&patterns).await;
    }
}

/// Drops idle metric series once a minute.
async fn expire_series(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let n = shared.metrics.expire_idle_series(std::time::Instant::now());
                if n > 0 {
                    info!(series = n, "dropped idle metric series");
                }
            }
        }
    }
}
