//! UDX: reliable, ordered byte streams over UDP, wire-compatible with
//! `libudx` (the C library behind npm `udx-native`).
//!
//! Every packet starts with a 20-byte header: magic `0xFF`, version `1`, a
//! type bit set ([`DATA`], [`END`], [`SACK`], [`MESSAGE`], [`DESTROY`],
//! [`HEARTBEAT`]), a data offset (bytes to skip before the payload; MTU
//! probes pad with it), then four little-endian `u32`s: the receiver's
//! stream id, the sender's receive window in bytes, the sequence number and
//! the cumulative ack (next sequence expected). Each DATA or END packet
//! takes one sequence number. An ACK is a header without DATA; with
//! [`SACK`] it is followed by `[start, end)` pairs of sequence numbers
//! received out of order.
//!
//! A [`UdxSocket`] owns one UDP socket and routes datagrams to its streams
//! by id. A [`UdxStream`] is a `tokio` `AsyncRead + AsyncWrite` (so a
//! [`super::SecretStream`] runs over it as over TCP), driven by a task
//! that:
//! - cuts writes into packets of at most [`MAX_PAYLOAD`] bytes, keeps them
//!   until acked, and sends within the peer's window and a congestion
//!   window (slow start, halving on loss);
//! - retransmits a packet when three later ones were selectively acked, or
//!   when the retransmission timer (RFC 6298 estimate, 200 ms to 30 s,
//!   doubling) fires; after [`MAX_RETRANSMITS`] timeouts in a row it gives
//!   up and the stream fails;
//! - reorders what arrives, acks every DATA/END packet with SACK blocks,
//!   and answers heartbeats;
//! - ends with END both ways (a clean EOF), or at once on DESTROY.
//!
//! A stream answers whichever address its peer's first packet came from
//! (a HyperDHT client may send from another socket than the one it was
//! introduced by); after that, packets from elsewhere are ignored. The
//! secret-stream on top is what authenticates the peer. A socket can be
//! shared with another protocol ([`UdxSocket::bind_shared`]): datagrams
//! not starting with the magic byte go to it.
//!
//! Nothing runs while a stream is idle: no timers are armed when nothing is
//! in flight. Malformed datagrams, and UDX datagrams over
//! [`MAX_DATAGRAM`] bytes, are dropped ([`decode`] never panics).
//! Sequence numbers start at 0 and are compared with wrapping arithmetic;
//! the reorder and in-flight maps assume a stream sends fewer than 2³¹
//! packets (about 2 TiB).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// First byte of every UDX packet.
pub const MAGIC: u8 = 0xFF;
/// The protocol version this speaks.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 20;
/// HyperDHT's holepunch probe: a datagram of this one byte.
pub const HOLEPUNCH_PROBE: u8 = 0;
/// The TTL of a probe that should only open this side's NAT.
const PROBE_LOW_TTL: u32 = 5;
/// The TTL of everything else.
const DEFAULT_TTL: u32 = 64;
/// Carries stream data.
pub const DATA: u8 = 0b000001;
/// The sender's last packet.
pub const END: u8 = 0b000010;
/// SACK blocks follow the header.
pub const SACK: u8 = 0b000100;
/// An unordered datagram on the stream (not used by this implementation).
pub const MESSAGE: u8 = 0b001000;
/// The sender tore the stream down.
pub const DESTROY: u8 = 0b010000;
/// A keep-alive probe; answered with an ACK.
pub const HEARTBEAT: u8 = 0b100000;
/// The largest UDX datagram accepted (libudx's receive buffer): with at
/// most 1,024 queued per stream, a stream's queue holds 2 MiB at most.
pub const MAX_DATAGRAM: usize = 2048;
/// Payload bytes per packet: fits libudx's base MTU of 1200 over IPv6.
pub const MAX_PAYLOAD: usize = 1200 - 40 - 8 - HEADER_LEN;
/// Timeouts in a row after which a stream is declared dead.
pub const MAX_RETRANSMITS: u32 = 8;
/// The receive window advertised when nothing is buffered (as libudx).
pub const RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;
const MAX_SACK_BLOCKS: usize = 50;
/// How long a cleanly ended stream keeps acking the peer's retransmissions.
const LINGER_MAX: Duration = Duration::from_secs(3);
const MIN_RTO: Duration = Duration::from_millis(200);
const MAX_RTO: Duration = Duration::from_secs(30);
const INITIAL_RTO: Duration = Duration::from_secs(1);
const INITIAL_CWND: usize = 10;
const MAX_CWND: usize = 2048;
/// How far ahead of the cumulative ack out-of-order packets are kept.
const REORDER_LIMIT: u32 = 8192;

/// Why a datagram is not a UDX packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UdxError {
    /// Shorter than a header.
    #[error("datagram of {0} bytes is shorter than a UDX header")]
    Short(usize),
    /// Wrong magic byte or version.
    #[error("not a UDX version 1 packet")]
    NotUdx,
    /// The data offset points past the end.
    #[error("UDX data offset {offset} exceeds the {available} bytes after the header")]
    BadOffset {
        /// The declared offset.
        offset: u8,
        /// Bytes after the header.
        available: usize,
    },
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Type bits.
    pub kind: u8,
    /// The receiving stream's id.
    pub stream_id: u32,
    /// The sender's receive window in bytes.
    pub window: u32,
    /// Sequence number.
    pub seq: u32,
    /// Cumulative ack: the next sequence the sender expects.
    pub ack: u32,
    /// Selectively acked `[start, end)` ranges.
    pub sacks: Vec<(u32, u32)>,
    /// The payload (after the data offset).
    pub payload: &'a [u8],
}

/// Decodes a datagram, as libudx's `process_packet` reads it.
pub fn decode(datagram: &[u8]) -> Result<Packet<'_>, UdxError> {
    if datagram.len() < HEADER_LEN {
        return Err(UdxError::Short(datagram.len()));
    }
    if datagram[0] != MAGIC || datagram[1] != VERSION {
        return Err(UdxError::NotUdx);
    }
    let kind = datagram[2];
    let data_offset = datagram[3];
    let word = |at: usize| {
        u32::from_le_bytes([
            datagram[at],
            datagram[at + 1],
            datagram[at + 2],
            datagram[at + 3],
        ])
    };
    let rest = &datagram[HEADER_LEN..];
    let mut sacks = Vec::new();
    if kind & SACK != 0 {
        let offset = usize::from(data_offset);
        let sack_bytes = if offset > 0 && offset < rest.len() {
            offset
        } else {
            rest.len()
        };
        for pair in rest[..sack_bytes].chunks_exact(8).take(MAX_SACK_BLOCKS * 4) {
            let start = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]);
            let end = u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]);
            sacks.push((start, end));
        }
    }
    let payload = rest
        .get(usize::from(data_offset)..)
        .ok_or(UdxError::BadOffset {
            offset: data_offset,
            available: rest.len(),
        })?;
    Ok(Packet {
        kind,
        stream_id: word(4),
        window: word(8),
        seq: word(12),
        ack: word(16),
        sacks,
        payload,
    })
}

/// Encodes a packet (data offset 0).
pub fn encode(
    kind: u8,
    stream_id: u32,
    window: u32,
    seq: u32,
    ack: u32,
    sacks: &[(u32, u32)],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + sacks.len() * 8 + payload.len());
    out.extend_from_slice(&[MAGIC, VERSION, kind, 0]);
    for word in [stream_id, window, seq, ack] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (start, end) in sacks {
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&end.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// `a - b` in sequence space.
fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// A datagram and where it came from.
pub type Datagram = (Vec<u8>, SocketAddr);
type Routes = Arc<Mutex<HashMap<u32, mpsc::Sender<Datagram>>>>;

/// A UDP socket carrying UDX streams.
#[derive(Clone)]
pub struct UdxSocket {
    udp: Arc<UdpSocket>,
    routes: Routes,
    receiver: Arc<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for UdxSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdxSocket")
            .field("local_addr", &self.udp.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Drop for UdxSocket {
    fn drop(&mut self) {
        // The last handle stops the receive loop.
        if Arc::strong_count(&self.receiver) == 1 {
            self.receiver.abort();
        }
    }
}

impl UdxSocket {
    /// Binds a UDP socket (use port 0 for any free port).
    pub async fn bind(address: SocketAddr) -> io::Result<Self> {
        Self::bind_with(address, None).await
    }

    /// Binds a socket that UDX shares with another protocol, as HyperDHT
    /// shares one socket between its streams and `dht-rpc`: datagrams that
    /// do not start with the UDX magic byte go to the returned receiver.
    pub async fn bind_shared(address: SocketAddr) -> io::Result<(Self, mpsc::Receiver<Datagram>)> {
        let (sender, receiver) = mpsc::channel(1024);
        Ok((Self::bind_with(address, Some(sender)).await?, receiver))
    }

    async fn bind_with(
        address: SocketAddr,
        others: Option<mpsc::Sender<Datagram>>,
    ) -> io::Result<Self> {
        let udp = Arc::new(UdpSocket::bind(address).await?);
        let routes: Routes = Arc::default();
        let receiver = tokio::spawn(receive_loop(udp.clone(), routes.clone(), others));
        Ok(Self {
            udp,
            routes,
            receiver: Arc::new(receiver),
        })
    }

    /// Sends a raw datagram from this socket (for the protocol sharing it).
    pub async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.udp.send_to(datagram, to).await
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Sends HyperDHT's one-byte holepunch probe (`[0]`) to `to`. A
    /// `low_ttl` probe (TTL 5) opens this side's NAT mapping towards `to`
    /// but dies before it reaches a NAT far away, which could otherwise
    /// answer it with a mapping of its own.
    pub async fn send_probe(&self, to: SocketAddr, low_ttl: bool) -> io::Result<()> {
        if low_ttl {
            self.udp.set_ttl(PROBE_LOW_TTL)?;
        }
        let sent = self.udp.send_to(&[HOLEPUNCH_PROBE], to).await;
        if low_ttl {
            self.udp.set_ttl(DEFAULT_TTL)?;
        }
        sent.map(drop)
    }

    /// Hands `datagram` from `from` to stream `local_id` as if it had just
    /// arrived (the packet that made a holepunch open the stream).
    pub fn deliver(&self, local_id: u32, datagram: Vec<u8>, from: SocketAddr) {
        let route = self
            .routes
            .lock()
            .ok()
            .and_then(|routes| routes.get(&local_id).cloned());
        if let Some(route) = route {
            let _ = route.try_send((datagram, from));
        }
    }

    /// Opens a stream with id `local_id` to stream `remote_id` at `remote`.
    /// Both sides must know each other's ids (HyperDHT exchanges them in
    /// its handshake). Fails if `local_id` is already in use here.
    pub fn connect(
        &self,
        local_id: u32,
        remote_id: u32,
        remote: SocketAddr,
    ) -> io::Result<UdxStream> {
        self.connect_guarded(local_id, remote_id, remote, None)
    }

    /// As [`connect`](Self::connect), keeping `guard` alive for as long as
    /// the stream's task runs (after the user dropped the stream, until
    /// what was written is delivered): a stream through a blind relay
    /// keeps its connection to the relay that way.
    pub fn connect_guarded(
        &self,
        local_id: u32,
        remote_id: u32,
        remote: SocketAddr,
        guard: Option<StreamGuard>,
    ) -> io::Result<UdxStream> {
        let (sender, incoming) = mpsc::channel(1024);
        self.add_route(local_id, sender)?;
        let (user, driver_side) = tokio::io::duplex(256 * 1024);
        let failure = Failure::default();
        let mut driver = Driver::new(
            self.clone(),
            local_id,
            remote_id,
            remote,
            incoming,
            driver_side,
            failure.clone(),
        );
        driver.guard = guard;
        tokio::spawn(driver.run());
        Ok(UdxStream { io: user, failure })
    }

    fn add_route(&self, local_id: u32, sender: mpsc::Sender<Datagram>) -> io::Result<()> {
        let mut routes = self
            .routes
            .lock()
            .map_err(|_| io::Error::other("UDX routing table poisoned"))?;
        if routes.contains_key(&local_id) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("UDX stream id {local_id} is in use on this socket"),
            ));
        }
        routes.insert(local_id, sender);
        Ok(())
    }

    fn remove_route(&self, local_id: u32) {
        if let Ok(mut routes) = self.routes.lock() {
            routes.remove(&local_id);
        }
    }

    /// Joins two UDX streams of two other hosts, as a blind relay does
    /// (libudx's `udx_stream_relay_to`): a datagram for `ends[i].local_id`
    /// is sent on to the host behind the other end, its stream id
    /// rewritten to that host's stream id. Each end belongs to the first
    /// address that sends to it; datagrams from elsewhere are dropped. The
    /// relay reads nothing but the header: the hosts' UDX streams run end
    /// to end (and their secret-stream inside is opaque to it). Until the
    /// other end has been heard from, up to [`RELAY_BACKLOG`] datagrams
    /// wait. The link closes when it is dropped, when either host sends a
    /// DESTROY, or after `idle` without a datagram.
    pub fn relay(&self, ends: [RelayEnd; 2], idle: Duration) -> io::Result<RelayLink> {
        let (first, first_inbox) = mpsc::channel(RELAY_QUEUE);
        let (second, second_inbox) = mpsc::channel(RELAY_QUEUE);
        self.add_route(ends[0].local_id, first)?;
        if let Err(error) = self.add_route(ends[1].local_id, second) {
            self.remove_route(ends[0].local_id);
            return Err(error);
        }
        let routes = RelayRoutes {
            socket: self.clone(),
            ids: [ends[0].local_id, ends[1].local_id],
        };
        let task = tokio::spawn(forward_between(
            routes,
            [ends[0].remote_id, ends[1].remote_id],
            [first_inbox, second_inbox],
            idle,
        ));
        Ok(RelayLink { task })
    }
}

/// Anything a stream's task keeps alive while it runs (see
/// [`UdxSocket::connect_guarded`]).
pub type StreamGuard = Box<dyn std::any::Any + Send + Sync>;

/// Datagrams one end of a [`RelayLink`] holds while the other end has not
/// been heard from yet.
pub const RELAY_BACKLOG: usize = 32;
/// Datagrams queued between the socket and a relay link.
const RELAY_QUEUE: usize = 1024;

/// One side of a relay link: the id the relay allocated here, and the
/// stream id of the host that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayEnd {
    /// The stream id on this socket the host sends to.
    pub local_id: u32,
    /// The host's own stream id, which forwarded datagrams are given.
    pub remote_id: u32,
}

/// Two joined streams (see [`UdxSocket::relay`]); dropping it ends the
/// relaying.
#[derive(Debug)]
pub struct RelayLink {
    task: tokio::task::JoinHandle<()>,
}

impl RelayLink {
    /// Whether the link stopped (a DESTROY, or idle too long).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for RelayLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The routes of a relay link, removed when its task ends or is aborted.
struct RelayRoutes {
    socket: UdxSocket,
    ids: [u32; 2],
}

impl Drop for RelayRoutes {
    fn drop(&mut self) {
        for id in self.ids {
            self.socket.remove_route(id);
        }
    }
}

async fn forward_between(
    routes: RelayRoutes,
    remote_ids: [u32; 2],
    mut inboxes: [mpsc::Receiver<Datagram>; 2],
    idle: Duration,
) {
    let mut hosts: [Option<SocketAddr>; 2] = [None, None];
    let mut waiting: [VecDeque<Vec<u8>>; 2] = [VecDeque::new(), VecDeque::new()];
    loop {
        let [first, second] = &mut inboxes;
        let arrival = tokio::time::timeout(idle, async {
            tokio::select! {
                Some(datagram) = first.recv() => Some((0, datagram)),
                Some(datagram) = second.recv() => Some((1, datagram)),
                else => None,
            }
        })
        .await;
        let Ok(Some((side, (mut datagram, from)))) = arrival else {
            return;
        };
        if datagram.len() < HEADER_LEN {
            continue;
        }
        match hosts[side] {
            Some(host) if host != from => continue,
            Some(_) => {}
            None => {
                hosts[side] = Some(from);
                // What the other end sent before this one was heard from
                // can go now.
                let other = 1 - side;
                for mut held in std::mem::take(&mut waiting[other]) {
                    held[4..8].copy_from_slice(&remote_ids[side].to_le_bytes());
                    let _ = routes.socket.udp.send_to(&held, from).await;
                }
            }
        }
        let other = 1 - side;
        let destroy = datagram[2] & DESTROY != 0;
        match hosts[other] {
            Some(to) => {
                datagram[4..8].copy_from_slice(&remote_ids[other].to_le_bytes());
                let _ = routes.socket.udp.send_to(&datagram, to).await;
            }
            None if waiting[side].len() < RELAY_BACKLOG => waiting[side].push_back(datagram),
            None => {}
        }
        if destroy {
            return;
        }
    }
}

async fn receive_loop(udp: Arc<UdpSocket>, routes: Routes, others: Option<mpsc::Sender<Datagram>>) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((len, from)) = udp.recv_from(&mut buffer).await else {
            // ICMP errors (a closed peer port) surface here on Linux; keep going.
            continue;
        };
        let datagram = &buffer[..len];
        if datagram.first() != Some(&MAGIC) {
            if let Some(others) = &others {
                let _ = others.try_send((datagram.to_vec(), from));
            }
            continue;
        }
        // libudx reads into 2 KiB buffers, so no UDX peer sends more; a
        // larger one is dropped, which bounds every stream's queue in bytes.
        if !(HEADER_LEN..=MAX_DATAGRAM).contains(&len) || datagram[1] != VERSION {
            continue;
        }
        let id = u32::from_le_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
        let route = routes
            .lock()
            .ok()
            .and_then(|routes| routes.get(&id).cloned());
        match (route, &others) {
            // A full queue drops the datagram, as a full socket buffer would.
            (Some(route), _) => {
                let _ = route.try_send((datagram.to_vec(), from));
            }
            // A stream nobody opened here yet: the sharing protocol may be
            // waiting for it (a holepunch learns its peer's address from
            // the first packet).
            (None, Some(others)) => {
                let _ = others.try_send((datagram.to_vec(), from));
            }
            (None, None) => {}
        }
    }
}

/// The stream id a UDX datagram is addressed to, if it is one.
pub fn stream_id_of(datagram: &[u8]) -> Option<u32> {
    if datagram.len() < HEADER_LEN || datagram[0] != MAGIC || datagram[1] != VERSION {
        return None;
    }
    Some(u32::from_le_bytes([
        datagram[4],
        datagram[5],
        datagram[6],
        datagram[7],
    ]))
}

/// How a stream failed, if it did: reported by reads after the data.
type Failure = Arc<Mutex<Option<(io::ErrorKind, &'static str)>>>;

/// One UDX stream: read and write it like a TCP stream. A clean END from
/// the peer reads as end of file; a DESTROY or a peer that stopped
/// answering reads as an error (`ConnectionReset`, `TimedOut`).
#[derive(Debug)]
pub struct UdxStream {
    io: DuplexStream,
    failure: Failure,
}

impl AsyncRead for UdxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let at_end = matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0;
        if at_end {
            if let Some((kind, reason)) = self.failure.lock().ok().and_then(|failure| *failure) {
                return Poll::Ready(Err(io::Error::new(kind, reason)));
            }
        }
        polled
    }
}

impl AsyncWrite for UdxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why a stream stopped.
type StreamFailure = (io::ErrorKind, &'static str);

/// A packet sent and not yet acked.
struct InFlight {
    kind: u8,
    payload: Vec<u8>,
    sent_at: Instant,
    transmissions: u32,
    sacked: bool,
}

/// The task behind a [`UdxStream`].
struct Driver {
    socket: UdxSocket,
    local_id: u32,
    remote_id: u32,
    remote: SocketAddr,
    incoming: mpsc::Receiver<Datagram>,
    user_read: ReadHalf<DuplexStream>,
    user_write: WriteHalf<DuplexStream>,
    // Sending.
    seq: u32,
    remote_acked: u32,
    in_flight: BTreeMap<u32, InFlight>,
    remote_window: u32,
    cwnd: usize,
    ssthresh: usize,
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
    rto_deadline: Option<Instant>,
    timeouts_in_a_row: u32,
    local_eof: bool,
    // Receiving.
    ack: u32,
    out_of_order: BTreeMap<u32, (u8, Vec<u8>)>,
    deliver: VecDeque<Vec<u8>>,
    delivering_offset: usize,
    buffered: usize,
    remote_end: Option<u32>,
    heard_from_peer: bool,
    end_signalled: bool,
    user_gone: bool,
    failure: Failure,
    /// Kept alive while the task runs.
    guard: Option<StreamGuard>,
}

impl Driver {
    fn new(
        socket: UdxSocket,
        local_id: u32,
        remote_id: u32,
        remote: SocketAddr,
        incoming: mpsc::Receiver<Datagram>,
        user: DuplexStream,
        failure: Failure,
    ) -> Self {
        let (user_read, user_write) = tokio::io::split(user);
        Self {
            socket,
            local_id,
            remote_id,
            remote,
            incoming,
            user_read,
            user_write,
            seq: 0,
            remote_acked: 0,
            in_flight: BTreeMap::new(),
            remote_window: RECEIVE_WINDOW,
            cwnd: INITIAL_CWND,
            ssthresh: MAX_CWND,
            srtt: None,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
            rto_deadline: None,
            timeouts_in_a_row: 0,
            local_eof: false,
            ack: 0,
            out_of_order: BTreeMap::new(),
            deliver: VecDeque::new(),
            delivering_offset: 0,
            buffered: 0,
            remote_end: None,
            heard_from_peer: false,
            end_signalled: false,
            user_gone: false,
            failure,
            guard: None,
        }
    }

    async fn run(mut self) {
        match self.drive().await {
            Ok(()) => self.linger().await,
            Err((kind, reason)) => {
                tracing::debug!(stream = self.local_id, %reason, "UDX stream failed");
                if let Ok(mut failure) = self.failure.lock() {
                    *failure = Some((kind, reason));
                }
                // What arrived in order before the failure is still handed
                // over (as libudx has already delivered it), then the error.
                let pending = std::mem::take(&mut self.deliver);
                let offset = self.delivering_offset;
                let user_write = &mut self.user_write;
                let handover = async move {
                    for (index, chunk) in pending.iter().enumerate() {
                        let start = if index == 0 { offset } else { 0 };
                        user_write.write_all(&chunk[start..]).await?;
                    }
                    user_write.shutdown().await
                };
                let _ = tokio::time::timeout(LINGER_MAX, handover).await;
                if kind != io::ErrorKind::ConnectionReset {
                    self.send_control(DESTROY).await;
                }
            }
        }
        if let Ok(mut routes) = self.socket.routes.lock() {
            routes.remove(&self.local_id);
        }
    }

    /// After a clean end, keeps answering for a little while: if our last
    /// ack was lost the peer resends its END and must hear back.
    async fn linger(&mut self) {
        let until = Instant::now() + (self.rto * 2).clamp(MIN_RTO, LINGER_MAX);
        while let Ok(Some((datagram, from))) =
            tokio::time::timeout_at(until, self.incoming.recv()).await
        {
            let Ok(packet) = decode(&datagram) else {
                continue;
            };
            if from != self.remote || packet.kind & DESTROY != 0 {
                break;
            }
            if packet.kind & (DATA | END | HEARTBEAT) != 0 {
                self.send_ack().await;
            }
        }
    }

    /// Nothing is in flight and the peer's window has no room for a packet.
    fn window_closed(&self) -> bool {
        self.in_flight.is_empty() && !self.local_eof && (self.remote_window as usize) < MAX_PAYLOAD
    }

    fn window_allows_sending(&self) -> bool {
        let bytes_in_flight: usize = self.in_flight.len() * MAX_PAYLOAD;
        !self.local_eof
            && self.in_flight.len() < self.cwnd
            && bytes_in_flight + MAX_PAYLOAD <= self.remote_window as usize
    }

    fn remote_finished(&self) -> bool {
        self.remote_end
            .is_some_and(|end| seq_diff(self.ack, end) > 0)
    }

    /// Runs until both sides ended (Ok) or the stream failed (Err).
    async fn drive(&mut self) -> Result<(), StreamFailure> {
        let mut chunk = vec![0u8; MAX_PAYLOAD];
        loop {
            if self.local_eof
                && self.in_flight.is_empty()
                && self.remote_finished()
                && self.deliver.is_empty()
            {
                let _ = self.user_write.shutdown().await;
                return Ok(());
            }
            if self.user_gone && self.in_flight.is_empty() && self.local_eof {
                return Ok(());
            }
            let can_send = self.window_allows_sending();
            if self.window_closed() && self.rto_deadline.is_none() {
                // Zero-window probing: the update that reopens the peer's
                // window may be lost, so ask again on the retransmission timer.
                self.rto_deadline = Some(Instant::now() + self.rto);
            }
            let deadline = self.rto_deadline;
            let has_delivery = !self.deliver.is_empty() && !self.user_gone;
            tokio::select! {
                datagram = self.incoming.recv() => {
                    let Some((datagram, from)) = datagram else {
                        return Err((io::ErrorKind::NotConnected, "the UDX socket closed"));
                    };
                    let moved = from != self.remote;
                    if moved {
                        if self.heard_from_peer {
                            continue;
                        }
                        // The peer's first packet may come from another
                        // socket than the one it was announced at (a
                        // HyperDHT client's stream socket, or a NAT's
                        // mapping); follow it.
                        self.remote = from;
                    }
                    self.heard_from_peer = true;
                    if self.on_datagram(&datagram).await {
                        return Err((io::ErrorKind::ConnectionReset, "the peer destroyed the UDX stream"));
                    }
                    if moved {
                        // What we sent before went where the peer is not:
                        // resend it now rather than after a timeout.
                        let now = Instant::now();
                        let unacked: Vec<u32> = self.in_flight.keys().copied().collect();
                        for seq in unacked {
                            self.retransmit(seq, now).await;
                        }
                    }
                }
                read = self.user_read.read(&mut chunk), if can_send => {
                    match read {
                        Ok(0) | Err(_) => {
                            self.local_eof = true;
                            self.send_new(END, Vec::new()).await;
                        }
                        Ok(n) => self.send_new(DATA, chunk[..n].to_vec()).await,
                    }
                }
                written = write_front(&mut self.user_write, &self.deliver, self.delivering_offset), if has_delivery => {
                    match written {
                        Ok(n) => self.consume_delivered(n).await,
                        Err(_) => {
                            // The user dropped the stream: stop delivering.
                            self.user_gone = true;
                            self.deliver.clear();
                            self.buffered = 0;
                        }
                    }
                }
                () = sleep_until(deadline) => self.on_timeout().await?,
            }
            self.signal_end_of_stream().await;
        }
    }

    /// Once the peer's END is reached and everything before it handed
    /// over, the user reads end of file (once).
    async fn signal_end_of_stream(&mut self) {
        if !self.end_signalled && self.remote_finished() && self.deliver.is_empty() {
            self.end_signalled = true;
            let _ = self.user_write.shutdown().await;
        }
    }

    async fn consume_delivered(&mut self, written: usize) {
        let window_was_closed = self.advertised_window() < RECEIVE_WINDOW / 2;
        self.delivering_offset += written;
        self.buffered = self.buffered.saturating_sub(written);
        if let Some(front) = self.deliver.front() {
            if self.delivering_offset >= front.len() {
                self.deliver.pop_front();
                self.delivering_offset = 0;
            }
        }
        self.signal_end_of_stream().await;
        if window_was_closed && self.advertised_window() >= RECEIVE_WINDOW / 2 {
            // Window update so a sender stalled on a full window resumes.
            self.send_ack().await;
        }
    }

    fn advertised_window(&self) -> u32 {
        RECEIVE_WINDOW.saturating_sub(u32::try_from(self.buffered).unwrap_or(u32::MAX))
    }

    /// Sends one packet carrying our current window and ack.
    async fn transmit(&self, kind: u8, seq: u32, sacks: &[(u32, u32)], payload: &[u8]) {
        let packet = encode(
            kind,
            self.remote_id,
            self.advertised_window(),
            seq,
            self.ack,
            sacks,
            payload,
        );
        // A failed send is a lost datagram; retransmission covers it.
        let _ = self.socket.udp.send_to(&packet, self.remote).await;
    }

    async fn send_new(&mut self, kind: u8, payload: Vec<u8>) {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.transmit(kind, seq, &[], &payload).await;
        self.in_flight.insert(
            seq,
            InFlight {
                kind,
                payload,
                sent_at: Instant::now(),
                transmissions: 1,
                sacked: false,
            },
        );
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(Instant::now() + self.rto);
        }
    }

    async fn send_control(&self, kind: u8) {
        self.transmit(kind, self.seq, &[], &[]).await;
    }

    async fn send_ack(&self) {
        let mut sacks: Vec<(u32, u32)> = Vec::new();
        for &seq in self.out_of_order.keys() {
            if let Some((_, end)) = sacks.last_mut() {
                if *end == seq {
                    *end = seq.wrapping_add(1);
                    continue;
                }
            }
            if sacks.len() == MAX_SACK_BLOCKS {
                break;
            }
            sacks.push((seq, seq.wrapping_add(1)));
        }
        let kind = if sacks.is_empty() { 0 } else { SACK };
        self.transmit(kind, self.seq, &sacks, &[]).await;
    }

    /// Handles one datagram; `true` when the peer destroyed the stream.
    async fn on_datagram(&mut self, datagram: &[u8]) -> bool {
        let Ok(packet) = decode(datagram) else {
            return false;
        };
        if packet.kind & HEARTBEAT != 0 {
            self.send_ack().await;
            return false;
        }
        if seq_diff(packet.seq, self.ack) >= 0 {
            if packet.kind & (DATA | END) != 0
                && seq_diff(packet.seq, self.ack) < REORDER_LIMIT as i32
            {
                self.receive(packet.seq, packet.kind, packet.payload);
            }
            if packet.kind & END != 0 {
                self.remote_end = Some(packet.seq);
            }
            if packet.kind & DESTROY != 0 {
                return true;
            }
        }
        self.on_ack(&packet).await;
        if packet.kind & (DATA | END) != 0 {
            self.send_ack().await;
        }
        false
    }

    fn receive(&mut self, seq: u32, kind: u8, payload: &[u8]) {
        self.out_of_order
            .entry(seq)
            .or_insert_with(|| (kind, payload.to_vec()));
        while let Some((kind, payload)) = self.out_of_order.remove(&self.ack) {
            self.ack = self.ack.wrapping_add(1);
            if kind & DATA != 0 && !payload.is_empty() && !self.user_gone {
                self.buffered += payload.len();
                self.deliver.push_back(payload);
            }
        }
    }

    async fn on_ack(&mut self, packet: &Packet<'_>) {
        // An ack for data we never sent is bogus.
        if seq_diff(packet.ack, self.seq) > 0 {
            return;
        }
        self.remote_window = packet.window;
        let now = Instant::now();
        if self.in_flight.is_empty() {
            // Nothing to retransmit: any ack answers a window probe.
            self.timeouts_in_a_row = 0;
            if !self.window_closed() {
                self.rto_deadline = None;
                self.rto = self.estimated_rto();
            }
        }
        let mut newly_acked = 0usize;
        // One RTT sample per ack: the most recently sent packet it newly
        // covers, if it was sent once (Karn's rule).
        let mut latest_sample = None;
        if seq_diff(packet.ack, self.remote_acked) > 0 {
            let still_in_flight = self.in_flight.split_off(&packet.ack);
            for sent in std::mem::replace(&mut self.in_flight, still_in_flight).into_values() {
                if sent.sacked {
                    continue; // counted (and timed) when it was selectively acked
                }
                newly_acked += 1;
                if sent.transmissions == 1 {
                    latest_sample = Some(now.duration_since(sent.sent_at));
                }
            }
            self.remote_acked = packet.ack;
            self.timeouts_in_a_row = 0;
            self.rto = self.estimated_rto();
        }
        let mut highest_sacked = None;
        for &(start, end) in &packet.sacks {
            if seq_diff(end, self.seq) > 0
                || seq_diff(start, end) >= 0
                || seq_diff(start, self.remote_acked) < 0
            {
                continue;
            }
            let mut seq = start;
            while seq != end {
                if let Some(sent) = self.in_flight.get_mut(&seq) {
                    if !sent.sacked {
                        sent.sacked = true;
                        newly_acked += 1;
                        if sent.transmissions == 1 {
                            let sample = now.duration_since(sent.sent_at);
                            latest_sample =
                                Some(latest_sample.map_or(sample, |old: Duration| old.min(sample)));
                        }
                    }
                }
                seq = seq.wrapping_add(1);
            }
            if highest_sacked.is_none_or(|high| seq_diff(end, high) > 0) {
                highest_sacked = Some(end);
            }
        }
        if let Some(sample) = latest_sample {
            self.sample_rtt(sample);
        }
        if newly_acked > 0 {
            self.grow_window(newly_acked);
            self.rto_deadline = if self.in_flight.is_empty() {
                None
            } else {
                Some(now + self.rto)
            };
        }
        if let Some(high) = highest_sacked {
            self.retransmit_holes(high, now).await;
        }
    }

    /// Retransmits unacked packets at least three below the highest SACK
    /// that have not been sent within the last smoothed RTT.
    async fn retransmit_holes(&mut self, highest_sacked: u32, now: Instant) {
        let recent = self.srtt.unwrap_or(MIN_RTO) + self.srtt.unwrap_or(MIN_RTO) / 4;
        let mut resend = Vec::new();
        for (&seq, sent) in &self.in_flight {
            if seq_diff(highest_sacked, seq) < 4 {
                break;
            }
            if !sent.sacked && now.duration_since(sent.sent_at) > recent {
                resend.push(seq);
            }
        }
        if resend.is_empty() {
            return;
        }
        self.ssthresh = (self.cwnd / 2).max(2);
        self.cwnd = self.ssthresh;
        for seq in resend {
            self.retransmit(seq, now).await;
        }
    }

    async fn retransmit(&mut self, seq: u32, now: Instant) {
        let Some(sent) = self.in_flight.get_mut(&seq) else {
            return;
        };
        sent.sent_at = now;
        sent.transmissions += 1;
        let (kind, payload) = (sent.kind, sent.payload.clone());
        self.transmit(kind, seq, &[], &payload).await;
    }

    async fn on_timeout(&mut self) -> Result<(), StreamFailure> {
        let now = Instant::now();
        self.timeouts_in_a_row += 1;
        if self.timeouts_in_a_row > MAX_RETRANSMITS {
            return Err((
                io::ErrorKind::TimedOut,
                "the UDX peer stopped acknowledging",
            ));
        }
        if self.in_flight.is_empty() {
            // A window probe: the peer answers a heartbeat with its window.
            self.send_control(HEARTBEAT).await;
            self.rto = (self.rto * 2).min(MAX_RTO);
            self.rto_deadline = self.window_closed().then(|| now + self.rto);
            return Ok(());
        }
        self.ssthresh = (self.cwnd / 2).max(2);
        self.cwnd = INITIAL_CWND.min(self.ssthresh);
        self.rto = (self.rto * 2).min(MAX_RTO);
        // Everything unacked that has waited a full timeout is presumed lost.
        let mut stale: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, sent)| !sent.sacked && now.duration_since(sent.sent_at) >= MIN_RTO)
            .map(|(&seq, _)| seq)
            .take(MAX_CWND)
            .collect();
        if stale.is_empty() {
            // Everything left was selectively acked but the cumulative ack
            // that would retire it was lost: resend the oldest packet so
            // the receiver acks again (it acks every DATA/END, duplicates
            // included).
            stale.extend(self.in_flight.keys().next().copied());
        }
        for seq in stale {
            self.retransmit(seq, now).await;
        }
        self.rto_deadline = if self.in_flight.is_empty() {
            None
        } else {
            Some(now + self.rto)
        };
        Ok(())
    }

    /// The timeout from the current estimate (after a backoff, once acks
    /// flow again).
    fn estimated_rto(&self) -> Duration {
        match self.srtt {
            Some(srtt) => (srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO),
            None => INITIAL_RTO,
        }
    }

    fn sample_rtt(&mut self, sample: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let deviation = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + deviation) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
        self.rto = self.estimated_rto();
    }

    fn grow_window(&mut self, acked: usize) {
        if self.cwnd < self.ssthresh {
            self.cwnd = (self.cwnd + acked).min(MAX_CWND);
        } else {
            // Congestion avoidance: about one packet per window acked.
            self.cwnd = (self.cwnd + acked.div_ceil(self.cwnd)).min(MAX_CWND);
        }
    }
}

async fn write_front(
    writer: &mut WriteHalf<DuplexStream>,
    deliver: &VecDeque<Vec<u8>>,
    offset: usize,
) -> io::Result<usize> {
    match deliver.front() {
        Some(front) => writer.write(&front[offset..]).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_garbage_is_rejected() {
        let packet = encode(DATA | SACK, 7, 1000, 5, 3, &[(9, 11)], b"hello");
        let decoded = decode(&packet).unwrap();
        assert_eq!(
            (
                decoded.kind,
                decoded.stream_id,
                decoded.window,
                decoded.seq,
                decoded.ack
            ),
            (DATA | SACK, 7, 1000, 5, 3)
        );
        // With SACK and no data offset, everything after the header is read
        // as blocks (as libudx does); a DATA packet never carries SACKs.
        assert_eq!(decoded.sacks[0], (9, 11));
        let encoded = encode(DATA, 1, 2, 3, 4, &[], b"payload");
        let data = decode(&encoded).unwrap();
        assert_eq!(data.payload, b"payload");
        assert!(data.sacks.is_empty());

        assert_eq!(decode(&[0xFF; 5]), Err(UdxError::Short(5)));
        let mut wrong_version = encode(0, 1, 2, 3, 4, &[], &[]);
        wrong_version[1] = 2;
        assert_eq!(decode(&wrong_version), Err(UdxError::NotUdx));
        // An MTU probe pads with the data offset: the payload starts after it.
        let mut probe = encode(DATA, 1, 2, 3, 4, &[], &[0, 0, 0, b'x']);
        probe[3] = 3;
        assert_eq!(decode(&probe).unwrap().payload, b"x");
        probe[3] = 9;
        assert!(matches!(decode(&probe), Err(UdxError::BadOffset { .. })));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_datagrams_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            kind in proptest::num::u8::ANY,
            offset in proptest::num::u8::ANY,
        ) {
            let _ = decode(&bytes);
            let mut forged = encode(kind, 1, 2, 3, 4, &[], &bytes);
            forged[3] = offset;
            let _ = decode(&forged);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_the_stream_out() {
        let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut stream = socket.connect(1, 1, silent.local_addr().unwrap()).unwrap();
        stream.write_all(b"anyone there?").await.unwrap();
        let mut buffer = [0u8; 16];
        let error = stream.read(&mut buffer).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_datagram_larger_than_libudx_sends_is_dropped() {
        let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut stream = socket.connect(1, 2, peer.local_addr().unwrap()).unwrap();
        let at = socket.local_addr().unwrap();
        let oversized = encode(DATA, 1, RECEIVE_WINDOW, 0, 0, &[], &[7; MAX_DATAGRAM]);
        peer.send_to(&oversized, at).await.unwrap();
        let fitting = encode(DATA, 1, RECEIVE_WINDOW, 0, 0, &[], b"fits");
        peer.send_to(&fitting, at).await.unwrap();
        // Sequence 0 is the small one: the large one never arrived.
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"fits");
    }

    #[tokio::test]
    async fn a_relay_link_joins_two_streams_and_ignores_strangers() {
        let bind = || UdxSocket::bind("127.0.0.1:0".parse().unwrap());
        let (relay, a, b) = (
            bind().await.unwrap(),
            bind().await.unwrap(),
            bind().await.unwrap(),
        );
        let relay_at = relay.local_addr().unwrap();
        let link = relay
            .relay(
                [
                    RelayEnd {
                        local_id: 100,
                        remote_id: 1,
                    },
                    RelayEnd {
                        local_id: 200,
                        remote_id: 2,
                    },
                ],
                Duration::from_secs(60),
            )
            .unwrap();
        // An id in use cannot be relayed twice.
        assert!(relay
            .relay(
                [
                    RelayEnd {
                        local_id: 100,
                        remote_id: 9,
                    },
                    RelayEnd {
                        local_id: 300,
                        remote_id: 9,
                    },
                ],
                Duration::from_secs(60),
            )
            .is_err());
        let mut first = a.connect(1, 100, relay_at).unwrap();
        // A writes before B has been heard from: its packets wait at the
        // relay instead of waiting for a retransmission.
        first.write_all(&[1u8; 100_000]).await.unwrap();
        let mut second = b.connect(2, 200, relay_at).unwrap();
        second.write_all(&[2u8; 100_000]).await.unwrap();
        let mut got = vec![0u8; 100_000];
        second.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [1u8; 100_000]);
        first.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [2u8; 100_000]);
        // A stranger sending to A's end is not forwarded to B: B's stream
        // id would otherwise receive this (a DESTROY, which would break it).
        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let forged = encode(DESTROY, 100, RECEIVE_WINDOW, 0, 0, &[], &[]);
        stranger.send_to(&forged, relay_at).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!link.is_finished());
        second.write_all(b"still here").await.unwrap();
        let mut tail = [0u8; 10];
        first.read_exact(&mut tail).await.unwrap();
        assert_eq!(&tail, b"still here");
        // Dropping the link frees both ids.
        drop(link);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(relay.connect(100, 1, a.local_addr().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn a_destroy_from_the_peer_reads_as_connection_reset() {
        let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut stream = socket.connect(4, 9, peer.local_addr().unwrap()).unwrap();
        // Unknown stream ids and garbage are ignored; the DESTROY is not.
        let target = socket.local_addr().unwrap();
        peer.send_to(b"not udx at all, not at all", target)
            .await
            .unwrap();
        peer.send_to(&encode(DESTROY, 77, 0, 0, 0, &[], &[]), target)
            .await
            .unwrap();
        peer.send_to(&encode(DATA, 4, 0, 0, 0, &[], b"hi"), target)
            .await
            .unwrap();
        peer.send_to(&encode(DESTROY, 4, 0, 1, 0, &[], &[]), target)
            .await
            .unwrap();
        let mut received = Vec::new();
        let error = stream.read_to_end(&mut received).await.unwrap_err();
        assert_eq!(received, b"hi");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
        // The stream acked the data with the peer's stream id.
        let mut datagram = [0u8; 64];
        let (len, _) = peer.recv_from(&mut datagram).await.unwrap();
        let ack = decode(&datagram[..len]).unwrap();
        assert_eq!((ack.stream_id, ack.ack), (9, 1));
    }

    #[tokio::test]
    async fn a_closed_window_is_probed_until_it_reopens() {
        let socket = UdxSocket::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = socket.local_addr().unwrap();
        let mut stream = socket.connect(3, 8, peer.local_addr().unwrap()).unwrap();
        // The peer announces a full receive buffer before anything is sent.
        peer.send_to(&encode(0, 3, 0, 0, 0, &[], &[]), target)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(b"waiting for room").await.unwrap();
        let mut datagram = [0u8; 2048];
        let (len, _) = peer.recv_from(&mut datagram).await.unwrap();
        let probe = decode(&datagram[..len]).unwrap();
        assert_eq!(
            probe.kind, HEARTBEAT,
            "a probe, not data, while the window is shut"
        );
        // The window reopens: the data follows.
        peer.send_to(&encode(0, 3, RECEIVE_WINDOW, 0, 0, &[], &[]), target)
            .await
            .unwrap();
        let (len, _) = peer.recv_from(&mut datagram).await.unwrap();
        let data = decode(&datagram[..len]).unwrap();
        assert_eq!(
            (data.kind, data.seq, data.payload),
            (DATA, 0, &b"waiting for room"[..])
        );
    }
}
