//! Protocol messages: one definition used by both ends.

use serde::{Deserialize, Serialize};

/// First four bytes of every handshake: "ISTH".
pub const MAGIC: [u8; 4] = *b"ISTH";

/// Version of the message definitions in this module. A node refuses a
/// handshake whose version it does not speak with
/// [`ErrorCode::ProtocolVersion`].
pub const PROTOCOL_VERSION: u16 = 8;

/// How many acknowledgements a request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Consistency {
    /// One replica anywhere.
    One,
    /// One replica in the coordinator's datacenter.
    LocalOne,
    /// A majority of the replicas in the coordinator's datacenter.
    LocalQuorum,
    /// A majority of all replicas across datacenters.
    Quorum,
    /// A majority of the replicas in every datacenter.
    EachQuorum,
    /// Every replica.
    All,
}

impl Consistency {
    /// Every level, for parsers and help texts.
    pub const ALL_LEVELS: [Consistency; 6] = [
        Consistency::One,
        Consistency::LocalOne,
        Consistency::LocalQuorum,
        Consistency::Quorum,
        Consistency::EachQuorum,
        Consistency::All,
    ];

    /// The level's name as written in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::One => "ONE",
            Consistency::LocalOne => "LOCAL_ONE",
            Consistency::LocalQuorum => "LOCAL_QUORUM",
            Consistency::Quorum => "QUORUM",
            Consistency::EachQuorum => "EACH_QUORUM",
            Consistency::All => "ALL",
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Consistency::ALL_LEVELS
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Consistency::ALL_LEVELS.iter().map(|c| c.name()).collect();
                format!(
                    "unknown consistency level {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// Who opens a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRole {
    /// An application using the client SDK or the CLI.
    Client,
    /// Another node of the cluster.
    Node,
}

/// The opening frame from the connecting side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// Client or node.
    pub role: PeerRole,
    /// Free-form name for logs (client name or node id).
    pub name: String,
    /// A client's user and password (sent only over TLS); `None` for
    /// nodes, for clients that authenticate by certificate, and for
    /// anonymous clients.
    pub credentials: Option<super::Credentials>,
}

/// The node's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// Must equal [`MAGIC`].
    pub magic: [u8; 4],
    /// The version the node will speak on this connection.
    pub version: u16,
    /// The answering node's id.
    pub node_id: String,
    /// The answering node's datacenter.
    pub dc: String,
    /// The answering node's wall clock (milliseconds since the Unix epoch)
    /// as it answered: what lets the other side state its deadlines on
    /// this node's clock ([`Envelope::deadline_ms`]).
    pub clock_ms: u64,
}

/// What the node answers a [`Hello`] with: its [`HelloAck`], or why it
/// refuses the connection (protocol version, authentication), just before
/// closing it.
pub type HelloAnswer = Result<HelloAck, WireError>;

/// An opaque causal context: what the client saw at its last read. Pass it
/// back unchanged with a write so that the write supersedes exactly those
/// siblings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// How a put relates to what the key holds. Every mode but
/// [`WriteMode::Context`] is decided, and its dot issued, at one replica
/// of the key in the coordinator's datacenter (the first live one in
/// placement order), under the key's lock: the check and the write are
/// one step there. `docs/decisions.md` says what holds within a
/// datacenter, across datacenters and under failover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WriteMode {
    /// The new version supersedes what the context saw; versions the
    /// context did not see stay beside it as siblings (a blind write,
    /// with an empty context, adds a sibling).
    #[default]
    Context,
    /// The new version supersedes the context and every version the
    /// issuing replica holds: within a datacenter, concurrent overwrites
    /// of one key leave no siblings (the last one issued wins).
    Overwrite,
    /// Applied only if the context covers every version (live or
    /// tombstone) the issuing replica holds for the key, that is, no write
    /// happened there since the read that returned the context; otherwise
    /// the answer is [`ResponseBody::ConditionFailed`] with what the key
    /// holds now.
    IfMatch,
    /// Applied only if the key has no live value at the issuing replica
    /// (never written, or deleted); otherwise
    /// [`ResponseBody::ConditionFailed`]. The new version supersedes the
    /// tombstones there.
    IfAbsent,
    /// Add the delta to the key's counter (subtract when negative), in a
    /// keyspace that holds counters: the issuing replica joins every
    /// counter it holds for the key ([`crate::counter`]), adds the delta
    /// on behalf of its own actor, and writes the result over all of
    /// them; the put's value must be empty. Answered
    /// [`ResponseBody::Counted`] with the counter's value there.
    /// (Appended last: variants are encoded by position.)
    Add(i64),
}

impl WriteMode {
    /// Whether the write is decided at the key's first live replica in
    /// placement order (every mode but [`WriteMode::Context`]).
    pub fn is_checked(self) -> bool {
        self != WriteMode::Context
    }
}

/// When a written value expires ([`RequestBody::Put`]'s `expiry`). An
/// expiry is an absolute wall-clock time carried in the stored version, so
/// every replica in every datacenter agrees on it: the node that receives
/// the write (its coordinator) turns a relative one into an absolute one
/// on its own clock, before it forwards the write or issues its version.
/// From its expiry on, a value reads as deleted (a get finds nothing, a
/// scan skips it, [`WriteMode::IfAbsent`] sees the key absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Expiry {
    /// The keyspace's `ttl_s` counted from the write, or never in a
    /// keyspace without one.
    #[default]
    KeyspaceDefault,
    /// Never, whatever the keyspace's default.
    Never,
    /// This many milliseconds after the coordinator receives the write.
    AfterMs(u64),
    /// At this wall-clock time, in milliseconds since the Unix epoch (a
    /// time already past stores a value that reads as absent).
    AtMs(u64),
    /// The expiry the key's live value has now, read under the key's lock
    /// at the replica that issues the write (Redis's `KEEPTTL`): the
    /// latest among its live siblings', none if one of them has none or
    /// there is no live value.
    Keep,
}

/// Identity of one logical write, chosen by the client and reused on every
/// retry of it, so replicas can recognise a retry and not add a sibling.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct WriteId(pub [u8; 16]);

/// The request id of responses about the connection rather than a request.
pub const CONNECTION_ERROR_ID: u64 = 0;

/// A request of any kind (client or node-to-node); `id` is echoed in the
/// [`Reply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<B> {
    /// Chosen by the sender, unique among its in-flight requests on the
    /// connection, never [`CONNECTION_ERROR_ID`].
    pub id: u64,
    /// How long the sender will wait; the node abandons the request after.
    pub timeout_ms: u32,
    /// When the sender stops waiting, on the receiving node's wall clock
    /// (milliseconds since the Unix epoch, as the sender estimates it from
    /// the handshake's [`HelloAck::clock_ms`] and each
    /// [`Reply::clock_ms`]); 0 for no such bound. A
    /// node that reads the request only after this instant (it was
    /// paused, or the request queued behind others) answers
    /// [`ErrorCode::Timeout`] without starting it, so a request the
    /// client has given up on, and may have retried elsewhere, does not
    /// also take effect late here.
    pub deadline_ms: u64,
    /// What to do.
    pub body: B,
}

/// The answer to one [`Envelope`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply<B> {
    /// The request's `id`.
    pub id: u64,
    /// The answering node's wall clock as it sent the reply (milliseconds
    /// since the Unix epoch): the sender keeps its estimate of the node's
    /// clock, for [`Envelope::deadline_ms`], from these.
    pub clock_ms: u64,
    /// The outcome.
    pub body: B,
}

/// A client request.
pub type Request = Envelope<RequestBody>;

/// A node's answer to a client [`Request`].
pub type Response = Reply<ResponseBody>;

/// A reply body that can carry a [`WireError`]: what lets one connection
/// layer serve both clients and peers.
pub trait ReplyBody: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The body that reports `error`.
    fn from_error(error: WireError) -> Self;
    /// `Err` when the body reports an error.
    fn into_result(self) -> Result<Self, WireError>;
}

impl ReplyBody for ResponseBody {
    fn from_error(error: WireError) -> Self {
        ResponseBody::Error(error)
    }

    fn into_result(self) -> Result<Self, WireError> {
        match self {
            ResponseBody::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// The operations a client can ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Read the live siblings of a key.
    Get {
        /// Keyspace name.
        keyspace: String,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Level to read at; `None` uses the keyspace default.
        consistency: Option<Consistency>,
    },
    /// Write a value superseding what `context` saw.
    Put {
        /// Keyspace name.
        keyspace: String,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Context from the last read (empty for a blind write).
        context: Context,
        /// Level to write at; `None` uses the keyspace default.
        consistency: Option<Consistency>,
        /// Retry identity.
        write_id: WriteId,
        /// How the write relates to what the key holds: over the context
        /// (siblings beside what it did not see), as an overwrite, or on
        /// a condition checked atomically with the write.
        mode: WriteMode,
        /// When the value expires.
        expiry: Expiry,
        /// A sloppy quorum (with replicas down, the next healthy nodes
        /// of the DC along the ring keep the copy as a hint and count
        /// toward the level), a strict one, or `None`: the keyspace's
        /// `sloppy_quorum`.
        sloppy: Option<bool>,
    },
    /// Describe the cluster as the answering node sees it.
    Status,
    /// Delete what `context` saw (writes a tombstone).
    Delete {
        /// Keyspace name.
        keyspace: String,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Context from the last read.
        context: Context,
        /// Level to write at; `None` uses the keyspace default.
        consistency: Option<Consistency>,
        /// Retry identity.
        write_id: WriteId,
        /// A sloppy or a strict quorum; `None`: the keyspace's default.
        sloppy: Option<bool>,
    },
    /// Run Merkle repair on the answering node now: its ranges in its own
    /// datacenter with their other live replicas, or, with `remote_dc`, a
    /// full sync with that datacenter. Answered at once with the operation
    /// it started ([`ResponseBody::Started`]); follow it with
    /// [`RequestBody::Operations`].
    Repair {
        /// One keyspace, or every keyspace.
        keyspace: Option<String>,
        /// Another datacenter to fully sync with.
        remote_dc: Option<String>,
    },
    /// Take the answering node out of the ring: it hands every range it
    /// holds to the next owners, then leaves. Answered at once with the
    /// operation it started ([`ResponseBody::Started`]); follow it with
    /// [`RequestBody::Operations`].
    Decommission,
    /// Work with the resolver registry (the replicated system keyspace
    /// of merge modules and keyspace bindings).
    Registry(RegistryRequest),
    /// Manage users and grants (admin; a user may change their own
    /// password).
    User(super::UserRequest),
    /// Stop the administrative operation running on the answering node
    /// (repair, full sync, decommission, rebuild): answered with
    /// [`ResponseBody::Cancelled`]; the operation's own request fails
    /// with [`ErrorCode::Cancelled`]. A decommission cancelled before its
    /// node has left returns the node to normal.
    Cancel,
    /// The answering node's bridge quarantine: records another datacenter
    /// refused for a reason that will not change by retrying (admin).
    Quarantine(QuarantineRequest),
    /// The answering node's long work: its running operations and the
    /// last ones that finished, or one of them by id.
    Operations(OperationsRequest),
    /// Rebuild the answering node's replicas from other datacenters
    /// (`from_dc`, or every other datacenter its keyspaces replicate to):
    /// every range it owns, pulled from a live replica there. For the
    /// fresh nodes of a datacenter lost for good. Answered at once with
    /// the operation it started ([`ResponseBody::Started`]).
    Rebuild {
        /// One source datacenter, or every other one.
        from_dc: Option<String>,
    },
    /// One page of a scan of a keyspace's live keys, unordered (in key
    /// hash order), from `cursor` (0 to start): answered
    /// [`ResponseBody::ScanPage`] with the cursor of the next page (0 when
    /// the scan is done). See [`ScanCursor`] for what a scan guarantees.
    /// (Appended last: variants are encoded by position.)
    Scan {
        /// Keyspace name.
        keyspace: String,
        /// Where the page starts: 0, or the cursor a previous page
        /// returned.
        cursor: u64,
        /// How many keys the page may hold, `1..=`[`SCAN_COUNT_MAX`]; a
        /// page may hold fewer (or none) and still not be the last.
        count: u32,
    },
    /// The answering node's merge figures since it started, per keyspace
    /// and resolver: answered [`ResponseBody::MergeStats`]. (Appended
    /// last.)
    MergeStats,
}

/// The most keys one [`RequestBody::Scan`] page may ask for.
pub const SCAN_COUNT_MAX: u32 = 10_000;

/// The position of a scan in a keyspace's key-hash space, as
/// [`RequestBody::Scan`] and [`ResponseBody::ScanPage`] carry it (and the
/// Redis front door's `SCAN` writes it, in decimal): the next key hash to
/// read from. 0 starts a scan and, returned, ends it.
///
/// A page never stops between two keys of one hash, so the hash alone is
/// a complete position: a cursor is a plain number that any node can
/// serve, whichever node served the page before. What a scan returns:
/// every key live on the replicas read when the scan passes its hash, at
/// least once while the cluster is stable (a key may come twice only if a
/// client repeats a page); keys written or deleted during the scan may or
/// may not appear. A page reads one replica of each range (consistency
/// ONE in the coordinator's datacenter): a key that replica has not yet
/// received (a write it missed, before hints or repair bring it) is
/// missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScanCursor(pub u64);

/// Why a cursor's text form could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {text:?}: expected an unsigned decimal number below 2^64")]
pub struct CursorError {
    /// The text refused (at most 64 characters of it).
    pub text: String,
}

impl ScanCursor {
    /// The cursor that starts a scan, and that a page returns when the
    /// scan is done.
    pub const START: ScanCursor = ScanCursor(0);

    /// Whether this cursor, returned by a page, means the scan is done.
    pub fn is_end(self) -> bool {
        self.0 == 0
    }

    /// The cursor of the page after one whose last key hash was `hash`
    /// (the end when `hash` is the last hash).
    pub fn after(hash: u64) -> ScanCursor {
        ScanCursor(hash.checked_add(1).unwrap_or(0))
    }
}

impl std::fmt::Display for ScanCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for ScanCursor {
    type Err = CursorError;

    /// Decimal digits only (no sign, no spaces), below 2^64.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = || CursorError {
            text: text.chars().take(64).collect(),
        };
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        text.parse::<u64>().map(ScanCursor).map_err(|_| refuse())
    }
}

/// What [`RequestBody::Operations`] asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationsRequest {
    /// Every operation the node remembers: the running ones and the last
    /// finished ones, oldest first (answered [`ResponseBody::Operations`]).
    List,
    /// One operation (answered [`ResponseBody::Operation`], or
    /// [`ErrorCode::BadRequest`] when the node does not know the id: a
    /// wrong id, one forgotten, or a node restarted since).
    Get {
        /// The operation's id.
        id: u64,
    },
}

/// What kind of long work an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// In-DC Merkle repair (an operator's or the schedule's).
    Repair,
    /// Merkle full sync with another datacenter.
    FullSync,
    /// The node leaving the ring, handing its ranges over.
    Decommission,
    /// The node joining the ring, pulling the ranges it will own.
    Join,
    /// The node's replicas rebuilt from its peers.
    Rebuild,
}

impl OperationKind {
    /// The kind's name, as the CLI, the JSON API and metric labels write it.
    pub fn name(self) -> &'static str {
        match self {
            OperationKind::Repair => "repair",
            OperationKind::FullSync => "full_sync",
            OperationKind::Decommission => "decommission",
            OperationKind::Join => "join",
            OperationKind::Rebuild => "rebuild",
        }
    }

    /// Every kind, for metric labels.
    pub const ALL: [OperationKind; 5] = [
        OperationKind::Repair,
        OperationKind::FullSync,
        OperationKind::Decommission,
        OperationKind::Join,
        OperationKind::Rebuild,
    ];
}

/// Where an operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Still working.
    Running,
    /// Finished its plan (some ranges may have failed: `ranges_failed`).
    Done,
    /// Stopped short: `error` says why.
    Failed,
    /// Stopped by an operator ([`RequestBody::Cancel`]); what it moved
    /// stays.
    Cancelled,
}

impl OperationState {
    /// The state's name.
    pub fn name(self) -> &'static str {
        match self {
            OperationState::Running => "running",
            OperationState::Done => "done",
            OperationState::Failed => "failed",
            OperationState::Cancelled => "cancelled",
        }
    }
}

/// One operation of a node's long work, and its progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationInfo {
    /// The node's id for it (unique on that node).
    pub id: u64,
    /// What it is.
    pub kind: OperationKind,
    /// The one keyspace it works on (`None`: every keyspace).
    pub keyspace: Option<String>,
    /// The other datacenter it syncs with (full sync, rebuild from one
    /// datacenter).
    pub dc: Option<String>,
    /// Where it stands.
    pub state: OperationState,
    /// When it started (milliseconds since the Unix epoch).
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// Range syncs planned so far (it grows while the work plans more).
    pub ranges_total: u64,
    /// What it did so far: `ranges` and `ranges_failed` of
    /// `ranges_total`, keys and bytes moved.
    pub progress: RepairReport,
    /// Why it failed or was cancelled.
    pub error: Option<String>,
}

/// An operation on a node's bridge quarantine (its dead-letter store, one
/// per remote datacenter). (Appended last: variants are encoded by
/// position.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuarantineRequest {
    /// One page of the quarantined records, in order of datacenter, then
    /// id, starting after `after`.
    List {
        /// One remote datacenter, or every one.
        dc: Option<String>,
        /// Where the previous page stopped (its `next`).
        after: Option<QuarantinePosition>,
        /// Include each record's encoded form (for an export).
        records: bool,
    },
    /// Put records back in the outbox for `dc` (after the cause was
    /// fixed there) and remove them from the quarantine once they are.
    Replay {
        /// The remote datacenter.
        dc: String,
        /// Which records (by id), at most 64; empty: the first 64 held
        /// for `dc` (replay again for the rest).
        ids: Vec<u64>,
    },
}

/// A place in a node's quarantine: a remote datacenter and a record id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QuarantinePosition {
    /// The remote datacenter.
    pub dc: String,
    /// A record id in its store.
    pub id: u64,
}

/// One quarantined record as an operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedRecord {
    /// The datacenter that refused it.
    pub dc: String,
    /// Its id in that datacenter's store (what `Replay` names).
    pub id: u64,
    /// When it was quarantined, Unix milliseconds.
    pub quarantined_ms: u64,
    /// Keyspace of the write.
    pub keyspace: String,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Why the datacenter refused it.
    pub code: ErrorCode,
    /// The refusal's message, as the receiving node wrote it.
    pub message: String,
    /// Its position in the sending node's outbox.
    pub seq: u64,
    /// The write's timestamp, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Whether the write is a delete.
    pub tombstone: bool,
    /// Bytes of its value (0 for a delete).
    pub value_bytes: u64,
    /// The whole outbox record as the bridge encodes it (postcard), when
    /// asked for: what a replay ships again.
    #[serde(with = "serde_bytes")]
    pub record: Option<Vec<u8>>,
}

/// The answer to a [`QuarantineRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuarantineResponse {
    /// A page of records.
    Listing {
        /// The records, by datacenter then id.
        records: Vec<QuarantinedRecord>,
        /// Where the next page starts (`None`: this was the last).
        next: Option<QuarantinePosition>,
    },
    /// What a replay did.
    Replayed {
        /// Records put back in the outbox and removed from the quarantine.
        replayed: u64,
        /// Ids asked for that the quarantine does not hold.
        missing: Vec<u64>,
    },
}

/// A resolver registry operation. Mutations are validated by the
/// answering node and written through it, at a local quorum of its
/// datacenter; the registry keyspace carries them to every node of every
/// datacenter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryRequest {
    /// Register a module as `name@version`. The node loads it and runs the
    /// law checker; a module that fails the check is refused unless
    /// `force`, which records the override.
    Upload {
        /// Resolver name.
        name: String,
        /// Version chosen by the uploader.
        version: u32,
        /// The wasm module.
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
        /// Register even if the law check fails.
        force: bool,
    },
    /// Bind a keyspace to a registered `name@version`.
    Attach {
        /// The keyspace.
        keyspace: String,
        /// Resolver name.
        name: String,
        /// Resolver version.
        version: u32,
    },
    /// Unbind a keyspace (its siblings are then kept for clients).
    Detach {
        /// The keyspace.
        keyspace: String,
    },
    /// Restore a keyspace's previous binding.
    Rollback {
        /// The keyspace.
        keyspace: String,
    },
    /// Every registered resolver and every keyspace binding.
    List,
    /// Delete a registered `name@version` that no keyspace uses (bound
    /// now, in a binding's history, or as a configured default), and its
    /// module unless another version has the same bytes.
    Delete {
        /// Resolver name.
        name: String,
        /// Version.
        version: u32,
    },
    /// Bind a keyspace to a registered `name@version` in one scope only
    /// (a canary): keys merged by nodes of `dc`, and/or keys whose hash
    /// falls in the first `share_ppm` millionths of the hash space; the
    /// rest keeps the current binding. The nodes in scope roll it back
    /// themselves when its failure rate (failed merges / merges over
    /// `window_ms`, once at least `merges_min` ran) passes
    /// `failure_rate_max_ppm` millionths. Unset numbers take the node's
    /// defaults. (Appended last: variants are encoded by position.)
    Canary {
        /// The keyspace.
        keyspace: String,
        /// Resolver name.
        name: String,
        /// Resolver version.
        version: u32,
        /// Only nodes of this datacenter use it.
        dc: Option<String>,
        /// Only keys in this share of the key-hash space, in millionths.
        share_ppm: Option<u32>,
        /// The window the failure rate is measured over, milliseconds.
        window_ms: Option<u64>,
        /// Merges the window must hold before the rate is judged.
        merges_min: Option<u64>,
        /// The failure rate past which it is rolled back, in millionths.
        failure_rate_max_ppm: Option<u32>,
    },
    /// Make a keyspace's canary its binding everywhere.
    Promote {
        /// The keyspace.
        keyspace: String,
    },
    /// Stop merging a keyspace: siblings are kept (and returned to
    /// readers) until [`RegistryRequest::Resume`].
    Pause {
        /// The keyspace.
        keyspace: String,
    },
    /// Merge a paused keyspace again.
    Resume {
        /// The keyspace.
        keyspace: String,
    },
}

/// One node as `isthmus status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Node id.
    pub node_id: String,
    /// Where it serves.
    pub addr: String,
    /// Datacenter.
    pub dc: String,
    /// Rack.
    pub rack: String,
    /// Tokens it takes on its datacenter's ring (see
    /// [`placement::tokens_for`](crate::placement::tokens_for)).
    pub vnodes: u32,
    /// Whether the answering node's failure detector believes it alive.
    pub up: bool,
    /// Lifecycle status (`Joining`, `Normal`, `Leaving`, `Left`).
    pub status: String,
    /// Bytes of data on its disk, as it last announced.
    pub load_bytes: u64,
    /// Bytes of hints the answering node holds for this node (writes it
    /// missed while down, waiting for handoff).
    pub hint_bytes: u64,
    /// Fraction of its datacenter's ring it replicates, per keyspace
    /// replication (the largest over keyspaces).
    pub ownership: f64,
}

/// One direction of one DC pair, as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BridgeReport {
    /// The remote datacenter.
    pub remote_dc: String,
    /// Records in this node's outbox not yet acknowledged by `remote_dc`.
    pub outbox_records: u64,
    /// Bytes of outbox segments on disk (shared by all remote DCs).
    pub outbox_bytes: u64,
    /// Records acknowledged by `remote_dc`.
    pub shipped_records: u64,
    /// Encoded bytes of those records before compression.
    pub raw_bytes: u64,
    /// Bytes actually sent (compressed batches).
    pub shipped_bytes: u64,
    /// Times the outbox bound was exceeded for `remote_dc`.
    pub overflows: u64,
    /// Whether a full-sync with `remote_dc` is owed.
    pub full_sync_pending: bool,
    /// Replication lag from `remote_dc` into this DC, as this node applied
    /// its batches: origin ack to local apply, p50 in milliseconds.
    pub lag_in_p50_ms: f64,
    /// Same, p99.
    pub lag_in_p99_ms: f64,
    /// Keys applied here from `remote_dc` (a batch carries each key's
    /// records joined, so a hot key counts once per batch).
    pub applied_in: u64,
    /// Records `remote_dc` refused for good that this node quarantined
    /// since it started.
    pub quarantined: u64,
    /// Records held in this node's quarantine for `remote_dc` now.
    pub quarantine_held: u64,
    /// Bytes of that quarantine on disk.
    pub quarantine_bytes: u64,
    /// Refused records the quarantine had no room for since this node
    /// started: each made a full sync owed to `remote_dc` instead.
    pub quarantine_overflows: u64,
}

/// One live sibling as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The value bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Coordinator wall-clock time of the write, in Unix milliseconds.
    pub timestamp_ms: u64,
    /// Datacenter that coordinated the write.
    pub origin_dc: String,
    /// When the value expires (Unix milliseconds, on the nodes' wall
    /// clocks); `None`: never.
    pub expires_ms: Option<u64>,
}

/// Why a merge did not happen; the siblings are kept as they were.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MergeFailureClass {
    /// The resolver refused the input (returned an error of its own).
    GuestError,
    /// The resolver trapped (panic, `unreachable`, stack overflow, …).
    Trap,
    /// The resolver used up its deterministic fuel budget.
    FuelExhausted,
    /// The resolver ran past its wall-clock deadline (the backstop).
    Deadline,
    /// The resolver tried to grow memory past its cap.
    MemoryLimit,
    /// The resolver's output was out of bounds, too large or malformed.
    BadOutput,
    /// The module speaks another ABI version or lacks an ABI export.
    AbiMismatch,
    /// The module is not valid wasm, too large, imports something, or
    /// failed to compile in time.
    InvalidModule,
    /// The keyspace's resolver is not loaded or not known on this node.
    Missing,
    /// The host could not run the merge now (for instance every instance
    /// slot is busy); nothing is wrong with the module.
    Unavailable,
    /// The keyspace used up its merge-time budget
    /// (the merge pool's `keyspace_budget`): the merge is deferred,
    /// the siblings kept (and returned to readers), and the node merges
    /// them once the budget has refilled (`merge-retry`).
    BudgetExhausted,
    /// The keyspace's binding is paused by an operator: siblings are kept
    /// (and returned to readers) until it is resumed. (Appended last:
    /// variants are encoded by position.)
    Paused,
}

impl MergeFailureClass {
    /// Every class, for exporting counters.
    pub const ALL: [MergeFailureClass; 12] = [
        MergeFailureClass::GuestError,
        MergeFailureClass::Trap,
        MergeFailureClass::FuelExhausted,
        MergeFailureClass::Deadline,
        MergeFailureClass::MemoryLimit,
        MergeFailureClass::BadOutput,
        MergeFailureClass::AbiMismatch,
        MergeFailureClass::InvalidModule,
        MergeFailureClass::Missing,
        MergeFailureClass::Unavailable,
        MergeFailureClass::BudgetExhausted,
        MergeFailureClass::Paused,
    ];

    /// The class named by its [`as_str`](Self::as_str) name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// A stable snake_case name (metric label, the CLI's and the Redis
    /// front door's word for it).
    pub fn as_str(self) -> &'static str {
        match self {
            MergeFailureClass::GuestError => "guest_error",
            MergeFailureClass::Trap => "trap",
            MergeFailureClass::FuelExhausted => "fuel_exhausted",
            MergeFailureClass::Deadline => "deadline",
            MergeFailureClass::MemoryLimit => "memory_limit",
            MergeFailureClass::BadOutput => "bad_output",
            MergeFailureClass::AbiMismatch => "abi_mismatch",
            MergeFailureClass::InvalidModule => "invalid_module",
            MergeFailureClass::Missing => "missing",
            MergeFailureClass::Unavailable => "unavailable",
            MergeFailureClass::BudgetExhausted => "budget_exhausted",
            MergeFailureClass::Paused => "paused",
        }
    }
}

impl std::fmt::Display for MergeFailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A read's siblings that the keyspace's resolver did not merge: the
/// coordinator's merge of the replicas' answers failed (or was deferred,
/// or the binding is paused), so the siblings come back as they are
/// stored. A read of a keyspace without a resolver never carries one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeFailureInfo {
    /// Why the merge did not happen (the class it is counted under in
    /// `isthmus_merge_failures_total`).
    pub class: MergeFailureClass,
    /// The resolver bound to the keyspace, as `name@version`, when the
    /// node knew it.
    pub resolver: Option<String>,
}

impl std::fmt::Display for MergeFailureInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.resolver {
            Some(resolver) => write!(f, "{} ({resolver})", self.class),
            None => write!(f, "{}", self.class),
        }
    }
}

/// Outcomes of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ResponseBody {
    /// A read: the live siblings (none when absent) and the context to
    /// write back.
    Value {
        /// Live siblings in canonical order.
        siblings: Vec<Sibling>,
        /// Causal context covering every sibling returned.
        context: Context,
        /// Set when the keyspace has a resolver and it did not merge
        /// these siblings; `None` otherwise (merged, nothing to merge,
        /// or no resolver).
        merge_failure: Option<MergeFailureInfo>,
    },
    /// A write reached its consistency level.
    Written,
    /// The cluster as the answering node sees it.
    Status {
        /// Every known node.
        nodes: Vec<NodeReport>,
        /// The answering node's bridge, one entry per remote datacenter
        /// (empty without a bridge).
        bridges: Vec<BridgeReport>,
    },
    /// The request failed.
    Error(WireError),
    /// Long work started (repair, full sync, decommission, rebuild): the
    /// operation, just begun.
    Started(OperationInfo),
    /// A registry operation succeeded.
    Registry(RegistryResponse),
    /// The answer to a [`RequestBody::User`].
    User(super::UserResponse),
    /// The answer to a [`RequestBody::Cancel`]: the operation that was
    /// running and is now stopping, or `None` when nothing ran.
    Cancelled {
        /// What was cancelled ("a repair", "a decommission", ...).
        operation: Option<String>,
    },
    /// The answer to a [`RequestBody::Quarantine`].
    Quarantine(QuarantineResponse),
    /// The answer to [`OperationsRequest::List`], oldest first.
    Operations(Vec<OperationInfo>),
    /// The answer to [`OperationsRequest::Get`].
    Operation(OperationInfo),
    /// A conditional put ([`WriteMode::IfMatch`], [`WriteMode::IfAbsent`])
    /// was not applied: the key's live siblings and context at the
    /// replica that checked, to decide again and retry over. (Appended
    /// last: variants are encoded by position.)
    ConditionFailed {
        /// Live siblings in canonical order.
        siblings: Vec<Sibling>,
        /// Causal context covering every version the replica holds.
        context: Context,
    },
    /// The answer to a [`RequestBody::Scan`]: live keys in key hash order
    /// and where the next page starts (0: the scan is done). (Appended
    /// last: variants are encoded by position.)
    ScanPage {
        /// The page's keys.
        keys: Vec<Vec<u8>>,
        /// The next page's cursor; 0 when the scan is done.
        cursor: u64,
    },
    /// The answer to a put in [`WriteMode::Add`]: the counter's value
    /// where the delta was added, just after adding it. (Appended last.)
    Counted {
        /// The counter's value.
        value: i64,
    },
    /// The answer to [`RequestBody::MergeStats`], by keyspace then
    /// resolver. (Appended last.)
    MergeStats(Vec<MergeStatsRow>),
}

/// One node's merges of one keyspace by one resolver since it started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeStatsRow {
    /// The keyspace.
    pub keyspace: String,
    /// The resolver: lower-case hex of its content hash, or `-` for
    /// failures before any resolver was found (as `/metrics` labels it).
    pub resolver: String,
    /// Merges that replaced siblings with one version.
    pub merges: u64,
    /// Merges that failed or were deferred, by class (classes with a
    /// count only).
    pub failures: Vec<(MergeFailureClass, u64)>,
    /// Fuel per merge the resolver ran.
    pub fuel: CostHistogram,
    /// Time per merge the resolver ran, in microseconds.
    pub time_us: CostHistogram,
}

/// A histogram over fixed bucket bounds, as nodes export it (so that
/// nodes' histograms add up when their bounds agree).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostHistogram {
    /// Upper bounds of the buckets, increasing.
    pub bounds: Vec<u64>,
    /// Observations per bucket: `counts[i]` at most `bounds[i]` and more
    /// than the bound before; one more entry, past the last bound. Not
    /// cumulative.
    pub counts: Vec<u64>,
    /// The observations' sum.
    pub sum: u64,
}

impl CostHistogram {
    /// An empty histogram over `bounds` (increasing).
    pub fn new(bounds: &[u64]) -> Self {
        CostHistogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0,
        }
    }

    /// Count one observation.
    pub fn record(&mut self, value: u64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        if let Some(n) = self.counts.get_mut(bucket) {
            *n += 1;
        }
        self.sum = self.sum.saturating_add(value);
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Add `other`'s observations; `false` (nothing added) when its
    /// bounds differ.
    pub fn add(&mut self, other: &CostHistogram) -> bool {
        if self.bounds.is_empty() && self.counts.is_empty() {
            *self = other.clone();
            return true;
        }
        if other.bounds != self.bounds || other.counts.len() != self.counts.len() {
            return false;
        }
        for (n, m) in self.counts.iter_mut().zip(&other.counts) {
            *n += m;
        }
        self.sum = self.sum.saturating_add(other.sum);
        true
    }

    /// The `q` quantile (`0.0..=1.0`), interpolated linearly inside its
    /// bucket as Prometheus' `histogram_quantile` does (past the last
    /// bound: the last bound); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().map(|&b| b as f64);
                };
                let lower = if i == 0 { 0 } else { self.bounds[i - 1] };
                let within = (rank - below as f64) / n as f64;
                return Some(lower as f64 + (upper - lower) as f64 * within);
            }
            below += n;
        }
        self.bounds.last().map(|&b| b as f64)
    }
}

/// What a [`RegistryRequest`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryResponse {
    /// The module is registered (or was already, with the same bytes).
    Uploaded(ResolverInfo),
    /// The keyspace's binding after an attach, detach or rollback.
    Bound(BindingInfo),
    /// The resolver version was deleted (what it was).
    Deleted(ResolverInfo),
    /// The registry as the answering node's replica holds it.
    Listing {
        /// Resolvers by name, then version.
        resolvers: Vec<ResolverInfo>,
        /// Keyspace bindings by keyspace: the registry's, and the node's
        /// configured defaults for keyspaces the registry does not bind.
        bindings: Vec<BindingInfo>,
    },
}

/// One registered resolver version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverInfo {
    /// Resolver name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// blake3 of the module bytes.
    pub hash: [u8; 32],
    /// Module size in bytes.
    pub module_bytes: u64,
    /// How the law check went at upload.
    pub law_check: LawCheckOutcome,
}

/// The law check's outcome recorded with a resolver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LawCheckOutcome {
    /// Every law held on the generated cases.
    Passed {
        /// Seed of the check run.
        seed: u64,
    },
    /// The check failed and the uploader forced the upload.
    Overridden {
        /// Seed of the check run.
        seed: u64,
        /// The violated laws.
        violations: Vec<String>,
    },
}

/// A resolver a keyspace is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundResolver {
    /// Resolver name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Its module's hash; `None` for a configured default whose module is
    /// not registered (its keyspace keeps siblings until it is uploaded).
    pub hash: Option<[u8; 32]>,
}

/// Which resolver a keyspace uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingInfo {
    /// The keyspace.
    pub keyspace: String,
    /// The resolver in force (`None`: detached).
    pub current: Option<BoundResolver>,
    /// Earlier bindings, oldest first (what rollback restores).
    pub history: Vec<Option<BoundResolver>>,
    /// The binding is the node's configuration (`resolver = "NAME@N"`),
    /// not a registry record: the registry binds the keyspace to nothing.
    pub from_config: bool,
    /// A resolver bound in one scope only, on trial (see
    /// [`RegistryRequest::Canary`]).
    pub canary: Option<CanaryInfo>,
    /// Merging is paused: siblings are kept.
    pub paused: bool,
    /// What happened to the binding, oldest first (bounded like the
    /// history).
    pub events: Vec<BindingEvent>,
}

/// A canary binding as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryInfo {
    /// The resolver on trial.
    pub resolver: BoundResolver,
    /// Only nodes of this datacenter use it.
    pub dc: Option<String>,
    /// Only keys in this share of the key-hash space, in millionths.
    pub share_ppm: Option<u32>,
    /// The window its failure rate is measured over, milliseconds.
    pub window_ms: u64,
    /// Merges the window must hold before the rate is judged.
    pub merges_min: u64,
    /// The failure rate past which it is rolled back, in millionths.
    pub failure_rate_max_ppm: u32,
    /// When it was attached (Unix milliseconds, the attaching node's
    /// clock).
    pub since_ms: u64,
}

/// One entry of a binding's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingEvent {
    /// When (Unix milliseconds, the writing node's clock).
    pub at_ms: u64,
    /// What happened, e.g. `canary lww@2 rolled back automatically:
    /// failure rate 1.000 over 24 merges`.
    pub note: String,
}

/// What a repair, full sync or range movement did (so far).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Range exchanges completed.
    pub ranges: u64,
    /// Range exchanges that failed (the next run retries them).
    pub ranges_failed: u64,
    /// Keys whose sets differed between replicas.
    pub keys_differing: u64,
    /// Keys for which the answering node absorbed versions it lacked.
    pub keys_pulled: u64,
    /// Keys for which a partner was sent versions it lacked.
    pub keys_pushed: u64,
    /// Encoded bytes of the repair messages exchanged with partners.
    pub bytes: u64,
}

/// A typed error on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Machine-readable class.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// For consistency failures: acknowledgements required and received.
    pub acks: Option<AckCount>,
    /// For [`ErrorCode::Forbidden`]: the permission the request needed.
    pub needs: Option<super::Permission>,
}

/// Acknowledgements required and received by a request that fell short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckCount {
    /// What the consistency level needed.
    pub required: u32,
    /// What arrived before the deadline.
    pub acked: u32,
}

/// Error classes a node reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be decoded; the connection is closed.
    Malformed,
    /// The frame exceeded the size limit; the connection is closed.
    FrameTooLarge,
    /// Handshake magic or version not spoken here; the connection is closed.
    ProtocolVersion,
    /// The request is well-formed but invalid (unknown keyspace, bad level).
    BadRequest,
    /// Key longer than the keyspace allows.
    KeyTooLarge,
    /// Value longer than the keyspace allows.
    ValueTooLarge,
    /// The key holds too many siblings; a resolver would merge them.
    TooManySiblings,
    /// Not enough replicas answered before the deadline.
    Timeout,
    /// Not enough replicas are alive to attempt the level.
    Unavailable,
    /// The node is shedding load; retry later.
    Overloaded,
    /// The node's storage refuses writes (for example after a failed fsync).
    StorageFailed,
    /// Anything else.
    Internal,
    /// A resolver module was refused at load (not wasm, wrong ABI,
    /// imports, too large).
    InvalidModule,
    /// A resolver module fails the law check and the upload was not forced.
    LawCheckFailed,
    /// No resolver of that name and version is registered.
    UnknownResolver,
    /// The resolver name and version already hold another module.
    VersionTaken,
    /// The answer to this request encodes to more than the frame cap (or
    /// does not encode), so the node sent this error in its place; the
    /// connection stays open. A write's effect may have taken place. The
    /// same request would meet the same answer: not retryable. (Appended
    /// last: codes are encoded by position.)
    ReplyTooLarge,
    /// The connection has not proven who is at the other end: no or bad
    /// credentials, or a peer handshake without a node certificate. Not
    /// retryable.
    Unauthenticated,
    /// The authenticated user lacks the permission the request needs. Not
    /// retryable.
    Forbidden,
    /// The write's causal context is not one a read of the key returned:
    /// it names events the key's replica never issued, or counters past
    /// what a real history reaches (2^53). Read the key again and write
    /// over that context. Not retryable. (Appended last: codes are encoded
    /// by position.)
    InvalidContext,
    /// A version is stamped further ahead of the receiving node's clock
    /// than its `clock_skew_max_ms`: one of the two clocks is off. Fix the
    /// clock (NTP); the same version is refused until then.
    ClockSkew,
    /// An administrative operation was cancelled by an operator
    /// ([`RequestBody::Cancel`]) before it finished; what it did so far
    /// stays (repair and streaming are idempotent). Not retryable.
    Cancelled,
    /// The node's disk is full: the write was not persisted there. The
    /// node keeps serving reads and takes writes again once it has room;
    /// another node may take the write meanwhile (retryable).
    DiskFull,
    /// The resolver registry holds as many modules, or as many module
    /// bytes, as it may: delete unused resolvers first. (Appended last:
    /// codes are encoded by position.)
    RegistryFull,
    /// The resolver is bound to a keyspace, now or in the binding history
    /// a rollback returns to, or is a keyspace's configured default: it
    /// cannot be deleted.
    ResolverInUse,
    /// A conditional put's condition did not hold at the replica that
    /// checked it (a client sees [`ResponseBody::ConditionFailed`], with
    /// the key's current siblings, instead). Not retryable as it is: read
    /// again (or use the siblings the failure carried) and decide again.
    /// (Appended last: codes are encoded by position.)
    ConditionFailed,
}

impl ErrorCode {
    /// The code's name, for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::ProtocolVersion => "PROTOCOL_VERSION",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::KeyTooLarge => "KEY_TOO_LARGE",
            ErrorCode::ValueTooLarge => "VALUE_TOO_LARGE",
            ErrorCode::TooManySiblings => "TOO_MANY_SIBLINGS",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::StorageFailed => "STORAGE_FAILED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::InvalidModule => "INVALID_MODULE",
            ErrorCode::LawCheckFailed => "LAW_CHECK_FAILED",
            ErrorCode::UnknownResolver => "UNKNOWN_RESOLVER",
            ErrorCode::VersionTaken => "VERSION_TAKEN",
            ErrorCode::ReplyTooLarge => "REPLY_TOO_LARGE",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::ClockSkew => "CLOCK_SKEW",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::RegistryFull => "REGISTRY_FULL",
            ErrorCode::ResolverInUse => "RESOLVER_IN_USE",
            ErrorCode::ConditionFailed => "CONDITION_FAILED",
        }
    }

    /// May the same request succeed if sent again (with the same write id)?
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout
                | ErrorCode::Unavailable
                | ErrorCode::Overloaded
                | ErrorCode::DiskFull
        )
    }
}
