//! An in-process cluster: one or more datacenters of nodes on loopback,
//! each node with its own data directory under the cluster's root, all
//! joined through the first node started (the seed). With several DCs,
//! nodes dial the other DCs through a userspace WAN proxy that adds
//! one-way latency and can cut and heal a DC pair.
//!
//! Nodes are composed as `isthmus server` composes them
//! ([`NodeKind::Server`]: the wasm host, the replicated registry, the
//! bridge; see `isthmus-server`) or are core's node alone
//! ([`NodeKind::Bare`]: siblings kept, no registry, no bridge). A spec's
//! resolver is uploaded through the client protocol once the cluster is
//! up, as `isthmus resolver upload` and `attach` do, and replicates to
//! every node.
//!
//! Node ids are `n0`, `n1`, ... in a one-DC cluster and `dc1-n0`, ...
//! otherwise; a node's data directory is `<root>/<id>`, so a node
//! started again with the same id finds its data.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use isthmus_testkit::{ClusterSpec, LocalCluster, Root};
//!
//! let spec = ClusterSpec::new(&["dc1", "dc2"], 3);
//! let mut cluster = LocalCluster::start(spec, Root::temporary()?).await?;
//! cluster.stop_dc("dc2").await;
//! cluster.wait_alive(3, "dc2 seen down").await?;
//! cluster.start_dc("dc2").await?;
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use isthmus_client::tls::{CertIdentity, TlsMaterial};
use isthmus_client::wire::{
    BridgeReport, Credentials, RegistryRequest, RegistryResponse, RequestBody, ResponseBody,
};
use isthmus_client::{ClientError, ConnectOptions, Session};
use isthmus_core::auth::password::PasswordParams;
use isthmus_core::auth::users::UsersConfig;
use isthmus_core::config::{AuthSection, BridgeSection, FsyncMode, NodeConfig, TlsSection};
use isthmus_core::gossip::service::GossipConfig;
use isthmus_core::merge::NoMerge;
use isthmus_core::model::{VersionSet, key_hash};
use isthmus_core::node::{self, NodeTuning, RunningNode};
use isthmus_core::repair::HashRange;
use isthmus_core::repair::tree::MerkleTree;
use isthmus_core::store::LocalStore;
use isthmus_dc_bridge::wan::WanProxy;
use isthmus_dc_bridge::{DcBridge, DcBridgeFactory};
use isthmus_resolvers::Host;
use isthmus_resolvers::host::module_hash;
use isthmus_server::Plugins;
use isthmus_server::certs::{Ca, Validity};

/// The first admin of a TLS cluster.
pub const ADMIN: &str = "admin";
/// The first admin's password.
pub const ADMIN_PASSWORD: &str = "local-cluster-admin";

/// How each node is composed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Core's node alone: merges nothing (siblings are kept), answers
    /// registry requests with an error, runs no bridge.
    Bare,
    /// As `isthmus server` runs it: a wasm host, the replicated resolver
    /// registry, the cross-DC bridge.
    Server,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Datacenter names.
    pub dcs: Vec<String>,
    /// Nodes in each.
    pub nodes_per_dc: usize,
    /// The one keyspace, replicated `min(nodes_per_dc, 3)` ways in every
    /// DC, at LOCAL_QUORUM.
    pub keyspace: String,
    /// How nodes are composed.
    pub kind: NodeKind,
    /// A merge module (needs [`NodeKind::Server`]): the keyspace's
    /// configured resolver as `NAME@1`, uploaded and attached once the
    /// cluster is up.
    pub resolver: Option<(String, Vec<u8>)>,
    /// Bridge settings (with [`NodeKind::Server`]).
    pub bridge: BridgeSection,
    /// One-way latency between DCs through the WAN proxy; `None` runs no
    /// proxy (nodes of different DCs then talk directly).
    pub wan_one_way: Option<Duration>,
    /// Virtual nodes per node.
    pub vnodes: u32,
    /// The nodes' commit-log fsync policy.
    pub fsync: FsyncMode,
    /// Gossip timing.
    pub gossip: GossipConfig,
    /// Applied last to every node's configuration (grace periods,
    /// windows, anything the other fields do not cover).
    pub configure: Option<fn(&mut NodeConfig)>,
    /// TLS on every link: the cluster makes a CA under its root
    /// (`<root>/certs`) and a certificate for each node; clients connect
    /// with [`LocalCluster::connect_options`]. Off: plaintext
    /// (`insecure_plaintext`).
    pub tls: bool,
}

impl ClusterSpec {
    /// `nodes_per_dc` server nodes in each of `dcs`, keyspace `carts`, no
    /// resolver, the default bridge, 50 ms one way between DCs (no WAN
    /// proxy with one DC), 16 vnodes, fsync every 5 ms, gossip every
    /// 200 ms.
    pub fn new(dcs: &[&str], nodes_per_dc: usize) -> ClusterSpec {
        ClusterSpec {
            dcs: dcs.iter().map(|d| d.to_string()).collect(),
            nodes_per_dc,
            keyspace: "carts".into(),
            kind: NodeKind::Server,
            resolver: None,
            bridge: BridgeSection::default(),
            wan_one_way: (dcs.len() > 1).then_some(Duration::from_millis(50)),
            vnodes: 16,
            fsync: FsyncMode::Interval,
            gossip: crate::config::gossip(Duration::from_millis(200)),
            configure: None,
            tls: false,
        }
    }
}

/// Where a cluster's data directories are: a directory the caller
/// names (kept), or a fresh temporary one (removed with the cluster).
pub struct Root(RootDir);

enum RootDir {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Root {
    /// `path`, kept after the cluster.
    pub fn at(path: PathBuf) -> Root {
        Root(RootDir::Given(path))
    }

    /// A fresh temporary directory, removed when the cluster is dropped.
    pub fn temporary() -> anyhow::Result<Root> {
        let dir = tempfile::tempdir().context("a temporary cluster root")?;
        Ok(Root(RootDir::Temporary(dir)))
    }

    /// `path` when given, else a fresh temporary directory.
    pub fn at_or_temporary(path: Option<PathBuf>) -> anyhow::Result<Root> {
        path.map_or_else(Root::temporary, |p| Ok(Root::at(p)))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        match &self.0 {
            RootDir::Given(path) => path,
            RootDir::Temporary(dir) => dir.path(),
        }
    }
}

/// The running cluster.
pub struct LocalCluster {
    /// Running nodes by id.
    pub nodes: BTreeMap<String, RunningNode>,
    wan: Option<WanProxy>,
    root: Root,
    spec: ClusterSpec,
    seed: String,
    node_dcs: BTreeMap<String, String>,
    hosts: Vec<Arc<Host>>,
    bridges: Vec<Arc<DcBridgeFactory>>,
    tls: Option<ClusterTls>,
}

/// A TLS cluster's CA and the client side of its links.
struct ClusterTls {
    ca: Ca,
    dir: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl ClusterTls {
    fn create(dir: PathBuf) -> anyhow::Result<ClusterTls> {
        let ca_files = (dir.join("ca.pem"), dir.join("ca.key"));
        let ca = if ca_files.0.exists() {
            Ca::load(&dir)?
        } else {
            let ca = Ca::new("local cluster CA", Validity::days(30))?;
            ca.issued().write(&dir, "ca")?;
            ca
        };
        let client =
            TlsMaterial::from_pem(ca.issued().cert_pem.as_bytes(), None)?.client_config()?;
        Ok(ClusterTls { ca, dir, client })
    }

    /// The `[tls]` section of node `id` of `dc`, its certificate issued
    /// the first time.
    fn node_section(&self, id: &str, dc: &str) -> anyhow::Result<TlsSection> {
        let (cert, key) = (
            self.dir.join(format!("{id}.pem")),
            self.dir.join(format!("{id}.key")),
        );
        if !cert.exists() {
            let identity = CertIdentity::Node {
                node_id: id.to_owned(),
                dc: dc.to_owned(),
            };
            self.ca
                .issue(&identity, &[], Validity::days(30))?
                .write(&self.dir, id)?;
        }
        Ok(TlsSection {
            ca: vec![self.dir.join("ca.pem")],
            cert,
            key,
        })
    }
}

impl LocalCluster {
    /// Start every node of every DC under `root`, wait until all see
    /// each other, and upload the spec's resolver.
    pub async fn start(spec: ClusterSpec, root: Root) -> anyhow::Result<LocalCluster> {
        if spec.resolver.is_some() && spec.kind == NodeKind::Bare {
            bail!("a resolver needs server nodes (NodeKind::Server)");
        }
        let wan = match spec.wan_one_way {
            Some(latency) => Some(WanProxy::start("127.0.0.1:0", latency).await?),
            None => None,
        };
        let tls = match spec.tls {
            true => Some(ClusterTls::create(root.path().join("certs"))?),
            false => None,
        };
        let mut cluster = LocalCluster {
            tls,
            nodes: BTreeMap::new(),
            wan,
            root,
            spec,
            seed: String::new(),
            node_dcs: BTreeMap::new(),
            hosts: Vec::new(),
            bridges: Vec::new(),
        };
        for dc in cluster.spec.dcs.clone() {
            cluster.start_dc(&dc).await?;
        }
        let all = cluster.spec.dcs.len() * cluster.spec.nodes_per_dc;
        cluster.wait_alive(all, "every node up").await?;
        cluster.wait_admin().await?;
        cluster.upload_resolver().await?;
        Ok(cluster)
    }

    /// The spec the cluster runs.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The directory the nodes' data directories are in.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The simulated WAN between the DCs; panics when the spec runs none.
    pub fn wan(&self) -> &WanProxy {
        self.wan
            .as_ref()
            .expect("this cluster runs no WAN proxy (ClusterSpec::wan_one_way)")
    }

    /// The client address of the first node started, which every node
    /// joins through.
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// How a client named `name` connects to this cluster's nodes: with
    /// TLS trusting the cluster's CA when the spec says so.
    ///
    /// A TLS cluster also runs authentication: its first admin is
    /// [`ADMIN`] with [`ADMIN_PASSWORD`], and these options log in as
    /// that admin; a plaintext cluster lets anonymous clients do anything.
    pub fn connect_options(&self, name: &str) -> ConnectOptions {
        let admin = Credentials {
            user: ADMIN.into(),
            password: ADMIN_PASSWORD.into(),
        };
        self.connect_as(name, self.tls.as_ref().map(|_| admin))
    }

    /// Options for a client named `name` logging in with `credentials`
    /// (`None`: anonymous).
    pub fn connect_as(&self, name: &str, credentials: Option<Credentials>) -> ConnectOptions {
        ConnectOptions {
            name: name.to_owned(),
            tls: self.tls.as_ref().map(|t| t.client.clone()),
            credentials,
        }
    }

    /// TLS material trusting the cluster's CA (for `ClientBuilder::tls`).
    pub fn client_material(&self) -> Option<TlsMaterial> {
        let tls = self.tls.as_ref()?;
        TlsMaterial::from_pem(tls.ca.issued().cert_pem.as_bytes(), None).ok()
    }

    /// A session with the node at `addr`, as [`connect_options`](Self::connect_options).
    pub async fn session(&self, addr: &str, name: &str) -> Result<Session, ClientError> {
        Session::connect_with(addr, &self.connect_options(name), Duration::from_secs(2)).await
    }

    /// The directory of the cluster's CA and certificates (`ca.pem`,
    /// `ca.key`, `<node id>.pem`, `.key`), when it runs TLS.
    pub fn certs_dir(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.dir.as_path())
    }

    /// The id of node `i` of `dc`.
    pub fn node_id(&self, dc: &str, i: usize) -> String {
        if self.spec.dcs.len() == 1 {
            format!("n{i}")
        } else {
            format!("{dc}-n{i}")
        }
    }

    /// A running node; panics naming it when it is not running.
    pub fn node(&self, id: &str) -> &RunningNode {
        self.nodes
            .get(id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// The operations listener's address (`/metrics`, `/healthz`,
    /// `/readyz`) of running node `id`.
    pub fn ops_addr(&self, id: &str) -> &str {
        self.node(id)
            .ops_addr
            .as_deref()
            .unwrap_or_else(|| panic!("node {id} serves no operations listener"))
    }

    /// The configuration node `i` of `dc` starts with: rack `r<i>`, any
    /// free port, the seed (once there is one), the spec's keyspace,
    /// bridge, WAN proxy, vnodes and fsync policy.
    pub fn node_config(&self, dc: &str, i: usize) -> NodeConfig {
        let id = self.node_id(dc, i);
        let rf = self.spec.nodes_per_dc.min(3) as u32;
        let replication: Vec<(&str, u32)> =
            self.spec.dcs.iter().map(|d| (d.as_str(), rf)).collect();
        let mut keyspace = crate::config::keyspace(&replication);
        keyspace.resolver = self
            .spec
            .resolver
            .as_ref()
            .map(|(name, _)| format!("{name}@1"));
        let mut config = NodeConfig {
            rack: format!("r{i}"),
            seeds: if self.seed.is_empty() {
                vec![]
            } else {
                vec![self.seed.clone()]
            },
            vnodes: self.spec.vnodes,
            fsync: self.spec.fsync,
            bridge: self.spec.bridge.clone(),
            wan_proxy: self.wan.as_ref().map(|w| w.addr().to_string()),
            keyspaces: BTreeMap::from([(self.spec.keyspace.clone(), keyspace)]),
            ..crate::config::node(&id, dc, self.root().join(&id))
        };
        if let Some(configure) = self.spec.configure {
            configure(&mut config);
        }
        config
    }

    /// Start (or restart, with its data) node `i` of `dc`.
    pub async fn start_node(&mut self, dc: &str, i: usize) -> anyhow::Result<&RunningNode> {
        let config = self.node_config(dc, i);
        self.start_with(config).await
    }

    /// The `[tls]` section for node `id` of `dc` (its certificate issued
    /// by the cluster's CA the first time), or `None` in a plaintext
    /// cluster. [`node_config`](Self::node_config) sets it.
    pub fn tls_section(&self, id: &str, dc: &str) -> anyhow::Result<Option<TlsSection>> {
        self.tls
            .as_ref()
            .map(|t| t.node_section(id, dc))
            .transpose()
    }

    /// Start a node with `config` (made by [`node_config`](Self::node_config)
    /// and adjusted: a fixed address, `bootstrap`, other seeds).
    pub async fn start_with(&mut self, mut config: NodeConfig) -> anyhow::Result<&RunningNode> {
        if let Some(section) = self.tls_section(&config.node_id, &config.dc)? {
            // A config that names its own TLS files keeps them (tests of
            // certificate rotation).
            config.tls.get_or_insert(section);
            config.insecure_plaintext = false;
            config.auth = AuthSection {
                anonymous_full_access: false,
                bootstrap_admin: Some(ADMIN.into()),
                bootstrap_password: Some(ADMIN_PASSWORD.into()),
                bootstrap_password_file: None,
            };
        }
        let tuning = NodeTuning {
            gossip: self.spec.gossip.clone(),
            users: UsersConfig {
                password: PasswordParams::for_tests(),
                ..UsersConfig::default()
            },
            ..NodeTuning::default()
        };
        let (id, dc) = (config.node_id.clone(), config.dc.clone());
        let node = match self.spec.kind {
            NodeKind::Bare => node::start(config, Arc::new(NoMerge), tuning).await,
            NodeKind::Server => {
                let plugins = Plugins::new(&config);
                let host = plugins.host.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
                self.hosts.push(host.clone());
                self.bridges.push(plugins.bridge.clone());
                plugins.start(config, tuning).await
            }
        }
        .with_context(|| format!("starting {id}"))?;
        if let Some(wan) = &self.wan {
            wan.register(&node.addr, &dc);
        }
        if self.seed.is_empty() {
            self.seed = node.addr.clone();
        }
        self.node_dcs.insert(id.clone(), dc);
        self.nodes.insert(id.clone(), node);
        Ok(&self.nodes[&id])
    }

    /// Stop node `id` (its data stays); nothing when it is not running.
    pub async fn stop_node(&mut self, id: &str) {
        if let Some(node) = self.nodes.remove(id) {
            node.shutdown().await;
        }
    }

    /// Start (or restart, with their data) every node of `dc`.
    pub async fn start_dc(&mut self, dc: &str) -> anyhow::Result<()> {
        for i in 0..self.spec.nodes_per_dc {
            self.start_node(dc, i).await?;
        }
        Ok(())
    }

    /// Stop every node of `dc` (their data stays).
    pub async fn stop_dc(&mut self, dc: &str) {
        for id in self.ids(dc) {
            self.stop_node(&id).await;
        }
    }

    /// Ids of `dc`'s running nodes.
    pub fn ids(&self, dc: &str) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|id| self.node_dcs.get(*id).is_some_and(|d| d == dc))
            .cloned()
            .collect()
    }

    /// Client addresses of `dc`'s running nodes.
    pub fn addrs(&self, dc: &str) -> Vec<String> {
        self.ids(dc)
            .iter()
            .map(|id| self.nodes[id].addr.clone())
            .collect()
    }

    /// Wait (up to 30 s) until every running node sees `count` nodes
    /// alive; the error names `what`.
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
        let seen: Vec<(String, usize)> = self
            .nodes
            .iter()
            .map(|(id, n)| (id.clone(), n.gossiper().alive().len()))
            .collect();
        bail!("the cluster did not settle at {count} live nodes ({what}); each sees {seen:?}")
    }

    /// In a TLS cluster, wait (up to 30 s) until the first admin can log
    /// in on every running node (the bootstrap has written it and it has
    /// replicated).
    pub async fn wait_admin(&self) -> anyhow::Result<()> {
        if self.tls.is_none() {
            return Ok(());
        }
        for _ in 0..600 {
            let mut all = true;
            for node in self.nodes.values() {
                all &= self.session(&node.addr, "local-cluster").await.is_ok();
            }
            if all {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the first admin could not log in on every node within 30 s")
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
        let session = self.session(&first, "local-cluster").await?;
        let call = |request| session.call(RequestBody::Registry(request), Duration::from_secs(30));
        match call(RegistryRequest::Upload {
            name: name.clone(),
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
            keyspace: self.spec.keyspace.clone(),
            name: name.clone(),
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
                let s = self.session(&node.addr, "local-cluster").await?;
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

    /// Every running node's own replica of `key` in the spec's keyspace
    /// (read from its store: no coordinator, no read repair).
    pub async fn sets(&self, key: &[u8]) -> anyhow::Result<BTreeMap<String, VersionSet>> {
        self.sets_in(&self.spec.keyspace, key).await
    }

    /// [`Self::sets`] in `keyspace`.
    pub async fn sets_in(
        &self,
        keyspace: &str,
        key: &[u8],
    ) -> anyhow::Result<BTreeMap<String, VersionSet>> {
        let mut out = BTreeMap::new();
        for (id, node) in &self.nodes {
            let set = node.store().get(keyspace, key).await?;
            out.insert(id.clone(), set);
        }
        Ok(out)
    }

    /// The Merkle root of every running node's whole keyspace (equal
    /// roots: equal data, when every node holds every key).
    pub async fn merkle_roots(&self) -> anyhow::Result<BTreeMap<String, [u8; 16]>> {
        let mut out = BTreeMap::new();
        for (id, node) in &self.nodes {
            let listing = node.store().scan_digests(&self.spec.keyspace, ..).await?;
            let keys = listing
                .into_iter()
                .map(|(key, digest)| (key_hash(&key), key, digest));
            let range = HashRange::new(0, u64::MAX).context("the whole ring")?;
            out.insert(id.clone(), MerkleTree::from_keys(range, 12, keys).root());
        }
        Ok(out)
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

    /// The bridges of every node this cluster started.
    pub fn bridges(&self) -> Vec<Arc<DcBridge>> {
        self.bridges.iter().flat_map(|f| f.bridges()).collect()
    }

    /// The resolver hosts of the nodes this cluster started (server
    /// nodes), in start order.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// Merges the spec's resolver ran, over every host this cluster
    /// started.
    pub fn merges(&self) -> u64 {
        let Some((_, module)) = &self.spec.resolver else {
            return 0;
        };
        let hash = module_hash(module);
        self.hosts.iter().map(|h| h.stats(&hash).merges_ok()).sum()
    }

    /// Stop every node (then a temporary root is removed).
    pub async fn shutdown(mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            node.shutdown().await;
        }
    }
}
