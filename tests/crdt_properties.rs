//! Property tests of the CRDT core.
//!
//! - Convergence: 3-5 replicas with skewed wall clocks make random puts and
//!   deletes on a few shared ids; the network reorders, duplicates and drops
//!   their live operations; a final `changes_since` resync between all pairs
//!   must leave every replica byte-identical.
//! - Merge is commutative, associative and idempotent, checked on versions
//!   produced by such simulated histories.
#![cfg(not(target_arch = "wasm32"))]

use pluresdb::crdt::{ActorId, CrdtOperation, CrdtStore, Document, Record};
use proptest::prelude::*;
use serde_json::json;

const IDS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Action {
    /// Replica writes (or deletes) an id, after its clock advanced.
    Write {
        replica: usize,
        id: usize,
        delete: bool,
        value: u16,
        advance_ms: u16,
    },
    /// Deliver one in-flight message (chosen at random: reordering).
    Deliver { pick: usize },
    /// Put a copy of an in-flight message back in flight (duplication).
    Duplicate { pick: usize },
    /// Lose an in-flight message.
    Drop { pick: usize },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0usize..5, 0usize..IDS.len(), prop::bool::weighted(0.25), any::<u16>(), 0u16..2000)
            .prop_map(|(replica, id, delete, value, advance_ms)| Action::Write {
                replica, id, delete, value, advance_ms,
            }),
        4 => any::<usize>().prop_map(|pick| Action::Deliver { pick }),
        1 => any::<usize>().prop_map(|pick| Action::Duplicate { pick }),
        1 => any::<usize>().prop_map(|pick| Action::Drop { pick }),
    ]
}

struct Replica {
    store: CrdtStore,
    /// This replica's wall clock is off by this much (skew).
    skew_ms: i64,
}

struct Simulation {
    replicas: Vec<Replica>,
    /// Messages in flight: (target replica, operation).
    in_flight: Vec<(usize, CrdtOperation)>,
    /// Every operation ever issued.
    issued: Vec<CrdtOperation>,
    true_time_ms: u64,
}

impl Simulation {
    fn new(skews: &[i64]) -> Self {
        let replicas = skews
            .iter()
            .enumerate()
            .map(|(i, skew)| {
                let mut bytes = [0u8; 16];
                bytes[0] = i as u8 + 1;
                Replica {
                    store: CrdtStore::new(ActorId::from_bytes(bytes)),
                    skew_ms: *skew,
                }
            })
            .collect();
        Self {
            replicas,
            in_flight: Vec::new(),
            issued: Vec::new(),
            true_time_ms: 1_700_000_000_000,
        }
    }

    fn local_time(&self, replica: usize) -> u64 {
        (self.true_time_ms as i64 + self.replicas[replica].skew_ms) as u64
    }

    fn run(&mut self, actions: &[Action]) {
        for action in actions {
            match *action {
                Action::Write {
                    replica,
                    id,
                    delete,
                    value,
                    advance_ms,
                } => {
                    let replica = replica % self.replicas.len();
                    self.true_time_ms += u64::from(advance_ms);
                    let now = self.local_time(replica);
                    let store = &mut self.replicas[replica].store;
                    let op = if delete {
                        store.delete(IDS[id], now)
                    } else {
                        let data =
                            Document::from_value(&json!({ "v": value, "by": replica })).unwrap();
                        Some(store.put(IDS[id], data, now))
                    };
                    if let Some(op) = op {
                        for target in 0..self.replicas.len() {
                            if target != replica {
                                self.in_flight.push((target, op.clone()));
                            }
                        }
                        self.issued.push(op);
                    }
                }
                Action::Deliver { pick } => {
                    if !self.in_flight.is_empty() {
                        let (target, op) = self.in_flight.remove(pick % self.in_flight.len());
                        let now = self.local_time(target);
                        self.replicas[target].store.apply(op, now);
                    }
                }
                Action::Duplicate { pick } => {
                    if !self.in_flight.is_empty() {
                        let copy = self.in_flight[pick % self.in_flight.len()].clone();
                        self.in_flight.push(copy);
                    }
                }
                Action::Drop { pick } => {
                    if !self.in_flight.is_empty() {
                        self.in_flight.remove(pick % self.in_flight.len());
                    }
                }
            }
        }
    }

    /// Every pair exchanges deltas computed from version vectors.
    fn resync(&mut self) {
        let count = self.replicas.len();
        for source in 0..count {
            for target in 0..count {
                if source == target {
                    continue;
                }
                let seen = self.replicas[target].store.version_vector().clone();
                let delta = self.replicas[source].store.changes_since(&seen);
                let vector = self.replicas[source].store.version_vector().clone();
                let now = self.local_time(target);
                self.replicas[target].store.apply_delta(delta, &vector, now);
            }
        }
    }
}

/// Merges `ops` one by one into a record (None if `ops` is empty).
fn record_of(ops: &[CrdtOperation]) -> Option<Record> {
    let mut iter = ops.iter();
    let first = iter.next()?;
    let mut record = Record::new(first.id.clone(), first.version.clone());
    for op in iter {
        record.merge_version(op.version.clone());
    }
    Some(record)
}

fn merged(a: &Record, b: &Record) -> Record {
    let mut out = a.clone();
    out.merge(b);
    out
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1000,
        // Failing seeds are kept in proptest-regressions/ and replayed first
        // on every run.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/crdt_properties.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn replicas_converge_byte_identical(
        skews in prop::collection::vec(-3_600_000i64..3_600_000, 3..=5),
        actions in prop::collection::vec(action(), 1..160),
    ) {
        let mut simulation = Simulation::new(&skews);
        simulation.run(&actions);
        // Whatever is still in flight is lost; resync must recover it.
        simulation.in_flight.clear();
        simulation.resync();
        let first = simulation.replicas[0].store.state_bytes();
        for (index, replica) in simulation.replicas.iter().enumerate().skip(1) {
            prop_assert_eq!(
                &replica.store.state_bytes(), &first,
                "replica {} differs from replica 0", index
            );
        }
        // Nothing lost: every id's final state is the merge of every version
        // ever written to it.
        for id in IDS {
            let ops: Vec<CrdtOperation> = simulation.issued.iter().filter(|op| &*op.id == id).cloned().collect();
            let expected = record_of(&ops);
            prop_assert_eq!(simulation.replicas[0].store.record(id).cloned(), expected);
        }
        // A second resync has nothing to send.
        for replica in &simulation.replicas {
            let seen = replica.store.version_vector();
            for other in &simulation.replicas {
                prop_assert!(other.store.changes_since(seen).is_empty());
            }
        }
    }

    #[test]
    fn merge_is_commutative(
        skews in prop::collection::vec(-60_000i64..60_000, 3..=5),
        actions in prop::collection::vec(action(), 1..120),
        split in any::<u64>(),
    ) {
        let (a, b, _) = partitions(&skews, &actions, split);
        if let (Some(a), Some(b)) = (a, b) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }
    }

    #[test]
    fn merge_is_associative(
        skews in prop::collection::vec(-60_000i64..60_000, 3..=5),
        actions in prop::collection::vec(action(), 1..120),
        split in any::<u64>(),
    ) {
        let (a, b, c) = partitions(&skews, &actions, split);
        if let (Some(a), Some(b), Some(c)) = (a, b, c) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }
    }

    #[test]
    fn merge_is_idempotent(
        skews in prop::collection::vec(-60_000i64..60_000, 3..=5),
        actions in prop::collection::vec(action(), 1..120),
        split in any::<u64>(),
    ) {
        let (a, b, _) = partitions(&skews, &actions, split);
        if let (Some(a), Some(b)) = (a, b) {
            prop_assert_eq!(merged(&a, &a), a.clone());
            let ab = merged(&a, &b);
            prop_assert_eq!(merged(&ab, &b), ab.clone());
            prop_assert_eq!(merged(&ab, &a), ab);
        }
    }
}

/// Runs a simulation and splits the versions written to the busiest id into
/// three records, by a pseudo-random assignment derived from `split`.
fn partitions(
    skews: &[i64],
    actions: &[Action],
    split: u64,
) -> (Option<Record>, Option<Record>, Option<Record>) {
    let mut simulation = Simulation::new(skews);
    simulation.run(actions);
    let busiest = IDS
        .iter()
        .max_by_key(|id| {
            simulation
                .issued
                .iter()
                .filter(|op| &*op.id == **id)
                .count()
        })
        .unwrap();
    let ops: Vec<&CrdtOperation> = simulation
        .issued
        .iter()
        .filter(|op| &*op.id == *busiest)
        .collect();
    let mut parts: [Vec<CrdtOperation>; 3] = Default::default();
    let mut state = split | 1;
    for op in ops {
        // xorshift: a deterministic spread of versions over the three parts.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        parts[(state % 3) as usize].push(op.clone());
    }
    (
        record_of(&parts[0]),
        record_of(&parts[1]),
        record_of(&parts[2]),
    )
}

#[test]
fn many_concurrent_writers_leave_one_winner_and_all_conflicts() {
    let mut target = CrdtStore::new(ActorId::from_bytes([0xff; 16]));
    let mut ops = Vec::new();
    for writer in 0..100u8 {
        let mut store = CrdtStore::new(ActorId::from_bytes([writer; 16]));
        let data = Document::from_value(&json!(writer)).unwrap();
        ops.push(store.put("k", data, 1_000 + u64::from(writer % 7)));
    }
    for op in ops.iter().rev() {
        target.apply(op.clone(), 2_000);
    }
    let record = target.record("k").unwrap();
    assert_eq!(record.versions().len(), 100);
    // Greatest (hlc, writer): wall 1006 is reached by writers 6, 13, ..., 97.
    assert_eq!(record.data().unwrap().as_str(), "97");
    assert_eq!(target.conflicts("k").len(), 99);
}
