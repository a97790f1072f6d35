//! The recovery policy contract: given every replica's record of one key ([`KeyState`]),
//! a policy returns [`Action`]s. Policies are small object-safe traits with their own
//! config (after quinn's congestion controllers); they do no I/O. The engine validates
//! every decision ([`validate`]) before acting, whoever made it (built-in policy, Rust
//! plugin, exec plugin), and applies `--safe` / `--dry-run` on top.
//!
//! Laws every built-in policy is tested against:
//! - **Nothing is lost**: no action removes the only healthy copy of a version, nor a
//!   version newer than the one that replaces it; a copy never targets a replica holding a
//!   newer healthy version.
//! - **Corrupt never wins**: a copy's source is a healthy replica.
//! - **Converges**: applying a decision and asking again yields no further action.

use std::fmt;

use crate::version::Record;
use crate::{Id, Version};

/// One replica of a key: where it is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The group of the node.
    pub group: u32,
    /// The node's id.
    pub node: String,
    /// Whether the route list makes this node the key's owner in its group (always true in
    /// a `dc` run; false for a misplaced copy in a `merge` run).
    pub proper: bool,
    /// What the node holds (`None`: nothing).
    pub record: Option<Record>,
}

impl Replica {
    /// The version held, if healthy (present and not marked corrupt).
    pub fn healthy(&self) -> Option<&Version> {
        self.record
            .as_ref()
            .filter(|r| !r.corrupt)
            .map(|r| &r.version)
    }
}

/// Every replica's record of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The key's id.
    pub id: Id,
    /// The replicas, in a stable order (groups of the run, then nodes).
    pub replicas: Vec<Replica>,
}

impl KeyState {
    /// The newest healthy version and the first replica holding it.
    pub fn newest_healthy(&self) -> Option<(usize, &Version)> {
        self.replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.healthy().map(|v| (i, v)))
            .fold(None, |best: Option<(usize, &Version)>, (i, v)| match best {
                Some((_, b)) if !v.is_newer_than(b) => best,
                _ => Some((i, v)),
            })
    }
}

/// What to do with one key. Indices refer to [`KeyState::replicas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `from`'s version (its value, or its tombstone) to each replica in `to`.
    Copy {
        /// The source replica.
        from: usize,
        /// The destination replicas.
        to: Vec<usize>,
    },
    /// Remove the copies on `on` (each exactly the version it holds), but only after
    /// `keep` is confirmed to hold a version at least as new as each of them.
    Remove {
        /// The replicas to remove from.
        on: Vec<usize>,
        /// The replica that must hold the key first.
        keep: usize,
    },
    /// Merge the values of `sources` (mergeable keys) into a new version, written to `to`.
    Merge {
        /// The replicas whose values are merged.
        sources: Vec<usize>,
        /// Where the merged version goes.
        to: Vec<usize>,
    },
    /// Nothing to do for this key.
    Skip {
        /// Why (for the report).
        reason: String,
    },
    /// The key cannot be recovered automatically (say, every copy is corrupt): it is
    /// reported and counted as failed; nothing is changed.
    Unrecoverable {
        /// Why.
        reason: String,
    },
}

impl Action {
    /// A short name for reports: `copy`, `remove`, `merge`, `skip`, `unrecoverable`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Copy { .. } => "copy",
            Action::Remove { .. } => "remove",
            Action::Merge { .. } => "merge",
            Action::Skip { .. } => "skip",
            Action::Unrecoverable { .. } => "unrecoverable",
        }
    }
}

/// Reads a replica's value for a policy that needs content (the exec plugin adapter's
/// documented value request). Provided by the engine, which does the I/O.
pub trait ValueFetch: Send + Sync {
    /// The value `key.replicas[replica]` holds.
    fn fetch(&self, key: &KeyState, replica: usize) -> Result<Vec<u8>, String>;
}

/// A policy failed as a whole (a plugin crashed, hung or answered garbage): the run stops,
/// and keys not yet decided are left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy}: {message}")]
pub struct PolicyError {
    /// The policy (or plugin command).
    pub policy: String,
    /// What went wrong, naming the line and key where there is one.
    pub message: String,
}

/// A recovery policy: decides, never acts.
pub trait RecoveryPolicy: Send + Sync + fmt::Debug {
    /// The policy's name (as `--policy NAME` selects it).
    fn name(&self) -> &str;

    /// The actions for one key. Called once per differing key; must not do I/O.
    fn decide(&self, key: &KeyState) -> Vec<Action>;

    /// The actions for a batch of keys, in order. The engine calls this (off the async
    /// runtime) before executing any of the batch, so a failure leaves the whole batch
    /// unchanged. The default decides key by key; an adapter to an external process
    /// overrides it to stream the batch, and may fetch values through `values`.
    fn decide_batch(
        &self,
        keys: &[KeyState],
        values: &dyn ValueFetch,
    ) -> Result<Vec<Vec<Action>>, PolicyError> {
        let _ = values;
        Ok(keys.iter().map(|k| self.decide(k)).collect())
    }

    /// For [`Action::Merge`]: the merged value of `values` (one per source, in the order
    /// of the action's `sources`), or `None` if this policy cannot merge them. The engine
    /// reads the values; the policy only computes. It is called after the
    /// [`RecoveryPolicy::decide_batch`] of the key's batch and before any other batch is
    /// decided, so a policy may keep what that call found for it.
    fn merge_values(&self, _key: &KeyState, _values: &[&[u8]]) -> Option<Vec<u8>> {
        None
    }
}

/// Why a decision is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAction {
    /// An index is out of range.
    #[error("replica {index} does not exist (the key has {count} replicas)")]
    NoSuchReplica {
        /// The index given.
        index: usize,
        /// How many replicas there are.
        count: usize,
    },
    /// A copy's source holds nothing healthy.
    #[error("copy from replica {from} ({node}), which holds no healthy version")]
    SourceNotHealthy {
        /// The source.
        from: usize,
        /// Its node.
        node: String,
    },
    /// A copy would replace a newer healthy version.
    #[error("copy to replica {to} ({node}) would replace its newer version")]
    ReplacesNewer {
        /// The destination.
        to: usize,
        /// Its node.
        node: String,
    },
    /// A replica is both source and destination, or listed twice.
    #[error("replica {0} is listed twice or copies onto itself")]
    Repeated(usize),
    /// A removal is not backed by a kept copy at least as new.
    #[error("remove on replica {on} ({node}) would lose its version: replica {keep} neither holds nor receives one at least as new")]
    LosesVersion {
        /// The replica to remove from.
        on: usize,
        /// Its node.
        node: String,
        /// The replica that should keep it.
        keep: usize,
    },
    /// A merge needs at least one source and one destination.
    #[error("merge needs at least one source and one destination")]
    EmptyMerge,
}

/// Checks a decision against the key state before the engine acts on it; see the module
/// docs for the rules.
pub fn validate(key: &KeyState, actions: &[Action]) -> Result<(), InvalidAction> {
    let count = key.replicas.len();
    let check = |i: usize| {
        if i < count {
            Ok(())
        } else {
            Err(InvalidAction::NoSuchReplica { index: i, count })
        }
    };
    let no_repeats = |list: &[usize], also: Option<usize>| {
        let mut seen = std::collections::BTreeSet::new();
        for i in list.iter().copied().chain(also) {
            if !seen.insert(i) {
                return Err(InvalidAction::Repeated(i));
            }
        }
        Ok(())
    };
    // What each replica will hold after the copies (for checking removals).
    let mut after: Vec<Option<Version>> =
        key.replicas.iter().map(|r| r.healthy().copied()).collect();
    for action in actions {
        match action {
            Action::Copy { from, to } => {
                check(*from)?;
                to.iter().try_for_each(|t| check(*t))?;
                no_repeats(to, Some(*from))?;
                let source = key.replicas[*from].healthy().ok_or_else(|| {
                    InvalidAction::SourceNotHealthy {
                        from: *from,
                        node: key.replicas[*from].node.clone(),
                    }
                })?;
                for t in to {
                    if key.replicas[*t]
                        .healthy()
                        .is_some_and(|held| held.is_newer_than(source))
                    {
                        return Err(InvalidAction::ReplacesNewer {
                            to: *t,
                            node: key.replicas[*t].node.clone(),
                        });
                    }
                    after[*t] = Some(*source);
                }
            }
            Action::Merge { sources, to } => {
                if sources.is_empty() || to.is_empty() {
                    return Err(InvalidAction::EmptyMerge);
                }
                sources.iter().chain(to).try_for_each(|i| check(*i))?;
                no_repeats(sources, None)?;
                no_repeats(to, None)?;
                for s in sources {
                    if key.replicas[*s].healthy().is_none() {
                        return Err(InvalidAction::SourceNotHealthy {
                            from: *s,
                            node: key.replicas[*s].node.clone(),
                        });
                    }
                }
            }
            Action::Remove { .. } | Action::Skip { .. } | Action::Unrecoverable { .. } => {}
        }
    }
    for action in actions {
        if let Action::Remove { on, keep } = action {
            check(*keep)?;
            on.iter().try_for_each(|i| check(*i))?;
            no_repeats(on, Some(*keep))?;
            for r in on {
                let removed = key.replicas[*r].record.map(|rec| rec.version);
                let kept = after[*keep];
                let safe = match (removed, kept) {
                    (None, _) => true,
                    (Some(gone), Some(kept)) => !gone.is_newer_than(&kept),
                    (Some(_), None) => false,
                };
                if !safe {
                    return Err(InvalidAction::LosesVersion {
                        on: *r,
                        node: key.replicas[*r].node.clone(),
                        keep: *keep,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(node: &str, v: Option<Version>, corrupt: bool) -> Replica {
        Replica {
            group: 1,
            node: node.into(),
            proper: true,
            record: v.map(|version| Record { version, corrupt }),
        }
    }

    fn key(replicas: Vec<Replica>) -> KeyState {
        KeyState {
            id: Id::from_key(b"k"),
            replicas,
        }
    }

    #[test]
    fn copies_must_come_from_healthy_replicas_and_never_replace_newer() {
        let old = Version::of_value(b"a", 1, 0);
        let new = Version::of_value(b"b", 2, 0);
        let k = key(vec![
            replica("a", Some(new), false),
            replica("b", Some(old), false),
            replica("c", Some(new), true),
        ]);
        assert!(validate(
            &k,
            &[Action::Copy {
                from: 0,
                to: vec![1, 2]
            }]
        )
        .is_ok());
        assert!(matches!(
            validate(
                &k,
                &[Action::Copy {
                    from: 1,
                    to: vec![0]
                }]
            ),
            Err(InvalidAction::ReplacesNewer { .. })
        ));
        assert!(matches!(
            validate(
                &k,
                &[Action::Copy {
                    from: 2,
                    to: vec![1]
                }]
            ),
            Err(InvalidAction::SourceNotHealthy { .. })
        ));
        assert!(matches!(
            validate(
                &k,
                &[Action::Copy {
                    from: 0,
                    to: vec![0]
                }]
            ),
            Err(InvalidAction::Repeated(0))
        ));
        assert!(matches!(
            validate(
                &k,
                &[Action::Copy {
                    from: 0,
                    to: vec![7]
                }]
            ),
            Err(InvalidAction::NoSuchReplica { .. })
        ));
    }

    #[test]
    fn removal_needs_a_kept_copy_at_least_as_new() {
        let old = Version::of_value(b"a", 1, 0);
        let new = Version::of_value(b"b", 2, 0);
        let k = key(vec![
            replica("owner", Some(old), false),
            replica("misplaced", Some(new), false),
        ]);
        // Removing the only newest copy is refused...
        assert!(matches!(
            validate(
                &k,
                &[Action::Remove {
                    on: vec![1],
                    keep: 0
                }]
            ),
            Err(InvalidAction::LosesVersion { .. })
        ));
        // ...unless the same decision copies it to the kept replica first.
        assert!(validate(
            &k,
            &[
                Action::Copy {
                    from: 1,
                    to: vec![0]
                },
                Action::Remove {
                    on: vec![1],
                    keep: 0
                }
            ]
        )
        .is_ok());
        let k = key(vec![
            replica("owner", None, false),
            replica("misplaced", Some(old), false),
        ]);
        assert!(validate(
            &k,
            &[Action::Remove {
                on: vec![1],
                keep: 0
            }]
        )
        .is_err());
    }

    #[test]
    fn newest_healthy_skips_corrupt_copies() {
        let old = Version::of_value(b"a", 1, 0);
        let new = Version::of_value(b"b", 2, 0);
        let k = key(vec![
            replica("a", Some(new), true),
            replica("b", Some(old), false),
        ]);
        assert_eq!(k.newest_healthy(), Some((1, &old)));
    }
}
