//! Holepunching through real NATs, built from Linux network namespaces.
//!
//! Each test builds its own small internet and removes it afterwards (also
//! when it fails):
//! - a "public" namespace with a bridge at `10.77.0.1/24`, where a stock
//!   HyperDHT testnet runs (`tests/interop/dht-testnet.mjs`);
//! - per site either an *open* namespace on the bridge (`10.77.0.5x`, no
//!   NAT), or a *home* namespace (`192.168.10x.2`) behind a *router*
//!   namespace (`10.77.0.1x` on the bridge) that masquerades with
//!   `iptables`: plain `MASQUERADE` keeps a socket's port for every
//!   destination (a consistent NAT), `MASQUERADE --random-fully` picks a
//!   new one per destination (a random NAT). Both drop what nobody asked
//!   for, as home routers do.
//!
//! Peers run inside the site namespaces: the Rust peer is this test binary
//! run again as the ignored `nat_peer` test, the stock peer is
//! `tests/interop/hyperdht-peer.mjs` on npm `hyperdht`, or
//! `tests/interop/hyperswarm-peer.mjs` on npm `hyperswarm`. Every pairing is
//! run Rust↔Rust, Rust client → Node server and Node client → Rust server,
//! and with a `hyperswarm` peer both ways.
//! Between two random NATs, where punching cannot work, the peers fall
//! back to a blind relay on the public network: `pluresdb blind-relay`, or
//! npm `blind-relay` on a stock node.
//!
//! Needs root (for `ip netns`) and `iptables` (`scripts/setup` installs
//! it). Without them the tests say so and pass without running, unless
//! `PLURESDB_REQUIRE_NETNS=1` (set by `scripts/test` when run as root),
//! where they fail instead. The same code paths run on plain loopback in
//! `tests/hyperswarm_interop.rs` (holepunching forced).
//!
//! Debugging: `PLURESDB_NAT_KEEP=1` keeps a test's namespaces (delete them
//! with `ip netns del`), and `RUST_LOG=pluresdb::hyperswarm=debug` makes
//! the Rust peers log each holepunch round.
#![cfg(all(feature = "hyperswarm", target_os = "linux"))]

use std::net::SocketAddrV4;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pluresdb::hyperswarm::dht_rpc::DhtError;
use pluresdb::hyperswarm::hyperdht::HyperDht;
use pluresdb::hyperswarm::KeyPair;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The DHT's address in the public namespace.
const PUBLIC_HOST: &str = "10.77.0.1";
/// How long one connection may take (a random NAT probes for up to 35 s).
const CONNECT_WAIT: Duration = Duration::from_secs(60);

/// What stands between a site and the public network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    /// Directly on the public bridge.
    Open,
    /// Behind `MASQUERADE`: one public port per socket.
    Consistent,
    /// Behind `MASQUERADE --random-fully`: a new public port per destination.
    Random,
}

/// The namespaces of one test; dropping it deletes them.
struct World {
    prefix: String,
    created: Vec<String>,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::env::var("PLURESDB_NAT_KEEP").as_deref() == Ok("1") {
            eprintln!(
                "keeping the namespaces {:?} (PLURESDB_NAT_KEEP=1)",
                self.created
            );
            return;
        }
        for namespace in self.created.iter().rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", namespace])
                .status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run `ip`: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl World {
    /// Builds the public namespace and one namespace (plus a router for a
    /// NAT) per site; `None` (after saying why) where this machine cannot.
    fn build(tag: &str, sites: &[Site]) -> Option<Self> {
        let prefix = format!("pdb{}{tag}", std::process::id());
        let mut world = Self {
            prefix,
            created: Vec::new(),
        };
        match world.try_build(sites) {
            Ok(()) => Some(world),
            Err(why) => {
                let required = std::env::var("PLURESDB_REQUIRE_NETNS").as_deref() == Ok("1");
                assert!(!required, "cannot build the NAT namespaces: {why}");
                eprintln!(
                    "skipping the NAT test `{tag}`: cannot build network namespaces here \
                     ({why}); it needs root and iptables"
                );
                None
            }
        }
    }

    fn namespace(&mut self, name: &str) -> Result<String, String> {
        let full = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &full])?;
        self.created.push(full.clone());
        ip(&["-n", &full, "link", "set", "lo", "up"])?;
        Ok(full)
    }

    /// The namespace a site's peers run in.
    fn site(&self, index: usize) -> String {
        format!("{}-s{index}", self.prefix)
    }

    fn exec(namespace: &str, program: &str, args: &[&str]) -> Result<(), String> {
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", namespace, program])
            .args(args)
            .output()
            .map_err(|error| format!("cannot run `{program}`: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{program} {}` in {namespace} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn try_build(&mut self, sites: &[Site]) -> Result<(), String> {
        if std::process::Command::new("iptables")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err("`iptables` is not installed".into());
        }
        let public = self.namespace("pub")?;
        ip(&["-n", &public, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &public,
            "addr",
            "add",
            &format!("{PUBLIC_HOST}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &public, "link", "set", "br0", "up"])?;
        for (index, site) in sites.iter().enumerate() {
            let port = format!("p{index}");
            // The namespace whose `wan0` link joins the bridge.
            let (outside, outside_address) = match site {
                Site::Open => (self.namespace(&format!("s{index}"))?, 50 + index),
                Site::Consistent | Site::Random => {
                    (self.namespace(&format!("r{index}"))?, 10 + index)
                }
            };
            ip(&[
                "link", "add", "wan0", "netns", &outside, "type", "veth", "peer", "name", &port,
                "netns", &public,
            ])?;
            ip(&["-n", &public, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &public, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &outside,
                "addr",
                "add",
                &format!("10.77.0.{outside_address}/24"),
                "dev",
                "wan0",
            ])?;
            ip(&["-n", &outside, "link", "set", "wan0", "up"])?;
            if *site == Site::Open {
                continue;
            }
            let home = self.namespace(&format!("s{index}"))?;
            let lan = format!("192.168.{}", 100 + index);
            ip(&[
                "link", "add", "lan", "netns", &outside, "type", "veth", "peer", "name", "eth0",
                "netns", &home,
            ])?;
            ip(&[
                "-n",
                &outside,
                "addr",
                "add",
                &format!("{lan}.1/24"),
                "dev",
                "lan",
            ])?;
            ip(&["-n", &outside, "link", "set", "lan", "up"])?;
            ip(&[
                "-n",
                &home,
                "addr",
                "add",
                &format!("{lan}.2/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &home, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &home,
                "route",
                "add",
                "default",
                "via",
                &format!("{lan}.1"),
            ])?;
            Self::exec(&outside, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
            let mut rule = vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan0",
                "-j",
                "MASQUERADE",
            ];
            if *site == Site::Random {
                rule.push("--random-fully");
            }
            Self::exec(&outside, "iptables", &rule)?;
            // A home router's firewall: from the outside, only replies to
            // what went out get in, to the router or through it. (Unasked
            // packets are dropped before conntrack records them, so a
            // peer's early probe cannot take the port the NAT would map
            // our own probe to, as it would if the router answered it.)
            for chain in ["INPUT", "FORWARD"] {
                Self::exec(
                    &outside,
                    "iptables",
                    &[
                        "-A",
                        chain,
                        "-i",
                        "wan0",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "ESTABLISHED,RELATED",
                        "-j",
                        "ACCEPT",
                    ],
                )?;
                Self::exec(
                    &outside,
                    "iptables",
                    &["-A", chain, "-i", "wan0", "-j", "DROP"],
                )?;
            }
        }
        Ok(())
    }
}

/// A process inside a namespace that prints one JSON event per line.
struct Peer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    name: String,
    /// Held open: the testnet quits when its input ends.
    _stdin: Option<tokio::process::ChildStdin>,
}

impl Peer {
    fn spawn(
        namespace: &str,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("starting {name}: {error}"));
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Self {
            _stdin: child.stdin.take(),
            child,
            lines,
            name: name.to_owned(),
        }
    }

    /// The next event (the Rust peer's lines start with `@peer `; test
    /// harness chatter is skipped).
    async fn next(&mut self, wait: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{} printed nothing within {wait:?}", self.name))
                .unwrap_or_else(|error| panic!("reading {}: {error}", self.name))
                .unwrap_or_else(|| panic!("{} exited without an event", self.name));
            let line = line.strip_prefix("@peer ").unwrap_or(&line);
            if let Ok(value) = serde_json::from_str::<Value>(line) {
                if value.get("event").is_some() {
                    return value;
                }
            }
        }
    }

    async fn expect(&mut self, event: &str, wait: Duration) -> Value {
        let value = self.next(wait).await;
        assert_eq!(value["event"], event, "{}: {value}", self.name);
        value
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Who runs a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Rust,
    /// npm `hyperdht` (`tests/interop/hyperdht-peer.mjs`).
    Node,
    /// npm `hyperswarm` on it (`tests/interop/hyperswarm-peer.mjs`).
    Swarm,
}

/// Starts a peer; `relay` is the blind relay (public key, hex) it names
/// for its connections, if any.
fn start_peer(
    namespace: &str,
    stack: Stack,
    bootstrap: &str,
    role: &[&str],
    relay: Option<&str>,
) -> Peer {
    let name = format!("{stack:?} {} in {namespace}", role[0]);
    match stack {
        Stack::Node | Stack::Swarm => {
            let script = if stack == Stack::Node {
                "tests/interop/hyperdht-peer.mjs"
            } else {
                "tests/interop/hyperswarm-peer.mjs"
            };
            let mut args = vec![script, bootstrap];
            args.extend_from_slice(role);
            let env: Vec<(&str, String)> = relay
                .map(|key| ("RELAY_THROUGH", key.to_owned()))
                .into_iter()
                .collect();
            Peer::spawn(namespace, &name, "node", &args, &env)
        }
        Stack::Rust => {
            let exe = std::env::current_exe().expect("the test binary's path");
            Peer::spawn(
                namespace,
                &name,
                exe.to_str().expect("a UTF-8 path"),
                &[
                    "--exact",
                    "nat_peer",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                    "-q",
                ],
                &[
                    ("PLURESDB_NAT_PEER", role.join(" ")),
                    ("PLURESDB_NAT_BOOTSTRAP", bootstrap.to_owned()),
                    ("PLURESDB_NAT_RELAY", relay.unwrap_or_default().to_owned()),
                ],
            )
        }
    }
}

/// The stock testnet in the public namespace.
async fn start_testnet(world: &World) -> (Peer, String) {
    assert!(
        Path::new("node_modules/hyperdht").exists(),
        "the npm packages are missing: run `npm ci` (npm test does) before this test"
    );
    let public = format!("{}-pub", world.prefix);
    let mut testnet = Peer::spawn(
        &public,
        "the testnet",
        "node",
        &["tests/interop/dht-testnet.mjs", "6", PUBLIC_HOST],
        &[],
    );
    let ready = testnet.expect("ready", Duration::from_secs(30)).await;
    let bootstrap = ready["bootstrap"]
        .as_array()
        .expect("bootstrap addresses")
        .iter()
        .map(|address| address.as_str().expect("an address").to_owned())
        .collect::<Vec<_>>()
        .join(",");
    (testnet, bootstrap)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one connection attempt gave.
struct Outcome {
    client: Value,
    server: Option<Value>,
}

impl Outcome {
    /// The client's and the server's events, checking the client's hello
    /// came back echoed.
    fn echoed(self, what: &str) -> (Value, Value) {
        let client = self.client;
        assert_eq!(client["event"], "data", "{what}: {client}");
        assert_eq!(client["text"], "echo:hello", "{what}: {client}");
        let server = self.server.expect("the server reported the connection");
        (client, server)
    }
}

/// Runs a server at site `server_site` and a client at `client_site` and
/// returns what each reported.
async fn connect_once(
    world: &World,
    bootstrap: &str,
    server: (usize, Stack),
    client: (usize, Stack),
    seed: u8,
) -> Outcome {
    connect_once_via(world, bootstrap, server, client, seed, (None, None)).await
}

/// As [`connect_once`], the server and the client naming the blind relays
/// in `relays` (public keys, hex), if any.
async fn connect_once_via(
    world: &World,
    bootstrap: &str,
    (server_site, server_stack): (usize, Stack),
    (client_site, client_stack): (usize, Stack),
    seed: u8,
    (server_relay, client_relay): (Option<&str>, Option<&str>),
) -> Outcome {
    let seed_hex = hex(&[seed; 32]);
    let public_key = hex(&KeyPair::from_seed([seed; 32]).public_key());
    let mut server = start_peer(
        &world.site(server_site),
        server_stack,
        bootstrap,
        &["listen", &seed_hex],
        server_relay,
    );
    server.expect("listening", Duration::from_secs(60)).await;
    let mut client = start_peer(
        &world.site(client_site),
        client_stack,
        bootstrap,
        &["connect", &public_key],
        client_relay,
    );
    let client_event = client.next(CONNECT_WAIT + Duration::from_secs(10)).await;
    let server_event = if client_event["event"] == "data" {
        Some(server.expect("connection", Duration::from_secs(10)).await)
    } else {
        None
    };
    Outcome {
        client: client_event,
        server: server_event,
    }
}

/// Both stacks in both roles across the same two sites: Rust↔Rust, Rust
/// client → Node server, Node client → Rust server.
const PAIRINGS: [(Stack, Stack); 3] = [
    (Stack::Rust, Stack::Rust),
    (Stack::Node, Stack::Rust),
    (Stack::Rust, Stack::Node),
];

/// A Rust peer with npm `hyperswarm` (on the same `hyperdht`) both ways.
const SWARM_PAIRINGS: [(Stack, Stack); 2] =
    [(Stack::Swarm, Stack::Rust), (Stack::Rust, Stack::Swarm)];

/// Connects a client at `client_site` to a server at `server_site` in
/// every pairing and checks each connected through `path` ("open",
/// "consistent" or "random" in the peers' punch counters); `open_site` is
/// the site on the public network, if any.
async fn every_pairing_connects(
    world: &World,
    bootstrap: &str,
    (server_site, client_site): (usize, usize),
    open_site: Option<usize>,
    path: &str,
    seed: u8,
) {
    for (index, (server_stack, client_stack)) in
        PAIRINGS.into_iter().chain(SWARM_PAIRINGS).enumerate()
    {
        let outcome = connect_once(
            world,
            bootstrap,
            (server_site, server_stack),
            (client_site, client_stack),
            seed + index as u8,
        )
        .await;
        let what = format!("{client_stack:?} client → {server_stack:?} server");
        let (client, server) = outcome.echoed(&what);
        let client = &client;
        // Each side counted the path it took: no direct dial when a punch
        // was needed. A stock node decides it is reachable only after a
        // while (dht-rpc's adaptive mode), so one that just started on the
        // open site may still call itself firewalled at the handshake, and
        // then both sides punch (consistent ↔ random), and may have changed
        // its mind by the time it reports: there the Rust side is only
        // checked to have counted one connection, and the stock side not
        // at all. (Which kind of punch depends on timing too: the stock
        // server's fast-open probe can get in before our NAT is classified.)
        let stock_at_open_site = match open_site {
            Some(site) if site == server_site => server_stack != Stack::Rust,
            Some(site) if site == client_site => client_stack != Stack::Rust,
            _ => false,
        };
        let expected = if path == "open" && stock_at_open_site {
            "open or punch"
        } else {
            path
        };
        for (side, event, stack) in [
            ("server", &server, server_stack),
            ("client", client, client_stack),
        ] {
            let punches = &event["punches"];
            let count = |path: &str| punches[path].as_u64().unwrap_or(0);
            match (expected, stack) {
                ("open or punch", Stack::Rust) => assert_eq!(
                    count("open") + count("consistent") + count("random"),
                    1,
                    "{what}, {side}: {event}"
                ),
                ("open or punch", _) => {}
                // A stock peer counts a punch only when its punching loop
                // ran; when the other side's first probe (the server's
                // fast-open answer to round one) got through before, it
                // counts nothing, so it is only checked not to have
                // dialled directly.
                (_, Stack::Node | Stack::Swarm) if expected != "open" => {
                    assert_eq!(count("open"), 0, "{what}, {side}: {event}");
                }
                _ => {
                    assert_eq!(count(expected), 1, "{what}, {side}: {event}");
                    if expected != "open" {
                        assert_eq!(count("open"), 0, "{what}, {side}: {event}");
                    }
                }
            }
        }
        eprintln!("{what} via {expected}: connected in {} ms", client["ms"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_nats_holepunch_both_ways() {
    let Some(world) = World::build("cc", &[Site::Consistent, Site::Consistent]) else {
        return;
    };
    let (_testnet, bootstrap) = start_testnet(&world).await;
    every_pairing_connects(&world, &bootstrap, (1, 0), None, "consistent", 0x10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_and_a_random_nat_holepunch_both_ways() {
    let Some(world) = World::build("cr", &[Site::Consistent, Site::Random]) else {
        return;
    };
    let (_testnet, bootstrap) = start_testnet(&world).await;
    // The server behind the random NAT, then behind the consistent one.
    every_pairing_connects(&world, &bootstrap, (1, 0), None, "random", 0x20).await;
    every_pairing_connects(&world, &bootstrap, (0, 1), None, "random", 0x28).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_peer_and_a_random_nat_connect_both_ways() {
    let Some(world) = World::build("or", &[Site::Open, Site::Random]) else {
        return;
    };
    let (_testnet, bootstrap) = start_testnet(&world).await;
    every_pairing_connects(&world, &bootstrap, (0, 1), Some(0), "open", 0x30).await;
    every_pairing_connects(&world, &bootstrap, (1, 0), Some(0), "open", 0x38).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_random_nats_fail_with_a_clear_error() {
    let Some(world) = World::build("rr", &[Site::Random, Site::Random]) else {
        return;
    };
    let (_testnet, bootstrap) = start_testnet(&world).await;
    for (index, (server_stack, client_stack)) in PAIRINGS.into_iter().enumerate() {
        let outcome = connect_once(
            &world,
            &bootstrap,
            (1, server_stack),
            (0, client_stack),
            0x40 + index as u8,
        )
        .await;
        let client = &outcome.client;
        assert_eq!(client["event"], "error", "{client}");
        match client_stack {
            Stack::Rust => assert_eq!(client["doubleRandom"], true, "{client}"),
            // Stock hyperdht destroys its puncher before it reports why, so
            // its client says HOLEPUNCH_ABORTED here (against a stock
            // server too).
            Stack::Node | Stack::Swarm => assert!(
                ["HOLEPUNCH_DOUBLE_RANDOMIZED_NATS", "HOLEPUNCH_ABORTED"]
                    .contains(&client["code"].as_str().unwrap_or_default()),
                "{client}"
            ),
        }
    }
}

/// `pluresdb blind-relay` in the public namespace: the process and its
/// public key (hex).
async fn start_pluresdb_relay(world: &World, bootstrap: &str) -> (Peer, String) {
    let public = format!("{}-pub", world.prefix);
    let mut args = vec!["blind-relay", "--bind", "0.0.0.0:0"];
    for address in bootstrap.split(',') {
        args.extend(["--bootstrap", address]);
    }
    let mut relay = Peer::spawn(
        &public,
        "pluresdb blind-relay",
        env!("CARGO_BIN_EXE_pluresdb"),
        &args,
        &[],
    );
    let relaying = relay.expect("relaying", Duration::from_secs(60)).await;
    let key = relaying["publicKey"]
        .as_str()
        .expect("the relay's public key")
        .to_owned();
    (relay, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_random_nats_connect_through_a_blind_relay() {
    let Some(world) = World::build("rl", &[Site::Random, Site::Random]) else {
        return;
    };
    let (_testnet, bootstrap) = start_testnet(&world).await;
    // PluresDB's relay, and npm `blind-relay` on a stock node.
    let (_ours, our_relay) = start_pluresdb_relay(&world, &bootstrap).await;
    let public = format!("{}-pub", world.prefix);
    let mut stock = start_peer(
        &public,
        Stack::Node,
        &bootstrap,
        &["relay", &hex(&[0x51; 32])],
        None,
    );
    let stock_relay = stock.expect("relaying", Duration::from_secs(60)).await["publicKey"]
        .as_str()
        .expect("the stock relay's key")
        .to_owned();
    // Every pairing with the server naming our relay, then every pairing
    // with the client naming the stock one, then npm `hyperswarm` both ways
    // (a swarm uses its relay when its own NAT randomizes ports, or after
    // a failure a relay can fix, so both sides name ours).
    let ours = Some(our_relay.as_str());
    let cases = PAIRINGS
        .iter()
        .map(|&stacks| (stacks, (ours, None)))
        .chain(
            PAIRINGS
                .iter()
                .map(|&stacks| (stacks, (None, Some(stock_relay.as_str())))),
        )
        .chain([
            ((Stack::Swarm, Stack::Rust), (ours, ours)),
            ((Stack::Rust, Stack::Swarm), (ours, ours)),
        ]);
    for (index, ((server_stack, client_stack), relays)) in cases.enumerate() {
        let outcome = connect_once_via(
            &world,
            &bootstrap,
            (1, server_stack),
            (0, client_stack),
            0x48 + index as u8,
            relays,
        )
        .await;
        let what = format!("{client_stack:?} client → {server_stack:?} server via {relays:?}");
        let (client, server) = outcome.echoed(&what);
        let client = &client;
        for (side, event, stack) in [
            ("server", &server, server_stack),
            ("client", client, client_stack),
        ] {
            match stack {
                Stack::Rust => {
                    assert_eq!(event["punches"]["open"], 0, "{what}, {side}: {event}");
                    assert_eq!(event["punches"]["relayed"], 1, "{what}, {side}: {event}");
                    assert_eq!(event["punches"]["random"], 0, "{what}, {side}: {event}");
                }
                // A stock server counts its relayed connections (a stock
                // client keeps no such count; a stock node counts its own
                // connection to the relay as an open one).
                Stack::Node | Stack::Swarm if side == "server" => {
                    assert_eq!(event["relaying"]["successes"], 1, "{what}, {side}: {event}");
                }
                Stack::Node | Stack::Swarm => {}
            }
        }
        eprintln!("{what}: connected in {} ms", client["ms"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_sync_across_consistent_nats() {
    databases_sync_across("db", Site::Consistent, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_databases_sync_across_random_nats_through_a_blind_relay() {
    databases_sync_across("dr", Site::Random, true).await;
}

/// Two `pluresdb sync --hyperswarm` processes behind two NATs of kind
/// `nat`, through `pluresdb blind-relay` if `relayed`: the second joins
/// the first's database and gets its record.
async fn databases_sync_across(tag: &str, nat: Site, relayed: bool) {
    let Some(world) = World::build(tag, &[nat, nat]) else {
        return;
    };
    let (_testnet, bootstrap) = start_testnet(&world).await;
    let relay = if relayed {
        Some(start_pluresdb_relay(&world, &bootstrap).await)
    } else {
        None
    };
    let relay_args: Vec<&str> = relay
        .iter()
        .flat_map(|(_, key)| ["--relay-through", key.as_str()])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let cli = |db: &Path, args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pluresdb"));
        command.arg("--db").arg(db).args(args);
        let output = command.output().expect("running pluresdb");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("UTF-8 output")
    };
    cli(&a, &["put", "note:1", r#"{"text":"across two NATs"}"#]);
    let invite = cli(&a, &["invite"]).trim().to_owned();
    let sync = |db: &Path, site: usize, extra: &[&str]| {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &world.site(site),
                env!("CARGO_BIN_EXE_pluresdb"),
            ])
            .arg("--db")
            .arg(db)
            .args([
                "sync",
                "--hyperswarm",
                "--bootstrap",
                &bootstrap,
                "--bind",
                "0.0.0.0:0",
            ])
            .args(&relay_args)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    };
    let mut serving = sync(&a, 0, &[]).spawn().unwrap();
    let started = Instant::now();
    let joined = tokio::time::timeout(
        Duration::from_secs(90),
        sync(&b, 1, &["--invite", &invite, "--once", "1"]).output(),
    )
    .await
    .expect("b's sync finishes within 90 s")
    .unwrap();
    assert!(joined.status.success(), "{joined:?}");
    eprintln!("synced across the NATs in {:?}", started.elapsed());
    let got: Value = serde_json::from_str(&cli(&b, &["get", "note:1"])).expect("JSON from get");
    assert_eq!(got["text"], "across two NATs");
    serving.kill().await.unwrap();
}

/// `npm run bench` (suite `nat`, `bench/suites/nat.mjs`) runs this: the
/// time from `connect` to a first echo through each NAT pairing, Rust↔Rust
/// and stock Node↔Node side by side in the same worlds, and the CPU an
/// idle server behind a NAT costs. Writes JSON to `PLURESDB_NAT_BENCH_OUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (npm run bench -- nat)"]
async fn bench_connect_times() {
    let samples: usize = std::env::var("PLURESDB_NAT_BENCH_SAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let idle_seconds: u64 = std::env::var("PLURESDB_NAT_BENCH_IDLE_SECONDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60);
    let out =
        std::env::var("PLURESDB_NAT_BENCH_OUT").expect("PLURESDB_NAT_BENCH_OUT names the output");
    let pairing = |name, sites, server_site, client_site, fresh, relayed| BenchPairing {
        name,
        sites,
        server_site,
        client_site,
        fresh,
        relayed,
    };
    let (consistent, random) = (Site::Consistent, Site::Random);
    let pairings = [
        pairing(
            "consistent ↔ consistent",
            [consistent, consistent],
            1,
            0,
            false,
            false,
        ),
        pairing(
            "consistent client → random server",
            [consistent, random],
            1,
            0,
            true,
            false,
        ),
        pairing(
            "random client → consistent server",
            [consistent, random],
            0,
            1,
            true,
            false,
        ),
        pairing(
            "random client → open server",
            [Site::Open, random],
            0,
            1,
            false,
            false,
        ),
        pairing(
            "random ↔ random, through a blind relay",
            [random, random],
            1,
            0,
            false,
            true,
        ),
    ];
    let mut results = Vec::new();
    let mut idle = json!(null);
    for (
        index,
        BenchPairing {
            name,
            sites,
            server_site,
            client_site,
            fresh,
            relayed,
        },
    ) in pairings.into_iter().enumerate()
    {
        let world = World::build(&format!("b{index}"), &sites).expect("network namespaces");
        let (_testnet, bootstrap) = start_testnet(&world).await;
        let mut by_stack = serde_json::Map::new();
        for (stack_index, stack) in [Stack::Rust, Stack::Node].into_iter().enumerate() {
            let seed = 0x60 + (index * 2 + stack_index) as u8;
            let seed_hex = hex(&[seed; 32]);
            let public_key = hex(&KeyPair::from_seed([seed; 32]).public_key());
            let (mut times, mut failures) = (Vec::new(), Vec::new());
            let relay = match (relayed, stack) {
                (false, _) => None,
                (true, Stack::Rust) => Some(start_pluresdb_relay(&world, &bootstrap).await),
                (true, Stack::Node | Stack::Swarm) => {
                    let public = format!("{}-pub", world.prefix);
                    let seed = hex(&[0x52; 32]);
                    let mut relay = start_peer(&public, stack, &bootstrap, &["relay", &seed], None);
                    let key = relay.expect("relaying", Duration::from_secs(60)).await["publicKey"]
                        .as_str()
                        .expect("the relay's key")
                        .to_owned();
                    Some((relay, key))
                }
            };
            let relay_key = relay.as_ref().map(|(_, key)| key.as_str());
            let rounds = if fresh { samples } else { 1 };
            let per_round = if fresh { 1 } else { samples };
            let mut server = None;
            for _ in 0..rounds {
                if fresh || server.is_none() {
                    let mut started = start_peer(
                        &world.site(server_site),
                        stack,
                        &bootstrap,
                        &["listen", &seed_hex],
                        relay_key,
                    );
                    started.expect("listening", Duration::from_secs(60)).await;
                    server = Some(started);
                }
                let count = per_round.to_string();
                let mut client = start_peer(
                    &world.site(client_site),
                    stack,
                    &bootstrap,
                    &["connect", &public_key, &count],
                    None,
                );
                for _ in 0..per_round {
                    let event = client.next(CONNECT_WAIT + Duration::from_secs(30)).await;
                    match event["ms"].as_u64() {
                        Some(ms) if event["event"] == "data" => times.push(ms),
                        _ => failures.push(event),
                    }
                }
            }
            eprintln!("{name}, {stack:?}: {times:?} ms, {} failed", failures.len());
            if index == 0 {
                // The last server sits idle behind its NAT: its CPU time.
                let server = server.as_ref().expect("a server");
                let pid = server.child.id().expect("a running server");
                let before = cpu_seconds(pid);
                tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
                let used = cpu_seconds(pid) - before;
                let percent = used / idle_seconds as f64 * 100.0;
                if idle.is_null() {
                    idle = json!({ "seconds": idle_seconds });
                }
                idle[format!("{stack:?}").to_lowercase()] = json!(percent);
                eprintln!("{stack:?} server idle behind a NAT: {percent:.3} % of a core");
            }
            by_stack.insert(
                format!("{stack:?}").to_lowercase(),
                json!({ "ms": times, "failures": failures }),
            );
        }
        results.push(json!({ "pairing": name, "samples": samples, "results": by_stack }));
    }
    let report = json!({ "pairings": results, "idleServer": idle });
    std::fs::write(&out, report.to_string()).expect("writing the results");
}

/// One row of `bench_connect_times`.
struct BenchPairing {
    name: &'static str,
    /// The two sites of the world.
    sites: [Site; 2],
    server_site: usize,
    client_site: usize,
    /// A fresh server and client per sample (stock hyperdht allows one
    /// random punch per node every 20 s).
    fresh: bool,
    /// The server names a blind relay: `pluresdb blind-relay` for Rust,
    /// npm `blind-relay` on a stock node for Node.
    relayed: bool,
}

/// utime + stime of `pid` in seconds (Linux `/proc`).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a comm field") + 2..]
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// The Rust peer, run by the tests above inside a namespace (see
/// `start_peer`): `PLURESDB_NAT_PEER` is `listen <seed>` or
/// `connect <public key>`, `PLURESDB_NAT_BOOTSTRAP` the DHT's addresses,
/// `PLURESDB_NAT_RELAY` the blind relay it names (public key, hex; empty
/// for none).
/// Prints `@peer `-prefixed JSON events like `hyperdht-peer.mjs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of the NAT tests, run by them inside a network namespace"]
async fn nat_peer() {
    let role = std::env::var("PLURESDB_NAT_PEER").expect("PLURESDB_NAT_PEER names the role");
    let bootstrap: Vec<SocketAddrV4> = std::env::var("PLURESDB_NAT_BOOTSTRAP")
        .expect("PLURESDB_NAT_BOOTSTRAP lists the DHT")
        .split(',')
        .map(|address| address.parse().expect("a bootstrap address"))
        .collect();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let emit = |value: Value| println!("@peer {value}");
    let key = |text: &str| -> [u8; 32] {
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect();
        bytes.try_into().expect("32 bytes")
    };
    let mut dht = HyperDht::bind("0.0.0.0:0".parse().unwrap(), bootstrap)
        .await
        .expect("binding the DHT node");
    // PLURESDB_NAT_RELAY: the blind relay this peer names, if any.
    if let Some(relay) = std::env::var("PLURESDB_NAT_RELAY")
        .ok()
        .filter(|relay| !relay.is_empty())
    {
        dht = dht.with_relay_through(key(&relay));
    }
    let punches = |dht: &HyperDht| {
        let stats = dht.stats();
        json!({
            "open": stats.open.load(Ordering::Relaxed),
            "consistent": stats.consistent.load(Ordering::Relaxed),
            "random": stats.random.load(Ordering::Relaxed),
            "relayed": stats.relayed.load(Ordering::Relaxed),
        })
    };
    let parts: Vec<&str> = role.split_whitespace().collect();
    match parts.as_slice() {
        ["listen", seed] => {
            // A testnet that just started may not answer with node ids
            // yet (its nodes learn their address from each other): retry.
            let mut attempts = 0;
            let mut connections = loop {
                match dht.listen(KeyPair::from_seed(key(seed))).await {
                    Ok(connections) => break connections,
                    Err(error) if attempts < 20 => {
                        attempts += 1;
                        eprintln!("listening failed ({error}); retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => panic!("listening: {error}"),
                }
            };
            emit(
                json!({ "event": "listening", "reachability": format!("{:?}", dht.reachability().await) }),
            );
            while let Some(mut connection) = connections.recv().await {
                emit(json!({ "event": "connection", "punches": punches(&dht) }));
                tokio::spawn(async move {
                    while let Ok(Some(message)) = connection.recv().await {
                        let echo = [b"echo:".as_slice(), &message].concat();
                        if connection.send(&echo).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        ["connect", public_key, rest @ ..] => {
            // `connect <key> [count]`: that many connections one after the
            // other, each timed from `connect` to the echo of a first
            // message (after the reachability check, as the stock peer
            // starts its clock after bootstrapping).
            let count: usize = rest.first().map_or(1, |n| n.parse().expect("a count"));
            dht.reachability().await;
            for _ in 0..count {
                let started = Instant::now();
                let connected = tokio::time::timeout(
                    CONNECT_WAIT,
                    dht.connect(&KeyPair::generate(), key(public_key)),
                )
                .await;
                match connected {
                    Ok(Ok(mut connection)) => {
                        connection.send(b"hello").await.expect("sending");
                        let reply =
                            tokio::time::timeout(Duration::from_secs(30), connection.recv())
                                .await
                                .expect("a reply within 30 s")
                                .expect("reading the reply")
                                .expect("a reply");
                        emit(json!({
                            "event": "data",
                            "text": String::from_utf8_lossy(&reply),
                            "ms": started.elapsed().as_millis() as u64,
                            "punches": punches(&dht),
                        }));
                    }
                    Ok(Err(error)) => emit(json!({
                        "event": "error",
                        "message": error.to_string(),
                        "doubleRandom": matches!(error, DhtError::DoubleRandomNat),
                    })),
                    Err(_) => emit(json!({ "event": "error", "message": "timed out" })),
                }
            }
        }
        _ => panic!("unknown role {role}"),
    }
}
