//! The check over resolver registry records (values of the `_registry`
//! system keyspace, which arrive from other nodes and datacenters), shared
//! by the cargo-fuzz target in `resolvers/fuzz` and its proptest twin (this
//! module's tests, in the normal test run).
//!
//! Not part of the API: hidden from the docs, and free to change.

use std::sync::Arc;

use isthmus_core::model::VersionSet;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::registry::{
    MemoryRecords, Registry, RegistryError, RegistryRecords, binding_key, module_key, resolver_key,
};
use crate::replicated::resolve;

/// A registry record: `bytes` as the value of a resolver record, of a
/// binding and of a module, read through the [`Registry`] and used as the
/// node uses them (list, follow a binding to its resolver, roll back,
/// attach); and `bytes` as a replica's set of a registry key, read as the
/// replicated store reads it.
pub fn registry_record(bytes: &[u8]) {
    check_value(bytes);
    if let Ok(set) = VersionSet::decode(bytes)
        && let Some(value) = resolve(&set)
    {
        check_value(&value);
    }
}

fn check_value(value: &[u8]) {
    let store = Arc::new(MemoryRecords::default());
    for key in [
        resolver_key("cart", 1),
        binding_key("ks"),
        module_key(&[7; 32]),
    ] {
        store
            .put(&key, value)
            .expect("memory records accept any put");
    }
    let registry = Registry::new(store.clone());
    let record = registry.get("cart", 1);
    let listed = registry.list();
    match (&record, &listed) {
        (Ok(Some(record)), Ok(list)) => {
            assert_eq!(list, std::slice::from_ref(record));
            assert_re_encodes(record);
        }
        (Err(RegistryError::Corrupt { .. }), Err(RegistryError::Corrupt { .. })) => {}
        other => panic!("get and list disagree: {other:?}"),
    }
    assert_eq!(
        registry.module_bytes(&[7; 32]).ok().flatten().as_deref(),
        Some(value)
    );
    let binding = match (registry.binding("ks"), registry.bindings()) {
        (Ok(Some(binding)), Ok(all)) => {
            assert_eq!(all, std::slice::from_ref(&binding));
            assert_re_encodes(&binding);
            binding
        }
        (Err(RegistryError::Corrupt { .. }), Err(RegistryError::Corrupt { .. })) => {
            assert!(registry.rollback("ks").is_err());
            return;
        }
        other => panic!("binding and bindings disagree: {other:?}"),
    };
    // The merge hook follows the binding to its resolver.
    if let Some(current) = &binding.current {
        let _ = registry.get(&current.name, current.version);
    }
    match registry.rollback("ks") {
        Ok(rolled) if binding.canary.is_some() => {
            // With a canary on, the rollback drops the canary alone.
            assert_eq!(rolled.canary, None);
            assert_eq!(
                (&rolled.current, &rolled.history),
                (&binding.current, &binding.history)
            );
        }
        Ok(rolled) => {
            assert_eq!(rolled.history.len() + 1, binding.history.len());
            assert_eq!(Some(&rolled.current), binding.history.last());
            assert_eq!(registry.binding("ks").ok().flatten(), Some(rolled));
        }
        Err(error) => {
            assert!(binding.history.is_empty() && binding.canary.is_none());
            assert!(matches!(error, RegistryError::NothingToRollBack { .. }));
        }
    }
    if let Ok(Some(record)) = record {
        let attached = registry.attach("ks", &record.name, record.version);
        if (record.name.as_str(), record.version) == ("cart", 1) {
            let bound = attached.expect("attaching a stored resolver");
            assert_eq!(bound.current.map(|r| r.hash), Some(record.hash));
        } else {
            // The record lies about its name or version: there is no
            // resolver under the name it claims.
            assert!(matches!(
                attached,
                Err(RegistryError::UnknownResolver { .. })
            ));
        }
    }
}

/// `value` encodes to bytes that decode to the same value.
fn assert_re_encodes<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = postcard::to_allocvec(value).expect("a record encodes");
    let again: T = postcard::from_bytes(&bytes).expect("a re-encoded record decodes");
    assert_eq!(&again, value);
}

#[cfg(test)]
mod tests;
