//! Every decoder of bytes from the network in the Hyperswarm transport
//! (UDX, dht-rpc, HyperDHT records, Noise): must return an error or a value
//! that round-trips, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pluresdb::fuzzing::check_network_decoders(data);
});
