//! Every size limit of a node, in one place, with units in the names.
//!
//! Limits exist so that no single client, key or file can exhaust a node;
//! each is enforced with a typed [`LimitError`] rather than a panic or a
//! silent truncation.

use serde::{Deserialize, Serialize};

/// Size limits enforced by the data path and the storage engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest key accepted (default 64 KiB, DESIGN.md).
    pub key_bytes_max: usize,
    /// Longest value accepted (default 1 MiB, DESIGN.md).
    pub value_bytes_max: usize,
    /// Most siblings kept for one key before writes are refused: bounds
    /// Riak's "too many siblings" on keys without a resolver.
    pub siblings_max: usize,
    /// Memtable size that triggers a flush to an SSTable.
    pub memtable_bytes_max: usize,
    /// Immutable memtables waiting for flush before writers are stalled.
    pub immutable_memtables_max: usize,
    /// SSTable files held open at once (the rest are reopened on demand).
    pub open_files_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 64 * 1024,
            value_bytes_max: 1024 * 1024,
            siblings_max: 64,
            memtable_bytes_max: 64 * 1024 * 1024,
            immutable_memtables_max: 4,
            open_files_max: 512,
        }
    }
}

/// A request that exceeds a configured limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The key is longer than `key_bytes_max`.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the offending key.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The value is longer than `value_bytes_max`.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the offending value.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The key already holds `siblings_max` siblings.
    #[error(
        "key holds {count} siblings, the limit is {max}; bind a resolver to the keyspace to merge them"
    )]
    TooManySiblings {
        /// Siblings the write would leave.
        count: usize,
        /// Configured maximum.
        max: usize,
    },
}

impl Limits {
    /// Check a key and an optional value against the limits.
    pub fn check(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), LimitError> {
        if key.len() > self.key_bytes_max {
            return Err(LimitError::KeyTooLarge {
                len: key.len(),
                max: self.key_bytes_max,
            });
        }
        if let Some(v) = value
            && v.len() > self.value_bytes_max
        {
            return Err(LimitError::ValueTooLarge {
                len: v.len(),
                max: self.value_bytes_max,
            });
        }
        Ok(())
    }
}
