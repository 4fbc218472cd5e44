//! The data commands: init, put, get, delete, list, query, search, status,
//! invite, sync (import and export are in `io.rs`).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{io, Command, DatabaseOptions, Failure, Format};
use crate::crdt::Document;
use crate::storage::SqliteStorage;
use crate::transport::RelayConnector;
use crate::{Database, ListOptions, Query, SearchQuery, SearchRequest, SyncState};

fn parse_json(text: &str, what: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::new(format!("{what} is not valid JSON: {e}")))
}

/// A value argument: JSON, `@file`, or `-` for stdin.
fn read_value(argument: &str) -> Result<Value, Failure> {
    let text = if argument == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else if let Some(path) = argument.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::new(format!("cannot read {path}: {e}")))?
    } else {
        argument.to_owned()
    };
    parse_json(&text, "the value")
}

fn parse_vector(text: &str) -> Result<Vec<f32>, Failure> {
    let value = parse_json(text, "the vector")?;
    let items = value
        .as_array()
        .ok_or_else(|| Failure::new("a vector is a JSON array of numbers"))?;
    items
        .iter()
        .map(|v| {
            v.as_f64()
                .map(|n| n as f32)
                .ok_or_else(|| Failure::new("a vector is a JSON array of numbers"))
        })
        .collect()
}

fn print_records(records: &[(String, Document)], format: Format) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let items: Vec<Value> = records
                .iter()
                .map(|(id, data)| json!({ "id": id, "data": data.to_value() }))
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&items).unwrap_or_default()
            )?;
        }
        Format::Jsonl => {
            for (id, data) in records {
                writeln!(out, "{}", json!({ "id": id, "data": data.to_value() }))?;
            }
        }
        Format::Table => {
            let width = records
                .iter()
                .map(|(id, _)| id.len())
                .max()
                .unwrap_or(2)
                .max(2);
            writeln!(out, "{:width$}  DATA", "ID")?;
            for (id, data) in records {
                let mut text = data.as_str().to_owned();
                if text.len() > 100 {
                    let cut = (0..=97)
                        .rev()
                        .find(|i| text.is_char_boundary(*i))
                        .unwrap_or(0);
                    text.truncate(cut);
                    text.push_str("...");
                }
                writeln!(out, "{id:width$}  {text}")?;
            }
            writeln!(out, "({} records)", records.len())?;
        }
    }
    Ok(())
}

async fn close(db: Database<SqliteStorage>) -> Result<(), Failure> {
    db.close().await?;
    Ok(())
}

pub(super) async fn run(command: Command, options: DatabaseOptions) -> Result<(), Failure> {
    let db = options.open().await?;
    let result = execute(command, &db, &options).await;
    close(db).await?;
    result
}

async fn execute(
    command: Command,
    db: &Database<SqliteStorage>,
    options: &DatabaseOptions,
) -> Result<(), Failure> {
    match command {
        Command::Init => {
            println!("database: {}", options.path()?.display());
            println!("actor: {}", db.actor());
            println!("records: {}", db.len());
        }
        Command::Put { id, value, vector } => {
            let document = Document::from_value(&read_value(&value)?)
                .map_err(|e| Failure::new(e.to_string()))?;
            let vector = vector.map(|v| parse_vector(&v)).transpose()?;
            db.put_document(&id, document, vector.map(Into::into))
                .await?;
        }
        Command::Get { id } => match db.get_document(&id).await? {
            Some(document) => println!("{document}"),
            None => return Err(Failure::not_found(format!("no record `{id}`"))),
        },
        Command::Delete { id } => {
            if !db.delete(&id).await? {
                return Err(Failure::not_found(format!("no record `{id}`")));
            }
        }
        Command::List {
            prefix,
            limit,
            cursor,
            format,
        } => {
            let page = db
                .list(&ListOptions {
                    prefix,
                    limit,
                    cursor,
                })
                .await?;
            print_records(&page.items, format)?;
            if let Some(cursor) = page.next_cursor {
                eprintln!("more: --cursor {cursor}");
            }
        }
        Command::Query { query, format } => {
            let query = Query::from_json(&parse_json(&query, "the query")?)
                .map_err(|e| Failure::new(e.to_string()))?;
            print_records(&db.query(&query).await?, format)?;
        }
        Command::Search {
            query,
            k,
            min_score,
            filter,
        } => {
            let query = match parse_json(&query, "the search vector") {
                Ok(Value::Array(_)) => SearchQuery::Vector(parse_vector(&query)?),
                _ => SearchQuery::Text(query),
            };
            let filter = filter
                .map(|f| {
                    Query::from_json(&parse_json(&f, "the filter")?)
                        .map_err(|e| Failure::new(e.to_string()))
                })
                .transpose()?;
            let hits = db
                .search(&SearchRequest {
                    query,
                    k,
                    min_score,
                    filter,
                    ef: None,
                })
                .await?;
            for hit in hits {
                println!(
                    "{}",
                    json!({ "id": hit.id, "score": hit.score, "data": hit.data.to_value() })
                );
            }
        }
        Command::Status => status(db, options).await?,
        Command::Import { file, batch } => io::import(db, &file, batch).await?,
        Command::Export { file } => io::export(db, file.as_deref()).await?,
        Command::Invite => println!("{}", db.create_invite().await?),
        Command::Sync {
            relay,
            hyperswarm,
            bootstrap,
            bind,
            relay_through,
            invite,
            once,
        } => {
            let via = match relay {
                Some(relay) if !hyperswarm => SyncVia::Relay(relay),
                _ => SyncVia::Hyperswarm {
                    bootstrap,
                    bind,
                    relay_through,
                },
            };
            sync(db, via, invite, once).await?
        }
        Command::Serve(_) | Command::Relay(_) | Command::BlindRelay(_) => {
            unreachable!("dispatched in cli::run")
        }
    }
    Ok(())
}

async fn status(db: &Database<SqliteStorage>, options: &DatabaseOptions) -> Result<(), Failure> {
    let path = options.path()?;
    let stats = db.stats()?;
    let index = db.index_stats();
    let size: u64 = ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", path.display())).ok())
        .map(|m| m.len())
        .sum();
    let vector: serde_json::Map<String, Value> = db
        .version_vector()
        .iter()
        .map(|(actor, seq)| (actor.to_string(), json!(seq)))
        .collect();
    let identity = db.sync_identity();
    let status = json!({
        "database": path,
        "sizeOnDisk": size,
        "records": stats.live,
        "tombstones": stats.tombstones,
        "conflicts": stats.conflicted,
        "actor": db.actor().to_string(),
        "actors": vector.len(),
        "versionVector": vector,
        "index": {
            "dimension": index.dimension,
            "vectors": index.vectors,
            "growing": index.growing,
            "segments": index.segments,
        },
        "sync": identity.map(|i| json!({
            "topic": i.topic().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        })),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&status).unwrap_or_default()
    );
    Ok(())
}

/// How `pluresdb sync` reaches the other replicas.
#[cfg_attr(not(feature = "hyperswarm"), allow(dead_code))]
enum SyncVia {
    Relay(String),
    Hyperswarm {
        bootstrap: Vec<std::net::SocketAddrV4>,
        bind: std::net::SocketAddrV4,
        relay_through: Option<[u8; 32]>,
    },
}

async fn sync(
    db: &Database<SqliteStorage>,
    via: SyncVia,
    invite: Option<String>,
    once: Option<u64>,
) -> Result<(), Failure> {
    if let Some(invite) = invite {
        db.join_invite(&invite).await?;
    }
    // Peer to peer there is no relay to confirm against: `--once` also
    // waits until a peer has been connected for a moment.
    let needs_peer = matches!(via, SyncVia::Hyperswarm { .. });
    let mut peer_since: Option<Instant> = None;
    let handle = match via {
        SyncVia::Relay(relay) => {
            eprintln!("syncing through {relay} (Ctrl-C to stop)");
            db.sync(RelayConnector::new(relay))?
        }
        #[cfg(feature = "hyperswarm")]
        SyncVia::Hyperswarm {
            mut bootstrap,
            bind,
            relay_through,
        } => {
            if bootstrap.is_empty() {
                bootstrap = crate::transport::hyperswarm::PUBLIC_BOOTSTRAP.to_vec();
            }
            let mut connector = crate::transport::HyperswarmConnector::new(bind, bootstrap);
            if let Some(relay) = relay_through {
                connector = connector.with_relay_through(relay);
            }
            eprintln!(
                "syncing over {} (Ctrl-C to stop)",
                crate::transport::Connector::describe(&connector)
            );
            db.sync(connector)?
        }
        #[cfg(not(feature = "hyperswarm"))]
        SyncVia::Hyperswarm { .. } => {
            return Err(Failure::new(
                "this build has no Hyperswarm support (build with the `hyperswarm` feature)",
            ))
        }
    };
    let started = Instant::now();
    let mut last = None;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let status = handle.status();
        let line = format!(
            "{} (peers {}, pending {}, rejected {}{})",
            status.state.as_str(),
            status.peers,
            status.pending,
            status.rejected,
            status
                .last_error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
        if last.as_ref() != Some(&line) {
            eprintln!("sync: {line}");
            last = Some(line);
        }
        if status.peers > 0 && peer_since.is_none() {
            peer_since = Some(Instant::now());
        }
        if let Some(seconds) = once {
            let peer_settled = !needs_peer
                || peer_since.is_some_and(|since| since.elapsed() >= Duration::from_secs(2));
            if status.state == SyncState::Synced
                && started.elapsed() >= Duration::from_secs(seconds)
                && peer_settled
            {
                break;
            }
        }
    }
    handle.stop();
    Ok(())
}

/// `pluresdb blind-relay`: serves until interrupted.
#[cfg(feature = "hyperswarm")]
pub async fn run_blind_relay(args: super::BlindRelayArgs) -> Result<(), Failure> {
    use crate::hyperswarm::blind_relay::BlindRelay;
    use crate::hyperswarm::hyperdht::HyperDht;
    let seed = match &args.key_file {
        Some(path) => load_or_create_seed(path)?,
        None => crate::hyperswarm::KeyPair::generate().seed(),
    };
    let bootstrap = if args.bootstrap.is_empty() {
        crate::transport::hyperswarm::PUBLIC_BOOTSTRAP.to_vec()
    } else {
        args.bootstrap
    };
    let dht = HyperDht::bind(args.bind, bootstrap)
        .await
        .map_err(|error| Failure::new(format!("cannot start the DHT node: {error}")))?;
    let reachability = dht.reachability().await;
    if !reachability.open {
        eprintln!(
            "warning: this node does not look reachable from the internet (DHT nodes could not \
             reach it unasked); peers behind NATs cannot use it as a relay"
        );
    }
    let relay = BlindRelay::start(&dht, crate::hyperswarm::KeyPair::from_seed(seed))
        .await
        .map_err(|error| Failure::new(format!("cannot start the blind relay: {error}")))?;
    let public_key: String = relay
        .public_key()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    println!(
        "{}",
        json!({
            "event": "relaying",
            "publicKey": public_key,
            "address": reachability.public.map(|address| address.to_string()),
        })
    );
    eprintln!("blind relay {public_key} running (Ctrl-C to stop)");
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

#[cfg(not(feature = "hyperswarm"))]
pub async fn run_blind_relay(_args: super::BlindRelayArgs) -> Result<(), Failure> {
    Err(Failure::new(
        "this build has no Hyperswarm support (build with the `hyperswarm` feature)",
    ))
}

/// The seed in `path` (64 hex digits), or a new one written there (only
/// the owner may read it).
#[cfg(feature = "hyperswarm")]
fn load_or_create_seed(path: &std::path::Path) -> Result<[u8; 32], Failure> {
    match std::fs::read_to_string(path) {
        Ok(text) => super::parse_public_key(&text).map_err(|why| {
            Failure::new(format!("{}: not a relay key file ({why})", path.display()))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let seed = crate::hyperswarm::KeyPair::generate().seed();
            let text: String = seed.iter().map(|byte| format!("{byte:02x}")).collect();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let written = options
                .open(path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
            written.map_err(|error| {
                Failure::new(format!(
                    "cannot write the key file {}: {error}",
                    path.display()
                ))
            })?;
            Ok(seed)
        }
        Err(error) => Err(Failure::new(format!(
            "cannot read the key file {}: {error}",
            path.display()
        ))),
    }
}
