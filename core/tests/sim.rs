//! Deterministic simulation of a cluster (turmoil): the production node
//! (gossip, coordinators, hinted handoff, read repair, Merkle repair,
//! range movement and, in most seeds, the cross-DC bridge) over a
//! simulated TCP network, through the real connection server and framed
//! protocol, under partitions, message delay, WAN latency, DC partitions
//! and node crashes and restarts.
//!
//! Each seed derives everything: the fault schedule, the client workload,
//! whether the bridge runs (and whether its outbox bound is small enough
//! to overflow into a full-sync), whether a node bootstraps and whether
//! one is decommissioned, and turmoil's network randomness. Five nodes,
//! two datacenters (four nodes with three replicas of each key, and one
//! node with one), a sixth node joining dc2 in some seeds, one client host
//! issuing reads and writes at every level through random coordinators,
//! in a plain keyspace and in one whose siblings merge (a native union
//! hook), for some fifteen simulated seconds while links break and heal,
//! messages slow down and nodes crash and restart, their store, hints and
//! outbox (their "disk") kept across the restart. Then every fault heals;
//! membership settles; outboxes drain; every member runs an on-demand
//! Merkle repair; the client reads every key at ALL. The checks, per key:
//!
//! 1. Convergence: every replica of the key, in every DC, holds a
//!    byte-identical `VersionSet`.
//! 2. No acknowledged write is lost: each write the client saw
//!    acknowledged is in that set, merged into one of its values, or was
//!    superseded by a version written over a context that covered it.
//! 3. A read at ALL returns exactly the set's live values.
//! 4. Without crashes, range movement or outbox overflow, hints and the
//!    bridge alone (no Merkle repair) converge the replicas.
//! 5. Throughout the run, a bridge cursor never moves past an unapplied
//!    record: at every persisted cursor, every record it moved past is
//!    held (or covered) by some node of its DC (`sim/bridge.rs`).
//!
//! Runs `ISTHMUS_SIM_SEEDS` seeds (default 200) from `ISTHMUS_SIM_FIRST`
//! (default 0) on `ISTHMUS_SIM_THREADS` threads (default: the cores), or
//! just `ISTHMUS_SIM_SEED`. `ISTHMUS_SIM_LOG=debug` (a tracing filter)
//! logs a single seed's run. A failure names its seed, the command that
//! reruns it, the fault schedule, and for a lost write where, when and at
//! which level it was sent and which nodes still hold it.
//!
//! A seed fixes the fault schedule, the workload and turmoil's network
//! randomness, and reruns mostly replay the same run; not always bit for
//! bit: tokio's own randomness (which ready branch `select!` polls first)
//! is seeded only under `--cfg tokio_unstable`, and the real clock still
//! stamps versions, so an occasional rerun diverges after a while (seen on
//! about one seed in ten). A failure's report is meant to be read on its
//! own; a rerun usually, not surely, fails the same way.

#[path = "sim/bridge.rs"]
mod bridge;
#[path = "sim/net.rs"]
mod net;
#[path = "sim/node.rs"]
mod node;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use isthmus_client::wire::{
    Consistency, Context, PeerRole, RepairReport, RequestBody, ResponseBody, WriteId,
};
use isthmus_client::{Channel, ClientError};
use isthmus_core::fs::MemFs;
use isthmus_core::model::{Actor, Clock, DcName, KeyspaceConfig, Version, VersionSet, key_hash};
use isthmus_core::node::decode_context;
use isthmus_core::ring::{NodeId, Ring};
use isthmus_core::store::LocalStore;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use bridge::CursorWatch;
use node::{Cluster, Disk, MemHints, NodeSpec, Oracle, RecStore, UNION, elements};

const KEYSPACE: &str = "sim";
/// A keyspace bound to the native union merge: its siblings merge on
/// replicas.
const SET_KEYSPACE: &str = "set";
/// The node that joins mid-run (in seeds that bootstrap one).
const JOINER: usize = 5;
/// The node decommissioned under writes (in seeds that do).
const LEAVER: usize = 3;
/// Largest one-way latency between the DCs when the bridge runs.
const WAN_MAX: Duration = Duration::from_millis(60);
const CLIENT: &str = "client";
/// Simulated time per step of the simulation.
const TICK: Duration = Duration::from_millis(10);
/// Link latency outside slow episodes.
const LATENCY_MIN: Duration = Duration::from_millis(1);
const LATENCY_MAX: Duration = Duration::from_millis(10);
const GOSSIP_INTERVAL: Duration = Duration::from_millis(250);
/// When the client starts writing (gossip has converged by then).
const LOAD_START: Duration = Duration::from_secs(3);
const LOAD_LENGTH: Duration = Duration::from_secs(15);
/// From heal to repair: gossip sees everyone alive, hints are handed off.
const SETTLE: Duration = Duration::from_secs(15);
/// A seed that has not finished by then has hung.
const SIM_LIMIT: Duration = Duration::from_secs(300);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------- plan

#[derive(Clone, Debug)]
enum Fault {
    Partition(Vec<String>, Vec<String>),
    Heal(Vec<String>, Vec<String>),
    Crash(usize),
    Restart(usize),
    Slow(Vec<String>, Vec<String>, Duration),
    Fast(Vec<String>, Vec<String>),
}

/// The latency bound of a healthy link: WAN between DCs when bridged.
fn base_latency(nodes: &[NodeSpec], bridged: bool, x: &str, y: &str) -> Duration {
    let dc = |n: &str| nodes.iter().find(|s| s.name == n).map(|s| s.dc.clone());
    let (a, b) = (dc(x), dc(y));
    if bridged && a.is_some() && b.is_some() && a != b {
        WAN_MAX
    } else {
        LATENCY_MAX
    }
}

/// Everything a seed decides.
struct Plan {
    seed: u64,
    faults: Vec<(Duration, Fault)>,
    heal_at: Duration,
    writers: usize,
    keys: usize,
    crashes: usize,
    /// The bridge's outbox bound, when the seed runs the bridge.
    bridge: Option<u64>,
    /// When the joiner starts.
    join_at: Option<Duration>,
    /// When the client asks the leaver to decommission.
    decommission_at: Option<Duration>,
}

fn topology() -> Vec<NodeSpec> {
    let spec = |name: &str, dc: &str, rack: &str| NodeSpec {
        name: name.into(),
        dc: DcName::from(dc),
        rack: rack.into(),
        bootstrap: false,
    };
    vec![
        spec("n1", "dc1", "r1"),
        spec("n2", "dc1", "r2"),
        spec("n3", "dc1", "r1"),
        spec("n4", "dc1", "r2"),
        spec("n5", "dc2", "r1"),
        NodeSpec {
            bootstrap: true,
            ..spec("n6", "dc2", "r2")
        },
    ]
}

fn replication() -> BTreeMap<DcName, u32> {
    BTreeMap::from([(DcName::from("dc1"), 3), (DcName::from("dc2"), 1)])
}

fn plan(seed: u64, nodes: &[NodeSpec]) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1577_4d05);
    // Most seeds bridge the DCs, some with an outbox small enough to
    // overflow (then a full-sync); half bootstrap a node, half
    // decommission one, each under writes.
    let bridge = match rng.random_range(0..8) {
        0 => None,
        1 | 2 => Some(rng.random_range(2..8) * 1024),
        _ => Some(1 << 30),
    };
    let half = LOAD_LENGTH.as_millis() as u64 / 2;
    let join_at = rng
        .random_bool(0.5)
        .then(|| LOAD_START + ms(rng.random_range(0..half)));
    let decommission_at = rng
        .random_bool(0.5)
        .then(|| LOAD_START + ms(rng.random_range(0..half)));
    let names: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != JOINER || join_at.is_some())
        .map(|(_, n)| n.name.clone())
        .collect();
    // The joiner and the leaver are not crashed: a restart would announce
    // them anew (the operator's part, not the node's).
    let crashable: Vec<usize> = (0..nodes.len())
        .filter(|i| *i != JOINER && (*i != LEAVER || decommission_at.is_none()))
        .collect();
    let in_dc = |dc: &str| -> Vec<String> {
        nodes
            .iter()
            .filter(|n| &*n.dc.0 == dc && names.contains(&n.name))
            .map(|n| n.name.clone())
            .collect()
    };
    let load_end = LOAD_START + LOAD_LENGTH;
    let heal_at = load_end + ms(500);
    let mut faults = Vec::new();
    let mut crashes = 0;
    for _ in 0..rng.random_range(2..=6) {
        let start = LOAD_START + ms(rng.random_range(0..LOAD_LENGTH.as_millis() as u64));
        let end = (start + ms(rng.random_range(500..6000))).min(heal_at);
        match rng.random_range(0..10) {
            // A partition: one node alone, a random split, or the client
            // cut off from some coordinators.
            0..=3 => {
                let mut shuffled = names.clone();
                shuffled.shuffle(&mut rng);
                let (a, b) = match rng.random_range(0..4) {
                    0 => (vec![shuffled[0].clone()], shuffled[1..].to_vec()),
                    // The DCs cut from each other.
                    1 => (in_dc("dc1"), in_dc("dc2")),
                    2 => {
                        let cut = rng.random_range(1..shuffled.len());
                        (shuffled[..cut].to_vec(), shuffled[cut..].to_vec())
                    }
                    _ => {
                        let cut = rng.random_range(1..shuffled.len());
                        (vec![CLIENT.to_owned()], shuffled[..cut].to_vec())
                    }
                };
                faults.push((start, Fault::Partition(a.clone(), b.clone())));
                faults.push((end, Fault::Heal(a, b)));
            }
            4..=6 => {
                let node = *crashable.choose(&mut rng).expect("crashable nodes");
                crashes += 1;
                faults.push((start, Fault::Crash(node)));
                faults.push((end, Fault::Restart(node)));
            }
            _ => {
                let mut shuffled = names.clone();
                shuffled.shuffle(&mut rng);
                let cut = rng.random_range(1..shuffled.len());
                let max = ms(rng.random_range(50..1500));
                let (a, b) = (shuffled[..cut].to_vec(), shuffled[cut..].to_vec());
                faults.push((start, Fault::Slow(a.clone(), b.clone(), max)));
                faults.push((end, Fault::Fast(a, b)));
            }
        }
    }
    faults.sort_by_key(|(t, _)| *t);
    Plan {
        seed,
        faults,
        heal_at,
        writers: rng.random_range(2..=4),
        keys: rng.random_range(8..=32),
        crashes,
        bridge,
        join_at,
        decommission_at,
    }
}

// ---------------------------------------------------------------- client

/// One write the client attempted.
struct Attempt {
    keyspace: &'static str,
    key: String,
    /// The element it adds (its whole value outside the merged keyspace).
    element: String,
    /// The context it was written over.
    context: Clock,
    acked: bool,
    /// Where, how and when it was sent (for failure reports).
    node: String,
    level: Consistency,
    at: Duration,
}

/// A key of one keyspace.
type KsKey = (&'static str, String);

/// What the client did and saw.
#[derive(Default)]
struct Log {
    attempts: BTreeMap<[u8; 16], Attempt>,
    /// Writes sent again (same id) to another node.
    retries: usize,
    outcomes: BTreeMap<String, u64>,
    reads: (u64, u64),
    /// Per node: hints it held when the faults had healed and settled.
    hints_before_repair: usize,
    /// Keys whose replicas differed before Merkle repair.
    diverged_before_repair: Vec<String>,
    /// For a failure's report: what each replica of those keys held
    /// then, and the hints still waiting.
    diverged_detail: String,
    repairs: Vec<(String, Result<RepairReport, String>)>,
    /// Live values of each key read at ALL at the end.
    final_reads: BTreeMap<KsKey, Result<Vec<Vec<u8>>, String>>,
    finished: bool,
    /// How the decommission request ended.
    decommission: Option<String>,
    /// The ring's members after heal (status `Normal`), and what kept the
    /// membership from settling.
    members: Vec<String>,
    unsettled: Option<String>,
    /// Outboxes not drained after heal, and overflows seen.
    undrained: Vec<String>,
    overflows: u64,
}

type Session = Channel<RequestBody, ResponseBody>;

/// The client's sessions to nodes, opened on demand.
struct Sessions {
    open: Mutex<BTreeMap<String, Arc<Session>>>,
}

impl Sessions {
    async fn call(
        &self,
        node: &str,
        body: RequestBody,
        timeout: Duration,
    ) -> Result<ResponseBody, ClientError> {
        let existing = self.open.lock().get(node).filter(|s| s.is_open()).cloned();
        let session = match existing {
            Some(s) => s,
            None => {
                let addr = format!("{node}:{}", net::PORT);
                let s = Arc::new(net::dial(&addr, CLIENT, PeerRole::Client, ms(500)).await?);
                self.open.lock().insert(node.to_owned(), s.clone());
                s
            }
        };
        let result = session.call(body, timeout).await;
        if matches!(
            result,
            Err(ClientError::ConnectionClosed | ClientError::Connect { .. })
        ) {
            self.open.lock().remove(node);
        }
        result
    }
}

fn outcome_name(result: &Result<ResponseBody, ClientError>) -> String {
    match result {
        Ok(ResponseBody::Written) => "written".into(),
        Ok(ResponseBody::Value { .. }) => "value".into(),
        Ok(ResponseBody::Started(_)) => "started".into(),
        Ok(other) => format!("unexpected {other:?}"),
        Err(ClientError::Server(e)) => format!("error {}", e.code.name()),
        Err(ClientError::Timeout { .. }) => "client timeout".into(),
        Err(ClientError::Connect { .. }) => "unreachable".into(),
        Err(e) => format!("failed {e}"),
    }
}

fn pick_level(rng: &mut StdRng, choices: &[(Consistency, u32)]) -> Consistency {
    choices
        .choose_weighted(rng, |(_, w)| *w)
        .map(|(c, _)| *c)
        .unwrap_or(Consistency::LocalQuorum)
}

async fn writer(
    index: usize,
    plan: Arc<Plan>,
    names: Arc<Vec<String>>,
    sessions: Arc<Sessions>,
    log: Arc<Mutex<Log>>,
    until: tokio::time::Instant,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_mul(31).wrapping_add(index as u64));
    let mut n: u32 = 0;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(ms(rng.random_range(0..60))).await;
        n += 1;
        let key = format!("k{:02}", rng.random_range(0..plan.keys));
        let keyspace = if rng.random_bool(0.4) {
            SET_KEYSPACE
        } else {
            KEYSPACE
        };
        let now = turmoil::sim_elapsed().unwrap_or_default();
        let node = names
            .iter()
            .filter(|n| **n != format!("n{}", JOINER + 1) || plan.join_at.is_some_and(|t| now >= t))
            .collect::<Vec<_>>()
            .choose(&mut rng)
            .map(|n| (*n).clone())
            .expect("nodes");
        let mut seen = BTreeSet::new();
        // Mostly read-modify-write, sometimes blind.
        let context = if rng.random_bool(0.8) {
            let level = pick_level(
                &mut rng,
                &[
                    (Consistency::One, 2),
                    (Consistency::LocalQuorum, 3),
                    (Consistency::Quorum, 2),
                ],
            );
            let read = sessions
                .call(
                    &node,
                    RequestBody::Get {
                        keyspace: keyspace.into(),
                        key: key.clone().into_bytes(),
                        consistency: Some(level),
                    },
                    ms(1500),
                )
                .await;
            match read {
                Ok(ResponseBody::Value {
                    context, siblings, ..
                }) => {
                    log.lock().reads.0 += 1;
                    for s in &siblings {
                        seen.extend(elements(&s.value));
                    }
                    context
                }
                _ => {
                    log.lock().reads.1 += 1;
                    continue;
                }
            }
        } else {
            Context::default()
        };
        let clock = decode_context(&context).expect("a node's context decodes");
        let level = pick_level(
            &mut rng,
            &[
                (Consistency::One, 1),
                (Consistency::LocalOne, 1),
                (Consistency::LocalQuorum, 4),
                (Consistency::Quorum, 3),
                (Consistency::EachQuorum, 1),
                (Consistency::All, 1),
            ],
        );
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&plan.seed.to_le_bytes());
        id[8..12].copy_from_slice(&(index as u32).to_le_bytes());
        id[12..].copy_from_slice(&n.to_le_bytes());
        let element = format!("w{index}.{n}");
        // In the merged keyspace a write adds its element to what it read.
        let value = if keyspace == SET_KEYSPACE {
            seen.insert(element.clone());
            seen.into_iter().collect::<Vec<_>>().join(",")
        } else {
            element.clone()
        };
        let body = if keyspace == KEYSPACE && !clock.is_empty() && rng.random_bool(0.1) {
            RequestBody::Delete {
                keyspace: keyspace.into(),
                key: key.clone().into_bytes(),
                context,
                consistency: Some(level),
                write_id: WriteId(id),
                sloppy: None,
            }
        } else {
            RequestBody::Put {
                mode: isthmus_client::wire::WriteMode::Context,
                keyspace: keyspace.into(),
                key: key.clone().into_bytes(),
                value: value.into_bytes(),
                context,
                consistency: Some(level),
                write_id: WriteId(id),
                expiry: Default::default(),
                sloppy: None,
            }
        };
        log.lock().attempts.insert(
            id,
            Attempt {
                keyspace,
                key,
                element,
                context: clock,
                acked: false,
                node: node.clone(),
                level,
                at: turmoil::sim_elapsed().unwrap_or_default(),
            },
        );
        let mut result = sessions.call(&node, body.clone(), ms(2000)).await;
        // Like the SDK: a write that timed out or met an unavailable node
        // is retried, same write id, at another node, while the first may
        // still be working on it.
        for _ in 0..2 {
            let retryable = match &result {
                Err(ClientError::Server(e)) => e.code.is_retryable(),
                Err(e) => e.is_retryable(),
                Ok(_) => false,
            };
            if !retryable {
                break;
            }
            log.lock().retries += 1;
            let Some(other) = names
                .iter()
                .filter(|n| **n != node)
                .collect::<Vec<_>>()
                .choose(&mut rng)
                .map(|n| (*n).clone())
            else {
                break;
            };
            result = sessions.call(&other, body.clone(), ms(2000)).await;
        }
        let mut log = log.lock();
        *log.outcomes.entry(outcome_name(&result)).or_default() += 1;
        if matches!(result, Ok(ResponseBody::Written))
            && let Some(a) = log.attempts.get_mut(&id)
        {
            a.acked = true;
        }
    }
}

/// Keys whose replicas hold different sets, per the final ring.
fn diverged(keys: &BTreeSet<KsKey>, ring: &Ring, disks: &[(NodeId, Disk)]) -> Vec<String> {
    keys.iter()
        .filter(|(keyspace, key)| {
            let sets = replica_sets(keyspace, key, ring, disks);
            sets.windows(2).any(|w| w[0].1.encode() != w[1].1.encode())
        })
        .map(|(keyspace, key)| format!("{keyspace}/{key}"))
        .collect()
}

/// Per diverged key, the write ids each replica holds (with where, when
/// and whether each was acknowledged); then every hint still waiting.
fn diverged_detail(log: &Log, ring: &Ring, disks: &[(NodeId, Disk)]) -> String {
    let mut out = String::new();
    for name in &log.diverged_before_repair {
        let Some((keyspace, key)) = log
            .attempts
            .values()
            .map(|a| (a.keyspace, a.key.as_str()))
            .find(|(ks, k)| format!("{ks}/{k}") == *name)
        else {
            continue;
        };
        let _ = writeln!(out, "{name}:");
        for (node, set) in replica_sets(keyspace, key, ring, disks) {
            let ids: Vec<String> = set
                .versions()
                .iter()
                .map(|v| {
                    let written = match v.write_id {
                        None => "merged".to_owned(),
                        Some(id) => match log.attempts.get(&id) {
                            Some(a) => format!(
                                "{} via {} at {:?}, {}",
                                &hex(&id)[..8],
                                a.node,
                                a.at,
                                if a.acked { "acked" } else { "not acked" }
                            ),
                            None => hex(&id)[..8].to_owned(),
                        },
                    };
                    format!("{written}, clock {:?}", v.clock)
                })
                .collect();
            let _ = writeln!(out, "  {node} holds {ids:?}");
        }
    }
    for (holder, disk) in disks {
        for (target, keyspace, key) in disk.hints.waiting() {
            let _ = writeln!(
                out,
                "hint on {holder} for {target}: {keyspace}/{}",
                String::from_utf8_lossy(&key)
            );
        }
    }
    out
}

fn replica_sets(
    keyspace: &str,
    key: &str,
    ring: &Ring,
    disks: &[(NodeId, Disk)],
) -> Vec<(NodeId, VersionSet)> {
    ring.replicas(&replication(), key_hash(key.as_bytes()))
        .into_iter()
        .flat_map(|(_, nodes)| nodes)
        .map(|node| {
            let disk = &disks.iter().find(|(n, _)| *n == node).expect("a disk").1;
            let set = disk
                .store
                .get(keyspace, key.as_bytes())
                .now_or_never()
                .expect("memory stores answer at once")
                .expect("memory stores do not fail");
            (node, set)
        })
        .collect()
}

/// The ring of `members` (names), as gossip builds it.
fn ring_of(nodes: &[NodeSpec], members: &[String], vnodes: u32) -> Ring {
    let members: Vec<(NodeId, _)> = nodes
        .iter()
        .filter(|n| members.contains(&n.name))
        .map(|n| (n.id(), n.placement()))
        .collect();
    Ring::build(members.iter().map(|(id, p)| (id, p, vnodes)))
}

async fn client(
    plan: Arc<Plan>,
    cluster: Arc<Cluster>,
    disks: Arc<Vec<(NodeId, Disk)>>,
    log: Arc<Mutex<Log>>,
) -> turmoil::Result {
    let t0 = tokio::time::Instant::now();
    let names: Arc<Vec<String>> = Arc::new(
        cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != JOINER || plan.join_at.is_some())
            .map(|(_, n)| n.name.clone())
            .collect(),
    );
    let sessions = Arc::new(Sessions {
        open: Mutex::default(),
    });
    let leaver = cluster.nodes[LEAVER].name.clone();
    if let Some(at) = plan.decommission_at {
        let (sessions, log, leaver) = (sessions.clone(), log.clone(), leaver.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(t0 + at).await;
            let started = sessions
                .call(&leaver, RequestBody::Decommission, Duration::from_secs(200))
                .await;
            let s = &sessions;
            let l = &leaver;
            let outcome = match isthmus_testkit::operation::finished(
                move |b| s.call(l, b, Duration::from_secs(5)),
                started,
                Duration::from_secs(200),
            )
            .await
            {
                Ok(done) => done.state.name().to_owned(),
                Err(e) => format!("{e}"),
            };
            log.lock().decommission = Some(outcome);
        });
    }
    tokio::time::sleep_until(t0 + LOAD_START).await;
    let until = t0 + LOAD_START + LOAD_LENGTH;
    let writers = (0..plan.writers).map(|i| {
        writer(
            i,
            plan.clone(),
            names.clone(),
            sessions.clone(),
            log.clone(),
            until,
        )
    });
    futures_util::future::join_all(writers).await;
    tokio::time::sleep_until(t0 + plan.heal_at + SETTLE).await;

    // Membership settles: the joiner `Normal`, the leaver `Left` (or
    // `Normal` again, when a next owner was down).
    let joiner = cluster.nodes[JOINER].name.clone();
    let status = |name: String| {
        let sessions = sessions.clone();
        async move {
            match sessions
                .call(&name, RequestBody::Status, Duration::from_secs(5))
                .await
            {
                Ok(ResponseBody::Status { nodes, bridges }) => Ok((nodes, bridges)),
                other => Err(format!("status of {name}: {}", outcome_name(&other))),
            }
        }
    };
    let mut members = Vec::new();
    let mut unsettled = Some("no status".to_owned());
    for _ in 0..60 {
        match status(names[0].clone()).await {
            Ok((nodes, _)) => {
                let of = |n: &str| {
                    nodes
                        .iter()
                        .find(|r| r.node_id == n)
                        .map_or("absent".to_owned(), |r| r.status.clone())
                };
                members = nodes
                    .iter()
                    .filter(|r| r.status == "Normal")
                    .map(|r| r.node_id.clone())
                    .collect();
                unsettled = if plan.join_at.is_some() && of(&joiner) != "Normal" {
                    Some(format!("{joiner} is {}", of(&joiner)))
                } else if plan.decommission_at.is_some()
                    && !matches!(of(&leaver).as_str(), "Left" | "Normal")
                {
                    Some(format!("{leaver} is {}", of(&leaver)))
                } else {
                    None
                };
            }
            Err(e) => unsettled = Some(e),
        }
        if unsettled.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Every outbox drains (a DC cut loose gets its full-sync).
    let mut undrained = Vec::new();
    let mut overflows = 0;
    if plan.bridge.is_some() {
        for _ in 0..90 {
            undrained.clear();
            overflows = 0;
            for name in names.iter() {
                match status(name.clone()).await {
                    Ok((_, bridges)) => {
                        for b in bridges.iter().filter(|b| !b.remote_dc.is_empty()) {
                            overflows += b.overflows;
                            if b.outbox_records > 0 || b.full_sync_pending {
                                undrained.push(format!(
                                    "{name} to {}: {} records, full-sync pending {}",
                                    b.remote_dc, b.outbox_records, b.full_sync_pending
                                ));
                            }
                        }
                    }
                    Err(e) => undrained.push(e),
                }
            }
            if undrained.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let ring = ring_of(&cluster.nodes, &members, cluster.vnodes);
    let keys: BTreeSet<KsKey> = log
        .lock()
        .attempts
        .values()
        .map(|a| (a.keyspace, a.key.clone()))
        .collect();
    {
        let mut log = log.lock();
        log.members = members.clone();
        log.unsettled = unsettled;
        log.undrained = undrained;
        log.overflows = overflows;
        log.hints_before_repair = disks.iter().map(|(_, d)| d.hints.len()).sum();
        log.diverged_before_repair = diverged(&keys, &ring, &disks);
        log.diverged_detail = diverged_detail(&log, &ring, &disks);
    }
    // Merkle repair on every member, one after another.
    for name in &members {
        let started = sessions
            .call(
                name,
                RequestBody::Repair {
                    keyspace: None,
                    remote_dc: None,
                },
                Duration::from_secs(100),
            )
            .await;
        let s = &sessions;
        let report = match isthmus_testkit::operation::finished(
            move |b| s.call(name, b, Duration::from_secs(5)),
            started,
            Duration::from_secs(100),
        )
        .await
        {
            Ok(done) if done.state == isthmus_client::wire::OperationState::Done => {
                Ok(done.progress)
            }
            Ok(done) => Err(format!("{} {:?}", done.state.name(), done.error)),
            Err(e) => Err(e.to_string()),
        };
        log.lock().repairs.push((name.clone(), report));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (keyspace, key) in &keys {
        let mut answer = Err("no node answered".to_owned());
        for name in &members {
            let read = sessions
                .call(
                    name,
                    RequestBody::Get {
                        keyspace: (*keyspace).into(),
                        key: key.clone().into_bytes(),
                        consistency: Some(Consistency::All),
                    },
                    ms(2000),
                )
                .await;
            match read {
                Ok(ResponseBody::Value { siblings, .. }) => {
                    let mut values: Vec<Vec<u8>> = siblings.into_iter().map(|s| s.value).collect();
                    values.sort();
                    answer = Ok(values);
                    break;
                }
                other => answer = Err(format!("{name}: {}", outcome_name(&other))),
            }
        }
        log.lock()
            .final_reads
            .insert((*keyspace, key.clone()), answer);
    }
    log.lock().finished = true;
    Ok(())
}

// ---------------------------------------------------------------- checks

/// What a seed did, for the summary line.
#[derive(Default, Debug, Clone, PartialEq)]
struct Summary {
    outcomes: BTreeMap<String, u64>,
    attempted: usize,
    acked: usize,
    keys: usize,
    crashes: usize,
    diverged_before_repair: usize,
    hints_before_repair: usize,
    simulated: Duration,
    bridged: bool,
    overflows: u64,
    /// Cursor moves checked, and the records they moved past.
    cursor_moves: (u64, u64),
    joined: bool,
    left: bool,
    /// Keys whose final set holds a merged version.
    merged: usize,
    /// Writes the client retried at another node, and write ids that
    /// thereby got two dots (and collapsed to one version).
    retries: usize,
    doubled: usize,
}

fn check(
    plan: &Plan,
    cluster: &Cluster,
    disks: &[(NodeId, Disk)],
    oracle: &Oracle,
    watch: &CursorWatch,
    log: &Log,
) -> Result<Summary, String> {
    let mut problems = String::new();
    if let Some(why) = &log.unsettled {
        let _ = writeln!(problems, "membership did not settle after heal: {why}");
    }
    for u in &log.undrained {
        let _ = writeln!(problems, "outbox not drained after heal: {u}");
    }
    for v in watch.violations.lock().iter() {
        let _ = writeln!(problems, "bridge cursor: {v}");
    }
    let members = if log.members.is_empty() {
        let _ = writeln!(problems, "no membership after heal");
        cluster.nodes[..JOINER]
            .iter()
            .map(|n| n.name.clone())
            .collect()
    } else {
        log.members.clone()
    };
    let ring = ring_of(&cluster.nodes, &members, cluster.vnodes);
    let keys: BTreeSet<KsKey> = log
        .attempts
        .values()
        .map(|a| (a.keyspace, a.key.clone()))
        .collect();
    let mut finals: BTreeMap<KsKey, VersionSet> = BTreeMap::new();
    for (keyspace, key) in &keys {
        let sets = replica_sets(keyspace, key, &ring, disks);
        let first = sets[0].1.clone();
        for (node, set) in &sets[1..] {
            if set.encode() != first.encode() {
                let _ = writeln!(
                    problems,
                    "replicas of {keyspace}/{key} differ: {} holds {:?}, {node} holds {:?}",
                    sets[0].0,
                    first.versions(),
                    set.versions()
                );
            }
        }
        finals.insert((*keyspace, key.clone()), first);
    }
    // A version accounts for the writes whose ids it carries and whose
    // elements its value holds (merged in).
    let by_element: HashMap<&str, [u8; 16]> = log
        .attempts
        .iter()
        .map(|(id, a)| (a.element.as_str(), *id))
        .collect();
    let accounts_for = |v: &Version| -> Vec<[u8; 16]> {
        let mut ids: Vec<[u8; 16]> = v.write_id.into_iter().collect();
        if let Some(value) = v.value_bytes() {
            ids.extend(
                elements(value)
                    .iter()
                    .filter_map(|e| by_element.get(e.as_str()).copied()),
            );
        }
        ids
    };
    let mut acked = 0;
    for (id, attempt) in &log.attempts {
        if !attempt.acked {
            continue;
        }
        acked += 1;
        let set = &finals[&(attempt.keyspace, attempt.key.clone())];
        let clocks = oracle.clocks(id);
        let Some(clock) = clocks.first().cloned() else {
            let _ = writeln!(
                problems,
                "acknowledged write {} on {}/{} never reached any store",
                hex(id),
                attempt.keyspace,
                attempt.key
            );
            continue;
        };
        let kept = set.versions().iter().any(|v| {
            accounts_for(v).iter().any(|w| {
                w == id
                    || log
                        .attempts
                        .get(w)
                        .is_some_and(|later| clocks.iter().any(|c| c.is_covered_by(&later.context)))
            })
        });
        if !kept {
            let holders: Vec<&NodeId> = disks
                .iter()
                .filter(|(_, d)| {
                    d.store
                        .get(attempt.keyspace, attempt.key.as_bytes())
                        .now_or_never()
                        .and_then(Result::ok)
                        .is_some_and(|s| s.versions().iter().any(|v| v.write_id == Some(*id)))
                })
                .map(|(n, _)| n)
                .collect();
            let _ = writeln!(
                problems,
                "acknowledged write {} ({}) on {}/{} (clock {clock:?}, sent to {} at {:?} at {}) \
                 is lost: the replicas hold {:?}; nodes still holding it: {holders:?}",
                hex(id),
                attempt.element,
                attempt.keyspace,
                attempt.key,
                attempt.node,
                attempt.at,
                attempt.level.name(),
                set.versions()
            );
        }
    }
    for ((keyspace, key), read) in &log.final_reads {
        let mut live: Vec<Vec<u8>> = finals[&(*keyspace, key.clone())]
            .live()
            .map(|v| v.value_bytes().unwrap_or_default().to_vec())
            .collect();
        live.sort();
        match read {
            Ok(values) if *values == live => {}
            Ok(values) => {
                let _ = writeln!(
                    problems,
                    "a read of {keyspace}/{key} at ALL returned {values:?}, the replicas hold {live:?}"
                );
            }
            Err(e) => {
                let _ = writeln!(
                    problems,
                    "a read of {keyspace}/{key} at ALL failed after heal: {e}"
                );
            }
        }
    }
    if !log.finished {
        let _ = writeln!(problems, "the client did not finish");
    }
    for (node, report) in &log.repairs {
        if let Err(e) = report {
            let _ = writeln!(problems, "repair on {node} failed after heal: {e}");
        }
    }
    // Hints and the bridge alone converge the replicas when no node
    // crashed, no range moved and no outbox overflowed.
    let moved = plan.join_at.is_some() || plan.decommission_at.is_some();
    if plan.crashes == 0 && !moved && log.overflows == 0 && !log.diverged_before_repair.is_empty() {
        let _ = writeln!(
            problems,
            "without crashes or movement, hints and the bridge left {} keys diverged before repair: {:?}\n{}",
            log.diverged_before_repair.len(),
            log.diverged_before_repair,
            log.diverged_detail
        );
    }
    // A write coordinated twice (retried elsewhere while its first
    // coordinator still held it) takes effect once: no set holds two
    // versions of one write id, and every replica kept the same one.
    for ((keyspace, key), set) in &finals {
        let mut ids = BTreeSet::new();
        for v in set.versions() {
            if let Some(id) = v.write_id
                && !ids.insert(id)
            {
                let _ = writeln!(
                    problems,
                    "{keyspace}/{key} holds two versions of write {}: {:?}",
                    hex(&id),
                    set.versions()
                );
            }
        }
    }
    if !problems.is_empty() {
        let actors: Vec<String> = disks
            .iter()
            .map(|(n, d)| format!("{n}={}", d.actor.0))
            .collect();
        let _ = writeln!(problems, "actors: {}", actors.join(", "));
        let faults: Vec<String> = plan
            .faults
            .iter()
            .map(|(t, f)| format!("{t:?} {f:?}"))
            .collect();
        let _ = writeln!(problems, "faults: {}", faults.join("; "));
        let _ = writeln!(
            problems,
            "bridge: {:?}; join at {:?}; decommission at {:?} ({:?}); members after heal: {:?}",
            plan.bridge, plan.join_at, plan.decommission_at, log.decommission, log.members
        );
    }
    if problems.is_empty() {
        Ok(Summary {
            outcomes: log.outcomes.clone(),
            attempted: log.attempts.len(),
            acked,
            keys: keys.len(),
            crashes: plan.crashes,
            diverged_before_repair: log.diverged_before_repair.len(),
            hints_before_repair: log.hints_before_repair,
            simulated: Duration::ZERO,
            bridged: plan.bridge.is_some(),
            overflows: log.overflows,
            cursor_moves: *watch.checked.lock(),
            joined: plan.join_at.is_some() && members.contains(&cluster.nodes[JOINER].name),
            left: plan.decommission_at.is_some() && !members.contains(&cluster.nodes[LEAVER].name),
            merged: finals
                .values()
                .filter(|s| s.versions().iter().any(|v| v.resolver.is_some()))
                .count(),
            retries: log.retries,
            doubled: oracle.doubled(),
        })
    } else {
        Err(problems)
    }
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- runner

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

/// Run one seed: its summary, or what went wrong.
fn run_seed(seed: u64) -> Result<Summary, String> {
    count_panics();
    PANICS.with(|p| p.set(0));
    let nodes = topology();
    let plan = Arc::new(plan(seed, &nodes));
    let replicated = KeyspaceConfig {
        replication: replication(),
        // Most reads ask just enough replicas (and more when one fails or
        // is slow), as deployed keyspaces do by default.
        read_repair_percent: isthmus_core::config::READ_REPAIR_PERCENT_DEFAULT,
        ..KeyspaceConfig::default()
    };
    let watch = Arc::new(CursorWatch::default());
    let cluster = Arc::new(Cluster {
        seeds: vec![nodes[0].addr(), nodes[1].addr(), nodes[4].addr()],
        nodes,
        keyspaces: BTreeMap::from([
            (KEYSPACE.to_owned(), replicated.clone()),
            (
                SET_KEYSPACE.to_owned(),
                KeyspaceConfig {
                    resolver: Some((UNION.to_owned(), 1)),
                    ..replicated
                },
            ),
        ]),
        vnodes: 8,
        gossip: Cluster::gossip_config(GOSSIP_INTERVAL),
        bridge: plan.bridge,
        watch: watch.clone(),
    });
    let oracle = Arc::new(Oracle::default());
    let mut actors = StdRng::seed_from_u64(seed ^ 0xac70_0000);
    let disks: Arc<Vec<(NodeId, Disk)>> = Arc::new(
        cluster
            .nodes
            .iter()
            .map(|n| {
                let disk = Disk {
                    store: RecStore::new(oracle.clone()),
                    hints: MemHints::default(),
                    outbox: MemFs::new(),
                    actor: Actor(actors.random()),
                };
                watch.add_store(n.dc.clone(), n.name.clone(), disk.store.clone());
                (n.id(), disk)
            })
            .collect(),
    );
    let log = Arc::new(Mutex::new(Log::default()));

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(TICK)
        .simulation_duration(SIM_LIMIT)
        .min_message_latency(LATENCY_MIN)
        .max_message_latency(LATENCY_MAX)
        .tcp_capacity(1 << 16)
        .build();
    let start_host = |sim: &mut turmoil::Sim<'_>, i: usize| {
        let (shared, disk) = (cluster.clone(), disks[i].1.clone());
        sim.host(cluster.nodes[i].name.as_str(), move || {
            node::run(shared.clone(), i, disk.clone())
        });
    };
    let mut started: Vec<String> = Vec::new();
    for i in 0..cluster.nodes.len() {
        if i != JOINER {
            start_host(&mut sim, i);
            started.push(cluster.nodes[i].name.clone());
        }
    }
    sim.client(
        CLIENT,
        client(plan.clone(), cluster.clone(), disks.clone(), log.clone()),
    );
    started.push(CLIENT.to_owned());
    let bridged = plan.bridge.is_some();
    let base = |x: &str, y: &str| base_latency(&cluster.nodes, bridged, x, y);
    let pairs = |started: &[String], a: &[String], b: &[String], f: &mut dyn FnMut(&str, &str)| {
        for x in a.iter().filter(|x| started.contains(x)) {
            for y in b.iter().filter(|y| started.contains(y)) {
                if x != y {
                    f(x, y);
                }
            }
        }
    };
    // The WAN between the DCs.
    pairs(&started, &started, &started, &mut |x, y| {
        sim.set_link_max_message_latency(x, y, base(x, y))
    });

    let mut faults = plan.faults.iter().peekable();
    let mut down: BTreeSet<usize> = BTreeSet::new();
    let mut healed = false;
    loop {
        if let Some(at) = plan.join_at
            && sim.elapsed() >= at
            && !started.contains(&cluster.nodes[JOINER].name)
        {
            start_host(&mut sim, JOINER);
            let joiner = cluster.nodes[JOINER].name.clone();
            for other in &started {
                sim.set_link_max_message_latency(
                    joiner.as_str(),
                    other.as_str(),
                    base(&joiner, other),
                );
            }
            started.push(joiner);
        }
        while let Some((at, fault)) = faults.peek()
            && *at <= sim.elapsed()
        {
            if !healed {
                match fault {
                    Fault::Partition(a, b) => pairs(&started, a, b, &mut |x, y| sim.hold(x, y)),
                    Fault::Heal(a, b) => pairs(&started, a, b, &mut |x, y| sim.release(x, y)),
                    Fault::Slow(a, b, max) => pairs(&started, a, b, &mut |x, y| {
                        sim.set_link_max_message_latency(x, y, base(x, y).max(*max))
                    }),
                    Fault::Fast(a, b) => pairs(&started, a, b, &mut |x, y| {
                        sim.set_link_max_message_latency(x, y, base(x, y))
                    }),
                    Fault::Crash(i) => {
                        if down.insert(*i) {
                            sim.crash(cluster.nodes[*i].name.as_str());
                        }
                    }
                    Fault::Restart(i) => {
                        if down.remove(i) {
                            sim.bounce(cluster.nodes[*i].name.as_str());
                        }
                    }
                }
            }
            faults.next();
        }
        if !healed && sim.elapsed() >= plan.heal_at {
            healed = true;
            pairs(&started, &started, &started, &mut |x, y| {
                sim.release(x, y);
                sim.set_link_max_message_latency(x, y, base(x, y));
            });
            for i in std::mem::take(&mut down) {
                sim.bounce(cluster.nodes[i].name.as_str());
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("the simulation failed: {e}")),
        }
    }
    let simulated = sim.elapsed();
    drop(sim);
    let panics = PANICS.with(Cell::get);
    let log = log.lock();
    let mut result = check(&plan, &cluster, &disks, &oracle, &watch, &log);
    if panics > 0 {
        let message = format!("{panics} panics during the run (see the output above)\n");
        result = match result {
            Ok(_) => Err(message),
            Err(e) => Err(message + &e),
        };
    }
    result.map(|mut s| {
        s.simulated = simulated;
        s
    })
}

/// Log lines carry the simulated time.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>9.3}s", t.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

#[test]
fn no_acknowledged_write_is_lost_and_replicas_converge() {
    let seeds: Vec<u64> = match env_u64("ISTHMUS_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("ISTHMUS_SIM_FIRST").unwrap_or(0);
            let count = env_u64("ISTHMUS_SIM_SEEDS").unwrap_or(200);
            (first..first + count).collect()
        }
    };
    if let Ok(filter) = std::env::var("ISTHMUS_SIM_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_timer(SimTime)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    }
    let threads = env_u64("ISTHMUS_SIM_THREADS")
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, seeds.len().max(1));
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<(u64, Result<Summary, String>)>> = Mutex::default();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(i) else { break };
                    let result = std::panic::catch_unwind(|| run_seed(seed))
                        .unwrap_or_else(|_| Err("the run panicked".to_owned()));
                    if let Err(e) = &result {
                        eprintln!(
                            "simulation seed {seed} FAILED:\n{e}\nrerun: ISTHMUS_SIM_SEED={seed} cargo test -p isthmus-core --test sim"
                        );
                    }
                    results.lock().push((seed, result));
                }
            });
        }
    });
    let mut results = results.into_inner();
    results.sort_by_key(|(seed, _)| *seed);
    let ok: Vec<&Summary> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let failed: Vec<u64> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(s, _)| *s)
        .collect();
    let total = |f: fn(&Summary) -> usize| ok.iter().map(|s| f(s)).sum::<usize>();
    let count = |f: fn(&Summary) -> bool| ok.iter().filter(|s| f(s)).count();
    eprintln!(
        "{} seeds in {:.1?} on {threads} threads: {} writes attempted, {} acknowledged, {} keys ({} with merged versions), {} crashes; {} seeds with keys diverged before repair ({} keys), {} hints pending before repair; {} bridged ({} overflowed, {} cursor moves checked over {} records), {} bootstrapped a node, {} decommissioned one; {} writes retried elsewhere, {} of them coordinated twice",
        results.len(),
        started.elapsed(),
        total(|s| s.attempted),
        total(|s| s.acked),
        total(|s| s.keys),
        total(|s| s.merged),
        total(|s| s.crashes),
        ok.iter().filter(|s| s.diverged_before_repair > 0).count(),
        total(|s| s.diverged_before_repair),
        total(|s| s.hints_before_repair),
        count(|s| s.bridged),
        count(|s| s.overflows > 0),
        total(|s| s.cursor_moves.0 as usize),
        total(|s| s.cursor_moves.1 as usize),
        count(|s| s.joined),
        count(|s| s.left),
        total(|s| s.retries),
        total(|s| s.doubled),
    );
    if seeds.len() == 1
        && let Some(s) = ok.first()
    {
        eprintln!("seed {}: {s:?}", seeds[0]);
    }
    assert!(
        failed.is_empty(),
        "simulation failed for seeds {failed:?}; rerun one with ISTHMUS_SIM_SEED=<seed> cargo test -p isthmus-core --test sim"
    );
}
