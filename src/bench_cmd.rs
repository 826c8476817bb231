//! `isthmus bench`: a YCSB-style load generator against a running cluster.
//!
//! Workloads (YCSB core workloads over a zipfian key popularity, s = 0.99):
//! - `a`: 50% reads, 50% updates;
//! - `b`: 95% reads, 5% updates;
//! - `c`: 100% reads.
//!
//! An update is what an Isthmus application does to change a value: read
//! the key (for its causal context) and write over that context, so its
//! latency covers both round trips. (A blind write would add a sibling per
//! write on a keyspace without a resolver.) Keys are loaded first, with the
//! same concurrency. Latencies go into HDR histograms; the report gives
//! ops/s and p50 / p99 / p999 per operation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use isthmus_client::Client;
use isthmus_client::wire::{Consistency, Context};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// Arguments of `isthmus bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A node of the cluster (the client learns the rest).
    #[arg(long)]
    pub addr: String,
    /// YCSB workload: a (50/50 read/update), b (95/5), c (read only).
    #[arg(long, value_parser = ["a", "b", "c"], default_value = "a")]
    pub workload: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub threads: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Keys loaded and then accessed.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Keyspace to use (must be configured on the cluster).
    #[arg(long, default_value = "bench")]
    pub keyspace: String,
    /// Consistency level (the keyspace default when absent).
    #[arg(long)]
    pub consistency: Option<Consistency>,
    /// Skip loading (the keys are already there).
    #[arg(long)]
    pub no_load: bool,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// TLS and credentials.
    #[command(flatten)]
    pub security: crate::client_cmd::Security,
}

fn key(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

struct Recorder {
    reads: Histogram<u64>,
    updates: Histogram<u64>,
    errors: u64,
}

impl Recorder {
    fn new() -> anyhow::Result<Self> {
        Ok(Recorder {
            reads: Histogram::new(3)?,
            updates: Histogram::new(3)?,
            errors: 0,
        })
    }
}

async fn load(client: &Client, args: &BenchArgs) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let value = vec![b'v'; args.value_bytes];
    let mut tasks = Vec::new();
    for _ in 0..args.threads {
        let (client, next, value, keys, ks) = (
            client.clone(),
            next.clone(),
            value.clone(),
            args.keys,
            args.keyspace.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return anyhow::Ok(());
                }
                client
                    .put(&ks, &key(i), value.clone(), &Context::default())
                    .await
                    .with_context(|| format!("loading key {i}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Run the benchmark and return the report.
pub fn run(args: BenchArgs) -> anyhow::Result<String> {
    if args.keys == 0 || args.threads == 0 {
        bail!("--keys and --threads must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut builder = Client::builder().seed(args.addr.clone()).timeout(Duration::from_secs(5)).name("isthmus-bench");
        if let Some(level) = args.consistency {
            builder = builder.consistency(level);
        }
        if let Some(material) = args.security.material()? {
            builder = builder.tls(material);
        }
        if let Some(credentials) = args.security.options("isthmus-bench")?.credentials {
            builder = builder.credentials(credentials);
        }
        let client = builder.build().await.with_context(|| format!("connecting to {}", args.addr))?;
        if !args.no_load {
            let started = Instant::now();
            load(&client, &args).await?;
            eprintln!("bench: loaded {} keys in {:.1} s", args.keys, started.elapsed().as_secs_f64());
        }
        let read_share = match args.workload.as_str() {
            "a" => 0.5,
            "b" => 0.95,
            _ => 1.0,
        };
        let zipf = Zipf::new(args.keys as f64, 0.99).context("zipf distribution")?;
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(Mutex::new(Recorder::new()?));
        let mut tasks = Vec::new();
        for t in 0..args.threads {
            let (client, stop, total) = (client.clone(), stop.clone(), total.clone());
            let (ks, value_bytes, keys) = (args.keyspace.clone(), args.value_bytes, args.keys);
            let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(t as u64));
            tasks.push(tokio::spawn(async move {
                let mut mine = Recorder::new()?;
                while !stop.load(Ordering::Relaxed) {
                    // Zipf ranks 1..=n, scrambled (as YCSB does) so the hot
                    // keys are not neighbours.
                    let rank = zipf.sample(&mut rng) as u64;
                    let k = key(isthmus_client::placement::key_hash(&rank.to_le_bytes()) % keys);
                    let started = Instant::now();
                    if rng.random::<f64>() < read_share {
                        match client.get(&ks, &k).await {
                            Ok(_) => mine.reads.record(started.elapsed().as_micros() as u64)?,
                            Err(_) => mine.errors += 1,
                        }
                    } else {
                        let value: Vec<u8> = (0..value_bytes).map(|_| rng.random_range(b'a'..=b'z')).collect();
                        let result = match client.get(&ks, &k).await {
                            Ok(read) => client.put(&ks, &k, value, &read.context).await,
                            Err(e) => Err(e),
                        };
                        match result {
                            Ok(()) => mine.updates.record(started.elapsed().as_micros() as u64)?,
                            Err(_) => mine.errors += 1,
                        }
                    }
                }
                let mut total = total.lock();
                total.reads.add(&mine.reads)?;
                total.updates.add(&mine.updates)?;
                total.errors += mine.errors;
                anyhow::Ok(())
            }));
        }
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.duration)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let total = total.lock();
        let ops = total.reads.len() + total.updates.len();
        let mut out = format!(
            "bench: workload={} threads={} keys={} value_bytes={} duration_s={:.1} ops={ops} ops_per_s={:.0} errors={}\n",
            args.workload,
            args.threads,
            args.keys,
            args.value_bytes,
            elapsed,
            ops as f64 / elapsed,
            total.errors
        );
        for (name, h) in [("read", &total.reads), ("update", &total.updates)] {
            if h.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "bench: {name} ops={} p50_us={} p99_us={} p999_us={}\n",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999)
            ));
        }
        Ok(out)
    })
}
