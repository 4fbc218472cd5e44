//! Secondary indexes on fields (`OpenOptions::indexes`): a query that uses
//! one returns exactly what a scan of every record returns, through local
//! writes, deletes, peers' changes and conflicts, and after reopening; and
//! it reads only the records that can match.
#![cfg(not(target_arch = "wasm32"))]

use pluresdb::crdt::Document;
use pluresdb::storage::{MemoryStorage, SqliteStorage};
use pluresdb::{Database, OpenOptions, Origin, Query};
use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};
use serde_json::{json, Value};

fn indexed() -> OpenOptions {
    OpenOptions {
        indexes: vec!["category".into(), "score".into(), "flag".into()],
        ..OpenOptions::default()
    }
}

/// Deterministic random choices (proptest's seeded generator), so a
/// failure replays.
struct Random(TestRng);

impl Random {
    fn new() -> Self {
        Self(TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Field values of every kind, including the edge cases of the query's
/// comparison rules: numbers as integers and floats, -0.0, integers
/// beyond 2^53, strings that look like numbers or hold NUL (which the
/// index's encoding escapes), arrays and objects.
fn values() -> Vec<Value> {
    vec![
        json!("a"),
        json!("b"),
        json!("c"),
        json!("b "),
        json!(""),
        json!("a\u{0}"),
        json!("a\u{0}b"),
        json!("\u{0}"),
        json!("a\u{1}"),
        json!("3"),
        json!(1),
        json!(1.0),
        json!(2.5),
        json!(-3),
        json!(0),
        json!(-0.0),
        json!(9_007_199_254_740_993_u64),
        json!(9_007_199_254_740_992_u64),
        json!(true),
        json!(false),
        json!(null),
        json!(["a"]),
        json!({ "a": 1 }),
    ]
}

fn random_document(random: &mut Random, values: &[Value]) -> Value {
    let mut document = serde_json::Map::new();
    for field in ["category", "score", "flag", "other"] {
        if random.below(5) > 0 {
            document.insert(field.into(), random.pick(values).clone());
        }
    }
    Value::Object(document)
}

fn random_query(random: &mut Random, values: &[Value]) -> Query {
    let fields = ["category", "score", "flag", "other"];
    // Range operators take numbers, strings and booleans.
    let ordered: Vec<Value> = values
        .iter()
        .filter(|value| value.is_number() || value.is_string() || value.is_boolean())
        .cloned()
        .collect();
    let values_for = |random: &mut Random| random.pick(&ordered).clone();
    let mut conditions = serde_json::Map::new();
    for _ in 0..=random.below(3) {
        let field = *random.pick(&fields);
        let value = random.pick(values).clone();
        let condition = match random.below(9) {
            0 => value,
            1 => json!({ "$in": [value, random.pick(values).clone()] }),
            2 => json!({ "$gt": values_for(random) }),
            3 => json!({ "$gte": values_for(random) }),
            4 => json!({ "$lt": values_for(random) }),
            5 => json!({ "$lte": values_for(random), "$gte": values_for(random) }),
            6 => json!({ "$ne": value }),
            7 => json!({ "$exists": random.below(2) == 0 }),
            _ => {
                json!({ "$gt": values_for(random), "$lt": values_for(random), "$gte": values_for(random) })
            }
        };
        conditions.insert(field.into(), condition);
    }
    let mut query = json!({ "where": conditions });
    if random.below(3) == 0 {
        query["prefix"] = json!(format!("k{}", random.below(3)));
    }
    if random.below(3) == 0 {
        query["sort"] = json!(["-score", "category"]);
    }
    if random.below(4) == 0 {
        query["limit"] = json!(random.below(10));
    }
    Query::from_json(&query).expect("a valid query")
}

/// What a scan of every live record returns for `query`.
async fn scanned<S: pluresdb::storage::Storage>(
    db: &Database<S>,
    query: &Query,
) -> Vec<(String, Value)> {
    let page = db.list(&Default::default()).await.unwrap();
    let all: Vec<(String, Document)> = page.items;
    query
        .run(all.iter().map(|(id, document)| (id.as_str(), document)))
        .into_iter()
        .map(|(id, document)| (id, document.to_value()))
        .collect()
}

async fn queried<S: pluresdb::storage::Storage>(
    db: &Database<S>,
    query: &Query,
) -> (Vec<(String, Value)>, pluresdb::QueryPlan) {
    let (hits, plan) = db.query_with_plan(query).await.unwrap();
    let hits = hits
        .into_iter()
        .map(|(id, document)| (id, document.to_value()))
        .collect();
    (hits, plan)
}

#[tokio::test]
async fn indexed_queries_return_what_a_scan_returns() {
    let values = values();
    let mut random = Random::new();
    let storage = MemoryStorage::new();
    let db = Database::open(storage.clone(), indexed()).await.unwrap();
    let peer = Database::open(MemoryStorage::new(), OpenOptions::default())
        .await
        .unwrap();
    let mut used_index = 0;
    for step in 0..600 {
        let id = format!("k{}{}", random.below(3), random.below(40));
        match random.below(10) {
            0 => {
                db.delete(&id).await.unwrap();
            }
            // A peer writes the same ids (concurrently with local writes:
            // conflicts), and its changes arrive now and then.
            1..=3 => {
                peer.put(&id, random_document(&mut random, &values))
                    .await
                    .unwrap();
            }
            _ => db
                .put(&id, random_document(&mut random, &values))
                .await
                .unwrap(),
        }
        if step % 25 == 0 {
            let ops = peer.changes_since(&db.version_vector()).await.unwrap();
            db.apply_remote(ops, Origin::Peer("peer".into()), None)
                .await
                .unwrap();
        }
        for _ in 0..4 {
            let query = random_query(&mut random, &values);
            let (hits, plan) = queried(&db, &query).await;
            assert_eq!(
                hits,
                scanned(&db, &query).await,
                "step {step}: {query:?} ({plan:?})"
            );
            used_index += usize::from(plan.index.is_some());
        }
    }
    assert!(
        used_index > 1000,
        "the index was used by {used_index} queries of 2,400"
    );
    // Built in one pass when the database opens again, the indexes answer
    // the same.
    db.close().await.unwrap();
    drop(db);
    let db = Database::open(storage, indexed()).await.unwrap();
    let mut used_index = 0;
    for _ in 0..400 {
        let query = random_query(&mut random, &values);
        let (hits, plan) = queried(&db, &query).await;
        assert_eq!(
            hits,
            scanned(&db, &query).await,
            "reopened: {query:?} ({plan:?})"
        );
        used_index += usize::from(plan.index.is_some());
    }
    assert!(
        used_index > 150,
        "the rebuilt index was used by {used_index} queries of 400"
    );
}

#[tokio::test]
async fn an_index_reads_only_the_records_that_can_match() {
    let db = Database::open(MemoryStorage::new(), indexed())
        .await
        .unwrap();
    let entries: Vec<(String, Document)> = (0..1000)
        .map(|n| {
            let data = json!({ "category": format!("c{}", n % 10), "score": n, "other": n % 10 });
            (format!("n{n:04}"), Document::from_value(&data).unwrap())
        })
        .collect();
    db.put_many(entries).await.unwrap();
    let query = |q: Value| Query::from_json(&q).unwrap();

    let equal = query(json!({ "where": { "category": "c3" } }));
    let (hits, plan) = db.query_with_plan(&equal).await.unwrap();
    assert_eq!(hits.len(), 100);
    assert_eq!(plan.index.as_deref(), Some("category"));
    assert_eq!(plan.reads, 100);
    assert_eq!(db.explain(&equal).unwrap(), plan);

    // The narrower of two conditions decides.
    let both =
        query(json!({ "where": { "category": "c3", "score": { "$gte": 900, "$lt": 950 } } }));
    let (hits, plan) = db.query_with_plan(&both).await.unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!((plan.index.as_deref(), plan.reads), (Some("score"), 50));

    // `$in`, and a prefix narrows the candidates further.
    let any = query(json!({ "prefix": "n00", "where": { "category": { "$in": ["c1", "c2"] } } }));
    let (hits, plan) = db.query_with_plan(&any).await.unwrap();
    assert_eq!(hits.len(), 20);
    assert_eq!((plan.index.as_deref(), plan.reads), (Some("category"), 20));

    // A long `$in` of repeated values lists each record once; past
    // MAX_IN_OPERANDS it is refused (a scan compares every value with
    // every record).
    let repeated: Vec<Value> = (0..pluresdb::query::MAX_IN_OPERANDS)
        .map(|n| json!(format!("c{}", n % 2)))
        .collect();
    let (hits, plan) = db
        .query_with_plan(&query(
            json!({ "where": { "category": { "$in": repeated } } }),
        ))
        .await
        .unwrap();
    assert_eq!((hits.len(), plan.reads), (200, 200));
    let too_many: Vec<Value> = (0..=pluresdb::query::MAX_IN_OPERANDS)
        .map(|n| json!(n))
        .collect();
    let refused = Query::from_json(&json!({ "where": { "score": { "$in": too_many } } }));
    assert!(refused.unwrap_err().to_string().contains("at most 10000"));

    // A range only matches its operand's type: no string is `> 5`.
    let typed = query(json!({ "where": { "category": { "$gt": 5 } } }));
    assert_eq!(db.query_with_plan(&typed).await.unwrap().1.reads, 0);

    // Fields without an index, and conditions an index cannot answer,
    // scan.
    for scan in [
        json!({ "where": { "other": 3 } }),
        json!({ "where": { "category": { "$ne": "c3" } } }),
        json!({ "where": { "category": { "$exists": true } } }),
    ] {
        let plan = db.explain(&query(scan.clone())).unwrap();
        assert_eq!((plan.index, plan.reads), (None, 1000), "{scan}");
    }

    // Updates and deletes move records between keys.
    db.put("n0003", json!({ "category": "c4" })).await.unwrap();
    db.delete("n0013").await.unwrap();
    let (hits, plan) = db.query_with_plan(&equal).await.unwrap();
    assert_eq!((hits.len(), plan.reads), (98, 98));
    assert!(db
        .query(&query(json!({ "where": { "category": "c4" } })))
        .await
        .unwrap()
        .iter()
        .any(|(id, _)| id == "n0003"));
}

#[tokio::test]
async fn indexes_are_rebuilt_when_a_database_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("indexed.db");
    let db = Database::open(SqliteStorage::open(&path).unwrap(), OpenOptions::default())
        .await
        .unwrap();
    for n in 0..50 {
        db.put(
            &format!("r{n}"),
            json!({ "category": if n % 5 == 0 { "five" } else { "other" } }),
        )
        .await
        .unwrap();
    }
    db.close().await.unwrap();
    drop(db);
    let db = Database::open(SqliteStorage::open(&path).unwrap(), indexed())
        .await
        .unwrap();
    let query = Query::from_json(&json!({ "where": { "category": "five" } })).unwrap();
    let (hits, plan) = db.query_with_plan(&query).await.unwrap();
    assert_eq!(
        (hits.len(), plan.index.as_deref(), plan.reads),
        (10, Some("category"), 10)
    );
    db.close().await.unwrap();
}

#[tokio::test]
async fn bad_index_declarations_are_refused() {
    let open = |indexes: Vec<String>| {
        Database::open(
            MemoryStorage::new(),
            OpenOptions {
                indexes,
                ..OpenOptions::default()
            },
        )
    };
    for (indexes, expected) in [
        (vec![String::new()], "1 to 256 bytes"),
        (vec!["x".repeat(257)], "1 to 256 bytes"),
        (vec!["a".into(), "a".into()], "indexed twice"),
        ((0..33).map(|n| format!("f{n}")).collect(), "at most 32"),
    ] {
        let Err(error) = open(indexes).await else {
            panic!("a bad declaration was accepted");
        };
        let error = error.to_string();
        assert!(error.contains(expected), "{error}");
    }
}
