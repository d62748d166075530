//! The state every connection task, the admin listener and the background tasks share:
//! the configuration snapshot, metrics, event log, inventory, the swappable parts a
//! reload replaces, connection limits, the tunnel registry and the shutdown signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::auth::Auth;
use crate::access::limits::Limits;
use crate::config::{Config, Overrides};
use crate::dns::ReverseDns;
use crate::inventory::Inventory;
use crate::net::registry::Registry;
use crate::telemetry::{EventLog, Metrics};
use crate::upgrade::Upgrader;

/// Where the configuration comes from, so it can be read again.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub path: Option<std::path::PathBuf>,
    pub overrides: Overrides,
}

/// Why a configuration could not be put in force (at start, or by a reload, which then
/// keeps the old one).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Config(#[from] crate::config::LoadError),
    #[error("{0}")]
    Upgrade(#[from] crate::upgrade::SetupError),
    #[error("{0}")]
    Credentials(#[from] crate::access::auth::AuthFileError),
    #[error("{0}")]
    Secret(#[from] crate::secrets::SecretError),
    #[error("reload task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a reload answers: the keys that need a restart, or why the old configuration
/// stays in force.
pub type ReloadResult = Result<Vec<&'static str>, BuildError>;

/// State shared by every connection task.
pub struct Shared {
    /// The configuration; each connection takes one snapshot when it is accepted.
    pub config: ArcSwap<Config>,
    pub metrics: Arc<Metrics>,
    pub events: EventLog,
    /// The legacy-caller inventory (None when `[inventory] path = ""`).
    pub inventory: Option<Inventory>,
    /// Reverse DNS of sources (None unless `[dns] reverse_lookup`).
    pub dns: Option<Arc<ReverseDns>>,
    /// Addresses of the watched names, for callers without SNI.
    pub watched_addresses: crate::dns::WatchedAddresses,
    /// Wakes the watched-address refresh early (after a reload).
    pub watched_changed: tokio::sync::Notify,
    /// Upgrade mode's CA and TLS sides (None without `[upgrade] ca_cert`); swapped on reload.
    pub upgrader: ArcSwapOption<Upgrader>,
    /// Proxy authentication (None without `[auth] credentials_file`); swapped on reload.
    pub auth: ArcSwapOption<Auth>,
    /// The admin bearer token (None without `[admin] token_file`); swapped on reload.
    pub admin_token: ArcSwapOption<String>,
    /// Where the configuration came from, for reloads.
    pub source: ConfigSource,
    /// One reload at a time.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Asks the application to reload (the admin's `POST /-/reload`); the answer comes
    /// back on the oneshot.
    pub reload_requests: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<ReloadResult>>,
    pub limits: Arc<Limits>,
    /// The open tunnels (`/debug/tunnels`).
    pub tunnels: Registry,
    /// JA4 → User-Agent pairs learned in upgrade mode.
    pub learned_agents: crate::inventory::agents::Learned,
    /// Names the processes of callers on this host.
    pub local_processes: Arc<crate::local_process::LocalProcesses>,
    pub next_id: AtomicU64,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when the shutdown grace period is over: open tunnels end now.
    pub hard_stop: CancellationToken,
    /// Cancelled as soon as shutdown begins (readiness turns false).
    pub draining: CancellationToken,
}

impl Shared {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
