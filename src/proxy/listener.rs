//! The accept loop: race `accept()` against shutdown; never let a transient accept error
//! end the loop (count it, and back off when out of file descriptors or memory instead of
//! spinning); admit (source allow-list, then a connection permit) before spawning, so a
//! refused client is answered at once, never queued.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use super::connection::{self, AtAccept, admit};
use crate::net::addr_text::SocketText;
use crate::shared::Shared;
use crate::telemetry::Mode;

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Errors that mean "out of a resource": wait before trying again.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Accepts on `listener` until `stop`; `mode` is `Connect` for the proxy listener and
/// `Transparent` for redirected connections.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    mode: Mode,
) {
    let mut backoff = BACKOFF_MIN;
    let listener_name = match mode {
        Mode::Transparent => "transparent",
        _ => "proxy",
    };
    let accept_errors = shared
        .metrics
        .accept_errors
        .with_label_values(&[listener_name]);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = BACKOFF_MIN;
                x
            }
            Err(e) => {
                accept_errors.inc();
                if is_resource_exhaustion(&e) {
                    if backoff == BACKOFF_MIN {
                        error!(error = %e, "cannot accept connections: out of resources; backing off");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                } else {
                    warn!(error = %e, "accept failed");
                }
                continue;
            }
        };
        let id = shared.next_id();
        let cfg = shared.config.load_full();
        // A trusted load balancer's connection is admitted after its PROXY header names
        // the real client.
        let at_accept =
            if mode == Mode::Connect && cfg.proxy.proxy_protocol_from.contains(peer.ip()) {
                AtAccept::AfterProxyHeader
            } else {
                AtAccept::Decided(admit(&shared, &cfg, peer))
            };
        let span = info_span!("conn", id, mode = mode.as_str(), src = %SocketText(peer), target = tracing::field::Empty);
        // Boxed: the task then holds a pointer, not the ~4.7 KiB connection future, which
        // Tokio would otherwise copy whole each time it moves the task's stage (spawn,
        // `Finished`, `Consumed`).
        shared.tracker.spawn(
            Box::pin(connection::handle(
                shared.clone(),
                cfg,
                stream,
                peer,
                id,
                at_accept,
                mode,
            ))
            .instrument(span),
        );
    }
}
