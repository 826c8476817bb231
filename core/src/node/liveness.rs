//! Whether a node's data may still be served after time away.
//!
//! Compaction drops a tombstone once it is older than the grace period
//! (`tombstone_grace_ms`). A replica that was down longer than that may
//! hold values whose deletes the other replicas have since dropped, and
//! repair, read repair or the bridge would bring those values back to
//! life. So a node records when it was last up (`data_dir/ALIVE`,
//! rewritten every tenth of the grace, at most every minute); one that
//! starts after more than [`STALE_SHARE`] of the grace since then sets
//! its replica data aside (`data` renamed `data.stale-<ms>`, for the
//! operator to inspect or delete) and rebuilds it: an in-DC repair of all
//! its ranges with every live replica, then a full sync from each other
//! datacenter its keyspaces replicate to. `data_dir/REBUILD` marks a
//! rebuild owed until it has finished, so a node that stops midway
//! resumes it. Its hints and its bridge outbox are kept: they hold writes
//! owed to others, which were never deleted.
//!
//! While it rebuilds, the node serves as a replica with what it has
//! streamed so far: a read at ONE that lands on it may miss a value (as
//! on any replica that has not caught up), but nothing deleted reappears.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::NodeError;
use crate::fs::{Fs, StdFs};
use crate::model::DcName;
use crate::repair::{Partners, RepairData, Share};
use crate::transport::Transport;
use crate::wall_clock::now_ms;
use crate::worker::WorkerHandle;

/// The file holding when the node was last up (milliseconds since the
/// Unix epoch, as text).
pub const ALIVE_FILE: &str = "ALIVE";
/// Present while a rebuild is owed.
pub const REBUILD_FILE: &str = "REBUILD";
/// Share of the grace period past which a node's data is stale: the rest
/// covers the time between two writes of the alive mark and clocks a
/// little apart.
pub const STALE_SHARE: f64 = 0.8;

/// What [`on_start`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// First start, or back within the grace period: serve as is.
    Fresh,
    /// A rebuild is owed.
    Rebuild {
        /// Where the stale data went, when this start moved it.
        set_aside: Option<PathBuf>,
    },
}

/// Judge the data directory before the engine opens `data`: set the data
/// aside when the node was away past the grace period, and say whether a
/// rebuild is owed. Then mark the node up.
pub fn on_start(data_dir: &Path, grace: Duration, now: u64) -> Result<Start, NodeError> {
    let bad = |reason: String| NodeError::DataDir {
        path: data_dir.to_owned(),
        reason,
    };
    let data = data_dir.join("data");
    let start = if data_dir.join(REBUILD_FILE).exists() {
        Start::Rebuild { set_aside: None }
    } else {
        match last_alive(data_dir).map_err(|e| bad(e.to_string()))? {
            Some(last) if away_too_long(last, now, grace) && data.exists() => {
                let aside = data_dir.join(format!("data.stale-{now}"));
                StdFs
                    .write_atomic(&data_dir.join(REBUILD_FILE), b"owed\n")
                    .map_err(|e| bad(format!("{REBUILD_FILE}: {e}")))?;
                std::fs::rename(&data, &aside)
                    .map_err(|e| bad(format!("setting aside {}: {e}", data.display())))?;
                sync_dir(data_dir).map_err(|e| bad(e.to_string()))?;
                tracing::warn!(
                    away_ms = now.saturating_sub(last),
                    grace_ms = grace.as_millis() as u64,
                    set_aside = %aside.display(),
                    "this node was down longer than the tombstone grace period: its data is set \
                     aside and will be rebuilt from its peers"
                );
                Start::Rebuild {
                    set_aside: Some(aside),
                }
            }
            _ => Start::Fresh,
        }
    };
    mark_alive(data_dir, now).map_err(|e| bad(e.to_string()))?;
    Ok(start)
}

/// Down for longer than [`STALE_SHARE`] of `grace`.
fn away_too_long(last: u64, now: u64, grace: Duration) -> bool {
    let limit = (grace.as_millis() as f64 * STALE_SHARE) as u64;
    now.saturating_sub(last) > limit
}

/// When the node was last marked up, if ever. A mark that does not parse
/// counts as none only when the file is empty (a crash before its first
/// write); anything else is an error rather than a guess.
fn last_alive(data_dir: &Path) -> std::io::Result<Option<u64>> {
    match std::fs::read_to_string(data_dir.join(ALIVE_FILE)) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => text.trim().parse().map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{ALIVE_FILE} holds {text:?}: {e}"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn mark_alive(data_dir: &Path, now: u64) -> std::io::Result<()> {
    StdFs.write_atomic(&data_dir.join(ALIVE_FILE), format!("{now}\n").as_bytes())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// How often the alive mark is rewritten: a tenth of the grace, between
/// 100 ms and a minute.
pub fn mark_interval(grace: Duration) -> Duration {
    (grace / 10).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// The worker that keeps the alive mark fresh until `stop`.
pub async fn keep_alive(
    data_dir: PathBuf,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
    worker: WorkerHandle,
) {
    let every = mark_interval(grace);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let dir = data_dir.clone();
        match tokio::task::spawn_blocking(move || mark_alive(&dir, now_ms())).await {
            Ok(Ok(())) => worker.idle(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not write the alive mark");
                worker.failed(e);
            }
            Err(e) => worker.failed(e),
        }
    }
}

/// The rebuild worker: once the node knows its ring and some peer is up,
/// repair every range with every live replica in the datacenter, then
/// full-sync from each of `remote_dcs`; retried until a whole pass syncs
/// every range, then the mark is removed.
pub async fn rebuild<D, T>(
    data_dir: PathBuf,
    repairer: Arc<crate::repair::Repairer<D, T>>,
    remote_dcs: Vec<DcName>,
    mut stop: watch::Receiver<bool>,
    worker: WorkerHandle,
) where
    D: RepairData,
    T: Transport,
{
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(30));
        let ready = {
            let view = repairer.view();
            let view = view.borrow();
            view.ring
                .nodes_in(repairer.dc())
                .any(|n| n == repairer.me())
                && view.alive.iter().any(|n| n != repairer.me())
        };
        if !ready {
            continue;
        }
        worker.busy();
        let turn = repairer.admin("a rebuild").await;
        let op =
            repairer
                .operations()
                .start(isthmus_client::wire::OperationKind::Rebuild, None, None);
        // An operator's cancel stops this pass; the next one runs later.
        let pass = turn
            .run(async {
                let mut failed = 0;
                match repairer
                    .repair_dc_with(None, Partners::All, op.progress())
                    .await
                {
                    Ok(stats) => {
                        tracing::info!(%stats, "rebuild: in-datacenter repair done");
                        failed += stats.ranges_failed;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "rebuild: in-datacenter repair failed");
                        failed += 1;
                    }
                }
                for dc in &remote_dcs {
                    match repairer
                        .full_sync_with(None, dc, Share::Primary, op.progress())
                        .await
                    {
                        Ok(stats) => {
                            tracing::info!(%dc, %stats, "rebuild: full sync done");
                            failed += stats.ranges_failed;
                        }
                        Err(e) => {
                            tracing::warn!(%dc, error = %e, "rebuild: full sync failed");
                            failed += 1;
                        }
                    }
                }
                Ok(failed)
            })
            .await;
        match &pass {
            Ok(0) => op.done(),
            Ok(n) => op.failed(format!("{n} ranges or datacenters not rebuilt; retrying")),
            Err(_) => op.finish_with(&pass),
        }
        drop(turn);
        let failed = pass.unwrap_or(1);
        if failed > 0 {
            worker.failed(format!(
                "{failed} ranges or datacenters not rebuilt; retrying"
            ));
            continue;
        }
        let path = data_dir.join(REBUILD_FILE);
        let removed = tokio::task::spawn_blocking(move || {
            std::fs::remove_file(&path)?;
            sync_dir(path.parent().unwrap_or(Path::new(".")))
        })
        .await;
        match removed {
            Ok(Ok(())) => {
                tracing::info!("rebuild finished: this node's data is whole again");
                worker.idle();
                return;
            }
            Ok(Err(e)) => worker.failed(format!("removing {REBUILD_FILE}: {e}")),
            Err(e) => worker.failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_away_past_the_grace_sets_its_data_aside_once() {
        let dir = tempfile::tempdir().unwrap();
        let grace = Duration::from_secs(10);
        assert_eq!(on_start(dir.path(), grace, 1_000).unwrap(), Start::Fresh);
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/table"), b"old").unwrap();
        // Back within the grace: nothing moves.
        assert_eq!(on_start(dir.path(), grace, 8_000).unwrap(), Start::Fresh);
        assert!(dir.path().join("data/table").exists());
        // Away past it: the data goes aside, a rebuild is owed.
        let start = on_start(dir.path(), grace, 8_000 + 9_000).unwrap();
        let aside = dir.path().join("data.stale-17000");
        assert_eq!(
            start,
            Start::Rebuild {
                set_aside: Some(aside.clone())
            }
        );
        assert_eq!(std::fs::read(aside.join("table")).unwrap(), b"old");
        assert!(!dir.path().join("data").exists());
        // Restarted before the rebuild finished: still owed, nothing more
        // moved.
        std::fs::create_dir(dir.path().join("data")).unwrap();
        assert_eq!(
            on_start(dir.path(), grace, 18_000).unwrap(),
            Start::Rebuild { set_aside: None }
        );
        assert!(dir.path().join("data").exists());
    }

    #[test]
    fn a_corrupt_alive_mark_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ALIVE_FILE), b"yesterday").unwrap();
        assert!(on_start(dir.path(), Duration::from_secs(10), 1).is_err());
        std::fs::write(dir.path().join(ALIVE_FILE), b"").unwrap();
        assert_eq!(
            on_start(dir.path(), Duration::from_secs(10), 1).unwrap(),
            Start::Fresh
        );
    }
}
