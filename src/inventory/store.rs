//! The inventory's SQLite file: schema, batched upserts (read, merge, write in one
//! transaction), retention, and queries. WAL mode, so readers (`/legacy`, `tlspeek report`)
//! never block the writer.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::agents::{self, SeenAgent};
use super::{CallerRow, ConnectionSeen};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("inventory database {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("inventory database {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("inventory database {url}: {reason}")]
    Postgres {
        url: String,
        reason: String,
        /// Worth retrying (the server away or restarting), not a refusal.
        transient: bool,
    },
    #[error(
        "inventory database {url} has schema version {found}, newer than this tlspeek knows ({known}): \
         upgrade tlspeek on this host before it writes there (README, \"Many instances\")"
    )]
    SchemaNewer { url: String, found: i32, known: i32 },
}

impl StoreError {
    /// Worth retrying later: a database server away or restarting. A file that cannot
    /// be written, a refused login or a missing database is not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Postgres {
                transient: true,
                ..
            }
        )
    }
}

/// The mode a new inventory gets, whatever the umask: it names weak internal hosts, so
/// others may not read it; the group may (a report run by an operators' group). SQLite
/// gives its `-wal` and `-shm` files the database's mode.
const DB_MODE: u32 = 0o640;

/// Recent connections kept for `tlspeek correlate` at most.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Creates an empty database file with `DB_MODE` when none exists.
fn create_private(path: &Path) -> Result<(), std::io::Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(DB_MODE)
        .open(path)
    {
        Ok(_) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(DB_MODE)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS callers (
    source_ip TEXT NOT NULL,
    destination TEXT NOT NULL,
    ja4 TEXT NOT NULL,
    source TEXT NOT NULL,
    source_name TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    last_legacy_seen INTEGER,
    connections INTEGER NOT NULL,
    legacy_connections INTEGER NOT NULL,
    legacy INTEGER NOT NULL,
    versions_offered TEXT NOT NULL,
    versions_negotiated TEXT NOT NULL,
    ciphers_negotiated TEXT NOT NULL,
    legacy_reasons TEXT NOT NULL,
    ja3_hash TEXT NOT NULL,
    software TEXT NOT NULL,
    software_confidence TEXT NOT NULL,
    fix TEXT NOT NULL,
    last_sni TEXT,
    user_agent TEXT,
    tls_library TEXT NOT NULL DEFAULT 'unknown',
    PRIMARY KEY (source_ip, destination, ja4)
);
CREATE INDEX IF NOT EXISTS callers_last_seen ON callers (last_seen);
CREATE TABLE IF NOT EXISTS source_agents (
    source_ip TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (source_ip, user_agent)
);
CREATE TABLE IF NOT EXISTS connections (
    source_ip TEXT NOT NULL,
    source_port INTEGER NOT NULL,
    at INTEGER NOT NULL,
    destination TEXT NOT NULL,
    ja4 TEXT NOT NULL,
    legacy INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS connections_at ON connections (at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '4');
";

/// Columns added since the first schema, with their definition: an older inventory gets
/// them in place when opened for writing (existing rows start as `unknown`), and reads
/// them as that default when opened read-only.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // Schema 2.
    (
        "tls_library",
        "TEXT NOT NULL DEFAULT 'unknown'",
        "'unknown'",
    ),
    // Schema 3: who the caller is.
    ("process", "TEXT", "NULL"),
    ("process_user", "TEXT", "NULL"),
    ("account", "TEXT", "NULL"),
    ("app", "TEXT", "NULL"),
    // Schema 4: the server's answers, and a retired path called.
    ("server_accepted", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("server_rejected", "INTEGER NOT NULL DEFAULT 0", "0"),
    ("last_server_alert", "TEXT", "NULL"),
    ("last_rejected", "INTEGER", "NULL"),
    ("servers", "TEXT NOT NULL DEFAULT '[]'", "'[]'"),
    ("retired_path", "TEXT", "NULL"),
];

/// Does `callers` have `column`?
fn has_column(conn: &Connection, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare("SELECT 1 FROM pragma_table_info('callers') WHERE name = ?1")?;
    stmt.exists(params![column])
}

/// Adds what an older inventory lacks.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (name, def, _) in ADDED_COLUMNS {
        if !has_column(conn, name)? {
            conn.execute_batch(&format!("ALTER TABLE callers ADD COLUMN {name} {def}"))?;
        }
    }
    conn.execute(
        "UPDATE meta SET value = '4' WHERE key = 'schema_version' AND value IN ('1', '2', '3')",
        [],
    )?;
    Ok(())
}

/// The SELECT list for this database: added columns it lacks read as their default.
fn select_list(conn: &Connection) -> rusqlite::Result<String> {
    let mut cols = COLUMNS.to_string();
    for (name, _, default) in ADDED_COLUMNS {
        if has_column(conn, name)? {
            cols.push_str(&format!(", {name}"));
        } else {
            cols.push_str(&format!(", {default} AS {name}"));
        }
    }
    Ok(cols)
}

const COLUMNS: &str = "source_ip, destination, ja4, source, source_name, first_seen, last_seen, \
    last_legacy_seen, connections, legacy_connections, legacy, versions_offered, \
    versions_negotiated, ciphers_negotiated, legacy_reasons, ja3_hash, software, \
    software_confidence, fix, last_sni, user_agent";

/// Parses a `since` value: RFC 3339 time, a date (its start, UTC), Unix seconds, or a
/// duration meaning "that long ago" ("24h", "7d").
pub fn parse_since(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return unix(t);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
        return unix(t);
    }
    let ago = humantime::parse_duration(s).ok()?;
    Some(now.saturating_sub(i64::try_from(ago.as_secs()).unwrap_or(i64::MAX)))
}

/// What to read.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Rows seen at or after this Unix time.
    pub since: Option<i64>,
    pub destination: Option<String>,
    /// `Some(true)`: legacy rows only; `Some(false)`: non-legacy only.
    pub legacy: Option<bool>,
    pub limit: Option<usize>,
}

pub struct Store {
    conn: Connection,
    path: String,
    /// The columns read, in `row_from`'s order.
    select: String,
}

fn list(v: &[String]) -> String {
    v.join(",")
}

fn unlist(s: String) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<CallerRow> {
    Ok(CallerRow {
        source_ip: r.get(0)?,
        destination: r.get(1)?,
        ja4: r.get(2)?,
        source: r.get(3)?,
        source_name: r.get(4)?,
        first_seen: r.get(5)?,
        last_seen: r.get(6)?,
        last_legacy_seen: r.get(7)?,
        connections: r.get::<_, i64>(8)?.max(0) as u64,
        legacy_connections: r.get::<_, i64>(9)?.max(0) as u64,
        legacy: r.get::<_, i64>(10)? != 0,
        versions_offered: unlist(r.get(11)?),
        versions_negotiated: unlist(r.get(12)?),
        ciphers_negotiated: unlist(r.get(13)?),
        legacy_reasons: unlist(r.get(14)?),
        ja3_hash: r.get(15)?,
        software: r.get(16)?,
        software_confidence: r.get(17)?,
        fix: r.get(18)?,
        last_sni: r.get(19)?,
        user_agent: r.get(20)?,
        tls_library: r.get(21)?,
        source_os: None,
        source_runtime: None,
        who: super::Attribution {
            process: r.get(22)?,
            process_user: r.get(23)?,
            account: r.get(24)?,
            app: r.get(25)?,
        },
        server_accepted: r.get::<_, i64>(26)?.max(0) as u64,
        server_rejected: r.get::<_, i64>(27)?.max(0) as u64,
        last_server_alert: r.get(28)?,
        last_rejected: r.get(29)?,
        // Written by `apply` only; an unreadable value loses the per-address detail, not
        // the row.
        servers: serde_json::from_str(&r.get::<_, String>(30)?).unwrap_or_default(),
        retired_path: r.get(31)?,
        retired: None,
    })
}

/// Merges `rows` into the stored rows (read, merge, write: one writer per file).
fn apply_rows<'a>(
    tx: &rusqlite::Transaction<'_>,
    select: &str,
    rows: impl IntoIterator<Item = &'a CallerRow>,
) -> rusqlite::Result<usize> {
    let mut n = 0;
    {
        let mut get = tx.prepare_cached(&format!(
            "SELECT {select} FROM callers WHERE source_ip = ?1 AND destination = ?2 AND ja4 = ?3"
        ))?;
        let mut put = tx
                .prepare_cached(&format!(
                    "INSERT OR REPLACE INTO callers ({COLUMNS}, tls_library, process, process_user, account, app, \
                     server_accepted, server_rejected, last_server_alert, last_rejected, servers, retired_path) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, \
                     ?27, ?28, ?29, ?30, ?31, ?32)"
                ))
                ?;
        for row in rows {
            let (ip, dest, ja4) = row.key();
            let stored = get.query_row(params![ip, dest, ja4], row_from).optional()?;
            let merged = match stored {
                Some(mut s) => {
                    s.merge(row);
                    s
                }
                None => row.clone(),
            };
            put.execute(params![
                merged.source_ip,
                merged.destination,
                merged.ja4,
                merged.source,
                merged.source_name,
                merged.first_seen,
                merged.last_seen,
                merged.last_legacy_seen,
                to_i64(merged.connections),
                to_i64(merged.legacy_connections),
                i64::from(merged.legacy),
                list(&merged.versions_offered),
                list(&merged.versions_negotiated),
                list(&merged.ciphers_negotiated),
                list(&merged.legacy_reasons),
                merged.ja3_hash,
                merged.software,
                merged.software_confidence,
                merged.fix,
                merged.last_sni,
                merged.user_agent,
                merged.tls_library,
                merged.who.process,
                merged.who.process_user,
                merged.who.account,
                merged.who.app,
                to_i64(merged.server_accepted),
                to_i64(merged.server_rejected),
                merged.last_server_alert,
                merged.last_rejected,
                serde_json::to_string(&merged.servers).unwrap_or_else(|_| "[]".into()),
                merged.retired_path,
            ])?;
            n += 1;
        }
    }
    Ok(n)
}

/// Records recent connections for joins, keeping at most `MAX_CONNECTIONS` (the oldest
/// go first); returns how many older ones were dropped for room.
fn apply_connections<'a>(
    tx: &rusqlite::Transaction<'_>,
    seen: impl IntoIterator<Item = &'a ConnectionSeen>,
) -> rusqlite::Result<usize> {
    let mut put = tx.prepare_cached(
        "INSERT INTO connections (source_ip, source_port, at, destination, ja4, legacy) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for c in seen {
        put.execute(params![
            c.source_ip,
            c.source_port,
            c.at,
            c.destination,
            c.ja4,
            i64::from(c.legacy)
        ])?;
    }
    tx.execute(
        "DELETE FROM connections WHERE rowid IN (SELECT rowid FROM connections \
         ORDER BY at DESC LIMIT -1 OFFSET ?1)",
        params![i64::try_from(MAX_CONNECTIONS).unwrap_or(i64::MAX)],
    )
}

/// Records User-Agents seen from sources (`(source_ip, user_agent, unix)`), keeping the
/// `agents::MAX_PER_SOURCE` most recent of each source.
fn apply_agents<'a>(
    tx: &rusqlite::Transaction<'_>,
    seen: impl IntoIterator<Item = (&'a str, &'a str, i64)>,
) -> rusqlite::Result<usize> {
    let mut put = tx.prepare_cached(
        "INSERT INTO source_agents (source_ip, user_agent, first_seen, last_seen) \
         VALUES (?1, ?2, ?3, ?3) ON CONFLICT (source_ip, user_agent) DO UPDATE SET \
         last_seen = MAX(last_seen, excluded.last_seen), \
         first_seen = MIN(first_seen, excluded.first_seen)",
    )?;
    let mut cap = tx.prepare_cached(
        "DELETE FROM source_agents WHERE source_ip = ?1 AND user_agent NOT IN \
         (SELECT user_agent FROM source_agents WHERE source_ip = ?1 \
          ORDER BY last_seen DESC LIMIT ?2)",
    )?;
    let keep = i64::try_from(agents::MAX_PER_SOURCE).unwrap_or(8);
    let mut n = 0;
    for (ip, ua, at) in seen {
        put.execute(params![ip, ua, at])?;
        cap.execute(params![ip, keep])?;
        n += 1;
    }
    Ok(n)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Opens (creating if needed) the inventory for writing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let e = |source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        };
        create_private(path).map_err(|source| StoreError::Create {
            path: shown.clone(),
            source,
        })?;
        let conn = Connection::open(path).map_err(e)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(e)?;
        // WAL: readers never block the writer; NORMAL sync: a crash loses at most the last
        // transactions, never corrupts.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(e)?;
        conn.execute_batch(SCHEMA).map_err(e)?;
        migrate(&conn).map_err(e)?;
        let select = select_list(&conn).map_err(e)?;
        Ok(Store {
            conn,
            path: shown,
            select,
        })
    }

    /// Does this database have the table `name` (an older inventory may not)?
    fn has_table(&self, name: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
            .and_then(|mut s| s.exists(params![name]))
            .map_err(|e| self.err(e))
    }

    /// Runs `f` in one transaction, committed when it succeeds.
    fn transaction<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let e = |source| StoreError::Sqlite { path, source };
        let run = || {
            let tx = self.conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(e)
    }

    /// Opens an existing inventory for reading only.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let e = |source| StoreError::Sqlite {
            path: shown.clone(),
            source,
        };
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(e)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(e)?;
        let select = select_list(&conn).map_err(e)?;
        Ok(Store {
            conn,
            path: shown,
            select,
        })
    }

    /// Merges `rows` into the stored rows, in one transaction.
    pub fn apply<'a>(
        &mut self,
        rows: impl IntoIterator<Item = &'a CallerRow>,
    ) -> Result<usize, StoreError> {
        let select = self.select.clone();
        self.transaction(|tx| apply_rows(tx, &select, rows))
    }

    /// Writes one flush (User-Agents, rows, recent connections) in one transaction, so a
    /// failed write leaves nothing half done and the whole batch is retried; returns how
    /// many recent connections were dropped for room.
    pub fn write(&mut self, batch: &super::Batch) -> Result<usize, StoreError> {
        let select = self.select.clone();
        self.transaction(|tx| {
            apply_agents(
                tx,
                batch
                    .agents
                    .iter()
                    .map(|(ip, ua, at)| (ip.as_str(), ua.as_str(), *at)),
            )?;
            apply_rows(tx, &select, batch.rows.iter())?;
            apply_connections(tx, batch.connections.iter())
        })
    }

    /// Stores who each caller is (`tlspeek correlate --write-db`): a row already stored
    /// gets the fields of its attribution that are known, nothing else (its counts stay
    /// the proxy's); a caller not stored yet is added whole. Returns (updated, added).
    pub fn attribute(&mut self, rows: &[CallerRow]) -> Result<(usize, usize), StoreError> {
        let missing: Vec<CallerRow> = self.transaction(|tx| {
            let mut set = tx.prepare_cached(
                "UPDATE callers SET process = coalesce(?4, process), \
                 process_user = coalesce(?5, process_user), account = coalesce(?6, account), \
                 app = coalesce(?7, app) WHERE source_ip = ?1 AND destination = ?2 AND ja4 = ?3",
            )?;
            let mut missing = Vec::new();
            for r in rows {
                let w = &r.who;
                let n = set.execute(params![
                    r.source_ip,
                    r.destination,
                    r.ja4,
                    w.process,
                    w.process_user,
                    w.account,
                    w.app
                ])?;
                if n == 0 {
                    missing.push(r.clone());
                }
            }
            Ok(missing)
        })?;
        let added = self.apply(&missing)?;
        Ok((rows.len() - missing.len(), added))
    }

    /// Deletes rows last seen before `before` (Unix seconds); returns how many. User-Agents
    /// past it go too, and the sources beyond `agents::MAX_SOURCES` seen least recently.
    pub fn prune(&self, before: i64) -> Result<usize, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM callers WHERE last_seen < ?1", params![before])
            .map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "DELETE FROM source_agents WHERE last_seen < ?1",
                params![before],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .execute("DELETE FROM connections WHERE at < ?1", params![before])
            .map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "DELETE FROM source_agents WHERE source_ip IN (SELECT source_ip FROM source_agents \
                 GROUP BY source_ip ORDER BY MAX(last_seen) DESC LIMIT -1 OFFSET ?1)",
                params![i64::try_from(agents::MAX_SOURCES).unwrap_or(i64::MAX)],
            )
            .map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// The recent connections kept for joins; `None` in an inventory older than them.
    pub fn connections(&self) -> Result<Option<Vec<ConnectionSeen>>, StoreError> {
        if !self.has_table("connections")? {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT source_ip, source_port, at, destination, ja4, legacy FROM connections ORDER BY at")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ConnectionSeen {
                    source_ip: r.get(0)?,
                    source_port: r.get(1)?,
                    at: r.get(2)?,
                    destination: r.get(3)?,
                    ja4: r.get(4)?,
                    legacy: r.get::<_, i64>(5)? != 0,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|e| self.err(e))
    }

    /// The User-Agents kept for `source_ip` (none in an inventory older than them).
    pub fn agents_of(&self, source_ip: &str) -> Result<Vec<SeenAgent>, StoreError> {
        if !self.has_table("source_agents")? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT user_agent, last_seen FROM source_agents WHERE source_ip = ?1 \
                 ORDER BY last_seen DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![source_ip], |r| {
                Ok(SeenAgent {
                    user_agent: r.get(0)?,
                    seen: r.get(1)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Fills in `source_os` and `source_runtime` from the source's User-Agents, and
    /// refines the fix by the OS.
    fn describe_sources(&self, rows: &mut [CallerRow]) -> Result<(), StoreError> {
        let mut cache: std::collections::HashMap<String, Vec<SeenAgent>> = Default::default();
        for r in rows.iter_mut() {
            if !cache.contains_key(&r.source_ip) {
                let seen = self.agents_of(&r.source_ip)?;
                cache.insert(r.source_ip.clone(), seen);
            }
            let Some(seen) = cache.get(&r.source_ip) else {
                continue;
            };
            agents::describe(r, seen);
        }
        Ok(())
    }

    /// Rows matching `f`, most recently seen first.
    pub fn query(&self, f: &Filter) -> Result<Vec<CallerRow>, StoreError> {
        let mut sql = format!("SELECT {} FROM callers WHERE last_seen >= ?1", self.select);
        if f.destination.is_some() {
            sql.push_str(" AND destination = ?2");
        } else {
            sql.push_str(" AND ?2 IS NULL");
        }
        match f.legacy {
            Some(true) => sql.push_str(" AND legacy = 1"),
            Some(false) => sql.push_str(" AND legacy = 0"),
            None => {}
        }
        sql.push_str(" ORDER BY last_seen DESC, source_ip, destination, ja4 LIMIT ?3");
        let limit = f
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![f.since.unwrap_or(i64::MIN), f.destination, limit],
                row_from,
            )
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let mut rows = rows;
        drop(stmt);
        self.describe_sources(&mut rows)?;
        Ok(rows)
    }

    /// Earliest first_seen in the file (when the inventory began), if any row exists.
    pub fn earliest(&self) -> Result<Option<i64>, StoreError> {
        self.conn
            .query_row("SELECT MIN(first_seen) FROM callers", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Observation;
    use super::*;

    fn row(ip: &str, at: i64, legacy: bool) -> CallerRow {
        CallerRow::from_observation(&Observation {
            at,
            source_ip: ip.into(),
            source: ip.into(),
            destination: "login.microsoftonline.com".into(),
            ja4: "t10d0906h2_c491f621fb4c_d4d584b446d3".into(),
            offered_version: Some("TLS1.0".into()),
            legacy,
            legacy_reasons: if legacy {
                vec!["max_version_below_tls12".into()]
            } else {
                vec![]
            },
            software: "curl (OpenSSL 3.0)".into(),
            software_confidence: "exact".into(),
            fix: "remove --tls-max".into(),
            tls_library: "openssl".into(),
            ..Observation::default()
        })
    }

    #[test]
    fn recent_connections_are_kept_for_joins_and_pruned_with_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("c.sqlite")).unwrap();
        let c = |port: u16, at: i64| ConnectionSeen {
            source_ip: "10.0.0.7".into(),
            source_port: port,
            at,
            destination: "login.microsoftonline.com".into(),
            ja4: "j".into(),
            legacy: true,
        };
        let batch = super::super::Batch {
            connections: vec![c(50001, 100), c(50002, 200)],
            ..Default::default()
        };
        assert_eq!(s.write(&batch).unwrap(), 0);
        let kept = s.connections().unwrap().unwrap();
        assert_eq!(
            kept.iter().map(|x| x.source_port).collect::<Vec<_>>(),
            [50001, 50002]
        );
        s.prune(150).unwrap();
        assert_eq!(s.connections().unwrap().unwrap(), [c(50002, 200)]);
    }

    #[test]
    fn an_inventory_of_the_first_schema_is_read_and_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let old = SCHEMA
                .replace("    tls_library TEXT NOT NULL DEFAULT 'unknown',\n", "")
                .replace("'schema_version', '4'", "'schema_version', '1'");
            assert!(!old.contains("tls_library"));
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&old).unwrap();
            c.execute(
                &format!("INSERT INTO callers ({COLUMNS}) VALUES ('10.0.0.1', 'login.microsoftonline.com', 'j', 's', NULL, 1, 2, 2, 1, 1, 1, 'TLS1.0', '', '', 'max_version_below_tls12', 'h', 'curl', 'exact', 'fix', NULL, NULL)"),
                [],
            )
            .unwrap();
        }
        // Read-only (a report of an old file): the new column reads as unknown.
        let ro = Store::open_read_only(&path).unwrap();
        let rows = ro.query(&Filter::default()).unwrap();
        assert_eq!((rows.len(), rows[0].tls_library.as_str()), (1, "unknown"));
        assert!(rows[0].who.is_empty(), "no attribution in an old file");
        drop(ro);
        // Opened for writing: migrated in place, old rows unknown, new rows as written.
        let mut rw = Store::open(&path).unwrap();
        rw.apply([&row("10.0.0.2", 5, true)]).unwrap();
        let mut rows = rw.query(&Filter::default()).unwrap();
        rows.sort_by(|a, b| a.source_ip.cmp(&b.source_ip));
        let libs: Vec<&str> = rows.iter().map(|r| r.tls_library.as_str()).collect();
        assert_eq!(libs, ["unknown", "openssl"]);
        let v: String = rw
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, "4");
        assert_eq!(
            (rows[0].server_accepted, rows[0].servers.len()),
            (0, 0),
            "an old row has no server answers"
        );
        // Schema 3: who a caller is, stored by `correlate --write-db`; counts untouched.
        let mut attributed = rows[1].clone();
        attributed.who.account = Some("svc@contoso.com".into());
        attributed.connections = 999;
        let mut unseen = row("10.0.0.3", 6, true);
        unseen.who.process = Some("/usr/bin/java".into());
        assert_eq!(rw.attribute(&[attributed, unseen]).unwrap(), (1, 1));
        let rows = rw.query(&Filter::default()).unwrap();
        let of = |ip: &str| rows.iter().find(|r| r.source_ip == ip).unwrap();
        assert_eq!(
            of("10.0.0.2").who.account.as_deref(),
            Some("svc@contoso.com")
        );
        assert_eq!(of("10.0.0.2").connections, 1);
        assert_eq!(of("10.0.0.3").who.process.as_deref(), Some("/usr/bin/java"));
    }

    #[test]
    fn server_answers_are_kept_per_caller_and_per_front_end() {
        use super::super::{MAX_SERVERS_PER_CALLER, ServerAnswer};
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let answered = |at: i64, server: &str, answer: ServerAnswer| {
            CallerRow::from_observation(&Observation {
                at,
                source_ip: "10.0.0.1".into(),
                source: "10.0.0.1".into(),
                destination: "login.microsoftonline.com".into(),
                ja4: "t10d".into(),
                legacy: true,
                upstream_ip: Some(server.into()),
                server_answer: Some(answer),
                ..Observation::default()
            })
        };
        // Three front ends: .1 accepts, .2 rejects, .3 both.
        s.apply(&[
            answered(10, "192.0.2.1", ServerAnswer::Accepted),
            answered(
                11,
                "192.0.2.2",
                ServerAnswer::Rejected("handshake_failure".into()),
            ),
        ])
        .unwrap();
        s.apply(&[
            answered(12, "192.0.2.3", ServerAnswer::Accepted),
            answered(13, "192.0.2.3", ServerAnswer::Rejected("reset".into())),
            answered(14, "192.0.2.1", ServerAnswer::Accepted),
        ])
        .unwrap();
        let r = &s.query(&Filter::default()).unwrap()[0];
        assert_eq!((r.server_accepted, r.server_rejected), (3, 2));
        assert_eq!(
            (r.last_server_alert.as_deref(), r.last_rejected),
            (Some("reset"), Some(13))
        );
        let tally: Vec<(&str, u64, u64)> = r
            .servers
            .iter()
            .map(|t| (t.address.as_str(), t.accepted, t.rejected))
            .collect();
        assert_eq!(
            tally,
            [
                ("192.0.2.1", 2, 0),
                ("192.0.2.3", 1, 1),
                ("192.0.2.2", 0, 1)
            ],
            "most recently seen first"
        );
        assert_eq!(r.front_ends(), (2, 2, 3));
        // Bounded: the addresses seen least recently go.
        let many: Vec<CallerRow> = (0..40)
            .map(|i| answered(100 + i, &format!("198.51.100.{i}"), ServerAnswer::Accepted))
            .collect();
        s.apply(&many).unwrap();
        let r = &s.query(&Filter::default()).unwrap()[0];
        assert_eq!(r.servers.len(), MAX_SERVERS_PER_CALLER);
        assert_eq!(r.servers[0].address, "198.51.100.39");
        assert_eq!(r.server_accepted, 43, "the counts stay whole");
    }

    #[test]
    fn upsert_merge_query_prune_and_merge_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.sqlite");
        let mut s = Store::open(&a).unwrap();
        s.apply(&[row("10.0.0.1", 100, true), row("10.0.0.2", 150, false)])
            .unwrap();
        s.apply(&[row("10.0.0.1", 300, true)]).unwrap();
        let all = s.query(&Filter::default()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].source_ip, "10.0.0.1", "most recent first");
        assert_eq!(
            (all[0].first_seen, all[0].last_seen, all[0].connections),
            (100, 300, 2)
        );
        let legacy = s
            .query(&Filter {
                legacy: Some(true),
                ..Filter::default()
            })
            .unwrap();
        assert_eq!(legacy.len(), 1);
        let since = s
            .query(&Filter {
                since: Some(200),
                ..Filter::default()
            })
            .unwrap();
        assert_eq!(since.len(), 1);
        let other = s
            .query(&Filter {
                destination: Some("x".into()),
                ..Filter::default()
            })
            .unwrap();
        assert!(other.is_empty());
        assert_eq!(s.earliest().unwrap(), Some(100));

        let b = dir.path().join("b.sqlite");
        let mut t = Store::open(&b).unwrap();
        t.apply(&[row("10.0.0.1", 50, true)]).unwrap();
        let (merged, warnings) = super::super::location::merged(
            &[
                super::super::Location::File(a.clone()),
                super::super::Location::File(b.clone()),
            ],
            &Filter::default(),
        )
        .unwrap();
        assert!(warnings.is_empty());
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].first_seen, merged[0].connections), (50, 3));

        assert_eq!(s.prune(200).unwrap(), 1);
        assert_eq!(s.query(&Filter::default()).unwrap().len(), 1);
    }

    #[test]
    fn a_new_inventory_is_0640_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("inv.sqlite");
        // A umask of 0 would leave 0644 (others read), 077 would leave 0600 (no group):
        // the mode is set, not inherited. The process umask is not touched here (tests run
        // in parallel); the mode is checked on the file itself.
        Store::open(&db).unwrap();
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // An existing file keeps the mode its operator gave it.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
        Store::open(&db).unwrap();
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn since_values() {
        assert_eq!(parse_since("1700000000", 0), Some(1_700_000_000));
        assert_eq!(parse_since("2023-11-14T22:13:20Z", 0), Some(1_700_000_000));
        assert_eq!(parse_since("2023-11-14", 0), Some(1_699_920_000));
        assert_eq!(parse_since("24h", 100_000), Some(100_000 - 86_400));
        assert_eq!(parse_since("yesterday", 0), None);
    }

    #[test]
    fn a_missing_file_is_an_error_for_readers() {
        let e = Store::open_read_only(Path::new("/nonexistent/x.sqlite"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/x.sqlite"));
    }
}
