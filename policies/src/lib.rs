//! mend's recovery policies and the registry that names them.
//!
//! A policy looks at every replica's record of one key ([`KeyState`]) and returns
//! [`Action`]s; the engine validates them ([`mend_engine::policy::validate`]) and carries
//! them out. Policies are deterministic and do no I/O, which is what lets the tests below
//! run them over every combination of replica states against a plain model. The one
//! exception is [`ExecPolicy`], the adapter to an external program, which validates
//! everything the program says.
//!
//! | name | policy | used by |
//! |---|---|---|
//! | `dc` | [`DcPolicy`]: newest wins across groups; mergeable line-sets are merged | `mend dc` (default) |
//! | `merge` | [`MergePolicy`]: move the newest version to the key's owner, remove misplaced copies | `mend merge` |
//! | `union` | [`UnionPolicy`]: `dc`, always merging mergeable keys with [`union_lines`] | `mend dc --policy union` |
//! | `exec` | [`ExecPolicy`]: asks an external program, in versioned JSON lines (protocol: [`exec`]) | `mend dc -C COMMAND` |
//!
//! Laws every built-in policy is tested against (exhaustively for small key states,
//! with proptest for random ones; see `tests/`):
//! - **Valid**: [`validate`](mend_engine::policy::validate) accepts every decision.
//! - **Newest wins**: after the decision is applied, every replica the policy repairs
//!   holds the newest healthy version (DESIGN's order, [`Version::newest_cmp`]) or, for a
//!   merge, a version newer than all of them.
//! - **Deletes stick**: a tombstone is never replaced by older data, and no merge takes
//!   data from before the newest tombstone.
//! - **Corrupt never wins**: a corrupt record counts as absent; it is never a source, it
//!   is overwritten when a healthy version exists, and it is reported
//!   ([`Action::Unrecoverable`]), never removed, when none does.
//! - **Converges**: applying a decision and deciding again yields no copy, removal or
//!   merge.
//!
//! # Writing your own policy
//!
//! Implement [`RecoveryPolicy`] in your own crate and register a factory under a name:
//!
//! ```
//! use mend_engine::policy::{Action, KeyState, RecoveryPolicy};
//! use mend_policies::{DcConfig, DcPolicy, Registry};
//!
//! /// `dc`'s decisions, reported but never carried out.
//! #[derive(Debug)]
//! struct ReportOnly(DcPolicy);
//!
//! impl RecoveryPolicy for ReportOnly {
//!     fn name(&self) -> &str {
//!         "report-only"
//!     }
//!
//!     fn decide(&self, key: &KeyState) -> Vec<Action> {
//!         self.0
//!             .decide(key)
//!             .into_iter()
//!             .map(|action| Action::Skip { reason: format!("would {action:?}") })
//!             .collect()
//!     }
//! }
//!
//! let mut registry = Registry::builtin();
//! registry.register("report-only", Box::new(|| Box::new(ReportOnly(DcPolicy::new(DcConfig::default())))));
//! assert_eq!(registry.names(), ["dc", "merge", "report-only", "union"]);
//! let policy = registry.create("report-only").unwrap();
//! assert_eq!(policy.name(), "report-only");
//! assert!(registry.create("nope").is_err());
//! ```
//!
//! [`KeyState`]: mend_engine::policy::KeyState
//! [`Action`]: mend_engine::policy::Action
//! [`Action::Unrecoverable`]: mend_engine::policy::Action::Unrecoverable
//! [`RecoveryPolicy`]: mend_engine::policy::RecoveryPolicy
//! [`Version::newest_cmp`]: mend_engine::Version::newest_cmp

mod dc;
pub mod exec;
mod merge;
mod registry;
mod union;

pub use dc::{DcConfig, DcPolicy};
pub use exec::{
    ExecConfig, ExecPolicy, DEFAULT_BATCH_TIMEOUT, MAX_LINE_BYTES, MAX_VALUE_BYTES,
    PROTOCOL_VERSION,
};
pub use merge::MergePolicy;
pub use registry::{PolicyFactory, Registry, UnknownPolicy};
pub use union::{union_lines, UnionPolicy};

use mend_engine::policy::{Action, KeyState, Replica};

/// A replica as reports name it: `node (group N)`.
fn describe(replica: &Replica) -> String {
    format!("{} (group {})", replica.node, replica.group)
}

/// For a key with no healthy replica: [`Action::Unrecoverable`] naming the corrupt copies,
/// or nothing if no replica holds anything at all.
fn no_healthy_copy(key: &KeyState) -> Vec<Action> {
    let corrupt: Vec<String> = key
        .replicas
        .iter()
        .filter(|r| r.record.is_some_and(|rec| rec.corrupt))
        .map(describe)
        .collect();
    if corrupt.is_empty() {
        return Vec::new();
    }
    vec![Action::Unrecoverable {
        reason: format!("no healthy copy; corrupt on {}", corrupt.join(", ")),
    }]
}
