//! Conditional writes: the last items of a stock sold to more buyers than
//! there are items, without overselling.
//!
//! `put_if_absent` creates the stock (and refuses to create it twice);
//! each buyer reads it and writes one less with `put_if` over the context
//! it read, which the store applies only if nothing was written since;
//! on `ConditionFailed` the buyer decides again from the current value
//! the error carries. Five buyers, three items: exactly three sales and
//! a stock of zero, or the example exits non-zero.
//!
//! ```text
//! cargo run -p isthmus-client --example conditional -- 127.0.0.1:7401 [keyspace]
//! ```
//! The address and the keyspace (default `carts`) can also come from
//! `CLUSTER_ADDR` and `CLUSTER_KEYSPACE`.

use anyhow::{Context as _, bail, ensure};
use isthmus_client::wire::{Context, Sibling};
use isthmus_client::{Client, ClientError};

const STOCK: u64 = 3;
const BUYERS: usize = 5;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seed = args
        .next()
        .or_else(|| std::env::var("CLUSTER_ADDR").ok())
        .context("usage: conditional HOST:PORT [KEYSPACE] (or CLUSTER_ADDR)")?;
    let keyspace = args
        .next()
        .or_else(|| std::env::var("CLUSTER_KEYSPACE").ok())
        .unwrap_or_else(|| "carts".into());
    run(&seed, &keyspace).await
}

/// The stock a read shows (one sibling: conditional writes leave none).
fn stock(siblings: &[Sibling]) -> anyhow::Result<u64> {
    match siblings {
        [one] => Ok(std::str::from_utf8(&one.value)?.parse()?),
        other => bail!("expected one value, found {} siblings", other.len()),
    }
}

/// Sell one item if any is left: `Ok(true)` when this buyer got it.
async fn buy(client: &Client, keyspace: &str, key: &[u8]) -> anyhow::Result<bool> {
    let read = client.get(keyspace, key).await?;
    let (mut siblings, mut context) = (read.siblings, read.context);
    loop {
        let left = stock(&siblings)?;
        if left == 0 {
            return Ok(false);
        }
        let next = (left - 1).to_string().into_bytes();
        match client.put_if(keyspace, key, next, &context).await {
            Ok(()) => return Ok(true),
            // Someone wrote first: decide again from what the key holds.
            Err(ClientError::ConditionFailed {
                siblings: now,
                context: now_context,
            }) => {
                siblings = now;
                context = now_context;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Five buyers, three items.
pub async fn run(seed: &str, keyspace: &str) -> anyhow::Result<()> {
    let client = Client::builder()
        .seed(seed)
        .name("conditional-example")
        .build()
        .await?;
    let key = format!("stock-{:016x}", rand::random::<u64>());
    client
        .put_if_absent(keyspace, key.as_bytes(), STOCK.to_string().into_bytes())
        .await?;
    match client
        .put_if_absent(keyspace, key.as_bytes(), b"99".to_vec())
        .await
    {
        Err(ClientError::ConditionFailed { siblings, .. }) => {
            ensure!(stock(&siblings)? == STOCK, "the refusal shows the stock")
        }
        other => bail!("a second put_if_absent must be refused, got {other:?}"),
    }
    let mut buyers = Vec::new();
    for _ in 0..BUYERS {
        let (client, keyspace, key) = (client.clone(), keyspace.to_owned(), key.clone());
        buyers.push(tokio::spawn(async move {
            buy(&client, &keyspace, key.as_bytes()).await
        }));
    }
    let mut sold = 0;
    for buyer in buyers {
        sold += u64::from(buyer.await??);
    }
    let left = stock(&client.get(keyspace, key.as_bytes()).await?.siblings)?;
    println!("{key}: sold {sold}, {left} left");
    ensure!(
        sold == STOCK && left == 0,
        "sold {sold} and {left} left, from a stock of {STOCK}"
    );
    // A write over a stale context is refused too.
    let stale = Context::default();
    ensure!(
        matches!(
            client
                .put_if(keyspace, key.as_bytes(), b"7".to_vec(), &stale)
                .await,
            Err(ClientError::ConditionFailed { .. })
        ),
        "a put_if over a stale context must be refused"
    );
    Ok(())
}
