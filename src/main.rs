//! The `stayup` command line: a thin layer over the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

use stayup::config::{Config, LogFormat};
use stayup::generation::{Generation, Shared};
use stayup::publish::{self, Request};
use stayup::reloader::{CommitHook, load_candidate};

#[derive(Parser)]
#[command(
    name = "stayup",
    version,
    about = "A TLS-terminating TCP proxy that reloads, not restarts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `reload`, `status` and `upgrade` reach the daemon.
#[derive(clap::Args)]
struct DaemonArgs {
    /// The configuration the daemon serves; its control socket is found through it.
    #[arg(long, short, required_unless_present = "socket")]
    config: Option<PathBuf>,
    /// The daemon's control socket, instead of finding it through --config.
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
}

impl DaemonArgs {
    /// `--socket` when given, else the daemon serving `--config` (clap
    /// requires one of the two).
    fn target(self) -> Option<stayup::control::Target> {
        use stayup::control::Target;
        match (self.socket, self.config) {
            (Some(s), _) => Some(Target::Socket(s)),
            (None, Some(c)) => Some(Target::Config(c)),
            (None, None) => {
                eprintln!("stayup: give --config or --socket");
                None
            }
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground, logging to stderr.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate everything a reload would, without binding or serving.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask the running daemon to reload and wait for the outcome.
    Reload {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Print the daemon's raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Hand over to the stayup binary now installed, without closing a connection.
    ///
    /// The running daemon starts the binary at the path it was started
    /// from, hands it the listening sockets, and retires once it serves; its
    /// open connections run on until they end. If the new process cannot
    /// start, the old one keeps serving and the reason is printed.
    Upgrade {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Print the daemon's raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show the running daemon's generation, certificates, connections and last reloads.
    Status {
        #[command(flatten)]
        daemon: DaemonArgs,
        #[arg(long)]
        json: bool,
    },
    /// Publish a new certificate and key, or a whole configuration, safely.
    ///
    /// Copies the files into the store beside the configuration, validates
    /// exactly as a reload would, renames the new top-level file into place,
    /// keeps a copy in history/, and reports the running daemon's outcome.
    Publish {
        #[arg(long, short)]
        config: PathBuf,
        /// The listener whose certificate is replaced.
        #[arg(long, required_unless_present = "from")]
        listener: Option<String>,
        /// Which of the listener's certificates (1 = the first).
        #[arg(long, default_value_t = 1, conflicts_with = "from")]
        index: usize,
        /// The new PEM chain, leaf first (symlinks are followed, content copied).
        #[arg(long, required_unless_present = "from")]
        cert: Option<PathBuf>,
        /// The new private key.
        #[arg(long, required_unless_present = "from")]
        key: Option<PathBuf>,
        /// Publish this whole configuration instead; its files are copied into the store.
        #[arg(long, conflicts_with_all = ["listener", "cert", "key"])]
        from: Option<PathBuf>,
        /// Validate and show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the top-level files publish and rollback activated (`*` = live).
    History {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Re-activate the previous (or the named) history entry, validated first.
    Rollback {
        #[arg(long, short)]
        config: PathBuf,
        /// A history ID, a unique prefix of one, or of its hash.
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete what neither the live file nor the last N history entries need.
    ///
    /// Removes store files none of them references, older history entries,
    /// and leftovers of interrupted publishes. Never deletes anything the live
    /// file or a kept entry references.
    Gc {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        keep: usize,
    },
    /// A zero-set-up showcase: throwaway certificates, an echo backend, the
    /// proxy, and a certificate rotation every 10 seconds.
    Demo {
        /// Seconds between rotations.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        /// The port the demo proxy listens on (0 picks a free one).
        #[arg(long, default_value_t = 8443)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(config),
        Command::Reload { daemon, json } => match daemon.target() {
            Some(t) => runtime(stayup::control::cli_reload(&t, json)),
            None => ExitCode::from(2),
        },
        Command::Status { daemon, json } => match daemon.target() {
            Some(t) => runtime(stayup::control::cli_status(&t, json)),
            None => ExitCode::from(2),
        },
        Command::Upgrade { daemon, json } => match daemon.target() {
            Some(t) => runtime(stayup::control::cli_upgrade(&t, json)),
            None => ExitCode::from(2),
        },
        Command::Publish {
            config,
            listener,
            index,
            cert,
            key,
            from,
            dry_run,
        } => {
            let Some(request) = Request::from_flags(from, listener, index, cert, key) else {
                eprintln!("stayup publish: give --listener, --cert and --key, or --from");
                return ExitCode::from(2);
            };
            runtime(publish::cli_publish(&config, request, dry_run))
        }
        Command::History { config } => ExitCode::from(publish::cli_history(&config)),
        Command::Rollback {
            config,
            to,
            dry_run,
        } => runtime(publish::cli_rollback(&config, to.as_deref(), dry_run)),
        Command::Gc { config, keep } => runtime(publish::cli_gc(&config, keep)),
        Command::Demo { interval, port } => {
            let _ = init_logging(LogFormat::Text);
            runtime(stayup::demo::run(interval, port))
        }
    }
}

fn runtime(fut: impl std::future::Future<Output = u8>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => ExitCode::from(rt.block_on(fut)),
        Err(e) => {
            eprintln!("stayup: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;
type Filtered = tracing_subscriber::layer::Layered<
    reload::Layer<EnvFilter, tracing_subscriber::Registry>,
    tracing_subscriber::Registry,
>;
type FormatLayer = Box<dyn Layer<Filtered> + Send + Sync>;

/// What a committed generation may change in the logging set up at start.
struct Logging {
    /// `None` when `RUST_LOG` chose the filter.
    filter: Option<FilterHandle>,
    format: reload::Handle<FormatLayer, Filtered>,
}

/// The filter for `log.level`. The connection log is asked for on its own
/// (`log.connections`), so it is shown at any level.
fn filter_for(log: &stayup::config::LogConfig) -> EnvFilter {
    let level = log.level.as_str();
    let others = if level == "error" { "error" } else { "warn" };
    let connections = if log.connections {
        ",stayup::connection=info"
    } else {
        ""
    };
    EnvFilter::new(format!("{others},stayup={level}{connections}"))
}

/// One line per event on stderr, as `log.format` asks.
fn format_layer(format: LogFormat) -> FormatLayer {
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

/// Sets up logging to stderr. `RUST_LOG`, when set, overrides the
/// configuration's `log.level` for good; the format always follows
/// `log.format`.
fn init_logging(format: LogFormat) -> Logging {
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let filter = match &from_env {
        Some(s) => EnvFilter::new(s),
        None => EnvFilter::new("warn,stayup=info"),
    };
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (fmt, format_handle) = reload::Layer::new(format_layer(format));
    tracing_subscriber::registry().with(filter).with(fmt).init();
    Logging {
        filter: from_env.is_none().then_some(filter_handle),
        format: format_handle,
    }
}

fn run(config: PathBuf) -> ExitCode {
    // The format from the file as it is at start-up, so that even a first
    // configuration that does not load is reported in it; from then on the
    // level and the format follow every committed generation.
    let format = std::fs::read(&config)
        .ok()
        .and_then(|b| Config::parse(&config, &b).ok())
        .map(|c| c.log.format)
        .unwrap_or(LogFormat::Text);
    let logging = init_logging(format);
    if let Err(e) = rustls::crypto::aws_lc_rs::default_provider().install_default() {
        tracing::debug!(?e, "a crypto provider was already installed");
    }
    let shared = match Shared::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stayup: cannot initialise TLS: {e}");
            return ExitCode::from(1);
        }
    };
    // Runs before the commit's own log line, so that it is already written
    // the new way. Tracks (the format in effect, the settings the filter
    // was last made for).
    let applied = std::sync::Mutex::new((format, None));
    let hooks: Vec<CommitHook> = vec![Box::new(move |g: &Generation| {
        let mut applied = applied.lock().unwrap_or_else(|p| p.into_inner());
        let (format, filtered) = &mut *applied;
        let log = &g.config.log;
        if *format != log.format {
            *format = log.format;
            let _ = logging.format.reload(format_layer(log.format));
        }
        if filtered.as_ref() != Some(log) {
            if let Some(filter) = &logging.filter {
                let _ = filter.modify(|f| *f = filter_for(log));
            }
            *filtered = Some(log.clone());
        }
    })];
    runtime(async move {
        match stayup::daemon::run(config, shared, hooks, stayup::daemon::terminate_signal()).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e}");
                1
            }
        }
    })
}

fn check(config: PathBuf) -> ExitCode {
    let shared = match Shared::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stayup: cannot initialise TLS: {e}");
            return ExitCode::from(1);
        }
    };
    let now = SystemTime::now();
    match load_candidate(&config, &shared, now) {
        Err(e) => {
            eprintln!("{e}");
            println!("{}: invalid", config.display());
            ExitCode::from(1)
        }
        Ok(c) => {
            print_candidate(&c, &shared, now);
            ExitCode::SUCCESS
        }
    }
}

fn print_candidate(c: &stayup::reloader::Candidate, _shared: &Arc<Shared>, now: SystemTime) {
    use stayup::status::{days_left, format_unix};
    println!(
        "{}: valid (sha256 {})",
        c.config.path.display(),
        c.identity.config_hash()
    );
    for (l, m) in c.config.listeners.iter().zip(&c.material.listeners) {
        println!(
            "listener {}: {} -> {}{}{}{}{}",
            l.name,
            l.bind,
            l.backend,
            if l.tls.client_ca.is_some() {
                ", client certificates required"
            } else {
                ""
            },
            if l.tls.min_version == stayup::config::TlsVersion::Tls13 {
                ", TLS 1.3 only"
            } else {
                ""
            },
            if l.tls.cipher_suites.is_empty() {
                String::new()
            } else {
                format!(", cipher suites {}", l.tls.cipher_suites.join(" "))
            },
            if l.tls.groups.is_empty() {
                String::new()
            } else {
                format!(", groups {}", l.tls.groups.join(" "))
            }
        );
        for (i, cert) in m.certs.iter().enumerate() {
            let info = &cert.info;
            let days = days_left(info.not_after, now);
            println!(
                "  certificate {}{}\n    subject {}\n    names   {}\n    valid   {} .. {} ({days} days left)\n    sha256  {}",
                info.cert_path.display(),
                if i == 0 { " (default)" } else { "" },
                info.subject,
                if info.sans.is_empty() {
                    "(none)".to_string()
                } else {
                    info.sans.join(", ")
                },
                format_unix(info.not_before),
                format_unix(info.not_after),
                info.fingerprint
            );
        }
    }
    let infos: Vec<_> = c
        .material
        .listeners
        .iter()
        .flat_map(|m| m.certs.iter().map(|x| x.info.clone()))
        .collect();
    let window = c.config.warn_expiry;
    let window_text = if window.as_secs().is_multiple_of(86_400) && !window.is_zero() {
        format!("{}d", window.as_secs() / 86_400)
    } else {
        stayup::config::format_duration(window)
    };
    for info in stayup::status::expiring_in(&infos, window, now) {
        println!(
            "warning: {} (warn_expiry {window_text})",
            stayup::status::expiry_warning(info, now)
        );
    }
}
