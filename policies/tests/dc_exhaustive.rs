//! `dc` (and `union`, which decides alike for keys that are not mergeable) over every
//! combination of three replicas' states, against the model in `common`.

mod common;

use common::{combinations, healthy, seven_states, states_with_corrupt, Held, World};
use mend_engine::policy::{validate, Action, RecoveryPolicy};
use mend_policies::{DcConfig, DcPolicy, UnionPolicy};

/// Decides, checks the decision against DESIGN's rules, applies it, and checks the result
/// is the winner everywhere and needs nothing more.
fn check(policy: &dyn RecoveryPolicy, world: &World) {
    let actions = policy.decide(&world.key);
    let case = || {
        format!(
            "{}: {:?}\n-> {actions:?}",
            policy.name(),
            world.key.replicas
        )
    };
    validate(&world.key, &actions).unwrap_or_else(|e| panic!("{e}\n{}", case()));
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Remove { .. })),
        "dc removed: {}",
        case()
    );

    for action in &actions {
        if let Action::Copy { from, to } = action {
            let source = healthy(world, *from).expect("validated");
            for &t in to {
                if let Some(held) = healthy(world, t) {
                    assert!(
                        !held.is_newer_than(&source),
                        "copy replaces newer: {}",
                        case()
                    );
                    assert!(
                        !(held.is_tombstone()
                            && !source.is_tombstone()
                            && source.timestamp <= held.timestamp),
                        "tombstone replaced by older live data: {}",
                        case()
                    );
                }
            }
        }
    }

    let after = world.apply(policy, &actions);
    match world.winner() {
        Some(winner) => {
            for i in 0..world.key.replicas.len() {
                assert_eq!(
                    healthy(&after, i),
                    Some(winner),
                    "replica {i} misses the winner: {}",
                    case()
                );
            }
            let again = policy.decide(&after.key);
            assert!(
                again.is_empty(),
                "not converged: {again:?} after {}",
                case()
            );
        }
        None if world.key.replicas.iter().any(|r| r.record.is_some()) => {
            assert!(
                matches!(actions.as_slice(), [Action::Unrecoverable { reason }] if reason.contains("corrupt")),
                "only corrupt copies must be reported: {}",
                case()
            );
            assert_eq!(after, *world);
        }
        None => assert!(actions.is_empty(), "nothing to do: {}", case()),
    }
}

fn every_combination(states: impl Fn(usize) -> Vec<Held>) -> usize {
    let per_replica: Vec<Vec<Held>> = (0..3).map(states).collect();
    let cases = combinations(&per_replica);
    let policies: [&dyn RecoveryPolicy; 2] =
        [&DcPolicy::new(DcConfig::default()), &UnionPolicy::new()];
    for held in &cases {
        let world = World::all_proper(held);
        for policy in policies {
            check(policy, &world);
        }
    }
    cases.len()
}

#[test]
fn every_combination_of_three_replicas_converges_to_the_newest() {
    // Equal timestamps hold different live values on different replicas.
    assert_eq!(every_combination(|r| seven_states(r, true)), 343);
}

#[test]
fn every_combination_of_three_replicas_sharing_versions_converges() {
    // Equal timestamps hold the same live value: replicas may already agree.
    assert_eq!(every_combination(|r| seven_states(r, false)), 343);
}

#[test]
fn every_combination_with_corrupt_copies_converges_or_is_reported() {
    assert_eq!(every_combination(|r| states_with_corrupt(r, true)), 1000);
    assert_eq!(every_combination(|r| states_with_corrupt(r, false)), 1000);
}
