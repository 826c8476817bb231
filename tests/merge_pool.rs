//! A resolver that burns its whole fuel budget on every merge, bound to a
//! keyspace of a node whose async runtime has two worker threads, under
//! concurrent writes and reads of siblings: the node's merges run on its
//! merge pool within the keyspace's budget, so gossip keeps its rhythm.
//!
//! `gossip_keeps_its_rhythm_beside_a_hostile_resolver` checks it (a short
//! run, with a bound); the ignored `gossip_gap_figure` prints the figure
//! beside a baseline with a cheap resolver:
//! `bash scripts/gossip-gap.sh` (prints `gossip_gap_ms worst=N baseline=M`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use isthmus_client::wire::{
    Context, RegistryRequest, RegistryResponse, RequestBody, ResponseBody, WriteId,
};
use isthmus_core::merge::FailureClass;
use isthmus_core::ring::NodeId;
use isthmus_resolvers::host::module_hash;
use isthmus_testkit::{ClusterSpec, LocalCluster, Root, example_module};

const WAIT: Duration = Duration::from_secs(30);

/// A resolver whose merge loops until its fuel runs out.
fn fuel_burner() -> Vec<u8> {
    wat::parse_str(
        r#"(module
             (memory (export "memory") 1)
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "isthmus_merge") (param i32 i32) (result i64)
               (loop $l (br $l))
               i64.const 0))"#,
    )
    .expect("WAT parses")
}

/// What one run saw.
struct Run {
    /// Worst gap between two of the node's own gossip heartbeats.
    worst_gap: Duration,
    /// The gossip interval.
    interval: Duration,
    /// Merges the resolver ran out of fuel in.
    fuel_exhausted: u64,
    /// Merges the pool deferred (budget).
    deferred: u64,
    /// Writes and reads answered (successfully or not).
    requests: u64,
}

/// One node, `module` uploaded (forced past the law check) and bound to
/// the keyspace; `writers` tasks write blind siblings to a few keys and
/// read them back for `duration`, while a thread apart from the runtime
/// watches the node's own gossip heartbeat.
async fn run(module: Vec<u8>, writers: usize, duration: Duration) -> Run {
    let spec = ClusterSpec::new(&["dc1"], 1);
    let interval = spec.gossip.interval;
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    let id = cluster.node_id("dc1", 0);
    let node = cluster.node(&id);
    let session = cluster.session(&node.addr, "test").await.unwrap();
    let registry = |request| RequestBody::Registry(request);
    match session
        .call(
            registry(RegistryRequest::Upload {
                name: "r".into(),
                version: 1,
                module: module.clone(),
                force: true,
            }),
            Duration::from_secs(300),
        )
        .await
        .unwrap()
    {
        ResponseBody::Registry(RegistryResponse::Uploaded(_)) => {}
        other => panic!("upload answered {other:?}"),
    }
    let attach = RegistryRequest::Attach {
        keyspace: "carts".into(),
        name: "r".into(),
        version: 1,
    };
    match session.call(registry(attach), WAIT).await.unwrap() {
        ResponseBody::Registry(RegistryResponse::Bound(_)) => {}
        other => panic!("attach answered {other:?}"),
    }

    // The watcher: an OS thread of its own, polling the heartbeat.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (gossiper, stop) = (node.gossiper().clone(), stop.clone());
        let me = NodeId(id.clone());
        std::thread::spawn(move || {
            let heartbeat = || gossiper.membership().get(&me).map(|e| e.version);
            let (mut last, mut at, mut worst) = (heartbeat(), Instant::now(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                let now = heartbeat();
                if now != last {
                    worst = worst.max(at.elapsed());
                    (last, at) = (now, Instant::now());
                }
            }
            worst.max(at.elapsed())
        })
    };

    let requests = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let session = cluster.session(&node.addr, "writer").await.unwrap();
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < until {
                let key = format!("cart:{}", (w as u64 + i) % 4).into_bytes();
                let put = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: "carts".into(),
                    key: key.clone(),
                    value: format!("{w}-{i}").into_bytes(),
                    context: Context::default(),
                    consistency: None,
                    write_id: WriteId(rand::random()),
                    expiry: Default::default(),
                    sloppy: None,
                };
                let _ = session.call(put, WAIT).await;
                let get = RequestBody::Get {
                    keyspace: "carts".into(),
                    key,
                    consistency: None,
                };
                let _ = session.call(get, WAIT).await;
                requests.fetch_add(2, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let worst_gap = watcher.join().unwrap();
    let stats = cluster.hosts()[0].stats(&module_hash(&module));
    let pool = node.coordinator().replica().merge_pool().stats();
    let run = Run {
        worst_gap,
        interval,
        fuel_exhausted: stats.failures(FailureClass::FuelExhausted),
        deferred: pool.deferred(),
        requests: requests.load(Ordering::Relaxed),
    };
    cluster.shutdown().await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_keeps_its_rhythm_beside_a_hostile_resolver() {
    let run = run(fuel_burner(), 8, Duration::from_secs(4)).await;
    assert!(
        run.fuel_exhausted >= 1,
        "the resolver ran and burned its fuel"
    );
    assert!(run.deferred >= 1, "the keyspace's budget deferred merges");
    assert!(run.requests > 0);
    // A round every 200 ms; a merge inline on a worker thread would
    // hold a round back for as long as it burned (seconds).
    assert!(
        run.worst_gap < run.interval + Duration::from_millis(500),
        "worst gap between gossip heartbeats {:?} (interval {:?})",
        run.worst_gap,
        run.interval
    );
}

/// The figure: `bash scripts/gossip-gap.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by scripts/gossip-gap.sh"]
async fn gossip_gap_figure() {
    let secs = std::env::var("ISTHMUS_GAP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let duration = Duration::from_secs(secs);
    let hostile = run(fuel_burner(), 8, duration).await;
    let baseline = run(example_module("isthmus-example-lww"), 8, duration).await;
    println!(
        "hostile: fuel_exhausted={} deferred={} requests={}; baseline: requests={}",
        hostile.fuel_exhausted, hostile.deferred, hostile.requests, baseline.requests
    );
    println!(
        "gossip_gap_ms worst={} baseline={}",
        hostile.worst_gap.as_millis(),
        baseline.worst_gap.as_millis()
    );
}
