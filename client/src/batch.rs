//! Batches: many keys read or written in one call, pipelined per node.
//!
//! Each item goes to the first node of its key's route (its primary
//! replica in the preferred datacenter, when up); the items bound for one
//! node are sent on that node's session without waiting for each answer,
//! up to [`PIPELINE_DEPTH`] in flight, and the nodes are served at once.
//! An item that fails retries alone, along its own route, like a single
//! request. Answers come back in input order, one result per item: one
//! item's failure fails only that item.
//!
//! ```no_run
//! # async fn demo(client: isthmus_client::Client) -> Result<(), isthmus_client::ClientError> {
//! use isthmus_client::PutItem;
//! use isthmus_client::wire::Context;
//! let items: Vec<PutItem> = (0..300)
//!     .map(|i| PutItem::new(format!("k{i}"), b"v".to_vec(), Context::default()))
//!     .collect();
//! for (item, result) in items.iter().zip(client.put_many("carts", &items).await?) {
//!     result.unwrap_or_else(|e| eprintln!("{:?}: {e}", item.key));
//! }
//! let reads = client.get_many("carts", &["k0", "k1"]).await?;
//! assert_eq!(reads.len(), 2);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::future::Future;

use futures_util::StreamExt;

use crate::client::{Client, Read, put_body};
use crate::error::ClientError;
use crate::options::{RequestOptions, Resolved, Use};
use crate::wire::{Consistency, Context, Expiry, RequestBody, WriteMode};

/// Requests of one batch in flight at once on one node's session.
pub const PIPELINE_DEPTH: usize = 128;

/// One write of [`Client::put_many`]: `value` over what `context` saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutItem {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The context of the key's last read (empty for a first write).
    pub context: Context,
}

impl PutItem {
    /// An item writing `value` to `key` over `context`.
    pub fn new(key: impl Into<Vec<u8>>, value: Vec<u8>, context: Context) -> Self {
        PutItem {
            key: key.into(),
            value,
            context,
        }
    }
}

impl Client {
    /// Read many keys: one result per key, in the order given.
    pub async fn get_many<K: AsRef<[u8]>>(
        &self,
        keyspace: &str,
        keys: &[K],
    ) -> Result<Vec<Result<Read, ClientError>>, ClientError> {
        self.get_many_with(keyspace, keys, &RequestOptions::default())
            .await
    }

    /// [`get_many`](Self::get_many) with options for every item; the
    /// deadline bounds the whole batch.
    pub async fn get_many_with<K: AsRef<[u8]>>(
        &self,
        keyspace: &str,
        keys: &[K],
        opts: &RequestOptions,
    ) -> Result<Vec<Result<Read, ClientError>>, ClientError> {
        let opts = opts.resolve_for(&self.defaults(), Use::Read)?;
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        Ok(self
            .pipelined(&keys, opts.consistency, |i| {
                self.get_resolved(keyspace, keys[i], &opts)
            })
            .await)
    }

    /// Write many keys, each over its own context: one result per item,
    /// in the order given. Each item is its own write, with its own write
    /// id (reused by its retries): there is no atomicity across items.
    pub async fn put_many(
        &self,
        keyspace: &str,
        items: &[PutItem],
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        self.put_many_with(keyspace, items, &RequestOptions::default())
            .await
    }

    /// [`put_many`](Self::put_many) with options for every item; the
    /// deadline bounds the whole batch.
    pub async fn put_many_with(
        &self,
        keyspace: &str,
        items: &[PutItem],
        opts: &RequestOptions,
    ) -> Result<Vec<Result<(), ClientError>>, ClientError> {
        let opts = opts.resolve_for(&self.defaults(), Use::ManyWrites)?;
        let keys: Vec<&[u8]> = items.iter().map(|item| item.key.as_slice()).collect();
        Ok(self
            .pipelined(&keys, opts.consistency, |i| {
                let item = &items[i];
                let body: RequestBody = put_body(
                    keyspace,
                    &item.key,
                    item.value.clone(),
                    &item.context,
                    WriteMode::Context,
                    Expiry::KeyspaceDefault,
                    &opts,
                );
                let opts: &Resolved = &opts;
                async move { self.expect_written(&item.key, body, opts).await }
            })
            .await)
    }

    /// Run `each(i)` for every key, grouped by the node each key goes to
    /// first: one pipeline per node, all nodes at once; results by index.
    async fn pipelined<'a, T, F, Fut>(
        &'a self,
        keys: &[&[u8]],
        level: Option<Consistency>,
        each: F,
    ) -> Vec<Result<T, ClientError>>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + 'a,
    {
        let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let first = self
                .route(key, level)
                .into_iter()
                .next()
                .unwrap_or_default();
            by_node.entry(first).or_default().push(i);
        }
        let each = &each;
        let pipelines = by_node.into_iter().map(|(addr, indices)| async move {
            // Open the node's session once, before its requests race to.
            if !addr.is_empty() {
                let _ = self.session(&addr).await;
            }
            futures_util::stream::iter(indices)
                .map(|i| async move { (i, each(i).await) })
                .buffer_unordered(PIPELINE_DEPTH)
                .collect::<Vec<_>>()
                .await
        });
        // Every index is in exactly one pipeline: sorted, they are the
        // input order.
        let mut results: Vec<(usize, Result<T, ClientError>)> =
            futures_util::future::join_all(pipelines)
                .await
                .into_iter()
                .flatten()
                .collect();
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, result)| result).collect()
    }
}
