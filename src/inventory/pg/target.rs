//! Where a shared inventory lives: a `postgresql://` (or `postgres://`) URL, checked once
//! for what tlspeek insists on. TLS defaults to `verify-full` (the server's certificate
//! chain and name are verified; `sslrootcert=FILE` names a private CA, else the system's
//! roots); `sslmode=disable` is taken only when written. The password never sits in the
//! URL: it comes from `password_file` (mode-checked as other secrets) or `PGPASSWORD`,
//! and trust authentication needs neither.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a connection attempt may take, and how long a write may wait on the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
const STATEMENT_TIMEOUT: &str = "30s";

/// TLS to the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// `sslmode=disable`, written explicitly.
    Disable,
    /// `verify-full`: chain and name verified, against `root` or the system's roots.
    VerifyFull { root: Option<PathBuf> },
}

/// A validated database URL.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as written (it holds no password).
    pub url: String,
    config: postgres::Config,
    pub tls: Tls,
}

/// Is `s` a database URL (rather than a file path)?
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

impl Target {
    /// Checks `url`: scheme, no password in it, a known `sslmode`, the rest as libpq reads it.
    pub fn parse(url: &str) -> Result<Target, String> {
        if !is_url(url) {
            return Err("write the database as postgresql://user@host:5432/dbname".into());
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = None;
        let mut root = None;
        let mut kept = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "sslmode" => mode = Some(v.into_owned()),
                "sslrootcert" => root = Some(PathBuf::from(v.as_ref())),
                "password" => {
                    return Err(
                        "no password in the URL: put it in password_file, or PGPASSWORD".into(),
                    );
                }
                _ => kept.push((k.into_owned(), v.into_owned())),
            }
        }
        let tls = match mode.as_deref().unwrap_or("verify-full") {
            "verify-full" => Tls::VerifyFull { root },
            "disable" if root.is_none() => Tls::Disable,
            "disable" => return Err("sslrootcert with sslmode=disable: choose one".into()),
            other => {
                return Err(format!(
                    "sslmode={other} is not accepted: verify-full (the default) verifies the server; \
                     disable (written explicitly) turns TLS off"
                ));
            }
        };
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            rest.append_pair(k, v);
        }
        let rest = rest.finish();
        let plain = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{rest}")
        };
        let mut config: postgres::Config = plain
            .parse()
            .map_err(|e: postgres::Error| super::describe(&e))?;
        if config.get_password().is_some() {
            return Err("no password in the URL: put it in password_file, or PGPASSWORD".into());
        }
        if config.get_user().is_none() {
            return Err("name the database user: postgresql://USER@host/dbname".into());
        }
        if config.get_dbname().is_none() {
            return Err("name the database: postgresql://user@host/DBNAME".into());
        }
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("tlspeek");
        let options = config.get_options().unwrap_or("").to_string();
        config.options(format!("{options} -c statement_timeout={STATEMENT_TIMEOUT}").trim());
        config.ssl_mode(match tls {
            Tls::Disable => postgres::config::SslMode::Disable,
            Tls::VerifyFull { .. } => postgres::config::SslMode::Require,
        });
        Ok(Target {
            url: url.to_string(),
            config,
            tls,
        })
    }

    /// Connects with `password` (from `password_file` or `PGPASSWORD`, read by the caller).
    pub fn connect(&self, password: Option<&str>) -> Result<postgres::Client, ConnectError> {
        let mut config = self.config.clone();
        if let Some(p) = password {
            config.password(p);
        }
        match &self.tls {
            Tls::Disable => config
                .connect(postgres::NoTls)
                .map_err(ConnectError::Postgres),
            Tls::VerifyFull { root } => {
                let tls = tls_config(root.as_deref()).map_err(ConnectError::Tls)?;
                config
                    .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                    .map_err(ConnectError::Postgres)
            }
        }
    }
}

#[derive(Debug)]
pub enum ConnectError {
    Postgres(postgres::Error),
    Tls(String),
}

/// The client TLS config: `root`'s certificates alone, else the system's roots.
fn tls_config(root: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let shown = path.display();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {shown}: no certificate in the file"));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth())
}

/// The password for `url`: `password_file` when set (mode-checked, one line), else
/// `PGPASSWORD`, else none (trust or peer authentication).
pub fn password(password_file: Option<&Path>) -> Result<Option<String>, String> {
    if let Some(path) = password_file {
        let text = crate::secrets::read_secret_file("inventory.password_file", path)
            .map_err(|e| e.to_string())?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(format!(
                "inventory.password_file {}: the file is empty",
                path.display()
            ));
        }
        return Ok(Some(line));
    }
    Ok(std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_full_is_the_default_and_disable_must_be_written() {
        let t = Target::parse("postgresql://tlspeek@db.example:5432/inv").unwrap();
        assert_eq!(t.tls, Tls::VerifyFull { root: None });
        let t = Target::parse("postgres://tlspeek@db/inv?sslmode=disable").unwrap();
        assert_eq!(t.tls, Tls::Disable);
        let t = Target::parse(
            "postgresql://tlspeek@db/inv?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(
            t.tls,
            Tls::VerifyFull {
                root: Some("/etc/ca.pem".into())
            }
        );
        for weak in ["require", "prefer", "allow", "verify-ca"] {
            let e = Target::parse(&format!("postgresql://u@db/inv?sslmode={weak}")).unwrap_err();
            assert!(e.contains(weak) && e.contains("verify-full"), "{e}");
        }
    }

    #[test]
    fn passwords_users_and_databases() {
        for url in [
            "postgresql://u:secret@db/inv",
            "postgresql://u@db/inv?password=secret",
        ] {
            let e = Target::parse(url).unwrap_err();
            assert!(e.contains("password_file"), "{url}: {e}");
        }
        assert!(
            Target::parse("postgresql://db/inv")
                .unwrap_err()
                .contains("USER")
        );
        assert!(
            Target::parse("postgresql://u@db")
                .unwrap_err()
                .contains("DBNAME")
        );
        assert!(Target::parse("mysql://u@db/inv").is_err());
        assert!(Target::parse("postgresql://u@db:notaport/inv").is_err());
    }

    #[test]
    fn the_password_comes_from_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(password(Some(&p)).unwrap().as_deref(), Some("s3cret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(password(Some(&p)).unwrap_err().contains("chmod"));
    }
}
