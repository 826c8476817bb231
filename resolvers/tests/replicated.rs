//! The registry on a node's system keyspace, without a cluster: a real
//! storage engine in a temporary directory, and a writer that applies to
//! it as the coordinator would (the writer's own version over the context
//! it is given). The store adapter resolves siblings, scans by prefix,
//! writes from a blocking thread and reports a generation that moves with
//! every apply; the service uploads (with the law check), attaches, lists
//! and answers typed errors; the merge hook follows the replicated binding
//! and the configured default.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use isthmus_core::bridge::BoxFuture;
use isthmus_core::coordinator::CoordinatorError;
use isthmus_core::engine::{Engine, EngineOptions};
use isthmus_core::merge::{FailureClass, MergeHook};
use isthmus_core::model::{Actor, Clock, Dot, KeyspaceConfig, Version};
use isthmus_core::ring::NodeId;
use isthmus_core::store::storage_key;
use isthmus_core::system_keyspace::{
    ErrorCode, LawCheckOutcome, REGISTRY_KEYSPACE, RegistryHook, RegistryRequest, RegistryResponse,
    ResolverInfo, SystemKeyspace, SystemWriter,
};
use isthmus_resolvers::check::CheckOptions;
use isthmus_resolvers::registry::RegistryRecords;
use isthmus_resolvers::replicated::resolve;
use isthmus_resolvers::{RegistryKeyspace, RegistryService};
use isthmus_testkit::example_module;
use isthmus_testkit::version::dotted;
use parking_lot::RwLock;

/// Applies a write to the engine as the coordinating replica would: one
/// new dot over the context, then counts the apply.
struct EngineWriter {
    engine: Arc<Engine>,
    applies: Arc<AtomicU64>,
    counter: AtomicU64,
}

impl EngineWriter {
    fn apply(&self, key: &[u8], version: Version) {
        self.engine
            .apply(&storage_key(REGISTRY_KEYSPACE, key).unwrap(), version)
            .unwrap();
        self.applies.fetch_add(1, Ordering::Release);
    }
}

impl SystemWriter for EngineWriter {
    fn write<'a>(
        &'a self,
        _keyspace: &'a str,
        key: &'a [u8],
        value: Option<Vec<u8>>,
        mut context: Clock,
        _write_id: [u8; 16],
        _deadline: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        Box::pin(async move {
            let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
            context.add_dot(Dot {
                actor: Actor(7),
                counter,
            });
            let version = match value {
                Some(value) => Version::value(context, value, counter, "dc1".into()),
                None => Version::tombstone(context, counter, "dc1".into()),
            };
            self.apply(key, version);
            Ok(())
        })
    }
}

struct Node {
    _dir: tempfile::TempDir,
    writer: Arc<EngineWriter>,
    _dyn_writer: Arc<dyn SystemWriter>,
    system: SystemKeyspace,
}

/// A node's registry keyspace over a fresh engine; `carts` is its one
/// user keyspace, configured with `default` as its resolver.
fn node(default: Option<(&str, u32)>) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineOptions::default()).unwrap());
    let applies = Arc::new(AtomicU64::new(0));
    let writer = Arc::new(EngineWriter {
        engine: engine.clone(),
        applies: applies.clone(),
        counter: AtomicU64::new(0),
    });
    let dyn_writer: Arc<dyn SystemWriter> = writer.clone();
    let keyspaces = BTreeMap::from([
        (
            "carts".to_owned(),
            KeyspaceConfig {
                resolver: default.map(|(n, v)| (n.to_owned(), v)),
                ..KeyspaceConfig::default()
            },
        ),
        (REGISTRY_KEYSPACE.to_owned(), KeyspaceConfig::default()),
    ]);
    let system = SystemKeyspace::new(
        NodeId("n1".into()),
        REGISTRY_KEYSPACE,
        &(engine.clone() as Arc<dyn isthmus_core::store::BlockingRead>),
        &dyn_writer,
        applies,
        Arc::new(RwLock::new(isthmus_core::model::keyspace_map(keyspaces))),
        &Default::default(),
    );
    Node {
        _dir: dir,
        writer,
        _dyn_writer: dyn_writer,
        system,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_resolve_siblings_to_the_latest_then_the_greater_digest() {
    let n = node(None);
    let store = RegistryKeyspace::new();
    assert!(store.get(b"k").is_err(), "unattached stores fail cleanly");
    assert_eq!(store.generation(), None);
    assert!(store.attach(n.system.clone()));
    assert!(!store.attach(n.system.clone()), "the first attach stays");
    assert_eq!(store.get(b"k").unwrap(), None);
    let g0 = store.generation().unwrap();

    // Two nodes wrote the key concurrently: the later timestamp wins.
    n.writer.apply(b"k", dotted(1, 1).at(10).value(b"old"));
    n.writer
        .apply(b"k", dotted(2, 1).at(20).dc("dc2").value(b"new"));
    assert_eq!(store.get(b"k").unwrap(), Some(b"new".to_vec()));
    assert!(store.generation().unwrap() >= g0 + 2);

    // Equal timestamps: the greater digest, whatever the arrival order.
    let a = dotted(3, 1).at(5).value(b"a");
    let b = dotted(4, 1).at(5).value(b"b");
    let want = if a.digest() > b.digest() { "a" } else { "b" };
    n.writer.apply(b"tie", b.clone());
    n.writer.apply(b"tie", a.clone());
    assert_eq!(store.get(b"tie").unwrap(), Some(want.as_bytes().to_vec()));

    // A later tombstone reads as absent.
    n.writer.apply(b"k", dotted(5, 1).at(30).tombstone());
    assert_eq!(store.get(b"k").unwrap(), None);
    assert_eq!(resolve(&Default::default()), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_write_through_over_the_local_context_and_scans_list_by_prefix() {
    let n = node(None);
    let store = Arc::new(RegistryKeyspace::new());
    store.attach(n.system.clone());
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        for (k, v) in [
            (&b"binding/b"[..], &b"1"[..]),
            (b"binding/a", b"2"),
            (b"resolver/x", b"3"),
            (b"binding/b", b"4"),
        ] {
            s.put(k, v).unwrap();
        }
    })
    .await
    .unwrap();
    // The async path writes the same way.
    n.system
        .write(b"binding/c", b"5".to_vec(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(store.get(b"binding/c").unwrap(), Some(b"5".to_vec()));
    // The second write of binding/b superseded the first: one version.
    let set = n.system.get(b"binding/b").unwrap();
    assert_eq!(set.len(), 1, "{set:?}");
    assert_eq!(store.get(b"binding/b").unwrap(), Some(b"4".to_vec()));
    let scanned = store.scan(b"binding/").unwrap();
    assert_eq!(
        scanned,
        vec![
            (b"binding/a".to_vec(), b"2".to_vec()),
            (b"binding/b".to_vec(), b"4".to_vec()),
            (b"binding/c".to_vec(), b"5".to_vec()),
        ]
    );
}

fn upload(name: &str, module: Vec<u8>, force: bool) -> RegistryRequest {
    RegistryRequest::Upload {
        name: name.into(),
        version: 1,
        module,
        force,
    }
}

async fn serve(
    service: &RegistryService,
    request: RegistryRequest,
) -> Result<RegistryResponse, isthmus_core::system_keyspace::WireError> {
    service.serve(request, Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_uploads_checks_attaches_lists_and_answers_typed_errors() {
    let n = node(Some(("lww", 1)));
    let service = RegistryService::with_check(
        small_host(),
        CheckOptions {
            cases_per_size: 8,
            ..CheckOptions::default()
        },
    );
    service.attach(n.system.clone());
    let hook = service.merge_hook(BTreeMap::from([(
        "carts".to_owned(),
        ("lww".to_owned(), 1),
    )]));

    // The configured default is not uploaded yet: merges report it.
    assert_eq!(hook.bound("carts"), Some(true));
    let err = hook.merge("carts", b"k", &cart_set()).unwrap_err();
    assert_eq!(err.class, FailureClass::Missing);
    assert!(err.detail.contains("lww@1"), "{}", err.detail);

    let cart = example_module("isthmus-example-cart-union");
    let answer = serve(&service, upload("cart-union", cart.clone(), false))
        .await
        .unwrap();
    let RegistryResponse::Uploaded(info) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(info.module_bytes, cart.len() as u64);
    assert!(matches!(info.law_check, LawCheckOutcome::Passed { .. }));

    let wrong = example_module("isthmus-example-wrong-first-wins");
    let err = serve(&service, upload("wrong", wrong.clone(), false))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LawCheckFailed, "{err:?}");
    let forced = serve(&service, upload("wrong", wrong, true)).await.unwrap();
    assert!(matches!(
        forced,
        RegistryResponse::Uploaded(ResolverInfo {
            law_check: LawCheckOutcome::Overridden { .. },
            ..
        })
    ));
    let err = serve(&service, upload("junk", b"not wasm".to_vec(), false))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidModule, "{err:?}");
    let err = serve(&service, upload("bad\0name", cart.clone(), false))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest, "{err:?}");
    let too_big = vec![0; n.system.value_bytes_max() + 1];
    let err = serve(&service, upload("big", too_big, false))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidModule, "{err:?}");
    let lww = example_module("isthmus-example-lww");
    let err = serve(&service, upload("cart-union", lww, false))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::VersionTaken, "{err:?}");

    let attach = |keyspace: &str, version| RegistryRequest::Attach {
        keyspace: keyspace.into(),
        name: "cart-union".into(),
        version,
    };
    for (request, code) in [
        (attach("carts", 9), ErrorCode::UnknownResolver),
        (attach("nope", 1), ErrorCode::BadRequest),
        (attach(REGISTRY_KEYSPACE, 1), ErrorCode::BadRequest),
    ] {
        assert_eq!(serve(&service, request).await.unwrap_err().code, code);
    }

    // The binding replaces the default; the hook follows it at once.
    let bound = serve(&service, attach("carts", 1)).await.unwrap();
    let RegistryResponse::Bound(binding) = bound else {
        panic!("{bound:?}")
    };
    assert_eq!(binding.current.unwrap().hash, Some(info.hash));
    let merged = hook.merge("carts", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(merged.value_bytes(), Some(CART_MERGED));
    assert_eq!(merged.resolver, Some(info.hash));

    let listing = serve(&service, RegistryRequest::List).await.unwrap();
    let RegistryResponse::Listing {
        resolvers,
        bindings,
    } = listing
    else {
        panic!("{listing:?}")
    };
    let names: Vec<(&str, u32)> = resolvers
        .iter()
        .map(|r| (r.name.as_str(), r.version))
        .collect();
    assert_eq!(names, vec![("cart-union", 1), ("wrong", 1)]);
    assert_eq!(bindings.len(), 1);
    assert!(!bindings[0].from_config);

    // Detached: no resolver (the default does not come back); rolled
    // back: cart-union again.
    serve(
        &service,
        RegistryRequest::Detach {
            keyspace: "carts".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(hook.bound("carts"), Some(false));
    assert_eq!(hook.merge("carts", b"k", &cart_set()), Ok(None));
    serve(
        &service,
        RegistryRequest::Rollback {
            keyspace: "carts".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(hook.bound("carts"), Some(true));
    assert!(hook.merge("carts", b"k", &cart_set()).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_follows_a_binding_that_arrives_from_another_node() {
    // This node has the module and record (replicated earlier) but no
    // binding; another node's attach then arrives by replication.
    let origin = node(None);
    let here = node(None);
    let service = RegistryService::with_check(
        small_host(),
        CheckOptions {
            cases_per_size: 4,
            ..CheckOptions::default()
        },
    );
    service.attach(origin.system.clone());
    serve(
        &service,
        upload(
            "cart-union",
            example_module("isthmus-example-cart-union"),
            false,
        ),
    )
    .await
    .unwrap();
    serve(
        &service,
        RegistryRequest::Attach {
            keyspace: "carts".into(),
            name: "cart-union".into(),
            version: 1,
        },
    )
    .await
    .unwrap();

    let local = RegistryService::new(small_host());
    local.attach(here.system.clone());
    let hook = local.merge_hook(BTreeMap::new());
    // Replicate everything but the binding, as versions.
    let mut binding = None;
    for (key, set) in origin.system.scan().unwrap() {
        for v in set.into_versions() {
            if key.starts_with(b"binding/") {
                binding = Some((key.clone(), v));
            } else {
                here.writer.apply(&key, v);
            }
        }
    }
    assert_eq!(hook.bound("carts"), Some(false));
    assert_eq!(hook.merge("carts", b"k", &cart_set()), Ok(None));
    let (key, v) = binding.unwrap();
    here.writer.apply(&key, v);
    assert_eq!(hook.bound("carts"), Some(true));
    let merged = hook.merge("carts", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(merged.value_bytes(), Some(CART_MERGED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_deletes_unused_resolvers_and_refuses_past_its_bounds() {
    use isthmus_resolvers::RegistryLimits;
    let n = node(Some(("lww", 1)));
    let service = RegistryService::with_limits(
        small_host(),
        CheckOptions {
            cases_per_size: 4,
            ..CheckOptions::default()
        },
        RegistryLimits {
            modules_max: 2,
            ..RegistryLimits::default()
        },
    );
    service.attach(n.system.clone());
    let lww = example_module("isthmus-example-lww");
    let cart = example_module("isthmus-example-cart-union");
    let counter = example_module("isthmus-example-pn-counter");
    serve(&service, upload("lww", lww, false)).await.unwrap();
    serve(&service, upload("cart-union", cart.clone(), false))
        .await
        .unwrap();
    let err = serve(&service, upload("pn", counter.clone(), false))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::RegistryFull, "{err:?}");

    let delete = |name: &str| RegistryRequest::Delete {
        name: name.into(),
        version: 1,
    };
    // lww@1 is the configured default of `carts`: in use.
    let err = serve(&service, delete("lww")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::ResolverInUse, "{err:?}");
    assert!(err.message.contains("carts"), "{}", err.message);
    // cart-union is unused: deleted, record and module, on this replica.
    let answer = serve(&service, delete("cart-union")).await.unwrap();
    let RegistryResponse::Deleted(info) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(info.name, "cart-union");
    let records = n.system.scan().unwrap();
    let held = |key: &[u8]| {
        records
            .iter()
            .any(|(k, set)| k == key && resolve(set).is_some())
    };
    use isthmus_resolvers::registry::{module_key, resolver_key};
    assert!(!held(&resolver_key("cart-union", 1)));
    assert!(!held(&module_key(&info.hash)));
    assert!(held(&resolver_key("lww", 1)));
    let err = serve(&service, delete("cart-union")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownResolver, "{err:?}");
    // The room it took is free again.
    serve(&service, upload("pn", counter, false)).await.unwrap();
    let listing = serve(&service, RegistryRequest::List).await.unwrap();
    let RegistryResponse::Listing { resolvers, .. } = listing else {
        panic!("{listing:?}")
    };
    let names: Vec<&str> = resolvers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["lww", "pn"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_canaries_with_default_guards_and_pauses_a_configured_default() {
    let n = node(Some(("cart-union", 1)));
    let service = RegistryService::with_check(
        small_host(),
        CheckOptions {
            cases_per_size: 8,
            ..CheckOptions::default()
        },
    );
    service.attach(n.system.clone());
    let hook = service
        .merge_hook(BTreeMap::from([(
            "carts".to_owned(),
            ("cart-union".to_owned(), 1),
        )]))
        .with_dc("dc1");
    let cart = example_module("isthmus-example-cart-union");
    let lww = example_module("isthmus-example-lww");
    serve(&service, upload("cart-union", cart, false))
        .await
        .unwrap();
    let RegistryResponse::Uploaded(lww) = serve(&service, upload("lww", lww, false)).await.unwrap()
    else {
        panic!("no upload")
    };
    let canary = |share_ppm, window_ms| RegistryRequest::Canary {
        keyspace: "carts".into(),
        name: "lww".into(),
        version: 1,
        dc: Some("dc1".into()),
        share_ppm,
        window_ms,
        merges_min: None,
        failure_rate_max_ppm: None,
    };
    // Out of bounds: BAD_REQUEST naming the field; nothing stored.
    for (request, field) in [
        (canary(Some(0), None), "share"),
        (canary(None, Some(10)), "window_ms"),
    ] {
        let err = serve(&service, request).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest, "{err:?}");
        assert!(err.message.contains(field), "{}", err.message);
    }
    let err = serve(
        &service,
        RegistryRequest::Promote {
            keyspace: "carts".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::BadRequest, "{err:?}");

    // On a keyspace the registry never bound: the configured default stays
    // the binding outside the canary's scope; unset numbers take the
    // defaults.
    let RegistryResponse::Bound(binding) = serve(&service, canary(None, None)).await.unwrap()
    else {
        panic!("not bound")
    };
    assert_eq!(binding.current.as_ref().unwrap().name, "cart-union");
    let info = binding.canary.unwrap();
    assert_eq!(
        (info.window_ms, info.merges_min, info.failure_rate_max_ppm),
        (60_000, 20, 100_000)
    );
    let merged = hook.merge("carts", b"k", &cart_set()).unwrap().unwrap();
    assert_eq!(merged.resolver, Some(lww.hash), "dc1 runs the canary");

    // Paused through the service: no merge; resumed: the canary again.
    let RegistryResponse::Bound(binding) = serve(
        &service,
        RegistryRequest::Pause {
            keyspace: "carts".into(),
        },
    )
    .await
    .unwrap() else {
        panic!("not bound")
    };
    assert!(binding.paused);
    let paused = hook.merge("carts", b"k", &cart_set()).unwrap_err();
    assert_eq!(paused.class, FailureClass::Paused, "{paused}");
    serve(
        &service,
        RegistryRequest::Resume {
            keyspace: "carts".into(),
        },
    )
    .await
    .unwrap();
    assert!(hook.merge("carts", b"k", &cart_set()).unwrap().is_some());
    let RegistryResponse::Listing { bindings, .. } =
        serve(&service, RegistryRequest::List).await.unwrap()
    else {
        panic!("no listing")
    };
    let notes: Vec<&str> = bindings[0].events.iter().map(|e| e.note.as_str()).collect();
    assert_eq!(notes, ["canary lww@1 began", "paused", "resumed"]);
}
