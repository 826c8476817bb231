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
//! The tally also keeps, per keyspace and resolver, the cost of each merge
//! a resolver ran (it succeeded or failed): the fuel it used and its time
//! on the merge thread, in fixed buckets ([`MERGE_FUEL_BUCKETS`],
//! [`MERGE_TIME_BUCKETS_US`]) so that nodes' histograms add up.
//!
//! Label sets stay bounded: keyspaces come from the configuration and
//! resolvers from the bounded registry, but a version's origin DC is
//! whatever the version says, so each table holds at most
//! [`TALLY_ENTRIES_MAX`] label sets; counts past that go to
//! [`ConflictTally::overflow`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use isthmus_client::wire::{CostHistogram, MergeStatsRow};

use parking_lot::Mutex;

use super::{FailureClass, Metered};
use crate::model::{ContentHash, Version, VersionSet};

/// Label sets each table of a tally holds at most.
pub const TALLY_ENTRIES_MAX: usize = 4096;

/// The label a merge failure without a known resolver is counted under.
pub const NO_RESOLVER: &str = "-";

/// Upper bounds of the fuel buckets: powers of two from 1,024 units
/// (an empty merge uses a few hundred) up to the 200 M default budget per
/// merge, which a merge that ran out of fuel reaches.
pub const MERGE_FUEL_BUCKETS: [u64; 19] = [
    1 << 10,
    1 << 11,
    1 << 12,
    1 << 13,
    1 << 14,
    1 << 15,
    1 << 16,
    1 << 17,
    1 << 18,
    1 << 19,
    1 << 20,
    1 << 21,
    1 << 22,
    1 << 23,
    1 << 24,
    1 << 25,
    1 << 26,
    1 << 27,
    200_000_000,
];

/// Upper bounds of the time buckets, in microseconds: powers of two from
/// 1 us (an empty merge takes a few) to 1 s, then 2 s (past the default
/// wall-clock backstop of a merge).
pub const MERGE_TIME_BUCKETS_US: [u64; 22] = [
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1 << 10,
    1 << 11,
    1 << 12,
    1 << 13,
    1 << 14,
    1 << 15,
    1 << 16,
    1 << 17,
    1 << 18,
    1 << 19,
    1 << 20,
    2_000_000,
];

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
    costs: Mutex<HashMap<MergeKey, MergeCost>>,
    overflow: AtomicU64,
}

/// What merges cost one resolver in one keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeCost {
    /// Fuel per merge, in [`MERGE_FUEL_BUCKETS`] (merges the hook did not
    /// meter are not in it).
    pub fuel: CostHistogram,
    /// Time per merge on its thread, in [`MERGE_TIME_BUCKETS_US`].
    pub time_us: CostHistogram,
    /// Lines its merges logged (kept).
    pub log_lines: u64,
    /// Lines its merges logged past the rate limit (dropped).
    pub log_dropped: u64,
}

impl Default for MergeCost {
    fn default() -> Self {
        MergeCost {
            fuel: CostHistogram::new(&MERGE_FUEL_BUCKETS),
            time_us: CostHistogram::new(&MERGE_TIME_BUCKETS_US),
            log_lines: 0,
            log_dropped: 0,
        }
    }
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
    /// What merges cost, by keyspace and resolver.
    pub costs: Vec<(MergeKey, MergeCost)>,
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
                .map(|v| v.origin_dc.as_str())
                .collect();
            beside.sort_unstable();
            beside.dedup();
            pairs.extend(
                beside
                    .into_iter()
                    .map(|other| (new.origin_dc.0.to_string(), other.to_owned())),
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

    /// Count what a merge by `resolver` cost: its time on the merge
    /// thread and, when the hook metered it, its fuel and the lines it
    /// logged.
    pub fn cost(&self, keyspace: &str, resolver: &ContentHash, spent: Duration, metered: &Metered) {
        let mut costs = self.costs.lock();
        let key = (keyspace.to_owned(), resolver_label(resolver));
        if !costs.contains_key(&key) && costs.len() >= TALLY_ENTRIES_MAX {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cost = costs.entry(key).or_default();
        cost.time_us
            .record(u64::try_from(spent.as_micros()).unwrap_or(u64::MAX));
        if let Some(fuel) = metered.fuel {
            cost.fuel.record(fuel);
        }
        cost.log_lines = cost.log_lines.saturating_add(metered.log_lines);
        cost.log_dropped = cost.log_dropped.saturating_add(metered.log_dropped);
    }

    /// The counts now, sorted by label.
    pub fn figures(&self) -> TallyFigures {
        let mut costs: Vec<(MergeKey, MergeCost)> = self
            .costs
            .lock()
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        costs.sort_by(|a, b| a.0.cmp(&b.0));
        TallyFigures {
            siblings: sorted(&self.siblings),
            merges: sorted(&self.merges),
            failures: sorted(&self.failures),
            costs,
            overflow: self.overflow.load(Ordering::Relaxed),
        }
    }
}

/// The figures as rows per keyspace and resolver (merges, failures by
/// class, costs), sorted: the answer to a `MergeStats` request.
pub fn stats_rows(figures: &TallyFigures) -> Vec<MergeStatsRow> {
    let mut rows: BTreeMap<MergeKey, MergeStatsRow> = BTreeMap::new();
    fn entry<'a>(
        rows: &'a mut BTreeMap<MergeKey, MergeStatsRow>,
        key: &MergeKey,
    ) -> &'a mut MergeStatsRow {
        rows.entry(key.clone()).or_insert_with(|| MergeStatsRow {
            keyspace: key.0.clone(),
            resolver: key.1.clone(),
            merges: 0,
            failures: Vec::new(),
            fuel: CostHistogram::new(&MERGE_FUEL_BUCKETS),
            time_us: CostHistogram::new(&MERGE_TIME_BUCKETS_US),
        })
    }
    for (key, n) in &figures.merges {
        entry(&mut rows, key).merges += n;
    }
    for ((ks, resolver, class), n) in &figures.failures {
        entry(&mut rows, &(ks.clone(), resolver.clone()))
            .failures
            .push((*class, *n));
    }
    for (key, cost) in &figures.costs {
        let row = entry(&mut rows, key);
        row.fuel = cost.fuel.clone();
        row.time_us = cost.time_us.clone();
    }
    rows.into_values().collect()
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
    fn costs_are_kept_per_keyspace_and_resolver_in_fixed_buckets() {
        let tally = ConflictTally::default();
        for us in [3, 3, 3, 700] {
            let metered = Metered {
                fuel: Some(5_000),
                log_lines: 1,
                log_dropped: 2,
            };
            tally.cost("carts", &[7; 32], Duration::from_micros(us), &metered);
        }
        tally.cost(
            "carts",
            &[7; 32],
            Duration::from_secs(5),
            &Metered::default(),
        );
        let figures = tally.figures();
        assert_eq!(figures.costs.len(), 1);
        let ((ks, resolver), cost) = &figures.costs[0];
        assert_eq!((ks.as_str(), resolver.clone()), ("carts", "07".repeat(32)));
        assert_eq!(cost.time_us.count(), 5);
        assert_eq!(cost.fuel.count(), 4, "an unmetered merge has no fuel");
        // 3 us falls in the (2, 4] bucket; 5 s past the last bound.
        assert_eq!(cost.time_us.counts[2], 3);
        assert_eq!(cost.time_us.counts[MERGE_TIME_BUCKETS_US.len()], 1);
        assert_eq!(cost.fuel.sum, 20_000);
        assert_eq!((cost.log_lines, cost.log_dropped), (4, 8));
        let p50 = cost.time_us.quantile(0.5).unwrap();
        assert!((2.0..=4.0).contains(&p50), "{p50}");
        let p99 = cost.fuel.quantile(0.99).unwrap();
        assert!((4096.0..=8192.0).contains(&p99), "{p99}");
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
