//! Proxy authentication (optional): `Proxy-Authorization: Basic` checked against
//! `[auth] credentials_file`, one `user:$argon2id$...` line per user.
//!
//! Hashing is expensive on 2 cores, so it is guarded: a source with too many recent failures
//! gets 429 before any hashing; an attempt counts as a failure from before its hash until
//! it succeeds, and one check per source hashes at a time (so concurrent requests cannot
//! race the limit); an unknown user costs the same hash as a known one; at most two checks
//! hash at once in all; a verified user/password
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
    #[error("{0}")]
    Secret(String),
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

/// The answer to a request whose credentials do not let it through.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthRefusal {
    pub status: u16,
    pub phrase: &'static str,
    pub reason: &'static str,
    /// The response header that goes with it (`Proxy-Authenticate` or `Retry-After`).
    pub header: &'static str,
    /// The `reason` label of `tlspeek_auth_failures_total`.
    pub metric_reason: &'static str,
}

impl AuthResult {
    /// The user to record when allowed, else the refusal to answer with. CONNECT and every
    /// plain-HTTP request of a keep-alive connection go through this one mapping.
    pub fn verdict(self) -> Result<Option<String>, AuthRefusal> {
        const CHALLENGE: &str = "Proxy-Authenticate: Basic realm=\"tlspeek\"";
        let refusal = match self {
            AuthResult::Allowed(user) => return Ok(user),
            AuthResult::Missing => AuthRefusal {
                status: 407,
                phrase: "Proxy Authentication Required",
                reason: "proxy authentication required",
                header: CHALLENGE,
                metric_reason: "missing",
            },
            AuthResult::Denied => AuthRefusal {
                status: 407,
                phrase: "Proxy Authentication Required",
                reason: "wrong user name or password",
                header: CHALLENGE,
                metric_reason: "denied",
            },
            AuthResult::TooMany => AuthRefusal {
                status: 429,
                phrase: "Too Many Requests",
                reason: "too many failed logins from this source; try again later",
                header: "Retry-After: 60",
                metric_reason: "rate_limited",
            },
        };
        Err(refusal)
    }
}

/// Per-source attempt bookkeeping, kept across reloads (a reload must not reset an
/// attacker).
///
/// An attempt is *taken* before any hashing: it counts as a failure from the moment it
/// starts and is given back only when the password turns out right. Together with one hash
/// in flight per source (`gate`), concurrency cannot race the limit: the 6th of 200
/// simultaneous wrong passwords already finds 5 failures on the books.
#[derive(Default)]
pub struct FailureLog(Mutex<HashMap<IpAddr, SourceAttempts>>);

struct SourceAttempts {
    failures: u32,
    since: Instant,
    /// One password check hashing at a time per source.
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl SourceAttempts {
    fn fresh() -> SourceAttempts {
        SourceAttempts {
            failures: 0,
            since: Instant::now(),
            gate: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn current_failures(&self) -> u32 {
        if self.since.elapsed() < FAILURE_WINDOW {
            self.failures
        } else {
            0
        }
    }
}

impl FailureLog {
    fn blocked(&self, ip: IpAddr) -> bool {
        let Ok(m) = self.0.lock() else { return true };
        m.get(&ip)
            .is_some_and(|a| a.current_failures() >= MAX_FAILURES)
    }

    /// The source's hashing gate (created on first use).
    fn gate(&self, ip: IpAddr) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let mut m = self.0.lock().ok()?;
        if m.len() > 100_000 {
            // Keep sources with recent failures or a check in flight.
            m.retain(|_, a| a.current_failures() > 0 || Arc::strong_count(&a.gate) > 1);
        }
        Some(
            m.entry(ip)
                .or_insert_with(SourceAttempts::fresh)
                .gate
                .clone(),
        )
    }

    /// Takes an attempt: false (and nothing taken) when the source is at its limit.
    fn take(&self, ip: IpAddr) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        let a = m.entry(ip).or_insert_with(SourceAttempts::fresh);
        if a.since.elapsed() >= FAILURE_WINDOW {
            a.failures = 0;
            a.since = Instant::now();
        }
        if a.failures >= MAX_FAILURES {
            return false;
        }
        a.failures += 1;
        true
    }

    /// Gives back an attempt that succeeded (or was never judged).
    fn give_back(&self, ip: IpAddr) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(a) = m.get_mut(&ip) {
                a.failures = a.failures.saturating_sub(1);
            }
        }
    }
}

pub struct Auth {
    users: HashMap<String, String>,
    exempt: NetList,
    failures: Arc<FailureLog>,
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    hashing: Arc<Semaphore>,
    /// What an unknown user's password is checked against, so that an unknown name costs
    /// a hash like a known one and response times do not tell which names exist.
    dummy_hash: String,
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
        let text = crate::secrets::read_secret_file("auth.credentials_file", path)
            .map_err(|e| AuthFileError::Secret(e.to_string()))?;
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
        let dummy_hash = hash_line("unknown", "no password matches this one")
            .ok()
            .and_then(|l| l.split_once(':').map(|(_, h)| h.to_string()))
            .ok_or_else(|| bad("cannot make the unknown-user hash".into()))?;
        Ok(Auth {
            users,
            exempt,
            failures,
            cache: Mutex::new(HashMap::new()),
            hashing: Arc::new(Semaphore::new(HASHING_SLOTS)),
            dummy_hash,
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
        if let Some(u) = self.cached(&key) {
            return AuthResult::Allowed(Some(u));
        }
        // One check hashes at a time per source; the others wait their turn (bounded).
        let Some(gate) = self.failures.gate(ip) else {
            return AuthResult::TooMany;
        };
        let Ok(_turn) = tokio::time::timeout(HASHING_WAIT, gate.lock_owned()).await else {
            return AuthResult::TooMany;
        };
        // While this one waited, the same credentials may have been verified.
        if let Some(u) = self.cached(&key) {
            return AuthResult::Allowed(Some(u));
        }
        if !self.failures.take(ip) {
            return AuthResult::TooMany;
        }
        let Ok(Ok(permit)) =
            tokio::time::timeout(HASHING_WAIT, self.hashing.clone().acquire_owned()).await
        else {
            self.failures.give_back(ip);
            return AuthResult::TooMany;
        };
        // An unknown user is checked against a dummy hash: same cost, same slot, same count.
        let (hash, known) = match self.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (self.dummy_hash.clone(), false),
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
        if !(ok && known) {
            return AuthResult::Denied;
        }
        self.failures.give_back(ip);
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= MAX_CACHED {
                c.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            }
            c.insert(key, (user.clone(), Instant::now()));
        }
        AuthResult::Allowed(Some(user))
    }

    fn cached(&self, key: &[u8; 32]) -> Option<String> {
        let c = self.cache.lock().ok()?;
        c.get(key)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(u, _)| u.clone())
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

    fn private(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

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
        private(&file);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_wrong_passwords_cannot_race_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(&file, hash_line("alice", "s3cret").unwrap() + "\n").unwrap();
        private(&file);
        let hashes = prometheus::IntCounter::new("h", "h").unwrap();
        let a = Arc::new(
            Auth::load(&file, NetList::default(), Arc::default(), hashes.clone()).unwrap(),
        );
        let ip: IpAddr = "10.0.0.3".parse().unwrap();
        let mut tasks = Vec::new();
        for i in 0..40 {
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                a.check(ip, Some(&header("alice", &format!("wrong{i}"))))
                    .await
            }));
        }
        let mut too_many = 0;
        for t in tasks {
            if t.await.unwrap() == AuthResult::TooMany {
                too_many += 1;
            }
        }
        assert_eq!(
            hashes.get(),
            u64::from(MAX_FAILURES),
            "one hash per allowed failure"
        );
        assert_eq!(too_many, 40 - MAX_FAILURES as usize);
    }

    #[tokio::test]
    async fn an_unknown_user_costs_a_hash_and_a_right_password_gives_its_attempt_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(&file, hash_line("alice", "s3cret").unwrap() + "\n").unwrap();
        private(&file);
        let hashes = prometheus::IntCounter::new("h", "h").unwrap();
        let a = Auth::load(&file, NetList::default(), Arc::default(), hashes.clone()).unwrap();
        let ip: IpAddr = "10.0.0.4".parse().unwrap();
        assert_eq!(
            a.check(ip, Some(&header("nobody", "s3cret"))).await,
            AuthResult::Denied
        );
        assert_eq!(
            hashes.get(),
            1,
            "an unknown user is hashed like a known one"
        );
        // Four more failures and successes in between: successes do not count.
        for _ in 0..3 {
            assert_eq!(
                a.check(ip, Some(&header("alice", "nope"))).await,
                AuthResult::Denied
            );
        }
        let other_ip: IpAddr = "10.0.0.5".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                a.check(other_ip, Some(&header("alice", "s3cret"))).await,
                AuthResult::Allowed(Some("alice".into()))
            );
        }
        assert_eq!(
            a.check(ip, Some(&header("alice", "nope"))).await,
            AuthResult::Denied
        );
        assert_eq!(
            a.check(ip, Some(&header("alice", "nope"))).await,
            AuthResult::TooMany
        );
    }

    #[test]
    fn bad_files_say_which_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        std::fs::write(&file, "alice:plaintext\n").unwrap();
        private(&file);
        let h = prometheus::IntCounter::new("h", "h").unwrap();
        let e = Auth::load(&file, NetList::default(), Arc::default(), h)
            .err()
            .unwrap();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(hash_line("a:b", "x").is_err());
    }
}
