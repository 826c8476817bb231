//! Node configurations for tests, with defaults meant for loopback:
//! complete values to adjust with struct update syntax.
//!
//! ```
//! use isthmus_testkit::config::{keyspace, node};
//!
//! let mut config = node("n1", "dc1", "/tmp/isthmus-test/n1".into());
//! config.seeds = vec!["127.0.0.1:7401".into()];
//! config.keyspaces.insert("carts".into(), keyspace(&[("dc1", 3)]));
//! assert!(config.validate().is_ok());
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use isthmus_client::wire::Consistency;
use isthmus_core::config::{
    AuthSection, BridgeSection, FsyncMode, KeyspaceSection, NodeConfig, OpsSection,
};
use isthmus_core::gossip::detector::DetectorConfig;
use isthmus_core::gossip::service::GossipConfig;

/// A node `id` of `dc` with its data in `data_dir`: rack `r0`, any free
/// port on 127.0.0.1, no seeds (its own cluster), 16 vnodes, an fsync per
/// write, the default bridge settings, no WAN proxy, no keyspace, an
/// operations listener on any free port of 127.0.0.1, and plaintext links (`insecure_plaintext`; a secure `LocalCluster` sets
/// `tls`).
pub fn node(id: &str, dc: &str, data_dir: PathBuf) -> NodeConfig {
    NodeConfig {
        clock_skew_max_ms: isthmus_core::limit::CLOCK_SKEW_MAX_MS_DEFAULT,
        tombstone_grace_ms: isthmus_core::config::TOMBSTONE_GRACE_MS_DEFAULT,
        hint_window_ms: isthmus_core::config::HINT_WINDOW_MS_DEFAULT,
        node_id: id.to_owned(),
        dc: dc.to_owned(),
        rack: "r0".into(),
        listen: "127.0.0.1:0".into(),
        data_dir,
        seeds: Vec::new(),
        vnodes: 16,
        fsync: FsyncMode::Always,
        fsync_interval_ms: 5,
        bridge: BridgeSection::default(),
        wan_proxy: None,
        advertise: None,
        bootstrap: Some(false),
        tuning: Default::default(),
        tls: None,
        insecure_plaintext: true,
        auth: AuthSection {
            anonymous_full_access: true,
            ..AuthSection::default()
        },
        keyspaces: BTreeMap::new(),
        server: Default::default(),
        merge: Default::default(),
        redis: Default::default(),
        ops: OpsSection {
            enabled: true,
            listen: Some("127.0.0.1:0".into()),
            ..OpsSection::default()
        },
    }
}

/// A keyspace with `replication` (replicas per DC), at LOCAL_QUORUM,
/// without a configured resolver or TTL.
pub fn keyspace(replication: &[(&str, u32)]) -> KeyspaceSection {
    KeyspaceSection {
        replication: replication
            .iter()
            .map(|(dc, rf)| (dc.to_string(), *rf))
            .collect(),
        consistency: Consistency::LocalQuorum,
        resolver: None,
        ttl_s: None,
        counter: false,
        sloppy_quorum: false,
        read_repair_percent: isthmus_core::config::READ_REPAIR_PERCENT_DEFAULT,
    }
}

/// Gossip rounds every `interval`, for clusters on one machine: a failure
/// detector that starts from `interval` and tolerates four times it
/// between heartbeats, exchanges given 500 ms.
pub fn gossip(interval: Duration) -> GossipConfig {
    GossipConfig {
        interval,
        exchange_timeout: Duration::from_millis(500),
        detector: DetectorConfig {
            initial_interval: interval,
            interval_max: interval * 4,
            ..DetectorConfig::default()
        },
        ..GossipConfig::default()
    }
}
