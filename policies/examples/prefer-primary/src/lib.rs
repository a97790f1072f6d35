//! An example of a recovery policy in Rust, built into a `mend` of its own.
//!
//! [`PreferPrimary`]: when the newest versions of a key tie on their timestamp (two
//! datacenters took a write in the same nanosecond, or a clock was copied), mend's order
//! lets the larger checksum win: deterministic, but arbitrary. This policy lets the
//! primary datacenter's value win instead. Everything else is `dc`: newest wins.
//!
//! `src/main.rs` registers it next to the built-in policies and hands the registry to
//! [`mend_cli::main_with`], so the binary is a whole `mend` with one more policy:
//!
//! ```sh
//! cargo build --release -p mend-prefer-primary
//! MEND_PRIMARY_GROUP=1 target/release/mend-prefer-primary dc -g 1,2,3 --policy prefer-primary
//! ```
//!
//! A policy only decides; the engine validates each decision and carries it out. That is
//! why the primary's value cannot simply be copied over the tie's winner: in mend's order
//! the winner is newer, the engine would refuse the copy (a copy never replaces a newer
//! version) and so would the stores. The policy merges instead: a merge writes a new
//! version, one nanosecond newer than its sources, whose value the policy computes in
//! [`RecoveryPolicy::merge_values`]: here, the primary's value unchanged.

use mend_engine::policy::{Action, KeyState, RecoveryPolicy};
use mend_policies::{DcConfig, DcPolicy};

/// `dc`, except that a timestamp tie between live versions goes to the primary group.
///
/// For one key, if the newest healthy version is live, and the primary group's replica
/// holds a different live version with the same timestamp, the decision is one
/// [`Action::Merge`] with the primary's replica as the only source, into every replica;
/// [`merge_values`](RecoveryPolicy::merge_values) returns the primary's value as it is.
/// The engine writes the merged version one nanosecond newer than the tie, flagged
/// mergeable (as every merged version is), so every replica converges on it and the next
/// decision is empty. A tombstone at the same timestamp still wins: deletes stick.
/// Otherwise the decision is [`DcPolicy`]'s.
#[derive(Debug, Clone)]
pub struct PreferPrimary {
    primary: u32,
    dc: DcPolicy,
}

impl PreferPrimary {
    /// The name `--policy` selects it by.
    pub const NAME: &'static str = "prefer-primary";

    /// The policy with `primary` as the primary group.
    pub fn new(primary: u32) -> Self {
        PreferPrimary {
            primary,
            dc: DcPolicy::new(DcConfig::default()),
        }
    }

    /// The primary group.
    pub fn primary(&self) -> u32 {
        self.primary
    }

    /// The primary's replica, if the key is a tie the primary should win.
    fn tie(&self, key: &KeyState) -> Option<usize> {
        let (_, winner) = key.newest_healthy()?;
        let (index, primary) = key
            .replicas
            .iter()
            .enumerate()
            .find(|(_, r)| r.group == self.primary)?;
        let held = primary.healthy()?;
        let tie = !winner.is_tombstone()
            && !held.is_tombstone()
            && held.timestamp == winner.timestamp
            && held != winner;
        tie.then_some(index)
    }
}

impl RecoveryPolicy for PreferPrimary {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn decide(&self, key: &KeyState) -> Vec<Action> {
        match self.tie(key) {
            Some(primary) => vec![Action::Merge {
                sources: vec![primary],
                to: (0..key.replicas.len()).collect(),
            }],
            None => self.dc.decide(key),
        }
    }

    fn merge_values(&self, key: &KeyState, values: &[&[u8]]) -> Option<Vec<u8>> {
        match self.tie(key) {
            // The one source: the primary's value.
            Some(_) => values.first().map(|v| v.to_vec()),
            None => self.dc.merge_values(key, values),
        }
    }
}

#[cfg(test)]
mod tests {
    use mend_engine::policy::{validate, Replica};
    use mend_engine::{Id, Record, Version};

    use super::*;

    fn key(held: [Option<Version>; 3]) -> KeyState {
        KeyState {
            id: Id::from_key(b"k"),
            replicas: held
                .into_iter()
                .enumerate()
                .map(|(i, version)| Replica {
                    group: i as u32 + 1,
                    node: format!("g{}n1", i + 1),
                    proper: true,
                    record: version.map(|version| Record {
                        version,
                        corrupt: false,
                    }),
                })
                .collect(),
        }
    }

    /// Two values at timestamp 5, the first with the smaller checksum.
    fn tied() -> (Version, Version) {
        let a = Version::of_value(b"a", 5, 0);
        let b = Version::of_value(b"b", 5, 0);
        if a.checksum < b.checksum {
            (a, b)
        } else {
            (b, a)
        }
    }

    #[test]
    fn a_tie_the_primary_loses_in_mends_order_is_merged_into_its_value() {
        let (smaller, larger) = tied();
        let k = key([Some(smaller), Some(larger), None]);
        let policy = PreferPrimary::new(1);
        let actions = policy.decide(&k);
        assert_eq!(
            actions,
            vec![Action::Merge {
                sources: vec![0],
                to: vec![0, 1, 2]
            }]
        );
        validate(&k, &actions).unwrap();
        assert_eq!(policy.merge_values(&k, &[b"mine"]), Some(b"mine".to_vec()));
        // dc alone lets the larger checksum win.
        assert_eq!(
            DcPolicy::new(DcConfig::default()).decide(&k),
            vec![Action::Copy {
                from: 1,
                to: vec![0, 2]
            }]
        );
    }

    #[test]
    fn anything_but_a_live_tie_is_newest_wins() {
        let (smaller, larger) = tied();
        let policy = PreferPrimary::new(1);
        let dc = DcPolicy::new(DcConfig::default());
        for k in [
            // The primary already holds the winner.
            key([Some(larger), Some(smaller), None]),
            // No tie: newer elsewhere.
            key([Some(smaller), Some(Version::of_value(b"c", 6, 0)), None]),
            // A tombstone at the same timestamp wins.
            key([Some(smaller), Some(Version::tombstone(5)), None]),
            // The primary holds nothing.
            key([None, Some(smaller), Some(larger)]),
        ] {
            assert_eq!(policy.decide(&k), dc.decide(&k), "{k:?}");
        }
    }
}
