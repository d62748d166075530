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
    Setup(#[from] crate::shared::BuildError),
    #[error("{0}")]
    Inventory(#[from] crate::inventory::StoreError),
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
    control: tokio::sync::mpsc::Receiver<Control>,
) -> Result<(), RunError> {
    // Refuse to start on what cannot be used (the upgrade CA, credentials, the admin
    // token) before binding anything.
    let metrics = Arc::new(Metrics::new(
        cfg.metrics.max_series_per_metric,
        cfg.metrics.series_idle_expiry,
    )?);
    let built = reload::build(cfg, None, &metrics)?;
    let listeners = Listeners::bind(&built.cfg).await?;
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let shared = build_shared(built, metrics, source, reload_tx)?;
    // Names for callers without SNI are known before the first connection is accepted.
    let watched = shared.config.load().metrics.watched_destinations.clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        shared.watched_addresses.refresh(&watched),
    )
    .await;
    // The embedded tables are read before the first connection: the first caller does
    // not wait for them, and their memory is the process's, not its first tunnels'.
    crate::hello::load_tables();
    crate::inventory::software::SoftwareDb::embedded();
    crate::net::splice::zero_copy::configure(shared.config.load().proxy.zero_copy);
    let tasks = Tasks::start(&shared, listeners);
    serve_control(&shared, control, reload_rx).await;
    tasks.shut_down(&shared).await;
    Ok(())
}

/// The listeners, bound before anything else starts.
struct Listeners {
    proxy: TcpListener,
    transparent: Option<TcpListener>,
    admin: TcpListener,
}

impl Listeners {
    async fn bind(cfg: &Config) -> Result<Listeners, RunError> {
        let bind = |what: &'static str, addr: SocketAddr| {
            move |source| RunError::Bind { what, addr, source }
        };
        let proxy = TcpListener::bind(cfg.proxy.listen)
            .await
            .map_err(bind("proxy.listen", cfg.proxy.listen))?;
        crate::net::nodelay::on_listener(&proxy);
        let transparent = match cfg.transparent_listen {
            Some(addr) => {
                let l = bind_transparent(addr, cfg.transparent_tproxy)?;
                crate::net::nodelay::on_listener(&l);
                Some(l)
            }
            None => None,
        };
        let admin = TcpListener::bind(cfg.admin.listen)
            .await
            .map_err(bind("admin.listen", cfg.admin.listen))?;
        Ok(Listeners {
            proxy,
            transparent,
            admin,
        })
    }
}

/// `Shared` from what `reload::build` made: the event log and inventory writers started,
/// reverse DNS when asked for.
fn build_shared(
    built: reload::Built,
    metrics: Arc<Metrics>,
    source: crate::shared::ConfigSource,
    reload_requests: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadResult>>,
) -> Result<Arc<Shared>, RunError> {
    let cfg = built.cfg;
    let events = EventLog::start(&cfg.events, metrics.clone()).map_err(RunError::Events)?;
    let inventory = Inventory::start(&cfg.inventory, metrics.clone())?;
    let dns = cfg
        .dns
        .reverse_lookup
        .then(|| ReverseDns::new(cfg.dns.cache_ttl, metrics.clone()));
    Ok(Arc::new(Shared {
        reload_requests,
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
        learned_agents: Default::default(),
        config: ArcSwap::from_pointee(cfg),
        metrics,
        events,
        local_processes: Default::default(),
        next_id: AtomicU64::new(1),
        tracker: TaskTracker::new(),
        hard_stop: CancellationToken::new(),
        draining: CancellationToken::new(),
    }))
}

/// Signals (reopen, reload, shutdown) and the admin's reload requests, until shutdown.
async fn serve_control(
    shared: &Arc<Shared>,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    mut reload_requests: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<ReloadResult>>,
) {
    loop {
        tokio::select! {
            msg = control.recv() => match msg {
                Some(Control::ReopenEvents) => shared.events.reopen(),
                Some(Control::Reload) => {
                    let _ = reload::reload(shared).await;
                }
                Some(Control::Shutdown) | None => return,
            },
            Some(reply) = reload_requests.recv() => {
                let _ = reply.send(reload::reload(shared).await);
            }
        }
    }
}

/// The running tasks and what stops them.
struct Tasks {
    stop_accepting: CancellationToken,
    /// The admin listener stays up while draining (readiness says 503, metrics scrape).
    stop_admin: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
    transparent: Option<tokio::task::JoinHandle<()>>,
    admin: tokio::task::JoinHandle<()>,
    expiry: tokio::task::JoinHandle<()>,
    watched: tokio::task::JoinHandle<()>,
    /// `keep_a_timer_armed`.
    timer_anchor: tokio::task::JoinHandle<()>,
}

impl Tasks {
    fn start(shared: &Arc<Shared>, l: Listeners) -> Tasks {
        // Logged before the accept loops start, so that it comes before any connection's
        // lines: the sockets are bound already (a client may be waiting in the backlog).
        {
            let cfg = shared.config.load();
            info!(proxy = %cfg.proxy.listen, admin = %cfg.admin.listen, transparent = ?cfg.transparent_listen, version = env!("CARGO_PKG_VERSION"), "tlspeek listening");
        }
        let stop_accepting = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let accept_on = |listener: TcpListener, mode: Mode| {
            tokio::spawn(listener::accept_loop(
                listener,
                shared.clone(),
                stop_accepting.clone(),
                mode,
            ))
        };
        Tasks {
            accept: accept_on(l.proxy, Mode::Connect),
            transparent: l.transparent.map(|t| accept_on(t, Mode::Transparent)),
            admin: tokio::spawn(admin::serve(l.admin, shared.clone(), stop_admin.clone())),
            expiry: tokio::spawn(expire_series(shared.clone(), stop_admin.clone())),
            watched: tokio::spawn(refresh_watched(shared.clone(), stop_admin.clone())),
            timer_anchor: tokio::spawn(keep_a_timer_armed(stop_admin.clone())),
            stop_accepting,
            stop_admin,
        }
    }

    /// Stops accepting, drains open connections for `shutdown_grace` (then closes them),
    /// stops the admin listener and the background tasks, and flushes the inventory and the
    /// event log.
    async fn shut_down(self, shared: &Arc<Shared>) {
        let grace = shared.config.load().proxy.shutdown_grace;
        let open = shared.tracker.len();
        info!(open_connections = open, grace = ?grace, "shutting down: no new connections, draining");
        shared.draining.cancel();
        self.stop_accepting.cancel();
        let _ = self.accept.await;
        if let Some(t) = self.transparent {
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
        self.stop_admin.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin).await;
        let _ = self.expiry.await;
        self.watched.abort();
        self.timer_anchor.abort();
        // Both writers are stopped and joined here, not left to the drop of `Shared`: the
        // process exits right after, and a writer thread still flushing would lose rows.
        let writers = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(inventory) = writers.inventory.as_ref() {
                inventory.close(Duration::from_secs(5));
            }
            writers.events.close(Duration::from_secs(5));
        })
        .await;
        info!("tlspeek stopped");
    }
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

/// How often [`keep_a_timer_armed`] wakes: shorter than every timeout a connection sets by
/// default (`hello_timeout` 5 s, `header_timeout` and `connect_timeout` 10 s).
const TIMER_ANCHOR: Duration = Duration::from_secs(1);

/// Keeps a timer pending that expires within [`TIMER_ANCHOR`]. Tokio's timer wakes its
/// driver (a write to its eventfd, so one more `epoll_wait`, and often a parked worker
/// woken) each time a task arms a timer due before the soonest one the driver knew of when
/// it last went to sleep, or when it knew of none. On a quiet proxy that was every
/// connection, twice (the dial's and the hello's timeouts). With a timer always due within
/// a second, a connection's timeouts land after it and wake nothing; the cost is one
/// wake-up a second.
async fn keep_a_timer_armed(stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TIMER_ANCHOR) => {}
        }
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
