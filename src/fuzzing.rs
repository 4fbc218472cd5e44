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
    if decode_chunk(data, &mut entries).is_ok() {
        assert_eq!(
            encode_entries(&entries),
            data,
            "chunk encoding is not canonical"
        );
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
    accepted
}
