//! What a connection task hands to the phases it calls (the tunnel, the first flight, the
//! upgrade), and the end every connection shares: its final verdict and outcome, bytes and
//! duration into the record, `tlspeek_connections_total{mode,outcome}`, and the event line.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::authority::Authority;
use super::error::ConnError;
use super::handshake::Handshake;
use super::refusal::Refusal;
use crate::access::limits::Permit;
use crate::config::Config;
use crate::local_process::LocalProcess;
use crate::net::registry::Listed;
use crate::net::splice::TunnelStats;
use crate::shared::Shared;
use crate::telemetry::{ConnectionRecord, Mode, Outcome, SourceLabel, source_label};

/// One admitted connection, as its phases see it.
pub struct Session<'a> {
    pub shared: &'a Arc<Shared>,
    pub cfg: &'a Arc<Config>,
    pub client: &'a TcpStream,
    /// The client (behind a trusted balancer: the one its PROXY header named).
    pub peer: SocketAddr,
    pub src: SourceLabel,
    pub stats: Arc<TunnelStats>,
    pub mode: Mode,
    pub started: Instant,
    /// A caller on this host: its process (named at accept).
    pub process: Option<LocalProcess>,
}

impl<'a> Session<'a> {
    pub fn new(
        shared: &'a Arc<Shared>,
        cfg: &'a Arc<Config>,
        client: &'a TcpStream,
        peer: SocketAddr,
        mode: Mode,
        started: Instant,
    ) -> Session<'a> {
        Session {
            shared,
            cfg,
            client,
            peer,
            src: source_label(cfg, peer.ip()),
            stats: Arc::new(TunnelStats::new()),
            mode,
            started,
            process: None,
        }
    }

    /// What a task starts with: its record, empty but for who it is (and a PROXY
    /// header's error as its note), and its view of the handshake.
    pub fn start(&self, id: u64, note: Option<String>) -> (ConnectionRecord, Handshake) {
        let mut rec = ConnectionRecord::new(id, self.mode, self.peer, self.src.value.clone());
        rec.note = note;
        if let Some(p) = &self.process {
            rec.set_process(p);
        }
        (rec, Handshake::default())
    }

    /// Runs `serving` when the connection was admitted (its permit held until it ends),
    /// until it ends or the shutdown grace is over; a refusal at accept is the error.
    pub async fn admitted(
        &self,
        admission: Result<Permit, Refusal>,
        serving: Pin<&mut impl Future<Output = Result<Outcome, ConnError>>>,
    ) -> Result<Outcome, ConnError> {
        let _permit = admission.map_err(ConnError::Refused)?;
        self.until_stopped(serving).await
    }

    /// Serves until `serving` ends, or until the shutdown grace is over. Starts the
    /// source's reverse-DNS lookup (its name is read from the cache at the end).
    /// `serving` is pinned by the caller: taken by value, the connection's future would be
    /// stored twice in every idle tunnel (its argument slot and the select).
    async fn until_stopped(
        &self,
        serving: Pin<&mut impl Future<Output = Result<Outcome, ConnError>>>,
    ) -> Result<Outcome, ConnError> {
        if let Some(dns) = &self.shared.dns {
            dns.lookup_later(self.peer.ip());
        }
        tokio::select! {
            r = serving => r,
            _ = self.shared.hard_stop.cancelled() => {
                debug!("shutdown grace over: closing the tunnel");
                Err(ConnError::Shutdown)
            }
        }
    }

    /// Lists the tunnel in `/debug/tunnels` while the returned guard lives.
    pub fn list(&self, id: u64, target: &Authority) -> Listed<'a> {
        self.shared
            .tunnels
            .list(id, self.peer, target.to_string(), &self.stats)
    }

    /// The connection's end: what the server said and the final verdict, the outcome
    /// (an alert then a close is a rejection), bytes and duration into the record; the
    /// metric and the event line (unless the plain-HTTP forwarder wrote one per request).
    pub fn finish(
        &self,
        mut rec: ConnectionRecord,
        mut handshake: Handshake,
        result: Result<Outcome, ConnError>,
    ) {
        let outcome = match &result {
            Ok(o) => *o,
            Err(e) => {
                debug!(step = e.step(), error = %e, "connection failed");
                e.outcome()
            }
        };
        handshake.finish(self.shared, &mut rec, outcome);
        let outcome = outcome.after_server_alert(rec.server_alert.is_some());
        if let Some(dns) = &self.shared.dns {
            rec.source_name = dns.cached(self.peer.ip());
        }
        rec.outcome = outcome;
        rec.bytes_up = self.stats.up();
        rec.bytes_down = self.stats.down();
        rec.duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if rec.written_elsewhere {
            return;
        }
        self.shared.metrics.connection_ended(rec.mode, outcome);
        debug!(
            outcome = outcome.as_str(),
            bytes_up = rec.bytes_up,
            bytes_down = rec.bytes_down,
            duration_ms = rec.duration_ms,
            "connection ended"
        );
        self.shared.events.write(&rec);
    }
}
