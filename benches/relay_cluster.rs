//! The relay on SQLite against the relay cluster on Redis, side by side in
//! one run on loopback: one relay on SQLite, one relay on Redis, two relays
//! on one Redis. Every relay is a `pluresdb relay` process (release build),
//! Redis is Debian's `redis-server` started here (append-only file, fsync
//! every second: the durability of the SQLite backlog's WAL with
//! `synchronous=NORMAL`). Measures clients held, deliveries per second of
//! kept envelopes, catch-up of 10,000 records published through one relay
//! and read through another, and the time from a relay's death (SIGKILL) to
//! its clients' writes reaching a peer through another relay. Writes
//! `target/bench-relay-cluster.json`, which `npm run bench` puts into
//! docs/BENCHMARKS.md.
//!
//! `cargo bench --bench relay_cluster` (`-- --quick` for a smaller run).

#[cfg(not(target_arch = "wasm32"))]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;
#[cfg(not(target_arch = "wasm32"))]
#[path = "../tests/common/relay_process.rs"]
mod relay_process;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use futures::{SinkExt, StreamExt};
    use pluresdb::crdt::Document;
    use pluresdb::storage::SqliteStorage;
    use pluresdb::sync::relay_frame::{ClientFrame, RELAY_VERSION};
    use pluresdb::transport::RelayConnector;
    use pluresdb::{Database, OpenOptions, SyncState};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;

    use super::redis_server::RedisServer;
    use super::relay_process::{balancer, RelayProcess};

    fn stats(mut values: Vec<f64>) -> Value {
        values.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        json!({ "median": at(0.5), "min": values[0], "max": values[values.len() - 1], "runs": values.len() })
    }

    /// Flags every relay of the benchmark gets: room for the offered load.
    const RELAY_FLAGS: &[&str] = &["--relay-rate", "5000", "--max-connections", "4000"];

    /// Redis with its append-only file fsynced every second.
    fn start_redis(dir: &std::path::Path) -> RedisServer {
        RedisServer::start_with(dir, &["--appendfsync", "everysec"])
    }

    /// The relays of one setup, and what keeps their state.
    struct Setup {
        name: &'static str,
        relays: Vec<RelayProcess>,
        _redis: Option<RedisServer>,
        _dir: tempfile::TempDir,
    }

    fn setup(name: &'static str, relays: usize, on_redis: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let redis = on_redis.then(|| start_redis(dir.path()));
        let relays = (0..relays)
            .map(|_| match &redis {
                Some(redis) => RelayProcess::on_redis(&redis.url(), RELAY_FLAGS),
                None => RelayProcess::on_sqlite(RELAY_FLAGS),
            })
            .collect();
        Setup {
            name,
            relays,
            _redis: redis,
            _dir: dir,
        }
    }

    /// `clients` clients on `topics` topics, spread over the relays; one
    /// publisher per topic publishes kept 200-byte envelopes every
    /// millisecond for `seconds`; every delivery is counted.
    async fn fan_out(urls: &[String], clients: usize, topics: usize, seconds: f64) -> Value {
        let delivered = Arc::new(AtomicU64::new(0));
        let welcomed = Arc::new(AtomicUsize::new(0));
        let mut publishers = Vec::new();
        let mut receivers = Vec::new();
        for c in 0..clients {
            let mut join_key = [1u8; 32];
            join_key[..8].copy_from_slice(&((c % topics) as u64).to_le_bytes());
            let url = &urls[(c / topics) % urls.len()];
            let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let (mut sink, mut stream) = socket.split();
            let join = ClientFrame::Join {
                version: RELAY_VERSION,
                join_key,
                since: u64::MAX,
            };
            sink.send(Message::Binary(join.encode().into()))
                .await
                .unwrap();
            if c < topics {
                publishers.push(sink);
            } else {
                // Kept open: a closed sink would end the connection.
                receivers.push(tokio::spawn(async move {
                    let _sink = sink;
                    std::future::pending::<()>().await;
                }));
            }
            let delivered = delivered.clone();
            let welcomed = welcomed.clone();
            receivers.push(tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Binary(bytes) = message {
                        match bytes.first() {
                            Some(0x82) => {
                                delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(0x81) => {
                                welcomed.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while welcomed.load(Ordering::Relaxed) < clients && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held = welcomed.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut envelope = vec![7u8; 200];
        envelope[0] = pluresdb::sync::crypto::ENVELOPE_VERSION;
        let start = Instant::now();
        let base = delivered.load(Ordering::Relaxed);
        let end = start + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for mut sink in publishers {
            let envelope = envelope.clone();
            tasks.push(tokio::spawn(async move {
                let mut count = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                while Instant::now() < end {
                    tick.tick().await;
                    let frame = ClientFrame::Publish {
                        sequence: count as u32,
                        keep: true,
                        envelope: envelope.clone(),
                    };
                    if sink
                        .send(Message::Binary(frame.encode().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    count += 1;
                }
                (count, sink)
            }));
        }
        let mut sent = 0;
        let mut sinks = Vec::new();
        for task in tasks {
            let (count, sink) = task.await.unwrap();
            sent += count;
            sinks.push(sink);
        }
        // What was published in the window, delivered within a second.
        let expected = sent * (clients / topics - 1) as u64;
        let drain = Instant::now() + Duration::from_secs(1);
        while delivered.load(Ordering::Relaxed) - base < expected && Instant::now() < drain {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let total = delivered.load(Ordering::Relaxed) - base;
        for receiver in receivers {
            receiver.abort();
        }
        drop(sinks);
        json!({
            "clients": clients,
            "topics": topics,
            "held": held,
            "published": sent,
            "delivered": total,
            "expected": expected,
            "deliveriesPerSecond": total as f64 / elapsed,
        })
    }

    async fn open(dir: &std::path::Path, name: &str) -> Database<SqliteStorage> {
        Database::open(
            SqliteStorage::open(dir.join(format!("{name}.db"))).unwrap(),
            OpenOptions::default(),
        )
        .await
        .unwrap()
    }

    fn document(i: usize) -> Document {
        Document::from_value(&json!({
            "title": format!("Record {i}"),
            "n": i,
            "body": "lorem ipsum dolor sit amet ".repeat(36),
        }))
        .unwrap()
    }

    async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A publishes `count` records through the first relay; a fresh B
    /// catches up through the last one.
    async fn catch_up(urls: &[String], count: usize, runs: usize) -> Value {
        let mut times = Vec::new();
        for run in 0..runs {
            let dir = tempfile::tempdir().unwrap();
            let a = open(dir.path(), "a").await;
            a.put_many((0..count).map(|i| (format!("r{run}-{i:06}"), document(i))))
                .await
                .unwrap();
            let invite = a.create_invite().await.unwrap();
            let sync_a = a.sync(RelayConnector::new(urls[0].clone())).unwrap();
            until("A published", Duration::from_secs(300), async || {
                sync_a.status().state == SyncState::Synced
            })
            .await;
            drop(sync_a);
            let b = open(dir.path(), "b").await;
            b.join_invite(&invite).await.unwrap();
            let start = Instant::now();
            let sync_b = b
                .sync(RelayConnector::new(urls[urls.len() - 1].clone()))
                .unwrap();
            until("B caught up", Duration::from_secs(300), async || {
                b.len() >= count
            })
            .await;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            drop(sync_b);
            a.close().await.unwrap();
            b.close().await.unwrap();
        }
        json!({ "records": count, "ms": stats(times) })
    }

    /// Two relays on one Redis behind a load balancer: A syncs through the
    /// balancer (so the first relay), B through the second relay. The
    /// first relay is SIGKILLed and A writes at once: the time until B has
    /// the write (A noticing, backing off, reconnecting through the
    /// balancer to the second relay, publishing), per run.
    async fn failover(runs: usize) -> Value {
        let redis_dir = tempfile::tempdir().unwrap();
        let redis = start_redis(redis_dir.path());
        let second = RelayProcess::on_redis(&redis.url(), RELAY_FLAGS);
        let backends = Arc::new(Mutex::new(Vec::new()));
        let front = balancer(backends.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), "a").await;
        let b = open(dir.path(), "b").await;
        b.join_invite(&a.create_invite().await.unwrap())
            .await
            .unwrap();
        let sync_b = b.sync(RelayConnector::new(second.url.clone())).unwrap();
        let mut times = Vec::new();
        for run in 0..runs {
            let mut first = RelayProcess::on_redis(&redis.url(), RELAY_FLAGS);
            *backends.lock().unwrap() = vec![first.address, second.address];
            let sync_a = a
                .sync(RelayConnector::new(format!("ws://{front}/relay")))
                .unwrap();
            let warm = format!("warm{run}");
            a.put(&warm, json!(run)).await.unwrap();
            until(
                "B has the warm-up write",
                Duration::from_secs(30),
                async || {
                    b.get(&warm).await.unwrap().is_some()
                        && sync_a.status().state == SyncState::Synced
                },
            )
            .await;
            let id = format!("after-failover{run}");
            let start = Instant::now();
            first.kill();
            a.put(&id, json!(run)).await.unwrap();
            until(
                "B has the write made after the failover",
                Duration::from_secs(60),
                async || b.get(&id).await.unwrap().is_some(),
            )
            .await;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            drop(sync_a);
        }
        drop(sync_b);
        json!({ "ms": stats(times) })
    }

    pub fn main() {
        let quick = std::env::args().any(|a| a == "--quick");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let results = runtime.block_on(async {
            let (clients, seconds, records, runs) = if quick {
                (200, 2.0, 2_000, 1)
            } else {
                (1_000, 5.0, 10_000, 3)
            };
            let mut setups = Vec::new();
            for (name, relays, on_redis) in [
                ("one relay on SQLite", 1, false),
                ("one relay on Redis", 1, true),
                ("two relays on one Redis", 2, true),
            ] {
                eprintln!("relay cluster bench: {name}");
                let setup = setup(name, relays, on_redis);
                let urls: Vec<String> = setup.relays.iter().map(|r| r.url.clone()).collect();
                let topics: usize = std::env::var("PLURESDB_BENCH_TOPICS")
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(10);
                let fan_out = fan_out(&urls, clients, topics, seconds).await;
                let catch_up = catch_up(&urls, records, runs).await;
                setups.push(json!({
                    "name": setup.name,
                    "relays": relays,
                    "fanOut": fan_out,
                    "catchUp": catch_up,
                }));
            }
            eprintln!("relay cluster bench: failover");
            let failover = failover(if quick { 3 } else { 10 }).await;
            json!({ "setups": setups, "failover": failover })
        });
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/bench-relay-cluster.json");
        std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
        println!("{}", serde_json::to_string_pretty(&results).unwrap());
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if std::env::args().any(|a| a == "--bench") {
        native::main();
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}
