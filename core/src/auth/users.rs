//! [`Users`]: a node's users over its `_auth` system keyspace: cached
//! reads, password checks under a node-wide bound, and the admin
//! mutations.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use isthmus_client::wire::{Credentials, Grant, Permission, Role};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::AuthError;
use super::password::{
    PASSWORD_BYTES_MAX, PasswordParams, hash_password, is_well_formed, validate_name,
    validate_password, verify_password,
};
use super::record::{UserRecord, resolve, user_key, user_name};
use crate::store::StoreError;
use crate::system_keyspace::{self, SystemKeyspace};
use crate::wall_clock::now_ms;

/// Password hashes and verifications a node runs at once, by default:
/// two cores' worth at most, whatever the number of login attempts.
pub const VERIFICATIONS_MAX_DEFAULT: usize = 2;

/// Most grants one user holds: a record stays small, and a check walks
/// them all.
pub const GRANTS_PER_USER_MAX: usize = 64;

/// Most decoded records cached; past it the cache starts over. Only
/// users that exist are cached, so names made up by an attacker cannot
/// fill it.
pub const USERS_CACHED_MAX: usize = 4096;

/// How a node's [`Users`] works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsersConfig {
    /// argon2id's parameters for passwords set on this node.
    pub password: PasswordParams,
    /// Hashes and verifications at once on this node (at least one).
    pub verifications_max: usize,
    /// How long a mutation's write may take to reach its level.
    pub write_deadline: Duration,
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            password: PasswordParams::default(),
            verifications_max: VERIFICATIONS_MAX_DEFAULT,
            write_deadline: Duration::from_secs(10),
        }
    }
}

/// What a node's password checks have done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// Verifications run (one per [`Users::authenticate`], whether the
    /// user exists or not).
    pub verifications: u64,
    /// Authentications refused for bad credentials.
    pub failures: u64,
    /// Hashes and verifications running now.
    pub in_flight: usize,
}

/// Decoded records of the system keyspace generation they were read at.
#[derive(Default)]
struct Cache {
    generation: Option<u64>,
    records: HashMap<String, UserRecord>,
}

struct Inner {
    system: SystemKeyspace,
    config: UsersConfig,
    /// A hash of no password, made with `config.password`: what an
    /// unknown user's attempt is verified against.
    dummy_hash: String,
    work: Semaphore,
    cache: Mutex<Cache>,
    /// Held across a mutation's read, change and write.
    mutations: tokio::sync::Mutex<()>,
    verifications: AtomicU64,
    failures: AtomicU64,
    in_flight: AtomicUsize,
    in_flight_peak: AtomicUsize,
}

/// A node's users, over its `_auth` keyspace. Cheap to clone.
///
/// Reads (`get`, `list`) are of the node's own replica and block on the
/// storage engine; call them off the runtime's workers
/// ([`Users::authenticate`] and the mutations do so themselves).
#[derive(Clone)]
pub struct Users {
    inner: Arc<Inner>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("keyspace", &self.inner.system.keyspace())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Counts a verification as running while it lives.
struct Running<'a>(&'a Inner);

impl<'a> Running<'a> {
    fn start(inner: &'a Inner) -> Self {
        let now = inner.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        inner.in_flight_peak.fetch_max(now, Ordering::Relaxed);
        Running(inner)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn task_failed(e: tokio::task::JoinError) -> AuthError {
    AuthError::Store(StoreError::Failed {
        reason: format!("a blocking authentication task failed: {e}"),
    })
}

impl Users {
    /// The users of `system` (the node's `_auth` keyspace). Computes the
    /// dummy hash unknown users are checked against: one hash, on the
    /// calling thread.
    pub fn new(system: SystemKeyspace, config: UsersConfig) -> Result<Self, AuthError> {
        let dummy_hash = hash_password(&config.password, "")?;
        Ok(Users {
            inner: Arc::new(Inner {
                work: Semaphore::new(config.verifications_max.max(1)),
                system,
                config,
                dummy_hash,
                cache: Mutex::default(),
                mutations: tokio::sync::Mutex::new(()),
                verifications: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                in_flight_peak: AtomicUsize::new(0),
            }),
        })
    }

    /// What the password checks have done.
    pub fn stats(&self) -> AuthStats {
        AuthStats {
            verifications: self.inner.verifications.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
            in_flight: self.inner.in_flight.load(Ordering::Relaxed),
        }
    }

    /// `name`'s record as this replica holds it (`None` if there is no
    /// such user, or it was removed). Cached until the system keyspace's
    /// generation moves, so a change that reaches this replica by any
    /// path is seen by the next call. Blocks on the engine on a miss.
    pub fn get(&self, name: &str) -> Result<Option<UserRecord>, AuthError> {
        validate_name(name)?;
        let generation = self.inner.system.generation();
        {
            let mut cache = self.inner.cache.lock();
            if cache.generation != Some(generation) {
                cache.records.clear();
                cache.generation = Some(generation);
            }
            if let Some(record) = cache.records.get(name) {
                return Ok(Some(record.clone()));
            }
        }
        // Read after taking the generation: the replica bumps it after an
        // apply, so what is read is at least as new as `generation` says.
        let record = resolve(&self.inner.system.get(&user_key(name))?)?;
        if let Some(record) = &record {
            if record.name != name {
                return Err(AuthError::Corrupt {
                    reason: format!("the record at user/{name} names {:?}", record.name),
                });
            }
            let mut cache = self.inner.cache.lock();
            if cache.generation == Some(generation) {
                if cache.records.len() >= USERS_CACHED_MAX {
                    cache.records.clear();
                }
                cache.records.insert(name.to_owned(), record.clone());
            }
        }
        Ok(record)
    }

    /// Every user this replica holds, by name. A record that does not
    /// decode fails the listing, naming it. Blocks on the engine.
    pub fn list(&self) -> Result<Vec<UserRecord>, AuthError> {
        let mut users = Vec::new();
        for (key, set) in self.inner.system.scan()? {
            let Some(name) = user_name(&key) else {
                continue;
            };
            let record = resolve(&set).map_err(|e| AuthError::Corrupt {
                reason: format!("user {name:?}: {e}"),
            })?;
            users.extend(record);
        }
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    /// The names of the users whose key reads as live, whether or not
    /// their record decodes, with the records that do. Blocks.
    fn live(&self) -> Result<Vec<(String, Option<UserRecord>)>, AuthError> {
        let mut live = Vec::new();
        for (key, set) in self.inner.system.scan()? {
            let Some(name) = user_name(&key) else {
                continue;
            };
            let latest = system_keyspace::latest(&set);
            if latest.is_some_and(|v| !v.is_tombstone()) {
                live.push((name.to_owned(), resolve(&set).ok().flatten()));
            }
        }
        Ok(live)
    }

    /// Check `credentials`: the user's record if the password matches.
    ///
    /// An unknown user and a wrong password are the same
    /// [`AuthError::BadCredentials`], after the same work: an unknown
    /// user's password is verified against a dummy hash. The verification
    /// runs on the blocking pool, at most
    /// [`UsersConfig::verifications_max`] at once on the node; further
    /// attempts wait their turn (first come, first served).
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<UserRecord, AuthError> {
        let _permit = self
            .inner
            .work
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let (this, credentials) = (self.clone(), credentials.clone());
        tokio::task::spawn_blocking(move || this.authenticate_blocking(&credentials))
            .await
            .map_err(task_failed)?
    }

    fn authenticate_blocking(&self, credentials: &Credentials) -> Result<UserRecord, AuthError> {
        let Credentials { user, password } = credentials;
        let record = match self.get(user) {
            Ok(record) => record,
            // A name no user can have: nobody.
            Err(AuthError::InvalidName { .. }) => None,
            Err(AuthError::Corrupt { reason }) => {
                // Fail closed, and answer as for anyone else: what is
                // wrong is for the operator's log, not for the client.
                tracing::warn!(%user, %reason, "a user record does not decode; refusing its logins");
                None
            }
            Err(e) => return Err(e),
        };
        let inner = &*self.inner;
        inner.verifications.fetch_add(1, Ordering::Relaxed);
        let matched = {
            let _running = Running::start(inner);
            match &record {
                Some(r)
                    if password.len() <= PASSWORD_BYTES_MAX && is_well_formed(&r.password_hash) =>
                {
                    verify_password(&r.password_hash, password)
                }
                _ => {
                    // The same work as a real check (a password too long
                    // to be anyone's is not hashed whole).
                    let stand_in = if password.len() <= PASSWORD_BYTES_MAX {
                        password
                    } else {
                        ""
                    };
                    let _ = verify_password(&inner.dummy_hash, stand_in);
                    false
                }
            }
        };
        match record {
            Some(record) if matched => Ok(record),
            _ => {
                inner.failures.fetch_add(1, Ordering::Relaxed);
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// `name`'s record, read on the blocking pool.
    async fn read(&self, name: &str) -> Result<Option<UserRecord>, AuthError> {
        let (this, name) = (self.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || this.get(&name))
            .await
            .map_err(task_failed)?
    }

    /// `name`'s record, or [`AuthError::UnknownUser`].
    async fn existing(&self, name: &str) -> Result<UserRecord, AuthError> {
        self.read(name)
            .await?
            .ok_or_else(|| AuthError::UnknownUser {
                name: name.to_owned(),
            })
    }

    /// Hash `password` with the node's parameters, on the blocking pool,
    /// under the same bound as verifications.
    async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let _permit = self
            .inner
            .work
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let (this, password) = (self.clone(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            let _running = Running::start(&this.inner);
            hash_password(&this.inner.config.password, &password)
        })
        .await
        .map_err(task_failed)?
    }

    async fn put(&self, mut record: UserRecord) -> Result<(), AuthError> {
        record.updated_ms = now_ms();
        self.inner
            .system
            .write(
                &user_key(&record.name),
                record.encode(),
                self.inner.config.write_deadline,
            )
            .await?;
        Ok(())
    }

    /// Refuse to leave no live user holding the admin permission: `name`
    /// is about to lose it. (A guard against locking every operator out,
    /// checked against this replica: a change through another node at
    /// the same moment is not seen.)
    async fn keep_an_admin(&self, name: &str) -> Result<(), AuthError> {
        let this = self.clone();
        let others = tokio::task::spawn_blocking(move || this.live())
            .await
            .map_err(task_failed)??;
        let another = others.iter().any(|(other, record)| {
            other != name
                && record
                    .as_ref()
                    .is_some_and(|r| r.allows(&Permission::Admin))
        });
        if another {
            Ok(())
        } else {
            Err(AuthError::LastAdmin {
                name: name.to_owned(),
            })
        }
    }

    /// Create user `name` with `password` and `grants`; refused if the
    /// name is taken on this replica.
    pub async fn add(
        &self,
        name: &str,
        password: &str,
        grants: impl IntoIterator<Item = Grant>,
    ) -> Result<(), AuthError> {
        validate_name(name)?;
        validate_password(password)?;
        let grants = checked(grants)?;
        let _one = self.inner.mutations.lock().await;
        if self.read(name).await?.is_some() {
            return Err(AuthError::UserExists {
                name: name.to_owned(),
            });
        }
        let password_hash = self.hash(password).await?;
        self.put(UserRecord {
            name: name.to_owned(),
            password_hash,
            grants,
            updated_ms: 0,
        })
        .await
    }

    /// Replace `name`'s password.
    pub async fn passwd(&self, name: &str, password: &str) -> Result<(), AuthError> {
        validate_name(name)?;
        validate_password(password)?;
        let _one = self.inner.mutations.lock().await;
        let mut record = self.existing(name).await?;
        record.password_hash = self.hash(password).await?;
        self.put(record).await
    }

    /// Add `grant` to `name` (nothing is written if it holds it already).
    pub async fn grant(&self, name: &str, grant: Grant) -> Result<(), AuthError> {
        validate_name(name)?;
        grant.validate()?;
        let _one = self.inner.mutations.lock().await;
        let mut record = self.existing(name).await?;
        if !record.grants.insert(grant) {
            return Ok(());
        }
        if record.grants.len() > GRANTS_PER_USER_MAX {
            return Err(AuthError::TooManyGrants {
                max: GRANTS_PER_USER_MAX,
            });
        }
        self.put(record).await
    }

    /// Take exactly `grant` from `name` (nothing is written if it does not
    /// hold it; what its other grants give stays). Refused if it would
    /// leave no user holding the admin permission.
    pub async fn revoke(&self, name: &str, grant: &Grant) -> Result<(), AuthError> {
        validate_name(name)?;
        let _one = self.inner.mutations.lock().await;
        let mut record = self.existing(name).await?;
        let was_admin = record.allows(&Permission::Admin);
        if !record.grants.remove(grant) {
            return Ok(());
        }
        if was_admin && !record.allows(&Permission::Admin) {
            self.keep_an_admin(name).await?;
        }
        self.put(record).await
    }

    /// Delete `name` (a tombstone, which wins over older versions on every
    /// replica). A record that no longer decodes can still be removed.
    /// Refused if it would leave no user holding the admin permission.
    pub async fn remove(&self, name: &str) -> Result<(), AuthError> {
        validate_name(name)?;
        let _one = self.inner.mutations.lock().await;
        let this = self.clone();
        let live = tokio::task::spawn_blocking(move || this.live())
            .await
            .map_err(task_failed)??;
        let Some((_, record)) = live.into_iter().find(|(n, _)| n == name) else {
            return Err(AuthError::UnknownUser {
                name: name.to_owned(),
            });
        };
        if record.is_some_and(|r| r.allows(&Permission::Admin)) {
            self.keep_an_admin(name).await?;
        }
        self.inner
            .system
            .delete(&user_key(name), self.inner.config.write_deadline)
            .await?;
        Ok(())
    }

    /// The first-admin bootstrap: if this replica holds no live user at
    /// all, create `name` with `password` and `role:admin`, and answer
    /// `true`; otherwise do nothing and answer `false` (the configured
    /// password is then ignored: change it with [`Users::passwd`]).
    ///
    /// Run it on a node whose `_auth` replica is current: a node that has
    /// not yet received the cluster's users (a new node still streaming)
    /// sees none and would write the admin again, as a sibling of the
    /// existing record that may win and reset that user's password and
    /// grants to the bootstrap ones. Two nodes bootstrapping an empty
    /// cluster at once are harmless: both write the same user and
    /// password, and either version verifies.
    pub async fn ensure_bootstrap_admin(
        &self,
        name: &str,
        password: &str,
    ) -> Result<bool, AuthError> {
        validate_name(name)?;
        validate_password(password)?;
        let _one = self.inner.mutations.lock().await;
        let this = self.clone();
        let live = tokio::task::spawn_blocking(move || this.live())
            .await
            .map_err(task_failed)??;
        if !live.is_empty() {
            return Ok(false);
        }
        let password_hash = self.hash(password).await?;
        self.put(UserRecord {
            name: name.to_owned(),
            password_hash,
            grants: BTreeSet::from([Grant::Role(Role::Admin)]),
            updated_ms: 0,
        })
        .await?;
        Ok(true)
    }

    #[cfg(test)]
    fn in_flight_peak(&self) -> usize {
        self.inner.in_flight_peak.load(Ordering::Relaxed)
    }
}

/// `grants` as a set, each valid and at most [`GRANTS_PER_USER_MAX`].
fn checked(grants: impl IntoIterator<Item = Grant>) -> Result<BTreeSet<Grant>, AuthError> {
    let mut set = BTreeSet::new();
    for grant in grants {
        grant.validate()?;
        set.insert(grant);
        if set.len() > GRANTS_PER_USER_MAX {
            return Err(AuthError::TooManyGrants {
                max: GRANTS_PER_USER_MAX,
            });
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use isthmus_client::wire::{ErrorCode, UserRequest, UserResponse};
    use parking_lot::RwLock;

    use super::*;
    use crate::auth::{AUTH_KEYSPACE, serve};
    use crate::bridge::BoxFuture;
    use crate::coordinator::error::CoordinatorError;
    use crate::limit::Limits;
    use crate::model::{Actor, Clock, Dot, Version};
    use crate::ring::NodeId;
    use crate::store::{BlockingRead, LocalStore, MemStore};
    use crate::system_keyspace::SystemWriter;

    /// Runs one of `MemStore`'s calls, which never wait, on this thread.
    fn ready<T>(call: impl Future<Output = T>) -> T {
        match pin!(call).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => out,
            Poll::Pending => unreachable!("MemStore's calls never wait"),
        }
    }

    /// One replica's `_auth` keyspace in memory, written as the
    /// coordinating replica would: a new dot over the given context, then
    /// the apply counted (the replica's `system_applies`). Its writes are
    /// timestamped with their counter.
    struct Replica {
        store: MemStore,
        applies: Arc<AtomicU64>,
        counter: AtomicU64,
    }

    impl Replica {
        fn apply(&self, key: &[u8], version: Version) {
            ready(self.store.apply(AUTH_KEYSPACE, key, vec![version])).unwrap();
            self.applies.fetch_add(1, Ordering::Release);
        }

        fn next(&self, mut context: Clock) -> (Clock, u64) {
            let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
            context.add_dot(Dot {
                actor: Actor(7),
                counter,
            });
            (context, counter)
        }
    }

    impl BlockingRead for Replica {
        fn get_blocking(&self, keyspace: &str, key: &[u8]) -> Result<VersionSet, StoreError> {
            ready(self.store.get(keyspace, key))
        }

        fn scan_blocking(&self, keyspace: &str) -> Result<Vec<(Vec<u8>, VersionSet)>, StoreError> {
            ready(self.store.scan_hashes(keyspace, ..))
        }
    }

    impl SystemWriter for Replica {
        fn write<'a>(
            &'a self,
            _keyspace: &'a str,
            key: &'a [u8],
            value: Option<Vec<u8>>,
            context: Clock,
            _write_id: [u8; 16],
            _deadline: Duration,
        ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
            Box::pin(async move {
                let (clock, at) = self.next(context);
                let version = match value {
                    Some(value) => Version::value(clock, value, at, "dc1".into()),
                    None => Version::tombstone(clock, at, "dc1".into()),
                };
                self.apply(key, version);
                Ok(())
            })
        }
    }

    use crate::model::VersionSet;

    struct Node {
        replica: Arc<Replica>,
        // The keyspace holds these weakly.
        _reader: Arc<dyn BlockingRead>,
        _writer: Arc<dyn SystemWriter>,
        users: Users,
    }

    fn node_with(config: UsersConfig) -> Node {
        let replica = Arc::new(Replica {
            store: MemStore::new(),
            applies: Arc::default(),
            counter: AtomicU64::new(0),
        });
        let reader: Arc<dyn BlockingRead> = replica.clone();
        let writer: Arc<dyn SystemWriter> = replica.clone();
        let system = SystemKeyspace::new(
            NodeId("n1".into()),
            AUTH_KEYSPACE,
            &reader,
            &writer,
            replica.applies.clone(),
            Arc::new(RwLock::new(BTreeMap::new())),
            &Limits::default(),
        );
        let users = Users::new(system, config).unwrap();
        Node {
            replica,
            _reader: reader,
            _writer: writer,
            users,
        }
    }

    fn node() -> Node {
        node_with(UsersConfig {
            password: PasswordParams::for_tests(),
            ..UsersConfig::default()
        })
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
        }
    }

    fn grant(text: &str) -> Grant {
        text.parse().unwrap()
    }

    fn read_carts() -> Permission {
        Permission::Read {
            keyspace: Some("carts".into()),
        }
    }

    fn write_carts() -> Permission {
        Permission::Write {
            keyspace: Some("carts".into()),
        }
    }

    /// A version of `name`'s record as another node would have written
    /// it: its own actor, the given timestamp.
    fn foreign(actor: u64, at: u64, record: Option<&UserRecord>) -> Version {
        let clock = Clock::from_parts(
            [],
            [Dot {
                actor: Actor(actor),
                counter: 1,
            }],
        );
        match record {
            Some(r) => Version::value(clock, r.encode(), at, "dc2".into()),
            None => Version::tombstone(clock, at, "dc2".into()),
        }
    }

    #[tokio::test]
    async fn unknown_users_and_wrong_passwords_are_one_error_after_the_same_work() {
        let n = node();
        n.users
            .add("alice", "alice-password", [grant("role:readonly")])
            .await
            .unwrap();
        let alice = n
            .users
            .authenticate(&creds("alice", "alice-password"))
            .await
            .unwrap();
        assert_eq!(alice.name, "alice");
        assert!(alice.allows(&read_carts()));
        assert!(!alice.allows(&write_carts()));
        assert_eq!(n.users.stats().verifications, 1);

        let long = "x".repeat(PASSWORD_BYTES_MAX + 1);
        let attempts = [
            creds("alice", "wrong-password"),
            creds("alice", ""),
            creds("alice", &long),
            creds("mallory", "alice-password"),
            creds("not a name!", "alice-password"),
            creds("", ""),
        ];
        for attempt in &attempts {
            let err = n.users.authenticate(attempt).await.unwrap_err();
            assert!(
                matches!(err, AuthError::BadCredentials),
                "{attempt:?}: {err}"
            );
            assert_eq!(err.to_string(), "unknown user or wrong password");
        }
        // Every attempt, known user or not, paid one verification.
        let stats = n.users.stats();
        assert_eq!(stats.verifications, 1 + attempts.len() as u64);
        assert_eq!(stats.failures, attempts.len() as u64);
        assert_eq!(stats.in_flight, 0);
    }

    #[tokio::test]
    async fn grants_and_revokes_are_seen_by_the_next_check() {
        let n = node();
        n.users
            .add("bob", "bob-password", [grant("read:carts")])
            .await
            .unwrap();
        let bob = creds("bob", "bob-password");
        let check = || n.users.authenticate(&bob);
        assert!(!check().await.unwrap().allows(&write_carts()));

        n.users.grant("bob", grant("write:carts")).await.unwrap();
        let bob = check().await.unwrap();
        assert!(bob.allows(&write_carts()) && bob.allows(&read_carts()));
        // Granting what is held writes nothing.
        let applies = n.replica.applies.load(Ordering::Acquire);
        n.users.grant("bob", grant("write:carts")).await.unwrap();
        assert_eq!(n.replica.applies.load(Ordering::Acquire), applies);

        n.users.revoke("bob", &grant("read:carts")).await.unwrap();
        let bob = check().await.unwrap();
        assert!(!bob.allows(&read_carts()) && bob.allows(&write_carts()));
        // Revoking exactly: a permission a role gives stays.
        n.users.grant("bob", grant("role:readonly")).await.unwrap();
        n.users.revoke("bob", &grant("read:*")).await.unwrap();
        assert!(check().await.unwrap().allows(&read_carts()));

        // One version of the key: each change superseded the last.
        assert_eq!(
            n.replica
                .store
                .get(AUTH_KEYSPACE, b"user/bob")
                .await
                .unwrap()
                .len(),
            1
        );

        for missing in [
            n.users.grant("nobody", grant("admin")).await,
            n.users.revoke("nobody", &grant("admin")).await,
            n.users.passwd("nobody", "password1").await,
            n.users.remove("nobody").await,
        ] {
            assert!(
                matches!(missing, Err(AuthError::UnknownUser { .. })),
                "{missing:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_change_replicated_from_another_node_invalidates_the_cache() {
        let n = node();
        n.users
            .add("carol", "carol-password", [grant("role:readonly")])
            .await
            .unwrap();
        let carol = n.users.get("carol").unwrap().unwrap();

        // A change that reaches the store without moving the generation
        // is not seen: the decoded record is cached...
        let mut admin = carol.clone();
        admin.grants = BTreeSet::from([grant("role:admin")]);
        ready(n.replica.store.apply(
            AUTH_KEYSPACE,
            b"user/carol",
            vec![foreign(9, 1_000, Some(&admin))],
        ))
        .unwrap();
        assert_eq!(n.users.get("carol").unwrap(), Some(carol.clone()));
        // ...until any apply to a system keyspace moves it, as a peer's,
        // the bridge's or repair's delivery does.
        n.replica.applies.fetch_add(1, Ordering::Release);
        let now = n.users.get("carol").unwrap().unwrap();
        assert!(now.allows(&Permission::Admin));
        let carol = n
            .users
            .authenticate(&creds("carol", "carol-password"))
            .await
            .unwrap();
        assert!(carol.allows(&Permission::Admin));
    }

    #[tokio::test]
    async fn siblings_read_as_the_latest_and_a_later_tombstone_removes() {
        let n = node();
        n.users
            .add("dave", "dave-password", [grant("role:readonly")])
            .await
            .unwrap();
        let dave = n.users.get("dave").unwrap().unwrap();
        // Another node changed dave concurrently, later: it wins.
        let mut rw = dave.clone();
        rw.grants = BTreeSet::from([grant("role:readwrite")]);
        n.replica.apply(b"user/dave", foreign(9, 1_000, Some(&rw)));
        let set = n
            .replica
            .store
            .get(AUTH_KEYSPACE, b"user/dave")
            .await
            .unwrap();
        assert_eq!(set.len(), 2, "concurrent versions stay siblings");
        assert!(n.users.get("dave").unwrap().unwrap().allows(&write_carts()));
        // An earlier concurrent version loses.
        let mut none = dave.clone();
        none.grants.clear();
        n.replica.apply(b"user/dave", foreign(10, 500, Some(&none)));
        assert!(n.users.get("dave").unwrap().unwrap().allows(&write_carts()));
        // A later tombstone from a third node: dave is gone.
        n.replica.apply(b"user/dave", foreign(11, 2_000, None));
        assert_eq!(n.users.get("dave").unwrap(), None);
        assert!(matches!(
            n.users.authenticate(&creds("dave", "dave-password")).await,
            Err(AuthError::BadCredentials)
        ));
        assert!(n.users.list().unwrap().is_empty());
        // A change through this node supersedes every sibling it holds.
        n.users.add("dave", "dave-password2", []).await.unwrap();
        let set = n
            .replica
            .store
            .get(AUTH_KEYSPACE, b"user/dave")
            .await
            .unwrap();
        assert_eq!(set.len(), 1);
        assert!(
            n.users
                .authenticate(&creds("dave", "dave-password2"))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn passwd_changes_which_password_works() {
        let n = node();
        n.users.add("erin", "first-password", []).await.unwrap();
        n.users.passwd("erin", "second-password").await.unwrap();
        assert!(matches!(
            n.users.authenticate(&creds("erin", "first-password")).await,
            Err(AuthError::BadCredentials)
        ));
        let erin = n
            .users
            .authenticate(&creds("erin", "second-password"))
            .await
            .unwrap();
        assert!(erin.grants.is_empty(), "passwd keeps the grants");
        assert!(matches!(
            n.users.passwd("erin", "short").await,
            Err(AuthError::InvalidPassword { .. })
        ));
    }

    #[tokio::test]
    async fn remove_writes_a_tombstone() {
        let n = node();
        n.users
            .add("root", "root-password", [grant("role:admin")])
            .await
            .unwrap();
        n.users.add("frank", "frank-password", []).await.unwrap();
        n.users.remove("frank").await.unwrap();
        let set = n
            .replica
            .store
            .get(AUTH_KEYSPACE, b"user/frank")
            .await
            .unwrap();
        assert!(set.versions().iter().all(Version::is_tombstone), "{set:?}");
        assert_eq!(n.users.get("frank").unwrap(), None);
        assert!(matches!(
            n.users
                .authenticate(&creds("frank", "frank-password"))
                .await,
            Err(AuthError::BadCredentials)
        ));
        assert!(matches!(
            n.users.remove("frank").await,
            Err(AuthError::UnknownUser { .. })
        ));
        let names: Vec<_> = n
            .users
            .list()
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["root"]);
    }

    #[tokio::test]
    async fn the_bootstrap_admin_is_created_only_when_there_is_no_user() {
        let n = node();
        assert!(
            n.users
                .ensure_bootstrap_admin("root", "root-password")
                .await
                .unwrap()
        );
        let root = n
            .users
            .authenticate(&creds("root", "root-password"))
            .await
            .unwrap();
        assert_eq!(root.grants, BTreeSet::from([grant("role:admin")]));
        assert!(root.allows(&Permission::Admin) && root.allows(&write_carts()));
        // Again, with another password: nothing changes.
        assert!(
            !n.users
                .ensure_bootstrap_admin("root", "other-password")
                .await
                .unwrap()
        );
        assert!(
            !n.users
                .ensure_bootstrap_admin("admin2", "other-password")
                .await
                .unwrap()
        );
        assert!(
            n.users
                .authenticate(&creds("root", "root-password"))
                .await
                .is_ok()
        );
        assert_eq!(n.users.get("admin2").unwrap(), None);

        // Any live user, admin or not, means the cluster is bootstrapped.
        let m = node();
        m.users
            .add("reader", "reader-password", [grant("role:readonly")])
            .await
            .unwrap();
        assert!(
            !m.users
                .ensure_bootstrap_admin("root", "root-password")
                .await
                .unwrap()
        );
        assert_eq!(m.users.get("root").unwrap(), None);
        assert!(matches!(
            m.users.ensure_bootstrap_admin("root", "short").await,
            Err(AuthError::InvalidPassword { .. })
        ));
    }

    #[tokio::test]
    async fn the_last_admin_cannot_be_revoked_or_removed() {
        let n = node();
        n.users
            .ensure_bootstrap_admin("root", "root-password")
            .await
            .unwrap();
        assert!(matches!(
            n.users.revoke("root", &grant("role:admin")).await,
            Err(AuthError::LastAdmin { .. })
        ));
        assert!(matches!(
            n.users.remove("root").await,
            Err(AuthError::LastAdmin { .. })
        ));
        // The bare admin permission counts as an admin.
        n.users
            .add("ops", "ops-password", [grant("admin")])
            .await
            .unwrap();
        n.users.revoke("root", &grant("role:admin")).await.unwrap();
        assert!(
            !n.users
                .get("root")
                .unwrap()
                .unwrap()
                .allows(&Permission::Admin)
        );
        n.users.remove("root").await.unwrap();
        assert!(matches!(
            n.users.remove("ops").await,
            Err(AuthError::LastAdmin { .. })
        ));
    }

    #[tokio::test]
    async fn invalid_requests_are_refused_with_typed_errors() {
        let n = node();
        n.users.add("gina", "gina-password", []).await.unwrap();
        assert!(matches!(
            n.users.add("gina", "other-password", []).await,
            Err(AuthError::UserExists { .. })
        ));
        assert!(matches!(
            n.users.add("gi na", "gina-password", []).await,
            Err(AuthError::InvalidName { .. })
        ));
        assert!(matches!(
            n.users.add("hal", "1234567", []).await,
            Err(AuthError::InvalidPassword { .. })
        ));
        let system_ks = Grant::Permission(Permission::Read {
            keyspace: Some("_auth".into()),
        });
        assert!(matches!(
            n.users
                .add("hal", "hal-password", [system_ks.clone()])
                .await,
            Err(AuthError::InvalidGrant(_))
        ));
        assert!(matches!(
            n.users.grant("gina", system_ks).await,
            Err(AuthError::InvalidGrant(_))
        ));
        let many = (0..=GRANTS_PER_USER_MAX).map(|i| grant(&format!("read:ks{i}")));
        assert!(matches!(
            n.users.add("hal", "hal-password", many).await,
            Err(AuthError::TooManyGrants { .. })
        ));
        for i in 0..GRANTS_PER_USER_MAX {
            n.users
                .grant("gina", grant(&format!("read:ks{i}")))
                .await
                .unwrap();
        }
        assert!(matches!(
            n.users.grant("gina", grant("write:*")).await,
            Err(AuthError::TooManyGrants { .. })
        ));
        assert!(matches!(n.users.get("hal"), Ok(None)));
        assert!(matches!(
            n.users.get("bad/name"),
            Err(AuthError::InvalidName { .. })
        ));
    }

    #[tokio::test]
    async fn a_corrupt_record_fails_closed_and_can_be_removed() {
        let n = node();
        n.users
            .add("root", "root-password", [grant("role:admin")])
            .await
            .unwrap();
        n.replica.apply(
            b"user/ivan",
            Version::value(Clock::new(), vec![1, 0xff, 0xff], 5_000, "dc1".into()),
        );
        assert!(matches!(
            n.users.get("ivan"),
            Err(AuthError::Corrupt { .. })
        ));
        let err = n.users.list().unwrap_err();
        assert!(err.to_string().contains("ivan"), "{err}");
        assert!(matches!(
            n.users.authenticate(&creds("ivan", "ivan-password")).await,
            Err(AuthError::BadCredentials)
        ));
        // A record stored under another user's key is refused too.
        let root = n.users.get("root").unwrap().unwrap();
        n.replica
            .apply(b"user/judy", foreign(9, 6_000, Some(&root)));
        assert!(matches!(
            n.users.get("judy"),
            Err(AuthError::Corrupt { .. })
        ));

        n.users.remove("ivan").await.unwrap();
        n.users.remove("judy").await.unwrap();
        assert_eq!(n.users.list().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn serve_answers_the_admin_requests() {
        let n = node();
        let request = |r| serve(&n.users, r);
        let done = [
            UserRequest::Add {
                name: "kim".into(),
                password: "kim-password".into(),
                grants: vec![grant("role:readonly")],
            },
            UserRequest::Add {
                name: "alan".into(),
                password: "alan-password".into(),
                grants: vec![grant("role:admin")],
            },
            UserRequest::Grant {
                name: "kim".into(),
                grant: grant("write:carts"),
            },
            UserRequest::Revoke {
                name: "kim".into(),
                grant: grant("role:readonly"),
            },
            UserRequest::Passwd {
                name: "kim".into(),
                password: "kim-password2".into(),
            },
        ];
        for r in done {
            assert_eq!(request(r).await.unwrap(), UserResponse::Done);
        }
        let UserResponse::Users(listed) = request(UserRequest::List).await.unwrap() else {
            panic!("a listing answers users");
        };
        let listed: Vec<_> = listed.into_iter().map(|u| (u.name, u.grants)).collect();
        assert_eq!(
            listed,
            [
                ("alan".to_owned(), vec![grant("role:admin")]),
                ("kim".to_owned(), vec![grant("write:carts")]),
            ]
        );
        assert!(
            n.users
                .authenticate(&creds("kim", "kim-password2"))
                .await
                .is_ok()
        );
        assert_eq!(
            request(UserRequest::Remove { name: "kim".into() })
                .await
                .unwrap(),
            UserResponse::Done
        );
        let err = request(UserRequest::Remove { name: "kim".into() })
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::UnknownUser { .. }));
        assert_eq!(err.wire_code(), ErrorCode::BadRequest);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verifications_at_once_stay_within_the_bound() {
        for max in [1, 2] {
            let n = node_with(UsersConfig {
                password: PasswordParams {
                    memory_kib: 2048,
                    iterations: 1,
                    parallelism: 1,
                },
                verifications_max: max,
                ..UsersConfig::default()
            });
            n.users.add("lee", "lee-password", []).await.unwrap();
            let attempts: Vec<_> = (0..12)
                .map(|i| {
                    let users = n.users.clone();
                    let password = if i % 2 == 0 {
                        "lee-password"
                    } else {
                        "wrong-password"
                    };
                    let user = if i % 3 == 0 { "nobody" } else { "lee" };
                    tokio::spawn(async move { users.authenticate(&creds(user, password)).await })
                })
                .collect();
            for attempt in attempts {
                let _ = attempt.await.unwrap();
            }
            let peak = n.users.in_flight_peak();
            assert!(
                (1..=max).contains(&peak),
                "{peak} at once with a bound of {max}"
            );
            assert_eq!(n.users.stats().verifications, 12);
            assert_eq!(n.users.stats().in_flight, 0);
        }
    }

    #[test]
    fn errors_map_to_wire_codes() {
        let cases = [
            (AuthError::BadCredentials, ErrorCode::Unauthenticated),
            (
                AuthError::Forbidden {
                    name: "a".into(),
                    needed: Permission::Admin,
                },
                ErrorCode::Forbidden,
            ),
            (
                AuthError::UserExists { name: "a".into() },
                ErrorCode::BadRequest,
            ),
            (
                AuthError::Corrupt { reason: "x".into() },
                ErrorCode::Internal,
            ),
            (
                AuthError::Store(StoreError::Failed {
                    reason: "disk".into(),
                }),
                ErrorCode::StorageFailed,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.wire_code(), code, "{error}");
            assert_eq!(error.to_wire().code, code);
        }
        let timeout = AuthError::Write(CoordinatorError::Timeout {
            required: 2,
            acked: 1,
        });
        let wire = timeout.to_wire();
        assert_eq!(wire.code, ErrorCode::Timeout);
        assert_eq!(wire.acks.map(|a| (a.required, a.acked)), Some((2, 1)));
    }
}
