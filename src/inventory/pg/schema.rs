//! The shared inventory's schema: versioned migrations, applied at start in one
//! transaction under an advisory lock, so instances starting together (or of two versions)
//! never fight. Migrations only ever add (tables, columns, indexes): an older tlspeek can
//! read a newer schema (reports warn), but refuses to write it.

use super::super::StoreError;

/// The newest schema this tlspeek knows.
pub const KNOWN: i32 = 1;

/// `pg_advisory_xact_lock` keys: migrations, and retention (one instance at a time).
pub const MIGRATION_LOCK: i64 = 0x746c_7370_6565_6b01;
pub const RETENTION_LOCK: i64 = 0x746c_7370_6565_6b02;

const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS tlspeek_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL
)";

const V1: &str = "
CREATE TABLE callers (
    source_ip text NOT NULL,
    destination text NOT NULL,
    ja4 text NOT NULL,
    source text NOT NULL,
    source_name text,
    first_seen bigint NOT NULL,
    last_seen bigint NOT NULL,
    last_legacy_seen bigint,
    connections bigint NOT NULL,
    legacy_connections bigint NOT NULL,
    legacy boolean NOT NULL,
    versions_offered text[] NOT NULL,
    versions_negotiated text[] NOT NULL,
    ciphers_negotiated text[] NOT NULL,
    legacy_reasons text[] NOT NULL,
    ja3_hash text NOT NULL,
    tls_library text NOT NULL,
    software text NOT NULL,
    software_confidence text NOT NULL,
    software_rank smallint NOT NULL,
    fix text NOT NULL,
    last_sni text,
    user_agent text,
    process text,
    process_user text,
    account text,
    app text,
    server_accepted bigint NOT NULL,
    server_rejected bigint NOT NULL,
    last_server_alert text,
    last_rejected bigint,
    retired_path text,
    PRIMARY KEY (source_ip, destination, ja4)
);
CREATE INDEX callers_last_seen ON callers (last_seen);
CREATE TABLE caller_servers (
    source_ip text NOT NULL,
    destination text NOT NULL,
    ja4 text NOT NULL,
    address text NOT NULL,
    accepted bigint NOT NULL,
    rejected bigint NOT NULL,
    last_seen bigint NOT NULL,
    PRIMARY KEY (source_ip, destination, ja4, address)
);
CREATE TABLE source_agents (
    source_ip text NOT NULL,
    user_agent text NOT NULL,
    first_seen bigint NOT NULL,
    last_seen bigint NOT NULL,
    PRIMARY KEY (source_ip, user_agent)
);
CREATE TABLE connections (
    source_ip text NOT NULL,
    source_port integer NOT NULL,
    at bigint NOT NULL,
    destination text NOT NULL,
    ja4 text NOT NULL,
    legacy boolean NOT NULL
);
CREATE INDEX connections_at ON connections (at);
CREATE TABLE tlspeek_instances (
    instance text PRIMARY KEY,
    last_seq bigint NOT NULL,
    last_write bigint NOT NULL
);
";

const MIGRATIONS: &[(i32, &str)] = &[(1, V1)];

fn by() -> String {
    format!("tlspeek {}", env!("CARGO_PKG_VERSION"))
}

/// Brings the schema to `KNOWN`. A newer one is refused, unless `newer_ok` (a writer that
/// started on a schema it knew reconnects after another instance upgraded it: it writes
/// on, since migrations only add).
pub fn migrate(client: &mut postgres::Client, url: &str, newer_ok: bool) -> Result<(), StoreError> {
    let e = |err: postgres::Error| super::error(url, &err);
    let mut tx = client.transaction().map_err(e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(e)?;
    tx.batch_execute(SCHEMA_TABLE).map_err(e)?;
    let current: Option<i32> = tx
        .query_one("SELECT max(version) FROM tlspeek_schema", &[])
        .and_then(|r| r.try_get(0))
        .map_err(e)?;
    let current = current.unwrap_or(0);
    if current > KNOWN && newer_ok {
        tracing::warn!(
            url,
            version = current,
            known = KNOWN,
            "the inventory schema is newer than this tlspeek: writing on (migrations only add); upgrade this instance"
        );
        return tx.commit().map_err(e);
    }
    if current > KNOWN {
        return Err(StoreError::SchemaNewer {
            url: url.to_string(),
            found: current,
            known: KNOWN,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).map_err(e)?;
        tx.execute(
            "INSERT INTO tlspeek_schema (version, applied_by) VALUES ($1, $2)",
            &[version, &by()],
        )
        .map_err(e)?;
        tracing::info!(url, version, "inventory schema migrated");
    }
    tx.commit().map_err(e)
}

/// The schema version of a database opened to read: an error when it holds no inventory;
/// a newer version than `KNOWN` is read (migrations only add) and returned for a warning.
pub fn check_readable(client: &mut postgres::Client, url: &str) -> Result<i32, StoreError> {
    let e = |err: postgres::Error| super::error(url, &err);
    let exists: bool = client
        .query_one("SELECT to_regclass('tlspeek_schema') IS NOT NULL", &[])
        .and_then(|r| r.try_get(0))
        .map_err(e)?;
    if !exists {
        return Err(StoreError::Postgres {
            url: url.to_string(),
            reason: "holds no tlspeek inventory yet (a tlspeek with [inventory] url set to it creates one)".into(),
            transient: false,
        });
    }
    let version: Option<i32> = client
        .query_one("SELECT max(version) FROM tlspeek_schema", &[])
        .and_then(|r| r.try_get(0))
        .map_err(e)?;
    Ok(version.unwrap_or(0))
}
