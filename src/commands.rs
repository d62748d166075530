//! What the one-shot commands do — `check-config`, `ca init`, `passwd`, `report` — as
//! library functions that return their output text or a typed error. `main.rs` only parses
//! the command line, prints and picks the exit code.

use std::path::{Path, PathBuf};

use crate::clock::unix_now;
use crate::config::{Config, LoadError};
use crate::inventory::CallerRow;
use crate::inventory::report;
use crate::inventory::{Db, Filter, Location, StoreError, parse_since};
use crate::upgrade::ca::{self, CaError};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A config file that cannot be read or has errors (the message names the file, and
    /// every key and reason).
    #[error("{0}")]
    Config(LoadError),
    /// The embedded default config does not validate (a build defect).
    #[error("{0}")]
    Defaults(crate::config::ConfigErrors),
    /// What `run` builds from the config (CA, credentials, admin token) failed.
    #[error("{path}: {reason}")]
    Build {
        path: String,
        reason: crate::shared::BuildError,
    },
    #[error("{0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(
        "give the password on stdin, e.g. read -rs PW; printf '%s\\n' \"$PW\" | tlspeek passwd {user}"
    )]
    NoPassword { user: String },
    #[error("{0}")]
    BadUser(String),
    #[error("the inventory is off in this config ([inventory] path = \"\" and no url)")]
    InventoryOff,
    #[error("no inventory at {}", .0.display())]
    NoInventory(PathBuf),
    #[error("{flag} {value:?}: use RFC 3339, a date, Unix seconds or a duration like 7d")]
    BadWhen { flag: String, value: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<LoadError> for CommandError {
    fn from(e: LoadError) -> CommandError {
        CommandError::Config(e)
    }
}

/// `--config FILE`, else the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<Config, CommandError> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default().map_err(CommandError::Defaults)?,
    })
}

/// `check-config FILE`: the effective configuration (secrets redacted) to print, after
/// building what `run` builds from it unless `skip_files`.
pub fn check_config(file: &Path, skip_files: bool) -> Result<String, CommandError> {
    let cfg = Config::load(file)?;
    if !skip_files {
        // What `run` builds before it binds anything (CA, credentials, admin token), built
        // the same way, so the two cannot disagree.
        let metrics = crate::telemetry::Metrics::new(
            cfg.metrics.max_series_per_metric,
            cfg.metrics.series_idle_expiry,
        )?;
        crate::app::reload::build(cfg.clone(), None, &metrics).map_err(|reason| {
            CommandError::Build {
                path: file.display().to_string(),
                reason,
            }
        })?;
    }
    Ok(format!(
        "# {}: valid. Effective configuration:\n{}",
        file.display(),
        cfg.to_toml()
    ))
}

/// `ca init`: writes the CA and returns what to tell the operator.
pub fn ca_init(
    out: &Path,
    permit: Vec<String>,
    unconstrained: bool,
    days: u32,
) -> Result<String, CommandError> {
    let permit: Vec<String> = if unconstrained {
        Vec::new()
    } else if permit.is_empty() {
        ca::DEFAULT_PERMITTED
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        permit
    };
    let (crt, key) = ca::init(out, &permit, days)?;
    let limits = if permit.is_empty() {
        "the CA has no name constraints: it can sign for any name".to_string()
    } else {
        format!("the CA may sign only for: {}", permit.join(", "))
    };
    Ok(format!(
        "wrote {} and {} (0600)\n{limits}\ninstall {} as a trusted root on the legacy callers (see README, \"Upgrade mode\")\n",
        crt.display(),
        key.display(),
        crt.display()
    ))
}

/// `passwd USER`: the credentials line for the password read from stdin (`line`).
pub fn passwd(user: &str, line: Option<&str>) -> Result<String, CommandError> {
    let password = line
        .map(|l| l.trim_end_matches(['\r', '\n']))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| CommandError::NoPassword {
            user: user.to_string(),
        })?;
    crate::access::auth::hash_line(user, password).map_err(CommandError::BadUser)
}

/// A `--since`/`--until` value: RFC 3339, a date, Unix seconds, or a duration meaning "ago".
pub fn parse_when(flag: &str, v: Option<&str>) -> Result<Option<i64>, CommandError> {
    v.map(|s| {
        parse_since(s, unix_now()).ok_or_else(|| CommandError::BadWhen {
            flag: flag.to_string(),
            value: s.to_string(),
        })
    })
    .transpose()
}

/// What `tlspeek report` is asked for.
pub struct ReportRequest {
    pub config: Option<PathBuf>,
    /// Files or `postgresql://` URLs.
    pub db: Vec<String>,
    pub all: bool,
    pub since: Option<String>,
    pub destination: Option<String>,
}

/// `report`: the merged inventories' callers — legacy ones, and those of a retired
/// endpoint (`[[deprecations]]` of the configuration) — and the line that says why the
/// list is empty when it is (for `report::print`).
pub fn report(req: ReportRequest) -> Result<Report, CommandError> {
    let cfg = load_config(req.config.as_deref())?;
    let dbs: Vec<Location> = if !req.db.is_empty() {
        req.db
            .iter()
            .map(|d| Location::parse(d))
            .collect::<Result<_, _>>()?
    } else {
        vec![cfg.inventory.location().ok_or(CommandError::InventoryOff)?]
    };
    if let Some(Location::File(missing)) = dbs
        .iter()
        .find(|db| matches!(db, Location::File(p) if !p.exists()))
    {
        return Err(CommandError::NoInventory(missing.clone()));
    }
    let since = parse_when("--since", req.since.as_deref())?;
    let filter = Filter {
        since,
        destination: req.destination.map(|d| d.to_ascii_lowercase()),
        // Without --all: legacy rows and retired endpoints' rows, picked below (whether a
        // row calls a retired endpoint is known only from the configuration).
        legacy: None,
        limit: None,
    };
    let (mut rows, warnings) = crate::inventory::location::merged(&dbs, &filter)?;
    for r in &mut rows {
        r.mark_retired(&cfg);
    }
    if !req.all {
        rows.retain(|r| r.legacy || r.retired.is_some());
    }
    let mut empty_line = None;
    if rows.is_empty() {
        let mut began = None;
        for l in &dbs {
            if let Some(t) = Db::open_read_only(l)?.earliest()? {
                began = Some(began.map_or(t, |b: i64| b.min(t)));
            }
        }
        let from = match since.or(began) {
            Some(t) => report::rfc3339(t),
            None => "the inventory began (it is empty)".to_string(),
        };
        let what = if req.all { "callers" } else { "legacy callers" };
        empty_line = Some(format!("no {what} seen since {from}"));
    }
    Ok(Report {
        rows,
        empty_line,
        warnings,
    })
}

/// What `report` found: the rows, the line that says why the list is empty when it is (for
/// `report::print`), and warnings for stderr.
#[derive(Debug)]
pub struct Report {
    pub rows: Vec<CallerRow>,
    pub empty_line: Option<String>,
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_needs_a_password_and_a_clean_user_name() {
        let e = passwd("alice", Some("\n")).unwrap_err().to_string();
        assert_eq!(
            e,
            "give the password on stdin, e.g. read -rs PW; printf '%s\\n' \"$PW\" | tlspeek passwd alice"
        );
        assert!(passwd("alice", None).is_err());
        assert!(matches!(
            passwd("a:b", Some("pw\n")),
            Err(CommandError::BadUser(_))
        ));
        let line = passwd("alice", Some("pw\r\n")).unwrap();
        assert!(line.starts_with("alice:$argon2id$"), "{line}");
    }

    #[test]
    fn when_values_and_missing_inventories_name_the_problem() {
        let e = parse_when("--since", Some("yesterday")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--since \"yesterday\": use RFC 3339, a date, Unix seconds or a duration like 7d"
        );
        assert_eq!(parse_when("--since", None).unwrap(), None);
        let e = report(ReportRequest {
            config: None,
            db: vec!["/nonexistent/inv.sqlite".into()],
            all: false,
            since: None,
            destination: None,
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "no inventory at /nonexistent/inv.sqlite");
    }
}
