//! Helpers shared by the relay test suites: a real relay on loopback,
//! databases on SQLite, and waiting for a condition.
#![allow(dead_code)]

pub mod redis_server;
pub mod relay_process;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use pluresdb::relay::{RelayConfig, RelayServer};
use pluresdb::storage::SqliteStorage;
use pluresdb::transport::RelayConnector;
use pluresdb::{Database, OpenOptions, SyncState};

pub type Db = Database<SqliteStorage>;

pub struct Relay {
    pub address: SocketAddr,
    pub server: RelayServer,
    pub task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(address: SocketAddr, backlog: &Path) -> Relay {
        Self::start_with(
            address,
            RelayConfig {
                backlog_path: Some(backlog.to_path_buf()),
                ..RelayConfig::default()
            },
        )
        .await
    }

    pub async fn start_with(address: SocketAddr, config: RelayConfig) -> Relay {
        let server = RelayServer::open(config).await.unwrap();
        let app = axum::Router::new().nest("/relay", server.router());
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Relay {
            address,
            server,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/relay", self.address)
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

pub async fn open(dir: &Path, name: &str) -> Db {
    Database::open(
        SqliteStorage::open(dir.join(format!("{name}.db"))).unwrap(),
        OpenOptions::default(),
    )
    .await
    .unwrap()
}

/// Replicas `a` and `b` of one database (b joined a's invite).
pub async fn pair(dir: &Path) -> (Db, Db) {
    let a = open(dir, "a").await;
    let b = open(dir, "b").await;
    b.join_invite(&a.create_invite().await.unwrap())
        .await
        .unwrap();
    (a, b)
}

/// Syncs `db` through `url` until the relay stored everything, then stops.
pub async fn publish_everything(db: &Db, url: String) {
    let sync = db.sync(RelayConnector::new(url)).unwrap();
    eventually("everything is published", async || {
        sync.status().state == SyncState::Synced
    })
    .await;
    drop(sync);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A hand-driven relay client, for attacks: joins with any join key and
/// sends any frame.
pub struct RawClient {
    pub sink: futures::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::Message,
    >,
    pub stream: futures::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
    sequence: u32,
}

impl RawClient {
    /// Connects to `url` without joining.
    pub async fn connect(url: &str) -> RawClient {
        use futures::StreamExt;
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (sink, stream) = socket.split();
        RawClient {
            sink,
            stream,
            sequence: 0,
        }
    }

    /// Connects and joins with `join_key`, asking for the backlog after
    /// `since`.
    pub async fn join(url: &str, join_key: [u8; 32], since: u64) -> RawClient {
        let mut client = Self::connect(url).await;
        client
            .send_frame(pluresdb::sync::relay_frame::ClientFrame::Join {
                version: pluresdb::sync::relay_frame::RELAY_VERSION,
                join_key,
                since,
            })
            .await;
        client
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> bool {
        use futures::SinkExt;
        self.sink
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                bytes.into(),
            ))
            .await
            .is_ok()
    }

    pub async fn send_frame(&mut self, frame: pluresdb::sync::relay_frame::ClientFrame) -> bool {
        self.send_raw(frame.encode()).await
    }

    /// Publishes `envelope`.
    pub async fn publish(&mut self, envelope: Vec<u8>, keep: bool) -> bool {
        let sequence = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        self.send_frame(pluresdb::sync::relay_frame::ClientFrame::Publish {
            sequence,
            keep,
            envelope,
        })
        .await
    }

    /// The next relay frame within `timeout` (`None`: closed or silent).
    pub async fn next_frame(
        &mut self,
        timeout: Duration,
    ) -> Option<pluresdb::sync::relay_frame::RelayFrame> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??
                .ok()?;
            if let tokio_tungstenite::tungstenite::Message::Binary(bytes) = message {
                return pluresdb::sync::relay_frame::RelayFrame::decode(&bytes).ok();
            }
        }
    }

    /// Frames until the relay closes, an ERROR arrives, or `quiet` passes
    /// without a frame.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<pluresdb::sync::relay_frame::RelayFrame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame(quiet).await {
            let error = matches!(frame, pluresdb::sync::relay_frame::RelayFrame::Error { .. });
            frames.push(frame);
            if error {
                break;
            }
        }
        frames
    }
}

/// A sealed-looking envelope of `len` bytes (right version byte, random
/// content): what an intruder without the key can make.
pub fn junk_envelope(len: usize) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    assert!(len > pluresdb::sync::crypto::ENVELOPE_OVERHEAD);
    let mut envelope = vec![0x5a; len];
    envelope[0] = pluresdb::sync::crypto::ENVELOPE_VERSION;
    // A distinct nonce each time.
    let stamp = NEXT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    envelope[1..9].copy_from_slice(&stamp.to_le_bytes());
    envelope
}
