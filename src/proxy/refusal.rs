//! A refusal before the tunnel exists: its HTTP status, the reason the client reads, the
//! outcome it counts as, and how it is answered (written within a limit, then a lingering
//! close so that the client reads it).

use std::net::IpAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::info;

use super::dial::ConnectError;
use super::request::{self, HeadError};
use crate::access::auth::AuthRefusal;
use crate::access::limits::LimitHit;
use crate::net::{lingering_close, write_all_within};
use crate::telemetry::Outcome;

/// Writing a refusal (or the 200) to a client gets at most this long.
pub const RESPONSE_WRITE_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: u16,
    pub phrase: &'static str,
    pub reason: String,
    pub outcome: Outcome,
    /// Extra response header lines (`Name: value`), e.g. `Allow` with a 405.
    pub headers: Vec<&'static str>,
}

impl Refusal {
    pub fn new(
        status: u16,
        phrase: &'static str,
        outcome: Outcome,
        reason: impl Into<String>,
    ) -> Refusal {
        Refusal {
            status,
            phrase,
            reason: reason.into(),
            outcome,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, line: &'static str) -> Refusal {
        self.headers.push(line);
        self
    }

    pub fn bad_request(reason: impl Into<String>) -> Refusal {
        Refusal::new(400, "Bad Request", Outcome::BadRequest, reason)
    }

    /// Proxy authentication's 407/429, counted in `tlspeek_auth_failures_total{reason}`:
    /// the one mapping for CONNECT and every plain-HTTP request.
    pub fn auth(r: AuthRefusal, failures: &prometheus::IntCounterVec) -> Refusal {
        failures.with_label_values(&[r.metric_reason]).inc();
        Refusal::new(r.status, r.phrase, Outcome::AuthRequired, r.reason).with_header(r.header)
    }

    /// The answer to a source outside `allowed_sources`.
    pub fn source(ip: IpAddr) -> Refusal {
        Refusal::new(
            403,
            "Forbidden",
            Outcome::RefusedSource,
            format!(
                "source {} is not allowed to use this proxy",
                ip.to_canonical()
            ),
        )
    }

    pub fn limit(hit: LimitHit) -> Refusal {
        let reason = match hit {
            LimitHit::Global => "too many connections (max_connections)",
            LimitHit::PerSource => {
                "too many connections from this source (max_connections_per_source)"
            }
        };
        Refusal::new(503, "Service Unavailable", Outcome::RefusedLimit, reason)
    }

    /// Anything but CONNECT (absolute-form http:// goes to the forwarder before this).
    pub fn method(method: &str) -> Refusal {
        Refusal::new(
            405,
            "Method Not Allowed",
            Outcome::BadRequest,
            format!(
                "method {} is not supported here; use CONNECT host:port",
                sanitize(method)
            ),
        )
        .with_header("Allow: CONNECT")
    }

    pub fn target(why: impl std::fmt::Display) -> Refusal {
        Refusal::bad_request(format!("bad CONNECT target: {why}"))
    }

    pub fn port(port: u16) -> Refusal {
        Refusal::new(
            403,
            "Forbidden",
            Outcome::RefusedPort,
            format!("port {port} is not allowed"),
        )
    }

    /// Answers the refusal, then closes so that the client reads the answer.
    pub async fn answer(&self, client: &TcpStream) {
        info!(
            outcome = self.outcome.as_str(),
            status = self.status,
            reason = %self.reason,
            "refused"
        );
        let resp = request::refusal_response(self.status, self.phrase, &self.reason, &self.headers);
        if write_all_within(client, &resp, RESPONSE_WRITE_LIMIT)
            .await
            .is_err()
        {
            return;
        }
        lingering_close(client).await;
    }
}

/// The answer to a request head that could not be read, if the client is still there.
pub fn head_refusal(e: &HeadError) -> Option<Refusal> {
    let r = match e {
        HeadError::TooLarge => Refusal::new(
            431,
            "Request Header Fields Too Large",
            Outcome::BadRequest,
            e.to_string(),
        ),
        HeadError::Timeout => {
            Refusal::new(408, "Request Timeout", Outcome::BadRequest, e.to_string())
        }
        HeadError::Malformed(_) => {
            Refusal::new(400, "Bad Request", Outcome::BadRequest, e.to_string())
        }
        HeadError::ClosedEarly { .. } | HeadError::Io(_) => return None,
    };
    Some(r)
}

/// The answer to an upstream that could not be reached.
pub fn connect_refusal(e: &ConnectError) -> Refusal {
    match e {
        ConnectError::Dns { .. } => {
            Refusal::new(502, "Bad Gateway", Outcome::DnsFailed, e.to_string())
        }
        ConnectError::Denied { .. } => {
            Refusal::new(403, "Forbidden", Outcome::RefusedDestination, e.to_string())
        }
        ConnectError::Timeout { .. } => Refusal::new(
            504,
            "Gateway Timeout",
            Outcome::ConnectTimeout,
            e.to_string(),
        ),
        ConnectError::Failed { .. } => {
            Refusal::new(502, "Bad Gateway", Outcome::ConnectFailed, e.to_string())
        }
    }
}

/// A method name for a log or a response body: printable ASCII only, capped.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_status_and_outcome() {
        let r = head_refusal(&HeadError::TooLarge).unwrap();
        assert_eq!((r.status, r.outcome), (431, Outcome::BadRequest));
        assert_eq!(head_refusal(&HeadError::Timeout).unwrap().status, 408);
        assert!(head_refusal(&HeadError::ClosedEarly { got: 0 }).is_none());
        let dns = ConnectError::Dns {
            host: "x".into(),
            reason: "nx".into(),
        };
        assert_eq!(connect_refusal(&dns).outcome, Outcome::DnsFailed);
        assert_eq!(
            connect_refusal(&ConnectError::Timeout { tried: 2 }).status,
            504
        );
        assert_eq!(
            Refusal::source("::ffff:8.8.8.8".parse().unwrap()).reason,
            "source 8.8.8.8 is not allowed to use this proxy"
        );
        assert_eq!(sanitize("GE\r\nT\u{7f}x"), "GETx");
        assert_eq!(
            Refusal::method("GE T").reason,
            "method GET is not supported here; use CONNECT host:port"
        );
    }
}
