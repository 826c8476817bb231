//! A node's long work as operations: repair, full sync, decommission, join
//! and rebuild each get an id, a kind, a state and live progress, kept in
//! a per-node table ([`Operations`]) that the client protocol
//! (`RequestBody::Operations`), the operations listener
//! (`GET /api/v1/operations`) and `/metrics` read.
//!
//! The table keeps every running operation and the last
//! [`FINISHED_KEPT`] finished ones; nothing of it is persisted (a
//! restarted node starts an empty table, and ids start from its clock, so
//! an id from before a restart names nothing rather than another
//! operation).
//!
//! What it is not: a scheduler. Who may run what, and when, is the
//! repairer's administrative slot ([`super::AdminTurn`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use isthmus_client::wire::{OperationInfo, OperationKind, OperationState, RepairReport};
use parking_lot::Mutex;

use super::{RepairError, RepairStats};
use crate::wall_clock::now_ms;

/// Finished operations a node remembers (the running ones are always
/// kept).
pub const FINISHED_KEPT: usize = 32;

/// Live figures of one operation, updated by every range sync it runs.
#[derive(Debug, Default)]
pub struct Progress {
    ranges_total: AtomicU64,
    ranges: AtomicU64,
    ranges_failed: AtomicU64,
    keys_differing: AtomicU64,
    keys_pulled: AtomicU64,
    keys_pushed: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    /// Add `n` range syncs to the plan.
    pub fn plan(&self, n: u64) {
        self.ranges_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Count what range syncs did.
    pub fn add(&self, s: &RepairStats) {
        self.ranges.fetch_add(s.ranges, Ordering::Relaxed);
        self.ranges_failed
            .fetch_add(s.ranges_failed, Ordering::Relaxed);
        self.keys_differing
            .fetch_add(s.keys_differing, Ordering::Relaxed);
        self.keys_pulled.fetch_add(s.keys_pulled, Ordering::Relaxed);
        self.keys_pushed.fetch_add(s.keys_pushed, Ordering::Relaxed);
        self.bytes.fetch_add(s.bytes, Ordering::Relaxed);
    }

    /// Range syncs planned so far.
    pub fn total(&self) -> u64 {
        self.ranges_total.load(Ordering::Relaxed)
    }

    /// The figures so far.
    pub fn report(&self) -> RepairReport {
        RepairReport {
            ranges: self.ranges.load(Ordering::Relaxed),
            ranges_failed: self.ranges_failed.load(Ordering::Relaxed),
            keys_differing: self.keys_differing.load(Ordering::Relaxed),
            keys_pulled: self.keys_pulled.load(Ordering::Relaxed),
            keys_pushed: self.keys_pushed.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A running operation's entry.
struct Entry {
    kind: OperationKind,
    keyspace: Option<String>,
    dc: Option<String>,
    started_ms: u64,
    progress: Arc<Progress>,
}

impl Entry {
    fn info(&self, id: u64) -> OperationInfo {
        OperationInfo {
            id,
            kind: self.kind,
            keyspace: self.keyspace.clone(),
            dc: self.dc.clone(),
            state: OperationState::Running,
            started_ms: self.started_ms,
            finished_ms: None,
            ranges_total: self.progress.total(),
            progress: self.progress.report(),
            error: None,
        }
    }
}

#[derive(Default)]
struct Table {
    running: BTreeMap<u64, Entry>,
    finished: VecDeque<OperationInfo>,
}

/// A node's table of operations.
pub struct Operations {
    next_id: AtomicU64,
    table: Mutex<Table>,
}

impl Default for Operations {
    fn default() -> Self {
        Operations::starting_at(now_ms())
    }
}

impl Operations {
    /// A table whose first id is `first` (the node's clock at start, so
    /// ids from before a restart are not reused).
    pub fn starting_at(first: u64) -> Self {
        Operations {
            next_id: AtomicU64::new(first.max(1)),
            table: Mutex::default(),
        }
    }

    /// Start an operation: it is listed as running until its [`Operation`]
    /// finishes or is dropped.
    pub fn start(
        self: &Arc<Self>,
        kind: OperationKind,
        keyspace: Option<String>,
        dc: Option<String>,
    ) -> Operation {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress::default());
        self.table.lock().running.insert(
            id,
            Entry {
                kind,
                keyspace,
                dc,
                started_ms: now_ms(),
                progress: progress.clone(),
            },
        );
        Operation {
            id,
            table: self.clone(),
            progress,
            finished: false,
        }
    }

    /// Every operation remembered: the finished ones, then the running
    /// ones, each by id (oldest first).
    pub fn list(&self) -> Vec<OperationInfo> {
        let table = self.table.lock();
        let mut out: Vec<OperationInfo> = table.finished.iter().cloned().collect();
        out.extend(table.running.iter().map(|(id, e)| e.info(*id)));
        out.sort_by_key(|o| o.id);
        out
    }

    /// One operation by id.
    pub fn get(&self, id: u64) -> Option<OperationInfo> {
        let table = self.table.lock();
        if let Some(e) = table.running.get(&id) {
            return Some(e.info(id));
        }
        table.finished.iter().find(|o| o.id == id).cloned()
    }

    /// Running operations of `kind`.
    pub fn running(&self, kind: OperationKind) -> usize {
        self.table
            .lock()
            .running
            .values()
            .filter(|e| e.kind == kind)
            .count()
    }

    fn finish(&self, id: u64, state: OperationState, error: Option<String>) {
        let mut table = self.table.lock();
        let Some(entry) = table.running.remove(&id) else {
            return;
        };
        let info = OperationInfo {
            state,
            finished_ms: Some(now_ms()),
            error,
            ..entry.info(id)
        };
        tracing::info!(
            id,
            kind = info.kind.name(),
            state = state.name(),
            ranges = info.progress.ranges,
            ranges_failed = info.progress.ranges_failed,
            bytes = info.progress.bytes,
            "operation finished"
        );
        table.finished.push_back(info);
        while table.finished.len() > FINISHED_KEPT {
            table.finished.pop_front();
        }
    }
}

/// One running operation: count its work through [`Operation::progress`],
/// then finish it. Dropped unfinished (its task ended: the node is
/// stopping), it is recorded as failed.
pub struct Operation {
    id: u64,
    table: Arc<Operations>,
    progress: Arc<Progress>,
    finished: bool,
}

impl Operation {
    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where its range syncs count.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Its entry now.
    pub fn info(&self) -> OperationInfo {
        self.table
            .get(self.id)
            .expect("a running operation is in its table")
    }

    /// It finished its plan.
    pub fn done(mut self) {
        self.finish(OperationState::Done, None);
    }

    /// It stopped short, for `reason`.
    pub fn failed(mut self, reason: impl std::fmt::Display) {
        self.finish(OperationState::Failed, Some(reason.to_string()));
    }

    /// Finish with `result`: done, cancelled ([`RepairError::Cancelled`])
    /// or failed.
    pub fn finish_with<R>(mut self, result: &Result<R, RepairError>) {
        match result {
            Ok(_) => self.finish(OperationState::Done, None),
            Err(e @ RepairError::Cancelled { .. }) => {
                self.finish(OperationState::Cancelled, Some(e.to_string()))
            }
            Err(e) => self.finish(OperationState::Failed, Some(e.to_string())),
        }
    }

    fn finish(&mut self, state: OperationState, error: Option<String>) {
        self.finished = true;
        self.table.finish(self.id, state, error);
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if !self.finished {
            self.table.finish(
                self.id,
                OperationState::Failed,
                Some("stopped before it finished (the node is stopping)".into()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_report_progress_and_keep_a_bounded_history() {
        let table = Arc::new(Operations::starting_at(100));
        let op = table.start(OperationKind::FullSync, None, Some("dc2".into()));
        assert_eq!(op.id(), 100);
        op.progress().plan(10);
        op.progress().add(&RepairStats {
            ranges: 3,
            ranges_failed: 1,
            keys_pulled: 7,
            bytes: 900,
            ..RepairStats::default()
        });
        let info = table.get(100).unwrap();
        assert_eq!(info.state, OperationState::Running);
        assert_eq!((info.ranges_total, info.progress.ranges), (10, 3));
        assert_eq!((info.progress.keys_pulled, info.progress.bytes), (7, 900));
        assert_eq!(table.running(OperationKind::FullSync), 1);
        op.finish_with::<()>(&Err(RepairError::Cancelled {
            what: "a full sync",
        }));
        let info = table.get(100).unwrap();
        assert_eq!(info.state, OperationState::Cancelled);
        assert!(info.finished_ms.is_some() && info.error.is_some());
        assert_eq!(table.running(OperationKind::FullSync), 0);

        // A dropped operation is failed, not left running.
        drop(table.start(OperationKind::Join, None, None));
        assert_eq!(table.get(101).unwrap().state, OperationState::Failed);

        // Past the bound, the oldest finished ones are forgotten; a
        // running one never is.
        let running = table.start(OperationKind::Decommission, None, None);
        for _ in 0..FINISHED_KEPT + 5 {
            table.start(OperationKind::Repair, None, None).done();
        }
        let list = table.list();
        assert_eq!(list.len(), FINISHED_KEPT + 1);
        assert!(table.get(100).is_none());
        assert!(list.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(
            list.iter()
                .filter(|o| o.state == OperationState::Running)
                .map(|o| o.id)
                .collect::<Vec<_>>(),
            vec![running.id()]
        );
    }
}
