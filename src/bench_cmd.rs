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
//!
//! Closed loop by default (each client sends its next operation when the
//! last is answered: the peak). With `--rate R`, open loop: operations
//! start on a fixed schedule of R per second whatever the answers do, each
//! latency measured from when its operation was *due*, so a stall delays
//! every operation scheduled during it and shows in the tail (no
//! coordinated omission, as wrk2 and YCSB's `-target` with intended
//! times). An update also reports its write alone (`write`: the put's own
//! round trip, after its read).

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
    /// Open loop: start this many operations per second on a fixed
    /// schedule, latency measured from when each was due (`--threads` is
    /// then used for loading only).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rate: Option<u64>,
    /// Open loop: operations in flight at most; one due past it is not
    /// sent and counts as an error (the system is far behind its schedule).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: u64,
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
    writes: Histogram<u64>,
    errors: u64,
    /// The errors by kind (the client error's variant, or `shed`).
    error_kinds: std::collections::BTreeMap<String, u64>,
}

impl Recorder {
    fn new() -> anyhow::Result<Self> {
        Ok(Recorder {
            reads: Histogram::new(3)?,
            updates: Histogram::new(3)?,
            writes: Histogram::new(3)?,
            errors: 0,
            error_kinds: Default::default(),
        })
    }

    fn add(&mut self, other: &Recorder) -> anyhow::Result<()> {
        self.reads.add(&other.reads)?;
        self.updates.add(&other.updates)?;
        self.writes.add(&other.writes)?;
        self.errors += other.errors;
        for (kind, n) in &other.error_kinds {
            *self.error_kinds.entry(kind.clone()).or_default() += n;
        }
        Ok(())
    }
}

/// Microseconds since `since`, at least 1 (a histogram's lowest value).
fn micros(since: Instant) -> u64 {
    (since.elapsed().as_micros() as u64).max(1)
}

/// What one operation does: a read, or an update writing this value.
type Op = Option<Vec<u8>>;

/// How one operation went: its whole latency from `started` and, for an
/// update, its put's own; or the kind of error that failed it.
type Timed = Result<(u64, Option<u64>), String>;

/// The kind of a client error: its variant's name.
fn kind(e: isthmus_client::ClientError) -> String {
    let shown = format!("{e:?}");
    let end = shown
        .find(|c: char| !c.is_alphanumeric())
        .unwrap_or(shown.len());
    match e.code() {
        // A node's refusal: which one.
        Some(code) => format!("{}:{code:?}", &shown[..end]),
        None => shown[..end].to_owned(),
    }
}

/// Run one operation on `k`, timed from `started` (when it was due, in
/// the open loop).
async fn one_op(client: &Client, ks: &str, k: &[u8], update: Op, started: Instant) -> Timed {
    let read = client.get(ks, k).await.map_err(kind)?;
    let Some(value) = update else {
        return Ok((micros(started), None));
    };
    let put_started = Instant::now();
    client
        .put(ks, k, value, &read.context)
        .await
        .map_err(kind)?;
    Ok((micros(started), Some(micros(put_started))))
}

impl Recorder {
    fn record(&mut self, timed: Timed) -> anyhow::Result<()> {
        match timed {
            Err(kind) => {
                self.errors += 1;
                *self.error_kinds.entry(kind).or_default() += 1;
            }
            Ok((whole, None)) => self.reads.record(whole)?,
            Ok((whole, Some(put))) => {
                self.updates.record(whole)?;
                self.writes.record(put)?;
            }
        }
        Ok(())
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
        let mut builder = Client::builder()
            .seed(args.addr.clone())
            .timeout(Duration::from_secs(5))
            .name("isthmus-bench");
        if let Some(level) = args.consistency {
            builder = builder.consistency(level);
        }
        if let Some(material) = args.security.material()? {
            builder = builder.tls(material);
        }
        if let Some(credentials) = args.security.options("isthmus-bench")?.credentials {
            builder = builder.credentials(credentials);
        }
        let client = builder
            .build()
            .await
            .with_context(|| format!("connecting to {}", args.addr))?;
        // Every node's session before the clock starts: opened on first
        // use, the first operations routed to each node would count its
        // TLS handshake and login (tens of milliseconds) as latency.
        for (addr, e) in client.connect_all().await {
            eprintln!("bench: no session to {addr} yet: {e}");
        }
        if !args.no_load {
            let started = Instant::now();
            load(&client, &args).await?;
            eprintln!(
                "bench: loaded {} keys in {:.1} s",
                args.keys,
                started.elapsed().as_secs_f64()
            );
        }
        let read_share = match args.workload.as_str() {
            "a" => 0.5,
            "b" => 0.95,
            _ => 1.0,
        };
        let zipf = Zipf::new(args.keys as f64, 0.99).context("zipf distribution")?;
        let (keys, value_bytes) = (args.keys, args.value_bytes);
        // Zipf ranks 1..=n, scrambled (as YCSB does) so the hot keys are
        // not neighbours; an update's value is random letters.
        let choose = move |rng: &mut rand::rngs::StdRng| -> (Vec<u8>, Op) {
            let rank = zipf.sample(&mut *rng) as u64;
            let k = key(isthmus_client::placement::key_hash(&rank.to_le_bytes()) % keys);
            let update = (rng.random::<f64>() >= read_share).then(|| {
                (0..value_bytes)
                    .map(|_| rng.random_range(b'a'..=b'z'))
                    .collect()
            });
            (k, update)
        };
        if let Some(rate) = args.rate {
            let (total, elapsed) = open_loop(&client, &args, rate, choose).await?;
            return Ok(report(&args, &total, elapsed, Some(rate)));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(Mutex::new(Recorder::new()?));
        let mut tasks = Vec::new();
        for t in 0..args.threads {
            let (client, stop, total) = (client.clone(), stop.clone(), total.clone());
            let ks = args.keyspace.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_add(t as u64));
            tasks.push(tokio::spawn(async move {
                let mut mine = Recorder::new()?;
                while !stop.load(Ordering::Relaxed) {
                    let (k, update) = choose(&mut rng);
                    mine.record(one_op(&client, &ks, &k, update, Instant::now()).await)?;
                }
                total.lock().add(&mine)?;
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
        Ok(report(&args, &total, elapsed, None))
    })
}

/// The open loop: `rate` operations a second on a fixed schedule for the
/// duration, each recorded from when it was due; the recorder and the
/// seconds it took (until the last answer).
///
/// The schedule is kept by a thread of its own that sleeps to each due
/// time (the kernel's timers: tens of microseconds late at most) and hands
/// the operation over at once; the runtime's timer wheel ticks in whole
/// milliseconds, and every operation it released late would count its
/// lateness as the store's.
async fn open_loop(
    client: &Client,
    args: &BenchArgs,
    rate: u64,
    choose: impl Fn(&mut rand::rngs::StdRng) -> (Vec<u8>, Op) + Send + 'static,
) -> anyhow::Result<(Recorder, f64)> {
    let total = Arc::new(Mutex::new(Recorder::new()?));
    let in_flight = Arc::new(AtomicU64::new(0));
    let period = 1.0 / rate as f64;
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel();
    let seed = args.seed;
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut sent = 0u64;
            loop {
                let due = started + Duration::from_secs_f64(sent as f64 * period);
                if due >= end {
                    return;
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                sent += 1;
                let (k, update) = choose(&mut rng);
                if due_tx.send((due, k, update)).is_err() {
                    return;
                }
            }
        })
        .context("starting the pacer thread")?;
    // The operations are started by a task on the runtime's workers, not
    // by this future (which `block_on` polls on the main thread): one
    // thread hand-off per operation fewer.
    let (client, ks, max_in_flight) = (client.clone(), args.keyspace.clone(), args.max_in_flight);
    let results = total.clone();
    let dispatch = tokio::spawn(async move {
        let mut shed = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        while let Some((due, k, update)) = due_rx.recv().await {
            if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                shed += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (client, ks, total, in_flight) = (
                client.clone(),
                ks.clone(),
                results.clone(),
                in_flight.clone(),
            );
            tasks.spawn(async move {
                let timed = one_op(&client, &ks, &k, update, due).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                total.lock().record(timed)
            });
            while let Some(done) = tasks.try_join_next() {
                done??;
            }
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(shed)
    });
    let shed = dispatch.await??;
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut total = Arc::into_inner(total)
        .context("every operation is done")?
        .into_inner();
    total.errors += shed;
    if shed > 0 {
        total.error_kinds.insert("shed".into(), shed);
    }
    Ok((total, elapsed))
}

/// The report: a summary line, then one line per kind of operation.
fn report(args: &BenchArgs, total: &Recorder, elapsed: f64, rate: Option<u64>) -> String {
    let ops = total.reads.len() + total.updates.len();
    let mode = match rate {
        Some(rate) => format!("open_loop_rate={rate}"),
        None => format!("threads={}", args.threads),
    };
    let mut out = format!(
        "bench: workload={} {mode} keys={} value_bytes={} duration_s={elapsed:.1} ops={ops} ops_per_s={:.0} errors={}\n",
        args.workload,
        args.keys,
        args.value_bytes,
        ops as f64 / elapsed,
        total.errors
    );
    if !total.error_kinds.is_empty() {
        let kinds: Vec<String> = total
            .error_kinds
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect();
        out.push_str(&format!("bench: errors {}\n", kinds.join(" ")));
    }
    for (name, h) in [
        ("read", &total.reads),
        ("update", &total.updates),
        ("write", &total.writes),
    ] {
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
    out
}
