//! The `pluresdb` command line (native only): argument parsing and the
//! commands. Each command is a thin layer over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::relay as pluresdb_relay;

mod serve;

/// PluresDB: a local-first JSON database with sync and vector search.
#[derive(Debug, Parser)]
#[command(name = "pluresdb", version, about)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the demo app (www/), the npm package (pkg/) and the relay
    /// (/relay) over HTTP.
    Serve(ServeArgs),
    /// Run a sync relay on its own (WebSocket, at /relay).
    Relay(RelayArgs),
}

/// Relay settings shared by `serve` and `relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayOptions {
    /// SQLite file of the relay's encrypted backlog (default: in the user's
    /// data directory).
    #[arg(long = "relay-backlog", value_name = "PATH")]
    pub backlog: Option<PathBuf>,
    /// Envelopes kept per topic for peers that are offline.
    #[arg(long = "relay-backlog-frames", default_value_t = 10_000)]
    pub backlog_frames: u64,
    /// Largest frame accepted, in bytes.
    #[arg(long = "relay-max-frame", default_value_t = 4 * 1024 * 1024)]
    pub max_frame: usize,
    /// Messages per second per connection.
    #[arg(long = "relay-rate", default_value_t = 200)]
    pub rate: u32,
    /// Connections in total.
    #[arg(long = "relay-max-connections", default_value_t = 10_000)]
    pub max_connections: usize,
}

impl RelayOptions {
    /// The relay configuration, creating the backlog's directory.
    pub fn config(&self) -> std::io::Result<pluresdb_relay::RelayConfig> {
        let backlog = match &self.backlog {
            Some(path) => path.clone(),
            None => data_dir()?.join("relay.db"),
        };
        if let Some(parent) = backlog.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(pluresdb_relay::RelayConfig {
            backlog_path: Some(backlog),
            backlog_frames: self.backlog_frames,
            max_frame: self.max_frame,
            rate_per_second: self.rate,
            burst: self.rate.saturating_mul(2),
            max_connections: self.max_connections,
            ..Default::default()
        })
    }
}

/// Arguments of `pluresdb relay`.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1", env = "PLURESDB_HOST")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, short, default_value_t = 8787)]
    pub port: u16,
    /// Relay settings.
    #[command(flatten)]
    pub relay: RelayOptions,
}

/// The user's data directory for PluresDB files.
pub fn data_dir() -> std::io::Result<PathBuf> {
    dirs::data_dir().map(|d| d.join("pluresdb")).ok_or_else(|| {
        std::io::Error::other("no data directory for this user; pass a path explicitly")
    })
}

/// Arguments of `pluresdb serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1", env = "PLURESDB_HOST")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, short, default_value_t = 8080, env = "PLURESDB_PORT")]
    pub port: u16,
    /// Directory with the demo app.
    #[arg(long, default_value = "www")]
    pub www: PathBuf,
    /// Directory with the built npm package.
    #[arg(long, default_value = "pkg")]
    pub pkg: PathBuf,
    /// Relay settings.
    #[command(flatten)]
    pub relay: RelayOptions,
}

impl ServeArgs {
    fn address(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,pluresdb=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the program with the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pluresdb: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Relay(args) => serve::run_relay(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pluresdb: {error}");
            ExitCode::FAILURE
        }
    }
}
