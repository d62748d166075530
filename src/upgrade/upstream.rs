//! The upstream side of upgrade mode: rustls, TLS 1.2 and 1.3 only, the certificate always
//! verified for the connection's name against the platform's roots (webpki-roots when the
//! platform has none) plus `upstream_extra_ca`. Verification is never turned off. An
//! upstream that asks for a client certificate is refused: the legacy client's certificate
//! cannot be relayed, so such hosts (device sign-in, certauth.*) must not be upgraded.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("upgrade.upstream_extra_ca {path}: {reason}")]
    ExtraCa { path: String, reason: String },
    #[error("no trusted roots for upstream verification")]
    NoRoots,
}

/// Remembers whether the server asked for a client certificate (and offers none).
#[derive(Debug, Default)]
pub struct ClientCertProbe(AtomicBool);

impl ClientCertProbe {
    pub fn asked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl ResolvesClientCert for ClientCertProbe {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

pub struct Upstream {
    roots: Arc<RootCertStore>,
}

impl Upstream {
    pub fn new(extra_ca: Option<&Path>) -> Result<Upstream, UpstreamSetupError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if let Some(path) = extra_ca {
            let shown = path.display().to_string();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| UpstreamSetupError::ExtraCa {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| UpstreamSetupError::ExtraCa {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(UpstreamSetupError::ExtraCa {
                    path: shown,
                    reason: "no certificate in the file".into(),
                });
            }
            for c in certs {
                roots.add(c).map_err(|e| UpstreamSetupError::ExtraCa {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        if roots.is_empty() {
            return Err(UpstreamSetupError::NoRoots);
        }
        Ok(Upstream {
            roots: Arc::new(roots),
        })
    }

    /// A client config for one connection: the client's ALPN list, and a fresh probe for
    /// client-certificate requests.
    pub fn config(&self, alpn: &[String]) -> (Arc<ClientConfig>, Arc<ClientCertProbe>) {
        let probe = Arc::new(ClientCertProbe::default());
        let mut c = ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(probe.clone());
        c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        (Arc::new(c), probe)
    }

    pub fn server_name(name: &str) -> Option<ServerName<'static>> {
        ServerName::try_from(name.to_string()).ok()
    }
}
