//! Merging iteration: combines sorted sources (memtables, tables) into one
//! stream in key order, joining the version sets a key has in several
//! sources. Scans and compactions both read through it; because the join
//! is commutative, the order of the sources does not matter.

use std::ops::Bound;
use std::sync::Arc;

use super::error::EngineError;
use super::memtable::Memtable;
use crate::model::VersionSet;

/// An entry stream.
pub(crate) type Entry = Result<(Vec<u8>, VersionSet), EngineError>;
/// A boxed sorted source.
pub(crate) type Source = Box<dyn Iterator<Item = Entry> + Send>;

/// Pages through a memtable without borrowing it (see `Memtable::page`).
pub(crate) struct MemIter {
    mem: Arc<Memtable>,
    from: Bound<Vec<u8>>,
    to: Bound<Vec<u8>>,
    buf: std::collections::VecDeque<(Vec<u8>, VersionSet)>,
    done: bool,
}

const PAGE_ENTRIES: usize = 256;

impl MemIter {
    pub(crate) fn new(mem: Arc<Memtable>, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Self {
        MemIter {
            mem,
            from,
            to,
            buf: Default::default(),
            done: false,
        }
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Iterator for MemIter {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        if self.buf.is_empty() && !self.done {
            let page = self
                .mem
                .page(as_ref(&self.from), as_ref(&self.to), PAGE_ENTRIES);
            if page.len() < PAGE_ENTRIES {
                self.done = true;
            }
            if let Some((k, _)) = page.last() {
                self.from = Bound::Excluded(k.clone());
            }
            self.buf.extend(page);
        }
        self.buf.pop_front().map(Ok)
    }
}

/// Merges sorted sources, joining equal keys.
pub(crate) struct MergeIter {
    sources: Vec<Source>,
    heads: Vec<Option<(Vec<u8>, VersionSet)>>,
    started: bool,
    failed: bool,
}

impl MergeIter {
    pub(crate) fn new(sources: Vec<Source>) -> Self {
        let heads = sources.iter().map(|_| None).collect();
        MergeIter {
            sources,
            heads,
            started: false,
            failed: false,
        }
    }

    fn refill(&mut self, i: usize) -> Result<(), EngineError> {
        self.heads[i] = self.sources[i].next().transpose()?;
        Ok(())
    }
}

impl Iterator for MergeIter {
    type Item = Entry;
    fn next(&mut self) -> Option<Entry> {
        if self.failed {
            return None;
        }
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                if let Err(e) = self.refill(i) {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let min = self.heads.iter().flatten().map(|(k, _)| k).min()?.clone();
        let mut out: Option<VersionSet> = None;
        for i in 0..self.heads.len() {
            if self.heads[i].as_ref().is_some_and(|(k, _)| *k == min) {
                if let Some((_, set)) = self.heads[i].take() {
                    match &mut out {
                        None => out = Some(set),
                        Some(acc) => {
                            acc.join(set);
                        }
                    }
                }
                if let Err(e) = self.refill(i) {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        out.map(|set| Ok((min, set)))
    }
}
