//! A local multi-datacenter cluster inside this process: nodes on
//! loopback with real data directories, each with its own wasm host and
//! the replicated resolver registry (as `isthmus server` runs them),
//! joined by the cross-DC bridge over a userspace WAN with simulated
//! latency. A resolver is uploaded to one node through the client
//! protocol and replicates to the rest. `isthmus demo` and
//! `isthmus bench-bridge` run on it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use isthmus_client::Session;
use isthmus_client::wire::{BridgeReport, Consistency};
use isthmus_client::wire::{RegistryRequest, RegistryResponse, RequestBody, ResponseBody};
use isthmus_core::config::{BridgeSection, FsyncMode, KeyspaceSection, NodeConfig};
use isthmus_core::gossip::detector::DetectorConfig;
use isthmus_core::gossip::service::GossipConfig;
use isthmus_core::model::ContentHash;
use isthmus_core::node::{self, NodeTuning, RunningNode};
use isthmus_dc_bridge::wan::WanProxy;
use isthmus_dc_bridge::{BridgeConfig, DcBridge, DcBridgeFactory};
use isthmus_resolvers::host::module_hash;
use isthmus_resolvers::{Host, RegistryService, ResolverLimits};

/// What to run.
pub struct ClusterSpec {
    /// Datacenter names.
    pub dcs: Vec<&'static str>,
    /// Nodes in each.
    pub nodes_per_dc: usize,
    /// The one keyspace, replicated 3 ways (or fewer, with fewer nodes)
    /// in every DC.
    pub keyspace: &'static str,
    /// A merge module, uploaded as `NAME@1` once the cluster is up and
    /// bound to the keyspace.
    pub resolver: Option<(&'static str, Vec<u8>)>,
    /// Bridge settings.
    pub bridge: BridgeSection,
    /// One-way latency between DCs.
    pub wan_one_way: Duration,
}

/// The running cluster.
pub struct LocalCluster {
    /// The simulated WAN between the DCs.
    pub wan: WanProxy,
    /// Running nodes by id (`dc1-n0`, ...).
    pub nodes: BTreeMap<String, RunningNode>,
    root: PathBuf,
    spec: ClusterSpec,
    seed: String,
    hosts: Vec<Arc<Host>>,
    bridges: Vec<Arc<DcBridgeFactory>>,
}

fn gossip() -> GossipConfig {
    GossipConfig {
        interval: Duration::from_millis(200),
        exchange_timeout: Duration::from_millis(500),
        detector: DetectorConfig {
            initial_interval: Duration::from_millis(200),
            interval_max: Duration::from_millis(800),
            ..DetectorConfig::default()
        },
    }
}

impl LocalCluster {
    /// Start every node of every DC under `root` and wait until all see
    /// each other.
    pub async fn start(spec: ClusterSpec, root: PathBuf) -> anyhow::Result<LocalCluster> {
        let wan = WanProxy::start("127.0.0.1:0", spec.wan_one_way).await?;
        let mut cluster = LocalCluster {
            wan,
            nodes: BTreeMap::new(),
            root,
            spec,
            seed: String::new(),
            hosts: Vec::new(),
            bridges: Vec::new(),
        };
        for dc in cluster.spec.dcs.clone() {
            cluster.start_dc(dc).await?;
        }
        let all = cluster.spec.dcs.len() * cluster.spec.nodes_per_dc;
        cluster.wait_alive(all, "every node up").await?;
        cluster.upload_resolver().await?;
        Ok(cluster)
    }

    /// Upload the spec's resolver to the first node and attach it, as
    /// `isthmus resolver upload` and `attach` do; wait until every node's
    /// registry replica holds it.
    async fn upload_resolver(&self) -> anyhow::Result<()> {
        let Some((name, module)) = &self.spec.resolver else {
            return Ok(());
        };
        let first = self.nodes.values().next().map(|n| n.addr.clone());
        let first = first.ok_or_else(|| anyhow::anyhow!("no node"))?;
        let session = Session::connect(&first, "local-cluster", Duration::from_secs(2)).await?;
        let call = |request| session.call(RequestBody::Registry(request), Duration::from_secs(30));
        match call(RegistryRequest::Upload {
            name: name.to_string(),
            version: 1,
            module: module.clone(),
            force: false,
        })
        .await?
        {
            ResponseBody::Registry(RegistryResponse::Uploaded(_)) => {}
            other => bail!("upload answered {other:?}"),
        }
        match call(RegistryRequest::Attach {
            keyspace: self.spec.keyspace.to_owned(),
            name: name.to_string(),
            version: 1,
        })
        .await?
        {
            ResponseBody::Registry(RegistryResponse::Bound(_)) => {}
            other => bail!("attach answered {other:?}"),
        }
        for _ in 0..600 {
            let mut everywhere = true;
            for node in self.nodes.values() {
                let s =
                    Session::connect(&node.addr, "local-cluster", Duration::from_secs(2)).await?;
                let listing = s
                    .call(
                        RequestBody::Registry(RegistryRequest::List),
                        Duration::from_secs(5),
                    )
                    .await?;
                let held = matches!(
                    &listing,
                    ResponseBody::Registry(RegistryResponse::Listing { resolvers, .. })
                        if resolvers.iter().any(|r| r.name == *name && r.version == 1)
                );
                everywhere &= held;
            }
            if everywhere {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the uploaded resolver did not reach every node")
    }

    /// Start (or restart, with its data) every node of `dc`.
    pub async fn start_dc(&mut self, dc: &'static str) -> anyhow::Result<()> {
        for i in 0..self.spec.nodes_per_dc {
            self.start_node(dc, i).await?;
        }
        Ok(())
    }

    /// Stop every node of `dc` (their data stays).
    pub async fn stop_dc(&mut self, dc: &str) {
        let ids: Vec<String> = self
            .nodes
            .keys()
            .filter(|id| id.starts_with(&format!("{dc}-")))
            .cloned()
            .collect();
        for id in ids {
            if let Some(node) = self.nodes.remove(&id) {
                node.shutdown().await;
            }
        }
    }

    async fn start_node(&mut self, dc: &'static str, i: usize) -> anyhow::Result<()> {
        let id = format!("{dc}-n{i}");
        let rf = self.spec.nodes_per_dc.min(3) as u32;
        let config = NodeConfig {
            node_id: id.clone(),
            dc: dc.into(),
            rack: format!("r{i}"),
            listen: "127.0.0.1:0".into(),
            data_dir: self.root.join(&id),
            seeds: if self.seed.is_empty() {
                vec![]
            } else {
                vec![self.seed.clone()]
            },
            vnodes: 32,
            fsync: FsyncMode::Interval,
            fsync_interval_ms: 5,
            bridge: self.spec.bridge.clone(),
            wan_proxy: Some(self.wan.addr().to_string()),
            bootstrap: false,
            keyspaces: BTreeMap::from([(
                self.spec.keyspace.to_owned(),
                KeyspaceSection {
                    replication: self.spec.dcs.iter().map(|d| (d.to_string(), rf)).collect(),
                    consistency: Consistency::LocalQuorum,
                    resolver: self
                        .spec
                        .resolver
                        .as_ref()
                        .map(|(name, _)| format!("{name}@1")),
                    ttl_s: None,
                },
            )]),
        };
        // What `isthmus server` runs: a wasm host and the replicated
        // registry, the keyspace's configured binding as its default.
        let host = Arc::new(Host::new(ResolverLimits::default())?);
        let service = RegistryService::new(host.clone());
        let defaults = self
            .spec
            .resolver
            .iter()
            .map(|(name, _)| (self.spec.keyspace.to_owned(), (name.to_string(), 1)))
            .collect();
        let hook = service.merge_hook(defaults);
        self.hosts.push(host);
        let factory = Arc::new(DcBridgeFactory::new(BridgeConfig::from(&config.bridge)));
        self.bridges.push(factory.clone());
        let tuning = NodeTuning {
            bridge: Some(factory),
            registry: Some(Arc::new(service)),
            gossip: gossip(),
            ..NodeTuning::default()
        };
        let node = node::start(config, Arc::new(hook), tuning).await?;
        self.wan.register(&node.addr, dc);
        if self.seed.is_empty() {
            self.seed = node.addr.clone();
        }
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Wait until every running node sees `count` nodes alive.
    pub async fn wait_alive(&self, count: usize, what: &str) -> anyhow::Result<()> {
        for _ in 0..600 {
            if self
                .nodes
                .values()
                .all(|n| n.gossiper().alive().len() == count)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the cluster did not settle: {what}")
    }

    /// Client addresses of `dc`'s running nodes.
    pub fn addrs(&self, dc: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(id, _)| id.starts_with(&format!("{dc}-")))
            .map(|(_, n)| n.addr.clone())
            .collect()
    }

    /// Every running node's bridge report.
    pub fn reports(&self) -> Vec<BridgeReport> {
        self.nodes
            .values()
            .filter_map(|n| n.coordinator().bridge())
            .flat_map(|b| b.report())
            .collect()
    }

    /// Writes the running nodes' outboxes still owe `dc`.
    pub fn backlog(&self, dc: &str) -> u64 {
        self.reports()
            .iter()
            .filter(|r| r.remote_dc == dc)
            .map(|r| r.outbox_records)
            .sum()
    }

    /// Summed over running nodes: (records shipped, raw bytes, wire bytes).
    pub fn shipped(&self) -> (u64, u64, u64) {
        self.reports().iter().fold((0, 0, 0), |(r, raw, wire), b| {
            (
                r + b.shipped_records,
                raw + b.raw_bytes,
                wire + b.shipped_bytes,
            )
        })
    }

    /// The running bridges.
    pub fn bridges(&self) -> Vec<Arc<DcBridge>> {
        self.bridges.iter().flat_map(|f| f.bridges()).collect()
    }

    /// Merges the resolver ran, over every host this cluster started.
    pub fn merges(&self) -> u64 {
        let Some((_, module)) = &self.spec.resolver else {
            return 0;
        };
        let hash: ContentHash = module_hash(module);
        self.hosts.iter().map(|h| h.stats(&hash).merges_ok()).sum()
    }

    /// Stop every node.
    pub async fn shutdown(&mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            node.shutdown().await;
        }
    }
}
