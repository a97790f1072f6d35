//! A plain model of replicas for policy tests: a key state plus the values behind its
//! versions, and what carrying out a decision does to them (what the engine and the
//! stores would do, without either).

#![allow(dead_code)] // Each test file uses part of it.

use std::collections::HashMap;

use mend_engine::policy::{Action, KeyState, RecoveryPolicy, Replica};
use mend_engine::version::{Record, FLAG_MERGEABLE};
use mend_engine::{Id, Version};

/// A key's replicas and the values their versions stand for (by checksum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub key: KeyState,
    pub values: HashMap<[u8; 32], Vec<u8>>,
}

/// What one replica holds, before it becomes a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Absent,
    Live {
        value: Vec<u8>,
        ts: u64,
        mergeable: bool,
        corrupt: bool,
    },
    Tombstone {
        ts: u64,
        corrupt: bool,
    },
}

impl Held {
    pub fn live(value: impl Into<Vec<u8>>, ts: u64) -> Held {
        Held::Live {
            value: value.into(),
            ts,
            mergeable: false,
            corrupt: false,
        }
    }

    pub fn corrupt(self) -> Held {
        match self {
            Held::Live {
                value,
                ts,
                mergeable,
                ..
            } => Held::Live {
                value,
                ts,
                mergeable,
                corrupt: true,
            },
            Held::Tombstone { ts, .. } => Held::Tombstone { ts, corrupt: true },
            Held::Absent => Held::Absent,
        }
    }
}

impl World {
    /// Replicas named `n0`, `n1`, … in group 1; `proper[i]` says which own the key.
    pub fn new(held: &[Held], proper: &[bool]) -> World {
        assert_eq!(held.len(), proper.len());
        let mut values = HashMap::new();
        let replicas = held
            .iter()
            .zip(proper)
            .enumerate()
            .map(|(i, (held, &proper))| {
                let record = match held {
                    Held::Absent => None,
                    Held::Live {
                        value,
                        ts,
                        mergeable,
                        corrupt,
                    } => {
                        let mut version = Version::of_value(value, *ts, 0);
                        if *mergeable {
                            version.flags |= FLAG_MERGEABLE;
                        }
                        values.insert(version.checksum, value.clone());
                        Some(Record {
                            version,
                            corrupt: *corrupt,
                        })
                    }
                    Held::Tombstone { ts, corrupt } => {
                        let version = Version::tombstone(*ts);
                        values.insert(version.checksum, Vec::new());
                        Some(Record {
                            version,
                            corrupt: *corrupt,
                        })
                    }
                };
                Replica {
                    group: 1,
                    node: format!("n{i}"),
                    proper,
                    record,
                }
            })
            .collect();
        World {
            key: KeyState {
                id: Id::from_key(b"key"),
                replicas,
            },
            values,
        }
    }

    /// Every replica a full copy (`dc`).
    pub fn all_proper(held: &[Held]) -> World {
        World::new(held, &vec![true; held.len()])
    }

    /// The newest healthy version, computed from scratch (not through the engine's
    /// `newest_healthy`): the max by `newest_cmp` of every healthy record.
    pub fn winner(&self) -> Option<Version> {
        self.key
            .replicas
            .iter()
            .filter_map(|r| r.record.filter(|rec| !rec.corrupt).map(|rec| rec.version))
            .max_by(|a, b| a.newest_cmp(b))
    }

    /// The world after `actions` (decided by `policy`, which merges) are carried out:
    /// copies and merges read the state before the decision; removals come last, once the
    /// copies are confirmed. Panics where a store would refuse a write as stale.
    pub fn apply(&self, policy: &dyn RecoveryPolicy, actions: &[Action]) -> World {
        let mut next = self.clone();
        let write = |next: &mut World, to: usize, version: Version| {
            let target = &mut next.key.replicas[to];
            if let Some(held) = target.healthy() {
                assert!(
                    !held.is_newer_than(&version),
                    "store refuses {version:?} over {held:?} as stale"
                );
            }
            target.record = Some(Record {
                version,
                corrupt: false,
            });
        };
        for action in actions {
            match action {
                Action::Copy { from, to } => {
                    let version = *self.key.replicas[*from]
                        .healthy()
                        .expect("copy from a healthy replica");
                    for &t in to {
                        write(&mut next, t, version);
                    }
                }
                Action::Merge { sources, to } => {
                    let versions: Vec<Version> = sources
                        .iter()
                        .map(|&s| {
                            *self.key.replicas[s]
                                .healthy()
                                .expect("merge from healthy replicas")
                        })
                        .collect();
                    let inputs: Vec<&[u8]> = versions
                        .iter()
                        .map(|v| self.values[&v.checksum].as_slice())
                        .collect();
                    let merged = policy
                        .merge_values(&self.key, &inputs)
                        .expect("a policy merges what it asked to merge");
                    // The engine stamps the merged version newer than every source.
                    let ts = versions.iter().map(|v| v.timestamp).max().expect("sources") + 1;
                    let mut version = Version::of_value(&merged, ts, 0);
                    version.flags |= FLAG_MERGEABLE;
                    next.values.insert(version.checksum, merged);
                    for &t in to {
                        write(&mut next, t, version);
                    }
                }
                Action::Remove { .. } | Action::Skip { .. } | Action::Unrecoverable { .. } => {}
            }
        }
        for action in actions {
            if let Action::Remove { on, .. } = action {
                for &r in on {
                    next.key.replicas[r].record = None;
                }
            }
        }
        next
    }
}

/// Whether a decision changes anything (a copy, removal or merge).
pub fn changes(actions: &[Action]) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            Action::Copy { .. } | Action::Remove { .. } | Action::Merge { .. }
        )
    })
}

/// The healthy version a replica holds, if any.
pub fn healthy(world: &World, i: usize) -> Option<Version> {
    world.key.replicas[i].healthy().copied()
}

/// Absent, then live and tombstone at timestamps 1, 2, 3: the seven states of the
/// exhaustive tests. Live values depend on the replica when `distinct` (so equal
/// timestamps still differ in checksum), else only on the timestamp (so replicas can
/// hold the very same version).
pub fn seven_states(replica: usize, distinct: bool) -> Vec<Held> {
    let mut states = vec![Held::Absent];
    for ts in 1..=3 {
        let value = if distinct {
            format!("v{ts} on n{replica}")
        } else {
            format!("v{ts}")
        };
        states.push(Held::live(value, ts));
        states.push(Held::Tombstone { ts, corrupt: false });
    }
    states
}

/// The seven states plus corrupt copies: a corrupt live value at 2 and 3, and a corrupt
/// tombstone at 3.
pub fn states_with_corrupt(replica: usize, distinct: bool) -> Vec<Held> {
    let mut states = seven_states(replica, distinct);
    let value = |ts: u64| {
        if distinct {
            format!("c{ts} on n{replica}")
        } else {
            format!("c{ts}")
        }
    };
    states.push(Held::live(value(2), 2).corrupt());
    states.push(Held::live(value(3), 3).corrupt());
    states.push(Held::Tombstone {
        ts: 3,
        corrupt: true,
    });
    states
}

/// Every combination of one state per replica.
pub fn combinations(per_replica: &[Vec<Held>]) -> Vec<Vec<Held>> {
    per_replica.iter().fold(vec![Vec::new()], |acc, states| {
        acc.iter()
            .flat_map(|prefix| {
                states.iter().map(move |s| {
                    let mut next = prefix.clone();
                    next.push(s.clone());
                    next
                })
            })
            .collect()
    })
}
