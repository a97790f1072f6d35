//! Sans-io comparison of replicas by range fingerprints (after negentropy and TicTac AAE).
//!
//! Given two or more replicas of the same id ranges, [`Reconcile`] says what to ask every
//! replica next ([`Round`]) and, fed their answers, descends only into sub-ranges whose
//! fingerprints differ. It ends with the exact list of differing ids and every replica's
//! record of each. It does no I/O and reads no clock: the driver (`engine::compare`) sends
//! the rounds over QUIC, all replicas and all asks of a round at once, so the number of
//! round trips is the depth of the descent plus two, whatever the number of differences
//! (and a few more when an anchor's check fails, below).
//!
//! Replicas whose fingerprints of a range agree hold the same items there, so below that
//! range each group of agreeing replicas is asked once, through one of them, and its
//! answer stands for all: with three groups of which one diverged, the comparison costs
//! what two groups cost. Each replica therefore gets its own [`Round`] (empty when it has
//! nothing to answer).
//!
//! A round is a list of [`CompareAsk`]s about ranges named by their place in the descent
//! ([`Located`]: a top range and the part taken at each level, a few bytes where two ids
//! would take twenty):
//! - `Whole`: the full fingerprint (128-bit sum and count) of a top range (first round);
//! - `Fingerprints`: full fingerprints of a range's parts, while ranges are large;
//! - `Sums`: 24-bit sums of a range's parts, below a range of at most
//!   [`Config::short_below`] items whose full fingerprints differ;
//! - `Hashes`: a hash of every item of a range small enough to list ([`Config::leaf_items`]),
//!   24-bit below such a range, 64-bit otherwise;
//! - `Records`: the full records of the items whose hashes differ.
//!
//! A range descended with 24-bit sums and hashes (an *anchor*: its replicas' full
//! fingerprints are known) costs a quarter of the bytes, but two different sets agree on a
//! 24-bit sum once in 2^24. So an anchor is checked when its descent ends: taking the
//! records found out of each replica's full fingerprint must leave the same fingerprint on
//! every replica. If not (a collision hid a difference, or a replica changed while it was
//! compared), what was found there is dropped and the anchor is compared again: its
//! parts' full fingerprints are asked, and each part that still differs becomes an anchor
//! of its own, so a failure is narrowed down level by level; a failed anchor too small to
//! split is listed with 64-bit hashes, unchecked, as every range was before anchors.
//!
//! Laws (property-tested against a `BTreeMap` model, with sums and hashes of 8 bits so
//! collisions are common): the result is exactly the set of ids whose records are not
//! identical on every replica ([`differ`]); it does not depend on the order in which
//! replicas are given.

use std::collections::{BTreeMap, BTreeSet};

use bincode::{Decode, Encode};

use crate::fingerprint::Fingerprint;
use crate::id::{split_range, Id, IdRange};
use crate::version::Record;

/// Tuning of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Parts a differing range is split into per level (2 to 256).
    pub split: u16,
    /// A differing part with at most this many items (on every replica) is listed instead
    /// of split further.
    pub leaf_items: u64,
    /// A differing range with at most this many items on every replica is descended with
    /// 24-bit sums and hashes and checked as a whole at the end (0: never).
    pub short_below: u64,
    /// Bytes of the short sums and hashes that count ([`SHORT_BYTES`]; fewer only to test
    /// collisions).
    pub short_bytes: u8,
}

impl Default for Config {
    /// Split 8 ways, list at 16 items, short below 16,384 items. On 1 M ids
    /// (`examples/reconcile_vs_negentropy`, d = 10 / 1,000 / 100,000) this moves 6,158 /
    /// 306,050 / 18.0 M bytes; at full width everywhere (`short_below` 0) 14,578 / 827,372
    /// / 29.0 M. Short below 4,096 moves 5 % more at d = 1,000, and 65,536 no less. Split
    /// 16 takes two round trips fewer (7) for 18 % more bytes at d = 1,000.
    fn default() -> Self {
        Config {
            split: 8,
            leaf_items: 16,
            short_below: 16_384,
            short_bytes: SHORT_BYTES as u8,
        }
    }
}

/// Differing ids in id order, each with every replica's record (`None`: absent).
pub type Differences = Vec<(Id, Vec<Option<Record>>)>;

/// The 64-bit hash of an item: the first 8 bytes of the element it contributes to
/// fingerprints, so a corrupt copy differs from a healthy one and from none.
pub fn item_hash(id: &Id, record: &Record) -> u64 {
    let element = Fingerprint::record_element(id, record);
    u64::from_le_bytes(element[..8].try_into().expect("8 bytes"))
}

/// Bytes of a short sum or item hash on the wire.
///
/// A d = 1,000 comparison of 1 M ids compares some 20,000 pairs of short sums; at 24
/// bits about one run in a thousand meets a collision, which costs it one anchor compared
/// again at full width. 32 bits moved 14 % more bytes (349,010 against 306,050 at
/// d = 1,000).
pub const SHORT_BYTES: usize = 3;

/// The short sum of a fingerprint: its low 24 bits (sums are additive modulo 2^24 too).
pub fn short_sum(fp: &Fingerprint) -> u32 {
    u32::from_le_bytes(fp.sum[..4].try_into().expect("4 bytes")) & SHORT_MASK
}

const SHORT_MASK: u32 = u32::MAX >> (32 - 8 * SHORT_BYTES);

fn short_bytes(v: u32) -> [u8; SHORT_BYTES] {
    v.to_le_bytes()[..SHORT_BYTES].try_into().expect("short")
}

fn from_short_bytes(b: &[u8; SHORT_BYTES]) -> u32 {
    let mut four = [0u8; 4];
    four[..SHORT_BYTES].copy_from_slice(b);
    u32::from_le_bytes(four)
}

/// Whether replicas' records of one id differ (a corrupt copy differs from a healthy copy
/// of the same version and from no copy, as in fingerprints).
pub fn differ(records: &[Option<Record>]) -> bool {
    records.iter().any(|r| *r != records[0])
}

/// Where a range lies: top range `top` of the round, then part `path[0]` of it split
/// [`Round::split`] ways, part `path[1]` of that, and so on.
///
/// On the wire: `top`, a byte with the depth (and the top bit set when every part is
/// below 16), then the parts two to a byte when they are, one to a byte otherwise: six
/// levels split 8 ways take 5 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Index into [`Round::tops`].
    pub top: u16,
    /// The part taken at each level.
    pub path: Vec<u8>,
}

const PACKED: u8 = 0x80;

impl Encode for Located {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.top.encode(e)?;
        let depth = u8::try_from(self.path.len())
            .ok()
            .filter(|d| usize::from(*d) <= MAX_PATH)
            .ok_or(bincode::error::EncodeError::Other(
                "a path deeper than MAX_PATH",
            ))?;
        if self.path.iter().all(|p| *p < 16) {
            (depth | PACKED).encode(e)?;
            for pair in self.path.chunks(2) {
                (pair[0] | pair.get(1).map_or(0, |p| p << 4)).encode(e)?;
            }
        } else {
            depth.encode(e)?;
            for p in &self.path {
                p.encode(e)?;
            }
        }
        Ok(())
    }
}

impl<C> Decode<C> for Located {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let top = u16::decode(d)?;
        let head = u8::decode(d)?;
        let depth = usize::from(head & !PACKED);
        if depth > MAX_PATH {
            return Err(bincode::error::DecodeError::Other(
                "a path deeper than MAX_PATH",
            ));
        }
        let mut path = Vec::with_capacity(depth);
        if head & PACKED != 0 {
            while path.len() < depth {
                let pair = u8::decode(d)?;
                path.push(pair & 0x0f);
                if path.len() < depth {
                    path.push(pair >> 4);
                }
            }
        } else {
            for _ in 0..depth {
                path.push(u8::decode(d)?);
            }
        }
        Ok(Located { top, path })
    }
}

impl<'de, C> bincode::BorrowDecode<'de, C> for Located {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Decode::decode(d)
    }
}

/// Levels a [`Located`] may descend (split 2 reaches single 64-bit prefixes at 64).
pub const MAX_PATH: usize = 64;

/// The range `at` names, or why it names none.
pub fn locate(tops: &[IdRange], split: u16, at: &Located) -> Result<IdRange, String> {
    let mut range = *tops
        .get(usize::from(at.top))
        .ok_or_else(|| format!("top range {} of {}", at.top, tops.len()))?;
    if at.path.len() > MAX_PATH {
        return Err(format!(
            "a path of {} levels, at most {MAX_PATH}",
            at.path.len()
        ));
    }
    for &part in &at.path {
        if u16::from(part) >= split {
            return Err(format!("part {part} of a range split {split} ways"));
        }
        range = split_range(&range, split)[usize::from(part)];
    }
    Ok(range)
}

/// How wide the hashes of a `Hashes` ask are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Width {
    /// 24 bits, below an anchor.
    Short,
    /// 64 bits.
    Full,
}

impl Width {
    /// `hash` cut to this width.
    pub fn cut(self, hash: u64) -> u64 {
        match self {
            Width::Short => hash & u64::from(SHORT_MASK),
            Width::Full => hash,
        }
    }
}

/// Item hashes at one width, fixed-size on the wire (varints would take 5 and 9 bytes for
/// these random numbers).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ItemHashes {
    /// 24-bit hashes, little-endian.
    Short(Vec<[u8; SHORT_BYTES]>),
    /// 64-bit hashes, little-endian.
    Full(Vec<[u8; 8]>),
}

impl ItemHashes {
    /// `hashes` (already cut to `width`) on the wire.
    pub fn of(width: Width, hashes: impl IntoIterator<Item = u64>) -> ItemHashes {
        match width {
            Width::Short => {
                ItemHashes::Short(hashes.into_iter().map(|h| short_bytes(h as u32)).collect())
            }
            Width::Full => ItemHashes::Full(hashes.into_iter().map(u64::to_le_bytes).collect()),
        }
    }

    /// Their width.
    pub fn width(&self) -> Width {
        match self {
            ItemHashes::Short(_) => Width::Short,
            ItemHashes::Full(_) => Width::Full,
        }
    }

    /// The hashes.
    pub fn values(&self) -> Vec<u64> {
        match self {
            ItemHashes::Short(v) => v.iter().map(|b| u64::from(from_short_bytes(b))).collect(),
            ItemHashes::Full(v) => v.iter().map(|b| u64::from_le_bytes(*b)).collect(),
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        match self {
            ItemHashes::Short(v) => v.len(),
            ItemHashes::Full(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One question about one range.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum CompareAsk {
    /// The range's own full fingerprint.
    Whole(Located),
    /// Full fingerprints of the range's parts: all but the last ([`parts_sent`]).
    Fingerprints(Located),
    /// 24-bit sums of the range's parts: all but the last.
    Sums(Located),
    /// The hash of every item of the range at this width, in id order.
    Hashes(Located, Width),
    /// The records of the range whose item hash, cut to the listed hashes' width, is
    /// listed.
    Records(Located, ItemHashes),
}

impl CompareAsk {
    /// Where the range asked about lies.
    pub fn at(&self) -> &Located {
        match self {
            CompareAsk::Whole(at)
            | CompareAsk::Fingerprints(at)
            | CompareAsk::Sums(at)
            | CompareAsk::Hashes(at, _)
            | CompareAsk::Records(at, _) => at,
        }
    }
}

/// The answer to one [`CompareAsk`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum CompareAnswer {
    /// To `Whole` (one) and `Fingerprints` ([`parts_sent`]).
    Fingerprints(Vec<Fingerprint>),
    /// To `Sums`: [`short_sum`] of each part sent, little-endian.
    Sums(Vec<[u8; SHORT_BYTES]>),
    /// To `Hashes`.
    Hashes(ItemHashes),
    /// To `Records`, in id order.
    Records(Vec<(Id, Record)>),
}

/// What to ask one replica in one round. Empty when it has nothing to answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// The ranges [`Located::top`] indexes: the comparison's ranges.
    pub tops: Vec<IdRange>,
    /// Parts per level.
    pub split: u16,
    /// The questions, answered in order.
    pub asks: Vec<CompareAsk>,
}

impl Round {
    /// Whether the round asks nothing.
    pub fn is_empty(&self) -> bool {
        self.asks.is_empty()
    }
}

/// One replica's answers to its [`Round`], in the order asked.
pub type Answers = Vec<CompareAnswer>;

/// An answer that does not fit the question.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replica {replica} answered {what}")]
pub struct AnswerMismatch {
    /// Which replica.
    pub replica: usize,
    /// What did not fit.
    pub what: String,
}

/// Counts of a comparison, for reports and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompareStats {
    /// Rounds asked (round trips, all replicas in parallel).
    pub rounds: u64,
    /// Ranges whose fingerprints or sums were asked.
    pub ranges_fingerprinted: u64,
    /// Ranges whose item hashes were asked.
    pub ranges_listed: u64,
    /// Asks not sent because the replica agreed with another one asked instead.
    pub asks_spared: u64,
    /// Anchors descended with short sums.
    pub anchors: u64,
    /// Anchors whose check failed, compared again at full width.
    pub anchors_redone: u64,
}

/// Fingerprints (or sums) a node sends per range split `split` ways: all but the last,
/// which the asker derives from the range's own (sums are additive): one in `split` is
/// never sent.
pub fn parts_sent(split: u16) -> usize {
    usize::from(split.max(2)) - 1
}

/// A range as the descent knows it: the ids and where they lie.
#[derive(Debug, Clone)]
struct At {
    range: IdRange,
    located: Located,
}

impl At {
    /// Part `j` of the range split `split` ways.
    fn part(&self, j: usize, range: IdRange) -> At {
        let mut path = self.located.path.clone();
        path.push(u8::try_from(j).expect("at most 256 parts"));
        At {
            range,
            located: Located {
                top: self.located.top,
                path,
            },
        }
    }
}

/// What is asked about one range.
#[derive(Debug, Clone)]
enum Ask {
    Whole(At),
    /// With each class's fingerprint of the range, from which the last part follows.
    Fingerprints(At, Vec<Fingerprint>),
    /// With each class's short sum of the range and the most items a replica may hold there.
    Sums(At, Vec<u32>, u64),
    Hashes(At, Width),
    /// With each class's differing hashes, as it listed them: a class with none is not
    /// asked (it holds no item there that another class lacks).
    Records(At, Width, Vec<Vec<u64>>),
}

impl Ask {
    /// The ask sent to class `c`, if it is asked at all.
    fn wire(&self, c: usize) -> Option<CompareAsk> {
        Some(match self {
            Ask::Whole(at) => CompareAsk::Whole(at.located.clone()),
            Ask::Fingerprints(at, _) => CompareAsk::Fingerprints(at.located.clone()),
            Ask::Sums(at, ..) => CompareAsk::Sums(at.located.clone()),
            Ask::Hashes(at, w) => CompareAsk::Hashes(at.located.clone(), *w),
            Ask::Records(_, _, hashes) if hashes[c].is_empty() => return None,
            Ask::Records(at, w, hashes) => CompareAsk::Records(
                at.located.clone(),
                ItemHashes::of(*w, hashes[c].iter().copied()),
            ),
        })
    }
}

/// An ask, which replicas agree on its range (`classes[r]` is replica `r`'s class, numbered
/// by first appearance: each class is asked once, through its first replica), and the
/// anchor it descends from, if any.
#[derive(Debug, Clone)]
struct Pending {
    ask: Ask,
    classes: Vec<usize>,
    anchor: Option<usize>,
}

/// A range whose replicas' full fingerprints differ, descended with short sums.
#[derive(Debug)]
struct Anchor {
    at: At,
    classes: Vec<usize>,
    /// Each class's full fingerprint.
    fingerprints: Vec<Fingerprint>,
    /// Asks below it still to be answered.
    open: usize,
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
    slots: Vec<Option<usize>>,
}

/// A comparison in progress. See the module docs.
#[derive(Debug)]
pub struct Reconcile {
    config: Config,
    replicas: usize,
    tops: Vec<IdRange>,
    next: Vec<Pending>,
    asked: Option<(Vec<Round>, Vec<Asked>)>,
    anchors: Vec<Anchor>,
    differences: BTreeMap<Id, Vec<Option<Record>>>,
    stats: CompareStats,
}

impl Reconcile {
    /// Compares `replicas` replicas (at least one) over `ranges` (at most 65,536).
    pub fn new(ranges: Vec<IdRange>, replicas: usize, config: Config) -> Reconcile {
        let config = Config {
            split: config.split.clamp(2, 256),
            leaf_items: config.leaf_items.max(1),
            short_below: config.short_below,
            short_bytes: config.short_bytes.clamp(1, SHORT_BYTES as u8),
        };
        let replicas = replicas.max(1);
        let tops: Vec<IdRange> = ranges
            .into_iter()
            .filter(|r| !r.is_empty())
            .take(usize::from(u16::MAX) + 1)
            .collect();
        // The first round asks each whole range's fingerprint of every replica: one small
        // round when the replicas agree.
        let next = (0..tops.len())
            .map(|top| Pending {
                ask: Ask::Whole(At {
                    range: tops[top],
                    located: Located {
                        top: top as u16,
                        path: Vec::new(),
                    },
                }),
                classes: (0..replicas).collect(),
                anchor: None,
            })
            .collect();
        Reconcile {
            config,
            replicas,
            tops,
            next,
            asked: None,
            anchors: Vec::new(),
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
        let empty = Round {
            tops: Vec::new(),
            split: self.config.split,
            asks: Vec::new(),
        };
        let mut rounds = vec![empty; self.replicas];
        let mut asked = Vec::with_capacity(self.next.len());
        for pending in std::mem::take(&mut self.next) {
            let reps = representatives(&pending.classes);
            self.stats.asks_spared += (self.replicas - reps.len()) as u64;
            match &pending.ask {
                Ask::Whole(_) | Ask::Fingerprints(..) | Ask::Sums(..) => {
                    self.stats.ranges_fingerprinted += 1
                }
                Ask::Hashes(..) => self.stats.ranges_listed += 1,
                Ask::Records(..) => {}
            }
            let slots = reps
                .iter()
                .enumerate()
                .map(|(c, &r)| {
                    let ask = pending.ask.wire(c)?;
                    rounds[r].asks.push(ask);
                    Some(rounds[r].asks.len() - 1)
                })
                .collect();
            asked.push(Asked { pending, slots });
        }
        for round in rounds.iter_mut().filter(|r| !r.is_empty()) {
            round.tops = self.tops.clone();
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
        for Asked { pending, slots } in asked {
            let reps = representatives(&pending.classes);
            // The answer of class `c`, from its representative (every class is asked but
            // for records).
            let answered = |c: usize| slots[c].map(|s| &answers[reps[c]][s]);
            let of = |c: usize| answered(c).expect("every class is asked");
            let Pending {
                ask,
                classes,
                anchor,
            } = pending;
            match ask {
                Ask::Whole(at) => {
                    let by_class: Vec<Vec<Fingerprint>> = (0..reps.len())
                        .map(|c| match of(c) {
                            CompareAnswer::Fingerprints(f) => f.clone(),
                            _ => unreachable!("checked"),
                        })
                        .collect();
                    self.take_fingerprints(vec![at], &classes, &by_class);
                }
                Ask::Fingerprints(at, parents) => {
                    let by_class: Vec<Vec<Fingerprint>> = (0..reps.len())
                        .map(|c| {
                            let CompareAnswer::Fingerprints(got) = of(c) else {
                                unreachable!("checked")
                            };
                            let mut all = got.clone();
                            all.push(parents[c].less(got));
                            all
                        })
                        .collect();
                    let parts = split_range(&at.range, self.config.split)
                        .into_iter()
                        .enumerate()
                        .map(|(j, part)| at.part(j, part))
                        .collect();
                    self.take_fingerprints(parts, &classes, &by_class);
                }
                Ask::Sums(at, parents, most) => {
                    let mask = self.short_mask();
                    let by_class: Vec<Vec<u32>> = (0..reps.len())
                        .map(|c| {
                            let CompareAnswer::Sums(got) = of(c) else {
                                unreachable!("checked")
                            };
                            let mut all: Vec<u32> =
                                got.iter().map(|b| from_short_bytes(b) & mask).collect();
                            let sent = all.iter().fold(0u32, |a, s| a.wrapping_add(*s));
                            all.push(parents[c].wrapping_sub(sent) & mask);
                            all
                        })
                        .collect();
                    let most = most.div_ceil(u64::from(self.config.split));
                    let parts = split_range(&at.range, self.config.split);
                    for (j, part) in parts.into_iter().enumerate() {
                        let sums: Vec<u32> = classes.iter().map(|&c| by_class[c][j]).collect();
                        let part_classes = classes_of(&sums);
                        if part_classes.iter().all(|&c| c == 0) {
                            continue;
                        }
                        let part = at.part(j, part);
                        let ask = if most <= self.config.leaf_items || !self.splittable(&part) {
                            Ask::Hashes(part, Width::Short)
                        } else {
                            let parents = representatives(&part_classes)
                                .into_iter()
                                .map(|r| sums[r])
                                .collect();
                            Ask::Sums(part, parents, most)
                        };
                        self.push(Pending {
                            ask,
                            classes: part_classes,
                            anchor,
                        });
                    }
                }
                Ask::Hashes(at, width) => {
                    let lists: Vec<Vec<u64>> = (0..reps.len())
                        .map(|c| match of(c) {
                            CompareAnswer::Hashes(h) => h.values(),
                            _ => unreachable!("checked"),
                        })
                        .collect();
                    let mask = match width {
                        Width::Short => u64::from(self.short_mask()),
                        Width::Full => u64::MAX,
                    };
                    let differing = differing_hashes(&lists, mask);
                    if differing.iter().any(|d| !d.is_empty()) {
                        self.push(Pending {
                            ask: Ask::Records(at, width, differing),
                            classes: classes.clone(),
                            anchor,
                        });
                    }
                }
                Ask::Records(at, ..) => {
                    let none = Vec::new();
                    let lists: Vec<&Vec<(Id, Record)>> = (0..reps.len())
                        .map(|c| match answered(c) {
                            Some(CompareAnswer::Records(r)) => r,
                            None => &none,
                            Some(_) => unreachable!("checked"),
                        })
                        .collect();
                    self.take_records(&at.range, &classes, &lists);
                }
            }
            if let Some(a) = anchor {
                self.close(a);
            }
        }
        Ok(())
    }

    /// Takes each class's full fingerprint of each of `parts` (`by_class[c][j]`): the
    /// parts whose replicas differ are descended.
    fn take_fingerprints(
        &mut self,
        parts: Vec<At>,
        classes: &[usize],
        by_class: &[Vec<Fingerprint>],
    ) {
        for (j, part) in parts.into_iter().enumerate() {
            let fps: Vec<&Fingerprint> = classes.iter().map(|&c| &by_class[c][j]).collect();
            let part_classes = classes_of(&fps);
            if part_classes.iter().all(|&c| c == 0) {
                continue;
            }
            let per_class = representatives(&part_classes)
                .into_iter()
                .map(|r| *fps[r])
                .collect();
            self.differing(part, part_classes, per_class, true);
        }
    }

    /// The bits of short sums and hashes that count.
    fn short_mask(&self) -> u32 {
        SHORT_MASK >> (8 * (SHORT_BYTES as u32 - u32::from(self.config.short_bytes)))
    }

    /// Whether splitting `at` gives more than one non-empty part.
    fn splittable(&self, at: &At) -> bool {
        split_range(&at.range, self.config.split)
            .iter()
            .filter(|p| !p.is_empty())
            .count()
            > 1
    }

    /// Queues an ask, counting it open under its anchor.
    fn push(&mut self, pending: Pending) {
        if let Some(a) = pending.anchor {
            self.anchors[a].open += 1;
        }
        self.next.push(pending);
    }

    /// Queues the descent into a range whose classes' full fingerprints differ: as an
    /// anchor with short sums when it is small enough and `may_anchor`, at full width
    /// otherwise.
    fn differing(
        &mut self,
        at: At,
        classes: Vec<usize>,
        fingerprints: Vec<Fingerprint>,
        may_anchor: bool,
    ) {
        let most = fingerprints.iter().map(|f| f.count).max().unwrap_or(0);
        let leaf = most <= self.config.leaf_items || !self.splittable(&at);
        if may_anchor && most <= self.config.short_below {
            let mask = self.short_mask();
            let anchor = self.anchors.len();
            let ask = if leaf {
                Ask::Hashes(at.clone(), Width::Short)
            } else {
                let sums = fingerprints.iter().map(|f| short_sum(f) & mask).collect();
                Ask::Sums(at.clone(), sums, most)
            };
            self.anchors.push(Anchor {
                at,
                classes: classes.clone(),
                fingerprints,
                open: 0,
            });
            self.stats.anchors += 1;
            self.push(Pending {
                ask,
                classes,
                anchor: Some(anchor),
            });
        } else {
            let ask = if leaf {
                Ask::Hashes(at, Width::Full)
            } else {
                Ask::Fingerprints(at, fingerprints)
            };
            self.push(Pending {
                ask,
                classes,
                anchor: None,
            });
        }
    }

    /// One ask below anchor `a` is answered; when none is left, checks the anchor.
    fn close(&mut self, a: usize) {
        let anchor = &mut self.anchors[a];
        anchor.open -= 1;
        if anchor.open > 0 {
            return;
        }
        let found = anchor.at.range;
        // Each replica's fingerprint without the records found: equal on every replica
        // when they account for the whole difference.
        let rests: Vec<Fingerprint> = anchor
            .classes
            .iter()
            .enumerate()
            .map(|(r, &c)| {
                let taken: Vec<Fingerprint> = self
                    .differences
                    .range(found)
                    .filter_map(|(id, records)| records[r].map(|rec| (id, rec)))
                    .map(|(id, rec)| {
                        let mut one = Fingerprint::EMPTY;
                        one.insert_record(id, &rec);
                        one
                    })
                    .collect();
                anchor.fingerprints[c].less(&taken)
            })
            .collect();
        if rests.iter().all(|f| *f == rests[0]) {
            return;
        }
        self.stats.anchors_redone += 1;
        let stale: Vec<Id> = self.differences.range(found).map(|(id, _)| *id).collect();
        for id in stale {
            self.differences.remove(&id);
        }
        let anchor = &self.anchors[a];
        let (at, classes, fingerprints) = (
            anchor.at.clone(),
            anchor.classes.clone(),
            anchor.fingerprints.clone(),
        );
        self.differing(at, classes, fingerprints, false);
    }

    fn take_records(&mut self, range: &IdRange, classes: &[usize], lists: &[&Vec<(Id, Record)>]) {
        let mut found: BTreeMap<Id, Vec<Option<Record>>> = BTreeMap::new();
        for (c, list) in lists.iter().enumerate() {
            // A record outside the range asked about answers nothing that was asked.
            for (id, record) in list.iter().filter(|(id, _)| range.contains(id)) {
                found.entry(*id).or_insert_with(|| vec![None; lists.len()])[c] = Some(*record);
            }
        }
        // Items that merely share a hash with a differing one are dropped here.
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
            what: format!(
                "for {} replicas, {} were asked",
                answers.len(),
                rounds.len()
            ),
        });
    }
    for (replica, (round, got)) in rounds.iter().zip(answers).enumerate() {
        let mismatch = |what: String| AnswerMismatch { replica, what };
        if got.len() != round.asks.len() {
            return Err(mismatch(format!(
                "{} answers to {} asks",
                got.len(),
                round.asks.len()
            )));
        }
        let sent = parts_sent(round.split);
        for (i, (ask, answer)) in round.asks.iter().zip(got).enumerate() {
            let fits = match (ask, answer) {
                (CompareAsk::Whole(_), CompareAnswer::Fingerprints(f)) => f.len() == 1,
                (CompareAsk::Fingerprints(_), CompareAnswer::Fingerprints(f)) => f.len() == sent,
                (CompareAsk::Sums(_), CompareAnswer::Sums(s)) => s.len() == sent,
                (CompareAsk::Hashes(_, w), CompareAnswer::Hashes(h)) => h.width() == *w,
                (CompareAsk::Records(..), CompareAnswer::Records(_)) => true,
                _ => false,
            };
            if !fits {
                return Err(mismatch(format!(
                    "ask {i} ({}) with {}",
                    ask_kind(ask),
                    answer_kind(answer)
                )));
            }
        }
    }
    Ok(())
}

fn ask_kind(ask: &CompareAsk) -> &'static str {
    match ask {
        CompareAsk::Whole(_) => "a whole range's fingerprint",
        CompareAsk::Fingerprints(_) => "fingerprints of parts",
        CompareAsk::Sums(_) => "sums of parts",
        CompareAsk::Hashes(_, Width::Short) => "24-bit item hashes",
        CompareAsk::Hashes(_, Width::Full) => "64-bit item hashes",
        CompareAsk::Records(..) => "records",
    }
}

fn answer_kind(answer: &CompareAnswer) -> String {
    match answer {
        CompareAnswer::Fingerprints(f) => format!("{} fingerprints", f.len()),
        CompareAnswer::Sums(s) => format!("{} sums", s.len()),
        CompareAnswer::Hashes(h) => format!("{} {:?} hashes", h.len(), h.width()),
        CompareAnswer::Records(r) => format!("{} records", r.len()),
    }
}

/// For each list (one per class), its hashes whose number of items, cut by `mask`,
/// differs between the lists (a multiset difference), as listed and without repeats.
fn differing_hashes(lists: &[Vec<u64>], mask: u64) -> Vec<Vec<u64>> {
    let mut counts: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (c, list) in lists.iter().enumerate() {
        for h in list {
            counts
                .entry(h & mask)
                .or_insert_with(|| vec![0; lists.len()])[c] += 1;
        }
    }
    let differing: BTreeSet<u64> = counts
        .into_iter()
        .filter(|(_, n)| n.iter().any(|k| *k != n[0]))
        .map(|(h, _)| h)
        .collect();
    lists
        .iter()
        .map(|list| {
            let own: BTreeSet<u64> = list
                .iter()
                .copied()
                .filter(|h| differing.contains(&(h & mask)))
                .collect();
            own.into_iter().collect()
        })
        .collect()
}

/// Where a node's answers come from: its store, or a map in tests and models.
pub trait ItemSource {
    /// What reading can fail with.
    type Error;
    /// The fingerprint of `range`.
    fn fingerprint(&self, range: &IdRange) -> Result<Fingerprint, Self::Error>;
    /// Calls `f` on every record of `range`, in id order.
    fn for_each(&self, range: &IdRange, f: &mut dyn FnMut(&Id, &Record))
        -> Result<(), Self::Error>;
}

/// Why a round could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError<E> {
    /// The round names a range that does not exist.
    #[error("ask {index}: {what}")]
    BadAsk {
        /// Which ask.
        index: usize,
        /// What is wrong with it.
        what: String,
    },
    /// Reading failed.
    #[error(transparent)]
    Source(E),
}

/// Refuses fingerprinted ranges that together span (in [`IdRange::width`]) more than twice
/// the id space, where an honest round spans it at most once: a request asking more would
/// make a node read partition rows without end.
pub fn check_spanned(spanned: u128) -> Result<(), String> {
    const MAX_SPANNED: u128 = 2 << 64;
    if spanned > MAX_SPANNED {
        return Err("fingerprints spanning the id space more than twice".into());
    }
    Ok(())
}

/// Answers a [`Round`] from `source`: what a node computes (`node::compare`), and the
/// reference for tests and models.
pub fn answer_round<S: ItemSource>(
    source: &S,
    round: &Round,
) -> Result<Answers, AnswerError<S::Error>> {
    if !(2..=256).contains(&round.split) {
        return Err(AnswerError::BadAsk {
            index: 0,
            what: format!("split {} (2 to 256)", round.split),
        });
    }
    let sent = parts_sent(round.split);
    let mut answers = Vec::with_capacity(round.asks.len());
    // Checked as the asks are located, before their fingerprints are read.
    let mut spanned = 0u128;
    for (index, ask) in round.asks.iter().enumerate() {
        let range = locate(&round.tops, round.split, ask.at())
            .map_err(|what| AnswerError::BadAsk { index, what })?;
        if let CompareAsk::Whole(_) | CompareAsk::Fingerprints(_) | CompareAsk::Sums(_) = ask {
            spanned += range.width();
            check_spanned(spanned).map_err(|what| AnswerError::BadAsk { index, what })?;
        }
        let parts = || split_range(&range, round.split).into_iter().take(sent);
        let fingerprint = |r: &IdRange| source.fingerprint(r).map_err(AnswerError::Source);
        let answer = match ask {
            CompareAsk::Whole(_) => CompareAnswer::Fingerprints(vec![fingerprint(&range)?]),
            CompareAsk::Fingerprints(_) => CompareAnswer::Fingerprints(
                parts().map(|p| fingerprint(&p)).collect::<Result<_, _>>()?,
            ),
            CompareAsk::Sums(_) => CompareAnswer::Sums(
                parts()
                    .map(|p| fingerprint(&p).map(|f| short_bytes(short_sum(&f))))
                    .collect::<Result<_, _>>()?,
            ),
            CompareAsk::Hashes(_, width) => {
                let mut hashes = Vec::new();
                source
                    .for_each(&range, &mut |id, r| {
                        hashes.push(width.cut(item_hash(id, r)))
                    })
                    .map_err(AnswerError::Source)?;
                CompareAnswer::Hashes(ItemHashes::of(*width, hashes))
            }
            CompareAsk::Records(_, wanted) => {
                let width = wanted.width();
                let wanted: BTreeSet<u64> = wanted.values().into_iter().collect();
                let mut found = Vec::new();
                source
                    .for_each(&range, &mut |id, r| {
                        if wanted.contains(&width.cut(item_hash(id, r))) {
                            found.push((*id, *r));
                        }
                    })
                    .map_err(AnswerError::Source)?;
                CompareAnswer::Records(found)
            }
        };
        answers.push(answer);
    }
    Ok(answers)
}

/// A map of one replica's items as an [`ItemSource`].
impl ItemSource for BTreeMap<Id, Record> {
    type Error = std::convert::Infallible;

    fn fingerprint(&self, range: &IdRange) -> Result<Fingerprint, Self::Error> {
        let mut fp = Fingerprint::EMPTY;
        self.for_each(range, &mut |id, r| fp.insert_record(id, r))?;
        Ok(fp)
    }

    fn for_each(
        &self,
        range: &IdRange,
        f: &mut dyn FnMut(&Id, &Record),
    ) -> Result<(), Self::Error> {
        for (id, r) in self.range(*range) {
            f(id, r);
        }
        Ok(())
    }
}

/// Answers a [`Round`] from one replica's items: the reference implementation.
pub fn answer_from_items(round: &Round, items: &BTreeMap<Id, Record>) -> Answers {
    match answer_round(items, round) {
        Ok(a) => a,
        Err(AnswerError::BadAsk { index, what }) => panic!("ask {index}: {what}"),
        Err(AnswerError::Source(never)) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;
    use proptest::prelude::*;

    fn run(replicas: &[BTreeMap<Id, Record>], config: Config) -> (Differences, CompareStats) {
        run_watching(replicas, config, |_| {})
    }

    /// Every replica's answers to its round.
    fn answer_all(replicas: &[BTreeMap<Id, Record>], rounds: &[Round]) -> Vec<Answers> {
        replicas
            .iter()
            .zip(rounds)
            .map(|(items, round)| answer_from_items(round, items))
            .collect()
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
            rec.answer(answer_all(replicas, &rounds)).unwrap();
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

    /// Keys `0..n`, all at version 1.
    fn items(n: u32) -> BTreeMap<Id, Record> {
        (0..n)
            .map(|k| (Id::from_key(&k.to_le_bytes()), record(1, false, false)))
            .collect()
    }

    /// `base` with keys `0, step, 2 step, ...` (`count` of them) written at version 5.
    fn rewritten(base: &BTreeMap<Id, Record>, count: u32, step: u32) -> BTreeMap<Id, Record> {
        let mut other = base.clone();
        for k in 0..count {
            other.insert(
                Id::from_key(&(k * step).to_le_bytes()),
                record(5, false, false),
            );
        }
        other
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
            let config = Config { split: 16, leaf_items: leaf, ..Config::default() };
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
        let items = items(5000);
        let (found, stats) = run(&[items.clone(), items.clone(), items], Config::default());
        assert!(found.is_empty());
        assert_eq!(stats.rounds, 1);
    }

    #[test]
    fn rounds_do_not_grow_with_the_number_of_differences() {
        let base = items(20_000);
        let mut rounds = Vec::new();
        for d in [1u32, 10, 1000] {
            let other = rewritten(&base, d, 7);
            let (found, stats) = run(&[base.clone(), other], Config::default());
            assert_eq!(found.len(), d as usize);
            rounds.push(stats.rounds);
        }
        let (lo, hi) = (rounds.iter().min().unwrap(), rounds.iter().max().unwrap());
        assert!(hi - lo <= 1, "rounds {rounds:?}");
    }

    #[test]
    fn item_hashes_are_fixed_width_on_the_wire_and_round_trip() {
        let cfg = bincode::config::standard();
        let h = item_hash(&Id::from_key(b"k"), &record(7, false, false));
        assert_ne!(h, item_hash(&Id::from_key(b"k"), &record(7, false, true)));
        for (width, bytes) in [(Width::Short, SHORT_BYTES), (Width::Full, 8)] {
            let list = ItemHashes::of(width, [width.cut(h), width.cut(!h)]);
            let encoded = bincode::encode_to_vec(&list, cfg).unwrap();
            assert_eq!(encoded.len(), 2 + 2 * bytes, "{width:?}");
            let (back, _): (ItemHashes, usize) = bincode::decode_from_slice(&encoded, cfg).unwrap();
            assert_eq!(back.values(), vec![width.cut(h), width.cut(!h)]);
        }
    }

    #[test]
    fn a_located_range_is_a_few_bytes_and_a_path_off_the_tree_is_refused() {
        let cfg = bincode::config::standard();
        let at = Located {
            top: 0,
            path: vec![3, 7, 1, 0, 5, 2],
        };
        assert_eq!(bincode::encode_to_vec(&at, cfg).unwrap().len(), 5);
        for path in [
            vec![],
            vec![15],
            vec![1, 2, 3],
            vec![16, 0, 255],
            vec![9; MAX_PATH],
        ] {
            let at = Located { top: 300, path };
            let bytes = bincode::encode_to_vec(&at, cfg).unwrap();
            let (back, used): (Located, usize) = bincode::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!((back, used), (at, bytes.len()));
        }
        let deep = Located {
            top: 0,
            path: vec![0; MAX_PATH + 1],
        };
        assert!(bincode::encode_to_vec(&deep, cfg).is_err());
        let claims_deep = [0u8, PACKED | (MAX_PATH as u8 + 1)];
        assert!(bincode::decode_from_slice::<Located, _>(&claims_deep, cfg).is_err());
        let tops = [IdRange::ALL];
        let range = locate(&tops, 8, &at).unwrap();
        let mut expect = IdRange::ALL;
        for &p in &at.path {
            expect = split_range(&expect, 8)[usize::from(p)];
        }
        assert_eq!(range, expect);
        assert!(locate(
            &tops,
            8,
            &Located {
                top: 1,
                path: vec![]
            }
        )
        .is_err());
        assert!(locate(
            &tops,
            8,
            &Located {
                top: 0,
                path: vec![8]
            }
        )
        .is_err());
        assert!(locate(
            &tops,
            8,
            &Located {
                top: 0,
                path: vec![0; MAX_PATH + 1]
            }
        )
        .is_err());
    }

    /// Sums and hashes of 8 bits collide on about one pair in 256: anchors fail their
    /// check and are compared again at full width, and the result is still exact.
    #[test]
    fn collisions_of_short_sums_are_caught_by_the_anchor_check() {
        let base = items(30_000);
        let other = rewritten(&base, 3000u32, 7);
        let replicas = [base, other];
        let tiny = Config {
            short_bytes: 1,
            ..Config::default()
        };
        let (found, stats) = run(&replicas, tiny);
        assert_eq!(found, model_differences(&replicas));
        assert!(stats.anchors > 100, "{stats:?}");
        assert!(stats.anchors_redone > 0, "{stats:?}");
        // Most anchors still find their differences with the short sums.
        assert!(stats.anchors_redone < stats.anchors / 2, "{stats:?}");
        let (found, stats) = run(&replicas, Config::default());
        assert_eq!(found, model_differences(&replicas));
        assert_eq!(stats.anchors_redone, 0, "{stats:?}");
    }

    /// A replica that changes between rounds makes its anchor's check fail; the anchor is
    /// compared again and what it finds is what the replicas hold then.
    #[test]
    fn a_replica_that_changes_during_the_comparison_is_compared_again() {
        let base = items(20_000);
        let mut replicas = [rewritten(&base, 50, 11), base];
        let mut rec = Reconcile::new(vec![IdRange::ALL], 2, Config::default());
        let mut round = 0;
        while let Some(rounds) = rec.next_round() {
            round += 1;
            if round == 3 {
                // A write lands on replica 0 inside a range already found differing.
                let (id, _) = model_differences(&replicas)[0];
                replicas[0].insert(id, record(9, false, false));
            }
            rec.answer(answer_all(&replicas, &rounds)).unwrap();
        }
        assert!(rec.stats().anchors_redone >= 1, "{:?}", rec.stats());
        assert_eq!(rec.into_differences(), model_differences(&replicas));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn finds_exactly_the_model_differences_despite_collisions(
            reps in replicas(),
            leaf in 1u64..40,
            short_below in 0u64..500,
        ) {
            let config = Config { split: 4, leaf_items: leaf, short_below, short_bytes: 1 };
            let (found, _) = run(&reps, config);
            prop_assert_eq!(found, model_differences(&reps));
        }
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
        let base = items(20_000);
        let diverged = rewritten(&base, 100u32, 13);
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
