//! A shopping cart written from two devices at once, merged by `update`.
//!
//! Both devices add to the cart without having seen each other's write,
//! so the key holds two siblings; the next `update` merges them (each
//! item at its largest quantity), adds an item, and writes the merged
//! cart over both. Exits non-zero if the cart read back is not the merge.
//!
//! ```text
//! cargo run -p isthmus-client --features serde-json --example cart -- 127.0.0.1:7401 [keyspace]
//! ```
//! The address (a node of a running cluster) and the keyspace (default
//! `carts`) can also come from `CLUSTER_ADDR` and `CLUSTER_KEYSPACE`.

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use isthmus_client::Client;
use isthmus_client::wire::Context;

/// Item → quantity.
type Cart = BTreeMap<String, u32>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (seed, keyspace) = target()?;
    run(&seed, &keyspace).await
}

/// The cluster's address and the keyspace, from the arguments or the
/// environment.
fn target() -> anyhow::Result<(String, String)> {
    let mut args = std::env::args().skip(1);
    let seed = args
        .next()
        .or_else(|| std::env::var("CLUSTER_ADDR").ok())
        .context("usage: cart HOST:PORT [KEYSPACE] (or CLUSTER_ADDR)")?;
    let keyspace = args
        .next()
        .or_else(|| std::env::var("CLUSTER_KEYSPACE").ok())
        .unwrap_or_else(|| "carts".into());
    Ok((seed, keyspace))
}

/// Two concurrent carts, merged by the next update.
pub async fn run(seed: &str, keyspace: &str) -> anyhow::Result<()> {
    let client = Client::builder()
        .seed(seed)
        .name("cart-example")
        .build()
        .await?;
    let key = format!("cart-{:016x}", rand::random::<u64>());

    // The phone and the laptop each add an item to the empty cart.
    let phone: Cart = [("apple".to_string(), 1)].into();
    let laptop: Cart = [("pear".to_string(), 2), ("apple".to_string(), 3)].into();
    client
        .put_json(keyspace, key.as_bytes(), &phone, &Context::default())
        .await?;
    client
        .put_json(keyspace, key.as_bytes(), &laptop, &Context::default())
        .await?;
    let seen = client.get_json::<Cart>(keyspace, key.as_bytes()).await?;
    println!("{key}: {} sibling(s): {:?}", seen.values.len(), seen.values);

    // Merge whatever siblings there are and add a banana, over all of them.
    client
        .update_json::<Cart, _>(keyspace, key.as_bytes(), |siblings| {
            let mut cart = Cart::new();
            for sibling in siblings {
                for (item, n) in sibling {
                    let quantity = cart.entry(item).or_default();
                    *quantity = (*quantity).max(n);
                }
            }
            *cart.entry("banana".into()).or_default() += 1;
            Some(cart)
        })
        .await?;

    let merged = client.get_json::<Cart>(keyspace, key.as_bytes()).await?;
    let expected: Cart = [
        ("apple".to_string(), 3),
        ("banana".to_string(), 1),
        ("pear".to_string(), 2),
    ]
    .into();
    ensure!(
        merged.values == [expected.clone()],
        "the cart reads {:?}, not {expected:?}",
        merged.values
    );
    println!("{key}: merged into {expected:?}");
    Ok(())
}
