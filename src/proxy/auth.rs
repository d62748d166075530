//! Proxy authentication (optional): `Proxy-Authorization: Basic` checked against
//! `[auth] credentials_file`, one `user:$argon2id$...` line per user.
//!
//! Hashing is expensive on 2 cores, so it is guarded: a source with too many recent failures
//! gets 429 before any hashing; at most two checks hash at once; a verified user/password
//! pair is remembered for a few minutes (by its SHA-256, never in clear). Sources in
//! `exempt_sources` are not asked (services running as SYSTEM cannot answer a 407, and they
//! are the very callers being hunted).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::NetList;

/// Failures per source within `FAILURE_WINDOW` before 429.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a verified credential is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);
const MAX_CACHED: usize = 10_000;
/// Password checks hashing at once.
const HASHING_SLOTS: usize = 2;
/// A check waits at most this long for a hashing slot.
const HASHING_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("auth.credentials_file {path}: {reason}")]
    Bad { path: String, reason: String },
}

/// What a request's credentials amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// Allowed; the user name (None for an exempt source).
    Allowed(Option<String>),
    /// No (usable) Proxy-Authorization header: 407.
    Missing,
    /// Wrong user or password: 407, counted.
    Denied,
    /// Too many failures from this source, or no hashing slot in time: 429, no hashing.
    TooMany,
}

/// Failure counts per source; kept across reloads (a reload must not reset an attacker).
#[derive(Default)]
pub struct FailureLog(Mutex<HashMap<IpAddr, (u32, Instant)>>);

impl FailureLog {
    fn blocked(&self, ip: IpAddr) -> bool {
        let Ok(m) = self.0.lock() else { return true };
        m.get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    fn record(&self, ip: IpAddr) {
        let Ok(mut m) = self.0.lock() else { return };
        if m.len() > 100_000 {
            m.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = m.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

pub struct Auth {
    users: HashMap<String, String>,
    exempt: NetList,
    failures: Arc<FailureLog>,
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    hashing: Arc<Semaphore>,
    /// Password hashes computed (`tlspeek_auth_password_hashes_total`): a 429 must not hash.
    hashes: prometheus::IntCounter,
}

impl Auth {
    /// Reads the credentials file. `failures` carries the failure counts over from the
    /// previous configuration.
    pub fn load(
        path: &Path,
        exempt: NetList,
        failures: Arc<FailureLog>,
        hashes: prometheus::IntCounter,
    ) -> Result<Auth, AuthFileError> {
        let shown = path.display().to_string();
        let bad = |reason: String| AuthFileError::Bad {
            path: shown.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("line {}: expected user:$argon2id$...", i + 1)))?;
            PasswordHash::new(hash).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
            if user.is_empty() || users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(bad(format!(
                    "line {}: empty or duplicate user {user:?}",
                    i + 1
                )));
            }
        }
        if users.is_empty() {
            return Err(bad("no users".into()));
        }
        Ok(Auth {
            users,
            exempt,
            failures,
            cache: Mutex::new(HashMap::new()),
            hashing: Arc::new(Semaphore::new(HASHING_SLOTS)),
            hashes,
        })
    }

    pub fn failures(&self) -> Arc<FailureLog> {
        self.failures.clone()
    }

    pub async fn check(&self, ip: IpAddr, header: Option<&[u8]>) -> AuthResult {
        let ip = ip.to_canonical();
        if self.exempt.contains(ip) {
            return AuthResult::Allowed(None);
        }
        let Some((user, password)) = header.and_then(basic) else {
            return AuthResult::Missing;
        };
        // A source over its failure limit learns nothing more, not even from the cache.
        if self.failures.blocked(ip) {
            return AuthResult::TooMany;
        }
        let key: [u8; 32] = Sha256::digest(format!("{user}\0{password}").as_bytes()).into();
        if let Ok(c) = self.cache.lock() {
            if let Some((u, at)) = c.get(&key) {
                if at.elapsed() < CACHE_TTL {
                    return AuthResult::Allowed(Some(u.clone()));
                }
            }
        }
        let Some(hash) = self.users.get(&user).cloned() else {
            self.failures.record(ip);
            return AuthResult::Denied;
        };
        let Ok(Ok(permit)) =
            tokio::time::timeout(HASHING_WAIT, self.hashing.clone().acquire_owned()).await
        else {
            return AuthResult::TooMany;
        };
        self.hashes.inc();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if !ok {
            self.failures.record(ip);
            return AuthResult::Denied;
        }
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED {
                c.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            }
            c.insert(key, (user.clone(), Instant::now()));
        }
        AuthResult::Allowed(Some(user))
    }
}

/// User and password of a `Basic` header value.
fn basic(value: &[u8]) -> Option<(String, String)> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// A credentials line for `user` (`tlspeek passwd`).
pub fn hash_line(user: &str, password: &str) -> Result<String, String> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        return Err("a user name is not empty and has no ':' or control characters".into());
    }
    let mut raw = [0u8; 16];
    openssl::rand::rand_bytes(&mut raw).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&raw).map_err(|e| e.to_string())?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| e.to_string())?;
    Ok(format!("{user}:{hash}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(u: &str, p: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn basic_auth_with_limits_cache_and_exemptions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(
            &file,
            format!("# users\n{}\n", hash_line("alice", "s3cret").unwrap()),
        )
        .unwrap();
        let exempt = NetList(vec!["10.9.9.9/32".parse().unwrap()]);
        let hashes = prometheus::IntCounter::new("h", "h").unwrap();
        let a = Auth::load(&file, exempt, Arc::default(), hashes.clone()).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(a.check(ip, None).await, AuthResult::Missing);
        assert_eq!(a.check(ip, Some(b"Bearer x")).await, AuthResult::Missing);
        assert_eq!(
            a.check(ip, Some(&header("alice", "s3cret"))).await,
            AuthResult::Allowed(Some("alice".into()))
        );
        assert_eq!(
            a.check(ip, Some(&header("alice", "s3cret"))).await,
            AuthResult::Allowed(Some("alice".into()))
        );
        assert_eq!(hashes.get(), 1, "the second check came from the cache");
        assert_eq!(
            a.check("10.9.9.9".parse().unwrap(), None).await,
            AuthResult::Allowed(None)
        );
        let bad: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                a.check(bad, Some(&header("alice", "wrong"))).await,
                AuthResult::Denied
            );
        }
        let before = hashes.get();
        assert_eq!(
            a.check(bad, Some(&header("alice", "s3cret"))).await,
            AuthResult::TooMany
        );
        assert_eq!(hashes.get(), before, "429 without hashing");
        assert_eq!(
            a.check(ip, Some(&header("alice", "s3cret"))).await,
            AuthResult::Allowed(Some("alice".into()))
        );
    }

    #[test]
    fn bad_files_say_which_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(&file, "alice:plaintext\n").unwrap();
        let h = prometheus::IntCounter::new("h", "h").unwrap();
        let e = Auth::load(&file, NetList::default(), Arc::default(), h)
            .err()
            .unwrap();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(hash_line("a:b", "x").is_err());
    }
}
