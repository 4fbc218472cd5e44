//! Native storage, side by side in one run: PluresDB on SQLite against raw
//! rusqlite doing the same work (`putMany` of 100,000 JSON records in one
//! transaction; reading one record by id, from memory and from the file).
//! Figures in docs/BENCHMARKS.md.

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::time::Duration;

    use criterion::{BatchSize, Criterion, Throughput};
    use pluresdb::crdt::Document;
    use pluresdb::storage::SqliteStorage;
    use pluresdb::{Database, OpenOptions};
    use serde_json::{json, Value};

    const RECORDS: usize = 100_000;

    fn documents() -> Vec<(String, Value)> {
        (0..RECORDS)
            .map(|i| {
                (
                    format!("doc:{i:06}"),
                    json!({ "title": format!("Document {i}"), "n": i, "tags": ["a", "b"],
                            "body": "lorem ipsum dolor sit amet ".repeat(4) }),
                )
            })
            .collect()
    }

    /// A raw rusqlite table with the pragmas a user would set (WAL,
    /// synchronous=NORMAL, 64 MB cache). `extra` adds pragmas.
    fn raw_connection(path: &std::path::Path, extra: &str) -> rusqlite::Connection {
        let connection = rusqlite::Connection::open(path).unwrap();
        connection
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                 PRAGMA temp_store = MEMORY; PRAGMA cache_size = -64000; {extra}
                 CREATE TABLE docs (id TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;"
            ))
            .unwrap();
        connection
    }

    fn raw_insert(connection: &mut rusqlite::Connection, docs: &[(String, Value)]) {
        let transaction = connection.transaction().unwrap();
        {
            let mut insert = transaction
                .prepare_cached("INSERT OR REPLACE INTO docs (id, data) VALUES (?1, ?2)")
                .unwrap();
            for (id, value) in docs {
                let text = serde_json::to_string(value).unwrap();
                insert.execute(rusqlite::params![id, text]).unwrap();
            }
        }
        transaction.commit().unwrap();
    }

    pub fn benches(c: &mut Criterion) {
        let docs = documents();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut group = c.benchmark_group("sqlite putMany 100k");
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(20));
        group.throughput(Throughput::Elements(RECORDS as u64));

        for (name, extra) in [
            ("raw rusqlite", ""),
            // PluresDB checkpoints the WAL in the background instead of at
            // commit; this row shows raw SQLite configured the same way.
            (
                "raw rusqlite, no checkpoint at commit",
                "PRAGMA wal_autocheckpoint = 0;",
            ),
        ] {
            group.bench_function(name, |b| {
                b.iter_batched(
                    || {
                        let dir = tempfile::tempdir().unwrap();
                        let connection = raw_connection(&dir.path().join("raw.db"), extra);
                        (dir, connection)
                    },
                    |(dir, mut connection)| {
                        raw_insert(&mut connection, &docs);
                        (dir, connection)
                    },
                    BatchSize::PerIteration,
                )
            });
        }

        // Each PluresDB iteration closes its database outside the timed
        // part, which also waits for its background WAL checkpoint, so one
        // iteration's checkpoint never runs into the next one's timing.
        group.bench_function("pluresdb", |b| {
            b.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let dir = tempfile::tempdir().unwrap();
                    let storage = SqliteStorage::open(dir.path().join("p.db")).unwrap();
                    let db = runtime
                        .block_on(Database::open(storage, OpenOptions::default()))
                        .unwrap();
                    let started = std::time::Instant::now();
                    runtime.block_on(async {
                        let entries = docs
                            .iter()
                            .map(|(id, v)| (id.clone(), Document::from_value(v).unwrap()));
                        db.put_many(entries).await.unwrap();
                    });
                    timed += started.elapsed();
                    runtime.block_on(db.close()).unwrap();
                    drop((db, dir));
                }
                timed
            })
        });
        group.finish();

        // Reads: one record by id, from a populated database.
        let dir = tempfile::tempdir().unwrap();
        let mut connection = raw_connection(&dir.path().join("raw.db"), "");
        raw_insert(&mut connection, &docs);
        let storage = SqliteStorage::open(dir.path().join("p.db")).unwrap();
        let db = runtime
            .block_on(Database::open(storage, OpenOptions::default()))
            .unwrap();
        runtime.block_on(async {
            let entries = docs
                .iter()
                .map(|(id, v)| (id.clone(), Document::from_value(v).unwrap()));
            db.put_many(entries).await.unwrap();
        });
        let mut group = c.benchmark_group("sqlite get by id");
        group.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        group.bench_function("raw rusqlite", |b| {
            let mut select = connection
                .prepare_cached("SELECT data FROM docs WHERE id = ?1")
                .unwrap();
            b.iter(|| {
                i = (i + 7919) % RECORDS;
                let text: String = select
                    .query_row([format!("doc:{i:06}")], |row| row.get(0))
                    .unwrap();
                serde_json::from_str::<Value>(&text).unwrap()
            })
        });
        group.bench_function("pluresdb", |b| {
            b.iter(|| {
                i = (i + 7919) % RECORDS;
                futures::executor::block_on(db.get(&format!("doc:{i:06}")))
                    .unwrap()
                    .unwrap()
            })
        });
        // The same file opened with no document cache: every get reads its
        // row back from SQLite, as for a database far larger than memory.
        runtime.block_on(db.close()).unwrap();
        let storage = SqliteStorage::open(dir.path().join("p.db")).unwrap();
        let uncached = OpenOptions {
            cache_bytes: 0,
            ..OpenOptions::default()
        };
        let db = runtime.block_on(Database::open(storage, uncached)).unwrap();
        group.bench_function("pluresdb, document not in memory", |b| {
            b.iter(|| {
                i = (i + 7919) % RECORDS;
                runtime
                    .block_on(db.get(&format!("doc:{i:06}")))
                    .unwrap()
                    .unwrap()
            })
        });
        group.finish();
    }
}

#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_group!(storage, native::benches);
#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_main!(storage);

#[cfg(target_arch = "wasm32")]
fn main() {}
