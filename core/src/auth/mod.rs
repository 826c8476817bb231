//! Client authentication: users, their grants and their passwords, kept in
//! the [`AUTH_KEYSPACE`] system keyspace, and the checks a node makes with
//! them.
//!
//! A user is a [`UserRecord`] at key `user/<name>`: an argon2id hash of
//! its password and the [`Grant`]s it holds (built-in roles and single
//! permissions, defined on the wire in `isthmus_client::wire`). What it may
//! do is the union of its grants' permissions ([`UserRecord::allows`]).
//! [`Users`] is a node's view of them: [`Users::authenticate`] checks
//! [`Credentials`], [`serve`] answers the admin's [`UserRequest`]s, and
//! [`Users::ensure_bootstrap_admin`] creates the first admin of an empty
//! cluster.
//!
//! The choices, and why:
//!
//! - Passwords travel in clear inside TLS and the node checks them against
//!   an argon2id hash, rather than a challenge-response such as SCRAM.
//!   What SCRAM's exchange buys (the password never crosses the wire, the
//!   server proves it knows the verifier) TLS already gives: the client
//!   verifies the node's certificate before it sends anything, and the
//!   connection is encrypted. What SCRAM costs is its stored verifier:
//!   PBKDF2 over SHA-256, cheap to attack in bulk on GPUs. argon2id is
//!   memory-hard: whoever steals the `_auth` table (a backup, a disk, a
//!   node's data directory) pays 19 MiB and two passes per guess per user
//!   ([`PasswordParams`]' default, OWASP's minimum).
//! - The node's cost is bounded. Every hash and verification runs on
//!   tokio's blocking pool, at most [`UsersConfig::verifications_max`] (2)
//!   at once per node, behind a first-come-first-served semaphore: a flood
//!   of bad logins queues and slows logins, but cannot take every core
//!   from the requests already authenticated.
//! - Which users exist is not revealed. An unknown user and a wrong
//!   password give the same [`AuthError::BadCredentials`], and an unknown
//!   user's attempt still pays one verification, against a dummy hash made
//!   with the node's parameters, so the answer's timing does not tell
//!   either. (A user whose hash was made with other parameters, before
//!   they were changed, takes a different time to check: change them
//!   rarely.)
//! - Users are replicated as the resolver registry is (see
//!   [`system_keyspace`](crate::system_keyspace)): every node holds every
//!   `_auth` key and reads its own replica; a mutation is written at
//!   LOCAL_QUORUM through the node that serves it, and the bridge takes it
//!   to the other datacenters. Decoded records are cached only while the
//!   system keyspaces' generation is unchanged, so a change reaching a
//!   node by any path (a write, a peer, the bridge, hints, repair) is seen
//!   by its next check. Two changes of one user through two nodes at once
//!   become siblings, which every node reads alike, as the latest by
//!   timestamp, then digest: the last change wins whole (a grant through
//!   one node and a revoke through another at the same moment keep only
//!   one of the two; repeat the one lost).
//! - A node runs its mutations one at a time (read the record, change it,
//!   write it), so two admin commands through one node never lose each
//!   other's change. It refuses a revoke or a remove that would leave no
//!   user holding [`Permission::Admin`].
//! - Records start with a format version byte; a node refuses a format it
//!   does not know ([`AuthError::Corrupt`]) rather than guess, and a user
//!   whose record does not decode cannot log in.
//!
//! Limits, stated: names of 1 to 64 characters of `A-Z a-z 0-9 _ . -`,
//! passwords of 8 to 1024 bytes, [`GRANTS_PER_USER_MAX`] grants a user,
//! [`USERS_CACHED_MAX`] cached records, stored hashes of at most
//! [`password::MEMORY_KIB_MAX`] KiB.
//!
//! What it is not: TLS or the handshake that carries the credentials, the
//! check of each request against the permission it needs (the server asks
//! [`UserRecord::allows`]), or sessions: there are no tokens, a
//! connection authenticates when it opens.
//!
//! ```
//! use isthmus_core::auth::{hash_password, verify_password, PasswordParams, UserRecord};
//! use isthmus_client::wire::Permission;
//!
//! let hash = hash_password(&PasswordParams::for_tests(), "correct horse").unwrap();
//! assert!(verify_password(&hash, "correct horse"));
//! assert!(!verify_password(&hash, "wrong horse"));
//!
//! let user = UserRecord {
//!     name: "reader".into(),
//!     password_hash: hash,
//!     grants: ["role:readonly".parse().unwrap()].into(),
//!     updated_ms: 0,
//! };
//! assert!(user.allows(&Permission::Read { keyspace: Some("carts".into()) }));
//! assert!(!user.allows(&Permission::Admin));
//! ```

pub mod password;
pub mod record;
pub mod users;

pub use isthmus_client::wire::{
    Credentials, Grant, GrantParseError, Permission, Role, UserInfo, UserRequest, UserResponse,
};
pub use password::{
    PasswordParams, hash_password, validate_name, validate_password, verify_password,
};
pub use record::{UserRecord, resolve, user_key};
pub use users::{
    AuthStats, GRANTS_PER_USER_MAX, USERS_CACHED_MAX, Users, UsersConfig, VERIFICATIONS_MAX_DEFAULT,
};

use isthmus_client::wire::{ErrorCode, WireError};

use crate::coordinator::error::CoordinatorError;
use crate::store::StoreError;

pub use crate::system_keyspace::AUTH_KEYSPACE;

/// Why an authentication or a user-management request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No such user, or the wrong password: deliberately one error.
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// The user lacks the permission the request needs.
    #[error("user {name:?} lacks the permission {needed}")]
    Forbidden {
        /// The user.
        name: String,
        /// What the request needs.
        needed: Permission,
    },
    /// A user-management request names a user that does not exist.
    #[error("no user named {name:?}")]
    UnknownUser {
        /// The name.
        name: String,
    },
    /// A user of that name exists already.
    #[error("a user named {name:?} exists already")]
    UserExists {
        /// The name.
        name: String,
    },
    /// Not a valid user name.
    #[error("invalid user name: {reason}")]
    InvalidName {
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Not a valid password.
    #[error("invalid password: {reason}")]
    InvalidPassword {
        /// The rule it breaks.
        reason: &'static str,
    },
    /// Not a valid grant.
    #[error(transparent)]
    InvalidGrant(#[from] GrantParseError),
    /// The user would hold more than [`GRANTS_PER_USER_MAX`] grants.
    #[error("a user holds at most {max} grants")]
    TooManyGrants {
        /// The limit.
        max: usize,
    },
    /// The change would leave no user holding the admin permission.
    #[error(
        "{name:?} is the last user holding the admin permission; grant it to another user first"
    )]
    LastAdmin {
        /// The user the change was about.
        name: String,
    },
    /// A password could not be hashed (parameters out of bounds, no
    /// randomness for the salt).
    #[error("password hashing failed: {reason}")]
    Hash {
        /// What failed.
        reason: String,
    },
    /// A stored record does not decode.
    #[error("corrupt user record: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// The node's replica could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A change could not be written at its level.
    #[error(transparent)]
    Write(#[from] CoordinatorError),
}

impl AuthError {
    /// The error's class on the wire.
    pub fn wire_code(&self) -> ErrorCode {
        match self {
            AuthError::BadCredentials => ErrorCode::Unauthenticated,
            AuthError::Forbidden { .. } => ErrorCode::Forbidden,
            AuthError::UnknownUser { .. }
            | AuthError::UserExists { .. }
            | AuthError::InvalidName { .. }
            | AuthError::InvalidPassword { .. }
            | AuthError::InvalidGrant(_)
            | AuthError::TooManyGrants { .. }
            | AuthError::LastAdmin { .. } => ErrorCode::BadRequest,
            AuthError::Hash { .. } | AuthError::Corrupt { .. } => ErrorCode::Internal,
            AuthError::Store(e) => CoordinatorError::Storage(e.clone()).to_wire().code,
            AuthError::Write(e) => e.to_wire().code,
        }
    }

    /// The error as the wire carries it (a write's acknowledgement counts
    /// kept).
    pub fn to_wire(&self) -> WireError {
        WireError {
            code: self.wire_code(),
            message: self.to_string(),
            acks: match self {
                AuthError::Write(e) => e.to_wire().acks,
                _ => None,
            },
            needs: match self {
                AuthError::Forbidden { needed, .. } => Some(needed.clone()),
                _ => None,
            },
        }
    }
}

/// Serve an admin's user-management request. The caller has checked that
/// the requester holds [`Permission::Admin`].
pub async fn serve(users: &Users, request: UserRequest) -> Result<UserResponse, AuthError> {
    match request {
        UserRequest::Add {
            name,
            password,
            grants,
        } => users.add(&name, &password, grants).await?,
        UserRequest::Passwd { name, password } => users.passwd(&name, &password).await?,
        UserRequest::Grant { name, grant } => users.grant(&name, grant).await?,
        UserRequest::Revoke { name, grant } => users.revoke(&name, &grant).await?,
        UserRequest::Remove { name } => users.remove(&name).await?,
        UserRequest::List => {
            let this = users.clone();
            let listed = tokio::task::spawn_blocking(move || this.list())
                .await
                .map_err(|e| StoreError::Failed {
                    reason: format!("listing users: {e}"),
                })??;
            return Ok(UserResponse::Users(
                listed.iter().map(UserRecord::info).collect(),
            ));
        }
    }
    Ok(UserResponse::Done)
}

/// Who a client connection is, once its handshake is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials, on a node with `auth.anonymous_full_access`:
    /// every permission.
    Anonymous,
    /// A user, by name (by password, or by a client certificate naming
    /// them). What they may do is read from `_auth` at each request, so a
    /// revoked grant or a removed user takes effect on open connections.
    User(String),
}
