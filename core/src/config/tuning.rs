//! The tuning tables of a node's configuration: `[tuning.limits]`,
//! `[tuning.engine]`, `[tuning.gossip]`, `[tuning.hints]`, `[tuning.repair]`,
//! `[tuning.resolvers]` and `[tuning.runtime]` (environment:
//! `ISTHMUS_TUNING__GOSSIP__INTERVAL_MS`).
//!
//! Every key is optional: an absent key keeps the value the node is
//! started with (the built-in default for `isthmus server`, a test's own
//! timing in the test harness), so a file names only what it changes.
//! Each present value is checked by [`Tuning::validate`], whose errors name
//! the field (`tuning.gossip.interval_ms`), and reaches its component through
//! [`Tuning::apply`] (core's parts) or [`ResolversSection`] (the wasm host
//! and the registry, applied by `isthmus-server`).
//!
//! What stays constant, and why, is listed in the README's configuration
//! section: on-disk and wire formats, bounds that other nodes or clients
//! must share (the frame cap), and internal pacing with no operational
//! reason to change.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
use crate::node::NodeTuning;

const SECOND_MS: u64 = 1000;
const HOUR_MS: u64 = 3600 * SECOND_MS;
const GIB: u64 = 1 << 30;

/// The `[tuning]` tables of a [`NodeConfig`](super::NodeConfig).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Size limits of the data path and the engine.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The storage engine's caches and compaction.
    #[serde(default)]
    pub engine: EngineSection,
    /// Gossip timing and the failure detector.
    #[serde(default)]
    pub gossip: GossipSection,
    /// The hint store's bound (the window is `hint_window_ms`).
    #[serde(default)]
    pub hints: HintsSection,
    /// Scheduled Merkle repair.
    #[serde(default)]
    pub repair: RepairSection,
    /// The wasm host and the resolver registry.
    #[serde(default)]
    pub resolvers: ResolversSection,
    /// The node's async runtime.
    #[serde(default)]
    pub runtime: RuntimeSection,
}

/// The `[tuning.runtime]` table (applied by `isthmus server` when it
/// builds the node's runtime; core only checks it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Threads that run the node's tasks (network, coordination, the
    /// engine's reads); default one per CPU. Set it lower when several
    /// nodes (or other busy processes) share a machine's CPUs: threads
    /// beyond the CPUs a node can use only add wake-ups and context
    /// switches.
    pub worker_threads: Option<usize>,
}

/// The `[tuning.limits]` table ([`Limits`](crate::limit::Limits)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Longest key accepted, in bytes.
    pub key_bytes_max: Option<usize>,
    /// Longest value accepted, in bytes.
    pub value_bytes_max: Option<usize>,
    /// Most siblings kept for one key before writes are refused.
    pub siblings_max: Option<usize>,
    /// Memtable size that triggers a flush, in bytes.
    pub memtable_bytes_max: Option<usize>,
    /// Immutable memtables waiting for a flush before writers stall.
    pub immutable_memtables_max: Option<usize>,
    /// Table files held open at once.
    pub open_files_max: Option<usize>,
}

/// The `[tuning.engine]` table ([`EngineOptions`](crate::engine::EngineOptions)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Decoded blocks kept in memory, in bytes.
    pub block_cache_bytes: Option<u64>,
    /// Bytes per second compaction may write (0: unlimited).
    pub compaction_bytes_per_s: Option<u64>,
    /// Level-0 tables that trigger a compaction.
    pub l0_compaction_trigger: Option<usize>,
    /// Size at which compaction output starts a new table, in bytes.
    pub table_bytes_target: Option<u64>,
}

/// The `[tuning.gossip]` table
/// ([`GossipConfig`](crate::gossip::service::GossipConfig)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipSection {
    /// Time between gossip rounds, in milliseconds (also the failure
    /// detector's first guess of a peer's heartbeat interval).
    pub interval_ms: Option<u64>,
    /// Deadline of one exchange, in milliseconds.
    pub exchange_timeout_ms: Option<u64>,
    /// Suspicion (phi) at which a peer is held down; higher convicts
    /// later and more surely (Cassandra's `phi_convict_threshold`).
    pub phi_threshold: Option<u32>,
    /// Longest heartbeat gap the failure detector learns, in
    /// milliseconds.
    pub heartbeat_gap_max_ms: Option<u64>,
    /// How far ahead of this node's clock another node's generation may
    /// be before its entry is refused, in milliseconds.
    pub generation_skew_max_ms: Option<u64>,
}

/// The `[tuning.hints]` table ([`HintConfig`](crate::hints::HintConfig)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HintsSection {
    /// Bytes of hints kept per target node; past it, hints are refused
    /// (repair brings what they would have).
    pub bytes_per_target_max: Option<u64>,
}

/// The `[tuning.repair]` table ([`RepairConfig`](crate::repair::RepairConfig)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepairSection {
    /// Time between scheduled in-DC repairs, in milliseconds; 0 turns
    /// the schedule off (operators then run `isthmus repair`).
    pub interval_ms: Option<u64>,
    /// Deadline of each request to a repair partner, in milliseconds.
    pub call_timeout_ms: Option<u64>,
}

/// The `[tuning.resolvers]` table: the wasm host's limits and the registry's
/// bounds (`isthmus_resolvers::ResolverLimits` and `RegistryLimits`,
/// applied by `isthmus-server`; core only checks them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolversSection {
    /// Largest module accepted, in bytes.
    pub module_bytes_max: Option<usize>,
    /// Threads modules compile on.
    pub compile_threads: Option<usize>,
    /// Compilations that may wait for a compile thread.
    pub compile_queue_max: Option<usize>,
    /// How long a load waits for its compilation, in milliseconds.
    pub compile_deadline_ms: Option<u64>,
    /// Fuel (about one unit per wasm instruction) of one merge.
    pub fuel_per_merge: Option<u64>,
    /// Wall-clock backstop of one merge, in milliseconds.
    pub merge_deadline_ms: Option<u64>,
    /// Largest linear memory of one merge, in bytes.
    pub memory_bytes_max: Option<usize>,
    /// Merges that can run at once on the host (its instance pool).
    pub instances_max: Option<u32>,
    /// Distinct modules the registry holds.
    pub registry_modules_max: Option<usize>,
    /// Bytes of all the registry's modules together.
    pub registry_module_bytes_total_max: Option<u64>,
    /// Earlier bindings kept per keyspace for rollback.
    pub registry_history_max: Option<usize>,
}

/// `value`, when set, within `min..=max`, or an error naming `field`.
fn within<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    min: T,
    max: T,
    unit: &str,
) -> Result<(), ConfigError> {
    match value {
        Some(v) if v < min || v > max => Err(invalid(
            field,
            format!("{v}{unit} is outside {min}..={max}{unit}"),
        )),
        _ => Ok(()),
    }
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

impl Tuning {
    /// Refuse a value that cannot work, naming its field. (The size
    /// limits are also held together to the frame cap when the node
    /// starts, [`Limits::validate`](crate::limit::Limits::validate).)
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        within(
            "tuning.limits.key_bytes_max",
            l.key_bytes_max,
            1,
            1 << 20,
            " B",
        )?;
        within(
            "tuning.limits.value_bytes_max",
            l.value_bytes_max,
            1,
            16 << 20,
            " B",
        )?;
        within("tuning.limits.siblings_max", l.siblings_max, 2, 1024, "")?;
        within(
            "tuning.limits.memtable_bytes_max",
            l.memtable_bytes_max,
            1 << 20,
            4 << 30,
            " B",
        )?;
        within(
            "tuning.limits.immutable_memtables_max",
            l.immutable_memtables_max,
            1,
            64,
            "",
        )?;
        within(
            "tuning.limits.open_files_max",
            l.open_files_max,
            16,
            1 << 20,
            "",
        )?;
        let e = &self.engine;
        within(
            "tuning.engine.block_cache_bytes",
            e.block_cache_bytes,
            0,
            1 << 40,
            " B",
        )?;
        within(
            "tuning.engine.compaction_bytes_per_s",
            e.compaction_bytes_per_s,
            0,
            1 << 40,
            " B/s",
        )?;
        within(
            "tuning.engine.l0_compaction_trigger",
            e.l0_compaction_trigger,
            2,
            64,
            "",
        )?;
        within(
            "tuning.engine.table_bytes_target",
            e.table_bytes_target,
            1 << 20,
            4 * GIB,
            " B",
        )?;
        let g = &self.gossip;
        within(
            "tuning.gossip.interval_ms",
            g.interval_ms,
            10,
            60_000,
            " ms",
        )?;
        within(
            "tuning.gossip.exchange_timeout_ms",
            g.exchange_timeout_ms,
            10,
            60_000,
            " ms",
        )?;
        within("tuning.gossip.phi_threshold", g.phi_threshold, 1, 64, "")?;
        within(
            "tuning.gossip.heartbeat_gap_max_ms",
            g.heartbeat_gap_max_ms,
            10,
            600_000,
            " ms",
        )?;
        within(
            "tuning.gossip.generation_skew_max_ms",
            g.generation_skew_max_ms,
            SECOND_MS,
            24 * HOUR_MS,
            " ms",
        )?;
        within(
            "tuning.hints.bytes_per_target_max",
            self.hints.bytes_per_target_max,
            1 << 20,
            1 << 40,
            " B",
        )?;
        if let Some(interval) = self.repair.interval_ms
            && interval != 0
            && !(SECOND_MS..=30 * 24 * HOUR_MS).contains(&interval)
        {
            return Err(invalid(
                "tuning.repair.interval_ms",
                format!(
                    "{interval} ms is outside 1000..=2592000000 ms (0 turns scheduled repair off)"
                ),
            ));
        }
        within(
            "tuning.repair.call_timeout_ms",
            self.repair.call_timeout_ms,
            100,
            HOUR_MS,
            " ms",
        )?;
        within(
            "tuning.runtime.worker_threads",
            self.runtime.worker_threads,
            1,
            1024,
            "",
        )?;
        self.resolvers.validate()
    }

    /// `base` with every value this configuration sets in place of its
    /// own.
    pub fn apply(&self, mut base: NodeTuning) -> NodeTuning {
        let l = &self.limits;
        let limits = &mut base.limits;
        for (value, slot) in [
            (l.key_bytes_max, &mut limits.key_bytes_max),
            (l.value_bytes_max, &mut limits.value_bytes_max),
            (l.siblings_max, &mut limits.siblings_max),
            (l.memtable_bytes_max, &mut limits.memtable_bytes_max),
            (
                l.immutable_memtables_max,
                &mut limits.immutable_memtables_max,
            ),
            (l.open_files_max, &mut limits.open_files_max),
        ] {
            if let Some(v) = value {
                *slot = v;
            }
        }
        let g = &self.gossip;
        if let Some(v) = g.interval_ms {
            base.gossip.interval = ms(v);
            base.gossip.detector.initial_interval = ms(v);
        }
        if let Some(v) = g.exchange_timeout_ms {
            base.gossip.exchange_timeout = ms(v);
        }
        if let Some(v) = g.phi_threshold {
            base.gossip.detector.phi_threshold = f64::from(v);
        }
        if let Some(v) = g.heartbeat_gap_max_ms {
            base.gossip.detector.interval_max = ms(v);
        }
        if let Some(v) = g.generation_skew_max_ms {
            base.gossip.generation_skew_max = ms(v);
        }
        if let Some(v) = self.hints.bytes_per_target_max {
            base.hints.bytes_per_target_max = v;
        }
        if let Some(v) = self.repair.interval_ms {
            base.repair.interval = ms(v);
        }
        if let Some(v) = self.repair.call_timeout_ms {
            base.repair.call_timeout = ms(v);
        }
        base
    }

    /// `base` engine options with this configuration's `[engine]` values.
    pub fn engine(&self, mut base: crate::engine::EngineOptions) -> crate::engine::EngineOptions {
        let e = &self.engine;
        if let Some(v) = e.block_cache_bytes {
            base.block_cache_bytes = v;
        }
        if let Some(v) = e.compaction_bytes_per_s {
            base.compaction_bytes_per_s = v;
        }
        if let Some(v) = e.l0_compaction_trigger {
            base.l0_compaction_trigger = v;
        }
        if let Some(v) = e.table_bytes_target {
            base.table_bytes_target = v;
        }
        base
    }
}

impl ResolversSection {
    /// Refuse a value that cannot work, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = |name: &str| format!("tuning.resolvers.{name}");
        within(
            &f("module_bytes_max"),
            self.module_bytes_max,
            1024,
            256 << 20,
            " B",
        )?;
        within(&f("compile_threads"), self.compile_threads, 1, 64, "")?;
        within(&f("compile_queue_max"), self.compile_queue_max, 1, 4096, "")?;
        within(
            &f("compile_deadline_ms"),
            self.compile_deadline_ms,
            100,
            10 * 60_000,
            " ms",
        )?;
        within(&f("fuel_per_merge"), self.fuel_per_merge, 1000, 1 << 40, "")?;
        within(
            &f("merge_deadline_ms"),
            self.merge_deadline_ms,
            10,
            60_000,
            " ms",
        )?;
        within(
            &f("memory_bytes_max"),
            self.memory_bytes_max,
            64 << 10,
            4 << 30,
            " B",
        )?;
        within(&f("instances_max"), self.instances_max, 1, 10_000, "")?;
        within(
            &f("registry_modules_max"),
            self.registry_modules_max,
            1,
            100_000,
            "",
        )?;
        within(
            &f("registry_module_bytes_total_max"),
            self.registry_module_bytes_total_max,
            1 << 20,
            1 << 40,
            " B",
        )?;
        within(
            &f("registry_history_max"),
            self.registry_history_max,
            1,
            1024,
            "",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tuning_value_is_checked_by_name_and_reaches_its_component() {
        assert_eq!(Tuning::default().validate(), Ok(()));
        let default = NodeTuning::default();
        let same = Tuning::default().apply(NodeTuning::default());
        assert_eq!(same.limits, default.limits);
        assert_eq!(same.gossip.interval, default.gossip.interval);

        let tuning = Tuning {
            limits: LimitsSection {
                value_bytes_max: Some(4096),
                open_files_max: Some(64),
                ..LimitsSection::default()
            },
            engine: EngineSection {
                block_cache_bytes: Some(1 << 20),
                ..EngineSection::default()
            },
            gossip: GossipSection {
                interval_ms: Some(250),
                phi_threshold: Some(12),
                ..GossipSection::default()
            },
            hints: HintsSection {
                bytes_per_target_max: Some(8 << 20),
            },
            repair: RepairSection {
                interval_ms: Some(0),
                call_timeout_ms: Some(5000),
            },
            resolvers: ResolversSection::default(),
            runtime: RuntimeSection {
                worker_threads: Some(1),
            },
        };
        assert_eq!(tuning.validate(), Ok(()));
        let applied = tuning.apply(NodeTuning::default());
        assert_eq!(applied.limits.value_bytes_max, 4096);
        assert_eq!(applied.limits.open_files_max, 64);
        assert_eq!(applied.limits.key_bytes_max, default.limits.key_bytes_max);
        assert_eq!(applied.gossip.interval, ms(250));
        assert_eq!(applied.gossip.detector.initial_interval, ms(250));
        assert_eq!(applied.gossip.detector.phi_threshold, 12.0);
        assert_eq!(applied.hints.bytes_per_target_max, 8 << 20);
        assert!(applied.repair.interval.is_zero());
        assert_eq!(applied.repair.call_timeout, ms(5000));
        let engine = tuning.engine(crate::engine::EngineOptions::default());
        assert_eq!(engine.block_cache_bytes, 1 << 20);

        let bad = |edit: fn(&mut Tuning)| {
            let mut t = Tuning::default();
            edit(&mut t);
            t.validate().unwrap_err().field
        };
        assert_eq!(
            bad(|t| t.limits.siblings_max = Some(1)),
            "tuning.limits.siblings_max"
        );
        assert_eq!(
            bad(|t| t.limits.key_bytes_max = Some(0)),
            "tuning.limits.key_bytes_max"
        );
        assert_eq!(
            bad(|t| t.engine.l0_compaction_trigger = Some(1)),
            "tuning.engine.l0_compaction_trigger"
        );
        assert_eq!(
            bad(|t| t.gossip.interval_ms = Some(0)),
            "tuning.gossip.interval_ms"
        );
        assert_eq!(
            bad(|t| t.gossip.phi_threshold = Some(0)),
            "tuning.gossip.phi_threshold"
        );
        assert_eq!(
            bad(|t| t.hints.bytes_per_target_max = Some(10)),
            "tuning.hints.bytes_per_target_max"
        );
        assert_eq!(
            bad(|t| t.repair.interval_ms = Some(5)),
            "tuning.repair.interval_ms"
        );
        assert_eq!(
            bad(|t| t.resolvers.compile_threads = Some(0)),
            "tuning.resolvers.compile_threads"
        );
        assert_eq!(
            bad(|t| t.resolvers.fuel_per_merge = Some(1)),
            "tuning.resolvers.fuel_per_merge"
        );
        assert_eq!(
            bad(|t| t.resolvers.registry_history_max = Some(0)),
            "tuning.resolvers.registry_history_max"
        );
        assert_eq!(
            bad(|t| t.runtime.worker_threads = Some(0)),
            "tuning.runtime.worker_threads"
        );
    }
}
