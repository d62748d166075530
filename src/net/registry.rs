//! The open tunnels, for `GET /debug/tunnels` on the admin listener: who, to where, for how
//! long, how many bytes, when a byte last moved, and where each direction's pump is (its
//! path — tapping, copy, splice — and whether it waits to read or to write), with the
//! buffer and pipe pools. What an operator (or `scripts/soak.sh`'s stall detector) needs to
//! tell a stalled transfer's cause. An entry lives exactly as long as its tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::net::splice::{self, PipePoolStats, TunnelStats};

struct Entry {
    client: SocketAddr,
    target: String,
    started: Instant,
    stats: Arc<TunnelStats>,
}

/// Every open tunnel by connection id.
#[derive(Default)]
pub struct Registry {
    open: Mutex<HashMap<u64, Entry>>,
}

/// A tunnel's place in the registry; dropping it removes the tunnel.
pub struct Listed<'a> {
    registry: &'a Registry,
    id: u64,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.open.lock() {
            m.remove(&self.id);
        }
    }
}

#[derive(Serialize)]
pub struct DirectionView {
    pub bytes: u64,
    pub path: &'static str,
    pub waiting: &'static str,
}

#[derive(Serialize)]
pub struct TunnelView {
    pub id: u64,
    pub client: String,
    pub target: String,
    pub age_ms: u64,
    /// Milliseconds since a byte last moved either way.
    pub idle_ms: u64,
    pub up: DirectionView,
    pub down: DirectionView,
}

#[derive(Serialize)]
pub struct Snapshot {
    pub pipes: PipePoolStats,
    pub buffers_pooled: usize,
    pub tunnels: Vec<TunnelView>,
}

impl Registry {
    /// Lists a tunnel until the returned guard is dropped.
    pub fn list(
        &self,
        id: u64,
        client: SocketAddr,
        target: String,
        stats: &Arc<TunnelStats>,
    ) -> Listed<'_> {
        if let Ok(mut m) = self.open.lock() {
            m.insert(
                id,
                Entry {
                    client,
                    target,
                    started: Instant::now(),
                    stats: stats.clone(),
                },
            );
        }
        Listed { registry: self, id }
    }

    /// Every open tunnel, oldest first, with the pools.
    pub fn snapshot(&self) -> Snapshot {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut tunnels: Vec<TunnelView> = self
            .open
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(id, e)| TunnelView {
                        id: *id,
                        client: e.client.to_string(),
                        target: e.target.clone(),
                        age_ms: ms(e.started.elapsed()),
                        idle_ms: e.stats.idle_ms(),
                        up: DirectionView {
                            bytes: e.stats.up(),
                            path: e.stats.up_state.path(),
                            waiting: e.stats.up_state.waiting(),
                        },
                        down: DirectionView {
                            bytes: e.stats.down(),
                            path: e.stats.down_state.path(),
                            waiting: e.stats.down_state.waiting(),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        tunnels.sort_by_key(|t| std::cmp::Reverse(t.age_ms));
        Snapshot {
            pipes: splice::zero_copy::pool_stats(),
            buffers_pooled: splice::buffers_pooled(),
            tunnels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_is_listed_while_its_guard_lives() {
        let r = Registry::default();
        let stats = Arc::new(TunnelStats::new());
        stats.add_down(5);
        {
            let _listed = r.list(7, "127.0.0.1:4000".parse().unwrap(), "x:443".into(), &stats);
            let s = r.snapshot();
            assert_eq!(s.tunnels.len(), 1);
            assert_eq!(s.tunnels[0].down.bytes, 5);
            assert_eq!(s.tunnels[0].up.path, "not_started");
            assert_eq!(s.tunnels[0].client, "127.0.0.1:4000");
        }
        assert!(r.snapshot().tunnels.is_empty());
    }
}
