//! Every decoder of untrusted bytes: must return an error or a value that
//! re-encodes to the same bytes, and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pluresdb::fuzzing::check_decoders(data);
});
