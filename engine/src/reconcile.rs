//! Sans-io comparison of replicas by range fingerprints (after negentropy and TicTac AAE).
//!
//! Given two or more replicas of the same id ranges, [`Reconcile`] says what to ask every
//! replica next ([`Round`]) and, fed their answers, descends only into sub-ranges whose
//! fingerprints differ. It ends with the exact list of differing ids and every replica's
//! record of each. It does no I/O and reads no clock: the driver (`engine::compare`) sends
//! the rounds over QUIC, all replicas and all asks of a round at once, so the number of
//! round trips is the depth of the descent plus two, whatever the number of differences.
//!
//! A round asks, all in parallel:
//! - fingerprints of ranges still to descend, each split [`Config::split`] ways;
//! - item summaries (an 8-byte id prefix and an 8-byte hash of id and record) of ranges
//!   small enough to list ([`Config::leaf_items`]);
//! - full records of the items whose summaries differ, by id prefix.
//!
//! Laws (property-tested against a `BTreeMap` model): the result is exactly the set of ids
//! whose records are not identical on every replica ([`differ`]); it does not depend on
//! the order in which replicas or ranges are given.

use std::collections::{BTreeMap, BTreeSet};

use crate::fingerprint::Fingerprint;
use crate::id::{split_range, Id, IdRange};
use crate::version::Record;

/// Tuning of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Parts a differing range is split into per level.
    pub split: u16,
    /// A differing part with at most this many items (on every replica) is listed instead
    /// of split further.
    pub leaf_items: u64,
}

impl Default for Config {
    /// Split 8 ways, list at 16 items: on 1 M ids (`examples/reconcile_vs_negentropy`)
    /// this moves 23 % fewer bytes than 16 and 24 at 1,000 differences, and 12 % fewer at
    /// 100,000, for one more round trip (9 instead of 8); 4 and 8 saves 6 % more for four
    /// more round trips.
    fn default() -> Self {
        Config {
            split: 8,
            leaf_items: 16,
        }
    }
}

/// Differing ids in id order, each with every replica's record (`None`: absent).
pub type Differences = Vec<(Id, Vec<Option<Record>>)>;

/// A summary of one item: the top 64 bits of its id and a 64-bit hash of id and version.
pub type Summary = (u64, u64);

/// The summary of `(id, record)`: built from the same element the record contributes to
/// fingerprints, so a corrupt copy differs from a healthy one and from none.
pub fn summary(id: &Id, record: &Record) -> Summary {
    let element = Fingerprint::record_element(id, record);
    (
        id_prefix(id),
        u64::from_le_bytes(element[..8].try_into().expect("8 bytes")),
    )
}

/// Whether replicas' records of one id differ (a corrupt copy differs from a healthy copy
/// of the same version and from no copy, as in fingerprints).
pub fn differ(records: &[Option<Record>]) -> bool {
    records.iter().any(|r| *r != records[0])
}

/// The top 64 bits of an id.
pub fn id_prefix(id: &Id) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().expect("8 bytes"))
}

/// What to ask every replica in one round. Empty parts are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Fingerprints of these ranges, each split `split` ways.
    pub fingerprints: Vec<IdRange>,
    /// Parts per range for `fingerprints`.
    pub split: u16,
    /// Item summaries of these ranges.
    pub summaries: Vec<IdRange>,
    /// Full records of items in these ranges whose id prefix is listed.
    pub records: Vec<(IdRange, Vec<u64>)>,
}

impl Round {
    /// Whether the round asks nothing.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty() && self.summaries.is_empty() && self.records.is_empty()
    }
}

/// One replica's answers to a [`Round`], in the order asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    /// `split` fingerprints per asked range.
    pub fingerprints: Vec<Fingerprint>,
    /// The summaries of each asked range, in id order.
    pub summaries: Vec<Vec<Summary>>,
    /// The records found for each asked (range, prefixes).
    pub records: Vec<Vec<(Id, Record)>>,
}

/// An answer that does not fit the question.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replica {replica} answered {got} {what}, {expected} were asked for")]
pub struct AnswerMismatch {
    /// Which replica.
    pub replica: usize,
    /// What part of the answer.
    pub what: &'static str,
    /// How many were asked for.
    pub expected: usize,
    /// How many came.
    pub got: usize,
}

/// Counts of a comparison, for reports and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompareStats {
    /// Rounds asked (round trips, all replicas in parallel).
    pub rounds: u64,
    /// Ranges whose fingerprints were asked.
    pub ranges_fingerprinted: u64,
    /// Ranges listed as summaries.
    pub ranges_listed: u64,
}

/// A comparison in progress. See the module docs.
#[derive(Debug)]
pub struct Reconcile {
    config: Config,
    replicas: usize,
    next: Round,
    asked: Option<Round>,
    differences: BTreeMap<Id, Vec<Option<Record>>>,
    stats: CompareStats,
}

impl Reconcile {
    /// Compares `replicas` replicas (at least one) over `ranges`.
    pub fn new(ranges: Vec<IdRange>, replicas: usize, config: Config) -> Reconcile {
        let config = Config {
            split: config.split.max(2),
            leaf_items: config.leaf_items.max(1),
        };
        Reconcile {
            config,
            replicas: replicas.max(1),
            // The first round asks each whole range's fingerprint: one small round when
            // the replicas agree.
            next: Round {
                fingerprints: ranges.into_iter().filter(|r| !r.is_empty()).collect(),
                split: 1,
                ..Round::default()
            },
            asked: None,
            differences: BTreeMap::new(),
            stats: CompareStats::default(),
        }
    }

    /// The next round to ask every replica, or `None` when the comparison is complete.
    pub fn next_round(&mut self) -> Option<Round> {
        assert!(self.asked.is_none(), "answer the previous round first");
        if self.next.is_empty() {
            return None;
        }
        let round = std::mem::replace(
            &mut self.next,
            Round {
                split: self.config.split,
                ..Round::default()
            },
        );
        self.stats.rounds += 1;
        self.stats.ranges_fingerprinted += round.fingerprints.len() as u64;
        self.stats.ranges_listed += round.summaries.len() as u64;
        self.asked = Some(round.clone());
        Some(round)
    }

    /// Takes every replica's answers to the round last returned by [`Reconcile::next_round`].
    pub fn answer(&mut self, answers: Vec<Answers>) -> Result<(), AnswerMismatch> {
        let round = self.asked.take().expect("a round was asked");
        self.check(&round, &answers)?;
        self.take_fingerprints(&round, &answers);
        self.take_summaries(&round, &answers);
        self.take_records(&answers);
        Ok(())
    }

    fn check(&self, round: &Round, answers: &[Answers]) -> Result<(), AnswerMismatch> {
        if answers.len() != self.replicas {
            return Err(AnswerMismatch {
                replica: answers.len(),
                what: "replica answers",
                expected: self.replicas,
                got: answers.len(),
            });
        }
        for (replica, a) in answers.iter().enumerate() {
            let checks = [
                (
                    "fingerprints",
                    round.fingerprints.len() * usize::from(round.split),
                    a.fingerprints.len(),
                ),
                ("summary lists", round.summaries.len(), a.summaries.len()),
                ("record lists", round.records.len(), a.records.len()),
            ];
            for (what, expected, got) in checks {
                if expected != got {
                    return Err(AnswerMismatch {
                        replica,
                        what,
                        expected,
                        got,
                    });
                }
            }
        }
        Ok(())
    }

    fn take_fingerprints(&mut self, round: &Round, answers: &[Answers]) {
        let split = usize::from(round.split);
        for (i, range) in round.fingerprints.iter().enumerate() {
            let parts = if split == 1 {
                vec![*range]
            } else {
                split_range(range, round.split)
            };
            for (j, part) in parts.into_iter().enumerate() {
                let fps: Vec<&Fingerprint> = answers
                    .iter()
                    .map(|a| &a.fingerprints[i * split + j])
                    .collect();
                if fps.iter().all(|f| *f == fps[0]) {
                    continue;
                }
                let most = fps.iter().map(|f| f.count).max().unwrap_or(0);
                // A part that cannot be split further is listed whatever its size.
                let splittable = split_range(&part, self.config.split)
                    .iter()
                    .filter(|p| !p.is_empty())
                    .count()
                    > 1;
                if most <= self.config.leaf_items || !splittable {
                    self.next.summaries.push(part);
                } else {
                    self.next.fingerprints.push(part);
                }
            }
        }
    }

    fn take_summaries(&mut self, round: &Round, answers: &[Answers]) {
        for (i, range) in round.summaries.iter().enumerate() {
            // For each id prefix, the summaries each replica holds.
            let mut by_prefix: BTreeMap<u64, Vec<BTreeSet<u64>>> = BTreeMap::new();
            for (r, a) in answers.iter().enumerate() {
                for (prefix, hash) in &a.summaries[i] {
                    by_prefix
                        .entry(*prefix)
                        .or_insert_with(|| vec![BTreeSet::new(); self.replicas])[r]
                        .insert(*hash);
                }
            }
            let differing: Vec<u64> = by_prefix
                .into_iter()
                .filter(|(_, sets)| sets.iter().any(|s| *s != sets[0]))
                .map(|(p, _)| p)
                .collect();
            if !differing.is_empty() {
                self.next.records.push((*range, differing));
            }
        }
    }

    fn take_records(&mut self, answers: &[Answers]) {
        let mut found: BTreeMap<Id, Vec<Option<Record>>> = BTreeMap::new();
        for (r, a) in answers.iter().enumerate() {
            for (id, record) in a.records.iter().flatten() {
                found
                    .entry(*id)
                    .or_insert_with(|| vec![None; self.replicas])[r] = Some(*record);
            }
        }
        // Items that merely share a prefix with a differing one are dropped here.
        for (id, records) in found {
            if differ(&records) {
                self.differences.insert(id, records);
            }
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> CompareStats {
        self.stats
    }

    /// Whether the comparison is complete.
    pub fn is_done(&self) -> bool {
        self.asked.is_none() && self.next.is_empty()
    }

    /// The differing ids, in id order, with every replica's record (`None`: absent).
    pub fn into_differences(self) -> Differences {
        self.differences.into_iter().collect()
    }
}

/// Answers a [`Round`] from one replica's items, given in id order: the reference
/// implementation of what a node computes, used by tests and by in-process models.
pub fn answer_from_items(round: &Round, items: &BTreeMap<Id, Record>) -> Answers {
    let in_range = |r: &IdRange| {
        let upper = match r.end {
            Some(e) => std::ops::Bound::Excluded(e),
            None => std::ops::Bound::Unbounded,
        };
        items.range((std::ops::Bound::Included(r.start), upper))
    };
    let mut answers = Answers::default();
    for range in &round.fingerprints {
        let parts = if round.split == 1 {
            vec![*range]
        } else {
            split_range(range, round.split)
        };
        for part in parts {
            let mut fp = Fingerprint::EMPTY;
            for (id, record) in in_range(&part) {
                fp.insert_record(id, record);
            }
            answers.fingerprints.push(fp);
        }
    }
    for range in &round.summaries {
        answers
            .summaries
            .push(in_range(range).map(|(i, r)| summary(i, r)).collect());
    }
    for (range, prefixes) in &round.records {
        let wanted: BTreeSet<u64> = prefixes.iter().copied().collect();
        answers.records.push(
            in_range(range)
                .filter(|(i, _)| wanted.contains(&id_prefix(i)))
                .map(|(i, r)| (*i, *r))
                .collect(),
        );
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;
    use proptest::prelude::*;

    fn run(replicas: &[BTreeMap<Id, Record>], config: Config) -> (Differences, CompareStats) {
        let mut rec = Reconcile::new(vec![IdRange::ALL], replicas.len(), config);
        while let Some(round) = rec.next_round() {
            let answers = replicas
                .iter()
                .map(|items| answer_from_items(&round, items))
                .collect();
            rec.answer(answers).unwrap();
        }
        let stats = rec.stats();
        (rec.into_differences(), stats)
    }

    fn model_differences(replicas: &[BTreeMap<Id, Record>]) -> Differences {
        let ids: BTreeSet<Id> = replicas.iter().flat_map(|r| r.keys().copied()).collect();
        ids.into_iter()
            .map(|id| {
                (
                    id,
                    replicas
                        .iter()
                        .map(|r| r.get(&id).copied())
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, rs)| differ(rs))
            .collect()
    }

    fn record(ts: u64, tomb: bool, corrupt: bool) -> Record {
        let version = if tomb {
            Version::tombstone(ts)
        } else {
            Version::of_value(&ts.to_le_bytes(), ts, 0)
        };
        Record { version, corrupt }
    }

    /// A base set shared by every replica, then per-replica edits.
    fn replicas() -> impl Strategy<Value = Vec<BTreeMap<Id, Record>>> {
        let edit = (0u32..400, 0u64..3, any::<bool>(), 0u8..10);
        (
            2usize..4,
            0u32..400,
            proptest::collection::vec(proptest::collection::vec(edit, 0..12), 3),
        )
            .prop_map(|(n, base, edits)| {
                let common: BTreeMap<Id, Record> = (0..base)
                    .map(|k| (Id::from_key(&k.to_le_bytes()), record(1, false, false)))
                    .collect();
                edits
                    .into_iter()
                    .take(n)
                    .map(|es| {
                        let mut m = common.clone();
                        for (k, ts, tomb, what) in es {
                            let id = Id::from_key(&k.to_le_bytes());
                            match what {
                                0 => {
                                    m.remove(&id);
                                }
                                1 => {
                                    if let Some(r) = m.get_mut(&id) {
                                        r.corrupt = true;
                                    }
                                }
                                _ => {
                                    m.insert(id, record(ts + 2, tomb, false));
                                }
                            }
                        }
                        m
                    })
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn finds_exactly_the_model_differences(reps in replicas(), leaf in 1u64..40) {
            let config = Config { split: 16, leaf_items: leaf };
            let (found, _) = run(&reps, config);
            prop_assert_eq!(found, model_differences(&reps));
        }

        #[test]
        fn replica_order_does_not_matter(reps in replicas()) {
            let (a, _) = run(&reps, Config::default());
            let mut rev = reps.clone();
            rev.reverse();
            let (b, _) = run(&rev, Config::default());
            let a_ids: Vec<Id> = a.iter().map(|d| d.0).collect();
            let b_ids: Vec<Id> = b.iter().map(|d| d.0).collect();
            prop_assert_eq!(a_ids, b_ids);
        }
    }

    #[test]
    fn identical_replicas_take_one_round() {
        let items: BTreeMap<Id, Record> = (0..5000u32)
            .map(|k| (Id::from_key(&k.to_le_bytes()), record(1, false, false)))
            .collect();
        let (found, stats) = run(&[items.clone(), items.clone(), items], Config::default());
        assert!(found.is_empty());
        assert_eq!(stats.rounds, 1);
    }

    #[test]
    fn rounds_do_not_grow_with_the_number_of_differences() {
        let base: BTreeMap<Id, Record> = (0..20_000u32)
            .map(|k| (Id::from_key(&k.to_le_bytes()), record(1, false, false)))
            .collect();
        let mut rounds = Vec::new();
        for d in [1u32, 10, 1000] {
            let mut other = base.clone();
            for k in 0..d {
                other.insert(
                    Id::from_key(&(k * 7).to_le_bytes()),
                    record(5, false, false),
                );
            }
            let (found, stats) = run(&[base.clone(), other], Config::default());
            assert_eq!(found.len(), d as usize);
            rounds.push(stats.rounds);
        }
        let (lo, hi) = (rounds.iter().min().unwrap(), rounds.iter().max().unwrap());
        assert!(hi - lo <= 1, "rounds {rounds:?}");
    }

    #[test]
    fn a_wrong_number_of_answers_is_an_error() {
        let mut rec = Reconcile::new(vec![IdRange::ALL], 2, Config::default());
        let round = rec.next_round().unwrap();
        let one = answer_from_items(&round, &BTreeMap::new());
        assert!(rec.answer(vec![one]).is_err());
    }
}
