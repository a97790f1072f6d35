//! Policies by name: what `--policy NAME` selects.

use std::collections::BTreeMap;
use std::fmt;

use mend_engine::policy::RecoveryPolicy;

use crate::{DcConfig, DcPolicy, MergePolicy, UnionPolicy};

/// Makes a fresh policy. One is registered per name; the engine calls it once per run.
pub type PolicyFactory = Box<dyn Fn() -> Box<dyn RecoveryPolicy> + Send + Sync>;

/// Recovery policies by name.
///
/// [`Registry::builtin`] knows `dc`, `merge` and `union`; a crate with its own
/// [`RecoveryPolicy`] adds it with [`Registry::register`] and hands the registry to the
/// engine (see the crate docs for an example). Names are case-sensitive and listed in
/// sorted order.
pub struct Registry {
    factories: BTreeMap<String, PolicyFactory>,
}

impl Registry {
    /// A registry that knows no policy.
    pub fn empty() -> Self {
        Registry {
            factories: BTreeMap::new(),
        }
    }

    /// The built-in policies: `dc` ([`DcPolicy`] with [`DcConfig::default`]), `merge`
    /// ([`MergePolicy`]) and `union` ([`UnionPolicy`]).
    pub fn builtin() -> Self {
        let mut registry = Registry::empty();
        registry.register(
            DcPolicy::NAME,
            Box::new(|| Box::new(DcPolicy::new(DcConfig::default()))),
        );
        registry.register(MergePolicy::NAME, Box::new(|| Box::new(MergePolicy::new())));
        registry.register(UnionPolicy::NAME, Box::new(|| Box::new(UnionPolicy::new())));
        registry
    }

    /// Registers `factory` under `name`, replacing (and returning) the factory registered
    /// under that name before, if any: a crate may override a built-in policy.
    pub fn register(
        &mut self,
        name: impl Into<String>,
        factory: PolicyFactory,
    ) -> Option<PolicyFactory> {
        self.factories.insert(name.into(), factory)
    }

    /// A new instance of the policy registered under `name`.
    pub fn create(&self, name: &str) -> Result<Box<dyn RecoveryPolicy>, UnknownPolicy> {
        match self.factories.get(name) {
            Some(factory) => Ok(factory()),
            None => Err(UnknownPolicy {
                name: name.to_owned(),
                known: self.factories.keys().cloned().collect(),
            }),
        }
    }

    /// Whether a policy is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.factories.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }
}

impl Default for Registry {
    /// [`Registry::builtin`].
    fn default() -> Self {
        Registry::builtin()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

/// [`Registry::create`] was asked for a name nothing is registered under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown recovery policy {name:?} (known: {})", known.join(", "))]
pub struct UnknownPolicy {
    /// The name asked for.
    pub name: String,
    /// The names the registry knows, sorted.
    pub known: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policies_are_created_under_their_names() {
        let registry = Registry::builtin();
        assert_eq!(registry.names(), ["dc", "merge", "union"]);
        for name in registry.names() {
            assert_eq!(registry.create(name).unwrap().name(), name);
        }
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let err = Registry::builtin().create("newest").unwrap_err();
        assert_eq!(err.known, ["dc", "merge", "union"]);
        assert_eq!(
            err.to_string(),
            r#"unknown recovery policy "newest" (known: dc, merge, union)"#
        );
    }

    #[test]
    fn registering_a_name_again_replaces_it() {
        let mut registry = Registry::builtin();
        assert!(registry
            .register("dc", Box::new(|| Box::new(UnionPolicy::new())))
            .is_some());
        assert_eq!(registry.create("dc").unwrap().name(), "union");
        assert!(registry
            .register("mine", Box::new(|| Box::new(MergePolicy::new())))
            .is_none());
        assert!(registry.contains("mine"));
    }
}
