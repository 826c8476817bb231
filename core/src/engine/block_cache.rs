//! The cache of decoded blocks, bounded by bytes and shared by every
//! table of an engine. It knows blocks only: tables look their blocks up
//! in it, never the other way round.

use std::sync::Arc;

use quick_cache::Weighter;

use super::block::Block;

/// Weighs a cached block by its memory footprint.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BlockWeighter;

impl Weighter<(u64, u64), Arc<Block>> for BlockWeighter {
    fn weight(&self, _key: &(u64, u64), block: &Arc<Block>) -> u64 {
        block.mem_bytes() as u64
    }
}

/// Decoded blocks keyed by (table id, block offset).
pub(crate) type BlockCache = quick_cache::sync::Cache<(u64, u64), Arc<Block>, BlockWeighter>;

/// A new block cache holding about `bytes` of decoded blocks.
pub(crate) fn block_cache(bytes: u64) -> BlockCache {
    let items = (bytes / 4096).max(16) as usize;
    BlockCache::with_weighter(items, bytes.max(1), BlockWeighter)
}
