//! [`RegistryService`]: a node's resolver registry, served to clients.
//!
//! It implements core's [`RegistryHook`]: the node attaches its
//! `_registry` system keyspace at start ([`RegistryKeyspace`]), and hands it
//! the client's [`RegistryRequest`]s. Each runs on tokio's blocking pool
//! (loading a module and running the law checker take CPU time, and the
//! registry's store writes block until their level is reached):
//!
//! - upload: the module must fit a registry value; the node's host loads
//!   it (a bad module is [`ErrorCode::InvalidModule`]) and runs the law
//!   checker; a failing module is [`ErrorCode::LawCheckFailed`] unless the
//!   upload is forced, which registers it with the override recorded.
//!   Then the module, then its record, are written through the cluster.
//! - attach, detach, rollback: the keyspace must be one of the node's user
//!   keyspaces; attach needs the resolver registered (as this node's
//!   replica knows it: upload, then attach, through one node, or wait for
//!   the record to arrive).
//! - list: the registry as this node's replica holds it (its records and
//!   bindings; no module is read or compiled), plus the configured default
//!   bindings of keyspaces the registry never bound.
//! - canary: bind a registered resolver in one scope only (a datacenter,
//!   a share of the key-hash space, or both), with a guard past which the
//!   nodes in scope roll it back themselves (see [`crate::canary`]);
//!   unset guard numbers take [`RollbackGuard::default`], and every number
//!   is validated (the error names the field). promote: the canary
//!   becomes the binding everywhere; rollback drops a canary when there
//!   is one. pause and resume: a paused binding merges nothing (siblings
//!   are kept). For a keyspace the registry never bound, the first record
//!   carries on its configured default.
//! - delete: a resolver version no keyspace uses, bound now, as a canary, in the
//!   history a rollback returns to, or as the configured default of a
//!   keyspace the registry never bound ([`ErrorCode::ResolverInUse`]);
//!   its module goes too unless another version has the same bytes, and
//!   leaves this node's host cache.
//!
//! The registry is bounded ([`RegistryLimits`]): modules and their total
//! bytes (an upload past them is [`ErrorCode::RegistryFull`]), and each
//! binding's history (the oldest entries drop off).
//!
//! One node runs its registry mutations one at a time, its canaries'
//! automatic rollbacks included (a binding is read, changed and written
//! back, under [`Registry::mutation_lock`]); mutations through two nodes
//! at once are settled by the store's last-writer-wins.
//!
//! What it is not: access control. Any client that reaches a node can
//! upload and attach.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use isthmus_core::bridge::BoxFuture;
use isthmus_core::system_keyspace::{
    BindingEvent, BindingInfo, BoundResolver, CanaryInfo, ErrorCode, RegistryHook, RegistryRequest,
    RegistryResponse, ResolverInfo, SystemKeyspace, WireError, is_system,
};

use crate::check::CheckOptions;
use crate::registry::{
    Binding, CanaryScope, RegistryError, RegistryLimits, ResolverRecord, ResolverRef,
    RollbackGuard, UploadPolicy, now_ms,
};
use crate::{Host, Registry, RegistryKeyspace, WasmMergeHook};

/// A node's resolver registry over its `_registry` keyspace.
#[derive(Clone)]
pub struct RegistryService {
    inner: Arc<Inner>,
}

struct Inner {
    host: Arc<Host>,
    store: Arc<RegistryKeyspace>,
    registry: Arc<Registry>,
    check: CheckOptions,
}

fn wire(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError {
        code,
        message: message.into(),
        acks: None,
        needs: None,
    }
}

/// A registry error as the wire carries it.
pub fn to_wire(e: &RegistryError) -> WireError {
    let code = match e {
        RegistryError::Store { .. } => ErrorCode::StorageFailed,
        RegistryError::Invalid { .. } | RegistryError::CheckFailed { .. } => {
            ErrorCode::InvalidModule
        }
        RegistryError::LawCheckFailed { .. } => ErrorCode::LawCheckFailed,
        RegistryError::VersionTaken { .. } => ErrorCode::VersionTaken,
        RegistryError::UnknownResolver { .. } => ErrorCode::UnknownResolver,
        RegistryError::NothingToRollBack { .. }
        | RegistryError::InvalidName { .. }
        | RegistryError::InvalidCanary { .. }
        | RegistryError::NoCanary { .. } => ErrorCode::BadRequest,
        RegistryError::Corrupt { .. } => ErrorCode::Internal,
        RegistryError::Full { .. } => ErrorCode::RegistryFull,
        RegistryError::InUse { .. } => ErrorCode::ResolverInUse,
    };
    wire(code, e.to_string())
}

fn info(record: ResolverRecord) -> ResolverInfo {
    ResolverInfo {
        name: record.name,
        version: record.version,
        hash: record.hash,
        module_bytes: record.module_bytes,
        law_check: record.law_check,
    }
}

fn bound(r: Option<ResolverRef>) -> Option<BoundResolver> {
    r.map(|r| BoundResolver {
        name: r.name,
        version: r.version,
        hash: Some(r.hash),
    })
}

fn binding_info(b: Binding) -> BindingInfo {
    BindingInfo {
        keyspace: b.keyspace,
        current: bound(b.current),
        history: b.history.into_iter().map(bound).collect(),
        from_config: false,
        canary: b.canary.map(|c| CanaryInfo {
            resolver: BoundResolver {
                name: c.resolver.name,
                version: c.resolver.version,
                hash: Some(c.resolver.hash),
            },
            dc: c.scope.dc,
            share_ppm: c.scope.share_ppm,
            window_ms: c.guard.window_ms,
            merges_min: c.guard.merges_min,
            failure_rate_max_ppm: c.guard.failure_rate_max_ppm,
            since_ms: c.since_ms,
        }),
        paused: b.paused,
        events: b
            .events
            .into_iter()
            .map(|e| BindingEvent {
                at_ms: e.at_ms,
                note: e.kind.to_string(),
            })
            .collect(),
    }
}

impl RegistryService {
    /// A registry service whose law checks and module loads run on `host`.
    pub fn new(host: Arc<Host>) -> Self {
        Self::with_check(host, CheckOptions::default())
    }

    /// Same, with the law checker's options (the seed still defaults from
    /// the module's hash, so every node checks a module alike).
    pub fn with_check(host: Arc<Host>, check: CheckOptions) -> Self {
        Self::with_limits(host, check, RegistryLimits::default())
    }

    /// Same, with the registry's bounds.
    pub fn with_limits(host: Arc<Host>, check: CheckOptions, limits: RegistryLimits) -> Self {
        let store = Arc::new(RegistryKeyspace::new());
        let registry = Arc::new(Registry::with_limits(store.clone(), limits));
        RegistryService {
            inner: Arc::new(Inner {
                host,
                store,
                registry,
                check,
            }),
        }
    }

    /// The registry (reads of the node's replica; writes block, see
    /// [`RegistryKeyspace`]).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The store under the registry.
    pub fn store(&self) -> &Arc<RegistryKeyspace> {
        &self.inner.store
    }

    /// The merge hook for the node: this registry's bindings, else
    /// `defaults` (the configuration's `keyspace -> (name, version)`).
    pub fn merge_hook(&self, defaults: BTreeMap<String, (String, u32)>) -> WasmMergeHook {
        WasmMergeHook::new(self.inner.host.clone(), self.inner.registry.clone())
            .with_defaults(defaults)
    }

    /// Serve one request on the calling thread, which it may block (see
    /// the module docs).
    pub fn serve_blocking(&self, request: RegistryRequest) -> Result<RegistryResponse, WireError> {
        self.inner.serve(request)
    }
}

impl Inner {
    fn system(&self) -> Result<&SystemKeyspace, WireError> {
        self.store.system().ok_or_else(|| {
            wire(
                ErrorCode::Unavailable,
                "the registry is not attached to the node yet",
            )
        })
    }

    fn user_keyspace(&self, keyspace: &str) -> Result<(), WireError> {
        if is_system(keyspace) {
            return Err(wire(
                ErrorCode::BadRequest,
                format!("{keyspace:?} is a system keyspace; it takes no resolver"),
            ));
        }
        if !self.system()?.keyspaces().contains_key(keyspace) {
            return Err(wire(
                ErrorCode::BadRequest,
                format!("this node has no keyspace {keyspace:?}"),
            ));
        }
        Ok(())
    }

    /// The keyspaces whose configured default binding is `name@version`
    /// and that the registry never bound (the default is then in force).
    fn default_users(&self, name: &str, version: u32) -> Result<Vec<String>, WireError> {
        let mut users = Vec::new();
        for (keyspace, config) in self.system()?.keyspaces() {
            let named = config
                .resolver
                .as_ref()
                .is_some_and(|(n, v)| n == name && *v == version);
            if named
                && self
                    .registry
                    .binding(&keyspace)
                    .map_err(|e| to_wire(&e))?
                    .is_none()
            {
                users.push(keyspace);
            }
        }
        Ok(users)
    }

    /// The keyspace's configured default, when it names a registered
    /// resolver: what a first binding record of the keyspace carries on.
    fn default_ref(&self, keyspace: &str) -> Result<Option<ResolverRef>, WireError> {
        let Some((name, version)) = self
            .system()?
            .keyspaces()
            .get(keyspace)
            .and_then(|c| c.resolver.clone())
        else {
            return Ok(None);
        };
        Ok(self
            .registry
            .get(&name, version)
            .map_err(|e| to_wire(&e))?
            .map(|r| ResolverRef {
                name: r.name,
                version: r.version,
                hash: r.hash,
            }))
    }

    fn set_paused(&self, keyspace: &str, paused: bool) -> Result<RegistryResponse, WireError> {
        self.user_keyspace(keyspace)?;
        let _one_at_a_time = self.registry.mutation_lock();
        let default = self.default_ref(keyspace)?;
        let binding = if paused {
            self.registry.pause(keyspace, default)
        } else {
            self.registry.resume(keyspace, default)
        }
        .map_err(|e| to_wire(&e))?;
        tracing::info!(keyspace, paused, "resolver binding paused or resumed");
        Ok(RegistryResponse::Bound(binding_info(binding)))
    }

    fn serve(&self, request: RegistryRequest) -> Result<RegistryResponse, WireError> {
        let registry = &self.registry;
        let e = |e: RegistryError| to_wire(&e);
        match request {
            RegistryRequest::Upload {
                name,
                version,
                module,
                force,
            } => {
                let max = self.system()?.value_bytes_max();
                if module.len() > max {
                    return Err(wire(
                        ErrorCode::InvalidModule,
                        format!(
                            "module of {} bytes exceeds the {max} bytes a registry value may hold",
                            module.len()
                        ),
                    ));
                }
                let policy = UploadPolicy {
                    check: self.check.clone(),
                    override_failed_check: force,
                };
                let _one_at_a_time = registry.mutation_lock();
                let record = registry
                    .register(&self.host, &name, version, &module, &policy)
                    .map_err(e)?;
                tracing::info!(
                    name,
                    version,
                    bytes = module.len(),
                    forced = force,
                    "resolver registered"
                );
                Ok(RegistryResponse::Uploaded(info(record)))
            }
            RegistryRequest::Attach {
                keyspace,
                name,
                version,
            } => {
                self.user_keyspace(&keyspace)?;
                let _one_at_a_time = registry.mutation_lock();
                let binding = registry.attach(&keyspace, &name, version).map_err(e)?;
                tracing::info!(keyspace, name, version, "resolver attached");
                Ok(RegistryResponse::Bound(binding_info(binding)))
            }
            RegistryRequest::Detach { keyspace } => {
                self.user_keyspace(&keyspace)?;
                let _one_at_a_time = registry.mutation_lock();
                let binding = registry.detach(&keyspace).map_err(e)?;
                tracing::info!(keyspace, "resolver detached");
                Ok(RegistryResponse::Bound(binding_info(binding)))
            }
            RegistryRequest::Rollback { keyspace } => {
                self.user_keyspace(&keyspace)?;
                let _one_at_a_time = registry.mutation_lock();
                let binding = registry.rollback(&keyspace).map_err(e)?;
                tracing::info!(keyspace, "resolver binding rolled back");
                Ok(RegistryResponse::Bound(binding_info(binding)))
            }
            RegistryRequest::Canary {
                keyspace,
                name,
                version,
                dc,
                share_ppm,
                window_ms,
                merges_min,
                failure_rate_max_ppm,
            } => {
                self.user_keyspace(&keyspace)?;
                let defaults = RollbackGuard::default();
                let guard = RollbackGuard {
                    window_ms: window_ms.unwrap_or(defaults.window_ms),
                    merges_min: merges_min.unwrap_or(defaults.merges_min),
                    failure_rate_max_ppm: failure_rate_max_ppm
                        .unwrap_or(defaults.failure_rate_max_ppm),
                };
                let scope = CanaryScope { dc, share_ppm };
                let _one_at_a_time = registry.mutation_lock();
                let default = self.default_ref(&keyspace)?;
                let binding = registry
                    .attach_canary(&keyspace, &name, version, scope, guard, default, now_ms())
                    .map_err(e)?;
                tracing::info!(keyspace, name, version, "resolver canary attached");
                Ok(RegistryResponse::Bound(binding_info(binding)))
            }
            RegistryRequest::Promote { keyspace } => {
                self.user_keyspace(&keyspace)?;
                let _one_at_a_time = registry.mutation_lock();
                let binding = registry.promote(&keyspace).map_err(e)?;
                tracing::info!(keyspace, "resolver canary promoted");
                Ok(RegistryResponse::Bound(binding_info(binding)))
            }
            RegistryRequest::Pause { keyspace } => self.set_paused(&keyspace, true),
            RegistryRequest::Resume { keyspace } => self.set_paused(&keyspace, false),
            RegistryRequest::Delete { name, version } => {
                let _one_at_a_time = registry.mutation_lock();
                let defaults = self.default_users(&name, version)?;
                let record = registry.delete(&name, version, &defaults).map_err(e)?;
                self.host.evict(&record.hash);
                tracing::info!(name, version, "resolver deleted");
                Ok(RegistryResponse::Deleted(info(record)))
            }
            RegistryRequest::List => {
                let resolvers: Vec<ResolverInfo> =
                    registry.list().map_err(e)?.into_iter().map(info).collect();
                let mut bindings: BTreeMap<String, BindingInfo> = registry
                    .bindings()
                    .map_err(e)?
                    .into_iter()
                    .map(|b| (b.keyspace.clone(), binding_info(b)))
                    .collect();
                for (keyspace, config) in self.system()?.keyspaces() {
                    let Some((name, version)) = config.resolver.clone() else {
                        continue;
                    };
                    if bindings.contains_key(&keyspace) {
                        continue;
                    }
                    let hash = registry.get(&name, version).map_err(e)?.map(|r| r.hash);
                    bindings.insert(
                        keyspace.clone(),
                        BindingInfo {
                            keyspace,
                            current: Some(BoundResolver {
                                name,
                                version,
                                hash,
                            }),
                            history: Vec::new(),
                            from_config: true,
                            canary: None,
                            paused: false,
                            events: Vec::new(),
                        },
                    );
                }
                Ok(RegistryResponse::Listing {
                    resolvers,
                    bindings: bindings.into_values().collect(),
                })
            }
        }
    }
}

impl RegistryHook for RegistryService {
    fn attach(&self, store: SystemKeyspace) {
        if !self.inner.store.attach(store) {
            tracing::warn!("the registry was attached to a node already; this one is ignored");
        }
    }

    fn serve<'a>(
        &'a self,
        request: RegistryRequest,
        _deadline: Duration,
    ) -> BoxFuture<'a, Result<RegistryResponse, WireError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // A deadline shorter than the operation ends the wait, not
            // the operation: the server drops this future, the blocking
            // task finishes (its writes are whole records either way).
            tokio::task::spawn_blocking(move || inner.serve(request))
                .await
                .map_err(|e| wire(ErrorCode::Internal, format!("registry task failed: {e}")))?
        })
    }
}
