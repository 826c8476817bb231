//! Client authentication and user management on the wire: permissions,
//! built-in roles, grants, credentials, and the admin requests that manage
//! users.
//!
//! A user holds a set of [`Grant`]s; each grant is a built-in [`Role`] (a
//! fixed set of permissions) or one [`Permission`]. What a user may do is
//! the union of the permissions its grants give. Grants are written as
//! text on the command line and in logs:
//!
//! ```text
//! read:carts   read:*   write:carts   write:*   admin   role:readonly
//! ```
//!
//! Reading and writing are separate permissions (`write:carts` does not
//! imply `read:carts`), and [`Permission::Admin`] is for administrative
//! operations only (users, the resolver registry, repair): it does not
//! imply data access. The `admin` role grants all three.
//!
//! What it is not: where users are stored, how passwords are hashed or
//! checked (that is the node's `isthmus_core::auth`), or how credentials
//! travel in the handshake.
//!
//! ```
//! use isthmus_client::wire::{Grant, Permission, Role};
//!
//! let grant: Grant = "read:*".parse().unwrap();
//! let needed = Permission::Read { keyspace: Some("carts".into()) };
//! assert!(grant.permissions().iter().any(|p| p.covers(&needed)));
//! assert_eq!("role:readonly".parse::<Grant>().unwrap(), Grant::Role(Role::ReadOnly));
//! assert!("read:".parse::<Grant>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest keyspace name a permission may name, in bytes (the storage
/// layout's limit on keyspace names).
pub const PERMISSION_KEYSPACE_BYTES_MAX: usize = 255;

/// Why a permission, role or grant string (or a permission built in code
/// or received off the wire) is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantParseError {
    /// Not a permission of any known form.
    #[error(
        "unknown permission {input:?}: expected read:<keyspace>, read:*, write:<keyspace>, write:* or admin"
    )]
    UnknownPermission {
        /// What was given.
        input: String,
    },
    /// Not the name of a built-in role.
    #[error("unknown role {input:?}: expected admin, readwrite or readonly")]
    UnknownRole {
        /// What was given.
        input: String,
    },
    /// The permission's keyspace cannot be a user keyspace's name.
    #[error("invalid keyspace {keyspace:?} in a permission: {reason}")]
    InvalidKeyspace {
        /// The keyspace named.
        keyspace: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// One thing a user may do.
///
/// A `keyspace` of `None` means every keyspace (written `*`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Permission {
    /// Read keys of one keyspace, or of every keyspace.
    Read {
        /// The keyspace; `None` for all of them.
        keyspace: Option<String>,
    },
    /// Write (put, delete) keys of one keyspace, or of every keyspace.
    /// Does not imply reading them.
    Write {
        /// The keyspace; `None` for all of them.
        keyspace: Option<String>,
    },
    /// Administrative operations: managing users, the resolver registry,
    /// repair and decommission. It does not imply reading or writing data
    /// (grant those separately, or the `admin` role, which has all three).
    Admin,
}

/// Whether `keyspace` may be named by a permission: a user keyspace's
/// name (non-empty, not starting with `_`, which system keyspaces use),
/// not `*` (which means all), printable, within the length limit.
fn check_keyspace(keyspace: &str) -> Result<(), GrantParseError> {
    let invalid = |reason| GrantParseError::InvalidKeyspace {
        keyspace: keyspace.to_owned(),
        reason,
    };
    if keyspace.is_empty() {
        return Err(invalid("it is empty"));
    }
    if keyspace == "*" {
        return Err(invalid("`*` means every keyspace: use `None`"));
    }
    if keyspace.starts_with('_') {
        return Err(invalid("names starting with '_' are system keyspaces"));
    }
    if keyspace.len() > PERMISSION_KEYSPACE_BYTES_MAX {
        return Err(invalid("longer than 255 bytes"));
    }
    if keyspace
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid("it holds whitespace or control characters"));
    }
    Ok(())
}

impl Permission {
    /// Whether holding `self` allows what `needed` asks: `read:*` covers
    /// `read:carts`, `read:carts` covers only itself, and likewise for
    /// writes. Reads and writes never cover each other, and `admin` covers
    /// only `admin` (it is no data permission).
    pub fn covers(&self, needed: &Permission) -> bool {
        match (self, needed) {
            (Permission::Admin, Permission::Admin) => true,
            (Permission::Read { keyspace: held }, Permission::Read { keyspace: want })
            | (Permission::Write { keyspace: held }, Permission::Write { keyspace: want }) => {
                held.is_none() || held == want
            }
            _ => false,
        }
    }

    /// Check a permission built in code or received off the wire: its
    /// keyspace, if any, must be one a user keyspace could be named.
    pub fn validate(&self) -> Result<(), GrantParseError> {
        match self {
            Permission::Read { keyspace: Some(ks) } | Permission::Write { keyspace: Some(ks) } => {
                check_keyspace(ks)
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, keyspace) = match self {
            Permission::Admin => return f.write_str("admin"),
            Permission::Read { keyspace } => ("read", keyspace),
            Permission::Write { keyspace } => ("write", keyspace),
        };
        write!(f, "{kind}:{}", keyspace.as_deref().unwrap_or("*"))
    }
}

impl FromStr for Permission {
    type Err = GrantParseError;

    /// `read:<keyspace>`, `read:*`, `write:<keyspace>`, `write:*` or
    /// `admin`; the kind in any case, the keyspace as written.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("admin") {
            return Ok(Permission::Admin);
        }
        let unknown = || GrantParseError::UnknownPermission {
            input: s.to_owned(),
        };
        let (kind, target) = s.split_once(':').ok_or_else(unknown)?;
        let keyspace = match target {
            "*" => None,
            ks => {
                check_keyspace(ks)?;
                Some(ks.to_owned())
            }
        };
        if kind.eq_ignore_ascii_case("read") {
            Ok(Permission::Read { keyspace })
        } else if kind.eq_ignore_ascii_case("write") {
            Ok(Permission::Write { keyspace })
        } else {
            Err(unknown())
        }
    }
}

/// A built-in role: a fixed, named set of permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Everything: administration, and reading and writing every
    /// keyspace.
    Admin,
    /// Reading and writing every keyspace.
    ReadWrite,
    /// Reading every keyspace.
    ReadOnly,
}

impl Role {
    /// Every role, for parsers and help texts.
    pub const ALL: [Role; 3] = [Role::Admin, Role::ReadWrite, Role::ReadOnly];

    /// The role's name as written (`admin`, `readwrite`, `readonly`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadWrite => "readwrite",
            Role::ReadOnly => "readonly",
        }
    }

    /// The permissions the role gives.
    pub fn permissions(self) -> Vec<Permission> {
        let read_all = Permission::Read { keyspace: None };
        let write_all = Permission::Write { keyspace: None };
        match self {
            Role::Admin => vec![Permission::Admin, read_all, write_all],
            Role::ReadWrite => vec![read_all, write_all],
            Role::ReadOnly => vec![read_all],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = GrantParseError;

    /// A role's name, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| GrantParseError::UnknownRole {
                input: s.to_owned(),
            })
    }
}

/// What a user is granted: a built-in role, or one permission. Written
/// `role:<name>` or as the permission.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Grant {
    /// Every permission of the role.
    Role(Role),
    /// One permission.
    Permission(Permission),
}

impl Grant {
    /// The permissions this grant gives.
    pub fn permissions(&self) -> Vec<Permission> {
        match self {
            Grant::Role(role) => role.permissions(),
            Grant::Permission(p) => vec![p.clone()],
        }
    }

    /// Check a grant built in code or received off the wire (see
    /// [`Permission::validate`]).
    pub fn validate(&self) -> Result<(), GrantParseError> {
        match self {
            Grant::Role(_) => Ok(()),
            Grant::Permission(p) => p.validate(),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Role(role) => write!(f, "role:{role}"),
            Grant::Permission(p) => p.fmt(f),
        }
    }
}

impl FromStr for Grant {
    type Err = GrantParseError;

    /// `role:<name>`, or a permission (see [`Permission`]'s `FromStr`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((kind, role)) if kind.eq_ignore_ascii_case("role") => {
                role.parse().map(Grant::Role)
            }
            _ => s.parse().map(Grant::Permission),
        }
    }
}

/// A user name and password, as a client presents them. `Debug` never
/// shows the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The user's name.
    pub user: String,
    /// The password, in clear: it travels only inside TLS.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// A user-management operation; the node serves it to users holding
/// [`Permission::Admin`]. `Debug` never shows a password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserRequest {
    /// Create a user; refused if the name is taken.
    Add {
        /// The new user's name.
        name: String,
        /// Its password.
        password: String,
        /// What it is granted.
        grants: Vec<Grant>,
    },
    /// Replace a user's password.
    Passwd {
        /// The user.
        name: String,
        /// The new password.
        password: String,
    },
    /// Add one grant to a user (no change if it holds it already).
    Grant {
        /// The user.
        name: String,
        /// What to grant.
        grant: Grant,
    },
    /// Take one grant from a user: exactly that grant (revoking `read:*`
    /// leaves what a role gives; no change if it is not held).
    Revoke {
        /// The user.
        name: String,
        /// What to take away.
        grant: Grant,
    },
    /// Delete a user.
    Remove {
        /// The user.
        name: String,
    },
    /// List every user and its grants.
    List,
}

impl fmt::Debug for UserRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRequest::Add { name, grants, .. } => f
                .debug_struct("Add")
                .field("name", name)
                .field("password", &"***")
                .field("grants", grants)
                .finish(),
            UserRequest::Passwd { name, .. } => f
                .debug_struct("Passwd")
                .field("name", name)
                .field("password", &"***")
                .finish(),
            UserRequest::Grant { name, grant } => f
                .debug_struct("Grant")
                .field("name", name)
                .field("grant", grant)
                .finish(),
            UserRequest::Revoke { name, grant } => f
                .debug_struct("Revoke")
                .field("name", name)
                .field("grant", grant)
                .finish(),
            UserRequest::Remove { name } => f.debug_struct("Remove").field("name", name).finish(),
            UserRequest::List => f.write_str("List"),
        }
    }
}

/// What a [`UserRequest`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserResponse {
    /// The change is written.
    Done,
    /// The users, by name.
    Users(Vec<UserInfo>),
}

/// One user as listed: its name and grants, never its password hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user's name.
    pub name: String,
    /// What it is granted, in order.
    pub grants: Vec<Grant>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    fn read(ks: Option<&str>) -> Permission {
        Permission::Read {
            keyspace: ks.map(str::to_owned),
        }
    }

    fn write(ks: Option<&str>) -> Permission {
        Permission::Write {
            keyspace: ks.map(str::to_owned),
        }
    }

    #[test]
    fn every_form_round_trips_through_its_text() {
        let grants = [
            ("read:carts", Grant::Permission(read(Some("carts")))),
            ("read:*", Grant::Permission(read(None))),
            ("write:carts", Grant::Permission(write(Some("carts")))),
            ("write:*", Grant::Permission(write(None))),
            ("admin", Grant::Permission(Permission::Admin)),
            ("role:admin", Grant::Role(Role::Admin)),
            ("role:readwrite", Grant::Role(Role::ReadWrite)),
            ("role:readonly", Grant::Role(Role::ReadOnly)),
            // A keyspace holding ':' or '.' is kept whole.
            ("read:a:b.c", Grant::Permission(read(Some("a:b.c")))),
        ];
        for (text, grant) in grants {
            assert_eq!(text.parse::<Grant>().as_ref(), Ok(&grant), "{text}");
            assert_eq!(grant.to_string(), text);
            assert_eq!(decode::<Grant>(&encode(&grant)), Ok(grant.clone()));
            if let Grant::Permission(p) = &grant {
                assert_eq!(text.parse::<Permission>().as_ref(), Ok(p));
                assert_eq!(p.to_string(), text);
            }
        }
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.name());
        }
        // Kinds and role names in any case; the keyspace as written.
        assert_eq!("READ:Carts".parse::<Permission>(), Ok(read(Some("Carts"))));
        assert_eq!(
            "Role:ReadOnly".parse::<Grant>(),
            Ok(Grant::Role(Role::ReadOnly))
        );
        assert_eq!("ADMIN".parse::<Permission>(), Ok(Permission::Admin));
    }

    #[test]
    fn bad_strings_are_refused_with_the_reason() {
        for bad in [
            "",
            "read",
            "reed:carts",
            "admin:*",
            "read :carts",
            "*",
            "role",
        ] {
            assert!(
                matches!(
                    bad.parse::<Grant>(),
                    Err(GrantParseError::UnknownPermission { .. })
                ),
                "{bad:?} parsed"
            );
        }
        for bad in [
            "read:",
            "write:_auth",
            "read: carts",
            "read:a b",
            "read:a\n",
        ] {
            let err = bad.parse::<Grant>().unwrap_err();
            assert!(
                matches!(err, GrantParseError::InvalidKeyspace { .. }),
                "{bad:?}: {err}"
            );
        }
        let long = format!("read:{}", "k".repeat(256));
        assert!(long.parse::<Permission>().is_err());
        assert!(
            format!("read:{}", "k".repeat(255))
                .parse::<Permission>()
                .is_ok()
        );
        for bad in ["role:", "role:root", "role:read:*"] {
            assert_eq!(
                bad.parse::<Grant>(),
                Err(GrantParseError::UnknownRole {
                    input: bad[5..].to_owned()
                })
            );
        }
        assert!("superuser".parse::<Role>().is_err());
        let message = "reed:x".parse::<Permission>().unwrap_err().to_string();
        assert!(message.contains("read:<keyspace>"), "{message}");
        // What did not come from text is checked the same way.
        assert!(read(Some("_registry")).validate().is_err());
        assert!(Grant::Permission(write(Some("*"))).validate().is_err());
        assert!(Grant::Permission(write(Some("carts"))).validate().is_ok());
        assert!(Grant::Role(Role::Admin).validate().is_ok());
    }

    #[test]
    fn covers_follows_kind_then_keyspace() {
        let admin = Permission::Admin;
        let (r_all, r_carts, r_other) = (read(None), read(Some("carts")), read(Some("other")));
        let (w_all, w_carts) = (write(None), write(Some("carts")));
        let table = [
            (&r_all, &r_carts, true),
            (&r_all, &r_all, true),
            (&r_carts, &r_carts, true),
            (&r_carts, &r_other, false),
            (&r_carts, &r_all, false),
            (&w_all, &w_carts, true),
            (&w_carts, &w_all, false),
            (&w_all, &r_carts, false),
            (&r_all, &w_carts, false),
            (&admin, &admin, true),
            (&admin, &r_carts, false),
            (&admin, &w_all, false),
            (&r_all, &admin, false),
            (&w_all, &admin, false),
        ];
        for (held, needed, want) in table {
            assert_eq!(held.covers(needed), want, "{held} covers {needed}");
        }
    }

    #[test]
    fn roles_give_their_permissions() {
        assert_eq!(
            Role::Admin.permissions(),
            vec![Permission::Admin, read(None), write(None)]
        );
        assert_eq!(Role::ReadWrite.permissions(), vec![read(None), write(None)]);
        assert_eq!(Role::ReadOnly.permissions(), vec![read(None)]);
        assert_eq!(
            Grant::Permission(read(Some("carts"))).permissions(),
            vec![read(Some("carts"))]
        );
    }

    #[test]
    fn debug_never_shows_a_password() {
        let secret = "correct horse battery staple";
        let creds = Credentials {
            user: "alice".into(),
            password: secret.into(),
        };
        let shown = format!("{creds:?}");
        assert!(shown.contains("alice") && shown.contains("***"), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
        for request in [
            UserRequest::Add {
                name: "alice".into(),
                password: secret.into(),
                grants: vec![Grant::Role(Role::ReadOnly)],
            },
            UserRequest::Passwd {
                name: "alice".into(),
                password: secret.into(),
            },
        ] {
            let shown = format!("{request:?}");
            assert!(shown.contains("alice") && shown.contains("***"), "{shown}");
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            UserRequest::Add {
                name: "alice".into(),
                password: "pw".repeat(10),
                grants: vec![
                    Grant::Role(Role::ReadWrite),
                    Grant::Permission(Permission::Admin),
                ],
            },
            UserRequest::Passwd {
                name: "alice".into(),
                password: "x".into(),
            },
            UserRequest::Grant {
                name: "bob".into(),
                grant: Grant::Permission(read(Some("carts"))),
            },
            UserRequest::Revoke {
                name: "bob".into(),
                grant: Grant::Permission(write(None)),
            },
            UserRequest::Remove { name: "bob".into() },
            UserRequest::List,
        ];
        for request in requests {
            assert_eq!(
                decode::<UserRequest>(&encode(&request)),
                Ok(request.clone())
            );
        }
        let responses = [
            UserResponse::Done,
            UserResponse::Users(vec![UserInfo {
                name: "alice".into(),
                grants: vec![Grant::Role(Role::Admin)],
            }]),
        ];
        for response in responses {
            assert_eq!(
                decode::<UserResponse>(&encode(&response)),
                Ok(response.clone())
            );
        }
        let creds = Credentials {
            user: "a".into(),
            password: "b".into(),
        };
        assert_eq!(decode::<Credentials>(&encode(&creds)), Ok(creds));
    }
}
