//! Recall@10 against speed of the bare graph on a real embedding set.
//!
//! ```text
//! cargo run --release -p pluresdb-hnsw --example recall -- \
//!     bench/data/corpus-minilm.bin [m] [ef_construction]
//! ```
//!
//! The file is `scripts/generate-corpus-embeddings.py`'s: base and query
//! vectors as half floats and the exact top-100 of every query. Results are
//! re-scored with the exact vectors, as the database does.

use std::time::Instant;

use pluresdb_hnsw::{dot, Hnsw, Params, Quantized, Scratch};

struct Corpus {
    base: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    truth: Vec<Vec<u32>>,
}

fn load(path: &str) -> Corpus {
    let bytes = std::fs::read(path).expect("read the corpus file");
    assert_eq!(&bytes[..8], b"PLDBVEC1", "not a corpus file");
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let (dim, base, queries, k) = (word(8), word(12), word(16), word(20));
    let mut at = 24;
    let mut vectors = |count: usize| -> Vec<Vec<f32>> {
        (0..count)
            .map(|_| {
                let v: Vec<f32> = (0..dim)
                    .map(|i| {
                        let b = at + 2 * i;
                        half::f16::from_le_bytes([bytes[b], bytes[b + 1]]).to_f32()
                    })
                    .collect();
                at += 2 * dim;
                let norm = dot(&v, &v).sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    };
    let base = vectors(base);
    let queries = vectors(queries);
    let truth = (0..queries.len())
        .map(|q| (0..k).map(|i| word(at + 4 * (q * k + i)) as u32).collect())
        .collect();
    Corpus {
        base,
        queries,
        truth,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map_or("bench/data/corpus-minilm.bin", String::as_str);
    let m = args.get(2).map_or(16, |a| a.parse().unwrap());
    let ef_construction = args.get(3).map_or(100, |a| a.parse().unwrap());
    let corpus = load(path);
    let dim = corpus.base[0].len();
    let start = Instant::now();
    let mut graph = Hnsw::new(
        dim,
        Params {
            m,
            ef_construction,
            ..Params::default()
        },
    );
    for v in &corpus.base {
        graph.insert(v);
    }
    let built = start.elapsed().as_secs_f64();
    println!(
        "{} x {dim}: M {m}, ef_construction {ef_construction}: built in {built:.2} s ({:.0}/s), graph {:.1} MiB",
        corpus.base.len(),
        corpus.base.len() as f64 / built,
        graph.heap_bytes() as f64 / (1 << 20) as f64
    );
    let mut scratch = Scratch::default();
    for ef in [10, 16, 24, 32, 48, 64, 96, 128, 256] {
        let mut hits = 0;
        let mut found = Vec::new();
        let start = Instant::now();
        for (query, truth) in corpus.queries.iter().zip(&corpus.truth) {
            found.clear();
            graph.search(
                &Quantized::new(query),
                ef,
                |_| true,
                &mut scratch,
                &mut found,
            );
            let mut exact: Vec<(f32, u32)> = found
                .iter()
                .map(|s| (1.0 - dot(&corpus.base[s.node as usize], query), s.node))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0));
            hits += exact
                .iter()
                .take(10)
                .filter(|(_, n)| truth[..10].contains(n))
                .count();
        }
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "ef {ef:>3}: recall@10 {:.4}, {:.0} QPS",
            hits as f64 / (10 * corpus.queries.len()) as f64,
            corpus.queries.len() as f64 / seconds
        );
    }
}
