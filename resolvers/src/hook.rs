//! [`WasmMergeHook`]: core's [`MergeHook`] backed by this host and a
//! [`Registry`] of keyspace bindings.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use isthmus_core::merge::{FailureClass, MergeFailure, MergeHook};
use isthmus_core::model::{ContentHash, Version, VersionSet};
use parking_lot::Mutex;

use crate::host::MergeContext;
use crate::registry::{RegistryError, ResolverRef};
use crate::{Host, Registry, ResolverError};

/// Merges siblings with the resolver bound to their keyspace.
///
/// A keyspace's resolver is its registry binding when the registry has
/// one (a detached binding means none), else its default binding
/// ([`WasmMergeHook::with_defaults`], from the node's configuration:
/// `resolver = "cart-union@1"`), which must name a registered resolver.
/// Keyspaces without either are left alone (`Ok(None)`). A module not in
/// the host's cache is loaded from the registry on first use. Every
/// failure leaves the siblings as they were and is counted on the host
/// under the resolver's hash (and logged).
///
/// Bindings are cached per keyspace for as long as the registry's
/// [`generation`](Registry::generation) stays put, so a merge costs no
/// registry read in the steady state.
#[derive(Clone)]
pub struct WasmMergeHook {
    host: Arc<Host>,
    registry: Arc<Registry>,
    defaults: Arc<BTreeMap<String, (String, u32)>>,
    cache: Arc<Mutex<BindingCache>>,
}

/// Per keyspace: the registry generation it was looked up at, and what it
/// is bound to.
type BindingCache = HashMap<String, (u64, Option<Bound>)>;

/// What a keyspace is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Bound {
    /// A registered resolver.
    Resolver(ResolverRef),
    /// A default binding naming a resolver the registry does not hold.
    Unregistered { name: String, version: u32 },
}

impl WasmMergeHook {
    /// A hook over a host and a registry.
    pub fn new(host: Arc<Host>, registry: Arc<Registry>) -> Self {
        WasmMergeHook {
            host,
            registry,
            defaults: Arc::default(),
            cache: Arc::default(),
        }
    }

    /// Default bindings, `keyspace -> (name, version)`: used for keyspaces
    /// the registry has never bound.
    pub fn with_defaults(mut self, defaults: BTreeMap<String, (String, u32)>) -> Self {
        self.defaults = Arc::new(defaults);
        self.cache.lock().clear();
        self
    }

    /// The host this hook runs merges on.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// What `keyspace` is bound to now.
    fn bound_to(&self, keyspace: &str) -> Result<Option<Bound>, RegistryError> {
        let generation = self.registry.generation();
        if let Some(generation) = generation
            && let Some((at, bound)) = self.cache.lock().get(keyspace)
            && *at == generation
        {
            return Ok(bound.clone());
        }
        let bound = self.look_up(keyspace)?;
        if let Some(generation) = generation {
            // Read before looking up: a write in between leaves an entry
            // tagged with the older generation, which the next call
            // replaces.
            self.cache
                .lock()
                .insert(keyspace.to_owned(), (generation, bound.clone()));
        }
        Ok(bound)
    }

    fn look_up(&self, keyspace: &str) -> Result<Option<Bound>, RegistryError> {
        if let Some(binding) = self.registry.binding(keyspace)? {
            return Ok(binding.current.map(Bound::Resolver));
        }
        let Some((name, version)) = self.defaults.get(keyspace) else {
            return Ok(None);
        };
        Ok(Some(match self.registry.get(name, *version)? {
            Some(record) => Bound::Resolver(ResolverRef {
                name: record.name,
                version: record.version,
                hash: record.hash,
            }),
            None => Bound::Unregistered {
                name: name.clone(),
                version: *version,
            },
        }))
    }
}

impl MergeHook for WasmMergeHook {
    fn merge(
        &self,
        keyspace: &str,
        key: &[u8],
        siblings: &VersionSet,
    ) -> Result<Option<Version>, MergeFailure> {
        if siblings.len() < 2 {
            return Ok(None);
        }
        let failure = |resolver, class, detail: String| MergeFailure {
            keyspace: keyspace.into(),
            resolver,
            class,
            detail,
        };
        let current = match self
            .bound_to(keyspace)
            .map_err(|e| failure(None, FailureClass::Missing, e.to_string()))?
        {
            None => return Ok(None),
            Some(Bound::Resolver(current)) => current,
            Some(Bound::Unregistered { name, version }) => {
                return Err(failure(
                    None,
                    FailureClass::Missing,
                    format!(
                        "keyspace {keyspace:?} is configured with {name}@{version}, which is not registered (upload it with `isthmus resolver upload`)"
                    ),
                ));
            }
        };
        let hash: ContentHash = current.hash;
        let resolver = match self.host.get(&hash) {
            Some(r) => r,
            None => {
                let bytes = self
                    .registry
                    .module_bytes(&hash)
                    .map_err(|e| failure(Some(hash), FailureClass::Missing, e.to_string()))?
                    .ok_or_else(|| {
                        failure(
                            Some(hash),
                            FailureClass::Missing,
                            format!(
                                "module of {}@{} is not stored",
                                current.name, current.version
                            ),
                        )
                    })?;
                self.host
                    .load(&bytes)
                    .map_err(|e| failure(Some(hash), e.class(), e.to_string()))?
            }
        };
        let context = MergeContext {
            keyspace: Some(keyspace),
            resolver: Some((&current.name, current.version)),
        };
        self.host
            .merge_set_in(&resolver, key, siblings, &context)
            .map_err(|e: ResolverError| {
                tracing::warn!(keyspace, resolver = %current.name, version = current.version,
                    class = %e.class(), error = %e, "merge failed; siblings kept");
                failure(Some(hash), e.class(), e.to_string())
            })
    }

    fn bound(&self, keyspace: &str) -> Option<bool> {
        // A registry that cannot be read leaves the decision to the
        // keyspace's configuration (the merge then reports the failure).
        self.bound_to(keyspace).ok().map(|b| b.is_some())
    }
}
