//! Sends one ClientHello made by rustls (this crate's version, its default provider) to
//! 127.0.0.1:PORT with SNI login.microsoftonline.com, for `scripts/stacks/capture.sh`.
//! The handshake is expected to fail: nothing answers.
//!
//! usage: cargo run --example rustls_hello -- PORT [1.2|1.3|both]

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().ok_or("PORT")?.parse()?;
    let versions: &[&rustls::SupportedProtocolVersion] = match args.next().as_deref() {
        Some("1.2") => &[&rustls::version::TLS12],
        Some("1.3") => &[&rustls::version::TLS13],
        _ => rustls::DEFAULT_VERSIONS,
    };
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "login.microsoftonline.com".try_into()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    while conn.wants_write() {
        conn.write_tls(&mut sock)?;
    }
    sock.flush()?;
    Ok(())
}
