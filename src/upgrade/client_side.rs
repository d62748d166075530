//! The legacy-facing TLS server: OpenSSL (rustls does not and will not speak TLS 1.0/1.1 or
//! CBC/3DES), at security level 0 so TLS 1.0 and SHA-1 work, with anonymous and NULL suites
//! excluded. One context for all connections; each connection sets its minted leaf and the
//! ALPN protocol the upstream chose.

use std::collections::HashSet;

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    AlpnError, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslVersion,
};
use openssl::x509::X509;

use crate::hello::{ClientHelloSummary, HelloFormat};

pub struct Acceptor {
    ctx: SslContext,
    alpn_index: Index<Ssl, Option<Vec<u8>>>,
}

impl Acceptor {
    pub fn new() -> Result<Acceptor, ErrorStack> {
        let alpn_index = Ssl::new_ex_index::<Option<Vec<u8>>>()?;
        let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
        b.set_security_level(0);
        b.set_min_proto_version(Some(SslVersion::TLS1))?;
        b.set_cipher_list("ALL:!aNULL:!eNULL:@SECLEVEL=0")?;
        b.set_options(SslOptions::NO_COMPRESSION | SslOptions::NO_TICKET);
        let idx = alpn_index;
        b.set_alpn_select_callback(move |ssl, client_protos| {
            // Give the client exactly what the upstream chose, if the client offered it.
            let chosen = ssl
                .ex_data(idx)
                .and_then(|c| c.as_deref())
                .ok_or(AlpnError::NOACK)?;
            let mut rest = client_protos;
            while let Some((&len, tail)) = rest.split_first() {
                let (p, after) = tail.split_at(usize::from(len).min(tail.len()));
                if p == chosen {
                    return Ok(p);
                }
                rest = after;
            }
            Err(AlpnError::NOACK)
        });
        Ok(Acceptor {
            ctx: b.build(),
            alpn_index,
        })
    }

    /// Cipher suites of `hello` this OpenSSL can negotiate (anonymous and NULL left out).
    pub fn usable_suites(&self, hello: &ClientHelloSummary) -> Result<HashSet<u16>, ErrorStack> {
        let ssl = Ssl::new(&self.ctx)?;
        let sslv2 = hello.format == HelloFormat::Sslv2;
        let mut bytes = Vec::with_capacity(hello.cipher_suites.len() * 3);
        for &c in &hello.cipher_suites {
            if sslv2 {
                bytes.extend_from_slice(&c.to_be_bytes()[1..]);
            } else {
                bytes.extend_from_slice(&(c as u16).to_be_bytes());
            }
        }
        let lists = ssl.bytes_to_cipher_list(&bytes, sslv2)?;
        Ok(lists
            .suites
            .iter()
            .filter(|c| {
                let n = c.standard_name().unwrap_or(c.name());
                !n.contains("anon") && !n.contains("NULL")
            })
            .map(|c| u16::from_be_bytes(c.protocol_id()))
            .collect())
    }

    /// Why this client cannot be terminated here, if it cannot.
    pub fn unsupported(&self, hello: &ClientHelloSummary) -> Option<String> {
        if hello.max_version() < 0x0301 {
            return Some(format!(
                "the client offers at most {}; this OpenSSL speaks TLS 1.0 and later only",
                crate::hello::version_name(hello.max_version())
            ));
        }
        match self.usable_suites(hello) {
            Ok(s) if s.is_empty() => Some(format!(
                "the client offers no cipher suite this OpenSSL supports ({} offered{}); Debian's OpenSSL has no 3DES",
                hello.cipher_suites.len(),
                if hello.offers_3des() {
                    ", 3DES among them"
                } else {
                    ""
                }
            )),
            Ok(_) => None,
            Err(e) => Some(format!("cannot check the client's suites: {e}")),
        }
    }

    /// An `Ssl` for one connection: the leaf for its name, and the ALPN to answer.
    pub fn ssl(
        &self,
        leaf: &X509,
        key: &PKey<Private>,
        ca: &X509,
        alpn: Option<Vec<u8>>,
    ) -> Result<Ssl, ErrorStack> {
        let mut ssl = Ssl::new(&self.ctx)?;
        ssl.set_certificate(leaf)?;
        ssl.set_private_key(key)?;
        ssl.add_chain_cert(ca.clone())?;
        ssl.set_ex_data(self.alpn_index, alpn);
        Ok(ssl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hello::{Detection, detect_client_hello};

    fn fixture(name: &str) -> ClientHelloSummary {
        let path = format!("{}/tests/fixtures/{name}.bin", env!("CARGO_MANIFEST_DIR"));
        match detect_client_hello(&std::fs::read(path).unwrap(), 1 << 16) {
            Detection::Hello(h) => *h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn three_des_only_clients_cannot_be_terminated_here() {
        let a = Acceptor::new().unwrap();
        assert!(a.unsupported(&fixture("curl_tls10")).is_none());
        assert!(
            a.usable_suites(&fixture("curl_tls10"))
                .unwrap()
                .contains(&0x002f)
        );
        let why = a.unsupported(&fixture("gnutls_3des")).unwrap();
        assert!(why.contains("3DES"), "{why}");
    }
}
