//! What the database keeps in WebAssembly memory, in headless Chromium. One
//! test in this file, so it measures a fresh instance's memory.
#![cfg(target_arch = "wasm32")]

use pluresdb::crdt::Document;
use pluresdb::storage::MemoryStorage;
use pluresdb::{Database, OpenOptions, Query};
use serde_json::{json, Map, Value};
use wasm_bindgen::JsCast;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const MIB: f64 = 1024.0 * 1024.0;

fn memory_bytes() -> f64 {
    let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
    let buffer: js_sys::ArrayBuffer = memory.buffer().unchecked_into();
    f64::from(buffer.byte_length())
}

/// Issue #26: a document's parse used to be cached in the document, so one
/// query that scanned every record kept a parse of each for as long as the
/// database stayed open (about 500 MiB for a million small notes).
#[wasm_bindgen_test]
async fn scans_and_reads_keep_no_parsed_documents() {
    let db = Database::open(MemoryStorage::new(), OpenOptions::default())
        .await
        .unwrap();
    // Documents of 40 small fields: about 0.4 KB as text, several KB parsed.
    let count = 40_000;
    let entries = (0..count).map(|i| {
        let fields: Map<String, Value> = (0..40).map(|f| (format!("f{f}"), json!(i * f))).collect();
        (
            format!("d{i:05}"),
            Document::from_value(&Value::Object(fields)).unwrap(),
        )
    });
    db.put_many(entries).await.unwrap();
    let before = memory_bytes();

    let query =
        Query::from_json(&json!({ "where": { "f1": { "$lt": 10 } }, "sort": "-f2" })).unwrap();
    for _ in 0..3 {
        let hits = db.query(&query).await.unwrap();
        assert_eq!(hits.len(), 10);
        assert_eq!(hits[0].0, "d00009");
    }
    for i in (0..count).step_by(7) {
        let value = db.get(&format!("d{i:05}")).await.unwrap().unwrap();
        assert_eq!(value["f3"], json!(i * 3));
    }
    let grown = memory_bytes() - before;
    assert!(
        grown < 8.0 * MIB,
        "a scan of {count} documents and reads of a seventh of them grew memory by {:.1} MiB",
        grown / MIB
    );
}
