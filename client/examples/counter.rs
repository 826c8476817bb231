//! A counter that concurrent writers increment without losing a step,
//! with no resolver on the server: each writer counts in its own slot,
//! and `update` merges siblings slot by slot (the largest count wins), a
//! grow-only counter (G-counter). Its value is the sum of the slots.
//!
//! Four writers add ten each, at once; the example exits non-zero unless
//! the counter reads 40.
//!
//! ```text
//! cargo run -p isthmus-client --features serde-json --example counter -- 127.0.0.1:7401 [keyspace]
//! ```
//! The address and the keyspace (default `carts`) can also come from
//! `CLUSTER_ADDR` and `CLUSTER_KEYSPACE`.

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use isthmus_client::Client;
use isthmus_client::wire::Consistency;

/// Writer → its count.
type Slots = BTreeMap<String, u64>;

const WRITERS: usize = 4;
const STEPS: u64 = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seed = args
        .next()
        .or_else(|| std::env::var("CLUSTER_ADDR").ok())
        .context("usage: counter HOST:PORT [KEYSPACE] (or CLUSTER_ADDR)")?;
    let keyspace = args
        .next()
        .or_else(|| std::env::var("CLUSTER_KEYSPACE").ok())
        .unwrap_or_else(|| "carts".into());
    run(&seed, &keyspace).await
}

/// The merge of concurrent slot maps: each slot's largest count.
fn merge(siblings: Vec<Slots>) -> Slots {
    let mut merged = Slots::new();
    for sibling in siblings {
        for (writer, count) in sibling {
            let slot = merged.entry(writer).or_default();
            *slot = (*slot).max(count);
        }
    }
    merged
}

/// Concurrent increments, then the total.
pub async fn run(seed: &str, keyspace: &str) -> anyhow::Result<()> {
    // Quorum reads see each writer's own last write, which its next
    // increment builds on.
    let client = Client::builder()
        .seed(seed)
        .name("counter-example")
        .consistency(Consistency::LocalQuorum)
        .build()
        .await?;
    let key = format!("counter-{:016x}", rand::random::<u64>());
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, keyspace, key) = (client.clone(), keyspace.to_owned(), key.clone());
        writers.push(tokio::spawn(async move {
            let me = format!("writer-{w}");
            for _ in 0..STEPS {
                client
                    .update_json::<Slots, _>(&keyspace, key.as_bytes(), |siblings| {
                        let mut slots = merge(siblings);
                        *slots.entry(me.clone()).or_default() += 1;
                        Some(slots)
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let read = client.get_json::<Slots>(keyspace, key.as_bytes()).await?;
    let total: u64 = merge(read.values).values().sum();
    println!("{key}: {total}");
    ensure!(
        total == WRITERS as u64 * STEPS,
        "the counter reads {total}, not {}",
        WRITERS as u64 * STEPS
    );
    Ok(())
}
