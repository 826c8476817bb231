//! # isthmus-server
//!
//! One Isthmus node as `isthmus server` runs it: core's node (storage,
//! ring, gossip, coordinator, hints, repair) with the parts core only
//! defines traits for plugged in:
//!
//! - the wasm resolver [`Host`] and the replicated resolver registry
//!   ([`RegistryService`], core's `RegistryHook`), whose merge hook follows
//!   the registry's bindings, else each keyspace's configured
//!   `resolver = "NAME@VERSION"`;
//! - the cross-DC bridge ([`DcBridgeFactory`], core's `BridgeFactory`).
//!
//! The composition lives here, in one place, because two callers need
//! it: the `isthmus server` command and the in-process clusters of
//! `isthmus-testkit` (the demo, the bridge benchmark and the tests run
//! nodes exactly as the server does). It cannot live in the binary's
//! package: that package depends on the testkit (for `isthmus demo`),
//! so the testkit depending back on it would be a cycle.
//!
//! What it is not: configuration loading (files and environment
//! variables are the binary's), signal handling, or any test helper.
//!
//! ```no_run
//! # async fn run(config: isthmus_core::config::NodeConfig) -> Result<(), isthmus_core::node::NodeError> {
//! use isthmus_core::node::NodeTuning;
//!
//! let plugins = isthmus_server::Plugins::new(&config);
//! if let Err(e) = &plugins.host {
//!     eprintln!("no wasm host ({e}); siblings will not be merged");
//! }
//! let node = plugins.start(config, NodeTuning::default()).await?;
//! println!("serving on {}", node.addr);
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod certs;

use std::collections::BTreeMap;
use std::sync::Arc;

use isthmus_core::config::{NodeConfig, ResolversSection, parse_resolver_binding};
use isthmus_core::merge::{MergeHook, NoMerge};
use isthmus_core::node::{self, NodeError, NodeTuning, RunningNode};
use isthmus_core::system_keyspace::RegistryHook;
use isthmus_dc_bridge::{BridgeConfig, DcBridgeFactory};
use isthmus_resolvers::check::CheckOptions;
use isthmus_resolvers::{Host, RegistryLimits, RegistryService, ResolverError, ResolverLimits};

/// What a server plugs into core's node: built from its configuration,
/// kept by the caller for what it wants to observe (the host's merge
/// counts, the bridges' reports).
pub struct Plugins {
    /// The wasm host merges run on, or why there is none (then siblings
    /// are kept unmerged and registry requests are refused).
    pub host: Result<Arc<Host>, ResolverError>,
    /// The merge hook: the registry's bindings, else the keyspaces'
    /// configured resolvers; [`NoMerge`] without a host.
    pub merge: Arc<dyn MergeHook>,
    /// The replicated resolver registry, served to clients.
    pub registry: Option<Arc<dyn RegistryHook>>,
    /// Builds the node's cross-DC bridge.
    pub bridge: Arc<DcBridgeFactory>,
}

impl Plugins {
    /// The plugins for a node with `config`: the default
    /// [`ResolverLimits`] and [`RegistryLimits`] with the values its
    /// `[tuning.resolvers]` table sets.
    pub fn new(config: &NodeConfig) -> Plugins {
        let section = &config.tuning.resolvers;
        Plugins::with_limits(config, resolver_limits(section, ResolverLimits::default()))
    }

    /// The plugins for a node with `config`, merges held to `limits` (the
    /// registry's bounds from its `[tuning.resolvers]` table).
    pub fn with_limits(config: &NodeConfig, limits: ResolverLimits) -> Plugins {
        let bridge = Arc::new(DcBridgeFactory::new(BridgeConfig::from(&config.bridge)));
        match Host::new(limits) {
            Ok(host) => {
                let host = Arc::new(host);
                let service = RegistryService::with_limits(
                    host.clone(),
                    CheckOptions::default(),
                    registry_limits(&config.tuning.resolvers, RegistryLimits::default()),
                );
                let hook = service
                    .merge_hook(default_bindings(config))
                    .with_dc(&config.dc);
                Plugins {
                    host: Ok(host),
                    merge: Arc::new(hook),
                    registry: Some(Arc::new(service)),
                    bridge,
                }
            }
            Err(e) => Plugins {
                host: Err(e),
                merge: Arc::new(NoMerge),
                registry: None,
                bridge,
            },
        }
    }

    /// Start a node with these plugins; `tuning` gives the rest (gossip
    /// timing, limits, repair schedule), its `bridge` and `registry`
    /// replaced by these.
    pub async fn start(
        &self,
        config: NodeConfig,
        tuning: NodeTuning,
    ) -> Result<RunningNode, NodeError> {
        let tuning = NodeTuning {
            bridge: Some(self.bridge.clone()),
            registry: self.registry.clone(),
            ..tuning
        };
        node::start(config, self.merge.clone(), tuning).await
    }
}

/// `base` with the values of a `[tuning.resolvers]` table in place of its
/// own (the table was validated with the node's configuration).
pub fn resolver_limits(section: &ResolversSection, base: ResolverLimits) -> ResolverLimits {
    let ms = std::time::Duration::from_millis;
    ResolverLimits {
        module_bytes_max: section.module_bytes_max.unwrap_or(base.module_bytes_max),
        compile_threads: section.compile_threads.unwrap_or(base.compile_threads),
        compile_queue_max: section.compile_queue_max.unwrap_or(base.compile_queue_max),
        compile_deadline: section
            .compile_deadline_ms
            .map_or(base.compile_deadline, ms),
        fuel_per_merge: section.fuel_per_merge.unwrap_or(base.fuel_per_merge),
        merge_deadline: section.merge_deadline_ms.map_or(base.merge_deadline, ms),
        memory_bytes_max: section.memory_bytes_max.unwrap_or(base.memory_bytes_max),
        instances_max: section.instances_max.unwrap_or(base.instances_max),
        ..base
    }
}

/// `base` with the registry bounds of a `[tuning.resolvers]` table.
pub fn registry_limits(section: &ResolversSection, base: RegistryLimits) -> RegistryLimits {
    RegistryLimits {
        modules_max: section.registry_modules_max.unwrap_or(base.modules_max),
        module_bytes_total_max: section
            .registry_module_bytes_total_max
            .unwrap_or(base.module_bytes_total_max),
        history_max: section.registry_history_max.unwrap_or(base.history_max),
    }
}

/// Each keyspace's configured `resolver = "NAME@VERSION"`: its binding
/// until the registry holds one.
pub fn default_bindings(config: &NodeConfig) -> BTreeMap<String, (String, u32)> {
    config
        .keyspaces
        .iter()
        .filter_map(|(name, ks)| {
            Some((
                name.clone(),
                parse_resolver_binding(ks.resolver.as_deref()?)?,
            ))
        })
        .collect()
}
