//! Compaction: merges level 0 and the overlapping bottom-level tables into
//! new bottom-level tables.
//!
//! Every input key's sets are joined (which drops dominated versions), and
//! a set made only of tombstones older than `tombstone_grace` is dropped.
//! Dropping is sound only because the output is the bottom level: all
//! older tables that could hold the key are inputs, so no older version
//! the tombstone hides can resurface.
//!
//! Background compaction is paced by a byte budget (`compaction_bytes_per_s`)
//! and stops between blocks when the engine shuts down; the inputs stay
//! live until the manifest naming the outputs is durable.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::cache::Table;
use super::error::EngineError;
use super::fs::Fs;
use super::manifest::{TableMeta, table_path};
use super::merge::{MergeIter, Source};
use super::sstable::{TableIter, TableWriter};
use super::{Levels, Shared, now_ms};

/// Paces writes to a byte rate.
struct Throttle {
    start: Instant,
    bytes_per_s: u64,
}

impl Throttle {
    fn pace(&self, bytes: u64) {
        let due = Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            // Short sleeps keep shutdown responsive.
            std::thread::sleep((due - elapsed).min(Duration::from_millis(100)));
        }
    }
}

impl<F: Fs> Shared<F> {
    fn stopping(&self) -> bool {
        self.signals.lock().stop
    }

    /// Run one compaction. `full`: every table, even below the L0 trigger.
    /// Returns whether anything was compacted.
    pub(super) fn compact(&self, full: bool, budget: Option<u64>) -> Result<bool, EngineError> {
        let _one = self.compaction_lock.lock();
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(EngineError::Poisoned);
        }
        let levels = self.levels.read().clone();
        if levels.l0.is_empty() && levels.l1.is_empty() {
            return Ok(false);
        }
        if !full && levels.l0.len() < self.options.l0_compaction_trigger {
            return Ok(false);
        }
        let l0: Vec<Arc<Table<F>>> = levels.l0.clone();
        let l1: Vec<Arc<Table<F>>> = if full || l0.is_empty() {
            levels.l1.clone()
        } else {
            let lo = l0
                .iter()
                .map(|t| &t.meta.min_key)
                .min()
                .cloned()
                .unwrap_or_default();
            let hi = l0
                .iter()
                .map(|t| &t.meta.max_key)
                .max()
                .cloned()
                .unwrap_or_default();
            levels
                .l1
                .iter()
                .filter(|t| t.meta.max_key >= lo && t.meta.min_key <= hi)
                .cloned()
                .collect()
        };
        let inputs: Vec<Arc<Table<F>>> = l0.iter().chain(&l1).cloned().collect();
        let mut sources: Vec<Source> = Vec::new();
        let mut expected = 0usize;
        for t in &inputs {
            expected += t.meta.entries as usize;
            sources.push(Box::new(TableIter::new(t.reader()?, None)?));
        }
        let cutoff = now_ms().saturating_sub(self.options.tombstone_grace.as_millis() as u64);
        let throttle = budget.map(|bytes_per_s| Throttle {
            start: Instant::now(),
            bytes_per_s,
        });
        let mut outputs: Vec<TableMeta> = Vec::new();
        let mut writer: Option<TableWriter<F>> = None;
        let mut done_bytes = 0u64;
        let result = (|| -> Result<bool, EngineError> {
            for entry in MergeIter::new(sources) {
                let (key, mut set) = entry?;
                if set.purge_expired_tombstones(cutoff) {
                    continue;
                }
                let w = match &mut writer {
                    Some(w) => w,
                    None => {
                        let id = self.allocate_table_id();
                        let left = expected
                            .saturating_sub(outputs.iter().map(|m| m.entries as usize).sum());
                        writer.insert(TableWriter::create(&self.fs, &self.dir, id, left.max(1))?)
                    }
                };
                w.add(&key, &set.encode())?;
                if w.bytes() >= self.options.table_bytes_target {
                    if let Some(w) = writer.take() {
                        let meta = w.finish()?;
                        done_bytes += meta.size_bytes;
                        outputs.push(meta);
                    }
                    if let Some(t) = &throttle {
                        t.pace(done_bytes);
                    }
                }
                if throttle.is_some() && w_entries(&writer).is_multiple_of(256) {
                    if let (Some(t), Some(w)) = (&throttle, &writer) {
                        t.pace(done_bytes + w.bytes());
                    }
                    if self.stopping() {
                        return Ok(false);
                    }
                }
            }
            if let Some(w) = writer.take() {
                let meta = w.finish()?;
                outputs.push(meta);
            }
            Ok(true)
        })();
        let finished = match result {
            Ok(f) => f,
            Err(e) => {
                self.remove_unrecorded(&outputs);
                return Err(e);
            }
        };
        if !finished {
            drop(writer);
            self.remove_unrecorded(&outputs);
            return Ok(false);
        }
        self.install(&inputs, outputs)?;
        Ok(true)
    }

    fn allocate_table_id(&self) -> u64 {
        let mut man = self.manifest.lock();
        man.next_table_id += 1;
        man.next_table_id - 1
    }

    /// Best-effort removal of outputs never recorded (the next open would
    /// remove them anyway).
    fn remove_unrecorded(&self, outputs: &[TableMeta]) {
        for m in outputs {
            let _ = self.fs.remove(&table_path(&self.dir, m.id));
        }
    }

    /// Record outputs in place of inputs, durably, then publish.
    fn install(
        &self,
        inputs: &[Arc<Table<F>>],
        outputs: Vec<TableMeta>,
    ) -> Result<(), EngineError> {
        let input_ids: std::collections::HashSet<u64> = inputs.iter().map(|t| t.meta.id).collect();
        let written: u64 = outputs.iter().map(|m| m.size_bytes).sum();
        let mut man = self.manifest.lock();
        let mut next = man.clone();
        next.l0.retain(|t| !input_ids.contains(&t.id));
        next.l1.retain(|t| !input_ids.contains(&t.id));
        next.l1.extend(outputs.iter().cloned());
        next.l1.sort_by(|a, b| a.min_key.cmp(&b.min_key));
        if let Err(e) = next.store(&self.fs, &self.dir) {
            drop(man);
            self.remove_unrecorded(&outputs);
            return Err(e);
        }
        *man = next;
        let mut levels = self.levels.write();
        let mut l1: Vec<Arc<Table<F>>> = levels
            .l1
            .iter()
            .filter(|t| !input_ids.contains(&t.meta.id))
            .cloned()
            .collect();
        for meta in outputs {
            l1.push(Arc::new(Table::new(
                meta.clone(),
                table_path(&self.dir, meta.id),
                self.fs.clone(),
                self.readers.clone(),
            )));
        }
        l1.sort_by(|a, b| a.meta.min_key.cmp(&b.meta.min_key));
        let l0 = levels
            .l0
            .iter()
            .filter(|t| !input_ids.contains(&t.meta.id))
            .cloned()
            .collect();
        *levels = Arc::new(Levels { l0, l1 });
        drop(levels);
        drop(man);
        for t in inputs {
            t.mark_obsolete();
        }
        self.counters
            .compaction_bytes
            .fetch_add(written, Ordering::Relaxed);
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn w_entries<F: Fs>(w: &Option<TableWriter<F>>) -> u64 {
    w.as_ref().map_or(1, |w| w.entries())
}
