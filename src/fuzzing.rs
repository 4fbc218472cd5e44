//! Entry points shared by the fuzz targets (`fuzz/`) and the regression test
//! that replays saved fuzz inputs (`tests/fuzz_regressions.rs`).

use crate::crdt::{decode_operations, encode_operations, CrdtOperation, Record, VersionVector};
use crate::storage::chunk::{decode_chunk, encode_entries};

/// Runs every decoder of untrusted bytes on `data`. A decoder may reject the
/// input; whatever it accepts must re-encode to exactly `data`, since every
/// encoding is canonical. Panics (which the fuzzer reports) on a violation.
/// Returns how many decoders accepted the input.
pub fn check_decoders(data: &[u8]) -> usize {
    let mut accepted = 0;
    if let Ok(record) = Record::from_bytes(data) {
        assert_eq!(record.to_bytes(), data, "record encoding is not canonical");
        accepted += 1;
    }
    if let Ok(op) = CrdtOperation::from_bytes(data) {
        assert_eq!(op.to_bytes(), data, "operation encoding is not canonical");
        accepted += 1;
    }
    if let Ok(ops) = decode_operations(data) {
        assert_eq!(
            encode_operations(&ops),
            data,
            "batch encoding is not canonical"
        );
        accepted += 1;
    }
    let mut entries = Vec::new();
    if decode_chunk(data.to_vec(), &mut entries).is_ok() {
        assert_eq!(
            encode_entries(&entries),
            data,
            "chunk encoding is not canonical"
        );
        accepted += 1;
    }
    if let Ok(frame) = crate::sync::relay_frame::ClientFrame::decode(data) {
        assert_eq!(frame.encode(), data, "client relay frame is not canonical");
        accepted += 1;
    }
    if let Ok(frame) = crate::sync::relay_frame::RelayFrame::decode(data) {
        assert_eq!(frame.encode(), data, "relay frame is not canonical");
        accepted += 1;
    }
    if let Ok(vector) = VersionVector::from_bytes(data) {
        assert_eq!(
            vector.to_bytes(),
            data,
            "version vector encoding is not canonical"
        );
        accepted += 1;
    }
    if let Ok(segment) = crate::index::Segment::decode("fuzz".into(), data) {
        assert_eq!(segment.encode(), data, "index segment is not canonical");
        accepted += 1;
    }
    if let Ok((graph, read)) = pluresdb_hnsw::Hnsw::decode(data) {
        let mut encoded = Vec::new();
        graph.encode(&mut encoded);
        assert_eq!(encoded, data[..read], "HNSW graph is not canonical");
        // Whatever decodes can be searched without going out of bounds.
        if graph.dimension() <= 4096 {
            let query = pluresdb_hnsw::Quantized::new(&vec![0.5; graph.dimension()]);
            let mut found = Vec::new();
            let mut scratch = pluresdb_hnsw::Scratch::default();
            graph.search(&query, 16, |_| true, &mut scratch, &mut found);
            assert!(found.iter().all(|s| (s.node as usize) < graph.len()));
        }
        accepted += 1;
    }
    accepted
}

/// Runs every decoder of datagrams and handshake messages from the
/// Hyperswarm transport on `data`: UDX packets, `dht-rpc` messages,
/// HyperDHT records, handshake and holepunch messages (and the sealed
/// holepunch payload and NAT sampler) and the Noise responder. Each may reject the input;
/// whatever it accepts must survive a round trip through its encoder.
/// Panics (which the fuzzer reports) on a violation. Returns how many
/// decoders accepted the input.
#[cfg(all(feature = "hyperswarm", not(target_arch = "wasm32")))]
pub fn check_network_decoders(data: &[u8]) -> usize {
    use crate::hyperswarm::{blind_relay, dht_rpc, holepunch, hyperdht, noise, udx};
    let mut accepted = 0;
    if let Ok(packet) = udx::decode(data) {
        assert!(
            data.ends_with(packet.payload),
            "UDX payload is not the datagram's tail"
        );
        accepted += 1;
    }
    if let Ok(message) = dht_rpc::Message::decode(data) {
        assert_eq!(
            dht_rpc::Message::decode(&message.encode()).as_ref(),
            Ok(&message),
            "dht-rpc message does not round-trip"
        );
        accepted += 1;
    }
    if let Ok(record) = hyperdht::PeerRecord::decode(data) {
        assert_eq!(hyperdht::PeerRecord::decode(&record.encode()), Ok(record));
        accepted += 1;
    }
    if hyperdht::decode_lookup_reply(data).is_ok() {
        accepted += 1;
    }
    if let Ok(hop) = hyperdht::HandshakeHop::decode(data) {
        assert_eq!(hyperdht::HandshakeHop::decode(&hop.encode()), Ok(hop));
        accepted += 1;
    }
    if let Ok(payload) = hyperdht::NoisePayload::decode(data) {
        // What this side reads of a payload, it writes back the same.
        if payload.version == 1 {
            let again = hyperdht::NoisePayload::decode(&payload.encode());
            assert_eq!(
                again.as_ref().map(|again| (
                    &again.holepunch,
                    &again.addresses4,
                    again.udx_id,
                    again.relay_through
                )),
                Ok((
                    &payload.holepunch,
                    &payload.addresses4,
                    payload.udx_id,
                    payload.relay_through
                )),
                "Noise payload does not round-trip"
            );
        }
        accepted += 1;
    }
    if let Ok(hop) = holepunch::HolepunchHop::decode(data) {
        assert_eq!(holepunch::HolepunchHop::decode(&hop.encode()), Ok(hop));
        accepted += 1;
    }
    if let Ok(payload) = holepunch::HolepunchPayload::decode(data) {
        assert_eq!(
            holepunch::HolepunchPayload::decode(&payload.encode()),
            Ok(payload)
        );
        accepted += 1;
    }
    // Blind-relay traffic: protomux frames (single or batched) and the
    // pair / unpair messages.
    if let Ok(frames) = blind_relay::MuxFrame::decode_all(data) {
        for frame in frames {
            assert_eq!(
                blind_relay::MuxFrame::decode_all(&frame.encode()),
                Ok(vec![frame]),
                "protomux frame does not round-trip"
            );
        }
        accepted += 1;
    }
    if let Ok(pair) = blind_relay::Pair::decode(data) {
        assert_eq!(blind_relay::Pair::decode(&pair.encode()), Ok(pair));
        accepted += 1;
    }
    if let Ok(unpair) = blind_relay::Unpair::decode(data) {
        assert_eq!(blind_relay::Unpair::decode(&unpair.encode()), Ok(unpair));
        accepted += 1;
    }
    // A sealed payload from a stranger opens to nothing (the key is the
    // handshake's), whatever its length.
    if holepunch::SecurePayload::new(&[7; 64]).open(data).is_some() {
        accepted += 1;
    }
    // A NAT sampler fed addresses from the input never panics.
    let mut sampler = holepunch::NatSampler::new(false);
    for chunk in data.chunks_exact(12) {
        let address = |bytes: &[u8]| {
            std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]),
                u16::from_le_bytes([bytes[4], bytes[5]]),
            )
        };
        sampler.add(address(&chunk[..6]), address(&chunk[6..]));
        let _ = (sampler.firewall(), sampler.addresses());
    }
    for pattern in [noise::Pattern::XX, noise::Pattern::IK] {
        let keys = noise::KeyPair::from_seed([1; 32]);
        if let Ok(mut responder) = noise::Handshake::new(pattern, false, keys, None, &[]) {
            if responder.recv(data).is_ok() {
                accepted += 1;
            }
        }
    }
    accepted
}
