//! CRDT core throughput (criterion): applying remote operations, and the
//! crdt-benchmarks B3.2 shape (about 1,500 actors concurrently setting the
//! same keys). Figures are summarised in docs/BENCHMARKS.md.

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use criterion::{BatchSize, Criterion, Throughput};
    use pluresdb::crdt::{ActorId, CrdtOperation, CrdtStore, Document};
    use serde_json::json;

    fn actor(n: u32) -> ActorId {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        bytes[15] = 0xAB;
        ActorId::from_bytes(bytes)
    }

    /// 100,000 operations from 10 remote writers over 20,000 ids (so most ids
    /// are written several times, causally, by one writer or another).
    fn remote_operations() -> Vec<CrdtOperation> {
        let mut writers: Vec<CrdtStore> = (1..=10).map(|n| CrdtStore::new(actor(n))).collect();
        let mut ops = Vec::with_capacity(100_000);
        for i in 0..100_000u64 {
            let writer = &mut writers[(i % 10) as usize];
            let id = format!("doc:{:05}", (i * 7919) % 20_000);
            let data = Document::from_value(&json!({ "n": i, "title": "remote write" })).unwrap();
            ops.push(writer.put(&id, data, 1_700_000_000_000 + i));
        }
        ops
    }

    /// B3.2: `actors` replicas each set every key of a shared set of 10 keys
    /// to an object, without seeing each other.
    fn concurrent_sets(actors: u32) -> Vec<CrdtOperation> {
        let mut ops = Vec::with_capacity(actors as usize * 10);
        for n in 0..actors {
            let mut store = CrdtStore::new(actor(1_000 + n));
            for key in 0..10 {
                let data = Document::from_value(&json!({ "client": n, "key": key })).unwrap();
                ops.push(store.put(
                    &format!("k{key}"),
                    data,
                    1_700_000_000_000 + u64::from(n % 50),
                ));
            }
        }
        ops
    }

    fn apply_all(ops: Vec<CrdtOperation>) -> CrdtStore {
        let mut store = CrdtStore::new(actor(0));
        for op in ops {
            store.apply(op, 1_700_000_100_000);
        }
        store
    }

    pub fn benches(c: &mut Criterion) {
        let ops = remote_operations();
        let mut group = c.benchmark_group("crdt");
        group.sample_size(10);
        group.throughput(Throughput::Elements(ops.len() as u64));
        group.bench_function("apply 100k remote operations", |b| {
            b.iter_batched(|| ops.clone(), apply_all, BatchSize::LargeInput)
        });
        let concurrent = concurrent_sets(1_549);
        group.throughput(Throughput::Elements(concurrent.len() as u64));
        group.bench_function("B3.2: 1549 actors concurrently set 10 keys", |b| {
            b.iter_batched(|| concurrent.clone(), apply_all, BatchSize::LargeInput)
        });
        group.finish();

        let store = apply_all(concurrent);
        assert_eq!(
            store.conflicts("k0").len(),
            1_548,
            "every concurrent set is kept"
        );
    }
}

#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_group!(crdt, native::benches);
#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_main!(crdt);

#[cfg(target_arch = "wasm32")]
fn main() {}
