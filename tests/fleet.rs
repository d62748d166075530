//! A fleet's shared inventory (issue 19): real tlspeek instances writing one PostgreSQL
//! database (a private cluster of Debian's postgresql package, on 127.0.0.1), real curl
//! callers, `tlspeek report --db postgresql://…` reading it back with exact counts;
//! a database restart in the middle; schema versions; refusals at start; TLS verify-full;
//! and, through the library, late-acknowledged batches and concurrent writers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed assumption is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::postgres::{PASSWORD, Postgres};
use common::*;

/// A database with one TLS upstream for its callers, and a way to start instances on it.
struct Site {
    pg: Postgres,
    pw: PathBuf,
    url: String,
    _srv: Proc,
    up: u16,
}

impl Site {
    /// `None` (SKIP, or a failure under CI) without curl, openssl or PostgreSQL.
    fn start() -> Option<Site> {
        if !require(&["curl", "openssl"]) {
            return None;
        }
        let pg = Postgres::start()?;
        let pw = pg.password_file("pw", PASSWORD);
        let url = pg.url("tlspeek", "sslmode=disable");
        let (_srv, up) = openssl_server(&[]);
        Some(Site {
            pg,
            pw,
            url,
            _srv,
            up,
        })
    }

    /// An instance writing to the site's database, `proxy_extra` after `allowed_ports`.
    fn instance(&self, proxy_extra: &str) -> Tlspeek {
        Tlspeek::start(
            &format!("allowed_ports = [{}]\n{proxy_extra}", self.up),
            &inventory_section(&self.url, &self.pw),
        )
    }
}

fn inventory_section(url: &str, password_file: &Path) -> String {
    format!(
        "[inventory]\npath = \"\"\nurl = \"{url}\"\npassword_file = \"{}\"\nflush_interval = \"200ms\"\n",
        password_file.display()
    )
}

/// `tlspeek report --db URL --all --format json`, the password from PGPASSWORD.
fn report(url: &str) -> (i32, Vec<Value>, String) {
    let (code, out, err) = tlspeek_pg(&["report", "--db", url, "--all", "--format", "json"]);
    (code, serde_json::from_str(&out).unwrap_or_default(), err)
}

/// (connections, legacy connections, rows) of `source` to login.microsoftonline.com.
fn counts(rows: &[Value], source: &str) -> (u64, u64, usize) {
    let mine: Vec<&Value> = rows
        .iter()
        .filter(|r| r["source_ip"] == source && r["destination"] == LOGIN)
        .collect();
    (
        mine.iter()
            .map(|r| r["connections"].as_u64().unwrap())
            .sum(),
        mine.iter()
            .map(|r| r["legacy_connections"].as_u64().unwrap())
            .sum(),
        mine.len(),
    )
}

/// Waits until the report shows `want` connections from `source`.
fn wait_connections(url: &str, source: &str, want: u64) -> Vec<Value> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, rows, err) = report(url);
        if code == 0 && counts(&rows, source).0 >= want {
            return rows;
        }
        assert!(
            Instant::now() < end,
            "{source}: {:?} of {want} connections in the report ({code}: {err})",
            counts(&rows, source)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn call(t: &Tlspeek, up: u16, source: &str, n: usize, legacy: bool) {
    let mut args = vec!["--interface", source];
    if legacy {
        args.extend_from_slice(TLS10_ONLY);
    } else {
        args.push("--tlsv1.2");
    }
    for _ in 0..n {
        assert_eq!(curl_via(t.proxy_port, up, LOGIN, &args).0, "200");
    }
}

#[test]
fn two_instances_write_one_inventory_with_exact_counts() {
    if !require(&["python3"]) {
        return;
    }
    let Some(site) = Site::start() else { return };
    let (pg, url, up) = (&site.pg, &site.url, site.up);
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("root.crl"), b"crl\n").unwrap();
    let (_origin, http_port) = http_origin(www.path());
    let http = format!("allowed_http_ports = [{http_port}]\n");
    let a = site.instance(&http);
    let b = site.instance(&http);
    // The caller's host fetches a CRL in the clear through B: its User-Agent names the OS.
    let crl = curl_http_from(
        b.proxy_port,
        "127.0.0.21",
        "Microsoft-CryptoAPI/6.1",
        &format!("http://127.0.0.1:{http_port}/root.crl"),
    );
    assert_eq!(crl, "200");
    std::thread::scope(|s| {
        s.spawn(|| call(&a, up, "127.0.0.21", 12, true));
        s.spawn(|| call(&b, up, "127.0.0.21", 12, true));
        s.spawn(|| call(&b, up, "127.0.0.22", 6, false));
    });
    let rows = wait_connections(url, "127.0.0.21", 24);
    let rows = if counts(&rows, "127.0.0.22").0 < 6 {
        wait_connections(url, "127.0.0.22", 6)
    } else {
        rows
    };
    assert_eq!(
        counts(&rows, "127.0.0.21"),
        (24, 24, 1),
        "one row, every connection once"
    );
    assert_eq!(counts(&rows, "127.0.0.22"), (6, 0, 1));
    // More flushes come and go: nothing is counted again.
    std::thread::sleep(Duration::from_millis(1200));
    let (_, rows, _) = report(url);
    assert_eq!(counts(&rows, "127.0.0.21"), (24, 24, 1));
    let r = rows
        .iter()
        .find(|r| r["source_ip"] == "127.0.0.21")
        .unwrap();
    assert_eq!(r["versions_negotiated"], serde_json::json!(["TLS1.0"]));
    assert_eq!(r["legacy"], true);
    // Per server address, both instances' answers summed; the OS from B's plain request.
    assert_eq!(r["servers"][0]["address"], "127.0.0.1", "{r}");
    assert_eq!(
        (
            r["servers"][0]["accepted"].as_u64(),
            r["servers"][0]["rejected"].as_u64()
        ),
        (Some(24), Some(0)),
        "{r}"
    );
    assert_eq!(r["server_accepted"], 24);
    assert_eq!(r["source_os"]["name"], "Windows 7 / Server 2008 R2", "{r}");
    // Each instance's /legacy reads the shared inventory: A shows B's caller too.
    let (status, body) = a.admin_get("/legacy");
    assert_eq!(status, 200, "{body}");
    let legacy: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(counts(&legacy, "127.0.0.21").0, 24, "{body}");
    let (status, csv) = b.admin_get("/legacy.csv");
    assert_eq!(status, 200);
    assert!(
        csv.lines()
            .any(|l| l.contains(",\"127.0.0.21\",") && l.contains(",\"24\",\"24\",")),
        "{csv}"
    );
    // Both wrote, and the schema was made once.
    assert_eq!(
        pg.psql("tlspeek", "SELECT count(*) FROM tlspeek_instances")
            .trim(),
        "2"
    );
    assert_eq!(
        pg.psql(
            "tlspeek",
            "SELECT string_agg(version::text, ',') FROM tlspeek_schema"
        )
        .trim(),
        "1"
    );
}

#[test]
fn a_database_restart_loses_nothing_and_the_proxy_stays_ready() {
    let Some(site) = Site::start() else { return };
    let (pg, url, up) = (&site.pg, &site.url, site.up);
    let t = site.instance("");
    call(&t, up, "127.0.0.31", 5, true);
    wait_connections(url, "127.0.0.31", 5);

    pg.stop();
    call(&t, up, "127.0.0.31", 3, true);
    call(&t, up, "127.0.0.32", 7, true);
    assert_eq!(t.admin_get("/readyz").0, 200, "the proxy path is fine");
    assert_eq!(t.admin_get("/healthz").0, 200);
    t.wait_metric(
        "tlspeek_inventory_pending_rows",
        &[],
        Duration::from_secs(10),
        |v| v >= 2.0,
    );
    t.wait_metric(
        "tlspeek_inventory_behind_seconds",
        &[],
        Duration::from_secs(10),
        |v| v >= 2.0,
    );
    assert!(t.metric("tlspeek_inventory_errors_total", &[]) >= 1.0);
    assert!(
        t.stderr().contains("cannot write the inventory"),
        "{}",
        t.stderr()
    );
    // Still proxying while behind.
    call(&t, up, "127.0.0.32", 1, true);

    pg.start_again();
    let rows = wait_connections(url, "127.0.0.32", 8);
    assert_eq!(counts(&rows, "127.0.0.32"), (8, 8, 1));
    assert_eq!(
        counts(&rows, "127.0.0.31"),
        (8, 8, 1),
        "nothing lost, nothing twice"
    );
    t.wait_metric(
        "tlspeek_inventory_pending_rows",
        &[],
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    t.wait_metric(
        "tlspeek_inventory_behind_seconds",
        &[],
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    assert!(
        t.stderr().contains("inventory written again"),
        "{}",
        t.stderr()
    );
}

/// A config file for `tlspeek run` on free ports with `inventory`.
fn run_config(dir: &Path, inventory: &str) -> PathBuf {
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n\
         [events]\npath = \"{}\"\n{inventory}",
        free_port(),
        free_port(),
        dir.join("events.jsonl").display()
    );
    let path = dir.join("tlspeek.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// `tlspeek run --config CFG`, which must exit by itself: (exit code, stderr).
fn run_must_fail(cfg: &Path) -> (i32, String) {
    let err = cfg.with_extension("err");
    let mut child = Command::new(exe())
        .args(["run", "--config"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!(
                "tlspeek kept running: {}",
                std::fs::read_to_string(&err).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&err).unwrap(),
    )
}

#[test]
fn a_newer_schema_is_written_on_by_running_writers_refused_at_start_and_read_with_a_warning() {
    let Some(site) = Site::start() else { return };
    let (pg, pw, url, up) = (&site.pg, &site.pw, &site.url, site.up);
    let mut t = site.instance("");
    call(&t, up, "127.0.0.41", 2, true);
    wait_connections(url, "127.0.0.41", 2);

    // Another instance, newer, migrates the database; this one reconnects (the server
    // restarts) and writes on: migrations only add.
    let out = pg.psql(
        "tlspeek",
        "INSERT INTO tlspeek_schema (version, applied_by) VALUES (99, 'a tlspeek from the future')",
    );
    assert!(out.contains("INSERT 0 1"), "{out}");
    pg.stop();
    pg.start_again();
    call(&t, up, "127.0.0.41", 3, true);
    wait_connections(url, "127.0.0.41", 5);
    assert!(
        t.stderr()
            .contains("the inventory schema is newer than this tlspeek: writing on"),
        "{}",
        t.stderr()
    );
    assert!(t.terminate(Duration::from_secs(10)).is_some());

    // But a tlspeek that starts on a schema newer than it knows refuses: a stale
    // deployment is noticed.
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path(), &inventory_section(url, pw));
    let (code, err) = run_must_fail(&cfg);
    assert_ne!(code, 0);
    assert!(
        err.contains("schema version 99, newer than this tlspeek knows (1)")
            && err.contains("upgrade tlspeek"),
        "{err}"
    );
    // Readers read on (migrations only add), with a warning.
    let (code, rows, err) = report(url);
    assert_eq!(code, 0, "{err}");
    assert_eq!(counts(&rows, "127.0.0.41").0, 5);
    assert!(
        err.contains("warning") && err.contains("version 99"),
        "{err}"
    );
}

#[test]
fn bad_urls_passwords_and_settings_fail_at_start_with_a_clear_error() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let Some(pg) = Postgres::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let good = pg.password_file("pw", PASSWORD);
    let wrong = pg.password_file("wrong", "not-the-password");

    let cfg = run_config(
        dir.path(),
        &inventory_section(&pg.url("tlspeek", "sslmode=disable"), &wrong),
    );
    let (code, err) = run_must_fail(&cfg);
    assert_ne!(code, 0);
    assert!(
        err.contains("password authentication failed for user \"postgres\""),
        "{err}"
    );

    let cfg = run_config(
        dir.path(),
        &inventory_section(&pg.url("nosuchdb", "sslmode=disable"), &good),
    );
    let (code, err) = run_must_fail(&cfg);
    assert_ne!(code, 0);
    assert!(
        err.contains("database \"nosuchdb\" does not exist"),
        "{err}"
    );

    // The same from `report`.
    let (code, _, err) = report(&pg.url("nosuchdb", "sslmode=disable"));
    assert_ne!(code, 0);
    assert!(err.contains("nosuchdb"), "{err}");

    // Configuration errors, from check-config as from run.
    let cases = [
        (
            format!(
                "[inventory]\nurl = \"{}\"\npath = \"x.sqlite\"\n",
                pg.url("tlspeek", "sslmode=disable")
            ),
            "url and path are both set",
        ),
        (
            format!(
                "[inventory]\nurl = \"{}\"\n",
                pg.url("tlspeek", "sslmode=require")
            ),
            "sslmode=require is not accepted",
        ),
        (
            "[inventory]\nurl = \"postgresql://postgres:secret@127.0.0.1/tlspeek\"\n".to_string(),
            "no password in the URL",
        ),
        (
            "[inventory]\npassword_file = \"/x\"\n".to_string(),
            "is for inventory.url",
        ),
    ];
    let exposed = pg.password_file("exposed", PASSWORD);
    std::fs::set_permissions(
        &exposed,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let cases = cases.into_iter().chain([(
        format!(
            "[inventory]\nurl = \"{}\"\npassword_file = \"{}\"\n",
            pg.url("tlspeek", "sslmode=disable"),
            exposed.display()
        ),
        "inventory.password_file",
    )]);
    for (text, want) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let (code, out, err) = tlspeek_cmd(&["check-config", path.to_str().unwrap()]);
        assert_ne!(code, 0, "{text}: {out}");
        assert!(err.contains(want), "{text}: {err}");
    }

    // A database that is away (nothing listens) is not a refusal: the proxy starts,
    // ready, and keeps the rows for later, up to max_pending distinct rows.
    let away = format!(
        "postgresql://postgres@127.0.0.1:{}/tlspeek?sslmode=disable",
        free_port()
    );
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        &(inventory_section(&away, &good) + "max_pending = 2\n"),
    );
    assert_eq!(t.admin_get("/readyz").0, 200);
    for source in ["127.0.0.71", "127.0.0.72", "127.0.0.73"] {
        call(&t, up, source, 1, true);
    }
    t.wait_metric(
        "tlspeek_inventory_pending_rows",
        &[],
        Duration::from_secs(10),
        |v| v == 2.0,
    );
    t.wait_metric(
        "tlspeek_inventory_dropped_total",
        &[],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert!(
        t.stderr().contains("cannot write the inventory"),
        "{}",
        t.stderr()
    );
}

#[test]
fn tls_to_the_database_is_verified_by_default() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let certs_dir = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = ca_and_leaf(certs_dir.path(), "db.fleet.test");
    // The server's key must be owned by it and private.
    let Some(pg) = Postgres::start() else { return };
    let crt = pg.give("server.crt", &leaf, 0o644);
    let key = pg.give("server.key", &key, 0o600);
    let conf = format!(
        "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
        crt.display(),
        key.display()
    );
    std::fs::write(
        pg.data().join("postgresql.conf"),
        std::fs::read_to_string(pg.data().join("postgresql.conf")).unwrap() + &conf,
    )
    .unwrap();
    // Only TLS connections may log in over TCP.
    let hba = pg.data().join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba)
        .unwrap()
        .replace("\nhost ", "\nhostssl ");
    std::fs::write(&hba, text).unwrap();
    pg.stop();
    pg.start_again();

    let pw = pg.password_file("pw", PASSWORD);
    let named = |query: &str| {
        format!(
            "postgresql://postgres@db.fleet.test:{}/tlspeek?hostaddr=127.0.0.1{query}",
            pg.port
        )
    };
    let (_srv, up) = openssl_server(&[]);
    let url = named(&format!("&sslrootcert={}", ca.display()));
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\n"),
        &inventory_section(&url, &pw),
    );
    call(&t, up, "127.0.0.51", 2, true);
    // Read back over TLS with the same URL.
    let end = Instant::now() + Duration::from_secs(20);
    while counts(&report(&url).1, "127.0.0.51").0 < 2 {
        assert!(Instant::now() < end, "{}", t.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    let ssl = pg.psql(
        "tlspeek",
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'tlspeek'",
    );
    assert_eq!(ssl.trim(), "t", "the writer's connection is TLS");

    let dir = tempfile::tempdir().unwrap();
    // Another CA: refused at start, naming the certificate problem.
    let other = certs().crt.clone();
    let cfg = run_config(
        dir.path(),
        &inventory_section(&named(&format!("&sslrootcert={}", other.display())), &pw),
    );
    let (code, err) = run_must_fail(&cfg);
    assert_ne!(code, 0);
    assert!(err.contains("certificate"), "{err}");
    // The right CA, the wrong name.
    let wrong_name = format!(
        "postgresql://postgres@other.test:{}/tlspeek?hostaddr=127.0.0.1&sslrootcert={}",
        pg.port,
        ca.display()
    );
    let cfg = run_config(dir.path(), &inventory_section(&wrong_name, &pw));
    let (code, err) = run_must_fail(&cfg);
    assert_ne!(code, 0);
    assert!(err.contains("certificate"), "{err}");
    // Without TLS, this server refuses the login.
    let cfg = run_config(
        dir.path(),
        &inventory_section(&pg.url("tlspeek", "sslmode=disable"), &pw),
    );
    let (code, err) = run_must_fail(&cfg);
    assert_ne!(code, 0);
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
}

fn location(url: &str, password_file: &Path) -> tlspeek::inventory::Location {
    tlspeek::inventory::Location::Postgres {
        target: Box::new(tlspeek::inventory::pg::target::Target::parse(url).unwrap()),
        password_file: Some(password_file.to_path_buf()),
    }
}

fn row(source: &str, at: i64, version: &str) -> tlspeek::inventory::CallerRow {
    tlspeek::inventory::CallerRow::from_observation(&tlspeek::inventory::Observation {
        at,
        source_ip: source.into(),
        source: source.into(),
        destination: LOGIN.into(),
        ja4: "t10d0906h2_c491f621fb4c_d4d584b446d3".into(),
        offered_version: Some(version.into()),
        negotiated_version: Some(version.into()),
        legacy: true,
        legacy_reasons: vec!["negotiated_tls10".into()],
        software: "curl".into(),
        software_confidence: "exact".into(),
        ..Default::default()
    })
}

#[test]
fn a_late_acknowledged_batch_is_not_applied_twice_and_concurrent_writers_lose_nothing() {
    use tlspeek::inventory::{Batch, Db, Filter};
    let Some(pg) = Postgres::start() else { return };
    let pw = pg.password_file("pw", PASSWORD);
    let at = location(&pg.url("tlspeek", "sslmode=disable"), &pw);

    // The writer retries a batch whose commit it never heard of with the same sequence:
    // the database has it already and says so.
    let mut db = Db::open(&at).unwrap();
    let mut one = row("10.1.0.1", 1_000, "TLS1.0");
    one.connections = 3;
    one.legacy_connections = 3;
    let batch = Batch {
        rows: vec![one],
        ..Batch::default()
    };
    assert!(db.write("host-a/1/1", 1, &batch, 1_000).unwrap());
    assert!(
        !db.write("host-a/1/1", 1, &batch, 1_001).unwrap(),
        "the same batch again"
    );
    assert!(
        db.write("host-a/1/1", 2, &batch, 1_002).unwrap(),
        "the next batch"
    );
    assert!(
        db.write("host-b/9/1", 1, &batch, 1_003).unwrap(),
        "another instance's first"
    );
    let rows = db.query(&Filter::default()).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].connections, 9);

    // Four writers, each 40 batches over the same 12 callers in its own order: every
    // increment lands once, sets unite, extremes hold; no deadlock, no lost update.
    let sources: Vec<String> = (0..12).map(|i| format!("10.2.0.{i}")).collect();
    std::thread::scope(|s| {
        for w in 0..4i64 {
            let at = at.clone();
            let sources = &sources;
            s.spawn(move || {
                let mut db = Db::open(&at).unwrap();
                for seq in 1..=40i64 {
                    let mut rows: Vec<_> = sources
                        .iter()
                        .map(|src| {
                            let version = if seq % 2 == 0 { "TLS1.0" } else { "TLS1.1" };
                            row(src, 2_000 + w * 100 + seq, version)
                        })
                        .collect();
                    // Each writer's own order: by key in SQL, whatever order it holds.
                    rows.rotate_left(usize::try_from(w * 3 + seq).unwrap() % sources.len());
                    let batch = Batch {
                        rows,
                        ..Batch::default()
                    };
                    let me = format!("writer-{w}");
                    assert!(db.write(&me, seq, &batch, 2_000).unwrap());
                }
            });
        }
    });
    let rows = db
        .query(&Filter {
            since: Some(2_000),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 12);
    for r in &rows {
        assert_eq!(
            (r.connections, r.legacy_connections),
            (160, 160),
            "{}",
            r.source_ip
        );
        assert_eq!((r.first_seen, r.last_seen), (2_001, 2_340));
        assert_eq!(r.versions_negotiated, ["TLS1.0", "TLS1.1"]);
    }
}

/// A tlspeek command with PGPASSWORD set: (exit code, stdout, stderr).
fn tlspeek_pg(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe())
        .args(args)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn correlate_and_analyze_read_and_write_the_shared_inventory() {
    let Some(site) = Site::start() else { return };
    let (url, up) = (&site.url, site.up);
    let t = site.instance("");
    call(&t, up, "127.0.0.61", 1, true);
    let ev = t.wait_events("the legacy caller", |ev| {
        ev.iter()
            .any(|e| e["source_ip"] == "127.0.0.61" && e["legacy"] == true)
    });
    let e = ev.iter().find(|e| e["source_ip"] == "127.0.0.61").unwrap();
    let at = humantime::format_rfc3339_millis(
        humantime::parse_rfc3339(e["ts"].as_str().unwrap()).unwrap(),
    )
    .to_string();
    let port = e["source_port"].as_u64().unwrap();
    wait_connections(url, "127.0.0.61", 1);

    // Security Event 5156 naming the process behind that source port.
    let dir = tempfile::tempdir().unwrap();
    let wfp = dir.path().join("security-5156.xml");
    std::fs::write(
        &wfp,
        format!("<Events><Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><Provider Name='Microsoft-Windows-Security-Auditing'/><EventID>5156</EventID><TimeCreated SystemTime='{at}'/><Computer>APP01.contoso.com</Computer></System><EventData><Data Name='ProcessID'>5150</Data><Data Name='Application'>\\device\\harddiskvolume2\\legacy\\agent.exe</Data><Data Name='Direction'>%%14593</Data><Data Name='SourceAddress'>127.0.0.61</Data><Data Name='SourcePort'>{port}</Data><Data Name='DestAddress'>127.0.0.1</Data><Data Name='DestPort'>{}</Data><Data Name='Protocol'>6</Data></EventData></Event></Events>\r\n", t.proxy_port),
    )
    .unwrap();
    let (code, out, err) = tlspeek_pg(&[
        "correlate",
        "--db",
        url,
        "--sysmon",
        wfp.to_str().unwrap(),
        "--write-db",
        url,
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("agent.exe"),
        "joined from the shared inventory: {out}"
    );
    assert!(
        err.contains("stored for 1 callers already there, 0 added"),
        "{err}"
    );
    let (_, rows, _) = report(url);
    let row = rows
        .iter()
        .find(|r| r["source_ip"] == "127.0.0.61")
        .unwrap();
    assert!(
        row["process"]
            .as_str()
            .is_some_and(|p| p.ends_with("agent.exe")),
        "{row}"
    );
    assert_eq!(row["connections"], 1, "counts stay the proxy's");

    // A capture analysed offline lands in the same inventory, with the same counts the
    // analysis reports.
    let pcap = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pcap/curl_tls10_to_13.pcap"
    );
    let (code, alone, err) = tlspeek_pg(&["analyze", "--quiet", "--all", "--format", "json", pcap]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = tlspeek_pg(&["analyze", "--quiet", "--all", "--db", url, pcap]);
    assert_eq!(code, 0, "{err}");
    let alone: Vec<Value> = serde_json::from_str(&alone).unwrap();
    assert!(!alone.is_empty());
    let (_, rows, _) = report(url);
    for a in &alone {
        let stored = rows
            .iter()
            .find(|r| {
                r["source_ip"] == a["source_ip"]
                    && r["destination"] == a["destination"]
                    && r["ja4"] == a["ja4"]
            })
            .unwrap_or_else(|| panic!("{a} not in the shared inventory"));
        assert_eq!(stored["connections"], a["connections"], "{a}");
    }
}

#[test]
fn retention_runs_from_one_instance_at_a_time() {
    use tlspeek::inventory::{Batch, Db, Filter};
    let Some(pg) = Postgres::start() else { return };
    let pw = pg.password_file("pw", PASSWORD);
    let url = pg.url("tlspeek", "sslmode=disable");
    let at = location(&url, &pw);
    let mut db = Db::open(&at).unwrap();
    let batch = Batch {
        rows: vec![
            row("10.3.0.1", 100, "TLS1.0"),
            row("10.3.0.2", 5_000, "TLS1.0"),
        ],
        ..Batch::default()
    };
    db.apply(&batch).unwrap();
    // Another instance is pruning: this one leaves it alone.
    let mut other = ::postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres password={PASSWORD} dbname=tlspeek",
            pg.port
        ),
        ::postgres::NoTls,
    )
    .unwrap();
    other
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&tlspeek::inventory::pg::schema::RETENTION_LOCK],
        )
        .unwrap();
    assert_eq!(
        db.prune(1_000).unwrap(),
        None,
        "another instance holds the lock"
    );
    assert_eq!(db.query(&Filter::default()).unwrap().len(), 2);
    other
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&tlspeek::inventory::pg::schema::RETENTION_LOCK],
        )
        .unwrap();
    assert_eq!(db.prune(1_000).unwrap(), Some(1));
    let left = db.query(&Filter::default()).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].source_ip, "10.3.0.2");
}
