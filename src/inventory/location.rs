//! Where an inventory lives, and one handle over both stores: a SQLite file (the embedded
//! default, one per instance) or a PostgreSQL database (one for a fleet). The writer,
//! `/legacy`, `tlspeek report`, `correlate` and `analyze --db` all go through `Db`.

use std::path::{Path, PathBuf};

use super::pg::{PgStore, target::Target};
use super::{Batch, CallerKey, CallerRow, ConnectionSeen, Filter, Store, StoreError};

/// An inventory's place.
#[derive(Clone, Debug)]
pub enum Location {
    File(PathBuf),
    Postgres {
        target: Box<Target>,
        /// Where the password is (else `PGPASSWORD`, else none).
        password_file: Option<PathBuf>,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Postgres { target, .. } => f.write_str(&target.url),
        }
    }
}

impl Location {
    /// A `--db` value: a `postgresql://` URL (password from `PGPASSWORD`) or a file path.
    pub fn parse(s: &str) -> Result<Location, StoreError> {
        if super::pg::target::is_url(s) {
            let target = Target::parse(s).map_err(|reason| StoreError::Postgres {
                url: s.to_string(),
                reason,
                transient: false,
            })?;
            Ok(Location::Postgres {
                target: Box::new(target),
                password_file: None,
            })
        } else {
            Ok(Location::File(PathBuf::from(s)))
        }
    }

    fn password_file(&self) -> Option<&Path> {
        match self {
            Location::Postgres { password_file, .. } => password_file.as_deref(),
            Location::File(_) => None,
        }
    }

    fn password(&self, target: &Target) -> Result<Option<String>, StoreError> {
        super::pg::target::password(self.password_file()).map_err(|reason| StoreError::Postgres {
            url: target.url.clone(),
            reason,
            transient: false,
        })
    }
}

/// An open inventory.
pub enum Db {
    Sqlite(Store),
    Postgres(PgStore),
}

impl Db {
    /// Opens for writing: a file is created, a database's schema brought up to date (a
    /// schema newer than this tlspeek is refused).
    pub fn open(at: &Location) -> Result<Db, StoreError> {
        Db::open_writer(at, false)
    }

    /// Like `open`; with `newer_ok`, a newer schema is written on with a warning (a
    /// running writer reconnecting after another instance upgraded the database).
    pub fn open_writer(at: &Location, newer_ok: bool) -> Result<Db, StoreError> {
        match at {
            Location::File(p) => Store::open(p).map(Db::Sqlite),
            Location::Postgres { target, .. } => {
                PgStore::open(target, at.password(target)?.as_deref(), newer_ok).map(Db::Postgres)
            }
        }
    }

    /// Opens an existing inventory to read.
    pub fn open_read_only(at: &Location) -> Result<Db, StoreError> {
        match at {
            Location::File(p) => Store::open_read_only(p).map(Db::Sqlite),
            Location::Postgres { target, .. } => {
                PgStore::open_read_only(target, at.password(target)?.as_deref()).map(Db::Postgres)
            }
        }
    }

    /// Why what is read may be incomplete (a schema newer than this tlspeek), if it may.
    pub fn warning(&self) -> Option<String> {
        match self {
            Db::Postgres(p) => p.newer_schema.map(|v| {
                format!(
                    "the inventory's schema is version {v}, newer than this tlspeek knows ({}): \
                     columns added since are not shown; upgrade tlspeek",
                    super::pg::schema::KNOWN
                )
            }),
            Db::Sqlite(_) => None,
        }
    }

    pub fn query(&mut self, f: &Filter) -> Result<Vec<CallerRow>, StoreError> {
        match self {
            Db::Sqlite(s) => s.query(f),
            Db::Postgres(p) => p.query(f),
        }
    }

    pub fn earliest(&mut self) -> Result<Option<i64>, StoreError> {
        match self {
            Db::Sqlite(s) => s.earliest(),
            Db::Postgres(p) => p.earliest(),
        }
    }

    /// The recent connections kept for joins; `None` in a file older than them.
    pub fn connections(&mut self) -> Result<Option<Vec<ConnectionSeen>>, StoreError> {
        match self {
            Db::Sqlite(s) => s.connections(),
            Db::Postgres(p) => p.connections().map(Some),
        }
    }

    /// Stores who each caller is; returns (updated, added).
    pub fn attribute(&mut self, rows: &[CallerRow]) -> Result<(usize, usize), StoreError> {
        match self {
            Db::Sqlite(s) => s.attribute(rows),
            Db::Postgres(p) => p.attribute(rows),
        }
    }

    /// Writes one batch outside a writer's bookkeeping (`analyze --db`).
    pub fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(s) => s.write(batch).map(|_| ()),
            Db::Postgres(p) => p.apply(batch),
        }
    }

    /// Writes a writer's batch `seq`; false when a database already had it.
    pub fn write(
        &mut self,
        instance: &str,
        seq: i64,
        batch: &Batch,
        now: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Db::Sqlite(s) => s.write(batch).map(|_| true),
            Db::Postgres(p) => p.write(instance, seq, batch, now),
        }
    }

    /// Retention; `None` when another instance runs it now.
    pub fn prune(&mut self, before: i64) -> Result<Option<u64>, StoreError> {
        match self {
            Db::Sqlite(s) => s.prune(before).map(|n| Some(n as u64)),
            Db::Postgres(p) => p.prune(before),
        }
    }
}

/// Reads every row of each inventory and merges rows with the same key (several files,
/// one per instance; or a shared database, perhaps with old files beside it). Warnings
/// (a newer schema) are returned beside the rows.
pub fn merged(at: &[Location], f: &Filter) -> Result<(Vec<CallerRow>, Vec<String>), StoreError> {
    let mut by_key: std::collections::BTreeMap<CallerKey, CallerRow> = Default::default();
    let mut warnings = Vec::new();
    let all = Filter {
        limit: None,
        ..f.clone()
    };
    for l in at {
        let mut db = Db::open_read_only(l)?;
        warnings.extend(db.warning());
        for row in db.query(&all)? {
            match by_key.entry(row.key()) {
                std::collections::btree_map::Entry::Occupied(mut r) => r.get_mut().merge(&row),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(row);
                }
            }
        }
    }
    let mut rows: Vec<CallerRow> = by_key.into_values().collect();
    CallerRow::sort_for_report(&mut rows);
    if let Some(l) = f.limit {
        rows.truncate(l);
    }
    Ok((rows, warnings))
}
