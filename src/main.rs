//! The `tlspeek` command line: parse arguments, load the configuration, start logging,
//! and hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tlspeek::config::{Config, LoadError, Overrides};
use tlspeek::proxy::{self, Control};

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
    /// Validate a config file: print the effective config, or every error with its key.
    CheckConfig {
        /// The config file (laid over the embedded default).
        file: PathBuf,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tlspeek: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(cfg) => {
            println!("# {}: valid. Effective configuration:", file.display());
            print!("{}", cfg.to_toml());
            ExitCode::SUCCESS
        }
        Err(e @ LoadError::Read { .. }) => {
            eprintln!("tlspeek: {e}");
            ExitCode::FAILURE
        }
        Err(LoadError::Invalid { path, errors }) => {
            eprintln!("tlspeek: {}: {errors}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        event_log: args.event_log,
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
        proxy::run(cfg, rx).await.map_err(anyhow::Error::from)
    })
}

/// SIGTERM/SIGINT: drain and stop. SIGUSR1: reopen the event log. SIGHUP: reported (reload
/// is not in this version), so it does not kill the process.
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
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP: configuration reload is not available in this version; restart tlspeek to apply a new configuration");
                    continue;
                }
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}
