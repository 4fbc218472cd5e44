//! Native vector search (criterion): PluresDB's HNSW search against exact
//! search over the same vectors with the same dot-product kernel, on 20,000
//! clustered 384-d vectors. Figures are summarised in docs/BENCHMARKS.md.

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use criterion::{Criterion, Throughput};
    use pluresdb::crdt::Document;
    use pluresdb::index::dot;
    use pluresdb::storage::MemoryStorage;
    use pluresdb::{Database, OpenOptions, SearchRequest};

    const COUNT: usize = 20_000;
    const DIMENSION: usize = 384;
    const QUERIES: usize = 100;

    /// A deterministic xorshift generator: the same data on every run.
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 + 0.5) / (1u64 << 24) as f32
        }

        /// A standard normal sample (Box-Muller).
        fn gaussian(&mut self) -> f32 {
            let u = self.uniform();
            let v = self.uniform();
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        }
    }

    fn normalised(mut v: Vec<f32>) -> Vec<f32> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    /// The browser benchmark's shape (`bench/pages/vector.js`): 100 Gaussian
    /// centres, points spread 0.6 around them; queries are stored points
    /// mixed with half of a random direction.
    fn data() -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let centres: Vec<Vec<f32>> = (0..100)
            .map(|_| (0..DIMENSION).map(|_| rng.gaussian()).collect())
            .collect();
        let point = |i: usize, rng: &mut Rng| {
            let centre = &centres[(i * 7919) % centres.len()];
            normalised(centre.iter().map(|c| c + 0.6 * rng.gaussian()).collect())
        };
        let vectors: Vec<Vec<f32>> = (0..COUNT).map(|i| point(i, &mut rng)).collect();
        let queries = (0..QUERIES)
            .map(|i| {
                let other = normalised((0..DIMENSION).map(|_| rng.gaussian()).collect());
                let base = &vectors[(i * 97) % COUNT];
                normalised(base.iter().zip(&other).map(|(b, o)| b + 0.5 * o).collect())
            })
            .collect();
        (vectors, queries)
    }

    /// Exact top-k by dot product over every vector.
    fn exact(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<usize> {
        let mut scored: Vec<(f32, usize)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (dot(v, query), i))
            .collect();
        scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().map(|(_, i)| i).collect()
    }

    pub fn benches(c: &mut Criterion) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (vectors, queries) = data();
        let db = runtime.block_on(async {
            let db = Database::open(MemoryStorage::new(), OpenOptions::default())
                .await
                .unwrap();
            for (chunk_index, chunk) in vectors.chunks(1_000).enumerate() {
                let entries = chunk.iter().enumerate().map(|(i, v)| {
                    let id = format!("v{:05}", chunk_index * 1_000 + i);
                    (
                        id,
                        Document::from_value(&serde_json::json!({})).unwrap(),
                        Some(v.as_slice().into()),
                    )
                });
                db.put_many_with_embeddings(entries).await.unwrap();
            }
            db.flush_index().await.unwrap();
            db
        });

        // Recall@10 of the HNSW search, printed for the report.
        let mut found = 0;
        for query in &queries {
            let truth: Vec<String> = exact(&vectors, query, 10)
                .into_iter()
                .map(|i| format!("v{i:05}"))
                .collect();
            let hits = runtime
                .block_on(db.search(&SearchRequest::vector(query.clone())))
                .unwrap();
            found += hits.iter().filter(|h| truth.contains(&h.id)).count();
        }
        println!(
            "vector: recall@10 {:.3} over {QUERIES} queries; index {:?}",
            found as f64 / (QUERIES * 10) as f64,
            db.index_stats()
        );

        let mut group = c.benchmark_group("vector search 20k x 384");
        group.throughput(Throughput::Elements(QUERIES as u64));
        group.bench_function("pluresdb hnsw (default ef)", |b| {
            b.iter(|| {
                for query in &queries {
                    let hits = runtime
                        .block_on(db.search(&SearchRequest::vector(query.clone())))
                        .unwrap();
                    std::hint::black_box(hits);
                }
            })
        });
        group.bench_function("exact search", |b| {
            b.iter(|| {
                for query in &queries {
                    std::hint::black_box(exact(&vectors, query, 10));
                }
            })
        });
        group.finish();
    }
}

#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_group!(vector, native::benches);
#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_main!(vector);

#[cfg(target_arch = "wasm32")]
fn main() {}
