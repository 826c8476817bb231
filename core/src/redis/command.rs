//! The front door's commands, one function each, over a connection's
//! [`Session`]: who it is logged in as, its keyspace, its protocol
//! version and its name. Every read and write becomes a client request
//! to the node's handler. `docs/redis.md` has the table of what each
//! command means here.

use std::sync::Arc;

use bytes::Bytes;
use isthmus_client::counter::Counter;
use isthmus_client::tls::CertIdentity;
use isthmus_client::wire::{
    Context, Credentials, ErrorCode, Expiry, MergeFailureInfo, RequestBody, ResponseBody,
    SCAN_COUNT_MAX, ScanCursor, Sibling, WireError, WriteId, WriteMode,
};
use redis_protocol::resp2::types::BytesFrame;

use super::FrontDoor;
use super::reply::Reply;
use crate::auth::Principal;
use crate::server::Handler;

/// The arguments of a command frame (an array of bulk strings), or the
/// error to answer a frame of another shape with.
pub fn arguments(frame: BytesFrame) -> Result<Vec<Bytes>, Reply> {
    let BytesFrame::Array(items) = frame else {
        return Err(Reply::err(
            "Protocol error: expected an array of bulk strings",
        ));
    };
    items
        .into_iter()
        .map(|item| match item {
            BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Ok(b),
            BytesFrame::Integer(n) => Ok(Bytes::from(n.to_string())),
            _ => Err(Reply::err(
                "Protocol error: expected an array of bulk strings",
            )),
        })
        .collect()
}

/// The arguments of an inline command (a line, words split by spaces
/// and tabs; no quoting).
pub fn inline(line: &Bytes) -> Vec<Bytes> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|word| !word.is_empty())
        .map(|word| line.slice_ref(word))
        .collect()
}

/// The user `AUTH password` (one argument) logs in as.
pub const DEFAULT_USER: &str = "default";

/// The commands this front door knows: name, arity (negative: at least
/// that many), as `COMMAND` lists them.
pub const COMMANDS: &[(&str, i64)] = &[
    ("auth", -2),
    ("client", -2),
    ("command", -1),
    ("dbsize", 1),
    ("decr", 2),
    ("decrby", 3),
    ("del", -2),
    ("echo", 2),
    ("exists", -2),
    ("expire", -3),
    ("expireat", -3),
    ("get", 2),
    ("getdel", 2),
    ("hello", -1),
    ("incr", 2),
    ("incrby", 3),
    ("info", -1),
    ("isthmus.putctx", 4),
    ("isthmus.siblings", 2),
    ("isthmus.use", 2),
    ("mget", -2),
    ("mset", -3),
    ("persist", 2),
    ("pexpire", -3),
    ("pexpireat", -3),
    ("ping", -1),
    ("pttl", 2),
    ("quit", 1),
    ("scan", -2),
    ("select", 2),
    ("set", -3),
    ("setnx", 3),
    ("ttl", 2),
];

/// How many times `SET ... XX` writes again when the key changed between
/// its read and its write (each time over what the failure returned)
/// before it answers `CONDITION_FAILED`.
pub const XX_ATTEMPTS: usize = 8;

/// What the key held when a conditional write's condition failed.
type Current = (Vec<Sibling>, Context);

/// A command that reads or writes one key and nothing else, with no
/// options: a pipeline's run of these on distinct keys is served at once
/// ([`Session::run_plain`]), with the replies in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plain {
    /// `GET key`.
    Get(Bytes),
    /// `SET key value`: an overwrite with the keyspace's default expiry.
    Set(Bytes, Bytes),
}

impl Plain {
    /// The key it reads or writes.
    pub fn key(&self) -> &Bytes {
        match self {
            Plain::Get(key) | Plain::Set(key, _) => key,
        }
    }
}

/// One connection's state.
pub struct Session<H> {
    handler: Arc<H>,
    door: Arc<FrontDoor>,
    id: u64,
    addr: String,
    certificate: Option<CertIdentity>,
    principal: Option<Principal>,
    protocol: u8,
    keyspace: String,
    name: Option<String>,
    closing: bool,
    /// Set while a batch of plain commands runs: the batch's one timeout
    /// covers each call ([`Session::run_plain`]), which then arms none.
    batch_timed: bool,
    writes: u64,
    /// The first half of every write id of this connection.
    write_prefix: [u8; 8],
}

fn lower(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).to_ascii_lowercase()
}

fn text(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

fn arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// The reply to a failed request: its code first, as Redis errors begin.
fn refusal(error: WireError) -> Reply {
    let code = match error.code {
        ErrorCode::Unauthenticated => "NOAUTH",
        ErrorCode::Forbidden => "NOPERM",
        other => other.name(),
    };
    Reply::Error(format!("{code} {}", error.message))
}

/// A connection's write-id prefix: a hash of the node, the connection's
/// id (unique while the node runs) and the time (apart across restarts).
fn write_prefix(node_id: &str, connection: u64) -> [u8; 8] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = blake3::Hasher::new();
    h.update(node_id.as_bytes());
    h.update(&[0]);
    h.update(&connection.to_le_bytes());
    h.update(&nanos.to_le_bytes());
    let mut prefix = [0; 8];
    prefix.copy_from_slice(&h.finalize().as_bytes()[..8]);
    prefix
}

/// The one value `GET` answers for a key with siblings and no resolver:
/// the latest by timestamp, then by origin DC, then by value, the same
/// on every node and in every DC.
pub fn chosen(siblings: &[Sibling]) -> Option<&Sibling> {
    siblings.iter().max_by(|a, b| {
        (a.timestamp_ms, &a.origin_dc, &a.value).cmp(&(b.timestamp_ms, &b.origin_dc, &b.value))
    })
}

/// When the key whose live siblings are `siblings` stops existing, in
/// Unix milliseconds: the latest of their expiries, `None` (never) if one
/// of them has none. (A key with siblings exists while any of them lives;
/// `KEEPTTL` keeps this same expiry.)
pub fn key_expiry(siblings: &[Sibling]) -> Option<u64> {
    siblings
        .iter()
        .try_fold(0, |latest, s| s.expires_ms.map(|at| at.max(latest)))
}

/// A command's integer argument, as Redis reads one.
fn integer(arg: &Bytes) -> Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| Reply::Error("ERR value is not an integer or out of range".into()))
}

/// A positive expiry argument of `command` (Redis refuses 0 and below).
fn positive(arg: &Bytes, command: &str) -> Result<u64, Reply> {
    match integer(arg)? {
        n if n > 0 => Ok(n as u64),
        _ => Err(Reply::Error(format!(
            "ERR invalid expire time in '{command}' command"
        ))),
    }
}

fn now_ms() -> u64 {
    crate::wall_clock::now_ms()
}

impl<H: Handler> Session<H> {
    /// A connection's session: logged in by its client certificate, or
    /// anonymously on a node that allows it; otherwise not until `AUTH`.
    pub async fn new(
        handler: Arc<H>,
        door: Arc<FrontDoor>,
        id: u64,
        addr: String,
        certificate: Option<CertIdentity>,
    ) -> Self {
        let principal = handler.authenticate(None, certificate.clone()).await.ok();
        let write_prefix = write_prefix(&door.node_id, id);
        Session {
            keyspace: door.databases.first().cloned().unwrap_or_default(),
            handler,
            door,
            id,
            addr,
            certificate,
            principal,
            protocol: 2,
            name: None,
            closing: false,
            batch_timed: false,
            writes: 0,
            write_prefix,
        }
    }

    /// The protocol version replies are encoded in.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Whether the connection closes after this reply (`QUIT`).
    pub fn closing(&self) -> bool {
        self.closing
    }

    async fn call(&self, body: RequestBody) -> Result<ResponseBody, Reply> {
        let principal = self
            .principal
            .as_ref()
            .ok_or_else(|| Reply::Error("NOAUTH Authentication required.".into()))?;
        let answer = self.handler.handle(principal, body, self.door.timeout);
        let answer = if self.batch_timed {
            answer.await
        } else {
            tokio::time::timeout(self.door.timeout, answer)
                .await
                .map_err(|_| self.timed_out())?
        };
        match answer {
            ResponseBody::Error(e) => Err(refusal(e)),
            answer => Ok(answer),
        }
    }

    /// The reply to a request with no answer within the door's timeout.
    fn timed_out(&self) -> Reply {
        Reply::Error(format!(
            "TIMEOUT no answer within {} ms",
            self.door.timeout.as_millis()
        ))
    }

    async fn read(&self, key: &Bytes) -> Result<(Vec<Sibling>, Context), Reply> {
        let (siblings, context, _) = self.read_flagged(key).await?;
        Ok((siblings, context))
    }

    /// A read with the failed merge it may carry (the keyspace's resolver
    /// did not merge the siblings).
    async fn read_flagged(
        &self,
        key: &Bytes,
    ) -> Result<(Vec<Sibling>, Context, Option<MergeFailureInfo>), Reply> {
        let get = RequestBody::Get {
            keyspace: self.keyspace.clone(),
            key: key.to_vec(),
            consistency: None,
        };
        match self.call(get).await? {
            ResponseBody::Value {
                siblings,
                context,
                merge_failure,
            } => Ok((siblings, context, merge_failure)),
            other => Err(Reply::err(format!("unexpected answer {other:?}"))),
        }
    }

    /// A write id no other write carries: this connection's prefix (a
    /// hash of this node, the connection's id and the time it opened),
    /// then its count of writes. A command is not retried by the front
    /// door, so each write is its own.
    fn write_id(&mut self) -> WriteId {
        self.writes += 1;
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.write_prefix);
        id[8..].copy_from_slice(&self.writes.to_le_bytes());
        WriteId(id)
    }

    async fn put(&mut self, key: &Bytes, value: &Bytes, context: Context) -> Result<(), Reply> {
        match self
            .put_mode(key, value, context, WriteMode::Context)
            .await?
        {
            None => Ok(()),
            Some(_) => Err(Reply::err(
                "unexpected condition failure of a context write",
            )),
        }
    }

    /// A put in `mode`: `None` once written, or what the key holds when
    /// the condition failed.
    async fn put_mode(
        &mut self,
        key: &Bytes,
        value: &Bytes,
        context: Context,
        mode: WriteMode,
    ) -> Result<Option<Current>, Reply> {
        self.put_expiring(key, value, context, mode, Expiry::KeyspaceDefault)
            .await
    }

    /// [`Self::put_mode`] with an expiry.
    async fn put_expiring(
        &mut self,
        key: &Bytes,
        value: &Bytes,
        context: Context,
        mode: WriteMode,
        expiry: Expiry,
    ) -> Result<Option<Current>, Reply> {
        let id = self.write_id();
        self.put_as(key, value, context, mode, expiry, id).await
    }

    /// [`Self::put_expiring`] as write `write_id`.
    async fn put_as(
        &self,
        key: &Bytes,
        value: &Bytes,
        context: Context,
        mode: WriteMode,
        expiry: Expiry,
        write_id: WriteId,
    ) -> Result<Option<Current>, Reply> {
        let put = RequestBody::Put {
            mode,
            expiry,
            keyspace: self.keyspace.clone(),
            key: key.to_vec(),
            value: value.to_vec(),
            context,
            consistency: None,
            write_id,
            sloppy: None,
        };
        match self.call(put).await? {
            ResponseBody::ConditionFailed { siblings, context } => Ok(Some((siblings, context))),
            _ => Ok(None),
        }
    }

    /// Whether the put was written (`false`: its condition failed).
    async fn put_checked(
        &mut self,
        key: &Bytes,
        value: &Bytes,
        context: Context,
        mode: WriteMode,
    ) -> Result<bool, Reply> {
        Ok(self.put_mode(key, value, context, mode).await?.is_none())
    }

    async fn delete(&mut self, key: &Bytes, context: Context) -> Result<(), Reply> {
        let delete = RequestBody::Delete {
            keyspace: self.keyspace.clone(),
            key: key.to_vec(),
            context,
            consistency: None,
            write_id: self.write_id(),
            sloppy: None,
        };
        self.call(delete).await.map(|_| ())
    }

    /// Serve one command.
    pub async fn run(&mut self, args: Vec<Bytes>) -> Reply {
        // (A batch dropped before its end leaves no command untimed.)
        self.batch_timed = false;
        // The name in lower case without allocating: every known name is
        // short ASCII; a longer one is not known, and is lowered whole.
        let mut short = [0u8; 16];
        let long;
        let raw: &[u8] = &args[0];
        let name: &str = if raw.len() <= short.len() && raw.is_ascii() {
            let short = &mut short[..raw.len()];
            short.copy_from_slice(raw);
            short.make_ascii_lowercase();
            std::str::from_utf8(short).unwrap_or_default()
        } else {
            long = lower(&args[0]);
            &long
        };
        if let Some((_, arity_of)) = COMMANDS.iter().find(|(n, _)| *n == name) {
            let n = args.len() as i64;
            if (*arity_of > 0 && n != *arity_of) || (*arity_of < 0 && n < -arity_of) {
                return arity(name);
            }
        }
        let result = match name {
            "ping" => Ok(match args.get(1) {
                Some(message) => Reply::Bulk(message.clone()),
                None => Reply::Simple("PONG"),
            }),
            "echo" => Ok(Reply::Bulk(args[1].clone())),
            "quit" => {
                self.closing = true;
                Ok(Reply::Simple("OK"))
            }
            "hello" => self.hello(&args).await,
            "auth" => self.auth(&args[1..]).await,
            "select" => self.select(&args[1]),
            "isthmus.use" => {
                self.keyspace = text(&args[1]);
                Ok(Reply::Simple("OK"))
            }
            "client" => self.client(&args),
            "command" => Ok(command(&args)),
            "info" => self.info(args.get(1)).await,
            "get" => self.get(&args[1]).await,
            "getdel" => self.getdel(&args[1]).await,
            "incr" => self.add(&args[1], 1).await,
            "decr" => self.add(&args[1], -1).await,
            "incrby" => match integer(&args[2]) {
                Ok(by) => self.add(&args[1], by).await,
                Err(e) => Err(e),
            },
            "decrby" => match integer(&args[2]).and_then(|by| {
                by.checked_neg()
                    .ok_or_else(|| Reply::err("decrement would overflow"))
            }) {
                Ok(by) => self.add(&args[1], by).await,
                Err(e) => Err(e),
            },
            "set" | "setnx" | "mset" | "isthmus.putctx" | "expire" | "pexpire" | "expireat"
            | "pexpireat" | "persist"
                if self.counters() =>
            {
                Err(Reply::err(format!(
                    "keyspace '{}' holds counters: change them with INCRBY or DECRBY, \
                     reset them with DEL",
                    self.keyspace
                )))
            }
            "set" => self.set(&args).await,
            "setnx" => self
                .put_checked(&args[1], &args[2], Context::default(), WriteMode::IfAbsent)
                .await
                .map(|written| Reply::Int(i64::from(written))),
            "mset" => self.mset(&args).await,
            "mget" => self.mget(&args[1..]).await,
            "del" => self.del(&args[1..]).await,
            "exists" => self.exists(&args[1..]).await,
            "expire" | "pexpire" | "expireat" | "pexpireat" => self.expire(name, &args).await,
            "persist" => self.persist(&args[1]).await,
            "ttl" | "pttl" => self.ttl(&args[1], name == "pttl").await,
            "scan" => self.scan(&args[1..]).await,
            "dbsize" => self.dbsize().await,
            "isthmus.siblings" => self.siblings(&args[1]).await,
            "isthmus.putctx" => self
                .put(&args[1], &args[2], Context(args[3].to_vec()))
                .await
                .map(|()| Reply::Simple("OK")),
            _ => {
                let shown: Vec<String> = args[1..]
                    .iter()
                    .take(3)
                    .map(|a| format!("'{}'", text(a)))
                    .collect();
                Err(Reply::err(format!(
                    "unknown command '{}', with args beginning with: {}",
                    text(&args[0]),
                    shown.join(" ")
                )))
            }
        };
        result.unwrap_or_else(|reply| reply)
    }

    /// `args` as a [`Plain`] command, when it is one on this connection
    /// (a `SET` on a keyspace of counters is not: it is refused).
    pub fn plain(&self, args: &[Bytes]) -> Option<Plain> {
        match args {
            [name, key] if name.eq_ignore_ascii_case(b"get") => Some(Plain::Get(key.clone())),
            [name, key, value] if name.eq_ignore_ascii_case(b"set") && !self.counters() => {
                Some(Plain::Set(key.clone(), value.clone()))
            }
            _ => None,
        }
    }

    /// Serve `batch` at once, each command as [`Session::run`] would;
    /// the replies in the batch's order. The caller makes sure no two
    /// commands of the batch share a key, so none could see another's
    /// effect whichever finishes first.
    ///
    /// One timer covers the whole batch, rather than one per command: a
    /// command not answered when it fires is answered `TIMEOUT`, as it
    /// would be on its own; those answered keep their replies.
    pub async fn run_plain(&mut self, batch: Vec<Plain>) -> Vec<Reply> {
        let ids: Vec<WriteId> = batch.iter().map(|_| self.write_id()).collect();
        let replies: Vec<std::sync::OnceLock<Reply>> =
            batch.iter().map(|_| std::sync::OnceLock::new()).collect();
        self.batch_timed = true;
        let session = &*self;
        let served =
            batch
                .into_iter()
                .zip(ids)
                .zip(&replies)
                .map(|((command, id), slot)| async move {
                    let reply = match command {
                        Plain::Get(key) => session.get(&key).await,
                        Plain::Set(key, value) => session
                            .put_as(
                                &key,
                                &value,
                                Context::default(),
                                WriteMode::Overwrite,
                                Expiry::KeyspaceDefault,
                                id,
                            )
                            .await
                            .map(|current| match current {
                                None => Reply::Simple("OK"),
                                Some(_) => Reply::Nil,
                            }),
                    };
                    let _ = slot.set(reply.unwrap_or_else(|reply| reply));
                });
        let all = futures_util::future::join_all(served);
        let _ = tokio::time::timeout(self.door.timeout, all).await;
        self.batch_timed = false;
        replies
            .into_iter()
            .map(|slot| slot.into_inner().unwrap_or_else(|| self.timed_out()))
            .collect()
    }

    /// `SCAN cursor [MATCH pattern] [COUNT n]`: one page of the
    /// keyspace's scan (`RequestBody::Scan`), `COUNT` keys at most
    /// (default 10, at most `SCAN_COUNT_MAX`), then filtered by `MATCH`;
    /// answered `[next cursor, [keys]]`, cursor `0` when done.
    async fn scan(&self, args: &[Bytes]) -> Result<Reply, Reply> {
        let cursor: ScanCursor = text(&args[0])
            .parse()
            .map_err(|_| Reply::err("invalid cursor"))?;
        let syntax = || Reply::err("syntax error");
        let (mut pattern, mut count) = (None, 10u32);
        let mut options = args[1..].iter();
        while let Some(option) = options.next() {
            let value = options.next().ok_or_else(syntax)?;
            match lower(option).as_str() {
                "match" => pattern = Some(value.clone()),
                "count" => {
                    let n: u64 = text(value)
                        .parse()
                        .map_err(|_| Reply::err("value is not an integer or out of range"))?;
                    if n == 0 {
                        return Err(syntax());
                    }
                    count = n.min(u64::from(SCAN_COUNT_MAX)) as u32;
                }
                _ => return Err(syntax()),
            }
        }
        let body = RequestBody::Scan {
            keyspace: self.keyspace.clone(),
            cursor: cursor.0,
            count,
        };
        match self.call(body).await? {
            ResponseBody::ScanPage { keys, cursor } => {
                let keys = keys
                    .into_iter()
                    .filter(|k| {
                        pattern
                            .as_ref()
                            .is_none_or(|p| super::pattern::matches(p, k))
                    })
                    .map(|k| Reply::Bulk(Bytes::from(k)))
                    .collect();
                Ok(Reply::Array(vec![
                    Reply::Bulk(Bytes::from(cursor.to_string())),
                    Reply::Array(keys),
                ]))
            }
            other => Err(Reply::err(format!("unexpected answer {other:?}"))),
        }
    }

    /// `DBSIZE`: an estimate of the keys in the connection's keyspace,
    /// from the first page of a scan (up to [`DBSIZE_SAMPLE`] keys, in
    /// key hash order from hash 0): exact when that page ends the scan,
    /// else scaled by the share of the hash space the page covered.
    async fn dbsize(&self) -> Result<Reply, Reply> {
        let body = RequestBody::Scan {
            keyspace: self.keyspace.clone(),
            cursor: ScanCursor::START.0,
            count: DBSIZE_SAMPLE,
        };
        match self.call(body).await? {
            ResponseBody::ScanPage { keys, cursor } => Ok(Reply::Int(
                i64::try_from(estimate(keys.len() as u64, ScanCursor(cursor))).unwrap_or(i64::MAX),
            )),
            other => Err(Reply::err(format!("unexpected answer {other:?}"))),
        }
    }

    async fn login(&mut self, user: &Bytes, password: &Bytes) -> Result<Reply, Reply> {
        let credentials = Credentials {
            user: text(user),
            password: text(password),
        };
        match self
            .handler
            .authenticate(Some(credentials), self.certificate.clone())
            .await
        {
            Ok(principal) => {
                self.principal = Some(principal);
                Ok(Reply::Simple("OK"))
            }
            Err(_) => Err(Reply::Error(
                "WRONGPASS invalid username-password pair or user is disabled.".into(),
            )),
        }
    }

    async fn auth(&mut self, args: &[Bytes]) -> Result<Reply, Reply> {
        match args {
            [password] => {
                self.login(&Bytes::from_static(DEFAULT_USER.as_bytes()), password)
                    .await
            }
            [user, password] => self.login(user, password).await,
            _ => Err(Reply::Error("ERR syntax error".into())),
        }
    }

    async fn hello(&mut self, args: &[Bytes]) -> Result<Reply, Reply> {
        let mut rest = args[1..].iter();
        if let Some(version) = rest.next() {
            match text(version).parse::<u8>() {
                Ok(v @ (2 | 3)) => self.protocol = v,
                _ => {
                    return Err(Reply::Error("NOPROTO unsupported protocol version".into()));
                }
            }
        }
        while let Some(option) = rest.next() {
            match lower(option).as_str() {
                "auth" => {
                    let (Some(user), Some(password)) = (rest.next(), rest.next()) else {
                        return Err(Reply::Error("ERR syntax error in HELLO".into()));
                    };
                    self.login(user, password).await?;
                }
                "setname" => {
                    let Some(name) = rest.next() else {
                        return Err(Reply::Error("ERR syntax error in HELLO".into()));
                    };
                    self.name = Some(text(name));
                }
                _ => return Err(Reply::Error("ERR syntax error in HELLO".into())),
            }
        }
        let field = |k: &str, v: Reply| (Reply::bulk(k.to_owned()), v);
        Ok(Reply::Map(vec![
            field("server", Reply::bulk("isthmus")),
            field("version", Reply::bulk(env!("CARGO_PKG_VERSION"))),
            field("proto", Reply::Int(i64::from(self.protocol))),
            field("id", Reply::Int(self.id as i64)),
            field("mode", Reply::bulk("cluster")),
            field("role", Reply::bulk("master")),
            field("modules", Reply::Array(Vec::new())),
        ]))
    }

    fn select(&mut self, index: &Bytes) -> Result<Reply, Reply> {
        let keyspace = text(index)
            .parse::<usize>()
            .ok()
            .and_then(|i| self.door.databases.get(i))
            .ok_or_else(|| Reply::err("DB index is out of range"))?;
        self.keyspace = keyspace.clone();
        Ok(Reply::Simple("OK"))
    }

    fn client(&mut self, args: &[Bytes]) -> Result<Reply, Reply> {
        match (lower(&args[1]).as_str(), args.len()) {
            ("setname", 3) => {
                self.name = Some(text(&args[2]));
                Ok(Reply::Simple("OK"))
            }
            ("getname", 2) => Ok(self.name.clone().map_or(Reply::Nil, Reply::bulk)),
            ("id", 2) => Ok(Reply::Int(self.id as i64)),
            ("info", 2) => Ok(Reply::Text(format!(
                "id={} addr={} name={} db-keyspace={} resp={}\n",
                self.id,
                self.addr,
                self.name.as_deref().unwrap_or(""),
                self.keyspace,
                self.protocol
            ))),
            // Client libraries announce themselves; nothing to keep.
            ("setinfo", 4) => Ok(Reply::Simple("OK")),
            (sub, _) => Err(Reply::err(format!(
                "unknown subcommand or wrong number of arguments for 'client|{sub}'"
            ))),
        }
    }

    async fn info(&self, section: Option<&Bytes>) -> Result<Reply, Reply> {
        let section = section.map(lower).unwrap_or_else(|| "default".into());
        let all = matches!(section.as_str(), "default" | "all" | "everything");
        let mut out = String::new();
        if all || section == "server" {
            out.push_str(&format!(
                "# Server\r\nredis_version:7.2.0\r\nisthmus_version:{}\r\nredis_mode:cluster\r\nnode_id:{}\r\ndc:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                self.door.node_id,
                self.door.dc
            ));
        }
        if all || section == "replication" {
            out.push_str("# Replication\r\nrole:master\r\n");
            if let Ok(ResponseBody::Status { nodes, bridges }) =
                self.call(RequestBody::Status).await
            {
                let mut dcs: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
                for n in &nodes {
                    let e = dcs.entry(n.dc.as_str()).or_default();
                    e.0 += 1;
                    e.1 += usize::from(n.up);
                }
                for (dc, (total, up)) in dcs {
                    out.push_str(&format!("dc_{dc}:nodes={total},up={up}\r\n"));
                }
                for b in bridges {
                    out.push_str(&format!(
                        "bridge_{}:outbox={},shipped={},lag_in_p99_ms={:.0},full_sync_pending={}\r\n",
                        b.remote_dc, b.outbox_records, b.shipped_records, b.lag_in_p99_ms, b.full_sync_pending
                    ));
                }
            }
            out.push_str("\r\n");
        }
        if all || section == "keyspace" {
            out.push_str("# Keyspace\r\n");
            for (i, ks) in self.door.databases.iter().enumerate() {
                out.push_str(&format!("db{i}:keyspace={ks}\r\n"));
            }
            out.push_str("\r\n");
        }
        Ok(Reply::Text(out))
    }

    /// Whether the connection's keyspace holds counters.
    fn counters(&self) -> bool {
        self.door.counters.contains(&self.keyspace)
    }

    /// What `GET` shows of a key's siblings: in a keyspace of counters,
    /// the value of their join; otherwise the [`chosen`] one.
    fn shown(&self, siblings: &[Sibling]) -> Result<Reply, Reply> {
        if siblings.is_empty() {
            return Ok(Reply::Nil);
        }
        if self.counters() {
            let counter = Counter::join_all(siblings.iter().map(|s| &s.value[..]))
                .map_err(|e| Reply::Error(format!("WRONGTYPE {e}")))?;
            return Ok(Reply::bulk(counter.value().to_string()));
        }
        Ok(chosen(siblings).map_or(Reply::Nil, |s| Reply::bulk(s.value.clone())))
    }

    async fn get(&self, key: &Bytes) -> Result<Reply, Reply> {
        let (siblings, _) = self.read(key).await?;
        self.shown(&siblings)
    }

    async fn getdel(&mut self, key: &Bytes) -> Result<Reply, Reply> {
        let (siblings, context) = self.read(key).await?;
        let shown = self.shown(&siblings)?;
        if !siblings.is_empty() {
            self.delete(key, context).await?;
        }
        Ok(shown)
    }

    /// `INCR`, `INCRBY`, `DECR`, `DECRBY`: `by` added to the key's counter
    /// at its deciding replica ([`WriteMode::Add`]); answered with the
    /// counter's value there.
    async fn add(&mut self, key: &Bytes, by: i64) -> Result<Reply, Reply> {
        let put = RequestBody::Put {
            mode: WriteMode::Add(by),
            // As Redis's INCR: the counter keeps its expiry.
            expiry: Expiry::Keep,
            keyspace: self.keyspace.clone(),
            key: key.to_vec(),
            value: Vec::new(),
            context: Context::default(),
            consistency: None,
            write_id: self.write_id(),
            sloppy: None,
        };
        match self.call(put).await? {
            ResponseBody::Counted { value } => Ok(Reply::Int(value)),
            other => Err(Reply::err(format!("unexpected answer {other:?}"))),
        }
    }

    /// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms |
    /// KEEPTTL]`: an overwrite (no read first unless `GET` asks for the
    /// old value); `NX` writes only if the key holds no live value,
    /// atomically; `XX` only if it does: a read, then a write conditional
    /// on nothing having changed since, again over what a failure
    /// returned, up to [`XX_ATTEMPTS`] times. Without an expiry option the
    /// value takes the keyspace's default (`ttl_s`, else none);
    /// `KEEPTTL` keeps the key's current one, read by the replica that
    /// decides the overwrite, under the key's lock.
    async fn set(&mut self, args: &[Bytes]) -> Result<Reply, Reply> {
        let (mut get, mut nx, mut xx) = (false, false, false);
        let mut expiry: Option<Expiry> = None;
        let mut options = args[3..].iter();
        while let Some(option) = options.next() {
            let option = lower(option);
            let timed = match option.as_str() {
                "get" => {
                    get = true;
                    continue;
                }
                "nx" => {
                    nx = true;
                    continue;
                }
                "xx" => {
                    xx = true;
                    continue;
                }
                "keepttl" => Expiry::Keep,
                "ex" | "px" | "exat" | "pxat" => {
                    let Some(n) = options.next() else {
                        return Err(Reply::Error("ERR syntax error".into()));
                    };
                    let n = positive(n, "set")?;
                    match option.as_str() {
                        "ex" => Expiry::AfterMs(n.saturating_mul(1000)),
                        "px" => Expiry::AfterMs(n),
                        "exat" => Expiry::AtMs(n.saturating_mul(1000)),
                        _ => Expiry::AtMs(n),
                    }
                }
                _ => return Err(Reply::Error("ERR syntax error".into())),
            };
            if expiry.replace(timed).is_some() {
                return Err(Reply::Error("ERR syntax error".into()));
            }
        }
        if nx && xx {
            return Err(Reply::Error("ERR syntax error".into()));
        }
        let expiry = expiry.unwrap_or(Expiry::KeyspaceDefault);
        let (key, value) = (&args[1], &args[2]);
        let old = |siblings: &[Sibling]| {
            chosen(siblings).map_or(Reply::Nil, |s| Reply::bulk(s.value.clone()))
        };
        if xx {
            let (mut siblings, mut context) = self.read(key).await?;
            for _ in 0..XX_ATTEMPTS {
                if siblings.is_empty() {
                    return Ok(Reply::Nil);
                }
                match self
                    .put_expiring(key, value, context, WriteMode::IfMatch, expiry)
                    .await?
                {
                    None if get => return Ok(old(&siblings)),
                    None => return Ok(Reply::Simple("OK")),
                    Some(now) => (siblings, context) = now,
                }
            }
            return Err(Reply::Error(format!(
                "CONDITION_FAILED the key changed during each of {XX_ATTEMPTS} attempts"
            )));
        }
        let (siblings, context) = if get {
            self.read(key).await?
        } else {
            (Vec::new(), Context::default())
        };
        let mode = if nx {
            WriteMode::IfAbsent
        } else {
            WriteMode::Overwrite
        };
        match self.put_expiring(key, value, context, mode, expiry).await? {
            None if get => Ok(old(&siblings)),
            None => Ok(Reply::Simple("OK")),
            // NX on a key that holds a value: not set.
            Some((now, _)) if get => Ok(old(&now)),
            Some(_) => Ok(Reply::Nil),
        }
    }

    /// `MSET`: an overwrite of each key in turn (not atomic across keys).
    async fn mset(&mut self, args: &[Bytes]) -> Result<Reply, Reply> {
        if args.len().is_multiple_of(2) {
            return Err(arity("mset"));
        }
        for pair in args[1..].chunks(2) {
            self.put_mode(&pair[0], &pair[1], Context::default(), WriteMode::Overwrite)
                .await?;
        }
        Ok(Reply::Simple("OK"))
    }

    async fn mget(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let (siblings, _) = self.read(key).await?;
            values.push(self.shown(&siblings)?);
        }
        Ok(Reply::Array(values))
    }

    async fn del(&mut self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let mut removed = 0;
        for key in keys {
            let (siblings, context) = self.read(key).await?;
            if !siblings.is_empty() {
                self.delete(key, context).await?;
                removed += 1;
            }
        }
        Ok(Reply::Int(removed))
    }

    async fn exists(&self, keys: &[Bytes]) -> Result<Reply, Reply> {
        let mut found = 0;
        for key in keys {
            let (siblings, _) = self.read(key).await?;
            found += i64::from(!siblings.is_empty());
        }
        Ok(Reply::Int(found))
    }

    /// `EXPIRE key s`, `PEXPIRE key ms`, `EXPIREAT key unix-s`, `PEXPIREAT
    /// key unix-ms`, with `NX` (only if the key has no expiry), `XX` (only
    /// if it has one), `GT` (only later than the current one; none counts
    /// as infinite), `LT` (only earlier). A read, then the value GET
    /// returns written again with the new expiry, conditional on nothing
    /// having changed since (as `SET XX`, up to [`XX_ATTEMPTS`] times; the
    /// write supersedes every sibling the read saw). 1 when set, 0 when
    /// the key is absent or a condition said no. A time already past
    /// deletes the key, as in Redis.
    async fn expire(&mut self, name: &str, args: &[Bytes]) -> Result<Reply, Reply> {
        let n = integer(&args[2])?;
        let now = now_ms() as i64;
        let at = match name {
            "expire" => n.saturating_mul(1000).saturating_add(now),
            "pexpire" => n.saturating_add(now),
            "expireat" => n.saturating_mul(1000),
            _ => n,
        };
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for option in &args[3..] {
            match lower(option).as_str() {
                "nx" => nx = true,
                "xx" => xx = true,
                "gt" => gt = true,
                "lt" => lt = true,
                other => {
                    return Err(Reply::Error(format!("ERR Unsupported option {other}")));
                }
            }
        }
        if nx && (xx || gt || lt) {
            return Err(Reply::Error(
                "ERR NX and XX, GT or LT options at the same time are not compatible".into(),
            ));
        }
        if gt && lt {
            return Err(Reply::Error(
                "ERR GT and LT options at the same time are not compatible".into(),
            ));
        }
        let key = &args[1];
        let (mut siblings, mut context) = self.read(key).await?;
        for _ in 0..XX_ATTEMPTS {
            let Some(value) = chosen(&siblings).map(|s| Bytes::from(s.value.clone())) else {
                return Ok(Reply::Int(0));
            };
            let current = key_expiry(&siblings);
            let allowed = match current {
                None => !xx && !gt,
                Some(c) => !nx && (!gt || at > c as i64) && (!lt || at < c as i64),
            };
            if !allowed {
                return Ok(Reply::Int(0));
            }
            if at <= now {
                self.delete(key, context).await?;
                return Ok(Reply::Int(1));
            }
            let expiry = Expiry::AtMs(at as u64);
            match self
                .put_expiring(key, &value, context, WriteMode::IfMatch, expiry)
                .await?
            {
                None => return Ok(Reply::Int(1)),
                Some(now) => (siblings, context) = now,
            }
        }
        Err(Reply::Error(format!(
            "CONDITION_FAILED the key changed during each of {XX_ATTEMPTS} attempts"
        )))
    }

    /// `PERSIST key`: the key's value written again without an expiry (as
    /// `EXPIRE` writes it): 1 if it had one, 0 if it had none or is absent.
    async fn persist(&mut self, key: &Bytes) -> Result<Reply, Reply> {
        let (mut siblings, mut context) = self.read(key).await?;
        for _ in 0..XX_ATTEMPTS {
            let Some(value) = chosen(&siblings).map(|s| Bytes::from(s.value.clone())) else {
                return Ok(Reply::Int(0));
            };
            if key_expiry(&siblings).is_none() {
                return Ok(Reply::Int(0));
            }
            match self
                .put_expiring(key, &value, context, WriteMode::IfMatch, Expiry::Never)
                .await?
            {
                None => return Ok(Reply::Int(1)),
                Some(now) => (siblings, context) = now,
            }
        }
        Err(Reply::Error(format!(
            "CONDITION_FAILED the key changed during each of {XX_ATTEMPTS} attempts"
        )))
    }

    /// `TTL key` (seconds, rounded) and `PTTL key` (milliseconds): -2 when
    /// the key is absent, -1 when it has no expiry ([`key_expiry`]).
    async fn ttl(&self, key: &Bytes, millis: bool) -> Result<Reply, Reply> {
        let (siblings, _) = self.read(key).await?;
        if siblings.is_empty() {
            return Ok(Reply::Int(-2));
        }
        let Some(at) = key_expiry(&siblings) else {
            return Ok(Reply::Int(-1));
        };
        let left = at.saturating_sub(now_ms()) as i64;
        Ok(Reply::Int(if millis { left } else { (left + 500) / 1000 }))
    }

    async fn siblings(&self, key: &Bytes) -> Result<Reply, Reply> {
        let (siblings, context, failure) = self.read_flagged(key).await?;
        let mut ordered: Vec<&Sibling> = siblings.iter().collect();
        ordered.sort_by(|a, b| {
            (a.timestamp_ms, &a.origin_dc, &a.value).cmp(&(b.timestamp_ms, &b.origin_dc, &b.value))
        });
        Ok(Reply::Array(vec![
            Reply::Array(
                ordered
                    .into_iter()
                    .map(|s| Reply::bulk(s.value.clone()))
                    .collect(),
            ),
            Reply::bulk(context.0),
            merge_failure_reply(failure),
        ]))
    }
}

/// `ISTHMUS.SIBLINGS`' third element: nil, or the class of the merge the
/// keyspace's resolver failed and the resolver (`name@version`, nil when
/// the node did not know it).
fn merge_failure_reply(failure: Option<MergeFailureInfo>) -> Reply {
    match failure {
        None => Reply::Nil,
        Some(info) => Reply::Array(vec![
            Reply::bulk(info.class.as_str()),
            info.resolver.map_or(Reply::Nil, Reply::bulk),
        ]),
    }
}

/// The keys `DBSIZE` reads to estimate a keyspace's size: the estimate's
/// relative error is about `1 / sqrt(DBSIZE_SAMPLE)` (3%), since key
/// hashes are uniform.
pub const DBSIZE_SAMPLE: u32 = 1000;

/// The keys of a keyspace estimated from a first scan page of `found`
/// keys that ended at `cursor` (the next key hash): exact when the scan
/// ended, else `found` scaled from the hashes `0..cursor` to all `2^64`.
fn estimate(found: u64, cursor: ScanCursor) -> u64 {
    if cursor.is_end() {
        return found;
    }
    let scaled = u128::from(found) * (1u128 << 64) / u128::from(cursor.0);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`: enough for redis-cli and
/// client libraries to start.
fn command(args: &[Bytes]) -> Reply {
    // name, arity, flags, first key, last key, step (as Redis lists them).
    let info = |(name, arity): &(&str, i64)| {
        let keyed = matches!(
            *name,
            "get"
                | "getdel"
                | "incr"
                | "incrby"
                | "decr"
                | "decrby"
                | "set"
                | "setnx"
                | "mget"
                | "mset"
                | "del"
                | "exists"
                | "expire"
                | "pexpire"
                | "expireat"
                | "pexpireat"
                | "persist"
                | "ttl"
                | "pttl"
                | "isthmus.siblings"
                | "isthmus.putctx"
        );
        let many = matches!(*name, "mget" | "mset" | "del" | "exists");
        let first = i64::from(keyed);
        Reply::Array(vec![
            Reply::bulk(name.to_string()),
            Reply::Int(*arity),
            Reply::Array(Vec::new()),
            Reply::Int(first),
            Reply::Int(if many { -1 } else { first }),
            Reply::Int(if *name == "mset" { 2 } else { first }),
        ])
    };
    match args.get(1).map(lower).as_deref() {
        None => Reply::Array(COMMANDS.iter().map(info).collect()),
        Some("count") => Reply::Int(COMMANDS.len() as i64),
        Some("docs") => Reply::Map(Vec::new()),
        Some("info") => Reply::Array(
            args[2..]
                .iter()
                .map(|n| {
                    COMMANDS
                        .iter()
                        .find(|(c, _)| *c == lower(n))
                        .map_or(Reply::Nil, info)
                })
                .collect(),
        ),
        Some(sub) => Reply::err(format!("unknown subcommand '{sub}' for 'command'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn write_id_prefixes_differ_by_node_connection_and_time() {
        let a = write_prefix("n1", 1);
        assert_ne!(a, write_prefix("n1", 2));
        assert_ne!(a, write_prefix("n2", 1));
        // The same node and connection id after a restart.
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_ne!(a, write_prefix("n1", 1));
    }

    #[test]
    fn dbsize_is_exact_for_a_whole_scan_and_scaled_from_a_part() {
        assert_eq!(estimate(0, ScanCursor::START), 0);
        assert_eq!(estimate(17, ScanCursor::START), 17);
        // A quarter of the hash space held 250 keys: about 1000 in all.
        assert_eq!(estimate(250, ScanCursor(1 << 62)), 1000);
        // A page that ended at the very first hash cannot overflow.
        assert_eq!(estimate(1000, ScanCursor(1)), u64::MAX);
        // Uniform hashes: the estimate of 100k keys from the first 1000
        // of them is within 10%.
        let mut hashes: Vec<u64> = (0..100_000u64)
            .map(|i| isthmus_client::placement::key_hash(format!("key-{i}").as_bytes()))
            .collect();
        hashes.sort_unstable();
        let cursor = ScanCursor::after(hashes[DBSIZE_SAMPLE as usize - 1]);
        let guess = estimate(u64::from(DBSIZE_SAMPLE), cursor);
        assert!((90_000..110_000).contains(&guess), "{guess}");
    }

    /// Answers a `Get` after sleeping as many ms as its key's first
    /// byte says, with the key as the value; takes every `Put`.
    struct Slow;

    impl Handler for Slow {
        async fn authenticate(
            &self,
            _: Option<isthmus_client::wire::Credentials>,
            _: Option<CertIdentity>,
        ) -> Result<Principal, WireError> {
            Ok(Principal::Anonymous)
        }

        async fn handle(&self, _: &Principal, body: RequestBody, _: Duration) -> ResponseBody {
            match body {
                RequestBody::Get { key, .. } => {
                    let ms = u64::from(key.first().copied().unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ResponseBody::Value {
                        siblings: vec![Sibling {
                            value: key,
                            timestamp_ms: 0,
                            origin_dc: "dc1".into(),
                            expires_ms: None,
                        }],
                        context: Context::default(),
                        merge_failure: None,
                    }
                }
                _ => ResponseBody::Written,
            }
        }

        async fn handle_peer(
            &self,
            _: crate::server::PeerIdentity,
            _: crate::peer::PeerRequest,
            _: Duration,
        ) -> crate::peer::PeerResponse {
            crate::peer::PeerResponse::Applied
        }
    }

    /// A batch of plain commands shares one timer: a command still
    /// unanswered when it fires is answered `TIMEOUT`, the rest keep
    /// their replies; after the batch, a command is timed on its own.
    #[tokio::test]
    async fn a_batch_times_out_only_what_it_did_not_answer() {
        let door = Arc::new(FrontDoor {
            databases: vec!["db".into()],
            timeout: Duration::from_millis(100),
            connections_max: 1,
            request_bytes_max: 1 << 20,
            node_id: "n1".into(),
            dc: "dc1".into(),
            counters: Default::default(),
        });
        let mut session = Session::new(Arc::new(Slow), door, 1, "test".into(), None).await;
        let (fast, slow) = (Bytes::from_static(&[5]), Bytes::from_static(&[250]));
        let replies = session
            .run_plain(vec![
                Plain::Get(fast.clone()),
                Plain::Get(slow.clone()),
                Plain::Set(Bytes::from_static(b"k"), Bytes::from_static(b"v")),
            ])
            .await;
        assert_eq!(replies[0], Reply::Bulk(fast.clone()));
        assert!(
            matches!(&replies[1], Reply::Error(e) if e.starts_with("TIMEOUT")),
            "{:?}",
            replies[1]
        );
        assert_eq!(replies[2], Reply::Simple("OK"));
        // On its own again: the slow read still times out, alone.
        let alone = session.run(vec![Bytes::from_static(b"GET"), slow]).await;
        assert!(
            matches!(&alone, Reply::Error(e) if e.starts_with("TIMEOUT")),
            "{alone:?}"
        );
        let alone = session
            .run(vec![Bytes::from_static(b"GET"), fast.clone()])
            .await;
        assert_eq!(alone, Reply::Bulk(fast));
    }

    #[test]
    fn integers_parse_as_redis_parses_them() {
        assert_eq!(integer(&Bytes::from("-42")).unwrap(), -42);
        for bad in ["", "1.5", "9223372036854775808", " 1", "0x10"] {
            assert!(integer(&Bytes::from(bad)).is_err(), "{bad}");
        }
    }
}
