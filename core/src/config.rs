//! A node's configuration: what `isthmus server --config FILE` reads.
//!
//! The binary loads it with figment (a TOML file, overridden by `ISTHMUS_*`
//! environment variables); this module defines the shape and checks it.
//! Unknown keys are refused (serde `deny_unknown_fields`), and
//! [`NodeConfig::validate`] refuses impossible values with an error that
//! names the field, so a typo never silently becomes a default.
//!
//! ```toml
//! node_id = "n1"
//! dc = "dc1"
//! rack = "r1"
//! listen = "0.0.0.0:7401"
//! advertise = "n1.isthmus.example:7401"
//! data_dir = "/var/lib/isthmus/n1"
//! seeds = ["n1.isthmus.example:7401", "n2.isthmus.example:7401"]
//! vnodes = 64
//! fsync = "interval"
//! fsync_interval_ms = 5
//!
//! [keyspaces.carts]
//! replication = { dc1 = 3, dc2 = 3 }
//! consistency = "LOCAL_QUORUM"
//! resolver = "cart-union@1"
//!
//! [tuning.gossip]
//! interval_ms = 500
//! ```

mod tuning;

pub use tuning::{
    EngineSection, GossipSection, HintsSection, LimitsSection, RepairSection, ResolversSection,
    RuntimeSection, Tuning,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limit::DC_NAME_BYTES_MAX;
use crate::model::Consistency;

/// Largest replication factor accepted for one datacenter.
pub const REPLICATION_PER_DC_MAX: u32 = 15;
/// Largest number of vnodes per node accepted, and the default of the
/// bound gossip holds every node's entry to
/// ([`GossipConfig::vnodes_max`](crate::gossip::service::GossipConfig::vnodes_max)).
pub const VNODES_MAX: u32 = 4096;

/// When the commit log is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Before every acknowledgement (concurrent writers share one fsync).
    Always,
    /// Every `fsync_interval_ms` milliseconds.
    Interval,
}

/// One `[keyspaces.NAME]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceSection {
    /// Replicas per datacenter, e.g. `{ dc1 = 3 }`.
    pub replication: BTreeMap<String, u32>,
    /// Default consistency level of requests that name none.
    #[serde(default = "default_consistency")]
    pub consistency: Consistency,
    /// Resolver binding, `NAME@VERSION`.
    #[serde(default)]
    pub resolver: Option<String>,
    /// Default time to live of written values, in seconds
    /// (`1..=`[`TTL_S_MAX`]): a write that names no expiry expires this
    /// long after its coordinator received it. Unset: never.
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// The keyspace holds counters: the Redis front door's `INCR`,
    /// `INCRBY`, `DECR` and `DECRBY` add to them (with a resolver that
    /// merges counters bound, such as the `pn-counter` example), and its
    /// `GET` shows their value. Writes of other values are refused there.
    #[serde(default)]
    pub counter: bool,
    /// Writes take a sloppy quorum unless a request says otherwise: with
    /// replicas of a key down, the first live nodes further along its
    /// datacenter's ring take their copies as hints (delivered when the
    /// replicas return) and count toward the level in their place. Off:
    /// strict quorums, only the key's replicas count.
    #[serde(default)]
    pub sloppy_quorum: bool,
    /// Percent of reads (`0..=100`) that ask every replica the level
    /// reads from and repair the stale ones; the others ask just enough
    /// replicas to win the level (the coordinator's own copy first), and
    /// more only when one fails or is slow. Anti-entropy (hints, Merkle
    /// repair) repairs the rest, as with Cassandra's
    /// `dclocal_read_repair_chance`.
    #[serde(default = "default_read_repair_percent")]
    pub read_repair_percent: u8,
}

/// [`KeyspaceSection::read_repair_percent`]'s default.
pub const READ_REPAIR_PERCENT_DEFAULT: u8 = 10;

fn default_read_repair_percent() -> u8 {
    READ_REPAIR_PERCENT_DEFAULT
}

/// The longest keyspace default TTL, in seconds (100 years): beyond it a
/// value might as well never expire, and a typo (milliseconds for
/// seconds) is caught.
pub const TTL_S_MAX: u64 = 100 * 365 * 24 * 3600;

fn default_consistency() -> Consistency {
    Consistency::LocalQuorum
}

fn default_vnodes() -> u32 {
    64
}

fn default_fsync() -> FsyncMode {
    FsyncMode::Interval
}

fn default_fsync_interval_ms() -> u64 {
    5
}

/// The whole node configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's stable id.
    pub node_id: String,
    /// Its datacenter.
    pub dc: String,
    /// Its rack.
    pub rack: String,
    /// Address the data socket binds, `ip:port` (clients and peers;
    /// `0.0.0.0:7401` binds every interface).
    pub listen: String,
    /// Address other nodes and clients are told to reach this node at,
    /// `host:port`: an IP or a DNS name (a Kubernetes pod's stable name,
    /// `isthmus-0.isthmus.dc1.svc:7401`), resolved on every dial, so a
    /// node that comes back at a new IP is found again under its name.
    /// Absent: `listen` (which must then name an interface, not a
    /// wildcard; with port 0, the port bound).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Directory for the commit log, tables, hints, outbox and the peers
    /// the node remembers.
    pub data_dir: PathBuf,
    /// Addresses of seed nodes to join through (`host:port`, IPs or DNS
    /// names, resolved on every dial). On restart the node also contacts
    /// the peers it knew (`data_dir/peers`).
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Tokens this node takes on its datacenter's ring.
    #[serde(default = "default_vnodes")]
    pub vnodes: u32,
    /// Commit log fsync policy.
    #[serde(default = "default_fsync")]
    pub fsync: FsyncMode,
    /// Interval of `fsync = "interval"`, in milliseconds.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Keyspaces by name.
    #[serde(default)]
    pub keyspaces: BTreeMap<String, KeyspaceSection>,
    /// The cross-DC bridge.
    #[serde(default)]
    pub bridge: BridgeSection,
    /// Dial nodes of other datacenters (and seeds) through this userspace
    /// WAN proxy, `host:port` (simulated latency and partitions in tests
    /// and the demo; see `isthmus_dc_bridge::wan`). Unset in production.
    #[serde(default)]
    pub wan_proxy: Option<String>,
    /// How a node takes its place on the ring. Absent (the default):
    /// decided by the node: one starting on a new data directory (or one
    /// whose bootstrap did not finish) announces `Joining`, waits to hear
    /// from its seeds, and then bootstraps if its datacenter's ring has
    /// members, or forms the ring if it has none; a node that has been on
    /// the ring before takes its place again. `true`: always join a
    /// running cluster (stream the ranges it will own from their current
    /// owners, then take them over). `false`: always take its place at
    /// once, streaming nothing (the nodes forming a new cluster together).
    /// See `docs/decisions.md`.
    #[serde(default)]
    pub bootstrap: Option<bool>,
    /// TLS on every link: the trusted CAs, and this node's certificate and
    /// key. Required unless `insecure_plaintext` is set.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Run without TLS: every link (clients, peers, other datacenters) in
    /// plaintext, and a connection that says it is a node is believed. For
    /// a laptop or a sealed test network only; the node warns at start.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Client authentication.
    #[serde(default)]
    pub auth: AuthSection,
    /// How far in the future, by this node's clock, a version written
    /// elsewhere may be stamped before this node refuses it (`CLOCK_SKEW`).
    /// A node whose clock runs ahead would otherwise win last-writer-wins
    /// against every concurrent write; one whose clock runs behind finds
    /// its replicas refusing what it sends. Keep clocks in sync with NTP.
    #[serde(default = "default_clock_skew_max_ms")]
    pub clock_skew_max_ms: u64,
    /// How long compaction keeps a tombstone before dropping it, in
    /// milliseconds: every replica must see a delete within this time. A
    /// node that was down longer sets its data aside when it starts and
    /// rebuilds it from its peers, so it cannot bring deleted values back.
    #[serde(default = "default_tombstone_grace_ms")]
    pub tombstone_grace_ms: u64,
    /// How long a node keeps hints for a replica that is down, in
    /// milliseconds; older hints are dropped (repair brings what they
    /// held).
    #[serde(default = "default_hint_window_ms")]
    pub hint_window_ms: u64,
    /// The connection layer's bounds: slots, deadlines, reply buffering.
    #[serde(default)]
    pub server: ServerSection,
    /// Where merges run and each keyspace's merge-time budget.
    #[serde(default)]
    pub merge: MergeSection,
    /// The operations listener: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub ops: OpsSection,
    /// The Redis-protocol front door (off unless enabled).
    #[serde(default)]
    pub redis: RedisSection,
    /// Tuning values that have a built-in default: size limits, the
    /// engine, gossip, hints, repair, the resolver host and registry.
    #[serde(default)]
    pub tuning: Tuning,
}

/// The address a listener of its own binds: none when off, else the one
/// configured, else the data `listen` address's host on `port` (any
/// free port when `listen`'s port is 0).
fn listener_address(
    enabled: bool,
    configured: Option<&str>,
    listen: &str,
    port: u16,
) -> Option<String> {
    if !enabled {
        return None;
    }
    if let Some(addr) = configured {
        return Some(addr.to_owned());
    }
    let (host, data_port) = listen.rsplit_once(':').unwrap_or((listen, ""));
    let port = if data_port == "0" { 0 } else { port };
    Some(format!("{host}:{port}"))
}

/// Default port of the Redis-protocol front door (`[redis] listen`).
pub const REDIS_PORT_DEFAULT: u16 = 6379;

/// The `[redis]` table: the Redis-protocol front door (RESP2 and RESP3),
/// off by default. Its commands become this node's client requests, with
/// the same users and permissions; over TLS on a node with TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// Serve it.
    pub enabled: bool,
    /// `host:port`; absent: `listen`'s host, port 6379 (any free port
    /// when `listen`'s port is 0).
    pub listen: Option<String>,
    /// Keyspaces by database index: `SELECT n` chooses `databases[n]`; a
    /// connection starts in database 0. Each must be a configured
    /// keyspace.
    pub databases: Vec<String>,
    /// Each command's deadline, in milliseconds.
    pub timeout_ms: u64,
    /// Connections served at once; one more is closed at once.
    pub connections_max: usize,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            enabled: false,
            listen: None,
            databases: Vec::new(),
            timeout_ms: 5_000,
            connections_max: 1024,
        }
    }
}

impl RedisSection {
    /// The address to bind, given the node's data `listen` address; `None`
    /// when the front door is off.
    pub fn address(&self, listen: &str) -> Option<String> {
        listener_address(
            self.enabled,
            self.listen.as_deref(),
            listen,
            REDIS_PORT_DEFAULT,
        )
    }

    /// Refuse an address that is not `host:port`, a database that is not
    /// a configured keyspace (or none at all), and zero bounds.
    pub fn validate(
        &self,
        keyspaces: &BTreeMap<String, KeyspaceSection>,
    ) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(addr) = &self.listen {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(invalid(
                    "redis.listen",
                    format!("{addr:?} is not host:port"),
                ));
            }
        }
        if self.databases.is_empty() {
            return Err(invalid(
                "redis.databases",
                "name at least one keyspace (database 0, where connections start)",
            ));
        }
        for (i, ks) in self.databases.iter().enumerate() {
            if !keyspaces.contains_key(ks) {
                return Err(invalid(
                    format!("redis.databases[{i}]"),
                    format!("{ks:?} is not a configured keyspace"),
                ));
            }
        }
        if self.timeout_ms == 0 {
            return Err(invalid("redis.timeout_ms", "must be at least 1"));
        }
        if self.connections_max == 0 {
            return Err(invalid("redis.connections_max", "must be at least 1"));
        }
        Ok(())
    }
}

/// Default port of the operations listener (`[ops] listen`).
pub const OPS_PORT_DEFAULT: u16 = 9401;

/// The `[ops]` table: the operations listener, an HTTP port apart from
/// the data port serving `/metrics` (Prometheus text format), `/healthz`
/// and `/readyz`. On by default, as in Cassandra's and CockroachDB's
/// nodes: a node that cannot be scraped or probed is hard to run.
///
/// By default the host of `listen` with port 9401 (port 0, any free
/// port, when `listen`'s port is 0). `/healthz` and `/readyz` are open;
/// the figures (`/metrics`, the JSON API, the dashboard) need a user's
/// login (`auth = "login"`, HTTP Basic) unless `auth = "none"` or the
/// node allows anonymous access; on a node with TLS the listener speaks
/// HTTPS with the node's certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsSection {
    /// Serve the operations listener at all.
    pub enabled: bool,
    /// `host:port` to serve it on; absent: `listen`'s host, port 9401.
    pub listen: Option<String>,
    /// How `isthmus server` writes its log lines (to stderr): `text` for
    /// people, `json` (one object per line) for log collectors.
    pub log_format: LogFormat,
    /// Who may read the figures.
    pub auth: OpsAuth,
}

/// Who may read the operations listener's figures (`[ops] auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpsAuth {
    /// Any user of the cluster, by HTTP Basic credentials (as the data
    /// port's `status` needs a login). Open when the node allows
    /// anonymous access (`auth.anonymous_full_access`).
    #[default]
    Login,
    /// Anyone who reaches the address: for a listener bound to a private
    /// interface whose scraper cannot log in.
    None,
}

/// The log line format of `isthmus server` (`[ops] log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

impl Default for OpsSection {
    fn default() -> Self {
        OpsSection {
            enabled: true,
            listen: None,
            log_format: LogFormat::Text,
            auth: OpsAuth::Login,
        }
    }
}

impl OpsSection {
    /// The address to bind, given the node's data `listen` address; `None`
    /// when the listener is off.
    pub fn address(&self, listen: &str) -> Option<String> {
        listener_address(
            self.enabled,
            self.listen.as_deref(),
            listen,
            OPS_PORT_DEFAULT,
        )
    }

    /// Refuse a `listen` that is not `host:port`, or the data port itself.
    pub fn validate(&self, data_listen: &str) -> Result<(), ConfigError> {
        let Some(addr) = &self.listen else {
            return Ok(());
        };
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(invalid("ops.listen", format!("{addr:?} is not host:port")));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(invalid("ops.listen", format!("{addr:?} is not host:port")));
        }
        if port != "0" && addr == data_listen {
            return Err(invalid(
                "ops.listen",
                format!(
                    "{addr:?} is the data port (`listen`); the operations listener needs its own"
                ),
            ));
        }
        Ok(())
    }
}

/// The `[merge]` table: the node's merge pool
/// ([`MergePool`](crate::merge::pool::MergePool)). A keyspace whose merges
/// use up its budget has them deferred
/// ([`FailureClass::BudgetExhausted`](crate::merge::FailureClass)): its
/// siblings are kept until the budget refills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeSection {
    /// Threads merges run on (never the async runtime's).
    pub threads: usize,
    /// Merges that may wait for a thread; one more is refused and its
    /// siblings kept.
    pub queue_max: usize,
    /// Merge time (wall-clock time on a merge thread) one keyspace may use
    /// per second, in milliseconds; at most `threads * 1000`.
    pub keyspace_budget_ms_per_s: u64,
}

impl Default for MergeSection {
    fn default() -> Self {
        use crate::merge::pool as p;
        MergeSection {
            threads: p::THREADS_DEFAULT,
            queue_max: p::QUEUE_MAX_DEFAULT,
            keyspace_budget_ms_per_s: p::KEYSPACE_BUDGET_MS_PER_S_DEFAULT,
        }
    }
}

impl MergeSection {
    /// The pool's configuration.
    pub fn to_config(&self) -> crate::merge::pool::MergeConfig {
        crate::merge::pool::MergeConfig {
            threads: self.threads,
            queue_max: self.queue_max,
            keyspace_budget: std::time::Duration::from_millis(self.keyspace_budget_ms_per_s),
        }
    }

    /// Refuse a bound that cannot work, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.threads) {
            return Err(invalid(
                "merge.threads",
                format!("{} is outside 1..=64", self.threads),
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_max) {
            return Err(invalid(
                "merge.queue_max",
                format!("{} is outside 1..=1000000", self.queue_max),
            ));
        }
        let most = self.threads as u64 * 1000;
        if !(1..=most).contains(&self.keyspace_budget_ms_per_s) {
            return Err(invalid(
                "merge.keyspace_budget_ms_per_s",
                format!(
                    "{} is outside 1..={most} (1000 per merge thread)",
                    self.keyspace_budget_ms_per_s
                ),
            ));
        }
        Ok(())
    }
}

/// The `[server]` table: the connection layer's bounds
/// ([`ServerConfig`](crate::server::ServerConfig)). Every key has a
/// default a production node runs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Client connections served at once; one more is refused at its
    /// handshake with `OVERLOADED`.
    pub connections_max: usize,
    /// Peer (node) connections served at once, a pool apart from the
    /// clients' so that clients never lock peers out.
    pub peer_connections_max: usize,
    /// Connections in their handshake at once; a socket accepted beyond
    /// it is closed at once.
    pub handshakes_max: usize,
    /// Time a new connection has to complete its handshake (TLS included),
    /// in milliseconds.
    pub handshake_timeout_ms: u64,
    /// A connection on which no next request begins for this long is
    /// closed, in milliseconds.
    pub idle_timeout_ms: u64,
    /// A request frame, once begun, must be whole within this long, in
    /// milliseconds (a client trickling bytes is cut).
    pub read_timeout_ms: u64,
    /// A connection whose replies make no progress onto its socket for
    /// this long (a client that does not read) is closed, in milliseconds.
    pub write_timeout_ms: u64,
    /// Bytes of encoded replies queued for one connection's socket (one
    /// reply larger than this is still sent, alone).
    pub reply_buffer_bytes_max: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        use crate::server as s;
        ServerSection {
            connections_max: s::CONNECTIONS_MAX_DEFAULT,
            peer_connections_max: s::PEER_CONNECTIONS_MAX_DEFAULT,
            handshakes_max: s::HANDSHAKES_MAX_DEFAULT,
            handshake_timeout_ms: millis(s::HANDSHAKE_TIMEOUT_DEFAULT),
            idle_timeout_ms: millis(s::IDLE_TIMEOUT_DEFAULT),
            read_timeout_ms: millis(s::READ_TIMEOUT_DEFAULT),
            write_timeout_ms: millis(s::WRITE_TIMEOUT_DEFAULT),
            reply_buffer_bytes_max: s::REPLY_BUFFER_BYTES_MAX_DEFAULT,
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ServerSection {
    /// `base` with this table's bounds in place of its own.
    pub fn apply(&self, base: crate::server::ServerConfig) -> crate::server::ServerConfig {
        use std::time::Duration;
        crate::server::ServerConfig {
            connections_max: self.connections_max,
            peer_connections_max: self.peer_connections_max,
            handshakes_max: self.handshakes_max,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            read_timeout: Duration::from_millis(self.read_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            reply_buffer_bytes_max: self.reply_buffer_bytes_max,
            ..base
        }
    }

    /// Refuse a zero or absurd bound, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let counts = [
            ("server.connections_max", self.connections_max, 1_000_000),
            (
                "server.peer_connections_max",
                self.peer_connections_max,
                100_000,
            ),
            ("server.handshakes_max", self.handshakes_max, 100_000),
            (
                "server.reply_buffer_bytes_max",
                self.reply_buffer_bytes_max,
                1 << 30,
            ),
        ];
        for (field, value, max) in counts {
            if value == 0 || value > max {
                return Err(invalid(field, format!("{value} is outside 1..={max}")));
            }
        }
        if self.reply_buffer_bytes_max < 64 * 1024 {
            return Err(invalid(
                "server.reply_buffer_bytes_max",
                "must be at least 64 KiB",
            ));
        }
        const HOUR_MS: u64 = 3_600_000;
        let deadlines = [
            (
                "server.handshake_timeout_ms",
                self.handshake_timeout_ms,
                100,
                60_000,
            ),
            (
                "server.idle_timeout_ms",
                self.idle_timeout_ms,
                1_000,
                24 * HOUR_MS,
            ),
            ("server.read_timeout_ms", self.read_timeout_ms, 100, HOUR_MS),
            (
                "server.write_timeout_ms",
                self.write_timeout_ms,
                100,
                HOUR_MS,
            ),
        ];
        for (field, value, min, max) in deadlines {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    field,
                    format!("{value} ms is outside {min}..={max} ms"),
                ));
            }
        }
        Ok(())
    }
}

fn default_clock_skew_max_ms() -> u64 {
    crate::limit::CLOCK_SKEW_MAX_MS_DEFAULT
}

/// Default of `tombstone_grace_ms`: ten days, as Cassandra's
/// `gc_grace_seconds`.
pub const TOMBSTONE_GRACE_MS_DEFAULT: u64 = 10 * 24 * 3600 * 1000;

fn default_tombstone_grace_ms() -> u64 {
    TOMBSTONE_GRACE_MS_DEFAULT
}

/// Default of `hint_window_ms`: three hours.
pub const HINT_WINDOW_MS_DEFAULT: u64 = 3 * 3600 * 1000;

fn default_hint_window_ms() -> u64 {
    HINT_WINDOW_MS_DEFAULT
}

/// The `[auth]` table: who may connect as a client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Let clients that present no credentials do anything (every
    /// permission, admin included). Off by default; for a laptop, or a
    /// cluster behind its own access control. The node warns at start.
    pub anonymous_full_access: bool,
    /// The first admin: when a node forming the cluster finds no user at
    /// all, it creates this user with the admin role. Ignored once any
    /// user exists (a later password change is not undone).
    pub bootstrap_admin: Option<String>,
    /// The first admin's password; meant for the environment variable
    /// `ISTHMUS_AUTH__BOOTSTRAP_PASSWORD` rather than the file.
    pub bootstrap_password: Option<String>,
    /// A file holding the first admin's password (trailing newline
    /// ignored), instead of `bootstrap_password`.
    pub bootstrap_password_file: Option<PathBuf>,
}

impl AuthSection {
    /// The first admin's name and password, when configured; the
    /// password file is read here.
    pub fn bootstrap(&self) -> Result<Option<(String, String)>, ConfigError> {
        let Some(name) = &self.bootstrap_admin else {
            return Ok(None);
        };
        let password = match (&self.bootstrap_password, &self.bootstrap_password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    invalid(
                        "auth.bootstrap_password_file",
                        format!("{}: {e}", path.display()),
                    )
                })?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            (None, None) => {
                return Err(invalid(
                    "auth.bootstrap_admin",
                    "needs bootstrap_password (ISTHMUS_AUTH__BOOTSTRAP_PASSWORD) or bootstrap_password_file",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "auth.bootstrap_password",
                    "set together with bootstrap_password_file: choose one",
                ));
            }
        };
        Ok(Some((name.clone(), password)))
    }
}

/// The `[tls]` table. PEM files; `ca` may list several (each file may hold
/// several certificates): during a CA rotation, the old and the new CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Trusted CA certificates.
    pub ca: Vec<PathBuf>,
    /// This node's certificate chain (leaf first), issued for
    /// `isthmus://node/<dc>/<node_id>`.
    pub cert: PathBuf,
    /// The certificate's private key.
    pub key: PathBuf,
}

/// The `[bridge]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// Ship writes to other datacenters through the bridge (when off,
    /// coordinators write to remote replicas directly).
    pub enabled: bool,
    /// Bound of the outbox on disk; past it, the datacenter furthest
    /// behind falls back to Merkle full-sync.
    pub outbox_bytes_max: u64,
    /// Largest batch, in encoded bytes before compression.
    pub batch_bytes_max: u32,
    /// How long a shipper waits for a batch to fill, in milliseconds.
    pub linger_ms: u64,
    /// Bound of the quarantine (dead-letter store) kept per remote
    /// datacenter for records it refused for good; a refused record that
    /// does not fit makes a full sync owed to that datacenter instead.
    pub quarantine_bytes_max: u64,
    /// How long a shipper waits for the remote node a batch went to before
    /// it also sends the batch to the next live node of that datacenter,
    /// in milliseconds: a stalled (paused, overloaded) node does not hold
    /// up the stream until the failure detector convicts it.
    pub failover_after_ms: u64,
}

impl Default for BridgeSection {
    fn default() -> Self {
        BridgeSection {
            enabled: true,
            outbox_bytes_max: 1 << 30,
            batch_bytes_max: 1 << 20,
            linger_ms: 2,
            quarantine_bytes_max: 64 << 20,
            failover_after_ms: 2_000,
        }
    }
}

/// A configuration value that cannot work, with the field that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `keyspaces.carts.replication.dc1`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A `NAME@VERSION` resolver binding, parsed.
pub fn parse_resolver_binding(s: &str) -> Option<(String, u32)> {
    let (name, version) = s.rsplit_once('@')?;
    if name.is_empty() {
        return None;
    }
    Some((name.to_owned(), version.parse().ok()?))
}

/// Refuse an address that is not `host:port` with a non-zero port, where
/// host is an IP (`[v6]` in brackets) or a DNS name.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        if socket.port() == 0 || socket.ip().is_unspecified() {
            return Err(format!(
                "{addr:?} is not an address to reach a node at (a wildcard or port 0)"
            ));
        }
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!("{addr:?} has no port number 1..=65535"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "{addr:?}: {host:?} is neither an IP nor a DNS name"
        ));
    }
    Ok(())
}

impl NodeConfig {
    /// The address this node tells other nodes and clients, given the
    /// address its socket bound: `advertise`, else the bound address.
    pub fn advertised(&self, bound: &str) -> String {
        self.advertise.clone().unwrap_or_else(|| bound.to_owned())
    }

    /// Check `vnodes` against `vnodes_max`: the bound of the gossip
    /// tuning the node starts with, which its peers hold its entry to (a
    /// node announcing more would be refused by every peer).
    pub fn validate_vnodes(&self, vnodes_max: u32) -> Result<(), ConfigError> {
        if self.vnodes == 0 || self.vnodes > vnodes_max {
            return Err(invalid(
                "vnodes",
                format!(
                    "{} is outside 1..={vnodes_max} (gossip's vnodes_max)",
                    self.vnodes
                ),
            ));
        }
        Ok(())
    }

    /// Check every field for values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("node_id", &self.node_id),
            ("dc", &self.dc),
            ("rack", &self.rack),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        if self.dc.len() > DC_NAME_BYTES_MAX {
            return Err(invalid(
                "dc",
                format!("longer than {DC_NAME_BYTES_MAX} bytes (every version carries it)"),
            ));
        }
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", format!("{:?} is not ip:port ({e})", self.listen)))?;
        match &self.advertise {
            Some(advertise) => {
                check_host_port(advertise).map_err(|reason| invalid("advertise", reason))?;
            }
            None if listen.ip().is_unspecified() => {
                return Err(invalid(
                    "advertise",
                    format!(
                        "must be set when listen is a wildcard ({}): other nodes and clients \
                         need an address or DNS name that reaches this node",
                        self.listen
                    ),
                ));
            }
            None => {}
        }
        for (i, seed) in self.seeds.iter().enumerate() {
            check_host_port(seed).map_err(|reason| invalid(format!("seeds[{i}]"), reason))?;
        }
        self.validate_vnodes(VNODES_MAX)?;
        if self.fsync == FsyncMode::Interval && self.fsync_interval_ms == 0 {
            return Err(invalid(
                "fsync_interval_ms",
                "must be at least 1 with fsync = \"interval\"",
            ));
        }
        if self.clock_skew_max_ms < 100 {
            return Err(invalid(
                "clock_skew_max_ms",
                "must be at least 100: the delay of a message between nodes counts against it",
            ));
        }
        if self.tombstone_grace_ms < 1000 {
            return Err(invalid(
                "tombstone_grace_ms",
                "must be at least 1000: a node that misses more than this must rebuild its data",
            ));
        }
        if self.hint_window_ms == 0 {
            return Err(invalid(
                "hint_window_ms",
                "must be at least 1 (hints are what bring a briefly down replica its writes)",
            ));
        }
        if let Some(proxy) = &self.wan_proxy {
            proxy
                .parse::<SocketAddr>()
                .map_err(|e| invalid("wan_proxy", format!("{proxy:?} is not host:port ({e})")))?;
        }
        if self.bridge.outbox_bytes_max < 1 << 20 {
            return Err(invalid("bridge.outbox_bytes_max", "must be at least 1 MiB"));
        }
        if self.bridge.quarantine_bytes_max < 1 << 20 {
            return Err(invalid(
                "bridge.quarantine_bytes_max",
                "must be at least 1 MiB",
            ));
        }
        if self.bridge.failover_after_ms < 100 {
            return Err(invalid(
                "bridge.failover_after_ms",
                "must be at least 100: a batch takes a round trip across the WAN and a quorum write",
            ));
        }
        if !(4096..=1 << 20).contains(&self.bridge.batch_bytes_max) {
            return Err(invalid(
                "bridge.batch_bytes_max",
                "must be within 4 KiB..=1 MiB (a batch travels in one frame)",
            ));
        }
        match (&self.tls, self.insecure_plaintext) {
            (None, false) => {
                return Err(invalid(
                    "tls",
                    "TLS is required: set [tls] ca, cert and key (see `isthmus certs`), \
                     or insecure_plaintext = true to run every link in plaintext",
                ));
            }
            (Some(_), true) => {
                return Err(invalid(
                    "insecure_plaintext",
                    "set together with [tls]: choose one",
                ));
            }
            (Some(tls), false) if tls.ca.is_empty() => {
                return Err(invalid("tls.ca", "names no CA file"));
            }
            _ => {}
        }
        self.auth.bootstrap()?;
        self.server.validate()?;
        self.ops.validate(&self.listen)?;
        self.redis.validate(&self.keyspaces)?;
        self.merge.validate()?;
        self.tuning.validate()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        for (name, ks) in &self.keyspaces {
            let base = format!("keyspaces.{name}");
            if name.is_empty() || name.starts_with('_') {
                return Err(invalid(
                    base,
                    "keyspace names must be non-empty and not start with '_' (reserved for system keyspaces)",
                ));
            }
            if ks.replication.is_empty() {
                return Err(invalid(
                    format!("{base}.replication"),
                    "names no datacenter",
                ));
            }
            for (dc, &rf) in &ks.replication {
                if rf == 0 || rf > REPLICATION_PER_DC_MAX {
                    return Err(invalid(
                        format!("{base}.replication.{dc}"),
                        format!("{rf} is outside 1..={REPLICATION_PER_DC_MAX}"),
                    ));
                }
            }
            let local_levels = [Consistency::LocalOne, Consistency::LocalQuorum];
            if local_levels.contains(&ks.consistency) && !ks.replication.contains_key(&self.dc) {
                return Err(invalid(
                    format!("{base}.consistency"),
                    format!(
                        "{} needs replicas in this node's datacenter {:?}",
                        ks.consistency.name(),
                        self.dc
                    ),
                ));
            }
            if let Some(r) = &ks.resolver
                && parse_resolver_binding(r).is_none()
            {
                return Err(invalid(
                    format!("{base}.resolver"),
                    format!("{r:?} is not NAME@VERSION"),
                ));
            }
            if ks.read_repair_percent > 100 {
                return Err(invalid(
                    format!("{base}.read_repair_percent"),
                    format!("{} is not a percent (0..=100)", ks.read_repair_percent),
                ));
            }
            if let Some(ttl) = ks.ttl_s
                && !(1..=TTL_S_MAX).contains(&ttl)
            {
                return Err(invalid(
                    format!("{base}.ttl_s"),
                    format!(
                        "{ttl} is outside 1..={TTL_S_MAX} seconds (leave it unset for values that never expire)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NodeConfig {
        NodeConfig {
            clock_skew_max_ms: crate::limit::CLOCK_SKEW_MAX_MS_DEFAULT,
            tombstone_grace_ms: TOMBSTONE_GRACE_MS_DEFAULT,
            hint_window_ms: HINT_WINDOW_MS_DEFAULT,
            node_id: "n1".into(),
            dc: "dc1".into(),
            rack: "r1".into(),
            listen: "127.0.0.1:7401".into(),
            data_dir: "/tmp/n1".into(),
            seeds: vec!["127.0.0.2:7401".into()],
            vnodes: 64,
            fsync: FsyncMode::Always,
            fsync_interval_ms: 5,
            bridge: Default::default(),
            wan_proxy: None,
            advertise: None,
            bootstrap: None,
            tls: None,
            insecure_plaintext: true,
            auth: Default::default(),
            server: Default::default(),
            merge: Default::default(),
            ops: Default::default(),
            tuning: Default::default(),
            redis: Default::default(),
            keyspaces: BTreeMap::from([(
                "carts".into(),
                KeyspaceSection {
                    replication: BTreeMap::from([("dc1".into(), 3)]),
                    consistency: Consistency::LocalQuorum,
                    resolver: Some("cart-union@1".into()),
                    ttl_s: None,
                    counter: false,
                    sloppy_quorum: false,
                    read_repair_percent: READ_REPAIR_PERCENT_DEFAULT,
                },
            )]),
        }
    }

    #[test]
    fn a_good_config_validates() {
        assert_eq!(base().validate(), Ok(()));
        assert_eq!(
            parse_resolver_binding("cart-union@12"),
            Some(("cart-union".into(), 12))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = base();
        c.listen = "localhost".into();
        assert_eq!(c.validate().unwrap_err().field, "listen");
        let mut c = base();
        c.seeds.push("nope".into());
        assert_eq!(c.validate().unwrap_err().field, "seeds[1]");
        let mut c = base();
        c.keyspaces
            .get_mut("carts")
            .unwrap()
            .replication
            .insert("dc2".into(), 0);
        assert_eq!(
            c.validate().unwrap_err().field,
            "keyspaces.carts.replication.dc2"
        );
        let mut c = base();
        c.keyspaces.get_mut("carts").unwrap().replication = BTreeMap::from([("dc2".into(), 3)]);
        assert_eq!(
            c.validate().unwrap_err().field,
            "keyspaces.carts.consistency"
        );
        let mut c = base();
        c.keyspaces.get_mut("carts").unwrap().resolver = Some("cart-union".into());
        assert_eq!(c.validate().unwrap_err().field, "keyspaces.carts.resolver");
        for ttl in [0, TTL_S_MAX + 1] {
            let mut c = base();
            c.keyspaces.get_mut("carts").unwrap().ttl_s = Some(ttl);
            assert_eq!(c.validate().unwrap_err().field, "keyspaces.carts.ttl_s");
        }
        let mut c = base();
        c.keyspaces.get_mut("carts").unwrap().ttl_s = Some(30);
        c.validate().expect("a ttl of 30 s is valid");
        let mut c = base();
        c.keyspaces.get_mut("carts").unwrap().read_repair_percent = 101;
        assert_eq!(
            c.validate().unwrap_err().field,
            "keyspaces.carts.read_repair_percent"
        );
        let mut c = base();
        c.vnodes = 0;
        assert_eq!(c.validate().unwrap_err().field, "vnodes");
        let mut c = base();
        c.vnodes = VNODES_MAX + 1;
        assert_eq!(c.validate().unwrap_err().field, "vnodes");
        assert_eq!(base().validate_vnodes(63).unwrap_err().field, "vnodes");
        assert_eq!(base().validate_vnodes(64), Ok(()));
        let mut c = base();
        c.insecure_plaintext = false;
        assert_eq!(c.validate().unwrap_err().field, "tls");
        c.tls = Some(TlsSection {
            ca: vec![],
            cert: "n1.pem".into(),
            key: "n1.key".into(),
        });
        assert_eq!(c.validate().unwrap_err().field, "tls.ca");
        c.tls.as_mut().unwrap().ca.push("ca.pem".into());
        assert_eq!(c.validate(), Ok(()));
        c.insecure_plaintext = true;
        assert_eq!(c.validate().unwrap_err().field, "insecure_plaintext");
        let mut c = base();
        c.dc = "d".repeat(DC_NAME_BYTES_MAX + 1);
        assert_eq!(c.validate().unwrap_err().field, "dc");
        let mut c = base();
        c.server.peer_connections_max = 0;
        assert_eq!(
            c.validate().unwrap_err().field,
            "server.peer_connections_max"
        );
        let mut c = base();
        c.server.reply_buffer_bytes_max = 1 << 40;
        assert_eq!(
            c.validate().unwrap_err().field,
            "server.reply_buffer_bytes_max"
        );
        let mut c = base();
        c.server.write_timeout_ms = 0;
        assert_eq!(c.validate().unwrap_err().field, "server.write_timeout_ms");
        let mut c = base();
        c.server.read_timeout_ms = 30 * 24 * 3_600_000;
        assert_eq!(c.validate().unwrap_err().field, "server.read_timeout_ms");
        let mut c = base();
        c.bridge.quarantine_bytes_max = 4096;
        assert_eq!(
            c.validate().unwrap_err().field,
            "bridge.quarantine_bytes_max"
        );
    }

    #[test]
    fn advertise_and_seeds_take_dns_names_and_a_wildcard_listen_needs_advertise() {
        let mut c = base();
        assert_eq!(c.advertised("127.0.0.1:7401"), "127.0.0.1:7401");
        c.seeds = vec![
            "isthmus-0.isthmus.dc1.svc.cluster.local:7401".into(),
            "isthmus-1.isthmus.dc1.svc:7401".into(),
            "[::1]:7401".into(),
            "localhost:7401".into(),
        ];
        assert_eq!(c.validate(), Ok(()));
        c.listen = "0.0.0.0:7401".into();
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "advertise", "{err}");
        assert!(err.reason.contains("wildcard"), "{err}");
        c.listen = "[::]:7401".into();
        assert_eq!(c.validate().unwrap_err().field, "advertise");
        c.advertise = Some("isthmus-0.isthmus.dc1.svc:7401".into());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.advertised("0.0.0.0:7401"),
            "isthmus-0.isthmus.dc1.svc:7401"
        );
        // The socket binds an IP: a name there is refused, naming listen.
        c.listen = "isthmus-0:7401".into();
        assert_eq!(c.validate().unwrap_err().field, "listen");
        c.listen = "0.0.0.0:7401".into();
        for bad in [
            "isthmus-0",
            "isthmus-0:0",
            "isthmus-0:70000",
            ":7401",
            "bad host:7401",
            "-lead.example:7401",
            "0.0.0.0:7401",
            "10.0.0.1:0",
        ] {
            c.advertise = Some(bad.into());
            assert_eq!(c.validate().unwrap_err().field, "advertise", "{bad}");
        }
        c.advertise = Some("10.0.0.1:7401".into());
        c.seeds.push("under_score.example:notaport".into());
        assert_eq!(c.validate().unwrap_err().field, "seeds[4]");
    }

    #[test]
    fn the_server_table_reaches_the_connection_layer() {
        let section = ServerSection {
            peer_connections_max: 7,
            write_timeout_ms: 1500,
            reply_buffer_bytes_max: 65536,
            ..ServerSection::default()
        };
        assert_eq!(
            section.connections_max,
            crate::server::CONNECTIONS_MAX_DEFAULT
        );
        let applied = section.apply(crate::server::ServerConfig::default());
        assert_eq!(applied.peer_connections_max, 7);
        assert_eq!(
            applied.write_timeout,
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(applied.reply_buffer_bytes_max, 65536);
        assert_eq!(applied.read_timeout, crate::server::READ_TIMEOUT_DEFAULT);
        assert_eq!(ServerSection::default().validate(), Ok(()));
    }

    #[test]
    fn the_merge_table_is_validated_and_reaches_the_pool() {
        assert_eq!(MergeSection::default().validate(), Ok(()));
        let section = MergeSection {
            threads: 3,
            queue_max: 10,
            keyspace_budget_ms_per_s: 250,
        };
        let pool = section.to_config();
        assert_eq!(pool.threads, 3);
        assert_eq!(pool.queue_max, 10);
        assert_eq!(pool.keyspace_budget, std::time::Duration::from_millis(250));
        assert_eq!(pool.keyspace_threads_max(), 2);
        for (section, field) in [
            (
                MergeSection {
                    threads: 0,
                    ..MergeSection::default()
                },
                "merge.threads",
            ),
            (
                MergeSection {
                    queue_max: 0,
                    ..MergeSection::default()
                },
                "merge.queue_max",
            ),
            (
                MergeSection {
                    keyspace_budget_ms_per_s: 0,
                    ..MergeSection::default()
                },
                "merge.keyspace_budget_ms_per_s",
            ),
            (
                MergeSection {
                    threads: 1,
                    keyspace_budget_ms_per_s: 1001,
                    ..MergeSection::default()
                },
                "merge.keyspace_budget_ms_per_s",
            ),
        ] {
            let mut c = base();
            c.merge = section;
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn the_redis_table_is_off_by_default_and_names_each_bad_field() {
        let mut c = base();
        assert_eq!(c.redis.address(&c.listen), None, "off by default");
        c.redis.enabled = true;
        assert_eq!(c.validate().unwrap_err().field, "redis.databases");
        let known = c.keyspaces.keys().next().cloned().expect("a keyspace");
        c.redis.databases = vec![known.clone(), "nope".into()];
        assert_eq!(c.validate().unwrap_err().field, "redis.databases[1]");
        c.redis.databases = vec![known];
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            c.redis.address(&c.listen).as_deref(),
            Some("127.0.0.1:6379")
        );
        c.redis.listen = Some("nowhere".into());
        assert_eq!(c.validate().unwrap_err().field, "redis.listen");
        c.redis.listen = None;
        c.redis.timeout_ms = 0;
        assert_eq!(c.validate().unwrap_err().field, "redis.timeout_ms");
        c.redis.timeout_ms = 1;
        c.redis.connections_max = 0;
        assert_eq!(c.validate().unwrap_err().field, "redis.connections_max");
    }

    #[test]
    fn the_ops_table_defaults_to_listens_host_and_refuses_bad_addresses() {
        let mut c = base();
        assert_eq!(c.ops.address(&c.listen).as_deref(), Some("127.0.0.1:9401"));
        assert_eq!(c.ops.address("127.0.0.1:0").as_deref(), Some("127.0.0.1:0"));
        c.ops.listen = Some("10.0.0.5:9500".into());
        assert_eq!(c.ops.address(&c.listen).as_deref(), Some("10.0.0.5:9500"));
        assert_eq!(c.validate(), Ok(()));
        for bad in [
            "nope",
            ":9401",
            "host:port",
            "127.0.0.1:70000",
            "127.0.0.1:7401",
        ] {
            c.ops.listen = Some(bad.into());
            assert_eq!(c.validate().unwrap_err().field, "ops.listen", "{bad}");
        }
        c.ops = OpsSection {
            enabled: false,
            ..OpsSection::default()
        };
        assert_eq!(c.ops.address(&c.listen), None);
        let parsed: OpsSection = toml_like_default();
        assert_eq!(parsed, OpsSection::default());
        let json: OpsSection =
            serde_json::from_str(r#"{"log_format": "json"}"#).expect("a log format");
        assert_eq!(json.log_format, LogFormat::Json);
        let bad = serde_json::from_str::<OpsSection>(r#"{"log_format": "xml"}"#);
        assert!(bad.unwrap_err().to_string().contains("xml"));
    }

    /// `[ops]` absent from a file deserializes to the default.
    fn toml_like_default() -> OpsSection {
        serde_json::from_str("{}").expect("an empty table")
    }
}
