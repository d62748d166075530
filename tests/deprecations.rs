//! Retired endpoints ([[deprecations]]): a caller of one is counted per source and
//! destination, whatever TLS it speaks; a caller of a current endpoint is not. Real curl
//! through the proxy to a real TLS server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use common::*;
use std::time::Duration;

#[test]
fn callers_of_retired_endpoints_are_counted_and_watched() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    // A user's own entry is added to the shipped ones.
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        "[[deprecations]]\nhosts = [\"legacy-sts.corp.example\"]\ndate = \"2026-06-30\"\n\
         error = \"WS-Trust 2005 is off\"\nreplacement = \"login.microsoftonline.com\"\n",
    );
    // Azure AD Graph, retired (shipped entry), with TLS 1.3: retired is not about TLS.
    assert_eq!(
        curl_via(t.proxy_port, up, "graph.windows.net", &[]).0,
        "200"
    );
    // The user's entry, with a legacy client; then a current endpoint.
    let mut legacy = vec!["--tlsv1.0"];
    legacy.extend_from_slice(TLS10_ONLY);
    assert_eq!(
        curl_via(t.proxy_port, up, "legacy-sts.corp.example", &legacy).0,
        "200"
    );
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &[]).0, "200");
    t.wait_metric(
        "tlspeek_client_hellos_total",
        &[],
        Duration::from_secs(10),
        |v| v >= 3.0,
    );
    let counted = |destination: &str| {
        t.metric(
            "tlspeek_deprecated_endpoint_connections_total",
            &[("source", "127.0.0.1"), ("destination", destination)],
        )
    };
    assert_eq!(counted("graph.windows.net"), 1.0);
    // The user's host is watched implicitly: its own label, not "other".
    assert_eq!(counted("legacy-sts.corp.example"), 1.0);
    assert_eq!(counted(LOGIN), 0.0);
    assert_eq!(
        t.metric("tlspeek_deprecated_endpoint_connections_total", &[]),
        2.0
    );
    assert!(
        t.stderr().contains("a caller of a retired endpoint"),
        "{}",
        t.stderr()
    );
}
