//! `isthmus demo`: two datacenters of three nodes each on loopback, real
//! data directories, joined by the cross-DC bridge over a simulated WAN
//! (a userspace proxy adding one-way latency), the cart-union merge
//! function, shoppers writing concurrently in both datacenters, a
//! whole-datacenter outage and its recovery, and a final audit of every
//! acknowledged write.
//!
//! Writes are acknowledged at LOCAL_QUORUM in the shopper's datacenter; the
//! bridge ships them to the other. While dc2 is dark, dc1's outboxes hold
//! what it misses; when it returns they drain (the catch-up). The audit:
//! every acknowledged item in every cart, in every replica of both
//! datacenters, byte-identical.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use isthmus_client::wire::{Consistency, Context, RequestBody, ResponseBody, WriteId};
use isthmus_client::{ConnectOptions, Session};
use isthmus_core::node::RunningNode;
use isthmus_core::store::LocalStore;
use isthmus_example_cart_union as cart_union;
use parking_lot::Mutex;

use isthmus_testkit::{ClusterSpec, LocalCluster, Root};

/// Arguments of `isthmus demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The cart-union merge module (built by scripts/build-resolvers.sh).
    #[arg(long)]
    pub resolver: Option<PathBuf>,
    /// Where the nodes keep their data (a fresh temporary directory when
    /// absent; removed at the end unless given).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Carts the shoppers share (fewer carts, more conflicts).
    #[arg(long, default_value_t = 64)]
    pub carts: usize,
    /// Concurrent shoppers per datacenter.
    #[arg(long, default_value_t = 6)]
    pub shoppers: usize,
    /// Seconds of shopping before the outage, during it, and after.
    #[arg(long, default_value_t = 8)]
    pub phase_s: u64,
    /// One-way latency between the datacenters, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub wan_latency_ms: u64,
}

const DCS: [&str; 2] = ["dc1", "dc2"];
const NODES_PER_DC: usize = 3;
const KEYSPACE: &str = "carts";

fn default_resolver_path() -> PathBuf {
    isthmus_testkit::built_module(Path::new("."), "isthmus-example-cart-union")
}

/// What the shoppers did.
#[derive(Default)]
struct Ledger {
    /// Every acknowledged (cart, item).
    acked: Mutex<BTreeSet<(usize, String)>>,
    writes_acked: AtomicU64,
    writes_failed: AtomicU64,
}

fn cart_key(cart: usize) -> Vec<u8> {
    format!("cart:{cart:04}").into_bytes()
}

/// One shopper: read a cart, add an item, write it back over the context.
async fn shopper(
    dc: &'static str,
    id: usize,
    addrs: Vec<String>,
    options: ConnectOptions,
    carts: usize,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut session: Option<Session> = None;
    let mut n = 0u64;
    let mut rng = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while !stop.load(Ordering::Relaxed) {
        if session.as_ref().is_none_or(|s| !s.is_open()) {
            let addr = &addrs[(id + n as usize) % addrs.len()];
            session = Session::connect_with(addr, &options, Duration::from_secs(1))
                .await
                .ok();
            if session.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                n += 1;
                continue;
            }
        }
        let Some(s) = session.as_ref() else { continue };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let cart = (rng % carts as u64) as usize;
        let item = format!("{dc}-s{id}-i{n}");
        n += 1;
        let timeout = Duration::from_secs(2);
        let read = RequestBody::Get {
            keyspace: KEYSPACE.into(),
            key: cart_key(cart),
            consistency: None,
        };
        let (mut items, context) = match s.call(read, timeout).await {
            Ok(ResponseBody::Value {
                siblings, context, ..
            }) => {
                let mut merged: BTreeMap<String, u64> = BTreeMap::new();
                for sib in siblings {
                    if let Ok(c) = cart_union::parse(&sib.value) {
                        for (k, q) in c {
                            let e = merged.entry(k).or_insert(0);
                            *e = (*e).max(q);
                        }
                    }
                }
                (merged, context)
            }
            _ => {
                ledger.writes_failed.fetch_add(1, Ordering::Relaxed);
                session = None;
                continue;
            }
        };
        items.insert(item.clone(), 1);
        let body = RequestBody::Put {
            mode: isthmus_client::wire::WriteMode::Context,
            keyspace: KEYSPACE.into(),
            key: cart_key(cart),
            value: cart_union::encode(&items),
            context: Context(context.0),
            consistency: Some(Consistency::LocalQuorum),
            write_id: WriteId(rand::random()),
            expiry: Default::default(),
            sloppy: None,
        };
        match s.call(body, timeout).await {
            Ok(ResponseBody::Written) => {
                ledger.acked.lock().insert((cart, item));
                ledger.writes_acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                ledger.writes_failed.fetch_add(1, Ordering::Relaxed);
                session = None;
            }
        }
    }
}

async fn shop(
    cluster: &LocalCluster,
    dcs: &[&'static str],
    shoppers: usize,
    carts: usize,
    ledger: &Arc<Ledger>,
    seconds: u64,
    label: &str,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (d, dc) in dcs.iter().enumerate() {
        let addrs = cluster.addrs(dc);
        for s in 0..shoppers {
            let id = d * 1000 + s;
            tasks.push(tokio::spawn(shopper(
                dc,
                id,
                addrs.clone(),
                cluster.connect_options("shopper"),
                carts,
                ledger.clone(),
                stop.clone(),
            )));
        }
    }
    let start = Instant::now();
    let before = ledger.writes_acked.load(Ordering::Relaxed);
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let acked = ledger.writes_acked.load(Ordering::Relaxed) - before;
        eprintln!(
            "demo:   {label}: {:>2}s  writes acked {acked:>6} ({:.0}/s)  failed {}  merges {}  outbox→dc1 {}  outbox→dc2 {}",
            start.elapsed().as_secs(),
            acked as f64 / start.elapsed().as_secs_f64(),
            ledger.writes_failed.load(Ordering::Relaxed),
            cluster.merges(),
            cluster.backlog("dc1"),
            cluster.backlog("dc2"),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (ledger.writes_acked.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64()
}

/// Cross-DC lag: write a marker through DC1 and time until a DC2 replica's
/// own store holds it.
async fn measure_lag(cluster: &LocalCluster, samples: usize) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new(3)?;
    let dc1 = cluster.addrs("dc1");
    let session = cluster.session(&dc1[0], "lag-probe").await?;
    let far: Vec<&RunningNode> = cluster
        .nodes
        .iter()
        .filter(|(id, _)| id.starts_with("dc2"))
        .map(|(_, n)| n)
        .collect();
    for i in 0..samples {
        let key = format!("lag:{i}").into_bytes();
        let body = RequestBody::Put {
            mode: isthmus_client::wire::WriteMode::Context,
            keyspace: KEYSPACE.into(),
            key: key.clone(),
            value: br#"{"probe":1}"#.to_vec(),
            context: Context::default(),
            consistency: Some(Consistency::LocalQuorum),
            write_id: WriteId(rand::random()),
            expiry: Default::default(),
            sloppy: None,
        };
        session.call(body, Duration::from_secs(2)).await?;
        let acked = Instant::now();
        'wait: for _ in 0..5000 {
            for node in &far {
                if !node.store().get(KEYSPACE, &key).await?.is_empty() {
                    break 'wait;
                }
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        hist.record(acked.elapsed().as_micros() as u64)?;
    }
    Ok(hist)
}

/// Every acked item present in every replica, and all replicas of a cart
/// byte-identical.
async fn audit(
    cluster: &LocalCluster,
    ledger: &Ledger,
    carts: usize,
) -> anyhow::Result<(u64, bool)> {
    let acked = ledger.acked.lock().clone();
    let mut lost = 0u64;
    let mut converged = true;
    for cart in 0..carts {
        let key = cart_key(cart);
        let mut encodings = BTreeSet::new();
        for node in cluster.nodes.values() {
            let set = node.store().get(KEYSPACE, &key).await?;
            encodings.insert(set.encode());
            let mut items: BTreeSet<String> = BTreeSet::new();
            for v in set.live() {
                if let Ok(c) = cart_union::parse(v.value_bytes().unwrap_or_default()) {
                    items.extend(c.into_keys());
                }
            }
            lost += acked
                .range((cart, String::new())..(cart + 1, String::new()))
                .filter(|(_, i)| !items.contains(i))
                .count() as u64;
        }
        converged &= encodings.len() == 1;
    }
    Ok((lost, converged))
}

/// Run the demo; `Ok(false)` when something was lost or did not converge.
pub fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let resolver = args.resolver.clone().unwrap_or_else(default_resolver_path);
    let module = std::fs::read(&resolver).with_context(|| {
        format!(
            "reading the cart-union module {} (build it with scripts/build-resolvers.sh)",
            resolver.display()
        )
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let root = Root::at_or_temporary(args.data_dir.clone())?;
    runtime.block_on(demo(args, module, root))
}

async fn demo(args: DemoArgs, module: Vec<u8>, root: Root) -> anyhow::Result<bool> {
    let started = Instant::now();
    eprintln!(
        "demo: starting 2 datacenters x {NODES_PER_DC} nodes under {}; WAN {} ms one way",
        root.path().display(),
        args.wan_latency_ms
    );
    let spec = ClusterSpec {
        keyspace: KEYSPACE.into(),
        resolver: Some(("cart-union".into(), module)),
        wan_one_way: Some(Duration::from_millis(args.wan_latency_ms)),
        vnodes: 32,
        tls: true,
        ..ClusterSpec::new(&DCS, NODES_PER_DC)
    };
    let mut cluster = LocalCluster::start(spec, root).await?;
    eprintln!(
        "demo: cluster up; cart-union uploaded through dc1-n0, bound to keyspace {KEYSPACE:?}, replicated to every node"
    );

    let ledger = Arc::new(Ledger::default());
    eprintln!(
        "demo: phase 1: shoppers in both datacenters fill {} shared carts",
        args.carts
    );
    shop(
        &cluster,
        &["dc1", "dc2"],
        args.shoppers,
        args.carts,
        &ledger,
        args.phase_s,
        "both DCs",
    )
    .await;
    let lag = measure_lag(&cluster, 100).await?;
    eprintln!(
        "demo:   cross-DC lag: p50 {:.2} ms, p99 {:.2} ms",
        lag.value_at_quantile(0.5) as f64 / 1000.0,
        lag.value_at_quantile(0.99) as f64 / 1000.0
    );

    eprintln!("demo: phase 2: dc2 goes dark (all three nodes stopped); dc1 keeps selling");
    cluster.stop_dc("dc2").await;
    cluster.wait_alive(3, "dc2 seen down").await?;
    let outage_rate = shop(
        &cluster,
        &["dc1"],
        args.shoppers * 2,
        args.carts,
        &ledger,
        args.phase_s,
        "dc1 alone",
    )
    .await;

    let owed = cluster.backlog("dc2");
    eprintln!("demo: phase 3: dc2 returns with its data; dc1's outboxes owe it {owed} writes");
    let back = Instant::now();
    cluster.start_dc("dc2").await?;
    cluster.wait_alive(6, "dc2 back up").await?;
    // Catch-up: until every dc2 replica holds every acknowledged item.
    let mut catch_up = None;
    for _ in 0..600 {
        let (lost, converged) = audit(&cluster, &ledger, args.carts).await?;
        if lost == 0 && converged {
            catch_up = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "demo:   dc2 caught up in {}",
        catch_up.map_or("(did not catch up)".to_string(), |d| format!(
            "{:.1} s ({:.0} writes/s, {:.1}x the outage write rate of {outage_rate:.0}/s)",
            d.as_secs_f64(),
            owed as f64 / d.as_secs_f64(),
            owed as f64 / d.as_secs_f64() / outage_rate.max(1.0),
        ))
    );
    shop(
        &cluster,
        &["dc1", "dc2"],
        args.shoppers,
        args.carts,
        &ledger,
        args.phase_s / 2,
        "both DCs",
    )
    .await;

    eprintln!("demo: phase 4: quiet; auditing every replica of every cart");
    let mut result = (u64::MAX, false);
    for _ in 0..100 {
        result = audit(&cluster, &ledger, args.carts).await?;
        if result.0 == 0 && result.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (lost, converged) = result;
    let writes_acked = ledger.writes_acked.load(Ordering::Relaxed);
    let merged = cluster.merges();
    let (records, raw, wire) = cluster.shipped();
    eprintln!(
        "demo: bridge shipped {records} writes, {} bytes on the wire for {} raw ({:.2}); {} bytes crossed the WAN",
        wire,
        raw,
        wire as f64 / raw.max(1) as f64,
        cluster.wan().cross_dc_bytes()
    );
    cluster.shutdown().await;
    eprintln!("demo: finished in {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "demo: writes_acked={writes_acked} conflicts_merged={merged} lost={lost} converged={converged} lag_p99_ms={:.2} catch_up_s={:.1}",
        lag.value_at_quantile(0.99) as f64 / 1000.0,
        catch_up.map_or(f64::NAN, |d| d.as_secs_f64()),
    );
    Ok(lost == 0 && converged && catch_up.is_some())
}
