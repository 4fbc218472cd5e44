//! The probing half of HyperDHT holepunching (`lib/holepuncher.js`): a
//! fresh socket per connection attempt, its NAT classified from DHT
//! pings, and the probes that open both NATs towards each other.
//!
//! - **Consistent ↔ consistent.** Both sides send probes to the addresses
//!   the other reported, once a second, ten times (the server waits a
//!   second first: the client's first probes already went out).
//! - **Consistent ↔ random.** The consistent side sends a probe every
//!   20 ms to a random port of the random side's verified host (about
//!   35 s at most); the random side opens up to 256 sockets, each sending
//!   a probe to the consistent side's verified address, and keeps them
//!   alive. A birthday collision gets a probe through.
//! - **Connected.** The first probe that arrives wins: the initiator
//!   (client) opens its UDX stream on that socket to the probe's sender;
//!   the other side answers every probe with one and opens its stream
//!   there too. Both already know each other's stream ids from the
//!   handshake.
//!
//! Every punch is bounded in time and in sockets; dropping the
//! [`Puncher`] stops its probing and closes its sockets.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::dht_rpc::{DhtError, DhtNode, PING};
use super::holepunch::{Firewall, NatSampler};
use super::udx::{UdxSocket, UdxStream};

/// Sockets the random side of a consistent ↔ random punch opens.
pub const BIRTHDAY_SOCKETS: usize = 256;
/// Probes per address in a consistent punch, one a second.
const CONSISTENT_TRIES: u32 = 10;
/// Probes to random ports (one per 20 ms, about 35 s).
const RANDOM_TRIES: u32 = 1750;
const RANDOM_INTERVAL: Duration = Duration::from_millis(20);
/// DHT nodes pinged per sampling round.
const SAMPLE_PINGS: usize = 4;

/// Punches with a random NAT a node runs at once: each opens up to 256
/// sockets or sends up to 1,750 probes, so a peer that asks for many must
/// wait (stock hyperdht allows one).
pub const MAX_RANDOM_PUNCHES: usize = 2;

/// The count of random-NAT punches running on one node, shared by its
/// punchers.
#[derive(Debug, Clone, Default)]
pub struct RandomPunches(Arc<AtomicUsize>);

impl RandomPunches {
    fn try_acquire(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < MAX_RANDOM_PUNCHES).then_some(running + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a call to [`Puncher::punch`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunchStart {
    /// Probing runs.
    Started,
    /// These NATs cannot be punched (both random, or no verified address).
    NotPunchable,
    /// Too many random-NAT punches run on this node; try later.
    Busy,
}

/// An address the remote side reported, and whether its host was
/// verified by an echoed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddress {
    /// Where to probe.
    pub address: SocketAddrV4,
    /// The remote proved it receives at this host.
    pub verified: bool,
}

/// What the remote side told us in its last round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteState {
    /// Its NAT.
    pub firewall: Firewall,
    /// Where it can be probed.
    pub addresses: Vec<RemoteAddress>,
    /// It is punching (or ready to).
    pub punching: bool,
}

impl Default for RemoteState {
    fn default() -> Self {
        Self {
            firewall: Firewall::Unknown,
            addresses: Vec::new(),
            punching: false,
        }
    }
}

/// A probe (or a UDX packet for a stream not opened yet) arrived: on which
/// of the puncher's sockets, from where, and the UDX packet if it was one.
type Arrival = (usize, SocketAddrV4, Option<Vec<u8>>);

/// One connection attempt's sockets, NAT view and probing.
pub struct Puncher {
    node: Arc<DhtNode>,
    /// The primary socket first, then birthday sockets.
    sockets: Arc<Mutex<Vec<UdxSocket>>>,
    nat: Mutex<NatSampler>,
    remote: Mutex<RemoteState>,
    arrivals: tokio::sync::Mutex<mpsc::Receiver<Arrival>>,
    arrival_sender: mpsc::Sender<Arrival>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    punching: Mutex<Option<PunchStart>>,
    /// The probing task, stopped once connected.
    probing: Mutex<Option<JoinHandle<()>>>,
    connected: AtomicBool,
    analyzed: tokio::sync::OnceCell<()>,
    random_punches: RandomPunches,
    /// This puncher holds one of `random_punches`.
    holds_random: AtomicBool,
}

impl std::fmt::Debug for Puncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puncher")
            .field("local_addr", &self.node.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Drop for Puncher {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for task in tasks.iter() {
                task.abort();
            }
        }
        self.stop_probing();
        self.release_random();
    }
}

impl Puncher {
    /// Binds a fresh socket on `host` for one connection attempt; `open`
    /// when this node is reachable unsolicited.
    pub async fn bind(
        host: Ipv4Addr,
        open: bool,
        random_punches: RandomPunches,
    ) -> Result<Self, DhtError> {
        let node = Arc::new(DhtNode::bind(SocketAddrV4::new(host, 0)).await?);
        let (arrival_sender, arrivals) = mpsc::channel(64);
        let mut probes = node.holepunch_probes();
        let forward = arrival_sender.clone();
        let task = tokio::spawn(async move {
            while let Some((from, packet)) = probes.recv().await {
                if forward.send((0, from, packet)).await.is_err() {
                    break;
                }
            }
        });
        let primary = node.udx().clone();
        Ok(Self {
            node,
            sockets: Arc::new(Mutex::new(vec![primary])),
            nat: Mutex::new(NatSampler::new(open)),
            remote: Mutex::new(RemoteState::default()),
            arrivals: tokio::sync::Mutex::new(arrivals),
            arrival_sender,
            tasks: Mutex::new(vec![task]),
            punching: Mutex::new(None),
            probing: Mutex::new(None),
            connected: AtomicBool::new(false),
            analyzed: tokio::sync::OnceCell::new(),
            random_punches,
            holds_random: AtomicBool::new(false),
        })
    }

    /// The primary socket's `dht-rpc` node (holepunch rounds go through it).
    pub fn node(&self) -> &Arc<DhtNode> {
        &self.node
    }

    /// This socket's NAT as classified so far.
    pub fn firewall(&self) -> Firewall {
        self.nat
            .lock()
            .map(|nat| nat.firewall())
            .unwrap_or(Firewall::Unknown)
    }

    /// Where this socket can be probed, as classified so far.
    pub fn addresses(&self) -> Option<Vec<SocketAddrV4>> {
        self.nat.lock().ok().and_then(|nat| nat.addresses())
    }

    /// Records that `from` saw this socket at `to`.
    pub fn add_sample(&self, to: SocketAddrV4, from: SocketAddrV4) {
        if let Ok(mut nat) = self.nat.lock() {
            nat.add(to, from);
        }
    }

    /// Stops reclassifying this socket (the result went to the peer).
    pub fn freeze(&self) {
        if let Ok(mut nat) = self.nat.lock() {
            nat.freeze();
        }
    }

    /// What the remote side said last.
    pub fn remote(&self) -> RemoteState {
        self.remote
            .lock()
            .map(|remote| remote.clone())
            .unwrap_or_default()
    }

    /// Takes the remote side's latest round; `verified_host` is the host
    /// whose token the remote echoed (addresses on it are verified, as
    /// are hosts verified before).
    pub fn update_remote(
        &self,
        firewall: Firewall,
        addresses: Option<&[SocketAddrV4]>,
        punching: bool,
        verified_host: Option<Ipv4Addr>,
    ) {
        let Ok(mut remote) = self.remote.lock() else {
            return;
        };
        let previously_verified: Vec<Ipv4Addr> = remote
            .addresses
            .iter()
            .filter(|known| known.verified)
            .map(|known| *known.address.ip())
            .collect();
        remote.firewall = firewall;
        remote.punching = punching;
        remote.addresses = addresses
            .unwrap_or_default()
            .iter()
            .map(|address| RemoteAddress {
                address: *address,
                verified: Some(*address.ip()) == verified_host
                    || previously_verified.contains(address.ip()),
            })
            .collect();
    }

    /// Waits until this socket's NAT is classified (sampling once, however
    /// many callers wait).
    pub async fn analyze(&self, candidates: &[SocketAddrV4]) {
        self.analyzed.get_or_init(|| self.sample(candidates)).await;
    }

    /// Whether punching started.
    pub fn is_punching(&self) -> bool {
        self.punching
            .lock()
            .map(|punching| *punching == Some(PunchStart::Started))
            .unwrap_or(false)
    }

    /// Pings DHT nodes from this socket until its NAT is classified (or
    /// the candidates run out): what [`analyze`](Self::analyze) waits for.
    async fn sample(&self, candidates: &[SocketAddrV4]) {
        use futures::stream::{FuturesUnordered, StreamExt as _};
        let mut next = 0;
        for _round in 0..2 {
            let wanted = super::holepunch::MIN_SAMPLES.saturating_sub(self.sampled());
            if self.settled() || wanted == 0 {
                return;
            }
            let batch: Vec<SocketAddrV4> = candidates
                .iter()
                .skip(next)
                .take(wanted.min(SAMPLE_PINGS))
                .copied()
                .collect();
            if batch.is_empty() {
                return;
            }
            next += batch.len();
            // One try each, as hyperdht samples, and done as soon as the
            // NAT is classified: a slow node is not waited for.
            let mut pings: FuturesUnordered<_> = batch
                .iter()
                .map(|&node| async move {
                    let reply = self
                        .node
                        .request_with_attempts(node, true, PING, None, None, None, 1)
                        .await;
                    (node, reply)
                })
                .collect();
            while let Some((node, reply)) = pings.next().await {
                if let Ok(reply) = reply {
                    self.add_sample(reply.to, node);
                }
                if self.settled() {
                    return;
                }
            }
        }
    }

    fn sampled(&self) -> usize {
        self.nat.lock().map(|nat| nat.sampled()).unwrap_or(0)
    }

    fn settled(&self) -> bool {
        self.nat.lock().map(|nat| nat.settled()).unwrap_or(true)
    }

    /// A probe from the primary socket (`low_ttl`: only open our mapping).
    pub async fn probe(&self, to: SocketAddrV4, low_ttl: bool) {
        let _ = self
            .node
            .udx()
            .send_probe(SocketAddr::V4(to), low_ttl)
            .await;
    }

    /// Starts punching towards the remote in the background, by both
    /// sides' NATs (see [`PunchStart`]). Starts once; later calls say how
    /// the first went.
    pub async fn punch(self: &Arc<Self>, initiator: bool) -> PunchStart {
        if let Ok(started) = self.punching.lock() {
            if let Some(started) = *started {
                return started;
            }
        }
        let started = self.start_punch(initiator).await;
        if let Ok(mut punching) = self.punching.lock() {
            *punching = Some(started);
        }
        started
    }

    async fn start_punch(self: &Arc<Self>, initiator: bool) -> PunchStart {
        let remote = self.remote();
        if remote.addresses.is_empty() {
            return PunchStart::NotPunchable;
        }
        let local = self.firewall().coerced();
        let random = (local >= Firewall::Random) != (remote.firewall.coerced() >= Firewall::Random);
        if random {
            if !self.random_punches.try_acquire() {
                return PunchStart::Busy;
            }
            self.holds_random.store(true, Ordering::Release);
        }
        let started = self.start_probing(initiator, remote).await;
        if !started {
            self.release_random();
            return PunchStart::NotPunchable;
        }
        PunchStart::Started
    }

    /// Gives back this puncher's random-punch slot, if it holds one.
    fn release_random(&self) {
        if self.holds_random.swap(false, Ordering::AcqRel) {
            self.random_punches.release();
        }
    }

    async fn start_probing(self: &Arc<Self>, initiator: bool, remote: RemoteState) -> bool {
        let local = self.firewall().coerced();
        let remote_firewall = remote.firewall.coerced();
        let verified = remote
            .addresses
            .iter()
            .find(|address| address.verified)
            .copied();
        let puncher = Arc::downgrade(self);
        let task = match (local, remote_firewall) {
            (Firewall::Consistent, Firewall::Consistent) => tokio::spawn(async move {
                if !initiator {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                for tick in 0..CONSISTENT_TRIES {
                    let Some(puncher) = puncher.upgrade() else {
                        return;
                    };
                    for address in &remote.addresses {
                        // Unverified addresses only every fourth tick.
                        if address.verified || tick % 4 == 0 {
                            puncher.probe(address.address, false).await;
                        }
                    }
                    drop(puncher);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }),
            (Firewall::Consistent, Firewall::Random) => {
                let Some(target) = verified else { return false };
                tokio::spawn(async move {
                    for _ in 0..RANDOM_TRIES {
                        let Some(puncher) = puncher.upgrade() else {
                            return;
                        };
                        let port =
                            1000 + (u16::from_le_bytes(super::holepunch::random_bytes()) % 64_536);
                        puncher
                            .probe(SocketAddrV4::new(*target.address.ip(), port), false)
                            .await;
                        drop(puncher);
                        tokio::time::sleep(RANDOM_INTERVAL).await;
                    }
                })
            }
            (Firewall::Random, Firewall::Consistent) => {
                let Some(target) = verified else { return false };
                if self.open_birthday_sockets(target.address).await.is_err() {
                    return false;
                }
                let sockets = self.sockets.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let count = sockets.lock().map(|sockets| sockets.len()).unwrap_or(0);
                    for round in 0..RANDOM_TRIES as usize {
                        if puncher.strong_count() == 0 {
                            return;
                        }
                        let socket = sockets
                            .lock()
                            .ok()
                            .and_then(|sockets| sockets.get(round % count.max(1)).cloned());
                        if let Some(socket) = socket {
                            let low_ttl = round < count;
                            let _ = socket
                                .send_probe(SocketAddr::V4(target.address), low_ttl)
                                .await;
                        }
                        tokio::time::sleep(RANDOM_INTERVAL).await;
                    }
                })
            }
            _ => return false,
        };
        if let Ok(mut probing) = self.probing.lock() {
            *probing = Some(task);
        }
        true
    }

    /// Stops sending probes (the connection is made).
    fn stop_probing(&self) {
        if let Ok(mut probing) = self.probing.lock() {
            if let Some(task) = probing.take() {
                task.abort();
            }
        }
    }

    /// Whether a probe got through and the stream is open.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Opens the birthday sockets, each sending a low-TTL probe to
    /// `target` so its NAT mapping exists.
    async fn open_birthday_sockets(&self, target: SocketAddrV4) -> std::io::Result<()> {
        let host = match self.node.local_addr()? {
            SocketAddr::V4(address) => *address.ip(),
            SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        loop {
            let index = self
                .sockets
                .lock()
                .map(|sockets| sockets.len())
                .unwrap_or(usize::MAX);
            if index >= BIRTHDAY_SOCKETS {
                return Ok(());
            }
            let (socket, mut others) =
                UdxSocket::bind_shared(SocketAddr::V4(SocketAddrV4::new(host, 0))).await?;
            let forward = self.arrival_sender.clone();
            let task = tokio::spawn(async move {
                while let Some((datagram, from)) = others.recv().await {
                    let probe = datagram == [super::udx::HOLEPUNCH_PROBE];
                    if !probe && super::udx::stream_id_of(&datagram).is_none() {
                        continue;
                    }
                    let SocketAddr::V4(from) = from else { continue };
                    let packet = (!probe).then_some(datagram);
                    if forward.send((index, from, packet)).await.is_err() {
                        break;
                    }
                }
            });
            socket.send_probe(SocketAddr::V4(target), true).await?;
            if let Ok(mut sockets) = self.sockets.lock() {
                sockets.push(socket);
            }
            if let Ok(mut tasks) = self.tasks.lock() {
                tasks.push(task);
            }
        }
    }

    /// Waits for the first probe (or the peer's first UDX packet for our
    /// stream) to arrive and opens the UDX stream on that socket to its
    /// sender. The non-initiator answers the probes it sees with one, so
    /// the initiator hears back. Gives up after `timeout`.
    pub async fn connect_on_first_probe(
        &self,
        initiator: bool,
        local_stream: u32,
        remote_stream: u32,
        timeout: Duration,
    ) -> Result<UdxStream, DhtError> {
        let mut arrivals = self.arrivals.lock().await;
        let deadline = tokio::time::Instant::now() + timeout;
        let (index, from, packet) = loop {
            let arrival = tokio::time::timeout_at(deadline, arrivals.recv())
                .await
                .map_err(|_| DhtError::Connect("no holepunch probe arrived in time".into()))?
                .ok_or_else(|| DhtError::Connect("the puncher closed".into()))?;
            match &arrival.2 {
                Some(packet) if super::udx::stream_id_of(packet) != Some(local_stream) => {}
                _ => break arrival,
            }
        };
        tracing::debug!(socket = index, %from, initiator, udx = packet.is_some(), "holepunch: the peer got through");
        let socket = self
            .sockets
            .lock()
            .ok()
            .and_then(|sockets| sockets.get(index).cloned())
            .ok_or_else(|| DhtError::Connect("the punched socket is gone".into()))?;
        if !initiator && packet.is_none() {
            let _ = socket.send_probe(SocketAddr::V4(from), false).await;
        }
        // Keep the winning socket; the others close with the puncher.
        let stream = socket
            .connect(local_stream, remote_stream, SocketAddr::V4(from))
            .map_err(|error| DhtError::Io(error.to_string()))?;
        if let Some(packet) = packet {
            socket.deliver(local_stream, packet, SocketAddr::V4(from));
        }
        self.connected.store(true, Ordering::Relaxed);
        self.stop_probing();
        self.release_random();
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_punches_are_capped_per_node_and_given_back() {
        let gate = RandomPunches::default();
        let other_node = RandomPunches::default();
        for _ in 0..MAX_RANDOM_PUNCHES {
            assert!(gate.try_acquire());
        }
        assert!(!gate.try_acquire(), "a third random punch must wait");
        assert!(other_node.try_acquire(), "the cap is per node");
        gate.release();
        assert!(gate.try_acquire());
    }

    #[tokio::test]
    async fn a_puncher_gives_its_random_slot_back_when_dropped() {
        let gate = RandomPunches::default();
        let puncher = Arc::new(
            Puncher::bind(Ipv4Addr::LOCALHOST, false, gate.clone())
                .await
                .unwrap(),
        );
        // A consistent local NAT and a random remote with a verified host.
        for port in 1..=3 {
            puncher.add_sample(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9),
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, port), 1),
            );
        }
        let remote = [SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)];
        puncher.update_remote(
            Firewall::Random,
            Some(&remote),
            true,
            Some(Ipv4Addr::LOCALHOST),
        );
        assert_eq!(puncher.punch(true).await, PunchStart::Started);
        assert!(gate.try_acquire(), "one slot is left");
        assert!(!gate.try_acquire(), "the puncher holds the other");
        drop(puncher);
        assert!(
            gate.try_acquire(),
            "dropping the puncher gave its slot back"
        );
    }
}
