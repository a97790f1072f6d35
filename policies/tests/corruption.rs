//! "Corrupt never wins": a corrupt record counts as absent, is repaired from the next
//! newest healthy version, and is reported (never copied, never removed) when no healthy
//! version exists.

mod common;

use common::{changes, healthy, Held, World};
use mend_engine::policy::{validate, Action, RecoveryPolicy};
use mend_policies::{DcConfig, DcPolicy, MergePolicy};

fn dc() -> DcPolicy {
    DcPolicy::new(DcConfig::default())
}

#[test]
fn dc_repairs_a_corrupt_newest_copy_with_the_next_newest_healthy_one() {
    let world = World::all_proper(&[
        Held::live("newest", 3).corrupt(),
        Held::live("next", 2),
        Held::live("old", 1),
        Held::Absent,
    ]);
    let actions = dc().decide(&world.key);
    assert_eq!(
        actions,
        vec![Action::Copy {
            from: 1,
            to: vec![0, 2, 3]
        }]
    );
    validate(&world.key, &actions).unwrap();
    let after = world.apply(&dc(), &actions);
    let next = healthy(&world, 1);
    assert!((0..4).all(|i| healthy(&after, i) == next));
    assert!(dc().decide(&after.key).is_empty());
}

#[test]
fn dc_overwrites_a_corrupt_copy_of_the_winning_version_itself() {
    let world = World::all_proper(&[Held::live("v", 2).corrupt(), Held::live("v", 2)]);
    assert_eq!(
        dc().decide(&world.key),
        vec![Action::Copy {
            from: 1,
            to: vec![0]
        }]
    );
}

#[test]
fn dc_reports_a_key_with_only_corrupt_copies_and_changes_nothing() {
    let world = World::all_proper(&[
        Held::live("a", 3).corrupt(),
        Held::Absent,
        Held::Tombstone {
            ts: 1,
            corrupt: true,
        },
    ]);
    let actions = dc().decide(&world.key);
    match actions.as_slice() {
        [Action::Unrecoverable { reason }] => {
            assert!(
                reason.contains("n0 (group 1)") && reason.contains("n2 (group 1)"),
                "{reason}"
            );
            assert!(!reason.contains("n1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    validate(&world.key, &actions).unwrap();
}

#[test]
fn merge_repairs_a_corrupt_owner_then_removes_the_misplaced_copy() {
    let world = World::new(
        &[Held::live("good", 2), Held::live("bad", 3).corrupt()],
        &[false, true],
    );
    let actions = MergePolicy::new().decide(&world.key);
    assert_eq!(
        actions,
        vec![
            Action::Copy {
                from: 0,
                to: vec![1]
            },
            Action::Remove {
                on: vec![0],
                keep: 1
            }
        ]
    );
    validate(&world.key, &actions).unwrap();
    let after = world.apply(&MergePolicy::new(), &actions);
    assert_eq!(healthy(&after, 1), healthy(&world, 0));
    assert_eq!(after.key.replicas[0].record, None);
}

#[test]
fn merge_removes_an_older_corrupt_misplaced_copy() {
    let world = World::new(
        &[Held::live("bad", 1).corrupt(), Held::live("good", 2)],
        &[false, true],
    );
    let actions = MergePolicy::new().decide(&world.key);
    assert_eq!(
        actions,
        vec![Action::Remove {
            on: vec![0],
            keep: 1
        }]
    );
    validate(&world.key, &actions).unwrap();
}

#[test]
fn merge_leaves_and_reports_a_corrupt_misplaced_copy_newer_than_anything_healthy() {
    let world = World::new(
        &[
            Held::live("bad", 3).corrupt(),
            Held::live("good", 2),
            Held::Absent,
        ],
        &[false, false, true],
    );
    let actions = MergePolicy::new().decide(&world.key);
    validate(&world.key, &actions).unwrap();
    match actions.as_slice() {
        [Action::Copy { from: 1, to }, Action::Remove { on, keep: 2 }, Action::Unrecoverable { reason }] =>
        {
            assert_eq!(to, &[2]);
            assert_eq!(on, &[1]);
            assert!(reason.contains("n0 (group 1)"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Removing it would lose the newer version: the contract refuses that too.
    assert!(validate(
        &world.key,
        &[
            Action::Copy {
                from: 1,
                to: vec![2]
            },
            Action::Remove {
                on: vec![0],
                keep: 2
            }
        ]
    )
    .is_err());
}

#[test]
fn merge_reports_a_key_with_only_corrupt_copies_and_removes_nothing() {
    for held in [
        [Held::live("bad", 2).corrupt(), Held::Absent],
        [Held::Absent, Held::live("bad", 2).corrupt()],
        [
            Held::live("bad", 1).corrupt(),
            Held::Tombstone {
                ts: 2,
                corrupt: true,
            },
        ],
    ] {
        let world = World::new(&held, &[false, true]);
        let actions = MergePolicy::new().decide(&world.key);
        assert!(
            matches!(actions.as_slice(), [Action::Unrecoverable { .. }]),
            "{actions:?}"
        );
        assert!(!changes(&actions));
    }
}

#[test]
fn every_builtin_policy_reports_only_corrupt_copies() {
    let registry = mend_policies::Registry::builtin();
    let world = World::new(
        &[
            Held::live("bad", 2).corrupt(),
            Held::Tombstone {
                ts: 1,
                corrupt: true,
            },
        ],
        &[false, true],
    );
    for name in registry.names() {
        let policy: Box<dyn RecoveryPolicy> = registry.create(name).unwrap();
        let actions = policy.decide(&world.key);
        assert!(
            matches!(actions.as_slice(), [Action::Unrecoverable { .. }]),
            "{name}: {actions:?}"
        );
    }
}
