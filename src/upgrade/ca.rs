//! The local CA of upgrade mode: `tlspeek ca init`, loading (refusing a key others can
//! read), and minting leaf certificates.
//!
//! Legacy clients often offer only `TLS_RSA_*` suites, so everything is RSA: an RSA-2048 CA
//! and one RSA-2048 leaf key made at start-up, leaf certificates signed with SHA-256 per
//! name and cached (bounded LRU) so a burst to one host signs once. By default the CA
//! carries X.509 name constraints limiting it to the watched identity domains, so a stolen
//! key cannot impersonate the rest of the internet; a leaf for a name outside the CA's
//! constraints is never minted.

use std::fs::OpenOptions;
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};
use tokio::sync::OnceCell;

use crate::names::HostName;

/// The identity domains a new CA may sign for, unless `ca init --permit` says otherwise:
/// the registrable domains of the default watched destinations.
pub const DEFAULT_PERMITTED: &[&str] = &[
    "microsoftonline.com",
    "microsoft.com",
    "windows.net",
    "microsoftazuread-sso.com",
    "microsoftonline.us",
    "microsoft.us",
    "chinacloudapi.cn",
];

/// Name-constraint subtrees excluding every IPv4 and IPv6 address.
const EXCLUDED_IP_SUBTREES: &[&str] = &["excluded;IP:0.0.0.0/0.0.0.0", "excluded;IP:::/::"];

/// A leaf is valid from a day before minting (clock skew of old hosts) for this long.
const LEAF_VALIDITY_DAYS: u32 = 30;
/// A cached leaf is minted again after this long (well within its validity).
const LEAF_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_CACHE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0} exists already; tlspeek ca init never overwrites a CA (move it away first)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    KeyFile(#[from] crate::secrets::KeyFileError),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{0:?} is not a host name a CA can be limited to")]
    BadPermit(String),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

fn name_builder(cn: &str) -> Result<openssl::x509::X509Name, openssl::error::ErrorStack> {
    let mut n = X509NameBuilder::new()?;
    n.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    Ok(n.build())
}

fn serial(b: &mut X509Builder) -> Result<(), openssl::error::ErrorStack> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let s = bn.to_asn1_integer()?;
    b.set_serial_number(&s)
}

/// Writes `ca.crt` and `ca.key` (mode 0600) into `out`; refuses to overwrite either.
pub fn init(out: &Path, permit: &[String], days: u32) -> Result<(PathBuf, PathBuf), CaError> {
    let crt_path = out.join("ca.crt");
    let key_path = out.join("ca.key");
    for p in [&crt_path, &key_path] {
        if p.exists() {
            return Err(CaError::Exists(p.clone()));
        }
    }
    for d in permit {
        if crate::names::HostName::parse(d).is_none() {
            return Err(CaError::BadPermit(d.clone()));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| CaError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let cn = format!("tlspeek upgrade CA ({})", host.trim());
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    serial(&mut b)?;
    let name = name_builder(&cn)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    b.set_not_after(Asn1Time::days_from_now(days)?.as_ref())?;
    b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    // Name constraints: DNS names limited to `permit` (when given), and no IP address
    // at all (a leaf with an IP SAN must not verify). Extended key usage: server
    // authentication only, so a leaf for client authentication or e-mail (S/MIME) does not
    // chain to this CA either.
    let mut subtrees: Vec<String> = permit
        .iter()
        .map(|d| format!("permitted;DNS:{}", d.to_ascii_lowercase()))
        .collect();
    subtrees.extend(EXCLUDED_IP_SUBTREES.iter().map(|s| s.to_string()));
    let value = format!("critical,{}", subtrees.join(","));
    // openssl has no builder for nameConstraints; the config-string form is stable.
    #[allow(deprecated)]
    let ext = openssl::x509::X509Extension::new_nid(None, None, Nid::NAME_CONSTRAINTS, &value)?;
    b.append_extension(ext)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = b.build();

    let write = |path: &Path, mode: u32, bytes: &[u8]| -> Result<(), CaError> {
        let io = |source| CaError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        // create_new + mode is subject to the umask; set the mode exactly.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
    };
    write(&key_path, 0o600, &key.private_key_to_pem_pkcs8()?)?;
    write(&crt_path, 0o644, &cert.to_pem()?)?;
    Ok((crt_path, key_path))
}

/// A loaded CA, ready to mint leaves.
pub struct Ca {
    cert: X509,
    key: PKey<Private>,
    /// DNS subtrees the CA may sign for (`None`: no name constraints).
    permitted: Option<Vec<String>>,
    excluded: Vec<String>,
    leaf_key: PKey<Private>,
    leaves: Mutex<lru::LruCache<String, Arc<OnceCell<Leaf>>>>,
}

#[derive(Clone)]
pub struct Leaf {
    pub cert: X509,
    minted: Instant,
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `name` is inside the DNS subtree `base` (RFC 5280: the domain and every name
/// below it).
/// `name` and `base` are lowercase (host names are; the bases are lowercased at load).
fn within(name: &str, base: &str) -> bool {
    let base = base.trim_start_matches('.');
    name == base || name.strip_suffix(base).is_some_and(|p| p.ends_with('.'))
}

/// What a CA made by an older `ca init` (or by hand) lacks of today's limits.
fn older_ca_weaknesses(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<&'static str> {
    use x509_parser::extensions::GeneralName;
    let mut out = Vec::new();
    let (mut v4, mut v6) = (false, false);
    if let Ok(Some(nc)) = cert.name_constraints() {
        for s in nc.value.excluded_subtrees.iter().flatten() {
            if let GeneralName::IPAddress(b) = s.base {
                // address followed by mask, all zero: the whole address family.
                v4 |= b.len() == 8 && b.iter().all(|&x| x == 0);
                v6 |= b.len() == 32 && b.iter().all(|&x| x == 0);
            }
        }
    }
    if !(v4 && v6) {
        out.push(
            "its name constraints do not exclude IP addresses (a leaf with an IP SAN would verify)",
        );
    }
    let server_auth_only = cert.extended_key_usage().ok().flatten().is_some_and(|e| {
        let e = e.value;
        let others = [
            e.any,
            e.client_auth,
            e.email_protection,
            e.code_signing,
            e.time_stamping,
            e.ocsp_signing,
        ];
        e.server_auth && !others.contains(&true) && e.other.is_empty()
    });
    if !server_auth_only {
        out.push("it is not limited to the serverAuth extended key usage (client-auth or S/MIME leaves would verify)");
    }
    out
}

impl Ca {
    /// Loads the CA certificate and key; the key must be readable by its owner only, and
    /// the certificate must be a CA whose key matches.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, CaError> {
        crate::secrets::check_private_key_file(key_path)?;
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let pem = read(cert_path)?;
        let cert = X509::from_pem(&pem)
            .map_err(|e| invalid(cert_path, format!("not a PEM certificate: {e}")))?;
        let key = PKey::private_key_from_pem(&read(key_path)?)
            .map_err(|e| invalid(key_path, format!("not a PEM private key: {e}")))?;
        if !cert.public_key()?.public_eq(&key) {
            return Err(invalid(
                key_path,
                "does not belong to upgrade.ca_cert".into(),
            ));
        }
        let der = cert.to_der()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| invalid(cert_path, format!("cannot parse: {e}")))?;
        let is_ca = parsed
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(invalid(
                cert_path,
                "is not a CA certificate (basicConstraints CA:TRUE)".into(),
            ));
        }
        for weakness in older_ca_weaknesses(&parsed) {
            tracing::warn!(
                ca_cert = %cert_path.display(),
                weakness,
                "the upgrade CA predates tlspeek's current limits; run `tlspeek ca init` again (and deploy the new ca.crt) to get them"
            );
        }
        let (mut permitted, mut excluded) = (None, Vec::new());
        if let Ok(Some(nc)) = parsed.name_constraints() {
            let dns = |subtrees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
                subtrees
                    .iter()
                    .flatten()
                    .filter_map(|s| match s.base {
                        x509_parser::extensions::GeneralName::DNSName(d) => {
                            Some(d.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            };
            if nc.value.permitted_subtrees.is_some() {
                permitted = Some(dns(&nc.value.permitted_subtrees));
            }
            excluded = dns(&nc.value.excluded_subtrees);
        }
        let leaf_key = PKey::from_rsa(Rsa::generate(2048)?)?;
        Ok(Ca {
            cert,
            key,
            permitted,
            excluded,
            leaf_key,
            leaves: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(LEAF_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// May this CA sign for `name` (its name constraints)?
    pub fn permits(&self, name: &HostName) -> bool {
        let name = name.as_str();
        if self.excluded.iter().any(|e| within(name, e)) {
            return false;
        }
        self.permitted
            .as_ref()
            .is_none_or(|p| p.iter().any(|d| within(name, d)))
    }

    pub fn leaf_key(&self) -> &PKey<Private> {
        &self.leaf_key
    }

    pub fn cert(&self) -> &X509 {
        &self.cert
    }

    /// Signs a leaf for `name` (SHA-256, SAN = name, serverAuth).
    pub fn mint(&self, name: &str) -> Result<X509, CaError> {
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        serial(&mut b)?;
        let subject = name_builder(name)?;
        b.set_subject_name(&subject)?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.set_pubkey(&self.leaf_key)?;
        let now = crate::clock::unix_now();
        b.set_not_before(Asn1Time::from_unix(now - 86_400)?.as_ref())?;
        b.set_not_after(Asn1Time::days_from_now(LEAF_VALIDITY_DAYS)?.as_ref())?;
        b.append_extension(BasicConstraints::new().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()?,
        )?;
        b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        let san = SubjectAlternativeName::new()
            .dns(name)
            .build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(san)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(aki)?;
        b.sign(&self.key, MessageDigest::sha256())?;
        Ok(b.build())
    }

    /// The cached leaf for `name`, minted (once, off the async threads) when missing or old.
    pub async fn leaf(self: &Arc<Self>, name: &str) -> Result<Leaf, MintError> {
        let cell = {
            let mut cache = self.leaves.lock().map_err(|_| MintError::Poisoned)?;
            let fresh = cache
                .get(name)
                .filter(|c| c.get().is_none_or(|l| l.minted.elapsed() < LEAF_REFRESH))
                .cloned();
            match fresh {
                Some(c) => c,
                None => {
                    let c = Arc::new(OnceCell::new());
                    cache.put(name.to_string(), c.clone());
                    c
                }
            }
        };
        // A leaf already minted costs no copies: the closure runs only to mint one.
        cell.get_or_try_init(|| {
            let this = self.clone();
            let owned = name.to_string();
            async move {
                tokio::task::spawn_blocking(move || this.mint(&owned))
                    .await
                    .map_err(MintError::Task)?
                    .map(|cert| Leaf {
                        cert,
                        minted: Instant::now(),
                    })
                    .map_err(MintError::Mint)
            }
        })
        .await
        .cloned()
    }
}

/// Why a leaf could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("leaf cache poisoned")]
    Poisoned,
    #[error("{0}")]
    Task(tokio::task::JoinError),
    #[error("{0}")]
    Mint(CaError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str) -> HostName {
        HostName::parse(name).unwrap()
    }

    fn permits(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn init_writes_a_constrained_ca_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = init(dir.path(), &permits(DEFAULT_PERMITTED), 365).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            init(dir.path(), &[], 365),
            Err(CaError::Exists(_))
        ));
        let ca = Ca::load(&crt, &key).unwrap();
        assert!(ca.permits(&host("login.microsoftonline.com")));
        assert!(ca.permits(&host("microsoft.com")));
        assert!(!ca.permits(&host("example.com")));
        assert!(!ca.permits(&host("evilmicrosoft.com")));
        let leaf = ca.mint("login.microsoftonline.com").unwrap();
        assert!(leaf.verify(&ca.cert().public_key().unwrap()).unwrap());
        let text = String::from_utf8(leaf.to_text().unwrap()).unwrap();
        assert!(text.contains("DNS:login.microsoftonline.com"), "{text}");
        assert!(text.contains("sha256WithRSAEncryption"));
    }

    /// A leaf signed with the CA key as a thief would sign it: any SANs, any usage.
    fn thief_leaf(ca: &Ca, sans: &[&str], usage: &str) -> X509 {
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        serial(&mut b).unwrap();
        b.set_subject_name(&name_builder("thief").unwrap()).unwrap();
        b.set_issuer_name(ca.cert.subject_name()).unwrap();
        b.set_pubkey(&ca.leaf_key).unwrap();
        b.set_not_before(Asn1Time::days_from_now(0).unwrap().as_ref())
            .unwrap();
        b.set_not_after(Asn1Time::days_from_now(5).unwrap().as_ref())
            .unwrap();
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            match s.split_once(':') {
                Some(("IP", v)) => san.ip(v),
                Some(("email", v)) => san.email(v),
                Some(("URI", v)) => san.uri(v),
                _ => san.dns(s),
            };
        }
        let san = san.build(&b.x509v3_context(Some(&ca.cert), None)).unwrap();
        b.append_extension(san).unwrap();
        let mut eku = ExtendedKeyUsage::new();
        match usage {
            "client" => eku.client_auth(),
            "email" => eku.email_protection(),
            _ => eku.server_auth(),
        };
        b.append_extension(eku.build().unwrap()).unwrap();
        b.sign(&ca.key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    /// `openssl verify` of `leaf` against the CA file for `purpose`.
    fn verifies(dir: &Path, crt: &Path, leaf: &X509, purpose: &str) -> bool {
        let p = dir.join(format!("leaf-{}.pem", rand_name()));
        std::fs::write(&p, leaf.to_pem().unwrap()).unwrap();
        let out = std::process::Command::new("openssl")
            .arg("verify")
            .arg("-purpose")
            .arg(purpose)
            .arg("-CAfile")
            .arg(crt)
            .arg(&p)
            .output()
            .expect("openssl is on every machine");
        out.status.success()
    }

    fn rand_name() -> String {
        let mut b = [0u8; 8];
        openssl::rand::rand_bytes(&mut b).unwrap();
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn a_stolen_key_signs_no_ip_client_or_email_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = init(dir.path(), &permits(DEFAULT_PERMITTED), 30).unwrap();
        let ca = Ca::load(&crt, &key).unwrap();
        let der = ca.cert.to_der().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(older_ca_weaknesses(&parsed).is_empty());
        let d = dir.path();
        // The control: what tlspeek mints verifies as a server certificate.
        let ours = ca.mint("login.microsoftonline.com").unwrap();
        assert!(verifies(d, &crt, &ours, "sslserver"));
        let ok_dns = thief_leaf(&ca, &["login.microsoftonline.com"], "server");
        assert!(
            verifies(d, &crt, &ok_dns, "sslserver"),
            "a permitted DNS name"
        );
        // Outside the permitted names, an IP address, another usage: refused.
        let other = thief_leaf(&ca, &["www.example.com"], "server");
        assert!(!verifies(d, &crt, &other, "sslserver"));
        for ip in ["IP:203.0.113.5", "IP:10.0.0.1", "IP:2001:db8::1"] {
            let l = thief_leaf(&ca, &["login.microsoftonline.com", ip], "server");
            assert!(!verifies(d, &crt, &l, "sslserver"), "{ip}");
        }
        let client = thief_leaf(&ca, &["login.microsoftonline.com"], "client");
        assert!(!verifies(d, &crt, &client, "sslclient"));
        let smime = thief_leaf(&ca, &["email:ceo@corp.example"], "email");
        assert!(!verifies(d, &crt, &smime, "smimesign"));
    }

    #[test]
    fn an_older_ca_is_named_weak() {
        // A CA as `ca init` made it before: DNS constraints only, no extended key usage.
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        serial(&mut b).unwrap();
        let name = name_builder("old").unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(Asn1Time::days_from_now(0).unwrap().as_ref())
            .unwrap();
        b.set_not_after(Asn1Time::days_from_now(5).unwrap().as_ref())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        #[allow(deprecated)]
        let nc = openssl::x509::X509Extension::new_nid(
            None,
            None,
            Nid::NAME_CONSTRAINTS,
            "critical,permitted;DNS:microsoft.com",
        )
        .unwrap();
        b.append_extension(nc).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let der = b.build().to_der().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let w = older_ca_weaknesses(&parsed);
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = init(dir.path(), &[], 30).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Ca::load(&crt, &key).err().unwrap();
        assert!(
            e.to_string()
                .contains("readable by group or others (mode 0644)"),
            "{e}"
        );
        let unconstrained = {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            Ca::load(&crt, &key).unwrap()
        };
        assert!(
            unconstrained.permits(&host("example.com")),
            "no constraints: any name"
        );
    }

    #[test]
    fn bad_permits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(dir.path(), &permits(&["not a domain"]), 30),
            Err(CaError::BadPermit(_))
        ));
    }

    #[test]
    fn subtree_matching() {
        assert!(within("a.windows.net", "windows.net"));
        assert!(within("windows.net", ".windows.net"));
        assert!(!within("xwindows.net", "windows.net"));
    }

    #[tokio::test]
    async fn a_burst_to_one_name_signs_once() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = init(dir.path(), &[], 30).unwrap();
        let ca = Arc::new(Ca::load(&crt, &key).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let ca = ca.clone();
            tasks.push(tokio::spawn(async move {
                ca.leaf("login.microsoftonline.com").await.unwrap().cert
            }));
        }
        let mut serials = Vec::new();
        for t in tasks {
            serials.push(
                t.await
                    .unwrap()
                    .serial_number()
                    .to_bn()
                    .unwrap()
                    .to_hex_str()
                    .unwrap()
                    .to_string(),
            );
        }
        serials.dedup();
        assert_eq!(serials.len(), 1, "one signature for the burst");
    }
}
