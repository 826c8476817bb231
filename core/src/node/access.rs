//! Who may do what through a node's client connections: authentication
//! at the handshake (a password, or a client certificate naming a user),
//! and a permission check before each request, against the user's
//! current record in `_auth` (so a revoked grant or a removed user takes
//! effect on connections already open, as soon as the change reaches this
//! node's replica).
//!
//! What each request needs: a read of keyspace K `read:K`; a write or
//! delete `write:K`; repair, decommission, resolver upload / attach /
//! detach / rollback and user management `admin`; the cluster status and
//! the registry listing only a login. A user may change their own
//! password without `admin`.

use isthmus_client::tls::CertIdentity;
use isthmus_client::wire::{
    Credentials, ErrorCode, Permission, RegistryRequest, RequestBody, UserRequest, WireError,
};

use crate::auth::{AuthError, Principal, Users};

/// A node's client access control.
#[derive(Clone, Debug)]
pub struct Access {
    /// The user store (`None` on a node without synchronous reads of its
    /// store, the simulation's: only anonymous access can work there).
    pub users: Option<Users>,
    /// `auth.anonymous_full_access`.
    pub anonymous_full_access: bool,
}

fn unauthenticated(message: impl Into<String>) -> WireError {
    WireError {
        code: ErrorCode::Unauthenticated,
        message: message.into(),
        acks: None,
        needs: None,
    }
}

impl Access {
    /// Who a client connection is: a password wins over a certificate;
    /// no credentials are anonymous, refused unless anonymous access is
    /// on.
    pub async fn authenticate(
        &self,
        credentials: Option<Credentials>,
        certificate: Option<CertIdentity>,
    ) -> Result<Principal, WireError> {
        let users = self.users.as_ref();
        if let Some(credentials) = credentials {
            let users = users.ok_or_else(|| unauthenticated("this node keeps no users"))?;
            let record = users
                .authenticate(&credentials)
                .await
                .map_err(|e| e.to_wire())?;
            return Ok(Principal::User(record.name));
        }
        if let (Some(CertIdentity::Client { name }), Some(users)) = (&certificate, users) {
            return match users.get(name) {
                Ok(Some(record)) => Ok(Principal::User(record.name)),
                Ok(None) | Err(AuthError::InvalidName { .. }) => Err(unauthenticated(format!(
                    "the client certificate names {name:?}, who is not a user"
                ))),
                Err(e) => Err(e.to_wire()),
            };
        }
        if self.anonymous_full_access {
            return Ok(Principal::Anonymous);
        }
        Err(unauthenticated(
            "anonymous access is off: log in with a user and password, or a client certificate",
        ))
    }

    /// Whether `principal` may make `request`: `Err` is the answer to
    /// send instead.
    pub fn check(&self, principal: &Principal, request: &RequestBody) -> Result<(), WireError> {
        let Principal::User(name) = principal else {
            return Ok(());
        };
        let users = self
            .users
            .as_ref()
            .ok_or_else(|| unauthenticated("this node keeps no users"))?;
        let record = match users.get(name) {
            Ok(Some(record)) => record,
            Ok(None) => return Err(unauthenticated(format!("user {name:?} no longer exists"))),
            Err(e) => return Err(e.to_wire()),
        };
        match needs(name, request) {
            Some(permission) => record.require(&permission).map_err(|e| e.to_wire()),
            None => Ok(()),
        }
    }
}

/// The permission `request` needs from user `name`, if any beyond a login.
pub fn needs(name: &str, request: &RequestBody) -> Option<Permission> {
    match request {
        RequestBody::Get { keyspace, .. } | RequestBody::Scan { keyspace, .. } => {
            Some(Permission::Read {
                keyspace: Some(keyspace.clone()),
            })
        }
        RequestBody::Put { keyspace, .. } | RequestBody::Delete { keyspace, .. } => {
            Some(Permission::Write {
                keyspace: Some(keyspace.clone()),
            })
        }
        RequestBody::Status
        | RequestBody::Operations(_)
        | RequestBody::MergeStats
        | RequestBody::Registry(RegistryRequest::List) => None,
        RequestBody::User(UserRequest::Passwd { name: whose, .. }) if whose == name => None,
        RequestBody::Repair { .. }
        | RequestBody::Decommission
        | RequestBody::Rebuild { .. }
        | RequestBody::Cancel
        | RequestBody::Registry(_)
        | RequestBody::Quarantine(_)
        | RequestBody::User(_) => Some(Permission::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_needs_what_the_table_says() {
        let get = RequestBody::Get {
            keyspace: "carts".into(),
            key: vec![],
            consistency: None,
        };
        assert_eq!(
            needs("a", &get),
            Some(Permission::Read {
                keyspace: Some("carts".into())
            })
        );
        assert_eq!(
            needs("a", &RequestBody::Decommission),
            Some(Permission::Admin)
        );
        assert_eq!(needs("a", &RequestBody::Cancel), Some(Permission::Admin));
        assert_eq!(needs("a", &RequestBody::Status), None);
        let scan = RequestBody::Scan {
            keyspace: "carts".into(),
            cursor: 0,
            count: 10,
        };
        assert_eq!(
            needs("a", &scan),
            Some(Permission::Read {
                keyspace: Some("carts".into())
            })
        );
        let own = RequestBody::User(UserRequest::Passwd {
            name: "a".into(),
            password: "p".repeat(8),
        });
        assert_eq!(needs("a", &own), None);
        assert_eq!(needs("b", &own), Some(Permission::Admin));
        let upload = RequestBody::Registry(RegistryRequest::List);
        assert_eq!(needs("a", &upload), None);
        let list = RequestBody::Quarantine(isthmus_client::wire::QuarantineRequest::List {
            dc: None,
            after: None,
            records: true,
        });
        assert_eq!(needs("a", &list), Some(Permission::Admin));
    }
}
