//! [`ConflictTally`]: what a replica counts of its conflicts, for
//! `/metrics` and the dashboard: siblings created per keyspace and pair of
//! origin datacenters, merges per keyspace and resolver, and failed merges
//! per keyspace, resolver and [`FailureClass`].
//!
//! Counted per node: a conflict written at quorum is counted by each
//! replica that stored the new sibling (and a replica that learns of it
//! later, by read repair or the bridge, counts it then), so a DC's sum is
//! about its replication factor times the number of conflicts. Redelivery
//! of a version a replica holds already changes nothing and counts
//! nothing.
//!
//! Label sets stay bounded: keyspaces come from the configuration and
//! resolvers from the bounded registry, but a version's origin DC is
//! whatever the version says, so each table holds at most
//! [`TALLY_ENTRIES_MAX`] label sets; counts past that go to
//! [`ConflictTally::overflow`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::FailureClass;
use crate::model::{ContentHash, Version, VersionSet};

/// Label sets each table of a tally holds at most.
pub const TALLY_ENTRIES_MAX: usize = 4096;

/// The label a merge failure without a known resolver is counted under.
pub const NO_RESOLVER: &str = "-";

/// Siblings created: keyspace, origin DC of the new sibling, origin DC of
/// a sibling it stands beside.
pub type SiblingKey = (String, String, String);
/// Merges: keyspace, resolver (hex content hash).
pub type MergeKey = (String, String);
/// Merge failures: keyspace, resolver (hex, or [`NO_RESOLVER`]), class.
pub type FailureKey = (String, String, FailureClass);

/// A node's conflict counters (see the module docs).
#[derive(Debug, Default)]
pub struct ConflictTally {
    siblings: Mutex<HashMap<SiblingKey, u64>>,
    merges: Mutex<HashMap<MergeKey, u64>>,
    failures: Mutex<HashMap<FailureKey, u64>>,
    overflow: AtomicU64,
}

/// A copy of a tally's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TallyFigures {
    /// Siblings created, by keyspace and origin-DC pair.
    pub siblings: Vec<(SiblingKey, u64)>,
    /// Merges that produced a version, by keyspace and resolver.
    pub merges: Vec<(MergeKey, u64)>,
    /// Merges that failed, by keyspace, resolver and class.
    pub failures: Vec<(FailureKey, u64)>,
    /// Counts not kept because a table was full.
    pub overflow: u64,
}

/// Lower-case hex of a content hash (the resolver label).
pub fn resolver_label(hash: &ContentHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn bump<K: Eq + std::hash::Hash>(table: &Mutex<HashMap<K, u64>>, key: K, overflow: &AtomicU64) {
    let mut table = table.lock();
    if let Some(n) = table.get_mut(&key) {
        *n += 1;
    } else if table.len() < TALLY_ENTRIES_MAX {
        table.insert(key, 1);
    } else {
        overflow.fetch_add(1, Ordering::Relaxed);
    }
}

fn sorted<K: Clone + Ord>(table: &Mutex<HashMap<K, u64>>) -> Vec<(K, u64)> {
    let mut out: Vec<(K, u64)> = table.lock().iter().map(|(k, n)| (k.clone(), *n)).collect();
    out.sort();
    out
}

impl ConflictTally {
    /// The siblings an apply would create, as (origin DC of the new
    /// sibling, origin DC of one beside it) pairs: `set` is the key's set
    /// after absorbing `incoming`, and held `before` versions before. Each
    /// incoming version still in the set beside others yields one pair
    /// per distinct origin DC among the versions beside it. An apply that
    /// adds no version (a redelivery, a version that dominated or was
    /// dominated) yields none. Count them with
    /// [`siblings_created`](Self::siblings_created) once the apply is
    /// stored.
    pub fn new_siblings(
        before: usize,
        set: &VersionSet,
        incoming: &[Version],
    ) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        if set.len() <= before || set.len() < 2 {
            return pairs;
        }
        for new in incoming {
            if !set.versions().contains(new) {
                continue;
            }
            let mut beside: Vec<&str> = set
                .versions()
                .iter()
                .filter(|v| *v != new)
                .map(|v| v.origin_dc.0.as_str())
                .collect();
            beside.sort_unstable();
            beside.dedup();
            pairs.extend(
                beside
                    .into_iter()
                    .map(|other| (new.origin_dc.0.clone(), other.to_owned())),
            );
        }
        pairs
    }

    /// Count siblings created in `keyspace` (pairs from
    /// [`new_siblings`](Self::new_siblings)).
    pub fn siblings_created(&self, keyspace: &str, pairs: Vec<(String, String)>) {
        for (new, beside) in pairs {
            bump(
                &self.siblings,
                (keyspace.to_owned(), new, beside),
                &self.overflow,
            );
        }
    }

    /// Count a merge that produced a version, by the resolver it names.
    pub fn merged(&self, keyspace: &str, merged: &Version) {
        let resolver = merged
            .resolver
            .as_ref()
            .map_or_else(|| NO_RESOLVER.to_owned(), resolver_label);
        bump(
            &self.merges,
            (keyspace.to_owned(), resolver),
            &self.overflow,
        );
    }

    /// Count a failed (or deferred) merge by class.
    pub fn failed(&self, keyspace: &str, resolver: Option<&ContentHash>, class: FailureClass) {
        let resolver = resolver.map_or_else(|| NO_RESOLVER.to_owned(), resolver_label);
        bump(
            &self.failures,
            (keyspace.to_owned(), resolver, class),
            &self.overflow,
        );
    }

    /// The counts now, sorted by label.
    pub fn figures(&self) -> TallyFigures {
        TallyFigures {
            siblings: sorted(&self.siblings),
            merges: sorted(&self.merges),
            failures: sorted(&self.failures),
            overflow: self.overflow.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Clock, DcName, Dot, Payload};

    fn version(actor: u64, dc: &str, value: &[u8]) -> Version {
        let clock = Clock::from_parts(
            [],
            [Dot {
                actor: Actor(actor),
                counter: 1,
            }],
        );
        Version::value(clock, value.to_vec(), 1, DcName(dc.into()))
    }

    #[test]
    fn a_concurrent_write_counts_once_per_origin_pair_and_a_redelivery_not_at_all() {
        let tally = ConflictTally::default();
        let mut set = VersionSet::new();
        let a = version(1, "dc1", b"a");
        set.absorb(a.clone());
        tally.siblings_created(
            "ks",
            ConflictTally::new_siblings(0, &set, std::slice::from_ref(&a)),
        );
        assert!(
            tally.figures().siblings.is_empty(),
            "a first write is no conflict"
        );

        let b = version(2, "dc2", b"b");
        let before = set.len();
        set.absorb(b.clone());
        tally.siblings_created(
            "ks",
            ConflictTally::new_siblings(before, &set, std::slice::from_ref(&b)),
        );
        // Again: the set does not grow.
        let before = set.len();
        set.absorb(b.clone());
        tally.siblings_created(
            "ks",
            ConflictTally::new_siblings(before, &set, std::slice::from_ref(&b)),
        );

        let c = version(3, "dc1", b"c");
        let before = set.len();
        set.absorb(c.clone());
        tally.siblings_created(
            "ks",
            ConflictTally::new_siblings(before, &set, std::slice::from_ref(&c)),
        );
        let key = |a: &str, b: &str| ("ks".to_owned(), a.to_owned(), b.to_owned());
        assert_eq!(
            tally.figures().siblings,
            vec![
                (key("dc1", "dc1"), 1),
                (key("dc1", "dc2"), 1),
                (key("dc2", "dc1"), 1)
            ]
        );
    }

    #[test]
    fn merges_and_failures_are_counted_by_resolver_and_class() {
        let tally = ConflictTally::default();
        let mut merged = version(1, "dc1", b"m");
        merged.payload = Payload::Value(b"m".to_vec());
        merged.resolver = Some([7; 32]);
        tally.merged("carts", &merged);
        tally.merged("carts", &merged);
        tally.failed("carts", Some(&[7; 32]), FailureClass::Trap);
        tally.failed("carts", None, FailureClass::Missing);
        let figures = tally.figures();
        let hex7 = "07".repeat(32);
        assert_eq!(figures.merges, vec![(("carts".into(), hex7.clone()), 2)]);
        assert_eq!(
            figures.failures,
            vec![
                (
                    ("carts".into(), NO_RESOLVER.into(), FailureClass::Missing),
                    1
                ),
                (("carts".into(), hex7, FailureClass::Trap), 1),
            ]
        );
    }

    #[test]
    fn label_sets_are_bounded() {
        let tally = ConflictTally::default();
        for i in 0..TALLY_ENTRIES_MAX + 10 {
            tally.failed(&format!("ks{i}"), None, FailureClass::Trap);
        }
        let figures = tally.figures();
        assert_eq!(figures.failures.len(), TALLY_ENTRIES_MAX);
        assert_eq!(figures.overflow, 10);
    }
}
