//! How a connection failed: one typed error per direction and step, for the event line's
//! `outcome` (and so `tlspeek_connections_total{outcome}`), the log's `step`, and — before
//! the tunnel exists — the HTTP answer a CONNECT client gets.

use std::io;

use super::dial::ConnectError;
use super::parent::ParentError;
use super::refusal::{Refusal, connect_refusal, head_refusal};
use super::request::HeadError;
use crate::net::splice::{PumpError, Side};
use crate::telemetry::Outcome;
use crate::upgrade::UpgradeError;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Refused before the tunnel (source, limit, credentials, method, target, port, a
    /// bad PROXY header): answered with its HTTP status, or closed on a transparent
    /// listener.
    #[error("{}", .0.reason)]
    Refused(Refusal),
    /// The request head could not be read: too large, too slow, malformed, or the client
    /// left before it was whole.
    #[error("{0}")]
    ClientRead(HeadError),
    /// The upstream could not be reached (DNS, the deny-list, a timeout, a refusal).
    #[error("{0}")]
    UpstreamConnect(ConnectError),
    /// The parent proxy could not open the tunnel.
    #[error("{0}")]
    ParentProxy(ParentError),
    /// Writing the `200` to the client failed.
    #[error("writing to the client: {0}")]
    ClientWrite(io::Error),
    /// `on_hello_timeout = "close"`, and no whole ClientHello came in time.
    #[error("no ClientHello within hello_timeout")]
    ClientHelloTimeout,
    /// Reading from or writing to the client failed while relaying (a reset, mostly).
    #[error("client side: {0}")]
    ClientRelay(io::Error),
    /// Reading from or writing to the upstream failed while relaying.
    #[error("upstream side: {0}")]
    UpstreamRelay(io::Error),
    /// Nothing moved for `idle_timeout`.
    #[error("idle for idle_timeout")]
    IdleTimeout,
    /// Upgrade mode could not re-originate the connection.
    #[error("upgrade failed: {0}")]
    Upgrade(UpgradeError),
    /// A transparent connection whose original destination cannot be read.
    #[error("no original destination: {0}")]
    OriginalDestination(io::Error),
    /// A transparent connection whose original destination is tlspeek itself.
    #[error("redirect loop: the original destination is tlspeek itself")]
    RedirectLoop,
    /// The plain-HTTP client connection ended with an error.
    #[error("{0}")]
    HttpClient(hyper::Error),
    /// The shutdown grace ran out while the connection was open.
    #[error("shutdown grace over")]
    Shutdown,
}

impl From<PumpError> for ConnError {
    fn from(e: PumpError) -> ConnError {
        match e.culprit {
            Side::Client => ConnError::ClientRelay(e.error),
            Side::Upstream => ConnError::UpstreamRelay(e.error),
        }
    }
}

impl ConnError {
    /// The event line's and the metric's `outcome`.
    pub fn outcome(&self) -> Outcome {
        match self {
            ConnError::Refused(r) => r.outcome,
            ConnError::ClientRead(e) => match head_refusal(e) {
                Some(r) => r.outcome,
                None => match e {
                    HeadError::Io(_) => Outcome::ClientReset,
                    // Connected and closed without a byte: a port probe or a health
                    // check, not a bad request.
                    HeadError::ClosedEarly { got: 0 } => Outcome::Closed,
                    _ => Outcome::BadRequest,
                },
            },
            ConnError::UpstreamConnect(e) => connect_refusal(e).outcome,
            ConnError::ParentProxy(e) => parent_refusal(e).outcome,
            ConnError::ClientWrite(_) | ConnError::ClientRelay(_) => Outcome::ClientReset,
            ConnError::UpstreamRelay(_) => Outcome::UpstreamReset,
            ConnError::ClientHelloTimeout | ConnError::Shutdown => Outcome::Closed,
            ConnError::IdleTimeout => Outcome::IdleTimeout,
            ConnError::Upgrade(_) => Outcome::UpgradeFailed,
            ConnError::OriginalDestination(_) => Outcome::BadRequest,
            ConnError::RedirectLoop => Outcome::RefusedDestination,
            ConnError::HttpClient(e) if e.is_timeout() => Outcome::IdleTimeout,
            ConnError::HttpClient(_) => Outcome::ClientReset,
        }
    }

    /// Where it failed, for the log: the side and the step.
    pub fn step(&self) -> &'static str {
        match self {
            ConnError::Refused(_) => "admission",
            ConnError::ClientRead(_) => "client_request",
            ConnError::UpstreamConnect(_) => "upstream_connect",
            ConnError::ParentProxy(_) => "parent_connect",
            ConnError::ClientWrite(_) => "client_established",
            ConnError::ClientHelloTimeout => "client_hello",
            ConnError::ClientRelay(_) => "client_relay",
            ConnError::UpstreamRelay(_) => "upstream_relay",
            ConnError::IdleTimeout => "idle",
            ConnError::Upgrade(_) => "upgrade",
            ConnError::OriginalDestination(_) | ConnError::RedirectLoop => "original_destination",
            ConnError::HttpClient(_) => "http_client",
            ConnError::Shutdown => "shutdown",
        }
    }

    /// The HTTP answer a CONNECT client gets, when the failure comes before the `200`
    /// and the client is still there to read it.
    pub fn answer(&self) -> Option<Refusal> {
        match self {
            ConnError::Refused(r) => Some(r.clone()),
            ConnError::ClientRead(e) => head_refusal(e),
            ConnError::UpstreamConnect(e) => Some(connect_refusal(e)),
            ConnError::ParentProxy(e) => Some(parent_refusal(e)),
            _ => None,
        }
    }
}

/// A parent proxy's failure as the client's answer.
fn parent_refusal(e: &ParentError) -> Refusal {
    match e {
        ParentError::Connect(c) => connect_refusal(c),
        other => Refusal::new(
            502,
            "Bad Gateway",
            Outcome::ConnectFailed,
            other.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_its_outcome_step_and_answer() {
        let closed = ConnError::ClientRead(HeadError::ClosedEarly { got: 0 });
        assert_eq!(
            (closed.outcome(), closed.step()),
            (Outcome::Closed, "client_request")
        );
        assert!(closed.answer().is_none());
        let big = ConnError::ClientRead(HeadError::TooLarge);
        assert_eq!(big.answer().map(|r| r.status), Some(431));
        assert_eq!(big.outcome(), Outcome::BadRequest);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let e = ConnError::from(PumpError {
            culprit: Side::Upstream,
            error: reset,
        });
        assert_eq!(
            (e.outcome(), e.step()),
            (Outcome::UpstreamReset, "upstream_relay")
        );
        let t = ConnError::UpstreamConnect(ConnectError::Timeout { tried: 1 });
        assert_eq!(t.answer().map(|r| r.status), Some(504));
        assert_eq!(t.outcome(), Outcome::ConnectTimeout);
        let p = ConnError::ParentProxy(ParentError::Refused("407".into()));
        assert_eq!(
            p.answer().map(|r| (r.status, r.outcome)),
            Some((502, Outcome::ConnectFailed))
        );
        assert_eq!(ConnError::ClientHelloTimeout.outcome(), Outcome::Closed);
        assert!(ConnError::IdleTimeout.answer().is_none());
    }
}
