//! The resolver registry on real `isthmus server` processes: two
//! datacenters of two nodes, joined by the bridge. cart-union is uploaded
//! through one node of DC1 with the CLI, attached through a node of DC2;
//! concurrent carts written through three nodes in both datacenters end,
//! on every replica, as one merged version holding the union, merged by
//! that module. The law checker refuses wrong-first-wins unless forced,
//! and a module that is not wasm is a typed error; an unused resolver is
//! deleted through one node and gone on all. A node that joins DC1
//! afterwards streams the whole registry in as it bootstraps.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::{Node, all_see, call, isthmus, local_set, text, until, wasm};
use isthmus_client::ClientError;
use isthmus_client::wire::{
    Context, ErrorCode, RegistryRequest, RegistryResponse, RequestBody, ResponseBody, WriteId,
};
use isthmus_core::system_keyspace::REGISTRY_KEYSPACE;
use isthmus_example_cart_union as cart_union;
use isthmus_resolvers::registry::{binding_key, module_key, resolver_key};

/// Two DCs of two nodes, and a third DC1 node (last) that bootstraps
/// into the running cluster when spawned; `carts` has two replicas in
/// each DC and no configured resolver.
fn cluster(dir: &Path) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (dc, i) in [("dc1", 0), ("dc1", 1), ("dc2", 0), ("dc2", 1), ("dc1", 2)] {
        let ip = format!("127.0.{}.{}", if dc == "dc1" { 30 } else { 31 }, i + 2);
        let id = format!("{dc}-n{i}");
        nodes.push(Node::new(dir, &id, dc, &ip));
    }
    let seeds = [nodes[0].addr.as_str(), nodes[2].addr.as_str()];
    for node in &nodes {
        let bootstrap = node.id == "dc1-n2";
        node.write_config(
            dir,
            &format!("r{}", node.id.chars().last().unwrap()),
            &seeds,
            &format!("vnodes = 16\nfsync = \"interval\"\nbootstrap = {bootstrap}"),
            "dc1 = 2, dc2 = 2",
        );
    }
    nodes
}

async fn registry(addr: &str, request: RegistryRequest) -> Result<RegistryResponse, ClientError> {
    match call(addr, RequestBody::Registry(request)).await? {
        ResponseBody::Registry(answer) => Ok(answer),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// `isthmus resolver ARGS...`.
async fn cli(args: Vec<String>) -> Output {
    isthmus(["resolver".to_owned()].into_iter().chain(args).collect()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_resolver_merges_on_every_node_of_every_dc() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    for node in nodes.iter_mut().take(4) {
        node.spawn();
    }
    until("four nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 4).await
    })
    .await;
    let addr = |i: usize| nodes[i].addr.clone();

    // Upload through a DC1 node with the CLI: the node runs the checker.
    let cart = wasm("isthmus-example-cart-union");
    let out = cli(vec![
        "upload".into(),
        "--addr".into(),
        addr(0),
        "--name".into(),
        "cart-union".into(),
        "--version".into(),
        "1".into(),
        cart.display().to_string(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("law check: passed"),
        "{}",
        text(&out.stdout)
    );

    // A module that is not a join is refused without --force (exit 1).
    let wrong = wasm("isthmus-example-wrong-first-wins");
    let upload_wrong = |force: bool| {
        let mut args: Vec<String> = vec![
            "upload".into(),
            "--addr".into(),
            addr(3),
            "--name".into(),
            "first-wins".into(),
            "--version".into(),
            "1".into(),
        ];
        if force {
            args.push("--force".into());
        }
        args.push(wrong.display().to_string());
        cli(args)
    };
    let out = upload_wrong(false).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("fails the law check"),
        "{}",
        text(&out.stderr)
    );

    // Not wasm at all: a typed error, from the CLI and on the wire.
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not a module").unwrap();
    let out = cli(vec![
        "upload".into(),
        "--addr".into(),
        addr(1),
        "--name".into(),
        "garbage".into(),
        "--version".into(),
        "1".into(),
        garbage.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("INVALID_MODULE"),
        "{}",
        text(&out.stderr)
    );
    let err = registry(
        &addr(2),
        RegistryRequest::Upload {
            name: "garbage".into(),
            version: 1,
            module: b"\0asm but not really".to_vec(),
            force: true,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidModule), "{err}");

    // The registry's keyspace is not the clients' to write.
    let sneak = RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "_registry".into(),
        key: b"binding/carts".to_vec(),
        value: b"anything".to_vec(),
        context: Context::default(),
        consistency: None,
        write_id: WriteId([9; 16]),
        expiry: Default::default(),
        sloppy: None,
    };
    match call(&addr(0), sneak).await {
        Ok(ResponseBody::Error(e)) => assert_eq!(e.code, ErrorCode::BadRequest),
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}"),
        Ok(other) => panic!("a client wrote the registry keyspace: {other:?}"),
    }

    // Forced: registered, with the override recorded.
    let out = upload_wrong(true).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("overridden"));

    // The records reach every node of both DCs.
    until("every node lists both resolvers", &nodes, 60, async || {
        for node in &nodes[..4] {
            match registry(&node.addr, RegistryRequest::List).await {
                Ok(RegistryResponse::Listing { resolvers, .. }) if resolvers.len() == 2 => {}
                _ => return false,
            }
        }
        true
    })
    .await;

    // Attach through a DC2 node; the binding reaches every node.
    let out = cli(vec![
        "attach".into(),
        "--addr".into(),
        addr(3),
        "--keyspace".into(),
        "carts".into(),
        "cart-union@1".into(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut hash = None;
    until("every node holds the binding", &nodes, 60, async || {
        for node in &nodes[..4] {
            let Ok(RegistryResponse::Listing { bindings, .. }) =
                registry(&node.addr, RegistryRequest::List).await
            else {
                return false;
            };
            match bindings.iter().find(|b| b.keyspace == "carts") {
                Some(b) if !b.from_config && b.current.is_some() => {
                    hash = b.current.as_ref().and_then(|r| r.hash);
                }
                _ => return false,
            }
        }
        true
    })
    .await;
    let out = cli(vec![
        "list".into(),
        "--addr".into(),
        addr(1),
        "--json".into(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["bindings"][0]["current"]["name"], "cart-union");
    assert_eq!(
        listing["resolvers"][1]["law_check"]["outcome"],
        "overridden"
    );

    // Delete: refused for the bound cart-union (RESOLVER_IN_USE), done for
    // the unused first-wins through a DC1 node, and gone on every node of
    // both DCs.
    let delete = |resolver: &str| {
        cli(vec![
            "delete".into(),
            "--addr".into(),
            addr(0),
            resolver.into(),
        ])
    };
    let out = delete("cart-union@1").await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("RESOLVER_IN_USE"),
        "{}",
        text(&out.stderr)
    );
    let out = delete("first-wins@1").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("deleted first-wins@1"),
        "{}",
        text(&out.stdout)
    );
    until(
        "every node lists cart-union alone",
        &nodes,
        60,
        async || {
            for node in &nodes[..4] {
                match registry(&node.addr, RegistryRequest::List).await {
                    Ok(RegistryResponse::Listing { resolvers, .. })
                        if resolvers.len() == 1 && resolvers[0].name == "cart-union" => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;

    // Concurrent carts through three nodes of both DCs, no context.
    let items = [("apple", 2u64), ("pear", 1), ("fig", 3)];
    for (n, (item, qty)) in [0usize, 1, 2].into_iter().zip(items) {
        let cart = cart_union::encode(&BTreeMap::from([(item.to_owned(), qty)]));
        let put = RequestBody::Put {
            mode: isthmus_client::wire::WriteMode::Context,
            keyspace: "carts".into(),
            key: b"alice".to_vec(),
            value: cart,
            context: Context::default(),
            consistency: None,
            write_id: WriteId([n as u8 + 1; 16]),
            expiry: Default::default(),
            sloppy: None,
        };
        assert_eq!(call(&addr(n), put).await.unwrap(), ResponseBody::Written);
    }

    // Every replica, in both DCs, ends with one version: the union,
    // merged by the uploaded module, byte-identical everywhere.
    let union = cart_union::encode(&items.iter().map(|(i, q)| ((*i).to_owned(), *q)).collect());
    let probe = common::probe("probe");
    let mut last = Vec::new();
    until(
        "every replica holds the merged union",
        &nodes,
        60,
        async || {
            last.clear();
            for node in &nodes[..4] {
                last.push(local_set(&probe, &node.addr, "carts", b"alice").await);
            }
            last.iter().all(|set| {
                set.as_ref().is_some_and(|s| {
                    s.len() == 1
                        && s.versions()[0].value_bytes() == Some(&union[..])
                        && s.versions()[0].resolver == hash
                })
            }) && last.windows(2).all(|w| w[0] == w[1])
        },
    )
    .await;
    assert!(hash.is_some());

    // A node joins DC1: the whole registry is streamed to it at bootstrap
    // (scheduled repair is minutes away): every registry key, as a DC1
    // node holds it.
    let Ok(RegistryResponse::Listing { resolvers, .. }) =
        registry(&addr(0), RegistryRequest::List).await
    else {
        panic!("no listing")
    };
    let mut keys = vec![binding_key("carts")];
    for r in &resolvers {
        keys.push(resolver_key(&r.name, r.version));
        keys.push(module_key(&r.hash));
    }
    let mut want = Vec::new();
    for key in &keys {
        want.push(
            local_set(&probe, &addr(0), REGISTRY_KEYSPACE, key)
                .await
                .unwrap(),
        );
    }
    assert!(want.iter().all(|set| set.len() == 1), "{want:?}");
    nodes[4].spawn();
    until(
        "the joining node holds the whole registry",
        &nodes,
        60,
        async || {
            for (key, want) in keys.iter().zip(&want) {
                if local_set(&probe, &nodes[4].addr, REGISTRY_KEYSPACE, key)
                    .await
                    .as_ref()
                    != Some(want)
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
}
