//! A private PostgreSQL cluster for one test: Debian's `postgresql` package, `initdb` in a
//! temp dir, `pg_ctl` on a free 127.0.0.1 port (run as user `postgres` when the tests run
//! as root, since PostgreSQL refuses root), stopped when dropped. Connections over TCP
//! need the superuser's password (scram-sha-256); the socket in the temp dir trusts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{free_port, is_root, wait_port};

pub const PASSWORD: &str = "fleet-test-pw-7f3a9c";

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
}

/// The newest installed server's bin directory; missing fails under CI, else SKIP.
fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    let bin = found.pop();
    if bin.is_none() {
        // Reported the way other missing prerequisites are.
        super::require(&["initdb-of-the-postgresql-package"]);
    }
    bin
}

impl Postgres {
    /// Starts a cluster with a database `tlspeek`; `None` (SKIP) without the package.
    pub fn start() -> Option<Postgres> {
        Postgres::start_with(&[])
    }

    /// Like `start`, with extra `postgresql.conf` lines (e.g. TLS settings).
    pub fn start_with(conf: &[&str]) -> Option<Postgres> {
        let bin = server_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("tlspeek-pg")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        if is_root() {
            chown_postgres(dir.path());
            chown_postgres(&pw);
        }
        let pg = Postgres {
            dir,
            port: free_port(),
            bin,
        };
        let out = pg.as_postgres(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--pwfile",
                &pw.display().to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !conf.is_empty() {
            let path = pg.data().join("postgresql.conf");
            let mut text = std::fs::read_to_string(&path).unwrap();
            for line in conf {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&path, text).unwrap();
        }
        pg.start_again();
        let out = pg.psql("postgres", "CREATE DATABASE tlspeek");
        assert!(out.contains("CREATE DATABASE"), "createdb: {out}");
        Some(pg)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A file owned by the server's user (for TLS keys it reads).
    pub fn give(&self, name: &str, from: &Path, mode: u32) -> PathBuf {
        let to = self.dir.path().join(name);
        std::fs::copy(from, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
        if is_root() {
            chown_postgres(&to);
        }
        to
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
                .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `pg_ctl start`: listens on 127.0.0.1 only, its socket in the temp dir.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let out = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(wait_port(self.port, std::time::Duration::from_secs(10)));
    }

    /// `pg_ctl stop -m fast`: clients are disconnected, the port closes.
    pub fn stop(&self) {
        let out = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs SQL through the socket (trusted) with `psql`; returns stdout and stderr.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.as_postgres(
            "psql",
            &[
                "-h",
                &self.dir.path().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-c",
                sql,
            ],
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `postgresql://postgres@127.0.0.1:PORT/DB` plus `query` (no `?`).
    pub fn url(&self, db: &str, query: &str) -> String {
        let base = format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port);
        if query.is_empty() {
            base
        } else {
            format!("{base}?{query}")
        }
    }

    /// A password file tlspeek accepts (mode 0600) holding `password`.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

fn chown_postgres(p: &Path) {
    let ok = Command::new("chown")
        .arg("postgres:postgres")
        .arg(p)
        .status()
        .unwrap();
    assert!(ok.success(), "chown postgres {}", p.display());
}
