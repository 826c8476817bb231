//! [`WasmMergeHook`]: core's [`MergeHook`] backed by this host and a
//! [`Registry`] of keyspace bindings.

use std::sync::Arc;

use isthmus_core::merge::{FailureClass, MergeFailure, MergeHook};
use isthmus_core::model::{Version, VersionSet};

use crate::{Host, Registry, ResolverError};

/// Merges siblings with the resolver bound to their keyspace.
///
/// Keyspaces without a binding are left alone (`Ok(None)`). A binding whose
/// module is not in the host's cache is loaded from the registry on first
/// use. Every failure leaves the siblings as they were and is counted on the
/// host under the resolver's hash (and logged).
#[derive(Clone)]
pub struct WasmMergeHook {
    host: Arc<Host>,
    registry: Arc<Registry>,
}

impl WasmMergeHook {
    /// A hook over a host and a registry.
    pub fn new(host: Arc<Host>, registry: Arc<Registry>) -> Self {
        WasmMergeHook { host, registry }
    }

    /// The host this hook runs merges on.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
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
        let binding = self
            .registry
            .binding(keyspace)
            .map_err(|e| failure(None, FailureClass::Missing, e.to_string()))?;
        let Some(current) = binding.and_then(|b| b.current) else {
            return Ok(None);
        };
        let hash = current.hash;
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
        self.host
            .merge_set(&resolver, key, siblings)
            .map_err(|e: ResolverError| {
                tracing::warn!(keyspace, resolver = %current.name, version = current.version,
                    class = %e.class(), error = %e, "merge failed; siblings kept");
                failure(Some(hash), e.class(), e.to_string())
            })
    }
}
