//! Interoperability with the stock npm Hyperswarm stack, on loopback: the
//! Rust Noise handshake and secret-stream against `@hyperswarm/secret-stream`
//! (run by `tests/interop/secret-stream-peer.mjs`), in both roles.
//!
//! Needs Node.js and the workspace's npm packages (`npm ci`, which
//! `npm test` runs first).
#![cfg(all(feature = "hyperswarm", not(target_arch = "wasm32")))]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use pluresdb::hyperswarm::{HandshakeError, KeyPair, Pattern, SecretStream, SecretStreamError};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
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

    for i in 0..20 {
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
