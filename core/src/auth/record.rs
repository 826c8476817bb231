//! A user as the `_auth` keyspace stores it, and how a replica's set of a
//! user key reads as one record.

use std::collections::BTreeSet;
use std::fmt;

use isthmus_client::wire::{Grant, Permission, UserInfo};
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::model::VersionSet;

/// The format version [`UserRecord::encode`] writes, the first byte of
/// every record.
pub const RECORD_FORMAT: u8 = 1;

/// The prefix of user keys: a user's record is at `user/<name>`.
pub const USER_KEY_PREFIX: &[u8] = b"user/";

/// The key of `name`'s record.
pub fn user_key(name: &str) -> Vec<u8> {
    [USER_KEY_PREFIX, name.as_bytes()].concat()
}

/// The user name of a record key, if it is one.
pub fn user_name(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(USER_KEY_PREFIX)?).ok()
}

/// One user.
///
/// Stored as `[format: u8 = 1][postcard: name, password_hash, grants
/// (ascending), updated_ms]`. A reader that meets a format it does not
/// know refuses the record ([`AuthError::Corrupt`]) rather than guess, so
/// a later format must be written only once every node reads it.
///
/// `Debug` does not show the password hash: it is what an offline attack
/// starts from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's name (also its key: `user/<name>`).
    pub name: String,
    /// argon2id PHC string of its password (see
    /// [`hash_password`](super::hash_password)).
    pub password_hash: String,
    /// What it is granted.
    pub grants: BTreeSet<Grant>,
    /// Wall-clock milliseconds of the last change (for operators; readers
    /// resolve siblings by the versions' timestamps).
    pub updated_ms: u64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("password_hash", &"***")
            .field("grants", &self.grants)
            .field("updated_ms", &self.updated_ms)
            .finish()
    }
}

fn corrupt(reason: impl Into<String>) -> AuthError {
    AuthError::Corrupt {
        reason: reason.into(),
    }
}

impl UserRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![RECORD_FORMAT]).expect("a user record always encodes")
    }

    /// A record from stored bytes; anything but a whole record of a known
    /// format is [`AuthError::Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Self, AuthError> {
        let (&format, body) = bytes
            .split_first()
            .ok_or_else(|| corrupt("an empty user record"))?;
        if format != RECORD_FORMAT {
            return Err(corrupt(format!(
                "user record format {format} is unknown (this node reads {RECORD_FORMAT})"
            )));
        }
        let (record, rest) = postcard::take_from_bytes::<UserRecord>(body)
            .map_err(|e| corrupt(format!("a malformed user record: {e}")))?;
        if !rest.is_empty() {
            return Err(corrupt(format!(
                "{} trailing bytes after a user record",
                rest.len()
            )));
        }
        Ok(record)
    }

    /// Every permission the user holds: its granted permissions and those
    /// of its roles.
    pub fn permissions(&self) -> BTreeSet<Permission> {
        self.grants.iter().flat_map(Grant::permissions).collect()
    }

    /// Whether the user may do what `needed` asks (one of its permissions
    /// [covers](Permission::covers) it).
    pub fn allows(&self, needed: &Permission) -> bool {
        self.grants
            .iter()
            .flat_map(Grant::permissions)
            .any(|held| held.covers(needed))
    }

    /// [`UserRecord::allows`] as a result: [`AuthError::Forbidden`] when
    /// not.
    pub fn require(&self, needed: &Permission) -> Result<(), AuthError> {
        if self.allows(needed) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                name: self.name.clone(),
                needed: needed.clone(),
            })
        }
    }

    /// The user as listed: name and grants, no hash.
    pub fn info(&self) -> UserInfo {
        UserInfo {
            name: self.name.clone(),
            grants: self.grants.iter().cloned().collect(),
        }
    }
}

/// The record a replica's set of a user key reads as: the latest version
/// by timestamp, then digest ([`system_keyspace::latest`], the registry's
/// choice), so every replica holding the same set reads the same user.
/// `None` when the set is empty or a tombstone wins (the user was
/// removed).
///
/// One exception: a record the first-admin bootstrap wrote (`updated_ms`
/// 0) loses to any other sibling. A node that bootstraps before the
/// cluster's users reach it (a replica that saw none) writes the admin
/// again, concurrently with the real record; that write must never reset
/// a password or grants an operator changed since.
pub fn resolve(set: &VersionSet) -> Result<Option<UserRecord>, AuthError> {
    let bootstrap = |v: &crate::model::Version| {
        v.value_bytes()
            .and_then(|b| UserRecord::decode(b).ok())
            .is_some_and(|r| r.updated_ms == 0)
    };
    let winner = set
        .versions()
        .iter()
        .max_by_key(|v| (!bootstrap(v), v.timestamp_ms, v.digest()));
    match winner.and_then(|v| v.value_bytes()) {
        Some(bytes) => UserRecord::decode(bytes).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Actor, Clock, Dot, Version};
    use isthmus_client::wire::Role;

    fn record(name: &str, grants: &[&str]) -> UserRecord {
        UserRecord {
            name: name.into(),
            password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
            grants: grants.iter().map(|g| g.parse().unwrap()).collect(),
            updated_ms: 1_700_000_000_000,
        }
    }

    fn version(actor: u64, at: u64, value: Option<Vec<u8>>) -> Version {
        let clock = Clock::from_parts(
            [],
            [Dot {
                actor: Actor(actor),
                counter: 1,
            }],
        );
        match value {
            Some(v) => Version::value(clock, v, at, "dc1".into()),
            None => Version::tombstone(clock, at, "dc1".into()),
        }
    }

    #[test]
    fn records_round_trip_and_garbage_is_corrupt() {
        let alice = record("alice", &["role:readonly", "write:carts", "admin"]);
        let bytes = alice.encode();
        assert_eq!(bytes[0], RECORD_FORMAT);
        assert_eq!(UserRecord::decode(&bytes).unwrap(), alice);

        let mut unknown_format = bytes.clone();
        unknown_format[0] = 2;
        let mut trailing = bytes.clone();
        trailing.push(0);
        let garbage: [&[u8]; 6] = [
            &[],
            &[RECORD_FORMAT],
            &unknown_format,
            &trailing,
            &bytes[..bytes.len() - 1],
            &[RECORD_FORMAT, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ];
        for bytes in garbage {
            assert!(
                matches!(UserRecord::decode(bytes), Err(AuthError::Corrupt { .. })),
                "{bytes:?} decoded"
            );
        }
        // Every truncation and every single-byte change decodes or fails
        // cleanly.
        for cut in 0..bytes.len() {
            let _ = UserRecord::decode(&bytes[..cut]);
        }
        for at in 0..bytes.len() {
            for flip in [1u8, 0x80, 0xff] {
                let mut changed = bytes.clone();
                changed[at] ^= flip;
                let _ = UserRecord::decode(&changed);
            }
        }
    }

    #[test]
    fn debug_does_not_show_the_hash() {
        let alice = record("alice", &[]);
        let shown = format!("{alice:?}");
        assert!(!shown.contains("argon2id"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
    }

    #[test]
    fn permissions_are_the_union_of_grants_and_roles() {
        let user = record("u", &["role:readonly", "write:carts"]);
        let read_all = Permission::Read { keyspace: None };
        let write_carts = Permission::Write {
            keyspace: Some("carts".into()),
        };
        assert_eq!(
            user.permissions(),
            BTreeSet::from([read_all.clone(), write_carts.clone()])
        );
        assert!(user.allows(&Permission::Read {
            keyspace: Some("orders".into())
        }));
        assert!(user.allows(&write_carts));
        assert!(!user.allows(&Permission::Write {
            keyspace: Some("orders".into())
        }));
        assert!(!user.allows(&Permission::Admin));
        assert!(matches!(
            user.require(&Permission::Admin),
            Err(AuthError::Forbidden { .. })
        ));

        let admin = record("root", &["role:admin"]);
        assert!(admin.allows(&Permission::Admin));
        assert!(admin.allows(&write_carts));
        // The admin permission alone is no data access.
        let operator = record("op", &["admin"]);
        assert!(operator.allows(&Permission::Admin));
        assert!(!operator.allows(&read_all));
        assert!(record("none", &[]).permissions().is_empty());
        assert_eq!(
            admin.info().grants,
            vec![Grant::Role(Role::Admin)],
            "listed without the hash"
        );
    }

    #[test]
    fn siblings_resolve_to_the_latest_then_the_greater_digest() {
        let old = record("alice", &["role:readonly"]).encode();
        let new = record("alice", &["role:admin"]).encode();
        assert_eq!(resolve(&VersionSet::new()).unwrap(), None);

        // Written concurrently through two nodes: the later one wins,
        // whatever the arrival order.
        for order in [[0, 1], [1, 0]] {
            let versions = [
                version(1, 10, Some(old.clone())),
                version(2, 20, Some(new.clone())),
            ];
            let set = VersionSet::from_versions(order.map(|i| versions[i].clone()));
            assert_eq!(set.len(), 2);
            let user = resolve(&set).unwrap().unwrap();
            assert!(user.allows(&Permission::Admin));
        }

        // Equal timestamps: the greater digest.
        let (a, b) = (version(3, 5, Some(old.clone())), version(4, 5, Some(new)));
        let want = if a.digest() > b.digest() { &a } else { &b };
        let want = UserRecord::decode(want.value_bytes().unwrap()).unwrap();
        let set = VersionSet::from_versions([b.clone(), a.clone()]);
        assert_eq!(resolve(&set).unwrap(), Some(want.clone()));
        let set = VersionSet::from_versions([a, b]);
        assert_eq!(resolve(&set).unwrap(), Some(want));

        // A later tombstone: the user is gone; an earlier one loses.
        let set =
            VersionSet::from_versions([version(1, 10, Some(old.clone())), version(2, 30, None)]);
        assert_eq!(resolve(&set).unwrap(), None);
        let set = VersionSet::from_versions([version(1, 40, Some(old)), version(2, 30, None)]);
        assert_eq!(resolve(&set).unwrap().unwrap().name, "alice");

        // A corrupt winner is an error, not an absent user.
        let set = VersionSet::from_versions([version(1, 1, Some(vec![9, 9]))]);
        assert!(matches!(resolve(&set), Err(AuthError::Corrupt { .. })));
    }

    #[test]
    fn keys_carry_the_name() {
        assert_eq!(user_key("alice"), b"user/alice".to_vec());
        assert_eq!(user_name(b"user/alice"), Some("alice"));
        assert_eq!(user_name(b"role/alice"), None);
        assert_eq!(user_name(b"user/\xff"), None);
    }
}
