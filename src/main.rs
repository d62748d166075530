//! The `tlspeek` command line: parse arguments, call the library (`tlspeek::commands` for
//! the one-shot commands, `tlspeek::analyze`, `tlspeek::app::run`), print, exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tlspeek::app::{self, Control};
use tlspeek::commands;
use tlspeek::config::{Config, LoadError, Overrides};
use tlspeek::inventory::Location;
use tlspeek::inventory::report::{self, Format};

/// mimalloc instead of glibc's malloc: per-thread free lists, aligned task allocations
/// without `_int_memalign`, and no `malloc_consolidate` pass each time a connection's
/// ~1.2 KiB event line is allocated (glibc treats every request of 1 KiB or more as a large
/// one and first merges its fast bins). Built without its transparent-huge-page advice
/// (`no_thp`), and `main` turns THP off for the process: with huge pages an idle tunnel
/// cost 14 KiB instead of 7. Measured in BENCHMARKS.md ("ninth stop").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tlspeek",
    version,
    about = "Egress forward proxy that finds TLS 1.0/1.1 and 3DES callers",
    long_about = "tlspeek peeks every outbound TLS ClientHello passing through it, finds the \
machines that still speak TLS 1.0, TLS 1.1 or 3DES (which Azure AD / Entra ID rejects with \
AADSTS1002016), and exports per-source Prometheus metrics and one JSON event line per \
connection.\n\nWith no command, `tlspeek` runs the proxy with its embedded default \
configuration (proxy on 127.0.0.1:3128, admin on 127.0.0.1:9748)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(RunArgs),
    /// Validate a config file as `run` would (the files it names included: credentials,
    /// admin token, upgrade CA): print the effective config with secrets redacted, or
    /// every error with its key.
    CheckConfig {
        /// The config file (laid over the embedded default).
        file: PathBuf,
        /// Check keys and values only, not the files the config names (for an image build,
        /// where secrets and the CA are not mounted yet). `run` still checks them.
        #[arg(long)]
        skip_files: bool,
    },
    /// Print the legacy callers of the inventory (several --db are merged).
    Report(ReportArgs),
    /// Find legacy TLS callers in packet captures (pcap, pcapng): the proxy's event lines,
    /// inventory and report, offline.
    Analyze(AnalyzeArgs),
    /// Join legacy callers with the processes (Sysmon Event 3, Security 5156, Winlogbeat)
    /// and the Entra ID sign-ins (legacy-TLS error 1002016) that explain them.
    Correlate(CorrelateArgs),
    /// The local CA of upgrade mode.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print a credentials-file line for USER; the password is read from stdin.
    Passwd { user: String },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Write ca.crt and ca.key (mode 0600) into DIR; never overwrites.
    Init {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Limit the CA to this domain and the names below it (repeat). Default: the Azure
        /// AD / Entra domains of the default watched destinations.
        #[arg(long, value_name = "DOMAIN")]
        permit: Vec<String>,
        /// No name constraints at all: the CA can sign for any name (not recommended).
        #[arg(long, conflicts_with = "permit")]
        unconstrained: bool,
        /// Validity of the CA certificate in days.
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Read the inventory named by this config's [inventory] path.
    #[arg(long, value_name = "FILE", conflicts_with = "db")]
    config: Option<PathBuf>,
    /// An inventory: a SQLite file, or a shared database (postgresql://user@host/db, the
    /// password from PGPASSWORD); repeat to merge the inventories of several instances.
    #[arg(long, value_name = "PATH|URL")]
    db: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Include callers that are not legacy.
    #[arg(long)]
    all: bool,
    /// Only callers seen since: RFC 3339 time, date, Unix seconds, or a duration ("7d").
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only this destination.
    #[arg(long, value_name = "HOST")]
    destination: Option<String>,
}

#[derive(clap::Args)]
struct CorrelateArgs {
    /// Config for the watched destinations and the inventory (default: the embedded one).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Event lines of the proxy or of `tlspeek analyze` (repeat).
    #[arg(long, value_name = "FILE")]
    events: Vec<PathBuf>,
    /// Inventories, files or postgresql:// URLs (repeat); without --events and --db, the
    /// configured inventory.
    #[arg(long, value_name = "PATH|URL")]
    db: Vec<String>,
    /// Sysmon Event 3 / Security 5156 XML (wevtutil, Event Viewer) or Winlogbeat JSON lines.
    #[arg(long, value_name = "FILE")]
    sysmon: Vec<PathBuf>,
    /// Entra ID sign-in exports: portal CSV, the Graph script's CSV, Graph JSON.
    #[arg(long, value_name = "FILE")]
    signins: Vec<PathBuf>,
    /// The site's egress address as sign-in logs show it (repeat); none: any address.
    #[arg(long = "egress-ip", value_name = "ADDR")]
    egress_ip: Vec<std::net::IpAddr>,
    /// How far apart a log record and a connection may be (clock skew, port reuse).
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    window: String,
    /// Culture dates such as 1/12/2026: month first (mdy) or day first (dmy).
    /// Without it, a date whose day and month cannot be told apart is refused.
    #[arg(long = "date-order", value_name = "ORDER")]
    date_order: Option<String>,
    /// Sign-in CSV headers that differ from the portal's and the Graph script's:
    /// field=Header,… (fields: time, upn or user, display, app, app_id, ip, resource,
    /// code or error, interactive, correlation, details).
    #[arg(long, value_name = "MAP")]
    columns: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Store who each joined caller is (process, Windows user, account, app) in this
    /// inventory; `tlspeek report`, `/legacy` and `/legacy.csv` then show it.
    #[arg(long = "write-db", value_name = "PATH|URL")]
    write_db: Option<String>,
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// Capture files (pcap or pcapng; Ethernet, Linux cooked, raw IP); "-" reads stdin.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Write one JSON event line per connection to PATH ("-": stdout, and no report).
    #[arg(long, value_name = "PATH|-")]
    events: Option<PathBuf>,
    /// Also merge the callers into this inventory: a SQLite file, or a shared database
    /// (postgresql://…, the password from PGPASSWORD).
    #[arg(long, value_name = "PATH|URL")]
    db: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Report every caller, not only legacy ones.
    #[arg(long)]
    all: bool,
    /// Only legacy connections (event lines and report).
    #[arg(long)]
    legacy_only: bool,
    /// Only connections to this host (pattern like *.example.com) or server address.
    #[arg(long, value_name = "HOST")]
    destination: Option<String>,
    /// Only connections that started at or after: RFC 3339, date, Unix seconds, or "7d".
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only connections that started before this time (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Config whose [[sources]] name the sources and whose [proxy] allowed_ports are the
    /// TLS ports (connections to them are reported even without a ClientHello).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// No progress and no summary on stderr (warnings still).
    #[arg(long)]
    quiet: bool,
    /// Flows tracked at once; past it the least recently seen end early.
    #[arg(long, value_name = "N", default_value_t = 262_144)]
    max_flows: usize,
    /// A flow with no packet for this long (capture time) ends.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    flow_idle: String,
    /// Seconds between plain progress lines when stderr is not a terminal.
    #[arg(long, value_name = "DURATION", default_value = "5s", hide = true)]
    progress_interval: String,
}

#[derive(Clone, Copy, Default, ValueEnum)]
enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// Config file, laid over the embedded default (which is used alone without this flag).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Proxy listen address (overrides proxy.listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin listen address for /metrics and /healthz (overrides admin.listen).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Event log file, or "-" for stdout (overrides events.path).
    #[arg(long, value_name = "PATH|-")]
    event_log: Option<String>,
    /// Log format on stderr. The level comes from RUST_LOG (default "info").
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Where the system backs memory with transparent huge pages on its own
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `always`, RHEL's default), the
/// allocator's regions would be faulted in 2 MiB at a time: 14 KiB per idle tunnel instead
/// of 7 (measured). Pages touched from here on are small ones (the flag is the process's).
/// Nothing to report if the kernel refuses: the proxy works the same, with more memory.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::CheckConfig { file, skip_files } => {
            printed(commands::check_config(&file, skip_files))
        }
        Command::Ca(CaCommand::Init {
            out,
            permit,
            unconstrained,
            days,
        }) => printed(commands::ca_init(&out, permit, unconstrained, days)),
        Command::Passwd { user } => {
            let mut line = String::new();
            let read = std::io::stdin()
                .read_line(&mut line)
                .ok()
                .map(|_| line.as_str());
            match commands::passwd(&user, read) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Report(args) => {
            let format = args.format;
            let req = commands::ReportRequest {
                config: args.config,
                db: args.db,
                all: args.all,
                since: args.since,
                destination: args.destination,
            };
            match commands::report(req) {
                Ok(r) => {
                    for w in &r.warnings {
                        eprintln!("tlspeek: warning: {w}");
                    }
                    report::print(&r.rows, format, r.empty_line.as_deref());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tlspeek: {:#}", anyhow::Error::from(e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Correlate(args) => correlate(args).unwrap_or_else(|e| {
            eprintln!("tlspeek: {e:#}");
            ExitCode::FAILURE
        }),
        Command::Analyze(args) => match analyze(args) {
            Ok(code) => code,
            Err(e)
                if e.downcast_ref::<tlspeek::analyze::AnalyzeError>()
                    .is_some_and(|a| a.is_broken_pipe()) =>
            {
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tlspeek: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tlspeek: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A one-shot command's text on stdout, or its error on stderr.
fn printed(r: Result<String, commands::CommandError>) -> ExitCode {
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// A one-shot command's error, as `tlspeek: <message>` on stderr.
fn fail(e: &commands::CommandError) -> ExitCode {
    eprintln!("tlspeek: {e}");
    ExitCode::FAILURE
}

fn correlate(args: CorrelateArgs) -> anyhow::Result<ExitCode> {
    use tlspeek::correlate::{self, Options, text::DateOrder};
    let config = commands::load_config(args.config.as_deref())?;
    let window = humantime::parse_duration(&args.window)
        .with_context(|| format!("--window {:?}: use e.g. 2m, 30s", args.window))?;
    let date_order = match args.date_order.as_deref().unwrap_or("") {
        "" => DateOrder::Unsure,
        "mdy" => DateOrder::Mdy,
        "dmy" => DateOrder::Dmy,
        other => anyhow::bail!("--date-order {other:?}: mdy or dmy"),
    };
    let columns = match &args.columns {
        Some(m) => {
            correlate::signins::parse_columns(m).map_err(|e| anyhow::anyhow!("--columns: {e}"))?
        }
        None => Vec::new(),
    };
    let mut db = args
        .db
        .iter()
        .map(|d| Location::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    if args.events.is_empty() && db.is_empty() {
        db.extend(config.inventory.location());
    }
    let write_db = args.write_db.as_deref().map(Location::parse).transpose()?;
    let opts = Options {
        config,
        events: args.events,
        db,
        sysmon: args.sysmon,
        signins: args.signins,
        egress: args.egress_ip,
        window_secs: window.as_secs_f64(),
        date_order,
        columns,
    };
    let mut c = correlate::run(&opts);
    if let Some(at) = &write_db {
        match correlate::write_db(&c, at) {
            Ok((updated, added)) => eprintln!(
                "tlspeek: correlate: {at}: who is who stored for {updated} callers already there, {added} added"
            ),
            Err(e) => c.problems.push(e.to_string()),
        }
    }
    print!("{}", correlate::render(&c, args.format));
    for w in &c.warnings {
        eprintln!("tlspeek: warning: {w}");
    }
    for p in &c.problems {
        eprintln!("tlspeek: {p}");
    }
    Ok(if c.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn analyze(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    use tlspeek::analyze::{Destination, EventsTo, Filter, Options, flows::Limits};
    let config = commands::load_config(args.config.as_deref())?;
    let duration = |flag: &str, v: &str| {
        humantime::parse_duration(v).with_context(|| format!("{flag} {v:?}: use e.g. 30s, 5m"))
    };
    let idle = duration("--flow-idle", &args.flow_idle)?;
    let events = args.events.map(|p| {
        if p.as_os_str() == "-" {
            EventsTo::Stdout
        } else {
            EventsTo::File(p)
        }
    });
    let events_on_stdout = events == Some(EventsTo::Stdout);
    let opts = Options {
        files: args.files,
        events,
        db: args.db.as_deref().map(Location::parse).transpose()?,
        filter: Filter {
            destination: args.destination.as_deref().map(Destination::parse),
            legacy_only: args.legacy_only,
            since: commands::parse_when("--since", args.since.as_deref())?,
            until: commands::parse_when("--until", args.until.as_deref())?,
        },
        limits: Limits {
            max_flows: args.max_flows,
            idle: i64::try_from(idle.as_nanos()).unwrap_or(i64::MAX),
            ..Limits::default()
        },
        quiet: args.quiet,
        progress_interval: duration("--progress-interval", &args.progress_interval)?,
        config,
    };
    let summary = tlspeek::analyze::run(&opts)?;
    if !events_on_stdout {
        summary.print_report(args.format, args.all);
    }
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    macro_rules! init {
        ($builder:expr) => {
            match format {
                // Same text as the default field formatter, cheaper per connection span.
                LogFormat::Text => $builder
                    .fmt_fields(tlspeek::telemetry::log_fields::LogFields)
                    .init(),
                LogFormat::Json => $builder.json().init(),
            }
        };
    }
    // A plain level (RUST_LOG unset, or "info", "debug", ...) is a static filter: the
    // callsites are decided once. EnvFilter, needed only for per-target directives, takes
    // a lock on every span's enter and exit.
    let spec = std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV).unwrap_or_default();
    match log_level(&spec) {
        Some(level) => init!(builder.with_max_level(level)),
        None => {
            let filter = tracing_subscriber::EnvFilter::try_new(&spec)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            init!(builder.with_env_filter(filter))
        }
    }
}

/// The one level a `RUST_LOG` value names on its own (empty means the default, info);
/// `None` when it holds per-target directives, which need an `EnvFilter`.
fn log_level(spec: &str) -> Option<tracing_subscriber::filter::LevelFilter> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Some(tracing_subscriber::filter::LevelFilter::INFO);
    }
    spec.parse().ok()
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        event_log: args.event_log,
    };
    let source = tlspeek::shared::ConfigSource {
        path: args.config.clone(),
        overrides: overrides.clone(),
    };
    let cfg =
        Config::load_with_overrides(args.config.as_deref(), &overrides).map_err(|e| match e {
            LoadError::Invalid { path, errors } => anyhow::anyhow!("{}: {errors}", path.display()),
            other => anyhow::anyhow!(other),
        })?;
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tlspeek")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        spawn_signal_handlers(tx)?;
        app::run(cfg, source, rx).await.map_err(anyhow::Error::from)
    })
}

/// SIGTERM/SIGINT: drain and stop. SIGUSR1: reopen the event log. SIGHUP: reload the
/// configuration.
fn spawn_signal_handlers(tx: tokio::sync::mpsc::Sender<Control>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); Control::Shutdown }
                _ = int.recv() => { tracing::info!("SIGINT"); Control::Shutdown }
                _ = usr1.recv() => Control::ReopenEvents,
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading the configuration"); Control::Reload }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_level;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn a_level_alone_is_a_static_filter_and_directives_are_not() {
        assert_eq!(log_level(""), Some(LevelFilter::INFO));
        assert_eq!(log_level("  "), Some(LevelFilter::INFO));
        assert_eq!(log_level("debug"), Some(LevelFilter::DEBUG));
        assert_eq!(log_level("WARN"), Some(LevelFilter::WARN));
        assert_eq!(log_level("off"), Some(LevelFilter::OFF));
        assert_eq!(log_level("info,tlspeek=debug"), None);
        assert_eq!(log_level("tlspeek=debug"), None);
        assert_eq!(log_level("[conn]=debug"), None);
    }
}
