//! Typed values as JSON (the `serde-json` feature): reads that decode
//! every sibling as `T`, writes that encode a `T`, and an update that
//! hands the decoded siblings to a function and stores what it returns.
//! The bytes stored are plain JSON, so other clients (the CLI, the Redis
//! front door, a resolver) read them as they are.
//!
//! ```no_run
//! # async fn demo(client: isthmus_client::Client) -> Result<(), isthmus_client::ClientError> {
//! use std::collections::BTreeMap;
//! type Cart = BTreeMap<String, u32>;
//! // Merge concurrent carts (siblings) by taking each item's largest
//! // quantity, then add an apple.
//! client
//!     .update_json::<Cart, _>("carts", b"alice", |siblings| {
//!         let mut cart = Cart::new();
//!         for sibling in siblings {
//!             for (item, n) in sibling {
//!                 let q = cart.entry(item).or_default();
//!                 *q = (*q).max(n);
//!             }
//!         }
//!         *cart.entry("apple".into()).or_default() += 1;
//!         Some(cart)
//!     })
//!     .await?;
//! let read = client.get_json::<Cart>("carts", b"alice").await?;
//! assert_eq!(read.values.len(), 1);
//! # Ok(()) }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::ClientError;
use crate::wire::Context;

/// A typed read: every live sibling decoded, and the context to write
/// back over them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypedRead<T> {
    /// The live siblings' values, in canonical order (none when absent).
    pub values: Vec<T>,
    /// Causal context covering every sibling.
    pub context: Context,
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(value).map_err(|e| ClientError::Value {
        reason: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Value {
        reason: e.to_string(),
    })
}

impl Client {
    /// Read `key` and decode each live sibling as JSON `T`; a sibling
    /// that does not decode fails the read with [`ClientError::Value`].
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        keyspace: &str,
        key: &[u8],
    ) -> Result<TypedRead<T>, ClientError> {
        let read = self.get(keyspace, key).await?;
        Ok(TypedRead {
            values: read
                .siblings
                .iter()
                .map(|s| decode(&s.value))
                .collect::<Result<_, _>>()?,
            context: read.context,
        })
    }

    /// Write `value` as JSON over what `context` saw.
    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        keyspace: &str,
        key: &[u8],
        value: &T,
        context: &Context,
    ) -> Result<(), ClientError> {
        self.put(keyspace, key, encode(value)?, context).await
    }

    /// Read the siblings as `T`, let `change` decide the new value from
    /// them (merging them, typically), and write it over what was read;
    /// `None` deletes.
    pub async fn update_json<T, F>(
        &self,
        keyspace: &str,
        key: &[u8],
        change: F,
    ) -> Result<(), ClientError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Vec<T>) -> Option<T>,
    {
        let read = self.get_json::<T>(keyspace, key).await?;
        match change(read.values) {
            Some(value) => self.put_json(keyspace, key, &value, &read.context).await,
            None => self.delete(keyspace, key, &read.context).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_bytes_are_a_typed_error() {
        let bytes = encode(&vec![("apple", 2u32)]).unwrap();
        assert_eq!(bytes, br#"[["apple",2]]"#);
        let back: Vec<(String, u32)> = decode(&bytes).unwrap();
        assert_eq!(back, vec![("apple".to_string(), 2)]);
        let e = decode::<u32>(b"not json").unwrap_err();
        assert!(matches!(e, ClientError::Value { .. }), "{e}");
    }
}
