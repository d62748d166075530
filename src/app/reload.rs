//! Hot reload (SIGHUP, `POST /-/reload`): the new configuration is read and validated, and
//! everything built from it (upgrade CA, credentials, admin token) is built, **before**
//! anything changes; any error leaves the running configuration in force, is logged and is
//! counted. On success the parts are swapped for new connections (each connection keeps
//! the snapshot it took at accept), the connection limits are resized in place (open
//! connections keep their slots), and open tunnels carry on. Settings bound at start-up
//! (listen addresses, event and inventory files, metric limits) are reported as needing a
//! restart.

use std::sync::Arc;

use crate::config::Config;
use crate::telemetry::Metrics;
use crate::upgrade::Upgrader;

use crate::access::auth::{Auth, FailureLog};
use crate::shared::{BuildError, ReloadResult, Shared};

/// What one configuration builds, swapped as a whole.
pub struct Built {
    pub cfg: Config,
    pub upgrader: Option<Arc<Upgrader>>,
    pub auth: Option<Arc<Auth>>,
    pub admin_token: Option<Arc<String>>,
}

/// Builds everything `cfg` needs. `previous` lets unchanged parts be reused (the upgrade
/// CA's leaf cache) and carries state that must survive (authentication failure counts).
pub fn build(
    cfg: Config,
    previous: Option<&Shared>,
    metrics: &Metrics,
) -> Result<Built, BuildError> {
    let upgrader = match previous {
        Some(p) if p.config.load().upgrade == cfg.upgrade => p.upgrader.load_full(),
        _ => Upgrader::from_config(&cfg.upgrade)?,
    };
    let failures = previous
        .and_then(|p| p.auth.load_full())
        .map(|a| a.failures())
        .unwrap_or_else(|| Arc::new(FailureLog::default()));
    let auth = match &cfg.auth.credentials_file {
        Some(path) => Some(Arc::new(Auth::load(
            path,
            cfg.auth.exempt_sources.clone(),
            failures,
            metrics.auth_password_hashes.clone(),
        )?)),
        None => None,
    };
    let admin_token = match &cfg.admin.token_file {
        Some(path) => Some(Arc::new(crate::secrets::read_token_file(path)?)),
        None => None,
    };
    // Read again at each connection to the database; checked here so that `check-config`
    // and a reload judge it as `run` does.
    if let Some(path) = &cfg.inventory.password_file {
        crate::secrets::read_secret_file("inventory.password_file", path)?;
    }
    Ok(Built {
        cfg,
        upgrader,
        auth,
        admin_token,
    })
}

/// Keys whose change needs a restart to take effect.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.proxy.listen != new.proxy.listen {
        v.push("proxy.listen");
    }
    if old.admin.listen != new.admin.listen {
        v.push("admin.listen");
    }
    if old.transparent_listen != new.transparent_listen {
        v.push("transparent.listen");
    }
    if old.events != new.events {
        v.push("events.path");
    }
    if old.inventory != new.inventory {
        v.push("inventory");
    }
    if old.metrics.max_series_per_metric != new.metrics.max_series_per_metric
        || old.metrics.series_idle_expiry != new.metrics.series_idle_expiry
    {
        v.push("metrics.max_series_per_metric/series_idle_expiry");
    }
    if old.dns != new.dns {
        v.push("dns");
    }
    v
}

/// Reloads from `shared.source`. Returns the keys that need a restart, or the error that
/// kept the old configuration in force.
pub async fn reload(shared: &Arc<Shared>) -> ReloadResult {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let s = shared.clone();
    let built = tokio::task::spawn_blocking(move || {
        let cfg = Config::load_with_overrides(s.source.path.as_deref(), &s.source.overrides)?;
        build(cfg, Some(&s), &s.metrics)
    })
    .await
    .map_err(BuildError::from)
    .and_then(|r| r);
    let m = &shared.metrics;
    match built {
        Err(e) => {
            m.config_reloads.with_label_values(&["failure"]).inc();
            tracing::error!(error = %e, "configuration reload failed; the running configuration stays in force");
            Err(e)
        }
        Ok(b) => {
            let old = shared.config.load_full();
            let restart = restart_needed(&old, &b.cfg);
            shared.limits.resize(
                b.cfg.proxy.max_connections,
                b.cfg.proxy.max_connections_per_source,
            );
            shared.upgrader.store(b.upgrader);
            shared.auth.store(b.auth);
            shared.admin_token.store(b.admin_token);
            crate::net::splice::zero_copy::configure(b.cfg.proxy.zero_copy);
            shared.config.store(Arc::new(b.cfg));
            shared.watched_changed.notify_one();
            m.config_reloads.with_label_values(&["success"]).inc();
            if restart.is_empty() {
                tracing::info!("configuration reloaded");
            } else {
                tracing::warn!(needs_restart = ?restart, "configuration reloaded; these settings take effect only after a restart");
            }
            Ok(restart)
        }
    }
}
