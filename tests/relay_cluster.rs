//! A relay cluster: several relays on one real `redis-server` (started by
//! the tests on a free loopback port, in a temporary directory). Replicas
//! on different relays converge; a relay killed with SIGKILL loses nothing
//! its clients were told was STORED, and they resume on another relay
//! behind the same address; Redis killed and restarted (append-only file,
//! fsync always) loses nothing STORED; while Redis is down relays answer
//! with a clear error and acknowledge nothing; the single relay's limits
//! (members, topics, backlog frames) hold across relays.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis_server::RedisServer;
use common::relay_process::{balancer, RelayProcess};
use common::{eventually, junk_envelope, open, pair, RawClient, Relay};
use pluresdb::relay::RelayConfig;
use pluresdb::sync::relay_frame::{codes, RelayFrame};
use pluresdb::transport::RelayConnector;
use pluresdb::SyncState;
use serde_json::json;

async fn relay_on(redis: &RedisServer, config: RelayConfig) -> Relay {
    Relay::start_with(
        "127.0.0.1:0".parse().unwrap(),
        RelayConfig {
            redis_url: Some(redis.url()),
            ..config
        },
    )
    .await
}

const QUIET: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_two_relays_converge_live_and_through_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let one = relay_on(&redis, RelayConfig::default()).await;
    let two = relay_on(&redis, RelayConfig::default()).await;
    let (a, b) = pair(dir.path()).await;
    a.put("before", json!("written before sync")).await.unwrap();
    let sync_a = a.sync(RelayConnector::new(one.url())).unwrap();
    let sync_b = b.sync(RelayConnector::new(two.url())).unwrap();
    eventually("b has a's earlier write", async || {
        b.get("before").await.unwrap() == Some(json!("written before sync"))
    })
    .await;
    for i in 0..50 {
        a.put(&format!("a{i}"), json!({ "i": i })).await.unwrap();
        b.put(&format!("b{i}"), json!({ "i": i })).await.unwrap();
    }
    eventually("both have all 101 records", async || {
        a.len() == 101 && b.len() == 101
    })
    .await;
    eventually("both synced, each seeing the other", async || {
        sync_a.status().state == SyncState::Synced
            && sync_b.status().state == SyncState::Synced
            && sync_a.status().peers == 1
            && sync_b.status().peers == 1
    })
    .await;
    assert_eq!(a.version_vector(), b.version_vector());

    // A third replica that was never online with them catches up from the
    // Redis backlog through either relay.
    drop((sync_a, sync_b));
    let c = open(dir.path(), "c").await;
    c.join_invite(&a.create_invite().await.unwrap())
        .await
        .unwrap();
    let sync_c = c.sync(RelayConnector::new(two.url())).unwrap();
    eventually("c got everything from the backlog", async || c.len() == 101).await;
    drop(sync_c);

    // Redis holds ciphertext only.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("pluresdb:relay:*:log")
        .query(&mut connection)
        .unwrap();
    assert_eq!(keys.len(), 1, "one topic: {keys:?}");
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(&keys[0])
        .arg("-")
        .arg("+")
        .query(&mut connection)
        .unwrap();
    // Every byte string Redis holds for the topic, envelopes included.
    fn byte_strings(value: &redis::Value, out: &mut Vec<Vec<u8>>) {
        match value {
            redis::Value::BulkString(bytes) => out.push(bytes.clone()),
            redis::Value::Array(items) => items.iter().for_each(|v| byte_strings(v, out)),
            _ => {}
        }
    }
    let mut held = Vec::new();
    byte_strings(&entries, &mut held);
    let envelopes = held
        .iter()
        .filter(|b| b.len() > pluresdb::sync::crypto::ENVELOPE_OVERHEAD)
        .count();
    assert!(envelopes > 0, "entries were kept");
    for plaintext in ["written before sync", "\"i\":49"] {
        let needle = plaintext.as_bytes();
        assert!(
            !held
                .iter()
                .any(|b| b.windows(needle.len()).any(|w| w == needle)),
            "Redis holds `{plaintext}` in clear"
        );
    }
    one.stop();
    two.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_counted_and_announced_across_relays() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let config = RelayConfig {
        max_members_per_topic: 2,
        ..RelayConfig::default()
    };
    let one = relay_on(&redis, config.clone()).await;
    let two = relay_on(&redis, config).await;
    let key = [7u8; 32];

    let mut first = RawClient::join(&one.url(), key, 0).await;
    let Some(RelayFrame::Welcome {
        members: 0,
        connection: first_id,
        ..
    }) = first.next_frame(QUIET * 4).await
    else {
        panic!("the first member is welcomed alone");
    };
    let mut second = RawClient::join(&two.url(), key, 0).await;
    let Some(RelayFrame::Welcome {
        members: 1,
        connection: second_id,
        ..
    }) = second.next_frame(QUIET * 4).await
    else {
        panic!("the second member, on another relay, counts the first");
    };
    assert_ne!(
        first_id, second_id,
        "connection ids are unique in the cluster"
    );
    assert_eq!(
        first.next_frame(QUIET * 4).await,
        Some(RelayFrame::Members {
            members: 1,
            joined: true,
            connection: second_id
        }),
        "the first hears of the second through Redis"
    );

    // The member limit holds across relays, on either of them.
    for url in [one.url(), two.url()] {
        let mut third = RawClient::join(&url, key, 0).await;
        match third.next_frame(QUIET * 4).await {
            Some(RelayFrame::Error { code, message }) => {
                assert_eq!(code, codes::FULL, "{message}");
            }
            other => panic!("a third member was let in: {other:?}"),
        }
    }

    // Envelopes cross relays both ways; the sender never gets its own.
    let envelope = junk_envelope(100);
    assert!(first.publish(envelope.clone(), false).await);
    assert!(matches!(
        first.next_frame(QUIET * 4).await,
        Some(RelayFrame::Stored { backlog: 0, .. })
    ));
    match second.next_frame(QUIET * 4).await {
        Some(RelayFrame::Frame {
            sequence: 0,
            from,
            envelope: got,
        }) => {
            assert_eq!(from, first_id);
            assert_eq!(got, envelope);
        }
        other => panic!("the live envelope did not cross relays: {other:?}"),
    }
    let kept = junk_envelope(120);
    assert!(second.publish(kept.clone(), true).await);
    let Some(RelayFrame::Stored { backlog, .. }) = second.next_frame(QUIET * 4).await else {
        panic!("no STORED");
    };
    assert!(backlog > 0);
    assert_eq!(
        first.next_frame(QUIET * 4).await,
        Some(RelayFrame::Frame {
            sequence: backlog,
            from: second_id,
            envelope: kept
        })
    );
    assert!(
        second.drain(QUIET).await.is_empty(),
        "nothing echoed to the sender"
    );

    // Leaving is announced on the other relay, and frees the place.
    drop(second);
    assert_eq!(
        first.next_frame(QUIET * 4).await,
        Some(RelayFrame::Members {
            members: 0,
            joined: false,
            connection: second_id
        })
    );
    let mut again = RawClient::join(&two.url(), key, 0).await;
    assert!(matches!(
        again.next_frame(QUIET * 4).await,
        Some(RelayFrame::Welcome { members: 1, .. })
    ));
    one.stop();
    two.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_and_topic_limits_hold_across_relays() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let config = RelayConfig {
        backlog_frames: 5,
        max_topics: 2,
        ..RelayConfig::default()
    };
    let one = relay_on(&redis, config.clone()).await;
    let two = relay_on(&redis, config).await;

    let mut writer = RawClient::join(&one.url(), [1; 32], 0).await;
    assert!(matches!(
        writer.next_frame(QUIET * 4).await,
        Some(RelayFrame::Welcome { .. })
    ));
    let mut sent = Vec::new();
    let mut sequences = Vec::new();
    for _ in 0..12 {
        let envelope = junk_envelope(64);
        assert!(writer.publish(envelope.clone(), true).await);
        let Some(RelayFrame::Stored { backlog, .. }) = writer.next_frame(QUIET * 4).await else {
            panic!("no STORED");
        };
        sent.push(envelope);
        sequences.push(backlog);
    }
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "cursors grow: {sequences:?}"
    );

    // A reader on the other relay gets the newest five, in order.
    let mut reader = RawClient::join(&two.url(), [1; 32], 0).await;
    let Some(RelayFrame::Welcome { head, .. }) = reader.next_frame(QUIET * 4).await else {
        panic!("no WELCOME");
    };
    assert_eq!(head, sequences[11]);
    let frames = reader.drain(QUIET).await;
    let replayed: Vec<(u64, Vec<u8>)> = frames
        .into_iter()
        .filter_map(|f| match f {
            RelayFrame::Frame {
                sequence, envelope, ..
            } => Some((sequence, envelope)),
            _ => None,
        })
        .collect();
    let expected: Vec<(u64, Vec<u8>)> = sequences[7..]
        .iter()
        .copied()
        .zip(sent[7..].iter().cloned())
        .collect();
    assert_eq!(replayed, expected);

    // Resuming from a cursor gives exactly what came after it.
    let mut resumed = RawClient::join(&one.url(), [1; 32], sequences[9]).await;
    let frames = resumed.drain(QUIET).await;
    let resumed_sequences: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            RelayFrame::Frame { sequence, .. } => Some(*sequence),
            _ => None,
        })
        .collect();
    assert_eq!(resumed_sequences, sequences[10..].to_vec());

    // Topics (at most 2): the first has a backlog, a second fits on the
    // other relay, a third does not, on either relay.
    let mut second_topic = RawClient::join(&two.url(), [2; 32], 0).await;
    assert!(matches!(
        second_topic.next_frame(QUIET * 4).await,
        Some(RelayFrame::Welcome { .. })
    ));
    assert!(second_topic.publish(junk_envelope(64), true).await);
    assert!(matches!(
        second_topic.next_frame(QUIET * 4).await,
        Some(RelayFrame::Stored { .. })
    ));
    for url in [one.url(), two.url()] {
        let mut third_topic = RawClient::join(&url, [3; 32], 0).await;
        match third_topic.drain(QUIET).await.last() {
            Some(RelayFrame::Error { code, .. }) => assert_eq!(*code, codes::FULL),
            other => panic!("a third topic was served: {other:?}"),
        }
    }
    one.stop();
    two.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_stored_is_lost_when_redis_is_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let relay = relay_on(&redis, RelayConfig::default()).await;
    let (a, b) = pair(dir.path()).await;
    for i in 0..200 {
        a.put(&format!("k{i:03}"), json!({ "i": i })).await.unwrap();
    }
    let sync_a = a.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("a's writes are STORED", async || {
        sync_a.status().state == SyncState::Synced
    })
    .await;

    // Redis dies (SIGKILL): publishes are refused with a clear error and
    // stay queued; nothing is acknowledged.
    let mut joined_before = RawClient::join(&relay.url(), [8; 32], 0).await;
    assert!(matches!(
        joined_before.next_frame(QUIET * 4).await,
        Some(RelayFrame::Welcome { .. })
    ));
    redis.kill();
    assert!(joined_before.publish(junk_envelope(100), true).await);
    match joined_before.drain(QUIET * 8).await.as_slice() {
        [RelayFrame::Error { code, message }] => {
            assert_eq!(*code, codes::STORAGE, "{message}");
        }
        other => panic!("a PUBLISH while Redis is down was answered {other:?}"),
    }
    for i in 200..220 {
        a.put(&format!("k{i:03}"), json!({ "i": i })).await.unwrap();
    }
    eventually("the relay says why it cannot store", async || {
        sync_a
            .status()
            .last_error
            .is_some_and(|e| e.contains("could not store") || e.contains("unavailable"))
    })
    .await;
    assert_ne!(sync_a.status().state, SyncState::Synced);
    let mut raw = RawClient::join(&relay.url(), [9; 32], 0).await;
    match raw.drain(QUIET * 4).await.last() {
        Some(RelayFrame::Error { code, message }) => {
            assert_eq!(*code, codes::STORAGE);
            assert!(message.contains("unavailable"), "{message}");
        }
        other => panic!("a JOIN while Redis is down was not refused: {other:?}"),
    }

    // Redis comes back from its append-only file; the client's backoff
    // finds it, and everything arrives, the first 200 from the backlog.
    redis.restart();
    eventually("a published the rest once Redis was back", async || {
        sync_a.status().state == SyncState::Synced
    })
    .await;
    drop(sync_a);
    let sync_b = b.sync(RelayConnector::new(relay.url())).unwrap();
    eventually("b got all 220 from the backlog", async || b.len() == 220).await;
    drop(sync_b);
    relay.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_relay_resume_on_another_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut first = RelayProcess::on_redis(&redis.url(), &[]);
    let second = RelayProcess::on_redis(&redis.url(), &[]);
    let backends = Arc::new(Mutex::new(vec![first.address, second.address]));
    let front = balancer(backends.clone()).await;
    let url = format!("ws://{front}/relay");

    let (a, b) = pair(dir.path()).await;
    let sync_a = a.sync(RelayConnector::new(url.clone())).unwrap();
    let sync_b = b.sync(RelayConnector::new(second.url.clone())).unwrap();
    // a writes a steady stream; the relay it is on dies in the middle.
    for i in 0..300 {
        a.put(
            &format!("k{i:03}"),
            json!({ "i": i, "text": "x".repeat(200) }),
        )
        .await
        .unwrap();
        if i == 150 {
            eventually(
                "b got a's first writes through the first relay",
                async || !b.is_empty(),
            )
            .await;
            first.kill();
        }
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eventually(
        "a's writes are all STORED, through the second relay",
        async || sync_a.status().state == SyncState::Synced && sync_a.status().pending == 0,
    )
    .await;
    eventually("b, on the second relay, has all 300", async || {
        b.len() == 300
    })
    .await;
    drop((sync_a, sync_b));

    // Everything STORED is in the shared backlog: a replica that was
    // never online with a gets it all.
    let c = open(dir.path(), "c").await;
    c.join_invite(&a.create_invite().await.unwrap())
        .await
        .unwrap();
    let sync_c = c.sync(RelayConnector::new(url)).unwrap();
    eventually("c got all 300 from the backlog", async || c.len() == 300).await;
    drop(sync_c);
    drop(second);
}

/// The kept envelopes a fresh member of `join_key` is replayed.
async fn replayed(url: &str, join_key: [u8; 32]) -> Vec<Vec<u8>> {
    let mut reader = RawClient::join(url, join_key, 0).await;
    reader
        .drain(QUIET)
        .await
        .into_iter()
        .filter_map(|f| match f {
            RelayFrame::Frame { envelope, .. } => Some(envelope),
            _ => None,
        })
        .collect()
}

/// Publishes kept envelopes of `len` bytes to `join_key` through `url`.
async fn publish_kept(url: &str, join_key: [u8; 32], count: usize, len: usize) -> Vec<Vec<u8>> {
    let mut writer = RawClient::join(url, join_key, u64::MAX).await;
    assert!(matches!(
        writer.next_frame(QUIET * 4).await,
        Some(RelayFrame::Welcome { .. })
    ));
    let mut sent = Vec::new();
    for _ in 0..count {
        let envelope = junk_envelope(len);
        assert!(writer.publish(envelope.clone(), true).await);
        assert!(matches!(
            writer.next_frame(QUIET * 4).await,
            Some(RelayFrame::Stored { .. })
        ));
        sent.push(envelope);
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_bytes_and_age_limits_hold_in_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let config = RelayConfig {
        backlog_topic_bytes: 1_000,
        backlog_total_bytes: 1_500,
        ..RelayConfig::default()
    };
    let one = relay_on(&redis, config.clone()).await;
    let two = relay_on(&redis, config).await;

    // Per topic: 300-byte envelopes, at most 1,000 bytes, so the newest 3.
    let first = publish_kept(&one.url(), [1; 32], 6, 300).await;
    assert_eq!(replayed(&two.url(), [1; 32]).await, first[3..].to_vec());
    // In total: 1,500 bytes; a second topic's envelopes push the first
    // topic's oldest out first.
    let second = publish_kept(&two.url(), [2; 32], 3, 300).await;
    assert_eq!(replayed(&one.url(), [2; 32]).await, second);
    assert_eq!(replayed(&one.url(), [1; 32]).await, first[4..].to_vec());
    let stats = one.server.stats();
    assert!(stats.backlog_bytes <= 1_500, "{stats:?}");

    // Age: with a one-second limit, what is older is gone after the sweep
    // (and on the next store), on every relay.
    let aging = relay_on(
        &redis,
        RelayConfig {
            backlog_max_age: Duration::from_secs(1),
            ..RelayConfig::default()
        },
    )
    .await;
    let old = publish_kept(&aging.url(), [3; 32], 2, 100).await;
    assert_eq!(replayed(&two.url(), [3; 32]).await, old);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    aging.server.expire_now().await;
    assert!(
        replayed(&two.url(), [3; 32]).await.is_empty(),
        "expired envelopes were replayed"
    );
    let fresh = publish_kept(&aging.url(), [4; 32], 1, 100).await;
    assert_eq!(replayed(&one.url(), [4; 32]).await, fresh);
    one.stop();
    two.stop();
    aging.stop();
}

/// `GET /health` of a relay process: the status code and body.
async fn health(address: SocketAddr) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(15),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the health check answers in time")
    .unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_a_load_balancer_whether_redis_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let relay = RelayProcess::on_redis(&redis.url(), &[]);
    let address = relay.address;
    let (status, body) = health(address).await;
    assert_eq!(status, 200, "{body}");
    redis.kill();
    let (status, body) = health(address).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not answer"), "{body}");
    redis.restart();
    let mut healthy = false;
    for _ in 0..50 {
        if health(address).await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(healthy, "the relay reconnected to Redis");
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_members_of_a_relay_that_died_leave_when_their_leases_run_out() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let mut doomed = RelayProcess::on_redis(&redis.url(), &["--relay-member-lease", "1.5"]);
    let survivor = relay_on(
        &redis,
        RelayConfig {
            member_lease: Duration::from_millis(1_500),
            ..RelayConfig::default()
        },
    )
    .await;
    let key = [5u8; 32];
    let mut stranded = RawClient::join(&doomed.url, key, 0).await;
    let Some(RelayFrame::Welcome {
        connection: stranded_id,
        ..
    }) = stranded.next_frame(QUIET * 4).await
    else {
        panic!("no WELCOME on the doomed relay");
    };
    let mut watcher = RawClient::join(&survivor.url(), key, 0).await;
    assert!(matches!(
        watcher.next_frame(QUIET * 4).await,
        Some(RelayFrame::Welcome { members: 1, .. })
    ));

    // The relay dies without a word; its member's lease is not renewed.
    doomed.kill();
    let started = std::time::Instant::now();
    match watcher.next_frame(Duration::from_secs(10)).await {
        Some(RelayFrame::Members {
            members: 0,
            joined: false,
            connection,
        }) => {
            assert_eq!(connection, stranded_id);
        }
        other => panic!("the dead relay's member did not leave: {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "it took {waited:?}");
    drop(stranded);
    survivor.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_mode_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_with(dir.path(), &["--cluster-enabled", "yes"]);
    let refused = pluresdb::relay::RelayServer::open(RelayConfig {
        redis_url: Some(redis.url()),
        ..RelayConfig::default()
    })
    .await;
    match refused {
        Err(message) => assert!(message.contains("cluster mode"), "{message}"),
        Ok(_) => panic!("a relay started on Redis Cluster"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_whose_leases_lapsed_while_redis_was_away_are_announced_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let config = RelayConfig {
        member_lease: Duration::from_millis(1_500),
        ..RelayConfig::default()
    };
    let one = relay_on(&redis, config.clone()).await;
    let two = relay_on(&redis, config).await;
    let key = [6u8; 32];
    let mut kept = RawClient::join(&one.url(), key, 0).await;
    let Some(RelayFrame::Welcome {
        connection: kept_id,
        ..
    }) = kept.next_frame(QUIET * 4).await
    else {
        panic!("no WELCOME");
    };
    let mut watcher = RawClient::join(&two.url(), key, 0).await;
    assert!(matches!(
        watcher.next_frame(QUIET * 4).await,
        Some(RelayFrame::Welcome { members: 1, .. })
    ));

    // Redis is away for longer than a lease: nobody can renew it.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    redis.restart();

    // The lapsed lease is reaped (MEMBERS left), then renewed by its relay,
    // which says it is back (MEMBERS joined). (The count in that frame
    // depends on which relay renewed first: the watcher's lease lapsed
    // too.)
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        match watcher.next_frame(Duration::from_secs(1)).await {
            Some(RelayFrame::Members {
                members,
                joined,
                connection,
            }) if connection == kept_id => {
                last = Some((members, joined));
                if joined {
                    break;
                }
            }
            Some(RelayFrame::Error { code, message }) => panic!("ERROR {code}: {message}"),
            _ => {}
        }
    }
    assert!(
        last.is_some_and(|(_, joined)| joined),
        "the member was announced again: {last:?}"
    );
    drop(kept);
    one.stop();
    two.stop();
}
