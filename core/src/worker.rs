//! A node's background workers: every loop a named task with a status an
//! operator can read (running or idle, runs, the last run and the last
//! error) and an owner that stops it within a bound (the shape of garage's
//! `Worker`).
//!
//! A loop reports through its [`WorkerHandle`]: [`WorkerHandle::busy`]
//! when a unit of work starts, [`WorkerHandle::idle`] when it ends (or
//! [`WorkerHandle::failed`] with what went wrong). [`Workers`] owns the
//! tasks; [`Workers::shutdown`] waits for each until a deadline, then
//! aborts what is left, so a stuck loop cannot hold a node's shutdown.

use crate::wall_clock::now_ms;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// What a worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// In a unit of work.
    Busy,
    /// Waiting for its next unit of work.
    Idle,
    /// The task ended (the node is stopping, or its work is done).
    Done,
    /// The task panicked or was aborted.
    Dead,
}

impl WorkerState {
    /// Lower-case name (metric label, JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Busy => "busy",
            WorkerState::Idle => "idle",
            WorkerState::Done => "done",
            WorkerState::Dead => "dead",
        }
    }
}

/// A worker's status as an operator reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    /// The worker's name (several may share one: a shipper per DC).
    pub name: String,
    /// What it is doing.
    pub state: WorkerState,
    /// Units of work begun.
    pub runs: u64,
    /// Wall-clock milliseconds when the last unit of work began.
    pub last_run_ms: Option<u64>,
    /// The last failure it reported, with when (wall-clock milliseconds).
    pub last_error: Option<(u64, String)>,
}

/// How a loop reports its status. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerHandle(Arc<Mutex<WorkerStatus>>);

impl WorkerHandle {
    fn new(name: &str) -> Self {
        WorkerHandle(Arc::new(Mutex::new(WorkerStatus {
            name: name.to_owned(),
            state: WorkerState::Idle,
            runs: 0,
            last_run_ms: None,
            last_error: None,
        })))
    }

    /// A handle that belongs to no registry (for loops run on their own,
    /// in tests).
    pub fn detached(name: &str) -> Self {
        Self::new(name)
    }

    /// A unit of work begins.
    pub fn busy(&self) {
        let mut s = self.0.lock();
        s.state = WorkerState::Busy;
        s.runs += 1;
        s.last_run_ms = Some(now_ms());
    }

    /// The unit of work ended well; waiting for the next.
    pub fn idle(&self) {
        self.0.lock().state = WorkerState::Idle;
    }

    /// The unit of work failed with `error`; waiting for the next.
    pub fn failed(&self, error: impl std::fmt::Display) {
        let mut s = self.0.lock();
        s.state = WorkerState::Idle;
        s.last_error = Some((now_ms(), error.to_string()));
    }

    /// The status now.
    pub fn status(&self) -> WorkerStatus {
        self.0.lock().clone()
    }

    fn ended(&self, state: WorkerState, error: Option<String>) {
        let mut s = self.0.lock();
        s.state = state;
        if let Some(e) = error {
            s.last_error = Some((now_ms(), e));
        }
    }
}

/// The workers of one node.
#[derive(Default)]
pub struct Workers {
    tasks: Mutex<Vec<(WorkerHandle, JoinHandle<()>)>>,
}

impl Workers {
    /// No workers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawn `make(handle)` as the worker `name`.
    pub fn spawn<F, Fut>(&self, name: &str, make: F)
    where
        F: FnOnce(WorkerHandle) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = WorkerHandle::new(name);
        let task = tokio::spawn(make(handle.clone()));
        self.tasks.lock().push((handle, task));
    }

    /// Take over a task spawned elsewhere (a plug-in's, such as the
    /// bridge's) as the worker `name`: its state is what the registry can
    /// see from outside (running or ended).
    pub fn adopt(&self, name: &str, task: JoinHandle<()>) {
        let handle = WorkerHandle::new(name);
        handle.0.lock().state = WorkerState::Busy;
        self.tasks.lock().push((handle, task));
    }

    /// Every worker's status, in the order they were started.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        let tasks = self.tasks.lock();
        tasks
            .iter()
            .map(|(handle, task)| {
                if task.is_finished() {
                    let mut s = handle.status();
                    if !matches!(s.state, WorkerState::Done | WorkerState::Dead) {
                        s.state = WorkerState::Done;
                    }
                    s
                } else {
                    handle.status()
                }
            })
            .collect()
    }

    /// Wait for every worker to end (the caller has told them to stop),
    /// each until `deadline` has passed since the call; abort those that
    /// have not by then.
    pub async fn shutdown(&self, deadline: Duration) {
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        let until = tokio::time::Instant::now() + deadline;
        for (handle, mut task) in tasks {
            let name = handle.status().name;
            match tokio::time::timeout_at(until, &mut task).await {
                Ok(Ok(())) => handle.ended(WorkerState::Done, None),
                Ok(Err(e)) => {
                    tracing::warn!(worker = %name, error = %e, "worker ended abnormally");
                    handle.ended(WorkerState::Dead, Some(e.to_string()));
                }
                Err(_) => {
                    tracing::warn!(worker = %name, "worker did not stop in time; aborted");
                    task.abort();
                    handle.ended(WorkerState::Dead, Some("aborted at shutdown".into()));
                }
            }
        }
    }

    /// Abort every worker at once (a node dropped without shutdown).
    pub fn abort_all(&self) {
        for (_, task) in self.tasks.lock().iter() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statuses_follow_the_loops_and_shutdown_is_bounded() {
        let workers = Workers::new();
        let (go, mut wait) = tokio::sync::watch::channel(false);
        workers.spawn("polite", |h| async move {
            h.busy();
            h.failed("disk on fire");
            let _ = wait.changed().await;
        });
        workers.spawn("stuck", |h| async move {
            h.busy();
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = workers.statuses();
        assert_eq!(s[0].name, "polite");
        assert_eq!(s[0].state, WorkerState::Idle);
        assert_eq!(s[0].runs, 1);
        assert!(s[0].last_run_ms.is_some());
        assert_eq!(s[0].last_error.as_ref().unwrap().1, "disk on fire");
        assert_eq!(s[1].state, WorkerState::Busy);
        let _ = go.send(true);
        let started = std::time::Instant::now();
        workers.shutdown(Duration::from_millis(200)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(workers.statuses().is_empty());
    }

    #[tokio::test]
    async fn an_adopted_task_shows_running_then_done() {
        let workers = Workers::new();
        let (go, mut wait) = tokio::sync::watch::channel(false);
        workers.adopt(
            "plug-in",
            tokio::spawn(async move {
                let _ = wait.changed().await;
            }),
        );
        assert_eq!(workers.statuses()[0].state, WorkerState::Busy);
        let _ = go.send(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(workers.statuses()[0].state, WorkerState::Done);
        workers.shutdown(Duration::from_secs(1)).await;
    }
}
