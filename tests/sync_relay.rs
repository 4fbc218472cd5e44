//! Sync through a real relay on loopback: two native databases, offline
//! edits and conflicts, a relay restart, peers never online together, the
//! backlog holding only ciphertext, and a peer with the wrong key.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::time::Duration;

use common::{eventually, open, pair, publish_everything, Db, Relay};
use pluresdb::relay::RelayConfig;
use pluresdb::transport::RelayConnector;
use pluresdb::SyncState;
use serde_json::json;

async fn state_of(db: &Db) -> Vec<(String, Option<serde_json::Value>, usize)> {
    let mut state = Vec::new();
    for (id, _) in db.list(&Default::default()).await.unwrap().items {
        let conflicts = db.conflicts(&id).await.unwrap().len();
        let value = db.get(&id).await.unwrap();
        state.push((id, value, conflicts));
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_sync_live_through_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), &dir.path().join("relay.db")).await;
    let a = open(dir.path(), "a").await;
    let b = open(dir.path(), "b").await;
    a.put("before", json!("written before sync")).await.unwrap();
    let invite = a.create_invite().await.unwrap();
    b.join_invite(&invite).await.unwrap();
    let sync_a = a.sync(RelayConnector::new(relay.url())).unwrap();
    let sync_b = b.sync(RelayConnector::new(relay.url())).unwrap();

    eventually("b has a's earlier write", async || {
        b.get("before").await.unwrap() == Some(json!("written before sync"))
    })
    .await;
    a.put("live", json!({ "n": 1 })).await.unwrap();
    eventually("b sees a's live write", async || {
        b.get("live").await.unwrap() == Some(json!({ "n": 1 }))
    })
    .await;
    b.put("reply", json!("from b")).await.unwrap();
    eventually("a sees b's write", async || {
        a.get("reply").await.unwrap() == Some(json!("from b"))
    })
    .await;
    assert!(b.delete("live").await.unwrap());
    eventually("a sees b's delete", async || {
        a.get("live").await.unwrap().is_none()
    })
    .await;
    eventually("both synced", async || {
        sync_a.status().state == SyncState::Synced && sync_b.status().state == SyncState::Synced
    })
    .await;
    assert_eq!(sync_a.status().peers, 1);
    assert_eq!(a.version_vector(), b.version_vector());
    assert_eq!(state_of(&a).await, state_of(&b).await);

    // The relay's backlog holds ciphertext only.
    drop((sync_a, sync_b));
    let backlog = rusqlite::Connection::open(dir.path().join("relay.db")).unwrap();
    let mut rows = backlog.prepare("SELECT envelope FROM backlog").unwrap();
    let envelopes: Vec<Vec<u8>> = rows
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!envelopes.is_empty(), "live changes were kept");
    for envelope in &envelopes {
        for plaintext in ["written before sync", "from b", "before", "reply"] {
            assert!(
                !envelope
                    .windows(plaintext.len())
                    .any(|w| w == plaintext.as_bytes()),
                "the backlog contains `{plaintext}` in clear"
            );
        }
    }
    assert!(relay.server.stats().published > 0);
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_converge_with_the_same_conflicts_and_survive_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let backlog = dir.path().join("relay.db");
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), &backlog).await;
    let address = relay.address;
    let (a, b) = pair(dir.path()).await;
    a.put("shared", json!("original")).await.unwrap();
    let sync_a = a.sync(RelayConnector::new(relay.url())).unwrap();
    let sync_b = b.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("b has the original", async || {
        b.get("shared").await.unwrap() == Some(json!("original"))
    })
    .await;

    // Both go offline and edit the same record and their own ones.
    drop((sync_a, sync_b));
    a.put("shared", json!("edited on a")).await.unwrap();
    b.put("shared", json!("edited on b")).await.unwrap();
    a.put("only-a", json!(1)).await.unwrap();
    b.put("only-b", json!(2)).await.unwrap();
    b.delete("only-b").await.unwrap();
    b.put("only-b", json!(3)).await.unwrap();

    // The relay restarts (same backlog file) while they reconnect.
    relay.stop();
    let sync_a = a
        .sync(RelayConnector::new(format!("ws://{address}/relay")))
        .unwrap();
    let sync_b = b
        .sync(RelayConnector::new(format!("ws://{address}/relay")))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(sync_a.status().state, SyncState::Synced, "no relay yet");
    let relay = Relay::start(address, &backlog).await;

    eventually("both converge", async || {
        state_of(&a).await == state_of(&b).await
            && a.get("only-a").await.unwrap().is_some()
            && b.get("only-a").await.unwrap().is_some()
            && a.get("only-b").await.unwrap() == Some(json!(3))
    })
    .await;
    let conflicts_a = a.conflicts("shared").await.unwrap();
    let conflicts_b = b.conflicts("shared").await.unwrap();
    assert_eq!(
        conflicts_a.len(),
        1,
        "the losing edit is kept as a conflict"
    );
    assert_eq!(conflicts_a, conflicts_b, "the same conflict on both");
    let winner = a.get("shared").await.unwrap().unwrap();
    assert!(winner == json!("edited on a") || winner == json!("edited on b"));
    assert_eq!(b.get("shared").await.unwrap().unwrap(), winner);
    drop((sync_a, sync_b));
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_never_online_together_sync_through_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), &dir.path().join("relay.db")).await;
    let (a, b) = pair(dir.path()).await;
    for i in 0..50 {
        a.put(&format!("k{i}"), json!({ "i": i })).await.unwrap();
    }
    publish_everything(&a, relay.url()).await;

    let sync_b = b.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("b got a's writes from the backlog", async || b.len() == 50).await;
    assert_eq!(sync_b.status().peers, 0, "a was never there");
    drop(sync_b);
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_key_can_neither_read_nor_inject() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), &dir.path().join("relay.db")).await;
    let a = open(dir.path(), "a").await;
    let intruder = open(dir.path(), "intruder").await;
    let invite = a.create_invite().await.unwrap();
    // Same database id, another secret: another join key, so another
    // topic; the two never meet.
    let identity = a.sync_identity().unwrap();
    let forged = pluresdb::sync::SyncIdentity::new(identity.database_id(), [42; 32]).unwrap();
    assert_ne!(forged.invite(), invite);
    assert_ne!(forged.topic(), identity.topic());
    intruder.join_invite(&forged.invite()).await.unwrap();
    a.put("secret", json!("only for a's group")).await.unwrap();
    intruder.put("injected", json!("evil")).await.unwrap();
    let sync_a = a.sync(RelayConnector::new(relay.url())).unwrap();
    let sync_i = intruder.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("both published", async || {
        sync_a.status().state == SyncState::Synced && sync_i.status().state == SyncState::Synced
    })
    .await;
    // Someone who has a's join key but not its secret (say, a relay that
    // saw it) publishes envelopes sealed with another key on a's topic.
    let mut insider = common::RawClient::join(&relay.url(), identity.join_key(), 0).await;
    let sealed_elsewhere = forged.cipher().seal(b"not a real message");
    assert!(insider.publish(sealed_elsewhere, true).await);
    assert!(insider.publish(common::junk_envelope(300), true).await);
    eventually("a rejected the insider's envelopes", async || {
        sync_a.status().rejected >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.get("injected").await.unwrap(), None);
    assert_eq!(intruder.get("secret").await.unwrap(), None);
    assert_eq!(sync_i.status().peers, 0, "the intruder never met a");
    drop((sync_a, sync_i));
    relay.stop();
}

/// Issue #20, bug 5: a relay whose backlog insert failed answered STORED
/// (backlog 0), and the client then forgot its offline queue. Now it is an
/// error: the writes stay queued and reach a relay that can keep them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_relay_could_not_store_stay_queued() {
    let dir = tempfile::tempdir().unwrap();
    let full = Relay::start_with(
        "127.0.0.1:0".parse().unwrap(),
        RelayConfig {
            backlog_path: Some(dir.path().join("full.db")),
            backlog_max_bytes: Some(48 * 1024),
            ..RelayConfig::default()
        },
    )
    .await;
    let address = full.address;
    let (a, b) = pair(dir.path()).await;
    let text = "x".repeat(2_000);
    for i in 0..60 {
        a.put(&format!("k{i:02}"), json!({ "i": i, "text": text }))
            .await
            .unwrap();
    }
    let sync_a = a.sync(RelayConnector::new(full.url())).unwrap();
    eventually("the full relay refuses to store", async || {
        sync_a
            .status()
            .last_error
            .is_some_and(|e| e.contains("could not store"))
    })
    .await;
    assert_ne!(sync_a.status().state, SyncState::Synced);
    drop(sync_a);
    full.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The same relay address (so the same published vector), now with room.
    let roomy = Relay::start(address, &dir.path().join("roomy.db")).await;
    publish_everything(&a, roomy.url()).await;
    let sync_b = b.sync(RelayConnector::new(roomy.url())).unwrap();
    eventually("b got every write from the backlog alone", async || {
        b.len() == 60
    })
    .await;
    drop(sync_b);
    roomy.stop();
}

/// Issue #20, bug 5: the published vector was one key shared by every
/// transport, so writes a first relay stored were never sent to a second
/// one, and a peer that only ever meets the second never got them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transport_gets_the_writes_it_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let first = Relay::start("127.0.0.1:0".parse().unwrap(), &dir.path().join("first.db")).await;
    let second = Relay::start(
        "127.0.0.1:0".parse().unwrap(),
        &dir.path().join("second.db"),
    )
    .await;
    let (a, b) = pair(dir.path()).await;
    for i in 0..10 {
        a.put(&format!("k{i}"), json!(i)).await.unwrap();
    }
    for relay in [&first, &second] {
        publish_everything(&a, relay.url()).await;
    }
    let sync_b = b.sync(RelayConnector::new(second.url())).unwrap();
    eventually(
        "b got every write from the second relay's backlog",
        async || b.len() == 10,
    )
    .await;
    drop(sync_b);
    first.stop();
    second.stop();
}

/// Issue #20, bug 5: the backlog cursor moved past envelopes whose commit
/// failed (here: the disk is full), so they were never received again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_that_could_not_be_committed_are_received_again() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), &dir.path().join("relay.db")).await;
    let (a, b) = pair(dir.path()).await;
    let text = "y".repeat(4_000);
    for i in 0..40 {
        a.put(&format!("k{i:02}"), json!({ "i": i, "text": text }))
            .await
            .unwrap();
    }
    publish_everything(&a, relay.url()).await;

    // B's disk is full: every commit of what arrives fails.
    b.storage().set_max_size(Some(4096)).unwrap();
    let sync_b = b.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("b failed to commit", async || {
        sync_b.status().state == SyncState::Offline
    })
    .await;
    assert_eq!(b.len(), 0);
    b.storage().set_max_size(None).unwrap();
    eventually("b received everything again from the backlog", async || {
        b.len() == 40
    })
    .await;
    drop(sync_b);
    relay.stop();
}

/// Writes `k0000` .. `k0799`, about 20 KB each (16 MB), in one batch.
async fn put_800_records_of_20_kb(db: &Db, round: u32) {
    let text = "q".repeat(20_000);
    let batch = (0..800).map(|i| {
        let value = json!({ "i": i, "round": round, "text": text });
        (
            format!("k{i:04}"),
            pluresdb::crdt::Document::from_value(&value).unwrap(),
        )
    });
    db.put_many(batch).await.unwrap();
}

/// Issue #21: a large offline queue cut off halfway used to start over on
/// the next connection (its published vector was written only once all of
/// it was stored). Now progress is kept as the relay stores it: the second
/// connection publishes about the rest only, and a peer gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_queue_cut_off_halfway_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(
        "127.0.0.1:0".parse().unwrap(),
        RelayConfig {
            backlog_path: Some(dir.path().join("relay.db")),
            max_frame: 1024 * 1024,
            bytes_per_second: 4 * 1024 * 1024,
            burst_bytes: 4 * 1024 * 1024,
            ..RelayConfig::default()
        },
    )
    .await;
    let (a, b) = pair(dir.path()).await;
    put_800_records_of_20_kb(&a, 0).await;
    // 16 MB: 62 LIVE envelopes of up to 256 KiB, at 4 MiB/s.
    let chunks = 62;
    let sync_a = a.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("half of the queue is stored", async || {
        relay.server.stats().published >= 30
    })
    .await;
    drop(sync_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = relay.server.stats().published;
    assert!(first < chunks, "cut off before the end ({first})");
    publish_everything(&a, relay.url()).await;
    let second = relay.server.stats().published - first;
    // Starting over would be a hello and all 62 again. Resuming, what was
    // stored before the last progress write (every 8 envelopes) is not
    // sent again: at least 16 of the first connection's 30 or more.
    assert!(
        second + 16 <= chunks + 1,
        "{first} envelopes, then {second} more: the queue started over"
    );
    let sync_b = b.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("b got every write from the backlog", async || {
        b.len() == 800
    })
    .await;
    drop(sync_b);
    relay.stop();
}

/// Issue #21: a first sync through a delta (the relay's backlog cannot
/// hold the database) cut off halfway used to start over. Every record was
/// written twice, so the receiver's vector cannot advance on its own; its
/// next HELLO tells the sender what prefix of the delta it holds, and the
/// sender sends the rest only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_cut_off_halfway_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(
        "127.0.0.1:0".parse().unwrap(),
        RelayConfig {
            backlog_path: Some(dir.path().join("relay.db")),
            backlog_frames: 1,
            max_frame: 1024 * 1024,
            bytes_per_second: 4 * 1024 * 1024,
            burst_bytes: 4 * 1024 * 1024,
            ..RelayConfig::default()
        },
    )
    .await;
    let (a, b) = pair(dir.path()).await;
    for round in 0..2 {
        put_800_records_of_20_kb(&a, round).await;
    }
    publish_everything(&a, relay.url()).await;
    let sync_a = a.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("a is online", async || {
        sync_a.status().state == SyncState::Synced
    })
    .await;
    // 16 MB in 62 chunks of 256 KiB; b holds 400 records after about half.
    let chunks = 62;
    let sync_b = b.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("b holds half", async || b.len() >= 400).await;
    // Both go, and come back with new sync sessions. The relay may still
    // be reading the rest of the first delta from a's old connection (at
    // 4 MB/s) and fan it out to b's new one: those late chunks must not
    // stop the resumed delta (they did once, on a loaded machine; see
    // `a_late_chunk_of_an_earlier_session_does_not_block_the_resumed_delta`).
    drop((sync_a, sync_b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.len() < 800, "cut off before the end");
    // An observer on the topic counts what a's next connection publishes
    // (b republishes what it holds as its own offline queue, which is not
    // what this test is about).
    let join_key = a.sync_identity().unwrap().join_key();
    let mut observer = common::RawClient::join(&relay.url(), join_key, u64::MAX).await;
    assert!(observer.next_frame(Duration::from_secs(5)).await.is_some());
    let from_a = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = from_a.clone();
    let watcher = tokio::spawn(async move {
        let mut a_connection = None;
        while let Some(frame) = observer.next_frame(Duration::from_secs(60)).await {
            match frame {
                pluresdb::sync::relay_frame::RelayFrame::Members {
                    joined: true,
                    connection,
                    ..
                } if a_connection.is_none() => a_connection = Some(connection),
                pluresdb::sync::relay_frame::RelayFrame::Frame { from, .. }
                    if Some(from) == a_connection =>
                {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    let sync_a = a.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("a is back", async || {
        sync_a.status().state == SyncState::Synced
    })
    .await;
    let sync_b = b.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("b holds everything", async || b.len() == 800).await;
    eventually("b is synced", async || {
        sync_b.status().state == SyncState::Synced
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = from_a.load(std::sync::atomic::Ordering::Relaxed);
    watcher.abort();
    // Starting over: 62 chunks, plus a's hello, ask and acks. Resuming:
    // about half of the chunks.
    assert!(
        second + 15 < chunks,
        "a's second connection published {second} envelopes: the delta started over"
    );
    drop((sync_a, sync_b));
    relay.stop();
}

/// A connector that loses the first delta chunk (a large envelope the relay
/// forwarded without keeping it) on its way in, and counts connections.
struct LosesOneDeltaChunk {
    inner: RelayConnector,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl pluresdb::transport::Connector for LosesOneDeltaChunk {
    fn connect(
        &self,
        rendezvous: pluresdb::transport::Rendezvous,
        cursor: u64,
    ) -> pluresdb::platform::BoxFuture<'_, Result<pluresdb::transport::Link, String>> {
        use futures::StreamExt;
        use pluresdb::transport::TransportEvent;
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            let mut link = self.inner.connect(rendezvous, cursor).await?;
            self.connections.fetch_add(1, Ordering::SeqCst);
            let (events, inbound) = futures::channel::mpsc::unbounded();
            let lost = self.lost.clone();
            tokio::spawn(async move {
                while let Some(event) = link.inbound.next().await {
                    if let TransportEvent::Envelope {
                        envelope,
                        cursor: None,
                        ..
                    } = &event
                    {
                        if envelope.len() > 100_000 && !lost.swap(true, Ordering::SeqCst) {
                            continue;
                        }
                    }
                    if events.unbounded_send(event).is_err() {
                        break;
                    }
                }
            });
            Ok(pluresdb::transport::Link {
                outbound: link.outbound,
                inbound,
            })
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A delta chunk lost on the way (the relay forwards deltas without
/// keeping them) used to leave the receiver behind for as long as its
/// connection lasted: nothing asked again before the next reconnect. The
/// sync engine's watchdog now sends a new hello once a delta has been
/// silent for a while, and the sender answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delta_chunk_is_asked_for_again_without_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(
        "127.0.0.1:0".parse().unwrap(),
        RelayConfig {
            backlog_path: Some(dir.path().join("relay.db")),
            backlog_frames: 1,
            ..RelayConfig::default()
        },
    )
    .await;
    let (a, b) = pair(dir.path()).await;
    let text = "d".repeat(100_000);
    a.put_many((0..12).map(|i| {
        (
            format!("big{i:02}"),
            pluresdb::crdt::Document::from_value(&json!({ "i": i, "text": text })).unwrap(),
        )
    }))
    .await
    .unwrap();
    publish_everything(&a, relay.url()).await;
    let sync_a = a.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("a is online", async || {
        sync_a.status().state == SyncState::Synced
    })
    .await;
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sync_b = b
        .sync(LosesOneDeltaChunk {
            inner: RelayConnector::new(relay.url()),
            lost: lost.clone(),
            connections: connections.clone(),
        })
        .unwrap();
    eventually("a delta chunk was lost", async || {
        lost.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    // The watchdog notices after three silent periods of 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while b.version_vector() != a.version_vector() || b.len() != 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "b never got the lost chunk again: {} of 12 records, vector {:?} against {:?}",
            b.len(),
            b.version_vector(),
            a.version_vector()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state_of(&a).await, state_of(&b).await);
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "b caught up on its first connection"
    );
    drop((sync_a, sync_b));
    relay.stop();
}
