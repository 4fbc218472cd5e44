//! The `pluresdb` command line (native only): argument parsing and the
//! commands. Each command is a thin layer over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Serve the demo app (www/) and the npm package (pkg/) over HTTP.
    Serve(ServeArgs),
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
