//! Sync benchmarks over a loopback relay (native): catch-up of a fresh
//! peer, live propagation latency, bytes per update, and relay fan-out with
//! many WebSocket clients. Writes `target/bench-sync.json`, which
//! `npm run bench` puts into docs/BENCHMARKS.md.
//!
//! `cargo bench --bench sync` (`-- --quick` for a smaller run).

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures::{SinkExt, StreamExt};
    use pluresdb::crdt::Document;
    use pluresdb::relay::{RelayConfig, RelayServer};
    use pluresdb::storage::SqliteStorage;
    use pluresdb::sync::relay_frame::{ClientFrame, RelayFrame, RELAY_VERSION};
    use pluresdb::sync::SyncProtocol;
    use pluresdb::transport::RelayConnector;
    use pluresdb::{Database, OpenOptions, SyncEvent, SyncState};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;

    fn stats(mut values: Vec<f64>) -> Value {
        values.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        json!({ "median": at(0.5), "p50": at(0.5), "p99": at(0.99), "min": values[0], "max": values[values.len() - 1], "runs": values.len() })
    }

    async fn start_relay(config: RelayConfig) -> (SocketAddr, RelayServer) {
        let server = RelayServer::new(config).unwrap();
        let app = axum::Router::new().nest("/relay", server.router());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (address, server)
    }

    fn document(i: usize) -> Document {
        Document::from_value(&json!({
            "title": format!("Record {i}"),
            "n": i,
            "body": "lorem ipsum dolor sit amet ".repeat(36),
        }))
        .unwrap()
    }

    async fn open(dir: &std::path::Path, name: &str) -> Database<SqliteStorage> {
        Database::open(
            SqliteStorage::open(dir.join(format!("{name}.db"))).unwrap(),
            OpenOptions::default(),
        )
        .await
        .unwrap()
    }

    /// A fresh peer joins and catches up `count` records.
    async fn catch_up(count: usize, runs: usize) -> Value {
        let mut times = Vec::new();
        for _ in 0..runs {
            let dir = tempfile::tempdir().unwrap();
            let (address, _relay) = start_relay(RelayConfig::default()).await;
            let url = format!("ws://{address}/relay");
            let a = open(dir.path(), "a").await;
            a.put_many((0..count).map(|i| (format!("r{i:06}"), document(i))))
                .await
                .unwrap();
            let invite = a.create_invite().await.unwrap();
            let sync_a = a.sync(RelayConnector::new(url.clone())).unwrap();
            while sync_a.status().state != SyncState::Synced {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let b = open(dir.path(), "b").await;
            b.join_invite(&invite).await.unwrap();
            let start = Instant::now();
            let sync_b = b.sync(RelayConnector::new(url)).unwrap();
            while b.len() < count {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            drop((sync_a, sync_b));
            a.close().await.unwrap();
            b.close().await.unwrap();
        }
        json!({ "records": count, "ms": stats(times) })
    }

    /// Real text to fill records with: this repository's documentation and
    /// Rust sources.
    fn corpus() -> Vec<u8> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut text = Vec::new();
        let mut dirs = vec![root.join("docs"), root.join("src")];
        while let Some(dir) = dirs.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.path())
                .collect();
            entries.sort();
            for path in entries {
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "md" || e == "rs") {
                    text.extend(std::fs::read(&path).unwrap());
                }
            }
        }
        text
    }

    /// The first sync of a database of about `megabytes` MB (records of
    /// ~10 KB of real text) through a relay with default limits: how long
    /// A takes to publish it all (its offline queue, kept in the backlog),
    /// and how long a fresh B takes to hold every record.
    async fn first_sync(megabytes: usize) -> Value {
        const RECORD_BYTES: usize = 10_000;
        let text = corpus();
        let count = megabytes * 1_000_000 / RECORD_BYTES;
        let dir = tempfile::tempdir().unwrap();
        let (address, relay) = start_relay(RelayConfig::default()).await;
        let url = format!("ws://{address}/relay");
        let a = open(dir.path(), "a").await;
        for start in (0..count).step_by(1_000) {
            let end = (start + 1_000).min(count);
            a.put_many((start..end).map(|i| {
                let at = (i * 7_919) % (text.len() - RECORD_BYTES);
                let body = String::from_utf8_lossy(&text[at..at + RECORD_BYTES]).into_owned();
                (
                    format!("doc{i:06}"),
                    Document::from_value(&json!({ "n": i, "body": body })).unwrap(),
                )
            }))
            .await
            .unwrap();
        }
        let bytes = a.stats().unwrap().live as usize * RECORD_BYTES;
        let invite = a.create_invite().await.unwrap();
        let start = Instant::now();
        let sync_a = a.sync(RelayConnector::new(url.clone())).unwrap();
        while sync_a.status().state != SyncState::Synced {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let publish_ms = start.elapsed().as_secs_f64() * 1000.0;
        let b = open(dir.path(), "b").await;
        b.join_invite(&invite).await.unwrap();
        let start = Instant::now();
        let sync_b = b.sync(RelayConnector::new(url)).unwrap();
        while b.len() < count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let catch_up_ms = start.elapsed().as_secs_f64() * 1000.0;
        let stats = relay.stats();
        drop((sync_a, sync_b));
        a.close().await.unwrap();
        b.close().await.unwrap();
        json!({
            "records": count,
            "bytes": bytes,
            "publishMs": publish_ms,
            "catchUpMs": catch_up_ms,
            "refused": stats.refused,
            "tooSlow": stats.too_slow,
        })
    }

    /// One peer writes, the other observes: commit-to-visible latency.
    async fn latency(samples: usize) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let (address, _relay) = start_relay(RelayConfig::default()).await;
        let url = format!("ws://{address}/relay");
        let a = open(dir.path(), "a").await;
        let b = open(dir.path(), "b").await;
        b.join_invite(&a.create_invite().await.unwrap())
            .await
            .unwrap();
        let _sa = a.sync(RelayConnector::new(url.clone())).unwrap();
        let _sb = b.sync(RelayConnector::new(url)).unwrap();
        let mut events = b.subscribe();
        a.put("warm-up", json!(0)).await.unwrap();
        while b.get("warm-up").await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut times = Vec::new();
        for i in 0..samples {
            let id = format!("l{i}");
            let start = Instant::now();
            a.put_document(&id, document(i), None).await.unwrap();
            loop {
                match events.next().await {
                    Some(SyncEvent::Upsert { id: seen }) if seen == id => break,
                    Some(_) => continue,
                    None => panic!("events ended"),
                }
            }
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        json!({ "samples": samples, "ms": stats(times) })
    }

    /// Bytes a live update of one record adds on the wire.
    fn overhead() -> Value {
        let identity = pluresdb::sync::SyncIdentity::generate();
        let mut store = pluresdb::crdt::CrdtStore::new(pluresdb::crdt::ActorId::random());
        let op = store.put("note:1", document(1), 1);
        let record = op.to_bytes().len();
        let protocol = SyncProtocol::new(store.actor(), identity.cipher());
        let envelope = protocol.live(std::slice::from_ref(&op)).remove(0);
        let publish = ClientFrame::Publish {
            sequence: 0,
            keep: true,
            envelope: envelope.clone(),
        }
        .encode()
        .len();
        let frame = RelayFrame::Frame {
            sequence: 1,
            from: 1,
            envelope: envelope.clone(),
        }
        .encode()
        .len();
        json!({
            "operationBytes": record,
            "envelopeBytes": envelope.len(),
            "overheadBytes": envelope.len() - record,
            "publishFrameBytes": publish,
            "deliveredFrameBytes": frame,
        })
    }

    /// `clients` WebSocket clients on `topics` topics; one publisher per
    /// topic sends for `seconds`; every delivery is counted.
    async fn fan_out(clients: usize, topics: usize, seconds: f64) -> Value {
        let (address, relay) = start_relay(RelayConfig {
            max_members_per_topic: clients,
            rate_per_second: 2_000,
            burst: 4_000,
            ..RelayConfig::default()
        })
        .await;
        let url = format!("ws://{address}/relay");
        let delivered = Arc::new(AtomicU64::new(0));
        let mut publishers = Vec::new();
        let mut receivers = Vec::new();
        for c in 0..clients {
            let join_key = [(c % topics) as u8; 32];
            let (socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
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
                drop(sink);
            }
            let delivered = delivered.clone();
            receivers.push(tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Binary(bytes) = message {
                        if bytes.first() == Some(&0x82) {
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        let held = relay.stats().connections;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The relay refuses what does not look like a sealed envelope.
        let mut envelope = vec![7u8; 200];
        envelope[0] = pluresdb::sync::crypto::ENVELOPE_VERSION;
        let start = Instant::now();
        let base = delivered.load(Ordering::Relaxed);
        let mut sent = 0u64;
        let deadline = start + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for mut sink in publishers {
            let envelope = envelope.clone();
            tasks.push(tokio::spawn(async move {
                let mut count = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                while Instant::now() < deadline {
                    tick.tick().await;
                    let frame = ClientFrame::Publish {
                        sequence: count as u32,
                        keep: false,
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
                count
            }));
        }
        for task in tasks {
            sent += task.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let elapsed = start.elapsed().as_secs_f64();
        let total = delivered.load(Ordering::Relaxed) - base;
        let expected = sent * (clients / topics - 1) as u64;
        let stats = relay.stats();
        for receiver in receivers {
            receiver.abort();
        }
        json!({
            "clients": clients,
            "topics": topics,
            "connectionsHeld": held,
            "published": sent,
            "delivered": total,
            "expectedDeliveries": expected,
            "deliveriesPerSecond": total as f64 / elapsed,
            "refused": stats.refused,
        })
    }

    pub fn main() {
        let quick = std::env::args().any(|a| a == "--quick");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let results = runtime.block_on(async {
            eprintln!("sync bench: catch-up");
            let catch_up = catch_up(if quick { 2_000 } else { 10_000 }, if quick { 1 } else { 3 }).await;
            eprintln!("sync bench: latency");
            let latency = latency(if quick { 50 } else { 300 }).await;
            eprintln!("sync bench: fan-out");
            let fan_out = fan_out(if quick { 200 } else { 1_000 }, 10, if quick { 2.0 } else { 5.0 }).await;
            eprintln!("sync bench: first sync");
            let first_sync = first_sync(if quick { 10 } else { 100 }).await;
            json!({ "catchUp": catch_up, "latency": latency, "overhead": overhead(), "fanOut": fan_out, "firstSync": first_sync })
        });
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-sync.json");
        std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
        println!("{}", serde_json::to_string_pretty(&results).unwrap());
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    // cargo test runs benches with --bench-less arguments; only run when
    // invoked as a benchmark.
    if std::env::args().any(|a| a == "--bench") {
        native::main();
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}
