use super::*;

/// `count` unit vectors of `dim` around `clusters` centres (xorshift,
/// deterministic per seed).
fn clustered(count: usize, dim: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 20_001) as f32 / 10_000.0 - 1.0
    };
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| next()).collect())
        .collect();
    (0..count)
        .map(|i| {
            let centre = &centres[i % clusters];
            let v: Vec<f32> = centre.iter().map(|c| c + 0.5 * next()).collect();
            let norm = dot(&v, &v).sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect()
}

fn exact_top(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<u32> {
    let mut scored: Vec<(f32, u32)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (1.0 - dot(v, query), i as u32))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, i)| i).collect()
}

fn build(vectors: &[Vec<f32>], params: Params) -> Hnsw {
    let mut graph = Hnsw::new(vectors[0].len(), params);
    for v in vectors {
        graph.insert(v);
    }
    graph
}

fn recall_at_10(graph: &Hnsw, data: &[Vec<f32>], queries: &[Vec<f32>], ef: usize) -> f64 {
    let mut scratch = Scratch::default();
    let mut hits = 0;
    for query in queries {
        let truth = exact_top(data, query, 10);
        let mut found = Vec::new();
        graph.search(
            &Quantized::new(query),
            ef,
            |_| true,
            &mut scratch,
            &mut found,
        );
        // Re-score exactly, as the index does.
        let mut exact: Vec<(f32, u32)> = found
            .iter()
            .map(|s| (1.0 - dot(&data[s.node as usize], query), s.node))
            .collect();
        exact.sort_by(|a, b| a.0.total_cmp(&b.0));
        hits += exact
            .iter()
            .take(10)
            .filter(|(_, n)| truth.contains(n))
            .count();
    }
    hits as f64 / (10 * queries.len()) as f64
}

#[test]
fn finds_the_true_neighbours_of_clustered_data() {
    let data = clustered(3000, 48, 30, 7);
    let queries = clustered(100, 48, 30, 99);
    let graph = build(&data, Params::default());
    let narrow = recall_at_10(&graph, &data, &queries, 10);
    let wide = recall_at_10(&graph, &data, &queries, 100);
    assert!(wide >= 0.97, "recall@10 at ef 100 is {wide}");
    assert!(narrow <= wide, "a wider search never finds less");
    // Every node is reachable: searching for a stored vector finds it.
    let mut scratch = Scratch::default();
    for (i, v) in data.iter().enumerate().step_by(97) {
        let mut found = Vec::new();
        graph.search(&Quantized::new(v), 20, |_| true, &mut scratch, &mut found);
        assert!(found.iter().any(|s| s.node as usize == i), "node {i} lost");
    }
}

#[test]
fn the_breadth_is_chosen_per_query() {
    let data = clustered(2000, 32, 20, 3);
    let graph = build(&data, Params::default());
    let mut scratch = Scratch::default();
    for ef in [1, 5, 10, 16, 64, 300] {
        let mut found = Vec::new();
        graph.search(
            &Quantized::new(&data[5]),
            ef,
            |_| true,
            &mut scratch,
            &mut found,
        );
        assert_eq!(found.len(), ef, "ef {ef}");
        assert!(found.windows(2).all(|w| w[0] <= w[1]), "nearest first");
    }
}

#[test]
fn dead_nodes_are_walked_through_but_never_returned() {
    let data = clustered(1500, 32, 10, 11);
    let graph = build(&data, Params::default());
    let mut scratch = Scratch::default();
    // Kill nine nodes in ten: the search still returns `ef` live ones.
    let live = |node: u32| node.is_multiple_of(10);
    let mut found = Vec::new();
    graph.search(
        &Quantized::new(&data[3]),
        20,
        live,
        &mut scratch,
        &mut found,
    );
    assert_eq!(found.len(), 20);
    assert!(found.iter().all(|s| live(s.node)));
    let truth: Vec<u32> = exact_top(&data, &data[3], 1500)
        .into_iter()
        .filter(|n| live(*n))
        .take(5)
        .collect();
    let returned: Vec<u32> = found.iter().take(5).map(|s| s.node).collect();
    let common = truth.iter().filter(|n| returned.contains(n)).count();
    assert!(common >= 4, "{returned:?} against {truth:?}");
}

#[test]
fn building_is_deterministic_and_round_trips() {
    let data = clustered(600, 24, 6, 5);
    let a = build(&data, Params::default());
    let b = build(&data, Params::default());
    let (mut encoded_a, mut encoded_b) = (Vec::new(), Vec::new());
    a.encode(&mut encoded_a);
    b.encode(&mut encoded_b);
    assert_eq!(encoded_a, encoded_b, "same points, same graph");
    let (mut decoded, read) = Hnsw::decode(&encoded_a).unwrap();
    assert_eq!(read, encoded_a.len());
    let mut again = Vec::new();
    decoded.encode(&mut again);
    assert_eq!(again, encoded_a);
    // A decoded graph keeps growing exactly like the original.
    let more = clustered(50, 24, 6, 77);
    let mut original = a.clone();
    for v in &more {
        original.insert(v);
        decoded.insert(v);
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    original.encode(&mut x);
    decoded.encode(&mut y);
    assert_eq!(x, y);
}

#[test]
fn corrupt_encodings_are_refused_not_trusted() {
    let data = clustered(300, 16, 4, 9);
    let graph = build(&data, Params::default());
    let mut bytes = Vec::new();
    graph.encode(&mut bytes);
    for cut in [0, 1, 10, 30, bytes.len() / 2, bytes.len() - 1] {
        assert!(Hnsw::decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    // Flip every byte in turn (a sample): decoding either fails or gives a
    // graph whose searches stay in bounds.
    let mut scratch = Scratch::default();
    for at in (0..bytes.len()).step_by(7) {
        let mut corrupt = bytes.clone();
        corrupt[at] ^= 0xA5;
        if let Ok((decoded, _)) = Hnsw::decode(&corrupt) {
            let mut found = Vec::new();
            decoded.search(
                &Quantized::new(&data[0]),
                10,
                |_| true,
                &mut scratch,
                &mut found,
            );
        }
    }
    let header = 1 + 4 * 5 + 1 + 8;
    let first_link = header + 300 + 300 * 4 + 300 * 16 + 4;
    let mut wild = bytes.clone();
    wild[first_link..first_link + 4].copy_from_slice(&9999u32.to_le_bytes());
    assert!(Hnsw::decode(&wild).is_err(), "a link past the last node");
}

#[test]
fn an_empty_graph_and_tiny_graphs_answer() {
    let mut scratch = Scratch::default();
    let mut graph = Hnsw::new(3, Params::default());
    let mut found = Vec::new();
    graph.search(
        &Quantized::new(&[1.0, 0.0, 0.0]),
        5,
        |_| true,
        &mut scratch,
        &mut found,
    );
    assert!(found.is_empty());
    graph.insert(&[1.0, 0.0, 0.0]);
    graph.insert(&[0.0, 1.0, 0.0]);
    graph.search(
        &Quantized::new(&[0.9, 0.1, 0.0]),
        5,
        |_| true,
        &mut scratch,
        &mut found,
    );
    assert_eq!(found.iter().map(|s| s.node).collect::<Vec<_>>(), vec![0, 1]);
    let mut bytes = Vec::new();
    Hnsw::new(3, Params::default()).encode(&mut bytes);
    assert_eq!(Hnsw::decode(&bytes).unwrap().0.len(), 0);
}
