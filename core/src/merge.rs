//! The merge hook: how a node asks user code to resolve siblings.
//!
//! When a replica holds concurrent siblings of a key whose keyspace binds a
//! resolver, it calls a [`MergeHook`]. The hook returns the one version that
//! replaces the siblings, built with [`VersionSet::merged`] so that its
//! clock is the least upper bound of theirs (no new counter) and it records
//! the resolver's content hash; [`merge_into`] then absorbs it. Every input
//! is a function of the set alone, so replicas that merge the same set
//! independently produce byte-identical versions; replicas running two
//! versions of a resolver produce equal clocks with different bytes, which
//! [`VersionSet::absorb`]'s digest tie-break settles the same way
//! everywhere.
//!
//! Architecture invariant: a failed merge never loses data. On
//! [`MergeFailure`] the siblings stay as they were, and the caller counts
//! and logs the failure.
//!
//! What it is not: a Wasm host. Core never depends on wasmtime; the
//! `isthmus-resolvers` crate implements this trait.

use crate::model::{Absorbed, ContentHash, Version, VersionSet};

pub mod pool;
pub mod tally;

/// Why a merge did not happen; the siblings are kept as they were. One
/// definition with the wire's: a read whose siblings could not be merged
/// carries the class to the client ([`MergeFailureInfo`]).
pub use isthmus_client::wire::MergeFailureClass as FailureClass;
pub use isthmus_client::wire::MergeFailureInfo;

/// A merge that did not happen. The siblings are kept as they were.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("merge in keyspace {keyspace:?} failed ({class}): {detail}")]
pub struct MergeFailure {
    /// Keyspace of the key.
    pub keyspace: String,
    /// Content hash of the resolver that failed, when one was found.
    pub resolver: Option<ContentHash>,
    /// The resolver bound to the keyspace as `name@version`, when the hook
    /// knew it (what a reader is told).
    pub resolver_name: Option<String>,
    /// What kind of failure (the counter it is counted under).
    pub class: FailureClass,
    /// Human-readable detail for the log.
    pub detail: String,
}

impl MergeFailure {
    /// What a reader is told of this failure.
    pub fn info(&self) -> MergeFailureInfo {
        MergeFailureInfo {
            class: self.class,
            resolver: self.resolver_name.clone(),
        }
    }
}

/// What a hook measured of one merge its resolver ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metered {
    /// Fuel the resolver used (all of it when it ran out); `None`: not
    /// metered, or the resolver did not run.
    pub fuel: Option<u64>,
    /// Lines the resolver logged that were kept.
    pub log_lines: u64,
    /// Lines the resolver logged past its rate limit, dropped.
    pub log_dropped: u64,
}

/// Resolves the siblings of a key with the keyspace's resolver.
///
/// Implementations must be deterministic functions of
/// `(keyspace binding, key, siblings)`: two replicas (two hosts, two
/// processes, two DCs) calling `merge` on equal sets must return equal
/// versions, byte for byte.
pub trait MergeHook: Send + Sync {
    /// Merge `siblings` (canonical order, two or more of them).
    ///
    /// - `Ok(None)`: nothing to do (no resolver bound to the keyspace, or
    ///   fewer than two siblings); keep the set.
    /// - `Ok(Some(v))`: `v` replaces the siblings. `v.clock` is
    ///   `siblings.lub()` and `v.resolver` the resolver's content hash: build
    ///   it with [`VersionSet::merged`].
    /// - `Err(_)`: the merge failed; keep the set, count the failure.
    fn merge(
        &self,
        keyspace: &str,
        key: &[u8],
        siblings: &VersionSet,
    ) -> Result<Option<Version>, MergeFailure>;

    /// As [`merge`](Self::merge), with what the hook measured of the
    /// resolver's run ([`Metered`]): the merge pool records it per
    /// keyspace and resolver (`isthmus_merge_fuel`,
    /// `isthmus_resolver_log_lines_total`). The default measures nothing.
    fn merge_metered(
        &self,
        keyspace: &str,
        key: &[u8],
        siblings: &VersionSet,
    ) -> (Result<Option<Version>, MergeFailure>, Metered) {
        (self.merge(keyspace, key, siblings), Metered::default())
    }

    /// Whether `keyspace` has a resolver bound now, when the hook knows
    /// better than the keyspace's configuration (bindings that change at
    /// run time, such as the resolver registry's). `None`, the default:
    /// the configuration's `resolver` decides. The coordinator reads a set
    /// back for merging, and lifts the sibling bound, only for keyspaces
    /// with a resolver.
    fn bound(&self, keyspace: &str) -> Option<bool> {
        let _ = keyspace;
        None
    }
}

/// A hook that never merges: for keyspaces (or nodes) without resolvers.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMerge;

impl MergeHook for NoMerge {
    fn merge(&self, _: &str, _: &[u8], _: &VersionSet) -> Result<Option<Version>, MergeFailure> {
        Ok(None)
    }
}

/// Run `hook` on `set` if it holds siblings, and absorb the merged version.
///
/// Returns whether the set changed. On error the set is untouched.
pub fn merge_into(
    hook: &dyn MergeHook,
    keyspace: &str,
    key: &[u8],
    set: &mut VersionSet,
) -> Result<Absorbed, MergeFailure> {
    if set.len() < 2 {
        return Ok(Absorbed::Unchanged);
    }
    match hook.merge(keyspace, key, set)? {
        Some(merged) => Ok(set.absorb(merged)),
        None => Ok(Absorbed::Unchanged),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Clock, Dot, Payload};

    /// Concatenates sibling values in canonical order (a test stand-in).
    struct Concat;

    impl MergeHook for Concat {
        fn merge(
            &self,
            _: &str,
            _: &[u8],
            set: &VersionSet,
        ) -> Result<Option<Version>, MergeFailure> {
            let bytes = set.live().flat_map(|v| v.value_bytes().unwrap()).copied();
            Ok(set.merged(Payload::Value(bytes.collect()), [1; 32]))
        }
    }

    struct Failing;

    impl MergeHook for Failing {
        fn merge(
            &self,
            ks: &str,
            _: &[u8],
            _: &VersionSet,
        ) -> Result<Option<Version>, MergeFailure> {
            Err(MergeFailure {
                keyspace: ks.into(),
                resolver: None,
                resolver_name: None,
                class: FailureClass::Trap,
                detail: "boom".into(),
            })
        }
    }

    fn siblings() -> VersionSet {
        let dot = |a| {
            Clock::from_parts(
                [],
                [Dot {
                    actor: Actor(a),
                    counter: 1,
                }],
            )
        };
        VersionSet::from_versions([
            Version::value(dot(1), b"a".to_vec(), 1, "dc1".into()),
            Version::value(dot(2), b"b".to_vec(), 2, "dc2".into()),
        ])
    }

    #[test]
    fn merge_into_replaces_siblings_with_one_version_at_the_lub() {
        let mut set = siblings();
        let lub = set.lub();
        assert_eq!(
            merge_into(&Concat, "ks", b"k", &mut set),
            Ok(Absorbed::Changed)
        );
        assert_eq!(set.len(), 1);
        assert_eq!(set.versions()[0].clock, lub);
        assert_eq!(set.versions()[0].value_bytes(), Some(&b"ab"[..]));
        assert_eq!(set.versions()[0].resolver, Some([1; 32]));
    }

    #[test]
    fn failure_and_no_merge_keep_the_siblings() {
        let mut set = siblings();
        let before = set.clone();
        let err = merge_into(&Failing, "ks", b"k", &mut set).unwrap_err();
        assert_eq!(err.class, FailureClass::Trap);
        assert_eq!(set, before);
        assert_eq!(
            merge_into(&NoMerge, "ks", b"k", &mut set),
            Ok(Absorbed::Unchanged)
        );
        assert_eq!(set, before);
    }
}
