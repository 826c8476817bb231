//! The JSON API of the operations listener, and the history it keeps.
//!
//! `GET /api/v1/overview` answers one [`Overview`]: the node, every
//! member it knows grouped by datacenter (state, liveness, ownership,
//! load, hints held for it), its bridge to each remote DC, the lag of
//! writes from each remote DC into this one and the outbox depth toward
//! each over the last minutes, conflicts, merges and merge failures by
//! keyspace, hints, and the background workers. The dashboard reads it;
//! so can any other tool. The shape is documented in `docs/metrics.md`.
//!
//! Everything is this node's view: gossip's members and their states,
//! this node's own bridge, its own counters. A DC pair this node takes no
//! part in (with three DCs) is seen from a node of one of its DCs.
//!
//! The history is sampled every [`SAMPLE_EVERY`] by the `ops` worker and
//! holds [`HISTORY_POINTS`] points (ten minutes); a lag point is the
//! interval's own figures (the lag histogram's growth since the previous
//! sample), not the figures since start.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use isthmus_client::wire::{BridgeReport, NodeReport};
use parking_lot::Mutex;
use serde::Serialize;

use super::{Figures, Probe};
use crate::bridge::{LAG_BUCKETS_MS, LagHistogram};
use crate::wall_clock::now_ms;

/// How often the history is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Points of history kept per series (ten minutes at [`SAMPLE_EVERY`]).
pub const HISTORY_POINTS: usize = 300;

/// What `/api/v1/overview` answers.
#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    /// The node answering.
    pub node: NodeSummary,
    /// Every member this node knows, by datacenter (sorted by name).
    pub dcs: Vec<DcView>,
    /// This node's bridge to each remote DC.
    pub bridges: Vec<BridgeReport>,
    /// Lag of writes into this DC, per origin DC, over the last minutes.
    pub lag: Vec<LagSeries>,
    /// This node's outbox depth toward each remote DC, over the last
    /// minutes.
    pub outbox: Vec<OutboxSeries>,
    /// Conflicts, merges and merge failures by keyspace.
    pub keyspaces: Vec<KeyspaceConflicts>,
    /// Siblings created by keyspace and origin-DC pair.
    pub sibling_pairs: Vec<SiblingPair>,
    /// Hints.
    pub hints: HintsView,
    /// Background workers.
    pub workers: Vec<WorkerView>,
}

/// The node answering.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    /// Its id.
    pub id: String,
    /// Its datacenter.
    pub dc: String,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// Why not, when not.
    pub reason: Option<String>,
    /// The node's wall clock, Unix milliseconds.
    pub time_ms: u64,
}

/// One datacenter's members.
#[derive(Clone, Debug, Serialize)]
pub struct DcView {
    /// The DC.
    pub name: String,
    /// Members believed alive.
    pub up: usize,
    /// Every member, sorted by id.
    pub nodes: Vec<NodeReport>,
}

/// Lag from one DC into another over time.
#[derive(Clone, Debug, Serialize)]
pub struct LagSeries {
    /// Where the writes were acknowledged first.
    pub from_dc: String,
    /// Where they were applied (this node's DC).
    pub to_dc: String,
    /// Oldest first.
    pub points: Vec<LagPoint>,
}

/// One interval's lag.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct LagPoint {
    /// End of the interval, Unix milliseconds.
    pub t_ms: u64,
    /// Writes applied in the interval.
    pub count: u64,
    /// Their mean lag (0 without writes).
    pub mean_ms: f64,
    /// The bound of the histogram bucket that holds their 99th
    /// percentile: at most this (0 without writes; past the last bucket,
    /// twice its bound).
    pub p99_ms: u64,
}

/// Outbox depth toward one remote DC over time.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxSeries {
    /// The remote DC.
    pub remote_dc: String,
    /// `(t_ms, records not yet acknowledged)`, oldest first.
    pub points: Vec<(u64, u64)>,
}

/// One keyspace's conflicts on this node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeyspaceConflicts {
    /// The keyspace.
    pub keyspace: String,
    /// Siblings created.
    pub siblings: u64,
    /// Merges that replaced siblings.
    pub merges: u64,
    /// Merges that failed or were deferred.
    pub failures: u64,
    /// Those failures by class.
    pub failures_by_class: BTreeMap<String, u64>,
}

/// Siblings created in a keyspace, by origin-DC pair.
#[derive(Clone, Debug, Serialize)]
pub struct SiblingPair {
    /// The keyspace.
    pub keyspace: String,
    /// The new sibling's origin DC.
    pub origin_dc: String,
    /// The origin DC of one beside it.
    pub sibling_dc: String,
    /// How many.
    pub count: u64,
}

/// Hints.
#[derive(Clone, Debug, Serialize)]
pub struct HintsView {
    /// Written.
    pub stored: u64,
    /// Delivered by replay.
    pub delivered: u64,
    /// Dropped past the window.
    pub expired: u64,
    /// Refused (a target's file full).
    pub refused: u64,
    /// `(target node, bytes waiting)`.
    pub queued: Vec<(String, u64)>,
}

/// A background worker.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerView {
    /// Its name.
    pub name: String,
    /// busy, idle, done or dead.
    pub state: String,
    /// Units of work begun.
    pub runs: u64,
    /// The last failure it reported.
    pub last_error: Option<String>,
}

/// The sampled series.
#[derive(Debug, Default)]
pub struct History {
    /// The last sample's lag histograms, per origin DC.
    last_lag: BTreeMap<String, LagHistogram>,
    lag: BTreeMap<String, VecDeque<LagPoint>>,
    outbox: BTreeMap<String, VecDeque<(u64, u64)>>,
}

fn push<T>(series: &mut VecDeque<T>, point: T) {
    if series.len() == HISTORY_POINTS {
        series.pop_front();
    }
    series.push_back(point);
}

/// The interval's lag: `now` less `before` (a histogram that went back,
/// as after a restart of its counter, counts from zero).
fn interval(before: Option<&LagHistogram>, now: &LagHistogram, t_ms: u64) -> LagPoint {
    let zero = LagHistogram::default();
    let before = before
        .filter(|b| b.counts.iter().zip(&now.counts).all(|(b, n)| b <= n))
        .unwrap_or(&zero);
    let counts: Vec<u64> = now
        .counts
        .iter()
        .zip(&before.counts)
        .map(|(n, b)| n - b)
        .collect();
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return LagPoint {
            t_ms,
            count: 0,
            mean_ms: 0.0,
            p99_ms: 0,
        };
    }
    let sum = now.sum_ms.saturating_sub(before.sum_ms);
    let rank = count - count / 100; // the 99th percentile's rank, 1-based
    let mut seen = 0;
    let mut bucket = counts.len() - 1;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= rank {
            bucket = i;
            break;
        }
    }
    let last = LAG_BUCKETS_MS[LAG_BUCKETS_MS.len() - 1];
    LagPoint {
        t_ms,
        count,
        mean_ms: sum as f64 / count as f64,
        p99_ms: LAG_BUCKETS_MS.get(bucket).copied().unwrap_or(last * 2),
    }
}

impl History {
    /// Add one sample of `figures`, taken at `t_ms`.
    pub fn sample(&mut self, figures: &Figures, t_ms: u64) {
        for h in &figures.bridge.lag_in {
            let from = h.from_dc.0.to_string();
            let point = interval(self.last_lag.get(&from), h, t_ms);
            push(self.lag.entry(from.clone()).or_default(), point);
            self.last_lag.insert(from, h.clone());
        }
        for b in &figures.bridges {
            push(
                self.outbox.entry(b.remote_dc.clone()).or_default(),
                (t_ms, b.outbox_records),
            );
        }
    }
}

/// The overview of a node: `probe`'s figures now, with `history`.
pub fn overview(probe: &dyn Probe, history: &Mutex<History>) -> Overview {
    let figures = probe.figures();
    let readiness = probe.readiness();
    let mut dcs: BTreeMap<String, DcView> = BTreeMap::new();
    for n in probe.nodes() {
        let dc = dcs.entry(n.dc.clone()).or_insert_with(|| DcView {
            name: n.dc.clone(),
            up: 0,
            nodes: Vec::new(),
        });
        dc.up += usize::from(n.up);
        dc.nodes.push(n);
    }
    for dc in dcs.values_mut() {
        dc.nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    }
    let mut keyspaces: BTreeMap<String, KeyspaceConflicts> = BTreeMap::new();
    let c = &figures.conflicts;
    let mut sibling_pairs = Vec::new();
    for ((ks, origin, beside), n) in &c.siblings {
        add(&mut keyspaces, ks).siblings += n;
        sibling_pairs.push(SiblingPair {
            keyspace: ks.clone(),
            origin_dc: origin.clone(),
            sibling_dc: beside.clone(),
            count: *n,
        });
    }
    for ((ks, _), n) in &c.merges {
        add(&mut keyspaces, ks).merges += n;
    }
    for ((ks, _, class), n) in &c.failures {
        let k = add(&mut keyspaces, ks);
        k.failures += n;
        *k.failures_by_class
            .entry(class.as_str().to_owned())
            .or_default() += n;
    }
    let history = history.lock();
    Overview {
        node: NodeSummary {
            id: figures.node.clone(),
            dc: figures.dc.clone(),
            ready: readiness.is_ok(),
            reason: readiness.err().map(|n| n.reason),
            time_ms: now_ms(),
        },
        dcs: dcs.into_values().collect(),
        bridges: figures.bridges.clone(),
        lag: history
            .lag
            .iter()
            .map(|(from, points)| LagSeries {
                from_dc: from.clone(),
                to_dc: figures.dc.clone(),
                points: points.iter().copied().collect(),
            })
            .collect(),
        outbox: history
            .outbox
            .iter()
            .map(|(dc, points)| OutboxSeries {
                remote_dc: dc.clone(),
                points: points.iter().copied().collect(),
            })
            .collect(),
        keyspaces: keyspaces.into_values().collect(),
        sibling_pairs,
        hints: HintsView {
            stored: figures.hints.stored,
            delivered: figures.hints.delivered,
            expired: figures.hints.expired,
            refused: figures.hints.refused,
            queued: figures.hints.queued_bytes.clone(),
        },
        workers: figures
            .workers
            .iter()
            .map(|w| WorkerView {
                name: w.name.clone(),
                state: w.state.as_str().to_owned(),
                runs: w.runs,
                last_error: w.last_error.as_ref().map(|(_, e)| e.clone()),
            })
            .collect(),
    }
}

fn add<'a>(
    keyspaces: &'a mut BTreeMap<String, KeyspaceConflicts>,
    ks: &str,
) -> &'a mut KeyspaceConflicts {
    keyspaces
        .entry(ks.to_owned())
        .or_insert_with(|| KeyspaceConflicts {
            keyspace: ks.to_owned(),
            ..KeyspaceConflicts::default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DcName;

    fn histogram(lags: &[u64]) -> LagHistogram {
        let mut h = LagHistogram {
            from_dc: DcName("dc2".into()),
            ..LagHistogram::default()
        };
        for &l in lags {
            h.record(l);
        }
        h
    }

    #[test]
    fn a_lag_point_is_the_intervals_own_figures() {
        let before = histogram(&[3, 3, 3]);
        let mut now = before.clone();
        for _ in 0..99 {
            now.record(20);
        }
        now.record(9_000);
        let point = interval(Some(&before), &now, 7);
        assert_eq!(point.count, 100);
        assert_eq!(point.mean_ms, (99.0 * 20.0 + 9_000.0) / 100.0);
        let bound_of_20 = LAG_BUCKETS_MS.iter().copied().find(|&b| b >= 20).unwrap();
        assert_eq!(point.p99_ms, bound_of_20, "99 of 100 at most 20 ms");
        let quiet = interval(Some(&now), &now, 8);
        assert_eq!((quiet.count, quiet.p99_ms), (0, 0));
    }

    #[test]
    fn history_keeps_its_last_points_only() {
        let mut history = History::default();
        let mut figures = Figures::default();
        for t in 0..(HISTORY_POINTS as u64 + 5) {
            figures.bridge.lag_in = vec![histogram(&vec![5; t as usize])];
            history.sample(&figures, t);
        }
        let lag = &history.lag["dc2"];
        assert_eq!(lag.len(), HISTORY_POINTS);
        assert_eq!(
            lag.back().map(|p| (p.t_ms, p.count)),
            Some((HISTORY_POINTS as u64 + 4, 1))
        );
        assert_eq!(lag.front().map(|p| p.t_ms), Some(5));
    }
}
