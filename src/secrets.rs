//! Files that hold secrets (the proxy credentials file, the admin token file) and the
//! admin token itself: one check for `run`, reload and `check-config`, so that all three
//! give the same verdict.
//!
//! A secret file may be read by its group (the systemd unit and a Kubernetes Secret mount
//! rely on 0640/0440), but never by others, and written by its owner only. The CA key has
//! a stricter rule of its own (owner only; `upgrade::ca`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Permission bits a secret file must not have: others may not read or write, the group
/// may not write.
const FORBIDDEN_BITS: u32 = 0o027;
/// The shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;
/// A token needs at least this many distinct characters.
const MIN_DISTINCT: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what} {path} is {who} (mode {mode:04o}); a secret may be read by its owner and group only: run chmod 640 {path} (or 600)"
    )]
    Exposed {
        what: &'static str,
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    #[error("{what} {path}: {reason}")]
    WeakToken {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The permission bits of a file (following links, as opening it would).
fn file_mode(path: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o7777)
}

/// A private key file that others could read, or that cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is readable by group or others (mode {mode:04o}); run chmod 600 on it", path.display())]
    Readable { path: PathBuf, mode: u32 },
}

/// A private key file (the upgrade CA's) must exist and be readable by its owner only: a
/// key that others can read lets them impersonate every name the CA may sign. Stricter
/// than other secrets: not even the group may read it.
pub fn check_private_key_file(key_path: &Path) -> Result<(), KeyFileError> {
    let mode = file_mode(key_path).map_err(|source| KeyFileError::Io {
        path: key_path.to_path_buf(),
        source,
    })?;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Readable {
            path: key_path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads a secret file after checking its mode. `what` names it in errors (the config key).
pub fn read_secret_file(what: &'static str, path: &Path) -> Result<String, SecretError> {
    let io = |source| SecretError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mode = file_mode(path).map_err(io)?;
    if mode & FORBIDDEN_BITS != 0 {
        let who = if mode & 0o004 != 0 {
            "readable by others"
        } else if mode & 0o002 != 0 {
            "writable by others"
        } else {
            "writable by its group"
        };
        return Err(SecretError::Exposed {
            what,
            path: path.to_path_buf(),
            mode,
            who,
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Why `token` is too weak to guard the admin API, if it is.
pub fn token_weakness(token: &str) -> Option<String> {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < MIN_TOKEN_LEN {
        return Some(format!(
            "the token must have at least {MIN_TOKEN_LEN} characters (it has {})",
            chars.len()
        ));
    }
    let mut counts = std::collections::HashMap::new();
    for c in &chars {
        *counts.entry(*c).or_insert(0usize) += 1;
    }
    if counts.len() < MIN_DISTINCT {
        return Some(format!(
            "the token must have at least {MIN_DISTINCT} distinct characters (it has {})",
            counts.len()
        ));
    }
    let most = counts.values().copied().max().unwrap_or(0);
    if most * 4 > chars.len() {
        return Some(format!(
            "one character makes up {most} of the token's {} characters (more than a quarter)",
            chars.len()
        ));
    }
    None
}

/// Reads and checks the admin token file: its mode, then the token's strength. Make one
/// with `openssl rand -hex 32`.
pub fn read_token_file(path: &Path) -> Result<String, SecretError> {
    const WHAT: &str = "admin.token_file";
    let token = read_secret_file(WHAT, path)?.trim().to_string();
    match token_weakness(&token) {
        Some(reason) => Err(SecretError::WeakToken {
            what: WHAT,
            path: path.to_path_buf(),
            reason: format!("{reason}; make one with `openssl rand -hex 32`"),
        }),
        None => Ok(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, mode: u32, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn group_read_is_allowed_others_and_group_write_are_not() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o640, 0o440, 0o400] {
            let p = file(dir.path(), &format!("ok{mode:o}"), mode, "x");
            assert_eq!(read_secret_file("k", &p).unwrap(), "x", "{mode:o}");
        }
        for (mode, who) in [
            (0o644, "readable by others"),
            (0o604, "readable by others"),
            (0o602, "writable by others"),
            (0o660, "writable by its group"),
        ] {
            let p = file(dir.path(), &format!("bad{mode:o}"), mode, "x");
            let e = read_secret_file("auth.credentials_file", &p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(who), "{mode:o}: {e}");
            assert!(e.contains(&format!("chmod 640 {}", p.display())), "{e}");
            assert!(e.starts_with("auth.credentials_file "), "{e}");
        }
        let missing = read_secret_file("k", &dir.path().join("none")).unwrap_err();
        assert!(matches!(missing, SecretError::Io { .. }));
    }

    #[test]
    fn weak_tokens_are_refused() {
        assert!(token_weakness("short").unwrap().contains("at least 16"));
        assert!(
            token_weakness("aaaaaaaaaaaaaaaa")
                .unwrap()
                .contains("distinct")
        );
        assert!(
            token_weakness("abcdefghijaaaaaaaaaa")
                .unwrap()
                .contains("more than a quarter")
        );
        assert_eq!(token_weakness("3f9a61c0d2b84e7a"), None);
        assert_eq!(
            token_weakness("8d1c0e5f4a3b2a9e7c6d5f4e3b2a1c0d9e8f7a6b5c4d3e2f"),
            None
        );
    }

    #[test]
    fn token_file_checks_mode_then_strength() {
        let dir = tempfile::tempdir().unwrap();
        let good = file(dir.path(), "t", 0o640, "3f9a61c0d2b84e7a\n");
        assert_eq!(read_token_file(&good).unwrap(), "3f9a61c0d2b84e7a");
        let weak = file(dir.path(), "w", 0o600, "aaaaaaaaaaaaaaaa\n");
        assert!(matches!(
            read_token_file(&weak),
            Err(SecretError::WeakToken { .. })
        ));
        let open = file(dir.path(), "o", 0o644, "3f9a61c0d2b84e7a\n");
        assert!(matches!(
            read_token_file(&open),
            Err(SecretError::Exposed { .. })
        ));
    }
}
