//! Property tests of every built-in policy over random key states (2 to 5 replicas, live,
//! mergeable, tombstone and corrupt records): every decision passes `validate`, loses
//! nothing, and converges: applied, the next decision changes nothing.

mod common;

use std::collections::BTreeSet;

use common::{changes, healthy, Held, World};
use mend_engine::policy::{validate, Action};
use mend_engine::Version;
use mend_policies::Registry;
use proptest::prelude::*;

/// A few line-set values, so that replicas share versions and lines.
const VALUES: [&str; 4] = ["a\n", "b\n", "a\nc\n", "c\nb\n"];

fn held() -> impl Strategy<Value = Held> {
    prop_oneof![
        1 => Just(Held::Absent),
        4 => (0..VALUES.len(), 1u64..4, any::<bool>(), prop::bool::weighted(0.2)).prop_map(
            |(v, ts, mergeable, corrupt)| Held::Live { value: VALUES[v].into(), ts, mergeable, corrupt }
        ),
        2 => (1u64..4, prop::bool::weighted(0.2)).prop_map(|(ts, corrupt)| Held::Tombstone { ts, corrupt }),
    ]
}

/// Replicas and which own the key: mostly exactly one owner (a `merge` run), sometimes
/// any mix (a `dc` run has all, a broken route list none or several).
fn world() -> impl Strategy<Value = World> {
    (2usize..=5).prop_flat_map(|n| {
        let proper = prop_oneof![
            4 => (0..n).prop_map(move |owner| (0..n).map(|i| i == owner).collect::<Vec<_>>()),
            1 => prop::collection::vec(any::<bool>(), n),
        ];
        (prop::collection::vec(held(), n), proper)
            .prop_map(|(held, proper)| World::new(&held, &proper))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn every_builtin_decision_is_valid_and_converges(world in world()) {
        let registry = Registry::builtin();
        for name in registry.names() {
            let policy = registry.create(name).unwrap();
            let actions = policy.decide(&world.key);
            prop_assert!(validate(&world.key, &actions).is_ok(), "{name}: {:?} -> {actions:?}: {:?}", world.key.replicas, validate(&world.key, &actions));
            let after = world.apply(policy.as_ref(), &actions);
            let again = policy.decide(&after.key);
            prop_assert!(!changes(&again), "{name} does not converge: {:?} -> {actions:?} -> {again:?}", world.key.replicas);
            prop_assert!(validate(&after.key, &again).is_ok());

            match world.winner() {
                // Corrupt copies alone are reported, never touched.
                None => {
                    prop_assert!(!changes(&actions));
                    prop_assert_eq!(&after, &world);
                }
                // Nothing is lost: wherever the decision wrote, the result is at least as
                // new as the newest healthy version (a merge is newer still).
                Some(winner) => {
                    for i in 0..world.key.replicas.len() {
                        if after.key.replicas[i] != world.key.replicas[i] {
                            if let Some(v) = healthy(&after, i) {
                                prop_assert!(!winner.is_newer_than(&v), "{name}: replica {i} got {v:?} older than {winner:?}");
                            }
                        }
                    }
                    // dc and union leave every replica holding one and the same version.
                    if name != "merge" {
                        let first = healthy(&after, 0);
                        prop_assert!(first.is_some());
                        prop_assert!((0..world.key.replicas.len()).all(|i| healthy(&after, i) == first));
                        prop_assert!(again.is_empty());
                        let merged = first.expect("checked");
                        if merged != winner {
                            deletes_stick(&world, &after, winner, merged)?;
                        }
                    }
                    // merge moves the winner to the one owner.
                    if name == "merge" {
                        let owners: Vec<usize> = (0..world.key.replicas.len()).filter(|&i| world.key.replicas[i].proper).collect();
                        if let [owner] = owners[..] {
                            prop_assert_eq!(healthy(&after, owner), Some(winner));
                        }
                    }
                }
            }
            if name != "merge" {
                prop_assert!(!actions.iter().any(|a| matches!(a, Action::Remove { .. })), "{name} removed");
            }
        }
    }
}

fn lines(value: &[u8]) -> BTreeSet<&[u8]> {
    value
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

/// A merge keeps every line of the winner and takes lines only from live versions newer
/// than the newest tombstone: what a delete removed does not come back.
fn deletes_stick(
    world: &World,
    after: &World,
    winner: Version,
    merged: Version,
) -> Result<(), TestCaseError> {
    prop_assert!(merged.is_newer_than(&winner) && merged.is_mergeable() && !winner.is_tombstone());
    let healthy: Vec<Version> = (0..world.key.replicas.len())
        .filter_map(|i| healthy(world, i))
        .collect();
    let newest_delete = healthy
        .iter()
        .filter(|v| v.is_tombstone())
        .max_by(|a, b| a.newest_cmp(b));
    let allowed: BTreeSet<&[u8]> = healthy
        .iter()
        .filter(|v| !v.is_tombstone() && newest_delete.is_none_or(|t| v.is_newer_than(t)))
        .flat_map(|v| lines(&world.values[&v.checksum]))
        .collect();
    let got = lines(&after.values[&merged.checksum]);
    prop_assert!(
        got.is_subset(&allowed),
        "merged {got:?}, allowed {allowed:?}"
    );
    prop_assert!(lines(&world.values[&winner.checksum]).is_subset(&got));
    Ok(())
}
