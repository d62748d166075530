//! Calls to a retired endpoint (`[[deprecations]]`): counted in
//! `tlspeek_deprecated_endpoint_connections_total` and logged with the entry's date, error
//! and replacement. Entries without paths are judged at the ClientHello; entries with
//! paths where a request is seen (upgrade mode, plain HTTP).

use tracing::info;

use crate::config::Deprecation;
use crate::telemetry::{Metrics, Who};

/// Counts and logs one call to `d`'s endpoint.
pub fn called(metrics: &Metrics, who: &Who<'_>, d: &Deprecation, path: Option<&str>, legacy: bool) {
    metrics.deprecated_endpoint(who, legacy);
    info!(
        destination = %who.destination,
        path,
        retired = %d.date,
        error = %d.error,
        replacement = %d.replacement,
        "a caller of a retired endpoint"
    );
}

/// The path of a request as the event line has it (`METHOD /path`, no query).
pub fn request_path(request: &str) -> Option<&str> {
    request
        .split_once(' ')
        .map(|(_, path)| path)
        .filter(|p| p.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_of_a_request_line() {
        assert_eq!(
            request_path("GET /contoso.com/users"),
            Some("/contoso.com/users")
        );
        assert_eq!(request_path("POST /"), Some("/"));
        assert_eq!(request_path("GET"), None);
        assert_eq!(request_path("CONNECT host:443"), None);
    }
}
