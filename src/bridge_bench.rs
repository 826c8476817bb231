//! `isthmus bench-bridge`: the cross-DC bridge measured on a local
//! two-DC cluster (3 nodes each, in this process) over a simulated WAN.
//!
//! It prints, one `bench-bridge:` line each:
//! - replication lag (local acknowledgement in dc1 to apply at
//!   LOCAL_QUORUM in dc2, as the receiving nodes measure it) p50 / p99 at
//!   each write rate asked for, with the rate actually achieved;
//! - bytes shipped per write, raw and on the wire, for a compressible
//!   corpus (JSON shopping carts) and an incompressible one (random bytes
//!   of the same length);
//! - the catch-up after an outage: dc2 down while dc1 keeps writing, then
//!   back while dc1 still writes: the backlog drained per second, as a
//!   multiple of the write rate.
//!
//! Writers are open-loop (paced to the rate, each write a blind put of a
//! new key at LOCAL_QUORUM), so a slow bridge shows as lag, not as a lower
//! offered load.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use isthmus_client::wire::{Consistency, Context, RequestBody, ResponseBody, WriteId};
use isthmus_client::{ConnectOptions, Session};
use isthmus_core::model::DcName;
use rand::{Rng, SeedableRng};

use isthmus_testkit::{ClusterSpec, LocalCluster, Root};

/// Arguments of `isthmus bench-bridge`.
#[derive(clap::Args, Debug)]
pub struct BridgeBenchArgs {
    /// Write rates (writes/s into dc1) at which to measure lag.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub rates: Vec<u64>,
    /// Seconds of writing per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds dc2 stays down in the catch-up measurement.
    #[arg(long, default_value_t = 60)]
    pub outage_s: u64,
    /// Write rate during (and after) the outage.
    #[arg(long, default_value_t = 1000)]
    pub outage_rate: u64,
    /// One-way latency between the DCs, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub wan_latency_ms: u64,
    /// Where the nodes keep their data (a fresh temporary directory when
    /// absent).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

const KEYSPACE: &str = "bench";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Corpus {
    JsonCarts,
    Random,
}

const PRODUCTS: [&str; 12] = [
    "Blue cotton t-shirt",
    "Running shoes",
    "Espresso beans 1kg",
    "Wireless earbuds",
    "Paperback: The Left Hand of Darkness",
    "Cast iron skillet",
    "Merino wool socks",
    "USB-C charging cable",
    "Ceramic mug",
    "Yoga mat",
    "LED desk lamp",
    "Rain jacket",
];

/// A JSON shopping cart of 2 to 6 items.
fn json_cart(rng: &mut impl Rng, id: u64) -> Vec<u8> {
    let items: Vec<String> = (0..rng.random_range(2..=6))
        .map(|_| {
            let p = rng.random_range(0..PRODUCTS.len());
            format!(
                r#"{{"sku":"SKU-{:06}","name":"{}","qty":{},"price_cents":{}}}"#,
                p * 7919 % 1_000_000,
                PRODUCTS[p],
                rng.random_range(1..4),
                rng.random_range(199..19_999)
            )
        })
        .collect();
    format!(
        r#"{{"cart":"c-{id:08}","currency":"EUR","items":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

fn value(corpus: Corpus, rng: &mut impl Rng, id: u64) -> Vec<u8> {
    let cart = json_cart(rng, id);
    match corpus {
        Corpus::JsonCarts => cart,
        Corpus::Random => (0..cart.len()).map(|_| rng.random()).collect(),
    }
}

/// Open-loop writers into `addrs` at `rate` for `duration` (or until
/// `stop`); returns writes acknowledged.
async fn write_load(
    addrs: Vec<String>,
    options: ConnectOptions,
    rate: u64,
    duration: Duration,
    corpus: Corpus,
    label: &'static str,
    stop: Arc<AtomicBool>,
) -> u64 {
    let tasks = (rate / 150).clamp(8, 96);
    let acked = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (addrs, acked, stop) = (addrs.clone(), acked.clone(), stop.clone());
        let options = options.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            let period = Duration::from_secs_f64(tasks as f64 / rate as f64);
            let mut next = start + period.mul_f64(t as f64 / tasks as f64);
            let mut session: Option<Session> = None;
            let mut n = 0u64;
            while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                next += period;
                if session.as_ref().is_none_or(|s| !s.is_open()) {
                    let addr = &addrs[(t + n) as usize % addrs.len()];
                    session = Session::connect_with(addr, &options, Duration::from_secs(1))
                        .await
                        .ok();
                }
                let Some(s) = &session else { continue };
                n += 1;
                let put = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: KEYSPACE.into(),
                    key: format!("{label}-{t}-{n}").into_bytes(),
                    value: value(corpus, &mut rng, t << 32 | n),
                    context: Context::default(),
                    consistency: Some(Consistency::LocalQuorum),
                    write_id: WriteId(rng.random()),
                    expiry: Default::default(),
                    sloppy: None,
                };
                match s.call(put, Duration::from_secs(2)).await {
                    Ok(ResponseBody::Written) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => session = None,
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    acked.load(Ordering::Relaxed)
}

async fn drained(cluster: &LocalCluster, dc: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if cluster.backlog(dc) == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn lag_since_last(cluster: &LocalCluster, from: &str) -> Histogram<u64> {
    let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("valid bounds");
    for bridge in cluster.bridges() {
        if let Some(h) = bridge.take_lag(&DcName(from.into())) {
            let _ = all.add(h);
        }
    }
    all
}

/// Writes into dc1 at `rate` for `duration`; returns (achieved rate,
/// records, raw bytes, wire bytes shipped meanwhile).
async fn phase(
    cluster: &LocalCluster,
    rate: u64,
    duration: Duration,
    corpus: Corpus,
    label: &'static str,
) -> (f64, u64, u64, u64) {
    let (r0, raw0, wire0) = cluster.shipped();
    let started = Instant::now();
    let acked = write_load(
        cluster.addrs("dc1"),
        cluster.connect_options("bench-bridge"),
        rate,
        duration,
        corpus,
        label,
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    let achieved = acked as f64 / started.elapsed().as_secs_f64();
    if !drained(cluster, "dc2", Duration::from_secs(120)).await {
        eprintln!("bench-bridge: warning: dc2 backlog did not drain");
    }
    let (r1, raw1, wire1) = cluster.shipped();
    (achieved, r1 - r0, raw1 - raw0, wire1 - wire0)
}

/// Run the benchmark.
pub fn run(args: BridgeBenchArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench(args))
}

async fn bench(args: BridgeBenchArgs) -> anyhow::Result<()> {
    let spec = ClusterSpec {
        keyspace: KEYSPACE.into(),
        wan_one_way: Some(Duration::from_millis(args.wan_latency_ms)),
        vnodes: 32,
        tls: true,
        ..ClusterSpec::new(&["dc1", "dc2"], 3)
    };
    eprintln!(
        "bench-bridge: 2 DCs x 3 nodes, {} ms one way between them, writes at LOCAL_QUORUM into dc1",
        args.wan_latency_ms
    );
    let mut cluster =
        LocalCluster::start(spec, Root::at_or_temporary(args.data_dir.clone())?).await?;
    let duration = Duration::from_secs(args.duration);

    // Warm up connections and caches.
    phase(
        &cluster,
        500,
        Duration::from_secs(2),
        Corpus::JsonCarts,
        "warm",
    )
    .await;
    lag_since_last(&cluster, "dc1");

    let mut bytes_json = None;
    for &rate in &args.rates {
        let (achieved, records, raw, wire) =
            phase(&cluster, rate, duration, Corpus::JsonCarts, "lag").await;
        let lag = lag_since_last(&cluster, "dc1");
        println!(
            "bench-bridge: lag rate={rate} achieved={achieved:.0} p50_ms={} p99_ms={} max_ms={} samples={}",
            lag.value_at_quantile(0.5),
            lag.value_at_quantile(0.99),
            lag.max(),
            lag.len()
        );
        bytes_json.get_or_insert((records, raw, wire));
    }
    let (_, records, raw, wire) = phase(
        &cluster,
        args.rates.first().copied().unwrap_or(1000),
        duration,
        Corpus::Random,
        "random",
    )
    .await;
    lag_since_last(&cluster, "dc1");
    for (corpus, (records, raw, wire)) in [
        ("json-carts", bytes_json.unwrap_or_default()),
        ("random", (records, raw, wire)),
    ] {
        let per = |b: u64| b as f64 / records.max(1) as f64;
        println!(
            "bench-bridge: bytes corpus={corpus} writes={records} raw_per_write={:.0} wire_per_write={:.0} wire_over_raw={:.2}",
            per(raw),
            per(wire),
            wire as f64 / raw.max(1) as f64
        );
    }

    // Catch-up: dc2 down while dc1 writes; then back, while dc1 writes on.
    eprintln!(
        "bench-bridge: dc2 down for {} s while dc1 writes {}/s",
        args.outage_s, args.outage_rate
    );
    cluster.stop_dc("dc2").await;
    cluster.wait_alive(3, "dc2 seen down").await?;
    let during = write_load(
        cluster.addrs("dc1"),
        cluster.connect_options("bench-bridge"),
        args.outage_rate,
        Duration::from_secs(args.outage_s),
        Corpus::JsonCarts,
        "outage",
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    let write_rate = during as f64 / args.outage_s as f64;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(write_load(
        cluster.addrs("dc1"),
        cluster.connect_options("bench-bridge"),
        args.outage_rate,
        Duration::from_secs(3600),
        Corpus::JsonCarts,
        "after",
        stop.clone(),
    ));
    let restart = Instant::now();
    cluster.start_dc("dc2").await?;
    cluster.wait_alive(6, "dc2 back").await?;
    let up = Instant::now();
    let backlog = cluster.backlog("dc2");
    let (shipped0, _, _) = cluster.shipped();
    // Caught up: the backlog is down to what the live writes keep in
    // flight over the WAN (half a second of writes: a round trip, the
    // batching and the apply stay well inside that).
    let live = (args.outage_rate / 2).max(1);
    let mut caught = None;
    while up.elapsed() < Duration::from_secs(600) {
        if cluster.backlog("dc2") <= live {
            caught = Some(up.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (shipped1, _, _) = cluster.shipped();
    stop.store(true, Ordering::Relaxed);
    let _ = writers.await;
    match caught {
        Some(t) => {
            let drain_rate = (shipped1 - shipped0) as f64 / t.as_secs_f64();
            println!(
                "bench-bridge: catch-up outage_s={} write_rate={write_rate:.0} backlog={backlog} catch_up_s={:.2} restart_s={:.2} drain_rate={drain_rate:.0} multiple={:.1}",
                args.outage_s,
                t.as_secs_f64(),
                (up - restart).as_secs_f64(),
                drain_rate / write_rate.max(1.0)
            );
        }
        None => println!("bench-bridge: catch-up did not finish within 600 s (backlog {backlog})"),
    }
    cluster.shutdown().await;
    Ok(())
}
