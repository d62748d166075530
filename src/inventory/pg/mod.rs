//! The shared inventory in PostgreSQL: every instance of a fleet upserts the same rows
//! concurrently, and every report reads them. Counts merge in SQL (`ON CONFLICT DO
//! UPDATE`, never read-modify-write), rows are written in key order (so two writers never
//! deadlock), and each flush records (instance, batch sequence) in its own transaction, so
//! a batch whose commit was acknowledged late is recognised and not applied twice.

pub mod schema;
pub mod target;

use std::collections::HashMap;

use postgres::types::ToSql;

use super::agents::{self, SeenAgent};
use super::{Batch, CallerKey, CallerRow, ConnectionSeen, Filter, ServerTally, StoreError};
use target::Target;

/// A postgres error with its causes (the crate's own text stops at "db error").
pub fn describe(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Worth retrying: the server is away, restarting, or busy; not a refusal (bad
/// password, no such database, bad certificate).
fn transient(e: &postgres::Error) -> bool {
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08")
            || c.starts_with("57P")
            || c.starts_with("53")
            || c == "40001"
            || c == "40P01";
    }
    if e.is_closed() {
        return true;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | TimedOut
                    | UnexpectedEof
                    | BrokenPipe
                    | NotConnected
                    | HostUnreachable
                    | NetworkUnreachable
                    | AddrNotAvailable
            );
        }
        cause = c.source();
    }
    // "timeout waiting for server" has no cause.
    e.to_string().starts_with("timeout")
}

pub(crate) fn error(url: &str, e: &postgres::Error) -> StoreError {
    StoreError::Postgres {
        url: url.to_string(),
        reason: describe(e),
        transient: transient(e),
    }
}

pub struct PgStore {
    client: postgres::Client,
    url: String,
    /// A read-only store's schema version, when newer than this tlspeek knows.
    pub newer_schema: Option<i32>,
}

fn connect(target: &Target, password: Option<&str>) -> Result<postgres::Client, StoreError> {
    target.connect(password).map_err(|e| match e {
        target::ConnectError::Postgres(e) => error(&target.url, &e),
        target::ConnectError::Tls(reason) => StoreError::Postgres {
            url: target.url.clone(),
            reason,
            transient: false,
        },
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

const UPSERT_CALLER: &str = "
INSERT INTO callers AS c (source_ip, destination, ja4, source, source_name, first_seen, last_seen,
    last_legacy_seen, connections, legacy_connections, legacy, versions_offered, versions_negotiated,
    ciphers_negotiated, legacy_reasons, ja3_hash, tls_library, software, software_confidence,
    software_rank, fix, last_sni, user_agent, process, process_user, account, app,
    server_accepted, server_rejected, last_server_alert, last_rejected, retired_path)
SELECT source_ip, destination, ja4, source, source_name, first_seen, last_seen, last_legacy_seen,
    connections, legacy_connections, legacy, string_to_array(versions_offered, ','),
    string_to_array(versions_negotiated, ','), string_to_array(ciphers_negotiated, ','),
    string_to_array(legacy_reasons, ','), ja3_hash, tls_library, software, software_confidence,
    software_rank, fix, last_sni, user_agent, process, process_user, account, app,
    server_accepted, server_rejected, last_server_alert, last_rejected, retired_path
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
    $8::bigint[], $9::bigint[], $10::bigint[], $11::boolean[], $12::text[], $13::text[], $14::text[],
    $15::text[], $16::text[], $17::text[], $18::text[], $19::text[], $20::smallint[], $21::text[],
    $22::text[], $23::text[], $24::text[], $25::text[], $26::text[], $27::text[], $28::bigint[],
    $29::bigint[], $30::text[], $31::bigint[], $32::text[])
    AS u(source_ip, destination, ja4, source, source_name, first_seen, last_seen, last_legacy_seen,
    connections, legacy_connections, legacy, versions_offered, versions_negotiated,
    ciphers_negotiated, legacy_reasons, ja3_hash, tls_library, software, software_confidence,
    software_rank, fix, last_sni, user_agent, process, process_user, account, app,
    server_accepted, server_rejected, last_server_alert, last_rejected, retired_path)
ORDER BY source_ip, destination, ja4
ON CONFLICT (source_ip, destination, ja4) DO UPDATE SET
    first_seen = LEAST(c.first_seen, excluded.first_seen),
    last_seen = GREATEST(c.last_seen, excluded.last_seen),
    last_legacy_seen = GREATEST(c.last_legacy_seen, excluded.last_legacy_seen),
    connections = c.connections + excluded.connections,
    legacy_connections = c.legacy_connections + excluded.legacy_connections,
    legacy = c.legacy OR excluded.legacy,
    versions_offered = ARRAY(SELECT DISTINCT v FROM unnest(c.versions_offered || excluded.versions_offered) v ORDER BY v),
    versions_negotiated = ARRAY(SELECT DISTINCT v FROM unnest(c.versions_negotiated || excluded.versions_negotiated) v ORDER BY v),
    ciphers_negotiated = ARRAY(SELECT DISTINCT v FROM unnest(c.ciphers_negotiated || excluded.ciphers_negotiated) v ORDER BY v),
    legacy_reasons = ARRAY(SELECT DISTINCT v FROM unnest(c.legacy_reasons || excluded.legacy_reasons) v ORDER BY v),
    source = CASE WHEN excluded.last_seen >= c.last_seen THEN excluded.source ELSE c.source END,
    source_name = CASE WHEN excluded.last_seen >= c.last_seen AND excluded.source_name IS NOT NULL
        THEN excluded.source_name ELSE c.source_name END,
    last_sni = CASE WHEN excluded.last_seen >= c.last_seen AND excluded.last_sni IS NOT NULL
        THEN excluded.last_sni ELSE c.last_sni END,
    ja3_hash = CASE WHEN excluded.last_seen >= c.last_seen AND excluded.ja3_hash <> ''
        THEN excluded.ja3_hash ELSE c.ja3_hash END,
    tls_library = CASE WHEN excluded.software_rank > c.software_rank OR (excluded.software_rank = c.software_rank
        AND excluded.last_seen >= c.last_seen) THEN excluded.tls_library ELSE c.tls_library END,
    software = CASE WHEN excluded.software_rank > c.software_rank OR (excluded.software_rank = c.software_rank
        AND excluded.last_seen >= c.last_seen) THEN excluded.software ELSE c.software END,
    software_confidence = CASE WHEN excluded.software_rank > c.software_rank OR (excluded.software_rank = c.software_rank
        AND excluded.last_seen >= c.last_seen) THEN excluded.software_confidence ELSE c.software_confidence END,
    fix = CASE WHEN excluded.software_rank > c.software_rank OR (excluded.software_rank = c.software_rank
        AND excluded.last_seen >= c.last_seen) THEN excluded.fix ELSE c.fix END,
    software_rank = GREATEST(c.software_rank, excluded.software_rank),
    user_agent = CASE WHEN excluded.user_agent IS NOT NULL AND (excluded.last_seen >= c.last_seen OR c.user_agent IS NULL)
        THEN excluded.user_agent ELSE c.user_agent END,
    process = CASE WHEN excluded.last_seen >= c.last_seen THEN coalesce(excluded.process, c.process)
        ELSE coalesce(c.process, excluded.process) END,
    process_user = CASE WHEN excluded.last_seen >= c.last_seen THEN coalesce(excluded.process_user, c.process_user)
        ELSE coalesce(c.process_user, excluded.process_user) END,
    account = CASE WHEN excluded.last_seen >= c.last_seen THEN coalesce(excluded.account, c.account)
        ELSE coalesce(c.account, excluded.account) END,
    app = CASE WHEN excluded.last_seen >= c.last_seen THEN coalesce(excluded.app, c.app)
        ELSE coalesce(c.app, excluded.app) END,
    server_accepted = c.server_accepted + excluded.server_accepted,
    server_rejected = c.server_rejected + excluded.server_rejected,
    last_server_alert = CASE WHEN excluded.last_rejected IS NOT NULL
        AND (c.last_rejected IS NULL OR excluded.last_rejected >= c.last_rejected)
        THEN excluded.last_server_alert ELSE c.last_server_alert END,
    last_rejected = GREATEST(c.last_rejected, excluded.last_rejected),
    retired_path = CASE WHEN excluded.retired_path IS NOT NULL AND (excluded.last_seen >= c.last_seen OR c.retired_path IS NULL)
        THEN excluded.retired_path ELSE c.retired_path END";

const UPSERT_SERVER: &str = "
INSERT INTO caller_servers AS s (source_ip, destination, ja4, address, accepted, rejected, last_seen)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[])
    AS u(source_ip, destination, ja4, address, accepted, rejected, last_seen)
ORDER BY source_ip, destination, ja4, address
ON CONFLICT (source_ip, destination, ja4, address) DO UPDATE SET
    accepted = s.accepted + excluded.accepted,
    rejected = s.rejected + excluded.rejected,
    last_seen = GREATEST(s.last_seen, excluded.last_seen)";

const UPSERT_AGENT: &str = "
INSERT INTO source_agents AS a (source_ip, user_agent, first_seen, last_seen)
SELECT source_ip, user_agent, at, at FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(source_ip, user_agent, at)
ORDER BY source_ip, user_agent
ON CONFLICT (source_ip, user_agent) DO UPDATE SET
    first_seen = LEAST(a.first_seen, excluded.first_seen),
    last_seen = GREATEST(a.last_seen, excluded.last_seen)";

const CAP_AGENTS: &str = "
DELETE FROM source_agents a USING (SELECT source_ip, user_agent, row_number() OVER
    (PARTITION BY source_ip ORDER BY last_seen DESC, user_agent) AS n
    FROM source_agents WHERE source_ip = ANY($1)) k
WHERE a.source_ip = k.source_ip AND a.user_agent = k.user_agent AND k.n > $2";

const INSERT_CONNECTION: &str = "
INSERT INTO connections (source_ip, source_port, at, destination, ja4, legacy)
SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::text[], $5::text[], $6::boolean[])";

const COLUMNS: &str = "source_ip, destination, ja4, source, source_name, first_seen, last_seen, \
    last_legacy_seen, connections, legacy_connections, legacy, versions_offered, versions_negotiated, \
    ciphers_negotiated, legacy_reasons, ja3_hash, tls_library, software, software_confidence, fix, \
    last_sni, user_agent, process, process_user, account, app, server_accepted, server_rejected, \
    last_server_alert, last_rejected, retired_path";

fn row_from(r: &postgres::Row) -> Result<CallerRow, postgres::Error> {
    let mut reasons: Vec<String> = Vec::new();
    super::union_reasons(&mut reasons, &r.try_get::<_, Vec<String>>(14)?);
    Ok(CallerRow {
        source_ip: r.try_get(0)?,
        destination: r.try_get(1)?,
        ja4: r.try_get(2)?,
        source: r.try_get(3)?,
        source_name: r.try_get(4)?,
        first_seen: r.try_get(5)?,
        last_seen: r.try_get(6)?,
        last_legacy_seen: r.try_get(7)?,
        connections: to_u64(r.try_get(8)?),
        legacy_connections: to_u64(r.try_get(9)?),
        legacy: r.try_get(10)?,
        versions_offered: r.try_get(11)?,
        versions_negotiated: r.try_get(12)?,
        ciphers_negotiated: r.try_get(13)?,
        legacy_reasons: reasons,
        ja3_hash: r.try_get(15)?,
        tls_library: r.try_get(16)?,
        software: r.try_get(17)?,
        software_confidence: r.try_get(18)?,
        fix: r.try_get(19)?,
        last_sni: r.try_get(20)?,
        user_agent: r.try_get(21)?,
        source_os: None,
        source_runtime: None,
        who: super::Attribution {
            process: r.try_get(22)?,
            process_user: r.try_get(23)?,
            account: r.try_get(24)?,
            app: r.try_get(25)?,
        },
        server_accepted: to_u64(r.try_get(26)?),
        server_rejected: to_u64(r.try_get(27)?),
        last_server_alert: r.try_get(28)?,
        last_rejected: r.try_get(29)?,
        servers: Vec::new(),
        retired_path: r.try_get(30)?,
        retired: None,
    })
}

/// `batch`'s rows, one per key (rows of one key merged: one statement may touch a row
/// once), in key order.
fn unique_rows(batch: &Batch) -> Vec<CallerRow> {
    let mut by_key: std::collections::BTreeMap<CallerKey, CallerRow> = Default::default();
    for r in &batch.rows {
        match by_key.entry(r.key()) {
            std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(r),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(r.clone());
            }
        }
    }
    by_key.into_values().collect()
}

/// `batch`'s User-Agents, one per (source, User-Agent): the latest time.
fn unique_agents(batch: &Batch) -> Vec<(String, String, i64)> {
    let mut by_key: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
    for (ip, ua, at) in &batch.agents {
        let e = by_key.entry((ip, ua)).or_insert(*at);
        *e = (*e).max(*at);
    }
    by_key
        .into_iter()
        .map(|((ip, ua), at)| (ip.to_string(), ua.to_string(), at))
        .collect()
}

fn column<T, F: Fn(&CallerRow) -> T>(rows: &[CallerRow], f: F) -> Vec<T> {
    rows.iter().map(f).collect()
}

/// Upserts `batch` inside `tx`: one statement per table, whatever the batch's size (one
/// round trip each, which matters for a database across a WAN), rows in key order.
fn upsert(tx: &mut postgres::Transaction<'_>, batch: &Batch) -> Result<(), postgres::Error> {
    let rows = unique_rows(batch);
    if !rows.is_empty() {
        let text = |f: fn(&CallerRow) -> &String| column(&rows, |r| f(r).clone());
        let opt = |f: fn(&CallerRow) -> &Option<String>| column(&rows, |r| f(r).clone());
        let count = |f: fn(&CallerRow) -> u64| column(&rows, |r| to_i64(f(r)));
        let list = |f: fn(&CallerRow) -> &Vec<String>| column(&rows, |r| f(r).join(","));
        let ip = text(|r| &r.source_ip);
        let dest = text(|r| &r.destination);
        let ja4 = text(|r| &r.ja4);
        let source = text(|r| &r.source);
        let source_name = opt(|r| &r.source_name);
        let first = column(&rows, |r| r.first_seen);
        let last = column(&rows, |r| r.last_seen);
        let last_legacy = column(&rows, |r| r.last_legacy_seen);
        let conns = count(|r| r.connections);
        let legacy_conns = count(|r| r.legacy_connections);
        let legacy = column(&rows, |r| r.legacy);
        let offered = list(|r| &r.versions_offered);
        let negotiated = list(|r| &r.versions_negotiated);
        let ciphers = list(|r| &r.ciphers_negotiated);
        let reasons = list(|r| &r.legacy_reasons);
        let ja3 = text(|r| &r.ja3_hash);
        let library = text(|r| &r.tls_library);
        let software = text(|r| &r.software);
        let confidence = text(|r| &r.software_confidence);
        let rank = column(&rows, |r| i16::from(super::rank(&r.software_confidence)));
        let fix = text(|r| &r.fix);
        let sni = opt(|r| &r.last_sni);
        let ua = opt(|r| &r.user_agent);
        let process = opt(|r| &r.who.process);
        let process_user = opt(|r| &r.who.process_user);
        let account = opt(|r| &r.who.account);
        let app = opt(|r| &r.who.app);
        let accepted = count(|r| r.server_accepted);
        let rejected = count(|r| r.server_rejected);
        let alert = opt(|r| &r.last_server_alert);
        let last_rejected = column(&rows, |r| r.last_rejected);
        let retired = opt(|r| &r.retired_path);
        let params: [&(dyn ToSql + Sync); 32] = [
            &ip,
            &dest,
            &ja4,
            &source,
            &source_name,
            &first,
            &last,
            &last_legacy,
            &conns,
            &legacy_conns,
            &legacy,
            &offered,
            &negotiated,
            &ciphers,
            &reasons,
            &ja3,
            &library,
            &software,
            &confidence,
            &rank,
            &fix,
            &sni,
            &ua,
            &process,
            &process_user,
            &account,
            &app,
            &accepted,
            &rejected,
            &alert,
            &last_rejected,
            &retired,
        ];
        tx.execute(UPSERT_CALLER, &params)?;
        let servers: Vec<(&CallerRow, &ServerTally)> = rows
            .iter()
            .flat_map(|r| r.servers.iter().map(move |s| (r, s)))
            .collect();
        if !servers.is_empty() {
            let of = |f: fn(&(&CallerRow, &ServerTally)) -> String| -> Vec<String> {
                servers.iter().map(f).collect()
            };
            let n = |f: fn(&(&CallerRow, &ServerTally)) -> i64| -> Vec<i64> {
                servers.iter().map(f).collect()
            };
            tx.execute(
                UPSERT_SERVER,
                &[
                    &of(|(r, _)| r.source_ip.clone()),
                    &of(|(r, _)| r.destination.clone()),
                    &of(|(r, _)| r.ja4.clone()),
                    &of(|(_, s)| s.address.clone()),
                    &n(|(_, s)| to_i64(s.accepted)),
                    &n(|(_, s)| to_i64(s.rejected)),
                    &n(|(_, s)| s.last_seen),
                ],
            )?;
        }
    }
    let agents = unique_agents(batch);
    if !agents.is_empty() {
        let ips: Vec<&str> = agents.iter().map(|(ip, _, _)| ip.as_str()).collect();
        let uas: Vec<&str> = agents.iter().map(|(_, ua, _)| ua.as_str()).collect();
        let ats: Vec<i64> = agents.iter().map(|(_, _, at)| *at).collect();
        tx.execute(UPSERT_AGENT, &[&ips, &uas, &ats])?;
        let mut sources = ips.clone();
        sources.dedup();
        let keep = i64::try_from(agents::MAX_PER_SOURCE).unwrap_or(8);
        tx.execute(CAP_AGENTS, &[&sources, &keep])?;
    }
    let c = &batch.connections;
    if !c.is_empty() {
        tx.execute(
            INSERT_CONNECTION,
            &[
                &c.iter().map(|x| x.source_ip.as_str()).collect::<Vec<_>>(),
                &c.iter()
                    .map(|x| i32::from(x.source_port))
                    .collect::<Vec<_>>(),
                &c.iter().map(|x| x.at).collect::<Vec<_>>(),
                &c.iter().map(|x| x.destination.as_str()).collect::<Vec<_>>(),
                &c.iter().map(|x| x.ja4.as_str()).collect::<Vec<_>>(),
                &c.iter().map(|x| x.legacy).collect::<Vec<_>>(),
            ],
        )?;
    }
    Ok(())
}

impl PgStore {
    fn err(&self, e: &postgres::Error) -> StoreError {
        error(&self.url, e)
    }

    /// Connects for writing: the schema is brought up to date; a newer one is refused
    /// unless `newer_ok` (see `schema::migrate`).
    pub fn open(
        target: &Target,
        password: Option<&str>,
        newer_ok: bool,
    ) -> Result<PgStore, StoreError> {
        let mut client = connect(target, password)?;
        schema::migrate(&mut client, &target.url, newer_ok)?;
        Ok(PgStore {
            client,
            url: target.url.clone(),
            newer_schema: None,
        })
    }

    /// Connects for reading; a newer schema is read (migrations only add) and noted.
    pub fn open_read_only(target: &Target, password: Option<&str>) -> Result<PgStore, StoreError> {
        let mut client = connect(target, password)?;
        let version = schema::check_readable(&mut client, &target.url)?;
        Ok(PgStore {
            client,
            url: target.url.clone(),
            newer_schema: (version > schema::KNOWN).then_some(version),
        })
    }

    /// Applies one flush of instance `instance` with sequence `seq`, unless that batch was
    /// applied already (its commit was acknowledged late, and the writer tried again).
    /// Returns false for such a repeat.
    pub fn write(
        &mut self,
        instance: &str,
        seq: i64,
        batch: &Batch,
        now: i64,
    ) -> Result<bool, StoreError> {
        let url = self.url.clone();
        let e = |err: postgres::Error| error(&url, &err);
        let mut tx = self.client.transaction().map_err(e)?;
        let fresh = tx
            .execute(
                "INSERT INTO tlspeek_instances AS i (instance, last_seq, last_write) VALUES ($1, $2, $3) \
                 ON CONFLICT (instance) DO UPDATE SET last_seq = excluded.last_seq, last_write = excluded.last_write \
                 WHERE i.last_seq < excluded.last_seq",
                &[&instance, &seq, &now],
            )
            .map_err(e)?;
        if fresh == 0 {
            tx.rollback().map_err(e)?;
            return Ok(false);
        }
        upsert(&mut tx, batch).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(true)
    }

    /// Writes rows outside the batch bookkeeping (`analyze --db`).
    pub fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let url = self.url.clone();
        let e = |err: postgres::Error| error(&url, &err);
        let mut tx = self.client.transaction().map_err(e)?;
        upsert(&mut tx, batch).map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Stores who each caller is: known fields of a stored row's attribution are set; a
    /// caller not stored yet is added whole. Returns (updated, added).
    pub fn attribute(&mut self, rows: &[CallerRow]) -> Result<(usize, usize), StoreError> {
        let url = self.url.clone();
        let e = |err: postgres::Error| error(&url, &err);
        let mut tx = self.client.transaction().map_err(e)?;
        let set = tx
            .prepare(
                "UPDATE callers SET process = coalesce($4, process), process_user = coalesce($5, process_user), \
                 account = coalesce($6, account), app = coalesce($7, app) \
                 WHERE source_ip = $1 AND destination = $2 AND ja4 = $3",
            )
            .map_err(e)?;
        let mut missing = Batch::default();
        for r in rows {
            let w = &r.who;
            let n = tx
                .execute(
                    &set,
                    &[
                        &r.source_ip,
                        &r.destination,
                        &r.ja4,
                        &w.process,
                        &w.process_user,
                        &w.account,
                        &w.app,
                    ],
                )
                .map_err(e)?;
            if n == 0 {
                missing.rows.push(r.clone());
            }
        }
        upsert(&mut tx, &missing).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok((rows.len() - missing.rows.len(), missing.rows.len()))
    }

    /// Removes what is past `before` (Unix seconds) and what is beyond the caps, when no
    /// other instance is doing it now (an advisory lock); `None` when one is.
    pub fn prune(&mut self, before: i64) -> Result<Option<u64>, StoreError> {
        let url = self.url.clone();
        let e = |err: postgres::Error| error(&url, &err);
        let mut tx = self.client.transaction().map_err(e)?;
        let mine: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&schema::RETENTION_LOCK],
            )
            .and_then(|r| r.try_get(0))
            .map_err(e)?;
        if !mine {
            return Ok(None);
        }
        let n = tx
            .execute("DELETE FROM callers WHERE last_seen < $1", &[&before])
            .map_err(e)?;
        let max_servers = i64::try_from(super::MAX_SERVERS_PER_CALLER).unwrap_or(16);
        let max_sources = i64::try_from(agents::MAX_SOURCES).unwrap_or(i64::MAX);
        let max_connections = i64::try_from(super::store::MAX_CONNECTIONS).unwrap_or(i64::MAX);
        let statements: [(&str, &[&(dyn ToSql + Sync)]); 7] = [
            (
                "DELETE FROM caller_servers WHERE last_seen < $1",
                &[&before],
            ),
            (
                "DELETE FROM caller_servers WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() OVER \
                 (PARTITION BY source_ip, destination, ja4 ORDER BY last_seen DESC, address) AS n \
                 FROM caller_servers) k WHERE n > $1)",
                &[&max_servers],
            ),
            ("DELETE FROM source_agents WHERE last_seen < $1", &[&before]),
            (
                "DELETE FROM source_agents WHERE source_ip IN (SELECT source_ip FROM source_agents \
                 GROUP BY source_ip ORDER BY max(last_seen) DESC OFFSET $1)",
                &[&max_sources],
            ),
            ("DELETE FROM connections WHERE at < $1", &[&before]),
            (
                "DELETE FROM connections WHERE ctid IN (SELECT ctid FROM connections ORDER BY at DESC OFFSET $1)",
                &[&max_connections],
            ),
            (
                "DELETE FROM tlspeek_instances WHERE last_write < $1",
                &[&before],
            ),
        ];
        for (sql, params) in statements {
            tx.execute(sql, params).map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(Some(n))
    }

    /// Rows matching `f`, most recently seen first, with their servers and the sources'
    /// User-Agents.
    pub fn query(&mut self, f: &Filter) -> Result<Vec<CallerRow>, StoreError> {
        let mut sql = format!(
            "SELECT {COLUMNS} FROM callers WHERE last_seen >= $1 AND ($2::text IS NULL OR destination = $2)"
        );
        match f.legacy {
            Some(true) => sql.push_str(" AND legacy"),
            Some(false) => sql.push_str(" AND NOT legacy"),
            None => {}
        }
        sql.push_str(" ORDER BY last_seen DESC, source_ip, destination, ja4 LIMIT $3");
        let since = f.since.unwrap_or(i64::MIN);
        let limit = f
            .limit
            .map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let found = self
            .client
            .query(&sql, &[&since, &f.destination, &limit])
            .map_err(|e| self.err(&e))?;
        let mut rows = found
            .iter()
            .map(row_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(&e))?;
        self.add_servers(&mut rows, since)?;
        self.describe_sources(&mut rows)?;
        Ok(rows)
    }

    fn add_servers(&mut self, rows: &mut [CallerRow], since: i64) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let found = self
            .client
            .query(
                "SELECT s.source_ip, s.destination, s.ja4, s.address, s.accepted, s.rejected, s.last_seen \
                 FROM caller_servers s JOIN callers c USING (source_ip, destination, ja4) \
                 WHERE c.last_seen >= $1 ORDER BY s.last_seen DESC, s.address",
                &[&since],
            )
            .map_err(|e| self.err(&e))?;
        let mut by_key: HashMap<CallerKey, Vec<ServerTally>> = HashMap::new();
        for r in &found {
            let key: CallerKey = (
                r.try_get(0).map_err(|e| self.err(&e))?,
                r.try_get(1).map_err(|e| self.err(&e))?,
                r.try_get(2).map_err(|e| self.err(&e))?,
            );
            let list = by_key.entry(key).or_default();
            if list.len() < super::MAX_SERVERS_PER_CALLER {
                list.push(ServerTally {
                    address: r.try_get(3).map_err(|e| self.err(&e))?,
                    accepted: to_u64(r.try_get(4).map_err(|e| self.err(&e))?),
                    rejected: to_u64(r.try_get(5).map_err(|e| self.err(&e))?),
                    last_seen: r.try_get(6).map_err(|e| self.err(&e))?,
                });
            }
        }
        for row in rows {
            if let Some(s) = by_key.remove(&row.key()) {
                row.servers = s;
            }
        }
        Ok(())
    }

    fn describe_sources(&mut self, rows: &mut [CallerRow]) -> Result<(), StoreError> {
        let mut cache: HashMap<String, Vec<SeenAgent>> = HashMap::new();
        for r in rows.iter_mut() {
            if !cache.contains_key(&r.source_ip) {
                let found = self
                    .client
                    .query(
                        "SELECT user_agent, last_seen FROM source_agents WHERE source_ip = $1 ORDER BY last_seen DESC",
                        &[&r.source_ip],
                    )
                    .map_err(|e| self.err(&e))?;
                let seen = found
                    .iter()
                    .map(|x| {
                        Ok(SeenAgent {
                            user_agent: x.try_get(0)?,
                            seen: x.try_get(1)?,
                        })
                    })
                    .collect::<Result<Vec<_>, postgres::Error>>()
                    .map_err(|e| self.err(&e))?;
                cache.insert(r.source_ip.clone(), seen);
            }
            if let Some(seen) = cache.get(&r.source_ip) {
                agents::describe(r, seen);
            }
        }
        Ok(())
    }

    /// When the inventory began: the earliest first_seen.
    pub fn earliest(&mut self) -> Result<Option<i64>, StoreError> {
        self.client
            .query_one("SELECT min(first_seen) FROM callers", &[])
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.err(&e))
    }

    /// The recent connections kept for joins, oldest first.
    pub fn connections(&mut self) -> Result<Vec<ConnectionSeen>, StoreError> {
        let found = self
            .client
            .query(
                "SELECT source_ip, source_port, at, destination, ja4, legacy FROM connections ORDER BY at",
                &[],
            )
            .map_err(|e| self.err(&e))?;
        found
            .iter()
            .map(|r| {
                Ok(ConnectionSeen {
                    source_ip: r.try_get(0)?,
                    source_port: u16::try_from(r.try_get::<_, i32>(1)?).unwrap_or(0),
                    at: r.try_get(2)?,
                    destination: r.try_get(3)?,
                    ja4: r.try_get(4)?,
                    legacy: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()
            .map_err(|e| self.err(&e))
    }
}
