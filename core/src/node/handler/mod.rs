//! A node's request handling: [`NodeHandler`] routes each request, client
//! or peer, to one function that serves it ([`client`], [`peer`]; the
//! shape of mini-redis's `cmd/`). The connection layer
//! ([`crate::server`]) calls it; it knows nothing of sockets.

pub mod client;
pub mod peer;

use std::sync::Arc;
use std::time::Duration;

use isthmus_client::wire::{ErrorCode, RequestBody, ResponseBody, WireError};
use parking_lot::RwLock;
use tokio::sync::watch;

pub use client::{decode_context, to_response};

use super::NodeRepairer;
use super::movement::Movement;
use crate::coordinator::Coordinator;
use crate::gossip::service::{GossipTransport, Gossiper};
use crate::hints::{HintQueue, HintSink};
use crate::model::Consistency;
use crate::peer::{PeerRequest, PeerResponse};

use crate::server::{Handler, PeerIdentity};
use crate::store::LocalStore;
use crate::system_keyspace::RegistryHook;

/// Serves client and peer requests of one node.
pub struct NodeHandler<S, T: GossipTransport, H> {
    pub(super) coordinator: Arc<Coordinator<S, T, Arc<H>>>,
    pub(super) hints: Arc<H>,
    pub(super) gossiper: Arc<Gossiper<T>>,
    pub(super) keyspaces: Arc<RwLock<crate::model::KeyspaceMap>>,
    pub(super) repairer: Arc<NodeRepairer<S, T>>,
    pub(super) movement: Movement<crate::repair::StoreData<S, Arc<crate::replica::Replica<S>>>, T>,
    pub(super) registry: Option<Arc<dyn RegistryHook>>,
    pub(super) access: super::access::Access,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) requests: crate::ops::RequestMetrics,
}

/// A `BadRequest` answer.
pub(crate) fn bad_request(message: String) -> ResponseBody {
    ResponseBody::Error(WireError {
        code: ErrorCode::BadRequest,
        message,
        acks: None,
        needs: None,
    })
}

impl<S, T, H> NodeHandler<S, T, H>
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    /// The level a request asked for, else its keyspace's default.
    fn level(&self, keyspace: &str, asked: Option<Consistency>) -> Consistency {
        asked.unwrap_or_else(|| {
            self.keyspaces
                .read()
                .get(keyspace)
                .map_or(Consistency::LocalQuorum, |k| k.consistency)
        })
    }
}

impl<S, T, H> Handler for NodeHandler<S, T, H>
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    async fn authenticate(
        &self,
        credentials: Option<isthmus_client::wire::Credentials>,
        certificate: Option<isthmus_client::tls::CertIdentity>,
    ) -> Result<crate::auth::Principal, WireError> {
        self.access.authenticate(credentials, certificate).await
    }

    async fn handle(
        &self,
        principal: &crate::auth::Principal,
        body: RequestBody,
        deadline: Duration,
    ) -> ResponseBody {
        let started = std::time::Instant::now();
        let (op, keyspace, level) = self.labels(&body);
        let answer = self.serve(principal, body, deadline).await;
        self.requests.observe(
            crate::ops::metrics::RequestLabels {
                op,
                keyspace,
                level: crate::ops::metrics::level_label(level),
                outcome: crate::ops::metrics::outcome_label(&answer),
            },
            started.elapsed(),
        );
        answer
    }

    async fn handle_peer(
        &self,
        from: PeerIdentity,
        body: PeerRequest,
        deadline: Duration,
    ) -> PeerResponse {
        match body {
            PeerRequest::Gossip { digest, entries } => {
                peer::gossip(self, &from.node, &digest, entries)
            }
            PeerRequest::Repair(request) => peer::repair(self, &from.node, request).await,
            PeerRequest::Ship { from_dc, batch } => peer::ship(self, &from, &from_dc, &batch).await,
            data => peer::data(self, data, deadline).await,
        }
    }
}

impl<S, T, H> NodeHandler<S, T, H>
where
    S: LocalStore + Clone,
    T: GossipTransport,
    H: HintQueue + HintSink,
{
    /// A request's metric labels: operation, keyspace (a configured one,
    /// else `-`, so clients cannot grow the label set) and level (the
    /// keyspace's default when the request names none).
    fn labels(&self, body: &RequestBody) -> (&'static str, String, Option<Consistency>) {
        let data = |op, keyspace: &String, asked: &Option<Consistency>| {
            // One look at the keyspaces for both the label and the level.
            match self.keyspaces.read().get(keyspace.as_str()) {
                Some(known) => (
                    op,
                    keyspace.clone(),
                    Some(asked.unwrap_or(known.consistency)),
                ),
                None => (
                    op,
                    "-".to_owned(),
                    Some(asked.unwrap_or(Consistency::LocalQuorum)),
                ),
            }
        };
        let other = |op| (op, "-".to_owned(), None);
        match body {
            RequestBody::Get {
                keyspace,
                consistency,
                ..
            } => data("get", keyspace, consistency),
            RequestBody::Put {
                keyspace,
                consistency,
                ..
            } => data("put", keyspace, consistency),
            RequestBody::Delete {
                keyspace,
                consistency,
                ..
            } => data("delete", keyspace, consistency),
            RequestBody::Status => other("status"),
            RequestBody::Repair { .. } => other("repair"),
            RequestBody::Decommission => other("decommission"),
            RequestBody::Cancel => other("cancel"),
            RequestBody::Registry(_) => other("registry"),
            RequestBody::Quarantine(_) => other("quarantine"),
            RequestBody::User(_) => other("user"),
            RequestBody::Operations(_) => other("operations"),
            RequestBody::Rebuild { .. } => other("rebuild"),
            RequestBody::MergeStats => other("merge_stats"),
            RequestBody::Scan { keyspace, .. } => data("scan", keyspace, &Some(Consistency::One)),
        }
    }

    /// Serve one client request (after its permission check).
    async fn serve(
        &self,
        principal: &crate::auth::Principal,
        body: RequestBody,
        deadline: Duration,
    ) -> ResponseBody {
        if let Err(refusal) = self.access.check(principal, &body) {
            return ResponseBody::Error(refusal);
        }
        if let RequestBody::Get { keyspace, .. }
        | RequestBody::Put { keyspace, .. }
        | RequestBody::Delete { keyspace, .. }
        | RequestBody::Scan { keyspace, .. } = &body
            && crate::system_keyspace::is_system(keyspace)
        {
            return bad_request(format!(
                "keyspace {keyspace:?} is a system keyspace; use the registry requests"
            ));
        }
        match body {
            RequestBody::Get {
                keyspace,
                key,
                consistency,
            } => client::get(self, keyspace, key, consistency, deadline).await,
            RequestBody::Put {
                keyspace,
                key,
                value,
                context,
                consistency,
                write_id,
                mode,
                expiry,
                sloppy,
            } => {
                let write = client::Write {
                    keyspace,
                    key,
                    value: Some(value),
                    context,
                    consistency,
                    write_id,
                    mode,
                    expiry,
                    sloppy,
                };
                client::write(self, write, deadline).await
            }
            RequestBody::Delete {
                keyspace,
                key,
                context,
                consistency,
                write_id,
                sloppy,
            } => {
                let write = client::Write {
                    keyspace,
                    key,
                    value: None,
                    context,
                    consistency,
                    write_id,
                    mode: isthmus_client::wire::WriteMode::Context,
                    expiry: isthmus_client::wire::Expiry::KeyspaceDefault,
                    sloppy,
                };
                client::write(self, write, deadline).await
            }
            RequestBody::Scan {
                keyspace,
                cursor,
                count,
            } => {
                // Boxed, as it is the largest of these futures after a
                // write's: every request would carry its size.
                Box::pin(client::scan(self, keyspace, cursor, count, deadline)).await
            }
            RequestBody::Status => client::status(self),
            RequestBody::Repair {
                keyspace,
                remote_dc,
            } => client::repair(self, keyspace, remote_dc).await,
            RequestBody::Decommission => client::decommission(self).await,
            RequestBody::Rebuild { from_dc } => client::rebuild(self, from_dc).await,
            RequestBody::Operations(request) => client::operations(self, request),
            RequestBody::Cancel => ResponseBody::Cancelled {
                operation: self.repairer.cancel().map(str::to_owned),
            },
            RequestBody::Registry(request) => client::registry(self, request, deadline).await,
            RequestBody::Quarantine(request) => client::quarantine(self, request).await,
            RequestBody::MergeStats => client::merge_stats(self),
            RequestBody::User(request) => match &self.access.users {
                Some(users) => match crate::auth::serve(users, request).await {
                    Ok(answer) => ResponseBody::User(answer),
                    Err(e) => ResponseBody::Error(e.to_wire()),
                },
                None => bad_request("this node keeps no users".into()),
            },
        }
    }
}
