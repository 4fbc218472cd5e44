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
