//! A staged resolver rollout on real `isthmus server` processes: two
//! datacenters of two nodes, joined by the bridge, all through the CLI.
//!
//! `carts` is bound to lww (`carts-merge@1`). cart-union, uploaded as
//! `carts-merge@2`, is put on trial in DC1 (a canary): concurrent carts
//! written meanwhile are merged by cart-union in DC1 and by lww in DC2,
//! and every replica of both DCs still ends with the same one version.
//! It is promoted. A module that traps on every merge, forced past the law
//! checker as `carts-merge@3`, is put on trial in DC1: concurrent writes
//! through DC1 make its merges fail, and the DC1 nodes roll it back by
//! themselves; `resolver list` says so, and merges succeed again. While it
//! failed, a client read of a key it could not merge said so (class
//! `trap`, `carts-merge@3`). A paused binding keeps a key's siblings for
//! readers, whose reads say `paused`, and merges again once resumed.
//! Last, a new resolver scaffolded by `resolver new` and built and checked
//! by `resolver build` is uploaded, put on trial in DC1 (where it merges
//! concurrent writes) and promoted.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::{Node, all_see, call, isthmus, local_set, text, until, wasm};
use isthmus_client::wire::{
    BindingInfo, Consistency, Context, MergeFailureClass, MergeFailureInfo, RegistryRequest,
    RegistryResponse, RequestBody, ResponseBody, WriteId, WriteMode,
};
use isthmus_example_cart_union as cart_union;

/// Two DCs of two nodes; `carts` has two replicas in each.
fn cluster(dir: &Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (dc, i) in [("dc1", 0), ("dc1", 1), ("dc2", 0), ("dc2", 1)] {
        let ip = format!("127.0.{}.{}", if dc == "dc1" { 40 } else { 41 }, i + 2);
        nodes.push(Node::new(dir, &format!("{dc}-n{i}"), dc, &ip));
    }
    let seeds = [nodes[0].addr.as_str(), nodes[2].addr.as_str()];
    for node in &nodes {
        node.write_config(
            dir,
            &format!("r{}", node.id.chars().last().unwrap()),
            &seeds,
            "vnodes = 16\nfsync = \"interval\"",
            "dc1 = 2, dc2 = 2",
        );
    }
    nodes
}

/// `isthmus resolver ARGS... --addr ADDR`, which must succeed; its stdout.
async fn cli(addr: &str, args: &[&str]) -> String {
    let mut all = vec!["resolver".to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.extend(["--addr".to_owned(), addr.to_owned()]);
    let out: Output = isthmus(all).await;
    assert!(
        out.status.success(),
        "isthmus resolver {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The `carts` binding as `addr` lists it.
async fn carts_binding(addr: &str) -> Option<BindingInfo> {
    match call(addr, RequestBody::Registry(RegistryRequest::List)).await {
        Ok(ResponseBody::Registry(RegistryResponse::Listing { bindings, .. })) => {
            bindings.into_iter().find(|b| b.keyspace == "carts")
        }
        _ => None,
    }
}

/// Every node lists a `carts` binding that `ok` accepts.
async fn every_binding(nodes: &[Node], ok: impl Fn(&BindingInfo) -> bool) -> bool {
    for node in nodes {
        match carts_binding(&node.addr).await {
            Some(b) if ok(&b) => {}
            _ => return false,
        }
    }
    true
}

fn cart(item: &str, qty: u64) -> Vec<u8> {
    cart_union::encode(&BTreeMap::from([(item.to_owned(), qty)]))
}

/// A blind write (no context) of `value` through `addr`: concurrent with
/// every other blind write of the key.
async fn put(addr: &str, key: &[u8], value: Vec<u8>, id: u8) {
    let put = RequestBody::Put {
        mode: WriteMode::Context,
        keyspace: "carts".into(),
        key: key.to_vec(),
        value,
        context: Context::default(),
        consistency: None,
        write_id: WriteId([id; 16]),
        expiry: Default::default(),
        sloppy: None,
    };
    assert_eq!(call(addr, put).await.unwrap(), ResponseBody::Written);
}

/// The live sibling values a client read through `addr` returns.
async fn read(addr: &str, key: &[u8]) -> Vec<Vec<u8>> {
    read_flagged(addr, key).await.0
}

/// [`read`], with the read's flag: why the keyspace's resolver did not
/// merge the siblings returned, if it did not.
async fn read_flagged(addr: &str, key: &[u8]) -> (Vec<Vec<u8>>, Option<MergeFailureInfo>) {
    let get = RequestBody::Get {
        keyspace: "carts".into(),
        key: key.to_vec(),
        consistency: Some(Consistency::LocalQuorum),
    };
    match call(addr, get).await.unwrap() {
        ResponseBody::Value {
            siblings,
            merge_failure,
            ..
        } => (
            siblings.into_iter().map(|s| s.value).collect(),
            merge_failure,
        ),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_promoted_and_a_failing_one_rolls_itself_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    for node in &mut nodes {
        node.spawn();
    }
    until("four nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 4).await
    })
    .await;
    let addr = |i: usize| nodes[i].addr.clone();
    let probe = common::probe("probe");

    // lww bound everywhere; cart-union uploaded as its next version.
    let lww = wasm("isthmus-example-lww").display().to_string();
    let union = wasm("isthmus-example-cart-union").display().to_string();
    let upload = |version: &'static str, file: String| {
        let a = addr(0);
        async move {
            cli(
                &a,
                &[
                    "upload",
                    "--name",
                    "carts-merge",
                    "--version",
                    version,
                    &file,
                ],
            )
            .await
        }
    };
    upload("1", lww).await;
    upload("2", union).await;
    cli(
        &addr(0),
        &["attach", "--keyspace", "carts", "carts-merge@1"],
    )
    .await;

    // cart-union on trial in DC1 (through a DC2 node: any node will do).
    until("every node holds both versions", &nodes, 60, async || {
        for node in &nodes {
            match call(&node.addr, RequestBody::Registry(RegistryRequest::List)).await {
                Ok(ResponseBody::Registry(RegistryResponse::Listing { resolvers, .. }))
                    if resolvers.len() == 2 => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    let out = cli(
        &addr(2),
        &[
            "attach",
            "--keyspace",
            "carts",
            "carts-merge@2",
            "--canary-dc",
            "dc1",
        ],
    )
    .await;
    assert!(out.contains("canary: carts-merge@2 in dc dc1"), "{out}");
    until("every node runs the canary", &nodes, 60, async || {
        every_binding(&nodes, |b| {
            b.canary.as_ref().is_some_and(|c| c.resolver.version == 2)
                && b.current.as_ref().is_some_and(|r| r.version == 1)
        })
        .await
    })
    .await;
    let hashes = carts_binding(&addr(0)).await.unwrap();
    let (lww_hash, union_hash) = (
        hashes.current.unwrap().hash.unwrap(),
        hashes.canary.unwrap().resolver.hash.unwrap(),
    );

    // Mid-rollout: concurrent carts through both DCs. DC1 merges them with
    // cart-union, DC2 with lww: equal clocks, different bytes. Each DC's
    // merge stays in that DC until the versions meet (here by the read
    // repair of reads at ALL; repair does it too); then the greater
    // digest wins on every replica of both.
    put(&addr(0), b"mid", cart("apple", 2), 1).await;
    put(&addr(2), b"mid", cart("pear", 1), 2).await;
    put(&addr(3), b"mid", cart("fig", 3), 3).await;
    let mut last = Vec::new();
    until(
        "every replica of both DCs holds the same one version",
        &nodes,
        60,
        async || {
            let get = RequestBody::Get {
                keyspace: "carts".into(),
                key: b"mid".to_vec(),
                consistency: Some(Consistency::All),
            };
            let _ = call(&addr(0), get).await;
            last.clear();
            for node in &nodes {
                last.push(local_set(&probe, &node.addr, "carts", b"mid").await);
            }
            last.iter()
                .all(|s| s.as_ref().is_some_and(|s| s.len() == 1))
                && last.windows(2).all(|w| w[0] == w[1])
        },
    )
    .await;
    eprintln!("mid-rollout, every replica holds {:?}", last[0]);
    let merged_by = last[0].as_ref().unwrap().versions()[0].resolver;
    assert!(
        merged_by == Some(lww_hash) || merged_by == Some(union_hash),
        "{merged_by:?}"
    );

    // Promote: cart-union everywhere.
    cli(&addr(1), &["promote", "--keyspace", "carts"]).await;
    until("every node binds cart-union", &nodes, 60, async || {
        every_binding(&nodes, |b| {
            b.canary.is_none() && b.current.as_ref().is_some_and(|r| r.version == 2)
        })
        .await
    })
    .await;

    // A version that traps on every merge, past the checker by --force,
    // on trial in DC1 with a guard that trips after three merges.
    let trap = dir.path().join("trap.wasm");
    std::fs::write(
        &trap,
        wat::parse_str(
            r#"(module
                 (memory (export "memory") 1)
                 (func (export "isthmus_abi_version") (result i32) i32.const 1)
                 (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
                 (func (export "isthmus_merge") (param i32 i32) (result i64) unreachable))"#,
        )
        .unwrap(),
    )
    .unwrap();
    let out = cli(
        &addr(0),
        &[
            "upload",
            "--name",
            "carts-merge",
            "--version",
            "3",
            "--force",
            &trap.display().to_string(),
        ],
    )
    .await;
    assert!(out.contains("overridden"), "{out}");
    until("every node holds version 3", &nodes, 60, async || {
        for node in &nodes {
            match call(&node.addr, RequestBody::Registry(RegistryRequest::List)).await {
                Ok(ResponseBody::Registry(RegistryResponse::Listing { resolvers, .. }))
                    if resolvers.len() == 3 => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    cli(
        &addr(0),
        &[
            "attach",
            "--keyspace",
            "carts",
            "carts-merge@3",
            "--canary-dc",
            "dc1",
            "--canary-merges-min",
            "5",
            "--canary-failure-rate-max",
            "0.5",
        ],
    )
    .await;
    until(
        "every node runs the failing canary",
        &nodes,
        60,
        async || {
            every_binding(&nodes, |b| {
                b.canary.as_ref().is_some_and(|c| c.resolver.version == 3)
            })
            .await
        },
    )
    .await;

    // Concurrent writes through both DC1 nodes: DC1's replicas merge with
    // the canary, and fail. A client read of such a key says so (fewer
    // merges than the canary's minimum of 5 have run on any node: it has
    // not tripped).
    put(&addr(0), b"failing", cart("apple", 1), 8).await;
    put(&addr(1), b"failing", cart("pear", 2), 9).await;
    let (siblings, flag) = read_flagged(&addr(0), b"failing").await;
    assert_eq!(siblings.len(), 2, "{siblings:?}");
    assert_eq!(
        flag,
        Some(MergeFailureInfo {
            class: MergeFailureClass::Trap,
            resolver: Some("carts-merge@3".into()),
        }),
        "the read says the canary failed to merge"
    );
    // More, until it trips.
    for k in 0..8u8 {
        let key = [b'f', k];
        put(&addr(0), &key, cart("apple", 1), 10 + 2 * k).await;
        put(&addr(1), &key, cart("pear", 2), 11 + 2 * k).await;
    }
    until(
        "the DC1 nodes roll the failing canary back",
        &nodes,
        60,
        async || {
            every_binding(&nodes, |b| {
                b.canary.is_none()
                    && b.current.as_ref().is_some_and(|r| r.version == 2)
                    && b.events.last().is_some_and(|e| {
                        e.note.contains(
                            "canary carts-merge@3 rolled back automatically: failure rate 1.000 over",
                        )
                    })
            })
            .await
        },
    )
    .await;
    let listing = cli(&addr(3), &["list"]).await;
    assert!(
        listing.contains("rolled back automatically: failure rate 1.000 over"),
        "{listing}"
    );

    // Merges succeed again, in DC1 too: with cart-union, on every replica.
    put(&addr(0), b"after", cart("apple", 1), 40).await;
    put(&addr(1), b"after", cart("pear", 2), 41).await;
    let mut both = BTreeMap::new();
    both.insert("apple".to_owned(), 1);
    both.insert("pear".to_owned(), 2);
    let want = cart_union::encode(&both);
    until(
        "every replica holds the merged cart",
        &nodes,
        60,
        async || {
            for node in &nodes {
                match local_set(&probe, &node.addr, "carts", b"after").await {
                    Some(s)
                        if s.len() == 1
                            && s.versions()[0].value_bytes() == Some(&want[..])
                            && s.versions()[0].resolver == Some(union_hash) => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;

    // Paused: siblings are kept and returned to readers.
    cli(&addr(2), &["pause", "--keyspace", "carts"]).await;
    until("every node is paused", &nodes, 60, async || {
        every_binding(&nodes, |b| b.paused).await
    })
    .await;
    put(&addr(0), b"paused", cart("apple", 1), 50).await;
    put(&addr(1), b"paused", cart("fig", 1), 51).await;
    let (siblings, flag) = read_flagged(&addr(0), b"paused").await;
    assert_eq!(siblings.len(), 2, "{siblings:?}");
    assert_eq!(
        flag,
        Some(MergeFailureInfo {
            class: MergeFailureClass::Paused,
            resolver: Some("carts-merge@2".into()),
        }),
        "the read says the binding is paused"
    );
    for node in &nodes[..2] {
        let set = local_set(&probe, &node.addr, "carts", b"paused")
            .await
            .unwrap();
        assert_eq!(set.len(), 2, "{}: the siblings are kept", node.id);
    }

    // Resumed: a read merges them again.
    cli(&addr(2), &["resume", "--keyspace", "carts"]).await;
    until("every node merges again", &nodes, 60, async || {
        every_binding(&nodes, |b| !b.paused).await
    })
    .await;
    let mut merged = BTreeMap::new();
    merged.insert("apple".to_owned(), 1);
    merged.insert("fig".to_owned(), 1);
    let want = cart_union::encode(&merged);
    let mut got = Vec::new();
    until("a read returns the merged cart", &nodes, 60, async || {
        got = read(&addr(0), b"paused").await;
        got == [want.clone()]
    })
    .await;

    // A new resolver: scaffolded, built and checked, uploaded, on trial in
    // DC1, promoted. (The scaffold's merge is a union of newline-separated
    // items.)
    let parent = dir.path().to_owned();
    let module = tokio::task::spawn_blocking(move || common::scaffold_and_build("lines", &parent))
        .await
        .unwrap();
    upload("4", module.display().to_string()).await;
    cli(
        &addr(0),
        &[
            "attach",
            "--keyspace",
            "carts",
            "carts-merge@4",
            "--canary-dc",
            "dc1",
        ],
    )
    .await;
    until(
        "every node runs the scaffolded canary",
        &nodes,
        60,
        async || {
            every_binding(&nodes, |b| {
                b.canary.as_ref().is_some_and(|c| c.resolver.version == 4)
            })
            .await
        },
    )
    .await;
    put(&addr(0), b"lines", b"pear".to_vec(), 60).await;
    put(&addr(1), b"lines", b"apple".to_vec(), 61).await;
    until("DC1's replicas merge with it", &nodes, 60, async || {
        for node in &nodes[..2] {
            match local_set(&probe, &node.addr, "carts", b"lines").await {
                Some(s)
                    if s.len() == 1
                        && s.versions()[0].value_bytes() == Some(&b"apple\npear"[..]) => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    cli(&addr(0), &["promote", "--keyspace", "carts"]).await;
    until("every node binds it", &nodes, 60, async || {
        every_binding(&nodes, |b| {
            b.canary.is_none() && b.current.as_ref().is_some_and(|r| r.version == 4)
        })
        .await
    })
    .await;
}
