//! The bridge's full-sync hook: when a node's outbox overflowed, the
//! bridge asks for a Merkle full sync with the datacenter it cut loose.

use std::sync::{OnceLock, Weak};

use crate::bridge::{BoxFuture, FullSync};
use crate::model::DcName;
use crate::repair::{RepairData, Repairer, Share};
use crate::transport::Transport;

/// Merkle full sync against another DC, for the bridge. It holds the
/// repairer weakly: the repairer holds the replica, the coordinator owns
/// the bridge, which owns this.
pub(super) struct NodeFullSync<D, T> {
    pub(super) repairer: OnceLock<Weak<Repairer<D, T>>>,
}

impl<D, T> Default for NodeFullSync<D, T> {
    fn default() -> Self {
        NodeFullSync {
            repairer: OnceLock::new(),
        }
    }
}

impl<D: RepairData, T: Transport> FullSync for NodeFullSync<D, T> {
    fn full_sync<'a>(&'a self, dc: &'a DcName) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(repairer) = self.repairer.get().and_then(|w| w.upgrade()) else {
                return Err("the node is stopping".to_owned());
            };
            // The writes the outbox dropped were coordinated here, so on
            // keys this node replicates: sync all of them, not only the
            // pieces it is primary for.
            // Cancelled by an operator, it stays owed and runs again.
            let turn = repairer.admin("a full sync the bridge owes").await;
            let op = repairer.operations().start(
                isthmus_client::wire::OperationKind::FullSync,
                None,
                Some(dc.0.to_string()),
            );
            let result = turn
                .run(repairer.full_sync_with(None, dc, Share::Replicated, op.progress()))
                .await;
            op.finish_with(&result);
            let stats = result.map_err(|e| e.to_string())?;
            tracing::info!(%dc, %stats, "full-sync ranges synced");
            match stats.ranges_failed {
                0 => Ok(()),
                n => Err(format!("{n} ranges could not be synced with {dc}")),
            }
        })
    }
}
