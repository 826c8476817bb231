//! The node's Prometheus registry: request metrics counted in the
//! handler, and one collector that reads every other figure from a
//! [`Probe`] at scrape time.

use std::collections::HashMap;
use std::fmt::Error;
use std::sync::Arc;
use std::time::Duration;

use isthmus_client::wire::{
    Consistency, OperationInfo, OperationKind, OperationState, ResponseBody,
};
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::{Figures, Probe};
use crate::bridge::LAG_BUCKETS_MS;
use crate::merge::tally::{CostHistogram, MergeCost};

/// The labels of a request: its operation, keyspace (a configured one, or
/// `-`: unknown names are not labels, so a client cannot grow the set),
/// consistency level (`-` when none) and outcome (`ok`, or the error
/// code).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get`, `put`, `delete`, `status`, `repair`, ...
    pub op: &'static str,
    /// The keyspace.
    pub keyspace: String,
    /// The consistency level.
    pub level: &'static str,
    /// `ok` or the error code (`UNAVAILABLE`, `TIMEOUT`, ...).
    pub outcome: &'static str,
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Request counts and latencies, shared by the handler (which counts) and
/// the registry (which reads). Cheap to clone.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    /// Each label set's two metrics, as the families handed them out
    /// (handles to the same values): one lookup with a fast hash per
    /// request, where the families take one each with SipHash. Bounded as
    /// the families are, by the label sets that occur.
    handles: Arc<RwLock<Handles>>,
}

type Handles = HashMap<RequestLabels, (Histogram, Counter), rustc_hash::FxBuildHasher>;

fn latency_histogram() -> Histogram {
    // 100 µs to ~3.3 s in doublings: a cached read to a quorum across a
    // slow disk.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            handles: Arc::default(),
        }
    }
}

impl RequestMetrics {
    /// Count one request, which took `took`.
    pub fn observe(&self, labels: RequestLabels, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some((latency, requests)) = self.handles.read().get(&labels) {
            latency.observe(seconds);
            requests.inc();
            return;
        }
        let latency = self.latency.get_or_create(&labels).clone();
        let requests = self.requests.get_or_create(&labels).clone();
        latency.observe(seconds);
        requests.inc();
        self.handles.write().insert(labels, (latency, requests));
    }
}

/// A level's label: its wire name, or `-`.
pub fn level_label(level: Option<Consistency>) -> &'static str {
    level.map_or("-", Consistency::name)
}

/// An answer's outcome label: `ok`, or its error code's wire name.
pub fn outcome_label(answer: &ResponseBody) -> &'static str {
    match answer {
        ResponseBody::Error(e) => e.code.name(),
        _ => "ok",
    }
}

/// A node's registry: its request metrics and the collector over `probe`.
pub fn registry(requests: &RequestMetrics, probe: Arc<dyn Probe>) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "isthmus_requests",
        "Client requests served, by operation, keyspace, level and outcome",
        requests.requests.clone(),
    );
    registry.register(
        "isthmus_request_duration_seconds",
        "Time to serve a client request, by operation, keyspace, level and outcome",
        requests.latency.clone(),
    );
    registry.register_collector(Box::new(FiguresCollector(probe)));
    registry
}

/// Encodes a [`Figures`] snapshot taken at scrape time.
struct FiguresCollector(Arc<dyn Probe>);

impl std::fmt::Debug for FiguresCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FiguresCollector")
    }
}

impl Collector for FiguresCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        encode_figures(&self.0.figures(), &mut encoder)?;
        encode_operations(&self.0.operations(), &mut Out(&mut encoder))
    }
}

/// Writes one metric family at a time.
struct Out<'e, 'a>(&'e mut DescriptorEncoder<'a>);

type Labels<'l> = Vec<(&'static str, &'l str)>;

impl Out<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), Error> {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value).encode(m)
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl EncodeGaugeValue) -> Result<(), Error> {
        let m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(value).encode(m)
    }

    fn counters(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels<'_>, u64)],
    ) -> Result<(), Error> {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in rows {
            ConstCounter::new(*value).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn gauges<V: EncodeGaugeValue + Copy>(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels<'_>, V)],
    ) -> Result<(), Error> {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in rows {
            ConstGauge::new(*value).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }
}

fn encode_figures(f: &Figures, encoder: &mut DescriptorEncoder<'_>) -> Result<(), Error> {
    let mut out = Out(encoder);
    out.gauge(
        "isthmus_node_ready",
        "1 when /readyz answers 200",
        i64::from(f.ready),
    )?;
    out.gauge(
        "isthmus_runtime_worker_threads",
        "Threads running the node's tasks",
        // Scraped on the node's runtime; 0 outside one (unit tests).
        tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers() as i64),
    )?;
    encode_engine(f, &mut out)?;
    encode_conflicts(f, &mut out)?;
    encode_hints(f, &mut out)?;
    encode_bridge(f, &mut out)?;
    encode_cluster(f, &mut out)
}

fn encode_engine(f: &Figures, out: &mut Out<'_, '_>) -> Result<(), Error> {
    let e = f.engine.clone().unwrap_or_default();
    let counters: [(&str, &str, u64); 11] = [
        ("isthmus_engine_flushes", "Memtables flushed", e.flushes),
        (
            "isthmus_engine_compactions",
            "Compactions completed",
            e.compactions,
        ),
        (
            "isthmus_engine_user_written_bytes",
            "Bytes of keys and versions applied by callers",
            e.user_bytes,
        ),
        (
            "isthmus_engine_log_written_bytes",
            "Bytes appended to the commit log",
            e.log_bytes_written,
        ),
        (
            "isthmus_engine_flush_written_bytes",
            "Bytes of tables written by flushes",
            e.flush_bytes_written,
        ),
        (
            "isthmus_engine_compaction_written_bytes",
            "Bytes of tables written by compactions",
            e.compaction_bytes_written,
        ),
        (
            "isthmus_engine_table_read_bytes",
            "Bytes read from table files (blocks, and indexes and filters when opened)",
            e.table_bytes_read,
        ),
        ("isthmus_engine_log_syncs", "Commit-log fsyncs", e.log_syncs),
        (
            "isthmus_engine_bloom_skips",
            "Table probes a bloom filter skipped",
            e.bloom_skips,
        ),
        (
            "isthmus_engine_block_cache_hits",
            "Block reads served by the block cache",
            e.block_cache_hits,
        ),
        (
            "isthmus_engine_block_cache_misses",
            "Blocks read from disk and decoded",
            e.block_cache_misses,
        ),
    ];
    for (name, help, value) in counters {
        out.counter(name, help, value)?;
    }
    out.gauge(
        "isthmus_engine_write_amplification",
        "Bytes written to disk per byte applied (log, flushes, compactions)",
        if e.user_bytes == 0 {
            0.0
        } else {
            e.write_amplification()
        },
    )?;
    out.gauge(
        "isthmus_engine_memtable_bytes",
        "Bytes in the active memtable",
        e.memtable_bytes as i64,
    )?;
    out.gauge(
        "isthmus_engine_immutable_memtables",
        "Memtables waiting for their flush",
        e.immutable_memtables as i64,
    )?;
    out.gauge(
        "isthmus_engine_table_bytes",
        "Bytes of live tables",
        e.table_bytes as i64,
    )?;
    let levels: Vec<String> = (0..e.tables_per_level.len())
        .map(|l| l.to_string())
        .collect();
    let rows: Vec<(Labels<'_>, i64)> = e
        .tables_per_level
        .iter()
        .zip(&levels)
        .map(|(n, l)| (vec![("level", l.as_str())], *n as i64))
        .collect();
    out.gauges("isthmus_engine_tables", "Live tables per level", &rows)?;
    out.gauge(
        "isthmus_engine_poisoned",
        "1 when the engine refuses writes after a failed fsync",
        i64::from(e.poisoned),
    )?;
    out.gauge(
        "isthmus_engine_disk_full",
        "1 while the disk is full (writes refused, reads served)",
        i64::from(e.disk_full),
    )
}

fn encode_conflicts(f: &Figures, out: &mut Out<'_, '_>) -> Result<(), Error> {
    let c = &f.conflicts;
    let siblings: Vec<(Labels<'_>, u64)> = c
        .siblings
        .iter()
        .map(|((ks, origin, beside), n)| {
            (
                vec![
                    ("keyspace", ks.as_str()),
                    ("origin_dc", origin.as_str()),
                    ("sibling_dc", beside.as_str()),
                ],
                *n,
            )
        })
        .collect();
    out.counters(
        "isthmus_conflict_siblings",
        "Siblings created on this replica, by keyspace, the new sibling's origin DC and the origin DC of one beside it",
        &siblings,
    )?;
    let merges: Vec<(Labels<'_>, u64)> = c
        .merges
        .iter()
        .map(|((ks, resolver), n)| {
            (
                vec![("keyspace", ks.as_str()), ("resolver", resolver.as_str())],
                *n,
            )
        })
        .collect();
    out.counters(
        "isthmus_merges",
        "Merges that replaced siblings with one version, by keyspace and resolver (hex content hash)",
        &merges,
    )?;
    let failures: Vec<(Labels<'_>, u64)> = c
        .failures
        .iter()
        .map(|((ks, resolver, class), n)| {
            (
                vec![
                    ("keyspace", ks.as_str()),
                    ("resolver", resolver.as_str()),
                    ("class", class.as_str()),
                ],
                *n,
            )
        })
        .collect();
    out.counters(
        "isthmus_merge_failures",
        "Merges that failed or were deferred (siblings kept), by keyspace, resolver and failure class",
        &failures,
    )?;
    /// A histogram of a merge cost: name, help, which one, and the scale
    /// from its unit to the exported one.
    type CostFamily = (
        &'static str,
        &'static str,
        fn(&MergeCost) -> &CostHistogram,
        f64,
    );
    let histograms: [CostFamily; 2] = [
        (
            "isthmus_merge_fuel",
            "Fuel per merge a resolver ran, by keyspace and resolver (hex content hash)",
            |c| &c.fuel,
            1.0,
        ),
        (
            "isthmus_merge_seconds",
            "Time per merge a resolver ran, on its merge thread, by keyspace and resolver (hex content hash)",
            |c| &c.time_us,
            1e-6,
        ),
    ];
    for (name, help, pick, scale) in histograms {
        let mut m = out
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for ((ks, resolver), cost) in &c.costs {
            let h = pick(cost);
            let mut buckets: Vec<(f64, u64)> = h
                .bounds
                .iter()
                .zip(&h.counts)
                .map(|(bound, n)| (*bound as f64 * scale, *n))
                .collect();
            buckets.push((f64::MAX, h.counts.last().copied().unwrap_or(0)));
            let labels = [("keyspace", ks.as_str()), ("resolver", resolver.as_str())];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                h.sum as f64 * scale,
                h.count(),
                &buckets,
                None,
            )?;
        }
    }
    let logged = |pick: fn(&MergeCost) -> u64| -> Vec<(Labels<'_>, u64)> {
        c.costs
            .iter()
            .map(|((ks, resolver), cost)| {
                (
                    vec![("keyspace", ks.as_str()), ("resolver", resolver.as_str())],
                    pick(cost),
                )
            })
            .collect()
    };
    out.counters(
        "isthmus_resolver_log_lines",
        "Lines resolvers logged through the host's log import and kept, by keyspace and resolver (hex content hash)",
        &logged(|c| c.log_lines),
    )?;
    out.counters(
        "isthmus_resolver_log_dropped",
        "Lines resolvers logged past their rate limit, dropped, by keyspace and resolver (hex content hash)",
        &logged(|c| c.log_dropped),
    )?;
    out.counter(
        "isthmus_conflict_tally_overflow",
        "Conflict counts not kept because a table of label sets was full",
        c.overflow,
    )
}

fn encode_hints(f: &Figures, out: &mut Out<'_, '_>) -> Result<(), Error> {
    let h = &f.hints;
    out.counter(
        "isthmus_hints_stored",
        "Hints written for replicas that missed writes",
        h.stored,
    )?;
    out.counter(
        "isthmus_hints_delivered",
        "Hints handed off to their replicas",
        h.delivered,
    )?;
    out.counter(
        "isthmus_hints_expired",
        "Hints dropped past the hint window",
        h.expired,
    )?;
    out.counter(
        "isthmus_hints_refused",
        "Hints refused: the target's file was full",
        h.refused,
    )?;
    let rows: Vec<(Labels<'_>, i64)> = h
        .queued_bytes
        .iter()
        .map(|(node, bytes)| (vec![("target", node.as_str())], *bytes as i64))
        .collect();
    out.gauges(
        "isthmus_hints_queued_bytes",
        "Bytes of hints waiting, per target node",
        &rows,
    )
}

fn gauge_rows(rows: Vec<(Labels<'_>, u64)>) -> Vec<(Labels<'_>, i64)> {
    rows.into_iter().map(|(l, v)| (l, v as i64)).collect()
}

fn per_dc(rows: &[(crate::model::DcName, u64)]) -> Vec<(Labels<'_>, u64)> {
    rows.iter()
        .map(|(dc, v)| (vec![("remote_dc", dc.as_str())], *v))
        .collect()
}

fn encode_bridge(f: &Figures, out: &mut Out<'_, '_>) -> Result<(), Error> {
    let by_dc = |pick: fn(&isthmus_client::wire::BridgeReport) -> u64| -> Vec<(Labels<'_>, u64)> {
        f.bridges
            .iter()
            .map(|b| (vec![("remote_dc", b.remote_dc.as_str())], pick(b)))
            .collect()
    };
    out.gauges(
        "isthmus_bridge_outbox_records",
        "Records in the outbox not yet acknowledged by the remote DC",
        &gauge_rows(by_dc(|b| b.outbox_records)),
    )?;
    out.gauge(
        "isthmus_bridge_outbox_bytes",
        "Bytes of outbox segments on disk (shared by every remote DC)",
        f.bridges.first().map_or(0, |b| b.outbox_bytes) as i64,
    )?;
    out.counters(
        "isthmus_bridge_shipped_records",
        "Records acknowledged by the remote DC",
        &by_dc(|b| b.shipped_records),
    )?;
    out.counters(
        "isthmus_bridge_raw_bytes",
        "Encoded bytes of the shipped records before compression",
        &by_dc(|b| b.raw_bytes),
    )?;
    out.counters(
        "isthmus_bridge_wire_bytes",
        "Bytes sent to the remote DC (compressed batches)",
        &by_dc(|b| b.shipped_bytes),
    )?;
    out.counters(
        "isthmus_bridge_overflows",
        "Times the outbox bound cut the remote DC loose (a full sync owed)",
        &by_dc(|b| b.overflows),
    )?;
    out.gauges(
        "isthmus_bridge_full_sync_pending",
        "1 while a full sync with the remote DC is owed",
        &gauge_rows(by_dc(|b| u64::from(b.full_sync_pending))),
    )?;
    out.counters(
        "isthmus_bridge_quarantined",
        "Records the remote DC refused for good, quarantined here",
        &by_dc(|b| b.quarantined),
    )?;
    out.gauges(
        "isthmus_bridge_quarantine_records",
        "Records held in the quarantine now",
        &gauge_rows(by_dc(|b| b.quarantine_held)),
    )?;
    out.gauges(
        "isthmus_bridge_quarantine_bytes",
        "Bytes of the quarantine on disk",
        &gauge_rows(by_dc(|b| b.quarantine_bytes)),
    )?;
    out.counters(
        "isthmus_bridge_quarantine_overflows",
        "Refused records the quarantine had no room for (a full sync owed instead)",
        &by_dc(|b| b.quarantine_overflows),
    )?;
    let from: Vec<(Labels<'_>, u64)> = f
        .bridges
        .iter()
        .map(|b| (vec![("from_dc", b.remote_dc.as_str())], b.applied_in))
        .collect();
    out.counters(
        "isthmus_bridge_applied_keys",
        "Keys applied here from batches shipped by the DC",
        &from,
    )?;
    let failovers = per_dc(&f.bridge.failovers);
    out.counters(
        "isthmus_bridge_failovers",
        "Batches also sent to another node of the remote DC (the first did not answer in time)",
        &failovers,
    )?;
    let full_syncs = per_dc(&f.bridge.full_syncs);
    out.counters(
        "isthmus_bridge_full_syncs",
        "Full syncs with the remote DC completed",
        &full_syncs,
    )?;
    let mut m = out.0.encode_descriptor(
        "isthmus_bridge_lag_seconds",
        "Replication lag from the origin DC's acknowledgement to the apply here",
        None,
        MetricType::Histogram,
    )?;
    for lag in &f.bridge.lag_in {
        let mut buckets: Vec<(f64, u64)> = LAG_BUCKETS_MS
            .iter()
            .zip(&lag.counts)
            .map(|(bound, n)| (*bound as f64 / 1000.0, *n))
            .collect();
        buckets.push((f64::MAX, lag.counts[LAG_BUCKETS_MS.len()]));
        let labels = [("from_dc", lag.from_dc.as_str()), ("to_dc", f.dc.as_str())];
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            lag.sum_ms as f64 / 1000.0,
            lag.count(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn encode_cluster(f: &Figures, out: &mut Out<'_, '_>) -> Result<(), Error> {
    let r = &f.repair;
    out.counter(
        "isthmus_repair_ranges",
        "Range syncs completed (repair, full sync, streaming)",
        r.ranges,
    )?;
    out.counter(
        "isthmus_repair_ranges_failed",
        "Range syncs that could not run or failed",
        r.ranges_failed,
    )?;
    out.counter(
        "isthmus_repair_keys_differing",
        "Keys whose sets differed between two replicas",
        r.keys_differing,
    )?;
    out.counter(
        "isthmus_repair_keys_pulled",
        "Keys for which this node absorbed versions it lacked",
        r.keys_pulled,
    )?;
    out.counter(
        "isthmus_repair_keys_pushed",
        "Keys for which a partner was sent versions it lacked",
        r.keys_pushed,
    )?;
    out.counter(
        "isthmus_repair_moved_bytes",
        "Bytes of repair requests and answers",
        r.bytes,
    )?;
    let mut members: std::collections::BTreeMap<(&str, &str, &str), i64> = Default::default();
    for m in &f.members {
        let up = if m.up { "true" } else { "false" };
        *members.entry((m.dc.as_str(), m.status, up)).or_default() += 1;
    }
    let rows: Vec<(Labels<'_>, i64)> = members
        .iter()
        .map(|((dc, status, up), n)| (vec![("dc", *dc), ("status", *status), ("up", *up)], *n))
        .collect();
    out.gauges(
        "isthmus_gossip_members",
        "Members gossip knows, by DC, status and liveness",
        &rows,
    )?;
    let rows: Vec<(Labels<'_>, f64)> = f
        .phis
        .iter()
        .map(|(peer, phi)| (vec![("peer", peer.as_str())], *phi))
        .collect();
    out.gauges(
        "isthmus_gossip_phi",
        "The failure detector's suspicion of each peer",
        &rows,
    )?;
    let s = &f.server;
    out.gauges(
        "isthmus_connections",
        "Connections open past their handshake, by role",
        &[
            (vec![("role", "client")], s.clients_open as i64),
            (vec![("role", "peer")], s.peers_open as i64),
        ],
    )?;
    out.counter(
        "isthmus_connections_refused",
        "Connections refused for want of a slot",
        s.connections_refused,
    )?;
    out.counter(
        "isthmus_requests_expired",
        "Requests answered TIMEOUT unstarted (read past their deadline)",
        s.requests_expired,
    )?;
    let mut states: std::collections::BTreeMap<(&str, &str), i64> = Default::default();
    let mut runs: std::collections::BTreeMap<&str, u64> = Default::default();
    for w in &f.workers {
        let state = w.state.as_str();
        *states.entry((w.name.as_str(), state)).or_default() += 1;
        *runs.entry(w.name.as_str()).or_default() += w.runs;
    }
    let rows: Vec<(Labels<'_>, i64)> = states
        .iter()
        .map(|((name, state), n)| (vec![("name", *name), ("state", *state)], *n))
        .collect();
    out.gauges(
        "isthmus_workers",
        "Background workers, by name and state",
        &rows,
    )?;
    let rows: Vec<(Labels<'_>, u64)> = runs
        .iter()
        .map(|(name, n)| (vec![("name", *name)], *n))
        .collect();
    out.counters(
        "isthmus_worker_runs",
        "Units of work background workers began",
        &rows,
    )?;
    let errors: Vec<(Labels<'_>, i64)> = {
        let mut failing: std::collections::BTreeMap<&str, i64> = Default::default();
        for w in &f.workers {
            *failing.entry(w.name.as_str()).or_default() += i64::from(w.last_error.is_some());
        }
        failing
            .into_iter()
            .map(|(name, n)| (vec![("name", name)], n))
            .collect()
    };
    out.gauges(
        "isthmus_workers_with_error",
        "Workers of the name that have reported a failure since start",
        &errors,
    )
}

/// Running operations by kind, and the range syncs they have left.
fn encode_operations(ops: &[OperationInfo], out: &mut Out<'_, '_>) -> Result<(), Error> {
    let running = |kind: OperationKind| {
        ops.iter()
            .filter(move |o| o.kind == kind && o.state == OperationState::Running)
    };
    let rows: Vec<(Labels<'_>, i64)> = OperationKind::ALL
        .iter()
        .map(|k| (vec![("kind", k.name())], running(*k).count() as i64))
        .collect();
    out.gauges(
        "isthmus_operations_running",
        "Long work running on the node (repair, full sync, decommission, join, rebuild), by kind",
        &rows,
    )?;
    let rows: Vec<(Labels<'_>, i64)> = OperationKind::ALL
        .iter()
        .map(|k| {
            let left: u64 = running(*k)
                .map(|o| {
                    o.ranges_total
                        .saturating_sub(o.progress.ranges + o.progress.ranges_failed)
                })
                .sum();
            (vec![("kind", k.name())], left as i64)
        })
        .collect();
    out.gauges(
        "isthmus_operations_ranges_remaining",
        "Range syncs the running operations of the kind have planned and not yet run",
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::bridge::{BridgeFigures, LagHistogram};
    use crate::ops::{Member, NotReady};
    use crate::worker::WorkerState;

    struct Fixed(Figures);

    impl Probe for Fixed {
        fn figures(&self) -> Figures {
            self.0.clone()
        }
        fn readiness(&self) -> Result<(), NotReady> {
            Ok(())
        }
        fn nodes(&self) -> Vec<isthmus_client::wire::NodeReport> {
            Vec::new()
        }
        fn operations(&self) -> Vec<OperationInfo> {
            vec![OperationInfo {
                id: 1,
                kind: OperationKind::Rebuild,
                keyspace: None,
                dc: Some("dc2".into()),
                state: OperationState::Running,
                started_ms: 0,
                finished_ms: None,
                ranges_total: 10,
                progress: isthmus_client::wire::RepairReport {
                    ranges: 4,
                    ranges_failed: 1,
                    ..Default::default()
                },
                error: None,
            }]
        }
    }

    /// A node's figures with one of everything labelled.
    fn busy() -> Figures {
        let mut lag = LagHistogram {
            from_dc: "dc2".into(),
            ..LagHistogram::default()
        };
        lag.record(3);
        lag.record(700);
        Figures {
            engine: Some(crate::engine::EngineStats {
                tables_per_level: vec![1, 0],
                user_bytes: 10,
                log_bytes_written: 20,
                ..Default::default()
            }),
            bridges: vec![isthmus_client::wire::BridgeReport {
                remote_dc: "dc2".into(),
                outbox_records: 0,
                outbox_bytes: 0,
                shipped_records: 4,
                raw_bytes: 0,
                shipped_bytes: 0,
                overflows: 0,
                full_sync_pending: false,
                lag_in_p50_ms: 0.0,
                lag_in_p99_ms: 0.0,
                applied_in: 0,
                quarantined: 0,
                quarantine_held: 0,
                quarantine_bytes: 0,
                quarantine_overflows: 0,
            }],
            bridge: BridgeFigures {
                lag_in: vec![lag],
                failovers: vec![("dc2".into(), 0)],
                full_syncs: vec![("dc2".into(), 0)],
            },
            dc: "dc1".into(),
            members: vec![Member {
                dc: "dc1".into(),
                status: "normal",
                up: true,
            }],
            phis: vec![("n2".into(), 0.5)],
            hints: crate::ops::HintFigures {
                queued_bytes: vec![("n2".into(), 7)],
                ..Default::default()
            },
            workers: vec![crate::worker::WorkerStatus {
                name: "gossip".into(),
                state: WorkerState::Idle,
                runs: 3,
                last_run_ms: None,
                last_error: None,
            }],
            ..Figures::default()
        }
    }

    fn scrape(figures: Figures) -> String {
        let requests = RequestMetrics::default();
        requests.observe(
            RequestLabels {
                op: "get",
                keyspace: "carts".into(),
                level: "one",
                outcome: "ok",
            },
            Duration::from_millis(2),
        );
        let registry = registry(&requests, Arc::new(Fixed(figures)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn repeated_label_sets_count_into_the_registry_through_kept_handles() {
        let requests = RequestMetrics::default();
        let labels = |outcome| RequestLabels {
            op: "put",
            keyspace: "carts".into(),
            level: "local_quorum",
            outcome,
        };
        for _ in 0..3 {
            requests.observe(labels("ok"), Duration::from_millis(1));
        }
        requests.observe(labels("TIMEOUT"), Duration::from_secs(2));
        let registry = registry(&requests, Arc::new(Fixed(busy())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let sample = |name: &str, outcome: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(&format!("outcome=\"{outcome}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(
            sample("isthmus_requests_total", "ok").as_deref(),
            Some("3"),
            "{text}"
        );
        assert_eq!(
            sample("isthmus_requests_total", "TIMEOUT").as_deref(),
            Some("1")
        );
        assert_eq!(
            sample("isthmus_request_duration_seconds_count", "ok").as_deref(),
            Some("3")
        );
        assert_eq!(
            sample("isthmus_request_duration_seconds_sum", "TIMEOUT").as_deref(),
            Some("2.0")
        );
    }

    /// The names a scrape exposes: a counter's samples end in `_total`.
    fn exposed(text: &str) -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').expect("name and type");
                if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                }
            })
            .collect()
    }

    /// The names in the metric table of docs/metrics.md (first column,
    /// in backquotes; the sections after it document other things).
    fn documented() -> BTreeSet<String> {
        let doc = include_str!("../../../docs/metrics.md");
        let table = doc.split("\n## ").next().unwrap_or(doc);
        table
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`'))
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    #[test]
    fn every_registered_metric_is_documented_and_every_documented_one_registered() {
        let names = exposed(&scrape(busy()));
        let doc = documented();
        assert!(names.len() > 40, "{names:?}");
        let missing: Vec<_> = names.difference(&doc).collect();
        let stale: Vec<_> = doc.difference(&names).collect();
        assert!(
            missing.is_empty(),
            "registered but not in docs/metrics.md: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "in docs/metrics.md but not registered: {stale:?}"
        );
        for name in &names {
            assert!(name.starts_with("isthmus_"), "{name}");
        }
    }

    #[test]
    fn an_empty_node_exposes_the_same_families() {
        assert_eq!(
            exposed(&scrape(Figures::default())),
            exposed(&scrape(busy()))
        );
    }

    #[test]
    fn figures_reach_the_text_with_their_labels() {
        let text = scrape(busy());
        for line in [
            "isthmus_requests_total{op=\"get\",keyspace=\"carts\",level=\"one\",outcome=\"ok\"} 1",
            "isthmus_bridge_shipped_records_total{remote_dc=\"dc2\"} 4",
            "isthmus_bridge_lag_seconds_bucket{le=\"0.005\",from_dc=\"dc2\",to_dc=\"dc1\"} 1",
            "isthmus_bridge_lag_seconds_bucket{le=\"1.0\",from_dc=\"dc2\",to_dc=\"dc1\"} 2",
            "isthmus_bridge_lag_seconds_count{from_dc=\"dc2\",to_dc=\"dc1\"} 2",
            "isthmus_engine_tables{level=\"0\"} 1",
            "isthmus_engine_write_amplification 2.0",
            "isthmus_hints_queued_bytes{target=\"n2\"} 7",
            "isthmus_gossip_members{dc=\"dc1\",status=\"normal\",up=\"true\"} 1",
            "isthmus_worker_runs_total{name=\"gossip\"} 3",
            "isthmus_operations_running{kind=\"rebuild\"} 1",
            "isthmus_operations_running{kind=\"repair\"} 0",
            "isthmus_operations_ranges_remaining{kind=\"rebuild\"} 5",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
