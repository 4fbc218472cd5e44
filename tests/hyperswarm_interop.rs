//! Interoperability with the stock npm Hyperswarm stack, on loopback: the
//! Rust Noise handshake and secret-stream against `@hyperswarm/secret-stream`
//! (run by `tests/interop/secret-stream-peer.mjs`), in both roles, and the
//! Rust UDX streams against `udx-native` (`tests/interop/udx-peer.mjs`),
//! directly and through a lossy UDP proxy, with a secret-stream on top.
//!
//! Needs Node.js and the workspace's npm packages (`npm ci`, which
//! `npm test` runs first).
#![cfg(all(feature = "hyperswarm", not(target_arch = "wasm32")))]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pluresdb::hyperswarm::blind_relay::BlindRelay;
use pluresdb::hyperswarm::dht_rpc::{node_id, DhtError, DhtNode};
use pluresdb::hyperswarm::hyperdht::HyperDht;
use pluresdb::hyperswarm::udx::{UdxSocket, UdxStream};
use pluresdb::hyperswarm::{HandshakeError, KeyPair, Pattern, SecretStream, SecretStreamError};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::{Child, ChildStdout, Command};

const PEER: &str = "tests/interop/secret-stream-peer.mjs";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the Node peer; its stdout yields one JSON event per line.
fn node_peer(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    assert!(
        Path::new("node_modules/@hyperswarm/secret-stream").exists(),
        "the npm packages are missing: run `npm ci` (npm test does) before this test"
    );
    let mut child = Command::new("node")
        .arg(PEER)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("Node.js must be installed to run the interop tests");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

async fn next_event(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the Node peer answers within 30 s")
        .expect("reading the Node peer's output")
        .expect("the Node peer printed an event before exiting");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
}

/// Whether the Node peer exits successfully within 30 s.
async fn exits(child: &mut Child) -> bool {
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the Node peer exits within 30 s")
        .expect("waiting for the Node peer")
        .success()
}

/// Sends `count` numbered messages, each answered by `"echo:" + message`.
async fn expect_echoes<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(
    stream: &mut SecretStream<S>,
    count: usize,
) {
    for i in 0..count {
        let message = numbered(i);
        stream.send(&message).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(30), stream.recv())
            .await
            .unwrap_or_else(|_| panic!("echo {i} arrives within 30 s"))
            .unwrap()
            .expect("an echo");
        assert_eq!(
            echo,
            [b"echo:".as_slice(), &message].concat(),
            "message {i}"
        );
    }
}

fn numbered(i: usize) -> Vec<u8> {
    match i {
        1 => Vec::new(),
        2 => vec![b'x'; 100_000],
        _ => format!("message {i}").into_bytes(),
    }
}

#[tokio::test]
async fn rust_initiator_and_node_responder_exchange_messages() {
    let node_seed = [3u8; 32];
    let (mut child, mut events) = node_peer(&["listen", &hex(&node_seed)]);
    let listening = next_event(&mut events).await;
    assert_eq!(listening["event"], "listening", "{listening}");
    let port = listening["port"].as_u64().expect("port") as u16;
    let node_public = listening["publicKey"]
        .as_str()
        .expect("publicKey")
        .to_owned();
    assert_eq!(
        node_public,
        hex(&KeyPair::from_seed(node_seed).public_key())
    );

    let ours = KeyPair::from_seed([4; 32]);
    let our_public = ours.public_key();
    let socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut stream = SecretStream::handshake(socket, true, ours).await.unwrap();
    assert_eq!(hex(&stream.remote_public_key()), node_public);

    expect_echoes(&mut stream, 20).await;
    let (mut reader, mut writer) = stream.into_split();
    writer.close().await.unwrap();
    let ended = next_event(&mut events).await;
    assert_eq!(ended["event"], "ended", "{ended}");
    assert_eq!(ended["remotePublicKey"], hex(&our_public));
    assert_eq!(ended["received"], 20);
    assert_eq!(reader.recv().await.unwrap(), None, "Node ends its side too");
    assert!(exits(&mut child).await);
}

#[tokio::test]
async fn node_initiator_and_rust_responder_exchange_messages() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let node_seed = [5u8; 32];
    let (mut child, mut events) = node_peer(&["connect", &port, &hex(&node_seed), "12"]);

    let ours = KeyPair::from_seed([6; 32]);
    let our_public = ours.public_key();
    let (socket, _) = listener.accept().await.unwrap();
    let mut stream = SecretStream::handshake(socket, false, ours).await.unwrap();
    assert_eq!(
        stream.remote_public_key(),
        KeyPair::from_seed(node_seed).public_key()
    );
    for i in 0..12 {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} arrives within 30 s"))
            .unwrap()
            .expect("a message");
        assert_eq!(message, numbered(i), "message {i}");
        stream
            .send(&[b"rust:".as_slice(), &message].concat())
            .await
            .unwrap();
    }
    let done = next_event(&mut events).await;
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["echoes"], 12);
    assert_eq!(done["mismatches"], 0);
    assert_eq!(done["remotePublicKey"], hex(&our_public));
    let (mut reader, mut writer) = stream.into_split();
    assert_eq!(reader.recv().await.unwrap(), None, "Node ended the stream");
    writer.close().await.unwrap();
    assert!(exits(&mut child).await);
}

#[tokio::test]
async fn a_mismatched_handshake_fails_with_a_typed_error() {
    // An IK initiator against Node's XX responder: Node's second message is
    // not what IK expects, so authentication fails; no panic, no hang.
    let (_child, mut events) = node_peer(&["listen", &hex(&[9u8; 32])]);
    let listening = next_event(&mut events).await;
    let port = listening["port"].as_u64().expect("port") as u16;
    let socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let node_public = KeyPair::from_seed([9; 32]).public_key();
    let result = SecretStream::handshake_with(
        socket,
        true,
        KeyPair::generate(),
        Pattern::IK,
        Some(node_public),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        matches!(
            result,
            Err(SecretStreamError::Handshake(HandshakeError::Decrypt))
        ),
        "{result:?}"
    );
}

// ---- UDX -----------------------------------------------------------------

const UDX_PEER: &str = "tests/interop/udx-peer.mjs";

/// Starts the udx-native peer (stream id 1, talking to id 2 at
/// `remote_port`) and returns it with its socket address.
async fn udx_peer(
    remote_port: u16,
    mode: &str,
) -> (Child, Lines<BufReader<ChildStdout>>, SocketAddr) {
    assert!(
        Path::new("node_modules/udx-native").exists(),
        "the npm packages are missing: run `npm ci` (npm test does) before this test"
    );
    let mut child = Command::new("node")
        .arg(UDX_PEER)
        .arg(remote_port.to_string())
        .arg(mode)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("Node.js must be installed to run the interop tests");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut events = BufReader::new(stdout).lines();
    let listening = next_event(&mut events).await;
    assert_eq!(listening["event"], "listening", "{listening}");
    let port = listening["port"].as_u64().expect("port") as u16;
    (child, events, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A UDP relay between the Node peer and the Rust socket that drops
/// `loss_percent` of the datagrams in each direction (deterministically).
struct LossyProxy {
    facing_node: SocketAddr,
    facing_rust: SocketAddr,
    node: Arc<Mutex<Option<SocketAddr>>>,
    dropped: Arc<AtomicUsize>,
}

impl LossyProxy {
    async fn start(rust: SocketAddr, loss_percent: u64) -> Self {
        let facing_node = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let facing_rust = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let node: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        let proxy = Self {
            facing_node: facing_node.local_addr().unwrap(),
            facing_rust: facing_rust.local_addr().unwrap(),
            node: node.clone(),
            dropped: dropped.clone(),
        };
        // Node → Rust.
        let (from, to, counter) = (facing_node.clone(), facing_rust.clone(), dropped.clone());
        tokio::spawn(async move {
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut buffer = vec![0u8; 65_536];
            while let Ok((len, _)) = from.recv_from(&mut buffer).await {
                if chance(&mut state) < loss_percent {
                    counter.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = to.send_to(&buffer[..len], rust).await;
            }
        });
        // Rust → Node.
        let (from, to, counter) = (facing_rust, facing_node, dropped);
        tokio::spawn(async move {
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut buffer = vec![0u8; 65_536];
            while let Ok((len, _)) = from.recv_from(&mut buffer).await {
                if chance(&mut state) < loss_percent {
                    counter.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let target = *node.lock().unwrap();
                if let Some(target) = target {
                    let _ = to.send_to(&buffer[..len], target).await;
                }
            }
        });
        proxy
    }
}

/// A number in 0..100 from a xorshift generator.
fn chance(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % 100
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Writes `data` on `stream` while reading the echo, then ends and expects
/// the peer to end too.
async fn echo_through(stream: UdxStream, data: &[u8]) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let to_send = data.to_vec();
    let writing = tokio::spawn(async move {
        writer.write_all(&to_send).await.unwrap();
        writer.shutdown().await.unwrap();
        writer
    });
    let mut echoed = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut echoed))
        .await
        .expect("the echo completes within 60 s")
        .unwrap();
    let _writer = writing.await.unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "the echoed bytes differ");
}

#[tokio::test]
async fn rust_udx_stream_and_node_udx_native_echo_a_megabyte() {
    let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let rust_port = socket.local_addr().unwrap().port();
    let (mut child, mut events, node) = udx_peer(rust_port, "raw").await;
    let stream = socket.connect(2, 1, node).unwrap();
    let data = pattern(1 << 20);
    echo_through(stream, &data).await;
    let closed = next_event(&mut events).await;
    assert_eq!(closed["event"], "closed", "{closed}");
    assert_eq!(closed["bytes"], data.len());
    assert!(exits(&mut child).await);
}

#[tokio::test]
async fn udx_recovers_from_ten_percent_loss_each_way() {
    let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = LossyProxy::start(socket.local_addr().unwrap(), 10).await;
    let (mut child, mut events, node) = udx_peer(proxy.facing_node.port(), "raw").await;
    *proxy.node.lock().unwrap() = Some(node);
    let stream = socket.connect(2, 1, proxy.facing_rust).unwrap();
    let data = pattern(300_000);
    echo_through(stream, &data).await;
    let closed = next_event(&mut events).await;
    assert_eq!(closed["event"], "closed", "{closed}");
    assert_eq!(closed["bytes"], data.len());
    assert!(exits(&mut child).await);
    assert!(
        proxy.dropped.load(Ordering::Relaxed) > 20,
        "the proxy really dropped packets"
    );
}

#[tokio::test]
async fn secret_stream_runs_over_udx_with_node() {
    let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (mut child, mut events, node) =
        udx_peer(socket.local_addr().unwrap().port(), "secret").await;
    let stream = socket.connect(2, 1, node).unwrap();
    let ours = KeyPair::from_seed([12; 32]);
    let our_public = ours.public_key();
    let mut secret = SecretStream::handshake(stream, true, ours).await.unwrap();
    assert_eq!(
        secret.remote_public_key(),
        KeyPair::from_seed([11; 32]).public_key()
    );
    expect_echoes(&mut secret, 10).await;
    let (mut reader, mut writer) = secret.into_split();
    writer.close().await.unwrap();
    assert_eq!(reader.recv().await.unwrap(), None);
    let closed = next_event(&mut events).await;
    assert_eq!(closed["event"], "closed", "{closed}");
    assert_eq!(closed["received"], 10);
    assert_eq!(closed["remotePublicKey"], hex(&our_public));
    assert!(exits(&mut child).await);
}

#[tokio::test]
async fn two_rust_udx_peers_survive_a_quarter_of_datagrams_lost() {
    let a = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let b = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxy = LossyProxy::start(a.local_addr().unwrap(), 25).await;
    *proxy.node.lock().unwrap() = Some(b.local_addr().unwrap());
    let echo = b.connect(1, 2, proxy.facing_node).unwrap();
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(echo);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let stream = a.connect(2, 1, proxy.facing_rust).unwrap();
    let start = std::time::Instant::now();
    echo_through(stream, &pattern(300_000)).await;
    eprintln!(
        "took {:?}, dropped {}",
        start.elapsed(),
        proxy.dropped.load(Ordering::Relaxed)
    );
}

// ---- dht-rpc -------------------------------------------------------------

/// `tests/interop/dht-testnet.mjs`: a stock HyperDHT testnet driven by
/// one-line commands.
struct StockTestnet {
    child: Child,
    commands: tokio::process::ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
    /// The `ready` event: bootstrap addresses and node ports.
    ready: Value,
}

impl StockTestnet {
    /// Starts a testnet of `size` nodes and waits until it is ready.
    async fn start(size: usize) -> Self {
        assert!(
            Path::new("node_modules/hyperdht").exists(),
            "the npm packages are missing: run `npm ci` (npm test does) before this test"
        );
        let mut child = Command::new("node")
            .arg("tests/interop/dht-testnet.mjs")
            .arg(size.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("Node.js must be installed to run the interop tests");
        let commands = child.stdin.take().expect("piped stdin");
        let events = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut testnet = Self {
            child,
            commands,
            events,
            ready: Value::Null,
        };
        testnet.ready = testnet.next("ready").await;
        testnet
    }

    /// Sends one command line and returns the next event, which must be
    /// called `expected`.
    async fn command(&mut self, line: &str, expected: &str) -> Value {
        self.commands
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.next(expected).await
    }

    /// The next event, which must be called `expected`.
    async fn next(&mut self, expected: &str) -> Value {
        let event = next_event(&mut self.events).await;
        assert_eq!(event["event"], expected, "{event}");
        event
    }

    fn bootstrap(&self) -> Vec<SocketAddrV4> {
        self.ready["bootstrap"]
            .as_array()
            .expect("bootstrap list")
            .iter()
            .map(|address| address.as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// A Rust HyperDHT node on loopback that bootstraps from the testnet.
    async fn rust_dht(&self) -> HyperDht {
        HyperDht::bind("127.0.0.1:0".parse().unwrap(), self.bootstrap())
            .await
            .unwrap()
    }

    /// Tears the testnet down and checks it exits cleanly.
    async fn quit(mut self) {
        self.command("quit", "closed").await;
        assert!(exits(&mut self.child).await);
    }
}

#[tokio::test]
async fn rust_node_bootstraps_from_the_stock_testnet_and_answers_its_pings() {
    let mut stock = StockTestnet::start(6).await;
    let bootstrap = stock.bootstrap();
    let testnet: Vec<(u16, String)> = stock.ready["nodes"]
        .as_array()
        .expect("node list")
        .iter()
        .map(|node| {
            (
                node["port"].as_u64().unwrap() as u16,
                node["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(testnet.len(), 6);

    let node = DhtNode::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    // Walk towards the last testnet node's id, starting from the first
    // (bootstrap) node only: the query must discover the others.
    let (last_port, last_id) = testnet.last().unwrap().clone();
    let target = node_id(SocketAddrV4::new(Ipv4Addr::LOCALHOST, last_port));
    assert_eq!(hex(&target), last_id, "node ids agree with dht-rpc's");
    let answers = node.find_node(target, &bootstrap).await.unwrap();
    let found: Vec<u16> = answers
        .iter()
        .map(|(peer, _)| peer.address.port())
        .collect();
    assert_eq!(
        found[0], last_port,
        "the target itself answers first: {found:?}"
    );
    // Every node but the first was discovered through the first. (The
    // testnet's first node answers without an id, as an ephemeral node
    // does, so it is a bootstrap address rather than a routing entry.)
    for (port, _) in &testnet[1..] {
        assert!(
            found.contains(port),
            "node {port} was discovered: {found:?}"
        );
    }

    // The other way: a stock node pings the Rust node, which answers as an
    // ephemeral node.
    let port = node.local_addr().unwrap().port();
    let pinged = stock.command(&format!("ping {port}"), "pinged").await;
    assert_eq!(pinged["ok"], true, "{pinged}");
    assert_eq!(pinged["ephemeral"], true, "{pinged}");

    // Garbage sent to the testnet's nodes and to ours changes nothing.
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [&[0x03u8][..], &[0x13, 0xff, 0xff], b"hello dht"] {
        raw.send_to(junk, node.local_addr().unwrap()).await.unwrap();
        raw.send_to(junk, SocketAddr::V4(bootstrap[0]))
            .await
            .unwrap();
    }
    let again = node.find_node(target, &bootstrap).await.unwrap();
    assert_eq!(again[0].0.address.port(), last_port);

    stock.quit().await;
}

// ---- HyperDHT discovery --------------------------------------------------

#[tokio::test]
async fn rust_and_node_find_each_other_through_lookup_announce_and_find_peer() {
    let mut testnet = StockTestnet::start(6).await;
    let dht = testnet.rust_dht().await;

    // Rust announces, a stock client looks the topic up.
    let topic = [0x51u8; 32];
    let ours = KeyPair::from_seed([21; 32]);
    let stored = dht.announce(topic, &ours).await.unwrap();
    assert!(stored >= 3, "stored at {stored} nodes");
    let lookup = testnet
        .command(&format!("lookup {}", hex(&topic)), "lookup")
        .await;
    let keys: Vec<&str> = lookup["publicKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_str().unwrap())
        .collect();
    assert!(keys.contains(&hex(&ours.public_key()).as_str()), "{lookup}");

    // A stock client announces, Rust looks the topic up.
    let other_topic = [0x52u8; 32];
    let node_seed = [22u8; 32];
    testnet
        .command(
            &format!("announce {} {}", hex(&other_topic), hex(&node_seed)),
            "announced",
        )
        .await;
    let records = dht.lookup(other_topic).await.unwrap();
    let node_key = KeyPair::from_seed(node_seed).public_key();
    assert!(
        records.iter().any(|record| record.public_key == node_key),
        "the Node peer's record is found: {records:?}"
    );
    assert!(
        dht.lookup([0x53; 32]).await.unwrap().is_empty(),
        "an unused topic has no records"
    );

    // A stock HyperDHT server announces itself; Rust finds its record.
    let server_seed = [23u8; 32];
    testnet
        .command(&format!("listen {}", hex(&server_seed)), "listening")
        .await;
    let server_key = KeyPair::from_seed(server_seed).public_key();
    let found = dht.find_peer(&server_key).await.unwrap();
    assert_eq!(found.map(|record| record.public_key), Some(server_key));
    assert_eq!(dht.find_peer(&[9; 32]).await.unwrap(), None);

    testnet.quit().await;
}

/// Whether a stock client's lookup of `topic` finds `key`.
async fn stock_lookup_finds(testnet: &mut StockTestnet, topic: &[u8; 32], key: &[u8; 32]) -> bool {
    let lookup = testnet
        .command(&format!("lookup {}", hex(topic)), "lookup")
        .await;
    lookup["publicKeys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|found| found.as_str() == Some(hex(key).as_str()))
}

#[tokio::test]
async fn announcements_are_renewed_until_their_guard_is_dropped() {
    let mut testnet = StockTestnet::start(6).await;
    let dht = testnet
        .rust_dht()
        .await
        .with_reannounce_interval(Duration::from_millis(700));
    let topic = [0x61u8; 32];
    let ours = KeyPair::from_seed([31; 32]);
    let forget = format!("forget {} {}", hex(&topic), hex(&ours.public_key()));

    let guard = dht.keep_announced(topic, ours.clone()).await.unwrap();
    assert!(stock_lookup_finds(&mut testnet, &topic, &ours.public_key()).await);
    // The nodes forget the record, as when it expires: the renewal puts it
    // back.
    let forgot = testnet.command(&forget, "forgot").await;
    assert!(forgot["dropped"].as_u64().unwrap() >= 3, "{forgot}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !stock_lookup_finds(&mut testnet, &topic, &ours.public_key()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the announcement was not renewed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Without the guard nothing renews it any more.
    drop(guard);
    tokio::time::sleep(Duration::from_millis(300)).await;
    testnet.command(&forget, "forgot").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!stock_lookup_finds(&mut testnet, &topic, &ours.public_key()).await);
    testnet.quit().await;
}

/// Has the testnet's Node client connect to the Rust server
/// `server_public` (`firewalled`: it holepunches), checks both hellos
/// cross, and returns the client's `data` event (with its punch stats).
async fn stock_client_says_hello(
    testnet: &mut StockTestnet,
    connections: &mut tokio::sync::mpsc::Receiver<SecretStream<UdxStream>>,
    server_public: [u8; 32],
    firewalled: bool,
) -> Value {
    let mode = if firewalled { " firewalled" } else { "" };
    testnet
        .commands
        .write_all(format!("connect {}{mode}\n", hex(&server_public)).as_bytes())
        .await
        .unwrap();
    let mut connection = tokio::time::timeout(Duration::from_secs(30), connections.recv())
        .await
        .expect("the client connects within 30 s")
        .expect("a connection");
    let hello = tokio::time::timeout(Duration::from_secs(30), connection.recv())
        .await
        .expect("the client's message arrives within 30 s")
        .unwrap()
        .expect("a message");
    assert_eq!(hello, b"hello from node");
    connection.send(b"hello from rust").await.unwrap();
    let data = testnet.next("data").await;
    assert_eq!(data["text"], "hello from rust");
    assert_eq!(data["remotePublicKey"], hex(&server_public));
    assert_ne!(connection.remote_public_key(), [0; 32]);
    data
}

#[tokio::test]
async fn a_stock_hyperdht_client_connects_to_a_rust_server() {
    let mut testnet = StockTestnet::start(6).await;
    let dht = testnet.rust_dht().await;
    let server_keys = KeyPair::from_seed([31; 32]);
    let server_public = server_keys.public_key();
    let mut connections = dht.listen(server_keys).await.unwrap();

    // The Node client finds the server through the DHT, runs the IK
    // handshake relayed by a DHT node, and opens a UDX stream to it.
    stock_client_says_hello(&mut testnet, &mut connections, server_public, false).await;
    testnet.quit().await;
}

#[tokio::test]
async fn a_rust_client_connects_to_a_stock_hyperdht_server() {
    let mut testnet = StockTestnet::start(6).await;
    let dht = testnet.rust_dht().await;
    let server_seed = [32u8; 32];
    testnet
        .command(&format!("listen {}", hex(&server_seed)), "listening")
        .await;
    let server_public = KeyPair::from_seed(server_seed).public_key();

    let mut connection = tokio::time::timeout(
        Duration::from_secs(30),
        dht.connect(&KeyPair::generate(), server_public),
    )
    .await
    .expect("connected within 30 s")
    .unwrap();
    assert_eq!(connection.remote_public_key(), server_public);
    for message in [&b"hello from rust"[..], &[7u8; 50_000]] {
        connection.send(message).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(30), connection.recv())
            .await
            .expect("the echo arrives within 30 s")
            .unwrap()
            .expect("an echo");
        assert_eq!(echo, [b"echo:".as_slice(), message].concat());
    }
    // Both ends are reachable on loopback: the server counted a direct
    // connection.
    let accepted = testnet.next("connection").await;
    assert_eq!(accepted["punches"]["open"], 1, "{accepted}");
    // Nobody listens under this key: a typed error, not a hang.
    let missing = dht.connect(&KeyPair::generate(), [3; 32]).await;
    assert!(
        matches!(missing, Err(DhtError::PeerNotFound)),
        "{missing:?}"
    );

    testnet.quit().await;
}

// ---- holepunching, forced on loopback ---------------------------------------
//
// On loopback every socket is reachable, so both ends are told to treat
// themselves as firewalled (as hyperdht's own tests do): the handshake
// then offers a holepunch, both sides classify their "NAT" from DHT pings
// (consistent: every node sees the same port), exchange the two
// PEER_HOLEPUNCH rounds through a relaying DHT node, probe, and connect on
// the punch sockets. `tests/hyperswarm_nat.rs` runs the same paths through
// real NATs.

/// `client` connects to a server `server` runs for the seed's key pair:
/// both ends of the connection, each checked to see the other's key.
async fn connect_rust_peers(
    server: &HyperDht,
    client: &HyperDht,
    seed: [u8; 32],
) -> (SecretStream<UdxStream>, SecretStream<UdxStream>) {
    let server_keys = KeyPair::from_seed(seed);
    let server_public = server_keys.public_key();
    let mut connections = server.listen(server_keys).await.unwrap();
    let client_keys = KeyPair::generate();
    let (connected, accepted) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(30),
            client.connect(&client_keys, server_public)
        ),
        tokio::time::timeout(Duration::from_secs(30), connections.recv()),
    );
    let ours = connected.expect("connected within 30 s").unwrap();
    let theirs = accepted
        .expect("accepted within 30 s")
        .expect("a connection");
    assert_eq!(ours.remote_public_key(), server_public);
    assert_eq!(theirs.remote_public_key(), client_keys.public_key());
    (ours, theirs)
}

/// A Rust node that holepunches even on loopback.
async fn firewalled_rust_dht(testnet: &StockTestnet) -> HyperDht {
    testnet.rust_dht().await.with_holepunching_forced()
}

fn punched(dht: &HyperDht) -> (u64, u64, u64) {
    let stats = dht.stats();
    (
        stats.open.load(Ordering::Relaxed),
        stats.consistent.load(Ordering::Relaxed),
        stats.random.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rust_peers_holepunch_on_loopback() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let testnet = StockTestnet::start(6).await;
    let server = firewalled_rust_dht(&testnet).await;
    let client = firewalled_rust_dht(&testnet).await;
    let (mut ours, mut theirs) = connect_rust_peers(&server, &client, [41; 32]).await;
    // Both ends went through the consistent holepunch, not a direct dial.
    assert_eq!(punched(&client), (0, 1, 0));
    assert_eq!(punched(&server), (0, 1, 0));
    ours.send(b"through the punch").await.unwrap();
    let got = theirs.recv().await.unwrap().expect("a message");
    assert_eq!(got, b"through the punch");
    theirs.send(&[9u8; 100_000]).await.unwrap();
    let got = ours.recv().await.unwrap().expect("a message");
    assert_eq!(got, [9u8; 100_000]);
    testnet.quit().await;
}

#[tokio::test]
async fn a_stock_client_holepunches_to_a_rust_server_on_loopback() {
    let mut testnet = StockTestnet::start(6).await;
    let dht = firewalled_rust_dht(&testnet).await;
    let server_keys = KeyPair::from_seed([42; 32]);
    let server_public = server_keys.public_key();
    let mut connections = dht.listen(server_keys).await.unwrap();
    let data = stock_client_says_hello(&mut testnet, &mut connections, server_public, true).await;
    // The stock client did not dial directly (on loopback its first
    // low-TTL probe already reaches the punch socket, which answers it, so
    // it connects before its punching loop counts), and we punched.
    assert_eq!(data["punches"]["open"], 0, "{data}");
    assert_eq!(punched(&dht), (0, 1, 0));
    testnet.quit().await;
}

#[tokio::test]
async fn a_rust_client_holepunches_to_a_stock_server_on_loopback() {
    let mut testnet = StockTestnet::start(6).await;
    let dht = firewalled_rust_dht(&testnet).await;
    let server_seed = [43u8; 32];
    testnet
        .command(
            &format!("listen {} firewalled", hex(&server_seed)),
            "listening",
        )
        .await;
    let server_public = KeyPair::from_seed(server_seed).public_key();
    let mut connection = tokio::time::timeout(
        Duration::from_secs(30),
        dht.connect(&KeyPair::generate(), server_public),
    )
    .await
    .expect("punched within 30 s")
    .unwrap();
    // The stock server did not dial directly (its answer to our first
    // low-TTL probe reaches us on loopback, so we connect before its
    // punching loop counts), and we punched.
    let accepted = testnet.next("connection").await;
    assert_eq!(accepted["punches"]["open"], 0, "{accepted}");
    assert_eq!(punched(&dht), (0, 1, 0));
    connection.send(b"hello from rust").await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(30), connection.recv())
        .await
        .expect("the echo arrives within 30 s")
        .unwrap()
        .expect("an echo");
    assert_eq!(echo, b"echo:hello from rust");
    testnet.quit().await;
}

// ---- blind relays, on loopback ----------------------------------------------
//
// Firewalled peers whose client refuses to holepunch (as if both NATs
// randomized ports) fall back to the blind relay one of them names: both
// connect to the relay, pair under the token from their handshake, and
// their UDX stream runs through it. `tests/hyperswarm_nat.rs` runs the
// same between two real randomizing NATs.

fn relayed(dht: &HyperDht) -> u64 {
    dht.stats().relayed.load(Ordering::Relaxed)
}

/// A Rust blind relay on the testnet (reachable: not firewalled).
async fn rust_blind_relay(testnet: &StockTestnet, seed: u8) -> (HyperDht, BlindRelay) {
    let dht = testnet.rust_dht().await;
    let relay = BlindRelay::start(&dht, KeyPair::from_seed([seed; 32]))
        .await
        .unwrap();
    (dht, relay)
}

/// `pluresdb blind-relay` on the testnet, with its key in `key_file`:
/// the process and the key it printed.
async fn pluresdb_blind_relay(testnet: &StockTestnet, key_file: &Path) -> (Child, [u8; 32]) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pluresdb"));
    command
        .args(["blind-relay", "--bind", "127.0.0.1:0", "--key-file"])
        .arg(key_file);
    for address in testnet.bootstrap() {
        command.args(["--bootstrap", &address.to_string()]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let relaying = next_event(&mut lines).await;
    assert_eq!(relaying["event"], "relaying", "{relaying}");
    let text = relaying["publicKey"].as_str().expect("a public key");
    let key: Vec<u8> = (0..64)
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
        .collect();
    (child, key.try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rust_peers_connect_through_rust_and_stock_blind_relays() {
    let mut testnet = StockTestnet::start(6).await;
    let (_relay_node, rust_relay) = rust_blind_relay(&testnet, 51).await;
    let stock_relay = testnet
        .command(&format!("relay {}", hex(&[52; 32])), "relaying")
        .await;
    let stock_relay_key = KeyPair::from_seed([52; 32]).public_key();
    assert_eq!(stock_relay["publicKey"], hex(&stock_relay_key));
    // `pluresdb blind-relay`, which creates its key file.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("relay.key");
    let (_cli_relay, cli_relay_key) = pluresdb_blind_relay(&testnet, &key_file).await;
    for (round, relay_key) in [rust_relay.public_key(), stock_relay_key, cli_relay_key]
        .into_iter()
        .enumerate()
    {
        // The server names the relay; the client only follows.
        let server = firewalled_rust_dht(&testnet)
            .await
            .with_relay_through(relay_key);
        let client = firewalled_rust_dht(&testnet).await.without_holepunching();
        let (mut ours, mut theirs) =
            connect_rust_peers(&server, &client, [53 + round as u8; 32]).await;
        // Neither dialled nor punched: both went through the relay.
        assert_eq!((punched(&client), relayed(&client)), ((0, 0, 0), 1));
        assert_eq!((punched(&server), relayed(&server)), ((0, 0, 0), 1));
        ours.send(b"through the relay").await.unwrap();
        assert_eq!(theirs.recv().await.unwrap().unwrap(), b"through the relay");
        // More than the relay's backlog and many UDX packets, both ways.
        theirs.send(&[5u8; 300_000]).await.unwrap();
        assert_eq!(ours.recv().await.unwrap().unwrap(), [5u8; 300_000]);
        ours.send(&[6u8; 300_000]).await.unwrap();
        assert_eq!(theirs.recv().await.unwrap().unwrap(), [6u8; 300_000]);
    }
    assert_eq!(rust_relay.stats().paired.load(Ordering::Relaxed), 1);
    // Run again with the same key file, the CLI's relay has the same key.
    let (_again, same_key) = pluresdb_blind_relay(&testnet, &key_file).await;
    assert_eq!(same_key, cli_relay_key);
    testnet.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_relay_closes_connections_that_misbehave() {
    use pluresdb::hyperswarm::blind_relay::{MuxFrame, MAX_OPENS_PER_CONNECTION, PAIR, PROTOCOL};
    let testnet = StockTestnet::start(6).await;
    let (_relay_node, relay) = rust_blind_relay(&testnet, 81).await;
    let client = testnet.rust_dht().await;
    let open = |local_id, protocol: &str| MuxFrame::Open {
        local_id,
        protocol: protocol.into(),
        id: None,
        handshake: Vec::new(),
    };
    let closed = |mut connection: SecretStream<UdxStream>| async move {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(_)) = connection.recv().await {}
        })
        .await
        .is_ok()
    };
    // Opening channel after channel: each gets an answer (an open, then
    // rejects) until the cap, then the connection closes.
    let mut connection = client
        .connect(&KeyPair::generate(), relay.public_key())
        .await
        .unwrap();
    connection.send(&open(1, PROTOCOL).encode()).await.unwrap();
    let answer = connection.recv().await.unwrap().expect("an answer");
    assert!(matches!(
        MuxFrame::decode_all(&answer).unwrap()[..],
        [MuxFrame::Open { local_id: 1, .. }]
    ));
    for local_id in 2..=MAX_OPENS_PER_CONNECTION as u64 + 1 {
        connection
            .send(&open(local_id, "not-blind-relay").encode())
            .await
            .unwrap();
    }
    assert!(
        closed(connection).await,
        "a connection opening channels without end is closed"
    );
    // A malformed pair closes the connection too.
    let mut connection = client
        .connect(&KeyPair::generate(), relay.public_key())
        .await
        .unwrap();
    connection.send(&open(1, PROTOCOL).encode()).await.unwrap();
    let bad = MuxFrame::Message {
        channel: 1,
        kind: PAIR,
        body: vec![0xff, 1, 2],
    };
    connection.send(&bad.encode()).await.unwrap();
    assert!(
        closed(connection).await,
        "a malformed pair closes the connection"
    );
    assert_eq!(relay.stats().paired.load(Ordering::Relaxed), 0);
    testnet.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_client_reaches_a_rust_server_through_a_rust_blind_relay() {
    let mut testnet = StockTestnet::start(6).await;
    let (_relay_node, relay) = rust_blind_relay(&testnet, 61).await;
    // The server never punches, so the stock client's rounds go
    // unanswered and the relay is the only way.
    let dht = firewalled_rust_dht(&testnet)
        .await
        .with_relay_through(relay.public_key())
        .without_holepunching();
    let server_keys = KeyPair::from_seed([62; 32]);
    let server_public = server_keys.public_key();
    let mut connections = dht.listen(server_keys).await.unwrap();
    let data = stock_client_says_hello(&mut testnet, &mut connections, server_public, true).await;
    // The stock client punched nothing. Its `open` count is not checked:
    // it counts its own connection to the (reachable) relay there when
    // that handshake went through another DHT node, which is up to the
    // routing. The server's counts show the path.
    assert_eq!(
        (&data["punches"]["consistent"], &data["punches"]["random"]),
        (&Value::from(0), &Value::from(0)),
        "{data}"
    );
    assert_eq!((punched(&dht), relayed(&dht)), ((0, 0, 0), 1));
    assert_eq!(relay.stats().paired.load(Ordering::Relaxed), 1);
    testnet.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_client_reaches_a_stock_server_through_a_rust_blind_relay() {
    let mut testnet = StockTestnet::start(6).await;
    let (_relay_node, relay) = rust_blind_relay(&testnet, 71).await;
    let server_seed = [72u8; 32];
    testnet
        .command(
            &format!(
                "listen {} firewalled relay={}",
                hex(&server_seed),
                hex(&relay.public_key())
            ),
            "listening",
        )
        .await;
    let server_public = KeyPair::from_seed(server_seed).public_key();
    let dht = firewalled_rust_dht(&testnet).await.without_holepunching();
    let mut connection = tokio::time::timeout(
        Duration::from_secs(30),
        dht.connect(&KeyPair::generate(), server_public),
    )
    .await
    .expect("relayed within 30 s")
    .unwrap();
    connection.send(b"hello from rust").await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(30), connection.recv())
        .await
        .expect("the echo arrives within 30 s")
        .unwrap()
        .expect("an echo");
    assert_eq!(echo, b"echo:hello from rust");
    let accepted = testnet.next("connection").await;
    assert_eq!(accepted["relaying"]["successes"], 1, "{accepted}");
    assert_eq!((punched(&dht), relayed(&dht)), ((0, 0, 0), 1));
    assert_eq!(relay.stats().paired.load(Ordering::Relaxed), 1);
    testnet.quit().await;
}

// ---- PluresDB sync over Hyperswarm ----------------------------------------

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_sync_over_hyperswarm() {
    use pluresdb::storage::MemoryStorage;
    use pluresdb::transport::HyperswarmConnector;
    use pluresdb::{Database, OpenOptions};
    use serde_json::json;

    let testnet = StockTestnet::start(6).await;
    let bootstrap = testnet.bootstrap();
    let a = Database::open(MemoryStorage::new(), OpenOptions::default())
        .await
        .unwrap();
    let b = Database::open(MemoryStorage::new(), OpenOptions::default())
        .await
        .unwrap();
    a.put("before", json!("written before sync")).await.unwrap();
    b.join_invite(&a.create_invite().await.unwrap())
        .await
        .unwrap();
    let loopback = "127.0.0.1:0".parse().unwrap();
    let sync_a = a
        .sync(HyperswarmConnector::new(loopback, bootstrap.clone()))
        .unwrap();
    let sync_b = b
        .sync(HyperswarmConnector::new(loopback, bootstrap))
        .unwrap();

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
    assert_eq!(a.version_vector(), b.version_vector());
    assert_eq!(sync_a.status().peers, 1);
    assert_eq!(sync_b.status().peers, 1);
    testnet.quit().await;
}

#[tokio::test]
async fn a_hyperswarm_session_releases_its_socket_when_it_ends() {
    use futures::StreamExt;
    use pluresdb::transport::{Connector, HyperswarmConnector};

    let testnet = StockTestnet::start(6).await;
    // A free loopback port, taken and let go.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
    let connector = HyperswarmConnector::new(bind, testnet.bootstrap());
    for session in 0..2 {
        let rendezvous = pluresdb::transport::Rendezvous {
            topic: [0x62; 32],
            join_key: [0x63; 32],
        };
        let link = connector.connect(rendezvous, 0).await.unwrap();
        assert!(
            std::net::UdpSocket::bind(bind).is_err(),
            "session {session} holds its port"
        );
        let pluresdb::transport::Link {
            outbound,
            mut inbound,
        } = link;
        drop(outbound); // what the sync engine does when a session ends
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(pluresdb::transport::TransportEvent::Closed { .. }) =
                tokio::time::timeout(Duration::from_millis(100), inbound.next())
                    .await
                    .ok()
                    .flatten()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the session did not end"
            );
        }
        // The DHT node, its server and its renewals are gone, so the port is
        // free again (and the next session can bind it).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while std::net::UdpSocket::bind(bind).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "session {session} still holds its UDP socket after it ended"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    testnet.quit().await;
}

#[tokio::test]
async fn the_cli_syncs_two_database_files_over_hyperswarm() {
    let testnet = StockTestnet::start(6).await;
    let bootstrap = testnet.bootstrap()[0].to_string();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let cli = |db: &Path, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pluresdb"));
        command.arg("--db").arg(db).args(args).kill_on_drop(true);
        command
    };
    let put = cli(&a, &["put", "note:1", r#"{"text":"over the DHT"}"#])
        .output()
        .await
        .unwrap();
    assert!(put.status.success(), "{put:?}");
    let invite = cli(&a, &["invite"]).output().await.unwrap();
    let invite = String::from_utf8(invite.stdout).unwrap().trim().to_owned();
    let sync = [
        "sync",
        "--hyperswarm",
        "--bootstrap",
        &bootstrap,
        "--bind",
        "127.0.0.1:0",
    ];
    let mut serving = cli(&a, &sync).stderr(Stdio::null()).spawn().unwrap();
    let joined = tokio::time::timeout(
        Duration::from_secs(60),
        cli(
            &b,
            &[&sync[..], &["--invite", &invite, "--once", "1"]].concat(),
        )
        .output(),
    )
    .await
    .expect("b's sync finishes within 60 s")
    .unwrap();
    assert!(joined.status.success(), "{joined:?}");
    let stderr = String::from_utf8_lossy(&joined.stderr);
    assert!(stderr.contains("syncing over hyperswarm"), "{stderr}");
    let got = cli(&b, &["get", "note:1"]).output().await.unwrap();
    let value: Value = serde_json::from_slice(&got.stdout).expect("JSON from get");
    assert_eq!(value["text"], "over the DHT", "{got:?}");
    serving.kill().await.unwrap();
    testnet.quit().await;
}
