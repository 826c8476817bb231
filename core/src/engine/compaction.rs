//! Compaction: leveled. L0 holds flushed memtables (overlapping); L1 and
//! deeper are each one sorted run of non-overlapping tables, each level
//! allowed [`LEVEL_FANOUT`] times the bytes of the one above (L1:
//! [`L1_TABLES`] tables' worth). Work, in order of urgency:
//!
//! - L0 reached `l0_compaction_trigger` tables: merge all of L0 with the
//!   L1 tables it overlaps, into L1;
//! - a level holds more than its target: merge one of its tables (the one
//!   overlapping the fewest bytes below, relative to its size) with the
//!   tables it overlaps in the next level, into that level.
//!
//! A table that overlaps nothing in the next level, when there is no
//! expired tombstone it could drop, is moved there by a manifest edit
//! (a trivial move), not rewritten. (A flush into empty L0 and L1 goes
//! straight to L1 for the same reason; see `flush_memtable`.)
//!
//! So a compaction rewrites about one table's overlap in the next level,
//! not the whole data set: write amplification grows with the number of
//! levels (logarithmic in the data size), not with the data size.
//!
//! Every input key's sets are joined (which drops dominated versions), and
//! a set made only of tombstones older than `tombstone_grace` is dropped,
//! but only when no deeper level holds a table overlapping the inputs: then
//! every older table that could hold the key is an input, so no older
//! version the tombstone hides can resurface.
//!
//! Background compaction is paced by a byte budget (`compaction_bytes_per_s`)
//! and stops between blocks when the engine shuts down; the inputs stay
//! live until the manifest naming the outputs is durable.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::cache::Table;
use super::error::EngineError;
use super::manifest::{TableMeta, table_path};
use super::merge_iter::{MergeIter, Source};
use super::sstable::{TableIter, TableWriter};
use super::{Levels, Shared, now_ms};
use crate::fs::Fs;

/// Each level may hold this many times the bytes of the one above.
const LEVEL_FANOUT: u64 = 10;
/// L1's target size, in output tables (`table_bytes_target`).
const L1_TABLES: u64 = 4;
/// Levels beyond L0 at most (L1..L6); the last is never over target.
const MAX_RUNS: usize = 6;

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

    /// Is there compaction work to do (module docs)?
    pub(super) fn needs_compaction(&self) -> bool {
        let levels = self.levels.load_full();
        self.pick(&levels, false).is_some()
    }

    /// Choose the next compaction, if any. `full`: every table, into the
    /// bottom level.
    fn pick(&self, levels: &Levels<F>, full: bool) -> Option<Pick<F>> {
        if full {
            let inputs: Vec<Arc<Table<F>>> = levels.all().cloned().collect();
            if inputs.is_empty() {
                return None;
            }
            return Some(Pick {
                inputs,
                output_run: levels.runs.len().max(1) - 1,
                drop_tombstones: true,
            });
        }
        let (upper, output_run) =
            if !levels.l0.is_empty() && levels.l0.len() >= self.options.l0_compaction_trigger {
                (levels.l0.clone(), 0)
            } else {
                let target = |i: usize| {
                    let base = self.options.table_bytes_target.max(1) * L1_TABLES;
                    base.saturating_mul(LEVEL_FANOUT.saturating_pow(i as u32))
                };
                // The last possible level is never over target.
                let over = (0..levels.runs.len().min(MAX_RUNS - 1)).find(|&i| {
                    levels.runs[i]
                        .iter()
                        .map(|t| t.meta.size_bytes)
                        .sum::<u64>()
                        > target(i)
                })?;
                let below = levels.runs.get(over + 1).map_or(&[][..], |r| r.as_slice());
                let t = levels.runs[over].iter().min_by_key(|t| {
                    let overlap: u64 = overlapping(below, &t.meta.min_key, &t.meta.max_key)
                        .map(|b| b.meta.size_bytes)
                        .sum();
                    // Overlap per byte moved, scaled to stay integral.
                    (u128::from(overlap) << 20) / u128::from(t.meta.size_bytes.max(1))
                })?;
                (vec![t.clone()], over + 1)
            };
        let lo = upper.iter().map(|t| &t.meta.min_key).min()?.clone();
        let hi = upper.iter().map(|t| &t.meta.max_key).max()?.clone();
        let lower: Vec<Arc<Table<F>>> = levels
            .runs
            .get(output_run)
            .map(|run| overlapping(run, &lo, &hi).cloned().collect())
            .unwrap_or_default();
        let lo = lower
            .first()
            .map_or(lo.clone(), |t| lo.clone().min(t.meta.min_key.clone()));
        let hi = lower
            .last()
            .map_or(hi.clone(), |t| hi.clone().max(t.meta.max_key.clone()));
        let drop_tombstones = levels
            .runs
            .iter()
            .skip(output_run + 1)
            .all(|run| overlapping(run, &lo, &hi).next().is_none());
        Some(Pick {
            inputs: upper.into_iter().chain(lower).collect(),
            output_run,
            drop_tombstones,
        })
    }

    /// Run one compaction. `full`: every table, even below the L0 trigger,
    /// into the bottom level. Returns whether anything was compacted.
    pub(super) fn compact(&self, full: bool, budget: Option<u64>) -> Result<bool, EngineError> {
        let _one = self.compaction_lock.lock();
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(EngineError::Poisoned);
        }
        let levels = self.levels.load_full();
        let Some(pick) = self.pick(&levels, full) else {
            return Ok(false);
        };
        let inputs = pick.inputs;
        if !full && inputs.len() == 1 && !pick.drop_tombstones {
            // Nothing below overlaps and there is nothing to purge: move
            // the table down with a manifest edit instead of rewriting it.
            self.install_move(&inputs[0], pick.output_run)?;
            return Ok(true);
        }
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
                if pick.drop_tombstones && set.purge_expired_tombstones(cutoff) {
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
                // The table being written when it failed holds space too.
                if let Some(w) = writer.take() {
                    let path = w.path().to_path_buf();
                    drop(w);
                    let _ = self.fs.remove(&path);
                }
                return Err(e);
            }
        };
        if !finished {
            drop(writer);
            self.remove_unrecorded(&outputs);
            return Ok(false);
        }
        self.install(&inputs, outputs, pick.output_run)?;
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
        output_run: usize,
    ) -> Result<(), EngineError> {
        let input_ids: std::collections::HashSet<u64> = inputs.iter().map(|t| t.meta.id).collect();
        let written: u64 = outputs.iter().map(|m| m.size_bytes).sum();
        let mut man = self.manifest.lock();
        let mut next = man.clone();
        next.l0.retain(|t| !input_ids.contains(&t.id));
        for run in &mut next.levels {
            run.retain(|t| !input_ids.contains(&t.id));
        }
        if next.levels.len() <= output_run {
            next.levels.resize(output_run + 1, Vec::new());
        }
        next.levels[output_run].extend(outputs.iter().cloned());
        next.levels[output_run].sort_by(|a, b| a.min_key.cmp(&b.min_key));
        // Drop empty levels at the bottom: the last level is the bottom.
        while next.levels.last().is_some_and(Vec::is_empty) {
            next.levels.pop();
        }
        if let Err(e) = next.store(&self.fs, &self.dir) {
            drop(man);
            self.remove_unrecorded(&outputs);
            return Err(e);
        }
        *man = next;
        let levels = self.levels.load_full();
        let mut runs: Vec<Vec<Arc<Table<F>>>> = levels
            .runs
            .iter()
            .map(|run| {
                run.iter()
                    .filter(|t| !input_ids.contains(&t.meta.id))
                    .cloned()
                    .collect()
            })
            .collect();
        if runs.len() <= output_run {
            runs.resize_with(output_run + 1, Vec::new);
        }
        for meta in outputs {
            runs[output_run].push(Arc::new(Table::new(
                meta.clone(),
                table_path(&self.dir, meta.id),
                self.fs.clone(),
                self.readers.clone(),
            )));
        }
        runs[output_run].sort_by(|a, b| a.meta.min_key.cmp(&b.meta.min_key));
        while runs.last().is_some_and(Vec::is_empty) {
            runs.pop();
        }
        let l0 = levels
            .l0
            .iter()
            .filter(|t| !input_ids.contains(&t.meta.id))
            .cloned()
            .collect();
        self.levels.store(Arc::new(Levels { l0, runs }));
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

impl<F: Fs> Shared<F> {
    /// Move `table` (overlapping nothing in `output_run`) to that level:
    /// a manifest edit, the file stays as it is.
    pub(super) fn install_move(
        &self,
        table: &Arc<Table<F>>,
        output_run: usize,
    ) -> Result<(), EngineError> {
        let id = table.meta.id;
        let mut man = self.manifest.lock();
        let mut next = man.clone();
        next.l0.retain(|t| t.id != id);
        for run in &mut next.levels {
            run.retain(|t| t.id != id);
        }
        if next.levels.len() <= output_run {
            next.levels.resize(output_run + 1, Vec::new());
        }
        next.levels[output_run].push(table.meta.clone());
        next.levels[output_run].sort_by(|a, b| a.min_key.cmp(&b.min_key));
        while next.levels.last().is_some_and(Vec::is_empty) {
            next.levels.pop();
        }
        next.store(&self.fs, &self.dir)?;
        *man = next;
        let levels = self.levels.load_full();
        let l0 = levels
            .l0
            .iter()
            .filter(|t| t.meta.id != id)
            .cloned()
            .collect();
        let mut runs: Vec<Vec<Arc<Table<F>>>> = levels
            .runs
            .iter()
            .map(|run| run.iter().filter(|t| t.meta.id != id).cloned().collect())
            .collect();
        if runs.len() <= output_run {
            runs.resize_with(output_run + 1, Vec::new);
        }
        runs[output_run].push(table.clone());
        runs[output_run].sort_by(|a, b| a.meta.min_key.cmp(&b.meta.min_key));
        while runs.last().is_some_and(Vec::is_empty) {
            runs.pop();
        }
        self.levels.store(Arc::new(Levels { l0, runs }));
        drop(levels);
        drop(man);
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Tables of a sorted run whose key ranges meet `[lo, hi]`.
fn overlapping<'a, F: Fs>(
    run: &'a [Arc<Table<F>>],
    lo: &'a [u8],
    hi: &'a [u8],
) -> impl Iterator<Item = &'a Arc<Table<F>>> {
    let from = run.partition_point(|t| t.meta.max_key.as_slice() < lo);
    run[from..]
        .iter()
        .take_while(move |t| t.meta.min_key.as_slice() <= hi)
}

/// One chosen compaction.
struct Pick<F: Fs> {
    /// Input tables (upper level first).
    inputs: Vec<Arc<Table<F>>>,
    /// Index in `Levels::runs` of the output level (0 is L1).
    output_run: usize,
    /// No deeper table overlaps the inputs: expired tombstones can go.
    drop_tombstones: bool,
}

fn w_entries<F: Fs>(w: &Option<TableWriter<F>>) -> u64 {
    w.as_ref().map_or(1, |w| w.entries())
}
