//! Crash safety on SQLite: a child process writes as fast as it can and
//! prints every write once it is acknowledged; the test kills it with
//! SIGKILL at a random moment, reopens the database, and checks that it
//! opens cleanly and holds every acknowledged write. Many rounds in a row,
//! on the same file.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use pluresdb::crdt::Document;
use pluresdb::storage::SqliteStorage;
use pluresdb::{Database, OpenOptions};
use serde_json::json;

const CHILD_DB: &str = "PLURESDB_CRASH_CHILD_DB";
const CHILD_ROUND: &str = "PLURESDB_CRASH_CHILD_ROUND";
const ROUNDS: u64 = 25;

fn value_for(id: &str) -> serde_json::Value {
    json!({ "id": id, "payload": "x".repeat(200) })
}

/// The child: writes single records from four tasks and batches from a
/// fifth, printing `ack <id>` after each write resolves, until killed.
#[test]
#[ignore = "run as a child process by acknowledged_writes_survive_kill_9"]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let storage = SqliteStorage::open(&path).expect("child opens the file");
        let db = Database::open(storage, OpenOptions::default())
            .await
            .expect("child opens the database");
        let mut tasks = Vec::new();
        for task in 0..5u64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0u64.. {
                    if task == 4 {
                        let ids: Vec<String> =
                            (0..10).map(|i| format!("r{round}-b{n}-{i}")).collect();
                        let batch: Vec<(String, Document)> = ids
                            .iter()
                            .map(|id| (id.clone(), Document::from_value(&value_for(id)).unwrap()))
                            .collect();
                        db.put_many(batch).await.expect("batch commits");
                        let mut out = std::io::stdout().lock();
                        for id in ids {
                            writeln!(out, "ack {id}").unwrap();
                        }
                        out.flush().unwrap();
                    } else {
                        let id = format!("r{round}-t{task}-{n}");
                        db.put(&id, value_for(&id)).await.expect("put commits");
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {id}").unwrap();
                        out.flush().unwrap();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let runtime = tokio::runtime::Runtime::new().unwrap();

    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &path)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().unwrap();
        let (first_ack_tx, first_ack) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("ack ") {
                    if acked.is_empty() {
                        let _ = first_ack_tx.send(());
                    }
                    acked.push(id.to_owned());
                }
            }
            acked
        });
        // Opening the file takes longer as it grows (every record is
        // loaded), so the kill timer starts at the child's first
        // acknowledged write: then it writes for 150-650 ms and is killed
        // mid-flight.
        first_ack
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| {
                panic!("round {round}: the child exited or acknowledged nothing within 120 s")
            });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 500));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let acked_now = reader.join().unwrap();
        for id in acked_now {
            acknowledged.insert(id, round);
        }

        // Reopen: it must open cleanly and hold every acknowledged write.
        runtime.block_on(async {
            let storage = SqliteStorage::open(&path).expect("reopens after SIGKILL");
            assert_eq!(
                storage
                    .query_u64(
                        "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"
                    )
                    .await
                    .unwrap(),
                1,
                "integrity check passes after round {round}"
            );
            let db = Database::open(storage, OpenOptions::default())
                .await
                .unwrap_or_else(|e| panic!("round {round}: database does not open: {e}"));
            for id in acknowledged.keys() {
                assert_eq!(
                    db.get(id).await.unwrap(),
                    Some(value_for(id)),
                    "round {round}: acknowledged write {id} is missing"
                );
            }
            db.close().await.unwrap();
        });
    }
    let last_round = acknowledged.values().filter(|r| **r == ROUNDS - 1).count();
    assert!(
        acknowledged.len() > 500 && last_round > 0,
        "the child wrote too little to prove anything: {} writes",
        acknowledged.len()
    );
    println!(
        "{} acknowledged writes over {ROUNDS} SIGKILLs, all present",
        acknowledged.len()
    );
}
