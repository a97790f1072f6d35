//! `merge` over every combination of misplaced replicas' and the owner's states, against
//! the model in `common`.

mod common;

use common::{changes, combinations, healthy, seven_states, states_with_corrupt, Held, World};
use mend_engine::policy::{validate, Action, RecoveryPolicy};
use mend_policies::MergePolicy;

/// The last replica is the owner; the others are misplaced copies.
fn check(world: &World) {
    let policy = MergePolicy::new();
    let owner = world.key.replicas.len() - 1;
    let actions = policy.decide(&world.key);
    let case = || format!("{:?}\n-> {actions:?}", world.key.replicas);
    validate(&world.key, &actions).unwrap_or_else(|e| panic!("{e}\n{}", case()));
    let after = world.apply(&policy, &actions);

    let Some(winner) = world.winner() else {
        if world.key.replicas.iter().any(|r| r.record.is_some()) {
            assert!(
                matches!(actions.as_slice(), [Action::Unrecoverable { .. }]),
                "only corrupt copies must be reported, nothing removed: {}",
                case()
            );
        } else {
            assert!(actions.is_empty(), "nothing to do: {}", case());
        }
        assert_eq!(after, *world);
        return;
    };

    assert_eq!(
        healthy(&after, owner),
        Some(winner),
        "owner misses the winner: {}",
        case()
    );
    let mut left = false;
    for i in 0..owner {
        match after.key.replicas[i].record {
            None => {}
            // Only a corrupt copy newer than anything healthy stays, untouched, and is reported.
            Some(record) => {
                assert!(
                    record.corrupt && record.version.is_newer_than(&winner),
                    "misplaced copy left: {}",
                    case()
                );
                assert_eq!(after.key.replicas[i], world.key.replicas[i]);
                left = true;
            }
        }
    }
    assert_eq!(
        left,
        actions
            .iter()
            .any(|a| matches!(a, Action::Unrecoverable { .. })),
        "a copy left in place is reported, and only then: {}",
        case()
    );

    let again = policy.decide(&after.key);
    assert!(
        !changes(&again),
        "not converged: {again:?} after {}",
        case()
    );
    if !left {
        assert!(
            again.is_empty(),
            "not converged: {again:?} after {}",
            case()
        );
    }
}

fn every_combination(replicas: usize, states: impl Fn(usize) -> Vec<Held>) -> usize {
    let per_replica: Vec<Vec<Held>> = (0..replicas).map(states).collect();
    let cases = combinations(&per_replica);
    let mut proper = vec![false; replicas];
    proper[replicas - 1] = true;
    for held in &cases {
        check(&World::new(held, &proper));
    }
    cases.len()
}

#[test]
fn a_misplaced_copy_and_the_owner_in_every_combination() {
    assert_eq!(every_combination(2, |r| seven_states(r, true)), 49);
    assert_eq!(every_combination(2, |r| seven_states(r, false)), 49);
}

#[test]
fn two_misplaced_copies_and_the_owner_in_every_combination() {
    assert_eq!(every_combination(3, |r| seven_states(r, true)), 343);
    assert_eq!(every_combination(3, |r| seven_states(r, false)), 343);
}

#[test]
fn every_combination_with_corrupt_copies() {
    assert_eq!(every_combination(2, |r| states_with_corrupt(r, true)), 100);
    assert_eq!(
        every_combination(3, |r| states_with_corrupt(r, false)),
        1000
    );
}
