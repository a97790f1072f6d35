//! Sans-io comparison of replicas by range fingerprints (after negentropy and TicTac AAE).
//!
//! Given two or more replicas of the same id ranges, [`Reconcile`] says what to ask every
//! replica next ([`Round`]) and, fed their answers, descends only into sub-ranges whose
//! fingerprints differ. It ends with the exact list of differing ids and every replica's
//! record of each. It does no I/O and reads no clock: the driver (`engine::compare`) sends
//! the rounds over QUIC, all replicas and all asks of a round at once, so the number of
//! round trips is the depth of the descent plus two, whatever the number of differences.
//!
//! Replicas whose fingerprints of a range agree hold the same items there, so below that
//! range each group of agreeing replicas is asked once, through one of them, and its
//! answer stands for all: with three groups of which one diverged, the comparison costs
//! what two groups cost. Each replica therefore gets its own [`Round`] (empty when it has
//! nothing to answer).
//!
//! A round asks, all in parallel:
//! - fingerprints of ranges still to descend, each split [`Config::split`] ways (all
//!   parts but the last, which follows from the range's own fingerprint: [`parts_sent`]);
//! - item summaries (a 4-byte id tag and an 8-byte hash of id and record) of ranges
//!   small enough to list ([`Config::leaf_items`]);
//! - full records of the items whose summaries differ, by id tag.
//!
//! Laws (property-tested against a `BTreeMap` model): the result is exactly the set of ids
//! whose records are not identical on every replica ([`differ`]); it does not depend on
//! the order in which replicas or ranges are given.

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};

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

/// A summary of one item, 12 bytes on the wire: a 32-bit tag of its id (by which its
/// record is asked for; items of the same range that share it come along and are dropped)
/// and a 64-bit hash of id and record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Summary {
    /// [`id_tag`] of the id.
    pub tag: u32,
    /// The first 64 bits of the item's fingerprint element.
    pub hash: u64,
}

impl Encode for Summary {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        // Fixed width: varints would take 5 and 9 bytes for these random numbers.
        self.tag.to_le_bytes().encode(e)?;
        self.hash.to_le_bytes().encode(e)
    }
}

impl<C> Decode<C> for Summary {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Ok(Summary {
            tag: u32::from_le_bytes(<[u8; 4]>::decode(d)?),
            hash: u64::from_le_bytes(<[u8; 8]>::decode(d)?),
        })
    }
}

impl<'de, C> bincode::BorrowDecode<'de, C> for Summary {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Decode::decode(d)
    }
}

/// The summary of `(id, record)`: built from the same element the record contributes to
/// fingerprints, so a corrupt copy differs from a healthy one and from none.
pub fn summary(id: &Id, record: &Record) -> Summary {
    let element = Fingerprint::record_element(id, record);
    Summary {
        tag: id_tag(id),
        hash: u64::from_le_bytes(element[..8].try_into().expect("8 bytes")),
    }
}

/// Whether replicas' records of one id differ (a corrupt copy differs from a healthy copy
/// of the same version and from no copy, as in fingerprints).
pub fn differ(records: &[Option<Record>]) -> bool {
    records.iter().any(|r| *r != records[0])
}

/// The 32 bits of an id after its top 64: ranges are cut on the top 64 bits, so ids of
/// one range share those and differ here.
pub fn id_tag(id: &Id) -> u32 {
    u32::from_be_bytes(id.0[8..12].try_into().expect("4 bytes"))
}

/// What to ask one replica in one round. Empty parts are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Fingerprints of these ranges, each split `split` ways.
    pub fingerprints: Vec<IdRange>,
    /// Parts per range for `fingerprints`.
    pub split: u16,
    /// Item summaries of these ranges.
    pub summaries: Vec<IdRange>,
    /// Full records of items in these ranges whose [`id_tag`] is listed.
    pub records: Vec<(IdRange, Vec<u32>)>,
}

impl Round {
    /// Whether the round asks nothing.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty() && self.summaries.is_empty() && self.records.is_empty()
    }
}

/// One replica's answers to its [`Round`], in the order asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    /// `split` fingerprints per asked range.
    pub fingerprints: Vec<Fingerprint>,
    /// The summaries of each asked range, in id order.
    pub summaries: Vec<Vec<Summary>>,
    /// The records found for each asked (range, tags).
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
    /// Asks not sent because the replica agreed with another one asked instead.
    pub asks_spared: u64,
}

/// Fingerprints a node sends per range split `split` ways: every part when 1, all but the
/// last otherwise, which the asker derives from the range's own fingerprint (sums are
/// additive): one fingerprint in `split` is never sent.
pub fn parts_sent(split: u16) -> usize {
    match split {
        0 | 1 => 1,
        n => usize::from(n) - 1,
    }
}

/// What is asked about one range.
#[derive(Debug, Clone)]
enum Ask {
    /// The range split in parts, with its own fingerprint per class (none in the first
    /// round, which asks whole ranges unsplit).
    Fingerprints(IdRange, Vec<Fingerprint>),
    Summaries(IdRange),
    Records(IdRange, Vec<u32>),
}

/// An ask and which replicas agree on its range: `classes[r]` is replica `r`'s class,
/// numbered by first appearance. Replicas whose fingerprints of a range are equal hold the
/// same items there, so each class is asked once, through its first replica, and its
/// answer stands for every member: with three groups of which one diverged, the two that
/// agree cost one answer.
#[derive(Debug, Clone)]
struct Pending {
    ask: Ask,
    classes: Vec<usize>,
}

/// The classes of `values` (one per replica): equal values share a class, numbered by
/// first appearance.
fn classes_of<T: PartialEq>(values: &[T]) -> Vec<usize> {
    let mut firsts: Vec<&T> = Vec::new();
    values
        .iter()
        .map(|v| match firsts.iter().position(|f| *f == v) {
            Some(c) => c,
            None => {
                firsts.push(v);
                firsts.len() - 1
            }
        })
        .collect()
}

/// The first replica of each class: who is asked for it.
fn representatives(classes: &[usize]) -> Vec<usize> {
    let count = classes.iter().max().map_or(0, |c| c + 1);
    (0..count)
        .map(|c| {
            classes
                .iter()
                .position(|&k| k == c)
                .expect("classes are numbered by first appearance")
        })
        .collect()
}

/// A pending ask as sent: for each class, its position in the representative's round.
#[derive(Debug)]
struct Asked {
    pending: Pending,
    slots: Vec<usize>,
}

/// A comparison in progress. See the module docs.
#[derive(Debug)]
pub struct Reconcile {
    config: Config,
    replicas: usize,
    split: u16,
    next: Vec<Pending>,
    asked: Option<(Vec<Round>, Vec<Asked>)>,
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
        let replicas = replicas.max(1);
        Reconcile {
            config,
            replicas,
            // The first round asks each whole range's fingerprint of every replica: one
            // small round when the replicas agree.
            split: 1,
            next: ranges
                .into_iter()
                .filter(|r| !r.is_empty())
                .map(|r| Pending {
                    ask: Ask::Fingerprints(r, Vec::new()),
                    classes: (0..replicas).collect(),
                })
                .collect(),
            asked: None,
            differences: BTreeMap::new(),
            stats: CompareStats::default(),
        }
    }

    /// The next round, one [`Round`] per replica (empty for a replica with nothing to
    /// answer), or `None` when the comparison is complete.
    pub fn next_round(&mut self) -> Option<Vec<Round>> {
        assert!(self.asked.is_none(), "answer the previous round first");
        if self.next.is_empty() {
            return None;
        }
        let split = std::mem::replace(&mut self.split, self.config.split);
        let mut rounds = vec![
            Round {
                split,
                ..Round::default()
            };
            self.replicas
        ];
        let mut asked = Vec::with_capacity(self.next.len());
        for pending in std::mem::take(&mut self.next) {
            let reps = representatives(&pending.classes);
            self.stats.asks_spared += (self.replicas - reps.len()) as u64;
            match &pending.ask {
                Ask::Fingerprints(..) => self.stats.ranges_fingerprinted += 1,
                Ask::Summaries(_) => self.stats.ranges_listed += 1,
                Ask::Records(..) => {}
            }
            let slots = reps
                .iter()
                .map(|&r| {
                    let round = &mut rounds[r];
                    match &pending.ask {
                        Ask::Fingerprints(range, _) => {
                            round.fingerprints.push(*range);
                            round.fingerprints.len() - 1
                        }
                        Ask::Summaries(range) => {
                            round.summaries.push(*range);
                            round.summaries.len() - 1
                        }
                        Ask::Records(range, tags) => {
                            round.records.push((*range, tags.clone()));
                            round.records.len() - 1
                        }
                    }
                })
                .collect();
            asked.push(Asked { pending, slots });
        }
        self.stats.rounds += 1;
        self.asked = Some((rounds.clone(), asked));
        Some(rounds)
    }

    /// Takes every replica's answers to its round last returned by
    /// [`Reconcile::next_round`] (in replica order; empty for an empty round).
    pub fn answer(&mut self, answers: Vec<Answers>) -> Result<(), AnswerMismatch> {
        let (rounds, asked) = self.asked.take().expect("a round was asked");
        if let Err(e) = check(&rounds, &answers) {
            self.asked = Some((rounds, asked));
            return Err(e);
        }
        let split = rounds.first().map_or(1, |r| r.split);
        for Asked { pending, slots } in asked {
            let reps = representatives(&pending.classes);
            // The answer of class `c`, from its representative.
            let of = |c: usize| &answers[reps[c]];
            match pending.ask {
                Ask::Fingerprints(range, parents) => {
                    let sent = parts_sent(split);
                    // Each class's fingerprints of every part, the last derived.
                    let by_class: Vec<Vec<Fingerprint>> = (0..reps.len())
                        .map(|c| {
                            let got = &of(c).fingerprints[slots[c] * sent..][..sent];
                            let mut all = got.to_vec();
                            if split > 1 {
                                all.push(parents[c].less(got));
                            }
                            all
                        })
                        .collect();
                    self.take_fingerprints(range, split, &pending.classes, &by_class)
                }
                Ask::Summaries(range) => {
                    let lists: Vec<&Vec<Summary>> = (0..reps.len())
                        .map(|c| &of(c).summaries[slots[c]])
                        .collect();
                    if let Some(differing) = differing_tags(&lists) {
                        self.next.push(Pending {
                            ask: Ask::Records(range, differing),
                            classes: pending.classes,
                        });
                    }
                }
                Ask::Records(..) => {
                    let lists: Vec<&Vec<(Id, Record)>> =
                        (0..reps.len()).map(|c| &of(c).records[slots[c]]).collect();
                    self.take_records(&pending.classes, &lists);
                }
            }
        }
        Ok(())
    }

    fn take_fingerprints(
        &mut self,
        range: IdRange,
        split: u16,
        classes: &[usize],
        by_class: &[Vec<Fingerprint>],
    ) {
        let parts = if split == 1 {
            vec![range]
        } else {
            split_range(&range, split)
        };
        for (j, part) in parts.into_iter().enumerate() {
            let fps: Vec<&Fingerprint> = classes.iter().map(|&c| &by_class[c][j]).collect();
            let part_classes = classes_of(&fps);
            if part_classes.iter().all(|&c| c == 0) {
                continue;
            }
            let most = fps.iter().map(|f| f.count).max().unwrap_or(0);
            // A part that cannot be split further is listed whatever its size.
            let splittable = split_range(&part, self.config.split)
                .iter()
                .filter(|p| !p.is_empty())
                .count()
                > 1;
            let ask = if most <= self.config.leaf_items || !splittable {
                Ask::Summaries(part)
            } else {
                let parents = representatives(&part_classes)
                    .into_iter()
                    .map(|r| *fps[r])
                    .collect();
                Ask::Fingerprints(part, parents)
            };
            self.next.push(Pending {
                ask,
                classes: part_classes,
            });
        }
    }

    fn take_records(&mut self, classes: &[usize], lists: &[&Vec<(Id, Record)>]) {
        let mut found: BTreeMap<Id, Vec<Option<Record>>> = BTreeMap::new();
        for (c, list) in lists.iter().enumerate() {
            for (id, record) in list.iter() {
                found.entry(*id).or_insert_with(|| vec![None; lists.len()])[c] = Some(*record);
            }
        }
        // Items that merely share a tag with a differing one are dropped here.
        for (id, by_class) in found {
            if differ(&by_class) {
                self.differences
                    .insert(id, classes.iter().map(|&c| by_class[c]).collect());
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

/// Checks that each replica answered exactly what its round asked.
fn check(rounds: &[Round], answers: &[Answers]) -> Result<(), AnswerMismatch> {
    if answers.len() != rounds.len() {
        return Err(AnswerMismatch {
            replica: answers.len(),
            what: "replica answers",
            expected: rounds.len(),
            got: answers.len(),
        });
    }
    for (replica, (round, a)) in rounds.iter().zip(answers).enumerate() {
        let checks = [
            (
                "fingerprints",
                round.fingerprints.len() * parts_sent(round.split),
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

/// The id tags whose summaries differ between the lists (one per class), if any.
fn differing_tags(lists: &[&Vec<Summary>]) -> Option<Vec<u32>> {
    let mut by_tag: BTreeMap<u32, Vec<BTreeSet<u64>>> = BTreeMap::new();
    for (c, list) in lists.iter().enumerate() {
        for s in list.iter() {
            by_tag
                .entry(s.tag)
                .or_insert_with(|| vec![BTreeSet::new(); lists.len()])[c]
                .insert(s.hash);
        }
    }
    let differing: Vec<u32> = by_tag
        .into_iter()
        .filter(|(_, sets)| sets.iter().any(|s| *s != sets[0]))
        .map(|(t, _)| t)
        .collect();
    (!differing.is_empty()).then_some(differing)
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
        for part in parts.into_iter().take(parts_sent(round.split)) {
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
    for (range, tags) in &round.records {
        let wanted: BTreeSet<u32> = tags.iter().copied().collect();
        answers.records.push(
            in_range(range)
                .filter(|(i, _)| wanted.contains(&id_tag(i)))
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
        run_watching(replicas, config, |_| {})
    }

    /// Runs a comparison to the end, showing `watch` each round's asks.
    fn run_watching(
        replicas: &[BTreeMap<Id, Record>],
        config: Config,
        mut watch: impl FnMut(&[Round]),
    ) -> (Differences, CompareStats) {
        let mut rec = Reconcile::new(vec![IdRange::ALL], replicas.len(), config);
        while let Some(rounds) = rec.next_round() {
            watch(&rounds);
            let answers = replicas
                .iter()
                .zip(&rounds)
                .map(|(items, round)| answer_from_items(round, items))
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
    fn a_summary_is_12_bytes_on_the_wire_and_round_trips() {
        let cfg = bincode::config::standard();
        let s = summary(&Id::from_key(b"k"), &record(7, false, false));
        let bytes = bincode::encode_to_vec(s, cfg).unwrap();
        assert_eq!(bytes.len(), 12);
        let (back, used): (Summary, usize) = bincode::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!((back, used), (s, 12));
        assert_ne!(s, summary(&Id::from_key(b"k"), &record(7, false, true)));
    }

    #[test]
    fn a_wrong_number_of_answers_is_an_error() {
        let mut rec = Reconcile::new(vec![IdRange::ALL], 2, Config::default());
        let rounds = rec.next_round().unwrap();
        let one = answer_from_items(&rounds[0], &BTreeMap::new());
        assert!(rec.answer(vec![one]).is_err());
    }

    #[test]
    fn replicas_that_agree_on_a_range_are_asked_once_for_it() {
        let base: BTreeMap<Id, Record> = (0..20_000u32)
            .map(|k| (Id::from_key(&k.to_le_bytes()), record(1, false, false)))
            .collect();
        let mut diverged = base.clone();
        for k in 0..100u32 {
            diverged.insert(
                Id::from_key(&(k * 13).to_le_bytes()),
                record(5, false, false),
            );
        }
        // Replicas 0 and 2 agree everywhere; replica 1 diverged.
        let replicas = [base.clone(), diverged, base];
        let mut asked = [0usize; 3];
        let (found, stats) = run_watching(&replicas, Config::default(), |rounds| {
            for (n, round) in asked.iter_mut().zip(rounds) {
                *n += usize::from(!round.is_empty());
            }
        });
        let rounds = stats.rounds as usize;
        assert!(rounds > 3, "a real descent: {rounds} rounds");
        assert_eq!(asked[0], rounds);
        assert_eq!(asked[1], rounds);
        assert_eq!(asked[2], 1, "replica 2 answers only the first round");
        assert!(stats.asks_spared > 0);
        assert_eq!(found.len(), 100);
        assert!(found
            .iter()
            .all(|(_, rs)| rs[0] == rs[2] && rs[0] != rs[1] && rs[0].is_some()));
    }
}
