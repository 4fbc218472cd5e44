//! The `pluresdb` command line (native only): argument parsing and the
//! commands. Each command is a thin layer over the library.
//!
//! Exit codes: 0 success, 1 failure (the reason on stderr), 2 bad usage
//! (from clap), 3 not found (`get` of a missing id).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::index::HashEmbedder;
use crate::relay::RelayConfig;
use crate::storage::SqliteStorage;
use crate::{Database, OpenOptions};

mod commands;
mod http;
mod io;
mod serve;

/// PluresDB: a local-first JSON database with sync and vector search.
#[derive(Debug, Parser)]
#[command(name = "pluresdb", version, about)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// The database file (default: pluresdb.db in the user's data directory).
    #[arg(long, global = true, env = "PLURESDB_DB", value_name = "PATH")]
    db: Option<PathBuf>,

    /// Embed records' text on put and accept text in search:
    /// `minilm` (the all-MiniLM-L6-v2 transformer, 384 dimensions: the
    /// best at meaning, a few milliseconds per text), `minilm-static` (a
    /// static model distilled from it, 256 dimensions: rougher, thousands
    /// of texts per second), both the same models as the npm package's,
    /// `hash` (hashed words and trigrams, 256 dimensions) or
    /// `hash:<dimensions>`.
    #[arg(long, global = true, value_name = "EMBEDDER")]
    embedder: Option<String>,

    /// Keep a secondary index on this top-level field (repeat for more, up
    /// to 32): `query` and the HTTP API's `/api/query` then read only the
    /// records that can match a condition (`=`, `$in`, a range) on it.
    #[arg(long = "index", global = true, value_name = "FIELD")]
    indexes: Vec<String>,

    /// About how many bytes of document text to keep in memory (default
    /// 256 MiB); past that, the documents that came into memory first are
    /// left in the file and read back when needed.
    #[arg(
        long,
        global = true,
        value_name = "BYTES",
        env = "PLURESDB_CACHE_BYTES"
    )]
    cache_bytes: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database file (if missing) and show where it is.
    Init,
    /// Store a record: JSON as an argument, @file, or - for stdin.
    Put {
        /// The record id.
        id: String,
        /// The JSON value, `@path` to read a file, `-` to read stdin.
        value: String,
        /// An embedding as a JSON array of numbers.
        #[arg(long)]
        vector: Option<String>,
    },
    /// Print a record's JSON (exit code 3 when it does not exist).
    Get {
        /// The record id.
        id: String,
    },
    /// Delete a record.
    Delete {
        /// The record id.
        id: String,
    },
    /// List records in id order.
    List {
        /// Only ids starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this id.
        #[arg(long)]
        cursor: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Run a query: `{"where": {...}, "sort": ..., "limit": ...}`.
    Query {
        /// The query JSON.
        query: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Vector search by a vector (JSON array) or by text (with --embedder).
    Search {
        /// A JSON array of numbers, or text when an embedder is set.
        query: String,
        /// How many results.
        #[arg(long, short, default_value_t = 10)]
        k: usize,
        /// Drop results scoring below this.
        #[arg(long)]
        min_score: Option<f32>,
        /// Only records matching this query JSON.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Records, tombstones, actors, version vector, index, size, sync.
    Status,
    /// Import JSON Lines (`{"id": ..., "data": ...}` per line); idempotent:
    /// records already holding the same data are skipped, so an interrupted
    /// import can simply be run again.
    Import {
        /// The file (- for stdin).
        file: PathBuf,
        /// Records per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Export every live record as JSON Lines.
    Export {
        /// The file (stdout when omitted).
        file: Option<PathBuf>,
    },
    /// Print this database's invite (creating its sync identity).
    Invite,
    /// Sync this database through a relay, or peer to peer over
    /// Hyperswarm, until interrupted.
    Sync {
        /// The relay URL (ws:// or wss://).
        #[arg(
            long,
            required_unless_present = "hyperswarm",
            conflicts_with = "hyperswarm"
        )]
        relay: Option<String>,
        /// Sync peer to peer over Hyperswarm (HyperDHT) instead of a relay.
        #[arg(long)]
        hyperswarm: bool,
        /// A HyperDHT bootstrap node, IPv4 `host:port` (repeatable; default:
        /// the public HyperDHT bootstrap nodes).
        #[arg(long = "bootstrap", value_name = "HOST:PORT")]
        bootstrap: Vec<std::net::SocketAddrV4>,
        /// Where the Hyperswarm UDP socket binds (default: all interfaces,
        /// any port).
        #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:0")]
        bind: std::net::SocketAddrV4,
        /// Over Hyperswarm: the blind relay (its public key, 64 hex digits)
        /// to connect through when holepunching fails, as between two
        /// randomizing NATs (run one with `pluresdb blind-relay`).
        #[arg(long = "relay-through", value_name = "PUBLIC_KEY", value_parser = parse_public_key,
              conflicts_with = "relay")]
        relay_through: Option<[u8; 32]>,
        /// Join the database this invite belongs to first.
        #[arg(long)]
        invite: Option<String>,
        /// Stop once synced (after at least this many seconds connected;
        /// over Hyperswarm, also at least 2 s after a peer connected).
        #[arg(long, value_name = "SECONDS")]
        once: Option<u64>,
    },
    /// Serve the demo app (www/), the npm package (pkg/), the HTTP API
    /// (/api) and the relay (/relay).
    Serve(ServeArgs),
    /// Run a sync relay on its own (WebSocket, at /relay).
    Relay(RelayArgs),
    /// Run a Hyperswarm blind relay: peers that cannot holepunch each
    /// other (`sync --hyperswarm --relay-through <key>`, or npm
    /// `hyperdht`'s `relayThrough`) relay their encrypted streams through
    /// it. It must be reachable on a public address. Prints its public key.
    BlindRelay(BlindRelayArgs),
}

/// Arguments of `pluresdb blind-relay`.
#[derive(Debug, clap::Args)]
pub struct BlindRelayArgs {
    /// A HyperDHT bootstrap node, IPv4 `host:port` (repeatable; default:
    /// the public HyperDHT bootstrap nodes).
    #[arg(long = "bootstrap", value_name = "HOST:PORT")]
    pub bootstrap: Vec<std::net::SocketAddrV4>,
    /// Where the UDP socket binds.
    #[arg(long, value_name = "HOST:PORT", default_value = "0.0.0.0:49737")]
    pub bind: std::net::SocketAddrV4,
    /// File holding the relay's secret seed (64 hex digits), created on
    /// first run, so the public key stays the same across restarts
    /// (default: a new key each run).
    #[arg(long = "key-file", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

/// A public key given as 64 hex digits.
fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected a public key of 64 hex digits".into());
    }
    let mut key = [0u8; 32];
    for (index, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16)
            .map_err(|error| error.to_string())?;
    }
    Ok(key)
}

/// Output formats of `list` and `query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON document: `[{"id": ..., "data": ...}]`.
    Json,
    /// JSON Lines, one record per line.
    Jsonl,
    /// An aligned table for people.
    Table,
}

/// Relay settings shared by `serve` and `relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayOptions {
    /// SQLite file of the relay's encrypted backlog (default: relay.db in
    /// the user's data directory).
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
    /// Caps the backlog file at about this many bytes; once full, publishes
    /// that must be kept are refused (clients keep them queued).
    #[arg(long = "relay-backlog-max-bytes", value_name = "BYTES")]
    pub backlog_max_bytes: Option<u64>,
    /// Bytes of envelopes kept per topic.
    #[arg(long = "relay-backlog-topic-bytes", default_value_t = 256 * 1024 * 1024)]
    pub backlog_topic_bytes: u64,
    /// Bytes of envelopes kept in total (the oldest go first past it).
    #[arg(long = "relay-backlog-total-bytes", default_value_t = 4 * 1024 * 1024 * 1024)]
    pub backlog_total_bytes: u64,
    /// Envelopes older than this many seconds are dropped.
    #[arg(long = "relay-backlog-max-age", value_name = "SECONDS", default_value_t = 30 * 24 * 3600)]
    pub backlog_max_age: u64,
    /// Topics served at once (with members or a backlog).
    #[arg(long = "relay-max-topics", default_value_t = 100_000)]
    pub max_topics: usize,
    /// Bytes per second read from one connection (a faster client is read
    /// more slowly).
    #[arg(long = "relay-bytes-per-second", default_value_t = 8 * 1024 * 1024)]
    pub bytes_per_second: u64,
    /// Bytes queued towards one member before it is dropped as too slow.
    #[arg(long = "relay-member-queue-bytes", default_value_t = 32 * 1024 * 1024)]
    pub member_queue_bytes: usize,
    /// Milliseconds a send to a client may take before the client is
    /// dropped.
    #[arg(long = "relay-send-timeout-ms", default_value_t = 10_000)]
    pub send_timeout_ms: u64,
    /// Keep the backlog and membership in Redis (`redis://host:port[/db]`)
    /// instead of SQLite, so several relay processes serve the same topics
    /// (see docs/DEPLOY.md).
    #[arg(long = "redis", value_name = "URL", env = "PLURESDB_REDIS_URL")]
    pub redis: Option<String>,
    /// With --redis: seconds a member counts after its relay last renewed
    /// its lease, so the members of a relay that died leave within this.
    #[arg(long = "relay-member-lease", value_name = "SECONDS", default_value_t = 30.0,
          value_parser = parse_lease)]
    pub member_lease: f64,
}

/// A member lease: at least 0.3 s, at most a day.
fn parse_lease(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.3..=86_400.0).contains(&seconds) {
        return Err("a member lease is from 0.3 to 86400 seconds".into());
    }
    Ok(seconds)
}

impl RelayOptions {
    /// The relay configuration, creating the backlog's directory.
    pub fn config(&self) -> std::io::Result<RelayConfig> {
        let backlog = match (&self.backlog, &self.redis) {
            (Some(_), Some(_)) => {
                return Err(std::io::Error::other(
                    "--relay-backlog and --redis name two places for the backlog; give one",
                ))
            }
            (Some(path), None) => Some(path.clone()),
            (None, None) => Some(data_dir()?.join("relay.db")),
            (None, Some(_)) => None,
        };
        if let Some(parent) = backlog
            .as_ref()
            .and_then(|b| b.parent())
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)?;
        }
        Ok(RelayConfig {
            backlog_path: backlog,
            redis_url: self.redis.clone(),
            member_lease: std::time::Duration::from_secs_f64(self.member_lease),
            backlog_frames: self.backlog_frames,
            max_frame: self.max_frame,
            rate_per_second: self.rate,
            burst: self.rate.saturating_mul(2),
            max_connections: self.max_connections,
            backlog_max_bytes: self.backlog_max_bytes,
            backlog_topic_bytes: self.backlog_topic_bytes,
            backlog_total_bytes: self.backlog_total_bytes,
            backlog_max_age: std::time::Duration::from_secs(self.backlog_max_age),
            max_topics: self.max_topics,
            bytes_per_second: self.bytes_per_second.max(1),
            burst_bytes: self.bytes_per_second.saturating_mul(2),
            member_queue_bytes: self.member_queue_bytes,
            send_timeout: std::time::Duration::from_millis(self.send_timeout_ms.max(1)),
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
    /// Connection limits and timeouts.
    #[command(flatten)]
    pub limits: serve::ConnectionLimits,
    /// Relay settings.
    #[command(flatten)]
    pub relay: RelayOptions,
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
    /// When set, every `/api` route except `/api/openapi.json` needs
    /// `Authorization: Bearer <token>` (`/api/events` also takes
    /// `?token=`). Required when `--host` is not a loopback address.
    #[arg(long, env = "PLURESDB_TOKEN")]
    pub token: Option<String>,
    /// Serve on a non-loopback address without a token (anyone who can
    /// reach it can read and write the database).
    #[arg(long)]
    pub insecure_no_token: bool,
    /// Also accept requests whose `Host` (and pages whose `Origin`) is this
    /// name (repeatable; `localhost`, `127.0.0.1`, `[::1]` and the bound
    /// address are always accepted).
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
    /// Also accept requests from pages of this origin, e.g.
    /// `https://app.example` (repeatable).
    #[arg(long = "allow-origin", value_name = "URL")]
    pub allow_origins: Vec<String>,
    /// Concurrent `/api/events` streams at most (503 beyond).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_event_streams: u32,
    /// Milliseconds an API request or static file may take (408 beyond);
    /// not applied to `/api/events` and `/relay`.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub request_timeout_ms: u64,
    /// Largest API request body, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body: usize,
    /// Sync the served database through this server's own relay (the
    /// database needs an invite: `pluresdb invite`).
    #[arg(long)]
    pub sync: bool,
    /// Connection limits and timeouts.
    #[command(flatten)]
    pub limits: serve::ConnectionLimits,
    /// Relay settings.
    #[command(flatten)]
    pub relay: RelayOptions,
}

impl ServeArgs {
    fn address(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

/// The user's data directory for PluresDB files.
pub fn data_dir() -> std::io::Result<PathBuf> {
    dirs::data_dir().map(|d| d.join("pluresdb")).ok_or_else(|| {
        std::io::Error::other("no data directory for this user; pass a path explicitly")
    })
}

/// A command's failure: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 3,
        }
    }
}

impl From<crate::Error> for Failure {
    fn from(error: crate::Error) -> Self {
        Failure::new(error.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::new(error.to_string())
    }
}

/// Global options every command that opens the database uses.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    path: Option<PathBuf>,
    embedder: Option<String>,
    indexes: Vec<String>,
    cache_bytes: Option<usize>,
}

impl DatabaseOptions {
    fn path(&self) -> Result<PathBuf, Failure> {
        match &self.path {
            Some(path) => Ok(path.clone()),
            None => Ok(data_dir()?.join("pluresdb.db")),
        }
    }

    fn open_options(&self) -> Result<OpenOptions, Failure> {
        let mut options = OpenOptions {
            indexes: self.indexes.clone(),
            cache_bytes: self.cache_bytes.unwrap_or(crate::DEFAULT_CACHE_BYTES),
            ..OpenOptions::default()
        };
        if let Some(spec) = &self.embedder {
            if spec == "minilm-static" {
                options.embedder = Some(Arc::new(crate::index::StaticEmbedder::built_in()));
                return Ok(options);
            }
            #[cfg(feature = "minilm")]
            if spec == "minilm" {
                options.embedder = Some(Arc::new(crate::index::MiniLmEmbedder::built_in()));
                return Ok(options);
            }
            let dimension = match spec.split_once(':') {
                None if spec == "hash" => 256,
                Some(("hash", dimension)) => dimension
                    .parse()
                    .map_err(|_| Failure::new(format!("bad embedder dimension in `{spec}`")))?,
                _ => {
                    return Err(Failure::new(format!(
                        "unknown embedder `{spec}` (use `minilm`, `minilm-static`, `hash` or `hash:<dimensions>`)"
                    )))
                }
            };
            options.embedder = Some(Arc::new(HashEmbedder::new(dimension)));
        }
        Ok(options)
    }

    /// Opens the database file.
    async fn open(&self) -> Result<Database<SqliteStorage>, Failure> {
        let path = self.path()?;
        let storage = SqliteStorage::open(&path).map_err(|e| Failure::new(e.to_string()))?;
        Ok(Database::open(storage, self.open_options()?).await?)
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
    let options = DatabaseOptions {
        path: cli.db,
        embedder: cli.embedder,
        indexes: cli.indexes,
        cache_bytes: cli.cache_bytes,
    };
    let result = runtime.block_on(run(cli.command, options));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("pluresdb: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command, options: DatabaseOptions) -> Result<(), Failure> {
    match command {
        Command::Serve(args) => serve::run(args, options).await,
        Command::Relay(args) => Ok(serve::run_relay(args).await?),
        Command::BlindRelay(args) => commands::run_blind_relay(args).await,
        command => commands::run(command, options).await,
    }
}
