//! Native embedding speed for `npm run bench` (`bench/suites/embed.mjs`):
//! the built-in models (`minilm`, `minilm-static`) and the hash embedder over the sentences of a
//! file, one per line, `RUNS` times; prints one JSON object.
//!
//! ```text
//! cargo run --release --example embed_speed -- bench/data/corpus.txt 1000 5
//! ```

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use std::time::Instant;

    use pluresdb::index::{HashEmbedder, MiniLmEmbedder, StaticEmbedder};

    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map_or("bench/data/corpus.txt", String::as_str);
    let count: usize = args.get(2).map_or(1000, |a| a.parse().expect("a count"));
    let runs: usize = args.get(3).map_or(5, |a| a.parse().expect("a run count"));
    let text = std::fs::read_to_string(path).expect("read the sentences");
    // The held-out queries' lines (the last ones), as the browser suite uses.
    let lines: Vec<&str> = text.lines().collect();
    let sentences = &lines[lines.len().saturating_sub(count)..];
    let start = Instant::now();
    let model = StaticEmbedder::built_in();
    let load_ms = start.elapsed().as_secs_f64() * 1000.0;
    let hash = HashEmbedder::new(256);
    let start = Instant::now();
    let exact = MiniLmEmbedder::built_in();
    let exact_load_ms = start.elapsed().as_secs_f64() * 1000.0;
    let owned: Vec<String> = sentences.iter().map(|s| s.to_string()).collect();
    let mut exact_rates = Vec::new();
    let mut static_rates = Vec::new();
    let mut hash_rates = Vec::new();
    exact
        .embed_now(&owned[..owned.len().min(64)])
        .expect("warm up");
    for _ in 0..runs {
        let start = Instant::now();
        std::hint::black_box(exact.embed_now(&owned).expect("embed"));
        exact_rates.push(sentences.len() as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for sentence in sentences {
            std::hint::black_box(model.embed_text(sentence));
        }
        static_rates.push(sentences.len() as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        for sentence in sentences {
            std::hint::black_box(hash.embed_text(sentence));
        }
        hash_rates.push(sentences.len() as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({
            "loadMs": load_ms, "static": static_rates, "hash": hash_rates,
            "exactLoadMs": exact_load_ms, "exact": exact_rates,
        })
    );
}
