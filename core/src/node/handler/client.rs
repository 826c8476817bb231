//! One function per client request.

use std::collections::BTreeMap;
use std::time::Duration;

use isthmus_client::wire::{
    Context, ErrorCode, OperationInfo, OperationsRequest, RegistryRequest, ResponseBody, Sibling,
    WireError, WriteId, WriteMode, decode, encode,
};

pub use isthmus_client::wire::Expiry;

use super::{NodeHandler, bad_request};
use crate::coordinator::CoordinatorError;
use crate::gossip::service::GossipTransport;
use crate::hints::{HintQueue, HintSink};
use crate::limit::{CONTEXT_COUNTER_MAX, CONTEXT_ENTRIES_MAX};
use crate::model::{Clock, Consistency, DcName, VersionSet};
use crate::node::movement::Left;
use crate::node::status;
use crate::repair::RepairError;
use crate::ring::NodeId;
use crate::store::LocalStore;
use crate::wall_clock::now_ms;

/// A client put (`value` is `Some`) or delete (`None`), as it arrived.
pub struct Write {
    /// The keyspace.
    pub keyspace: String,
    /// The key.
    pub key: Vec<u8>,
    /// The value; `None` deletes.
    pub value: Option<Vec<u8>>,
    /// What the client saw.
    pub context: Context,
    /// The level asked for, or the keyspace's default.
    pub consistency: Option<Consistency>,
    /// The client's id for this write.
    pub write_id: WriteId,
    /// Over the context, an overwrite, or conditional (deletes: over the
    /// context).
    pub mode: WriteMode,
    /// When the value expires (deletes: the keyspace default, unused).
    pub expiry: Expiry,
    /// A sloppy or a strict quorum; `None`: the keyspace's default.
    pub sloppy: Option<bool>,
}

/// Decode a client's context: postcard of a [`Clock`], bounded in entries
/// ([`CONTEXT_ENTRIES_MAX`]) and counters ([`CONTEXT_COUNTER_MAX`]).
pub fn decode_context(context: &Context) -> Result<Clock, CoordinatorError> {
    let invalid = |reason: String| CoordinatorError::InvalidContext { reason };
    if context.0.is_empty() {
        return Ok(Clock::new());
    }
    let clock: Clock =
        decode(&context.0).map_err(|e| invalid(format!("undecodable context: {e}")))?;
    if clock.entry_count() > CONTEXT_ENTRIES_MAX {
        return Err(invalid(format!(
            "context of {} entries exceeds {CONTEXT_ENTRIES_MAX}",
            clock.entry_count()
        )));
    }
    let counters = clock
        .vector()
        .values()
        .chain(clock.dots().iter().map(|d| &d.counter));
    if let Some(counter) = counters.copied().find(|&c| c > CONTEXT_COUNTER_MAX) {
        return Err(invalid(format!(
            "context names event {counter}, past the {CONTEXT_COUNTER_MAX} a real history reaches"
        )));
    }
    // Decoding normalised it: a hand-made context cannot carry a clock
    // that absorb would never build.
    Ok(clock)
}

/// The client's view of a set: live siblings and the context covering all.
pub fn to_response(set: &VersionSet) -> ResponseBody {
    let (siblings, context) = client_view(set, now_ms());
    ResponseBody::Value {
        siblings,
        context,
        merge_failure: None,
    }
}

/// A set's siblings live at `now_ms` (values not expired) in canonical
/// order, and the context covering every version of it (expired ones
/// too: a write over it supersedes them).
fn client_view(set: &VersionSet, now_ms: u64) -> (Vec<Sibling>, Context) {
    let siblings = set
        .live_at(now_ms)
        .map(|v| Sibling {
            value: v.value_bytes().unwrap_or_default().to_vec(),
            timestamp_ms: v.timestamp_ms,
            origin_dc: v.origin_dc.0.to_string(),
            expires_ms: v.expires_ms,
        })
        .collect();
    let lub = set.lub();
    let context = if lub.is_empty() {
        Context::default()
    } else {
        Context(encode(&lub))
    };
    (siblings, context)
}

fn shutting_down() -> ResponseBody {
    ResponseBody::Error(WireError {
        code: ErrorCode::Unavailable,
        message: "the node is shutting down".into(),
        acks: None,
        needs: None,
    })
}

/// `Get`: the key's live siblings at the level.
pub async fn get<S, T, H>(
    node: &NodeHandler<S, T, H>,
    keyspace: String,
    key: Vec<u8>,
    consistency: Option<Consistency>,
    deadline: Duration,
) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let level = node.level(&keyspace, consistency);
    match node
        .coordinator
        .read(&keyspace, &key, level, deadline)
        .await
    {
        Ok(answer) => {
            let (siblings, context) = client_view(&answer.set, now_ms());
            ResponseBody::Value {
                siblings,
                context,
                merge_failure: answer.merge_failure,
            }
        }
        Err(e) => ResponseBody::Error(e.to_wire()),
    }
}

/// `Scan`: one page of the keyspace's live keys from the cursor.
pub async fn scan<S, T, H>(
    node: &NodeHandler<S, T, H>,
    keyspace: String,
    cursor: u64,
    count: u32,
    deadline: Duration,
) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let cursor = crate::coordinator::scan::ScanCursor(cursor);
    match node
        .coordinator
        .scan(&keyspace, cursor, count, deadline)
        .await
    {
        Ok(page) => ResponseBody::ScanPage {
            keys: page.keys,
            cursor: page.cursor.0,
        },
        Err(e) => ResponseBody::Error(e.to_wire()),
    }
}

/// `Put` and `Delete`: a write over the client's context at the level.
pub async fn write<S, T, H>(
    node: &NodeHandler<S, T, H>,
    write: Write,
    deadline: Duration,
) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let clock = match decode_context(&write.context) {
        Ok(c) => c,
        Err(e) => return ResponseBody::Error(e.to_wire()),
    };
    let level = node.level(&write.keyspace, write.consistency);
    let request = crate::coordinator::Write {
        keyspace: &write.keyspace,
        key: &write.key,
        value: write.value,
        context: clock,
        write_id: write.write_id.0,
        level,
        mode: write.mode,
        sloppy: write.sloppy,
        expiry: write.expiry,
    };
    let result = node.coordinator.write_request(request, deadline).await;
    match result {
        Ok(None) => ResponseBody::Written,
        Ok(Some(value)) => ResponseBody::Counted { value },
        Err(CoordinatorError::ConditionFailed { current }) => {
            let (siblings, context) = client_view(&current, now_ms());
            ResponseBody::ConditionFailed { siblings, context }
        }
        Err(e) => ResponseBody::Error(e.to_wire()),
    }
}

/// `Status`: the members this node knows and its bridges.
pub fn status<S, T, H>(node: &NodeHandler<S, T, H>) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let keyspaces = node.keyspaces.read().clone();
    let hints: BTreeMap<NodeId, u64> = node.hints.pending().into_iter().collect();
    let nodes = status::nodes(&node.gossiper, &keyspaces, &hints);
    let bridges = node
        .coordinator
        .bridge()
        .map(|b| b.report())
        .unwrap_or_default();
    status::report(nodes, bridges)
}

/// `Repair`: an on-demand repair or full sync, started as an operation
/// and answered at once with it (or refused: another operation holds the
/// node's administrative slot). The work goes on in a task of its own
/// until it ends, an operator cancels it, or the node stops.
pub async fn repair<S, T, H>(
    node: &NodeHandler<S, T, H>,
    keyspace: Option<String>,
    remote_dc: Option<String>,
) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let started = node
        .repairer
        .start_repair(keyspace, remote_dc.map(DcName::from), node.stop.clone())
        .await;
    started_answer(started)
}

/// `Rebuild`: pull every range the node owns from other datacenters, as
/// an operation, answered at once like [`repair`].
pub async fn rebuild<S, T, H>(node: &NodeHandler<S, T, H>, from_dc: Option<String>) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let started = node
        .repairer
        .start_rebuild(from_dc.map(DcName::from), node.stop.clone())
        .await;
    started_answer(started)
}

fn started_answer(started: Result<OperationInfo, RepairError>) -> ResponseBody {
    match started {
        Ok(info) => ResponseBody::Started(info),
        Err(e) => ResponseBody::Error(e.to_wire()),
    }
}

/// `Decommission`: leave the ring, handing every range to its next
/// owners, as an operation answered at once. It runs as its own task: a
/// client that goes away does not stop a decommission halfway.
pub async fn decommission<S, T, H>(node: &NodeHandler<S, T, H>) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let movement = node.movement.clone();
    let (started, answer) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        match movement.leave(started).await {
            Ok(Left::Done(stats)) => tracing::info!(%stats, "decommission done"),
            Ok(Left::Incomplete(stats)) => {
                tracing::warn!(%stats, "decommission incomplete; still a member")
            }
            Err(e) => tracing::warn!(error = %e, "decommission stopped"),
        }
    });
    match answer.await {
        Ok(started) => started_answer(started),
        Err(_) => shutting_down(),
    }
}

/// `Operations`: the node's long work, all of it or one by id.
pub fn operations<S, T, H>(node: &NodeHandler<S, T, H>, request: OperationsRequest) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let table = node.repairer.operations();
    match request {
        OperationsRequest::List => ResponseBody::Operations(table.list()),
        OperationsRequest::Get { id } => match table.get(id) {
            Some(info) => ResponseBody::Operation(info),
            None => bad_request(format!(
                "no operation {id} on this node (a wrong id, one forgotten, or the node restarted)"
            )),
        },
    }
}

/// `MergeStats`: this node's merges, failures and their costs since it
/// started, per keyspace and resolver (what `/metrics` exports), for
/// `isthmus resolver list` and `status`.
pub fn merge_stats<S, T, H>(node: &NodeHandler<S, T, H>) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    let figures = node.coordinator.replica().merge_pool().tally().figures();
    ResponseBody::MergeStats(crate::merge::tally::stats_rows(&figures))
}

/// `Registry`: the resolver registry's requests, when the node runs one.
pub async fn registry<S, T, H>(
    node: &NodeHandler<S, T, H>,
    request: RegistryRequest,
    deadline: Duration,
) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    match &node.registry {
        Some(registry) => match registry.serve(request, deadline).await {
            Ok(answer) => ResponseBody::Registry(answer),
            Err(e) => ResponseBody::Error(e),
        },
        None => bad_request("this node runs no resolver registry".into()),
    }
}

/// `Quarantine`: list or replay the records another datacenter refused
/// for good, held by this node's bridge.
pub async fn quarantine<S, T, H>(
    node: &NodeHandler<S, T, H>,
    request: isthmus_client::wire::QuarantineRequest,
) -> ResponseBody
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    match node.coordinator.bridge() {
        Some(bridge) => match bridge.quarantine(request).await {
            Ok(answer) => ResponseBody::Quarantine(answer),
            Err(e) => ResponseBody::Error(e),
        },
        None => bad_request("this node runs no cross-DC bridge".into()),
    }
}
