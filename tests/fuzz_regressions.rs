//! Replays every saved fuzz input (`fuzz/regressions/`: crashers the fuzzer
//! once found, and hand-made malformed inputs) through every decoder: each
//! must be rejected with an error or round-trip exactly, never panic.
#![cfg(not(target_arch = "wasm32"))]

use std::fs;
use std::path::Path;

#[test]
fn saved_fuzz_inputs_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let result = std::panic::catch_unwind(|| pluresdb::fuzzing::check_decoders(&data));
        let accepted = result.unwrap_or_else(|_| panic!("{name} made a decoder panic"));
        if name.starts_with("valid-") {
            assert!(accepted > 0, "{name} is a valid encoding but was rejected");
        } else if !name.starts_with("crash-") {
            // Hand-made malformed inputs must be rejected by every decoder.
            assert_eq!(accepted, 0, "{name} is malformed but was accepted");
        }
        replayed += 1;
    }
    assert!(replayed >= 5, "expected the saved inputs, found {replayed}");
}

/// The same saved inputs through the Hyperswarm transport's decoders
/// (UDX, dht-rpc, HyperDHT, Noise): none may panic.
#[cfg(feature = "hyperswarm")]
#[test]
fn saved_fuzz_inputs_never_panic_the_network_decoders() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        std::panic::catch_unwind(|| pluresdb::fuzzing::check_network_decoders(&data))
            .unwrap_or_else(|_| panic!("{name} made a network decoder panic"));
        replayed += 1;
    }
    assert!(replayed >= 5, "expected the saved inputs, found {replayed}");
}

/// The holepunch messages are new to the network decoders: valid encodings
/// of each, mutated (bytes flipped, cut, lengths inflated) by a seeded
/// generator, go through every network decoder; none may panic and what
/// decodes must round-trip (`check_network_decoders` asserts that).
#[cfg(feature = "hyperswarm")]
#[test]
fn mutated_holepunch_messages_never_panic_the_network_decoders() {
    use pluresdb::hyperswarm::blind_relay::{MuxFrame, Pair, Unpair, PAIR, PROTOCOL};
    use pluresdb::hyperswarm::holepunch::{
        HolepunchHop, HolepunchInfo, HolepunchPayload, RelayInfo, SecurePayload,
    };
    use pluresdb::hyperswarm::hyperdht::{NoisePayload, RelayThrough};

    let address = |text: &str| text.parse().unwrap();
    let payload = HolepunchPayload {
        error: 0,
        firewall: 2,
        round: 3,
        connected: false,
        punching: true,
        addresses: Some(vec![address("1.2.3.4:5"), address("6.7.8.9:10")]),
        remote_address: Some(address("11.12.13.14:15")),
        token: Some([4; 32]),
        remote_token: Some([5; 32]),
    };
    let noise = NoisePayload {
        version: 1,
        error: 0,
        firewall: 0,
        holepunch: Some(HolepunchInfo {
            id: 7,
            relays: vec![RelayInfo {
                relay_address: address("9.9.9.9:49737"),
                peer_address: address("8.8.8.8:1000"),
            }],
        }),
        addresses4: vec![address("8.8.8.8:1000")],
        udx_id: Some(12),
        secret_stream: true,
        relay_through: Some(RelayThrough {
            public_key: [6; 32],
            token: [7; 32],
        }),
    };
    let pair = Pair {
        is_initiator: true,
        token: [8; 32],
        stream_id: 70_000,
        seq: 0,
    };
    let seeds = [
        payload.encode(),
        HolepunchHop {
            mode: 2,
            id: 7,
            payload: SecurePayload::new(&[7; 64]).seal(&payload),
            peer_address: Some(address("1.1.1.1:1")),
        }
        .encode(),
        noise.encode(),
        MuxFrame::Open {
            local_id: 1,
            protocol: PROTOCOL.into(),
            id: Some(vec![9; 32]),
            handshake: Vec::new(),
        }
        .encode(),
        MuxFrame::Message {
            channel: 1,
            kind: PAIR,
            body: pair.encode(),
        }
        .encode(),
        // A protomux batch of a pair and an unpair.
        [
            vec![0, 0, 1, 40, PAIR as u8],
            pair.encode(),
            vec![34, 1],
            Unpair { token: [8; 32] }.encode(),
        ]
        .concat(),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for round in 0..60_000 {
        let mut data = seeds[round % seeds.len()].clone();
        for _ in 0..=(next() % 4) {
            let at = (next() as usize) % data.len().max(1);
            match next() % 4 {
                0 if !data.is_empty() => data[at] ^= 1 << (next() % 8),
                1 => data.truncate(at),
                2 if !data.is_empty() => data[at] = [0xfd, 0xfe, 0xff][(next() % 3) as usize],
                _ => data.insert(at.min(data.len()), next() as u8),
            }
        }
        accepted += std::panic::catch_unwind(|| pluresdb::fuzzing::check_network_decoders(&data))
            .unwrap_or_else(|_| panic!("mutation {round} ({data:02x?}) made a decoder panic"));
    }
    // The mutations keep many inputs valid, so the round-trip checks ran.
    assert!(accepted > 10_000, "only {accepted} inputs decoded");
}
