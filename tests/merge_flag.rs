//! The failure flag on reads: a read of siblings that the keyspace's
//! resolver could not merge says so (the class and the resolver) through
//! the SDK, `isthmus get` and the Redis front door's `ISTHMUS.SIBLINGS`;
//! the same keyspace with a working resolver, and a keyspace without one,
//! carry no flag.
//!
//! Needs the example resolvers: `bash scripts/build-resolvers.sh`.

use std::time::Duration;

use isthmus_client::Client;
use isthmus_client::wire::{
    Context, MergeFailureClass, MergeFailureInfo, RegistryRequest, RegistryResponse, RequestBody,
    ResponseBody,
};
use isthmus_core::config::NodeConfig;
use isthmus_testkit::{ClusterSpec, LocalCluster, Root, example_module};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// A resolver that logs a line, then traps, on every merge.
fn trapping() -> Vec<u8> {
    wat::parse_str(
        r#"(module
             (import "isthmus" "log" (func $log (param i32 i32)))
             (memory (export "memory") 1)
             (data (i32.const 64) "about to trap")
             (func (export "isthmus_abi_version") (result i32) i32.const 1)
             (func (export "isthmus_alloc") (param i32) (result i32) i32.const 1024)
             (func (export "isthmus_merge") (param i32 i32) (result i64)
               (call $log (i32.const 64) (i32.const 13))
               unreachable))"#,
    )
    .expect("WAT parses")
}

/// A second keyspace without a resolver, and the Redis front door on
/// every node: database 0 `carts`, database 1 `plain`.
fn configure(config: &mut NodeConfig) {
    let carts = config.keyspaces["carts"].clone();
    config.keyspaces.insert("plain".into(), carts);
    config.redis.enabled = true;
    config.redis.databases = vec!["carts".into(), "plain".into()];
}

async fn registry(cluster: &LocalCluster, request: RegistryRequest) -> RegistryResponse {
    let session = cluster.session(cluster.seed(), "test").await.unwrap();
    match session
        .call(RequestBody::Registry(request), Duration::from_secs(300))
        .await
        .unwrap()
    {
        ResponseBody::Registry(answer) => answer,
        other => panic!("the registry answered {other:?}"),
    }
}

async fn bind(cluster: &LocalCluster, version: u32, module: Vec<u8>) {
    bind_to(cluster, "carts", version, module).await
}

async fn bind_to(cluster: &LocalCluster, keyspace: &str, version: u32, module: Vec<u8>) {
    let upload = RegistryRequest::Upload {
        name: "r".into(),
        version,
        module,
        // The trapping module would fail the law check.
        force: true,
    };
    let answer = registry(cluster, upload).await;
    assert!(
        matches!(answer, RegistryResponse::Uploaded(_)),
        "{answer:?}"
    );
    let attach = RegistryRequest::Attach {
        keyspace: keyspace.into(),
        name: "r".into(),
        version,
    };
    let answer = registry(cluster, attach).await;
    assert!(matches!(answer, RegistryResponse::Bound(_)), "{answer:?}");
}

/// `ISTHMUS.SIBLINGS key` in database `db`, the raw RESP2 reply.
async fn resp_siblings(addr: &str, db: u8, key: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let command = format!(
        "*2\r\n$6\r\nSELECT\r\n$1\r\n{db}\r\n*2\r\n$16\r\nISTHMUS.SIBLINGS\r\n${}\r\n{key}\r\n",
        key.len()
    );
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // The reply ends with its third element: `$-1` (nil) or the resolver.
    let ended = |r: &[u8]| {
        let text = String::from_utf8_lossy(r);
        text.ends_with("$-1\r\n") || text.ends_with("$3\r\nr@1\r\n")
    };
    tokio::time::timeout(WAIT, async {
        while !ended(&reply) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the front door closed: {:?}",
                String::from_utf8_lossy(&reply)
            );
            reply.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a reply");
    String::from_utf8_lossy(&reply).into_owned()
}

/// `isthmus get` (plaintext); exit status, stdout, stderr.
async fn cli_get(addr: &str, keyspace: &str, key: &str, json: bool) -> (bool, String, String) {
    let mut args = vec!["get", key, "--keyspace", keyspace];
    if json {
        args.push("--json");
    }
    isthmus(addr, &args).await
}

/// `isthmus ARGS --addr ADDR --insecure-plaintext`; exit status, stdout,
/// stderr.
async fn isthmus(addr: &str, args: &[&str]) -> (bool, String, String) {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--addr".into(), addr.into(), "--insecure-plaintext".into()]);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(args)
            .env_remove("ISTHMUS_CA")
            .env_remove("ISTHMUS_CERT")
            .env_remove("ISTHMUS_KEY")
            .output()
            .expect("running isthmus")
    })
    .await
    .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_says_when_the_resolver_failed_to_merge_its_siblings() {
    let mut spec = ClusterSpec::new(&["dc1"], 1);
    spec.configure = Some(configure);
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    bind(&cluster, 1, trapping()).await;
    let client = Client::builder()
        .seed(cluster.seed())
        .local_dc("dc1")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    // Two blind writes to each keyspace: two siblings.
    for keyspace in ["carts", "plain"] {
        for value in ["a", "b"] {
            client
                .put(keyspace, b"k", value.into(), &Context::default())
                .await
                .unwrap();
        }
    }

    let read = client.get("carts", b"k").await.unwrap();
    assert_eq!(read.siblings.len(), 2, "{read:?}");
    assert_eq!(
        read.merge_failure,
        Some(MergeFailureInfo {
            class: MergeFailureClass::Trap,
            resolver: Some("r@1".into()),
        })
    );
    let plain = client.get("plain", b"k").await.unwrap();
    assert_eq!(plain.siblings.len(), 2, "{plain:?}");
    assert_eq!(plain.merge_failure, None, "no resolver, no flag");

    // The CLI: the values on stdout, the flag on stderr; in JSON a field.
    let addr = cluster.seed().to_owned();
    let (ok, out, err) = cli_get(&addr, "carts", "k", false).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        err.contains("not merged") && err.contains("r@1") && err.contains("trap"),
        "{err}"
    );
    let (ok, out, err) = cli_get(&addr, "carts", "k", true).await;
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["merge_failure"]["class"], "trap", "{out}");
    assert_eq!(json["merge_failure"]["resolver"], "r@1", "{out}");
    let (ok, _, err) = cli_get(&addr, "plain", "k", false).await;
    assert!(ok && !err.contains("not merged"), "{err}");

    // RESP: the third element of ISTHMUS.SIBLINGS.
    let node = cluster.node(&cluster.node_id("dc1", 0));
    let redis = node.redis_addr.clone().expect("the front door is on");
    let flagged = resp_siblings(&redis, 0, "k").await;
    assert!(
        flagged.starts_with("+OK\r\n*3\r\n")
            && flagged.ends_with("*2\r\n$4\r\ntrap\r\n$3\r\nr@1\r\n"),
        "{flagged:?}"
    );
    let plain = resp_siblings(&redis, 1, "k").await;
    assert!(
        plain.ends_with("$-1\r\n") && !plain.contains("trap"),
        "{plain:?}"
    );

    // A working version of the resolver bound to the same keyspace: the
    // read is merged, and carries no flag.
    bind(&cluster, 2, example_module("isthmus-example-lww")).await;
    let read = client.get("carts", b"k").await.unwrap();
    assert_eq!(read.siblings.len(), 1, "{read:?}");
    assert_eq!(read.merge_failure, None);
    let (ok, _, err) = cli_get(&addr, "carts", "k", false).await;
    assert!(ok && !err.contains("not merged"), "{err}");
    cluster.shutdown().await;
}

/// `GET /metrics` on a plaintext operations listener.
async fn metrics(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The merge figures node `addr` reports for `keyspace`: merges, failures.
async fn figures(cluster: &LocalCluster, addr: &str, keyspace: &str) -> (u64, u64) {
    let session = cluster.session(addr, "test").await.unwrap();
    match session.call(RequestBody::MergeStats, WAIT).await.unwrap() {
        ResponseBody::MergeStats(rows) => {
            rows.iter()
                .filter(|r| r.keyspace == keyspace)
                .fold((0, 0), |(m, f), r| {
                    (
                        m + r.merges,
                        f + r.failures.iter().map(|(_, n)| n).sum::<u64>(),
                    )
                })
        }
        other => panic!("MergeStats answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resolver_list_and_status_show_every_node_of_both_dcs() {
    let mut spec = ClusterSpec::new(&["dc1", "dc2"], 1);
    spec.configure = Some(configure);
    let mut cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    // carts merges with lww (r@1); plain's resolver (r@2) traps.
    bind_to(&cluster, "carts", 1, example_module("isthmus-example-lww")).await;
    bind_to(&cluster, "plain", 2, trapping()).await;
    let client = Client::builder()
        .seed(cluster.seed())
        .local_dc("dc1")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    for keyspace in ["carts", "plain"] {
        for value in ["a", "b"] {
            client
                .put(keyspace, b"k", value.into(), &Context::default())
                .await
                .unwrap();
        }
        client.get(keyspace, b"k").await.unwrap();
    }
    // Both DCs' nodes merge: wait until each has tried plain's merge and
    // merged carts. dc2's node merges as the bridge delivers the siblings,
    // or, when they reached it before the bindings did (the bridge orders
    // neither keyspace after the registry), on a read there.
    let (dc1, dc2) = (cluster.node_id("dc1", 0), cluster.node_id("dc2", 0));
    let dc2_client = Client::builder()
        .seed(&cluster.node(&dc2).addr)
        .local_dc("dc2")
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    for (id, reader) in [(&dc1, &client), (&dc2, &dc2_client)] {
        let addr = cluster.node(id).addr.clone();
        loop {
            let (merged, _) = figures(&cluster, &addr, "carts").await;
            let (_, failed) = figures(&cluster, &addr, "plain").await;
            if merged > 0 && failed > 0 {
                break;
            }
            for keyspace in ["carts", "plain"] {
                reader.get(keyspace, b"k").await.unwrap();
            }
            if started.elapsed() >= WAIT {
                let session = cluster.session(&addr, "test").await.unwrap();
                let rows = session.call(RequestBody::MergeStats, WAIT).await.unwrap();
                panic!("{id} never merged: {merged} {failed}: {rows:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let seed = cluster.seed().to_owned();

    // list: summed over both nodes, with fuel and time percentiles.
    let (ok, out, err) = isthmus(&seed, &["resolver", "list", "--json"]).await;
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &doc["merge_stats"];
    assert_eq!(stats["nodes_answered"], 2, "{out}");
    let row = |ks: &str| {
        stats["merges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["keyspace"] == ks)
            .unwrap_or_else(|| panic!("no row for {ks}: {out}"))
            .clone()
    };
    let carts = row("carts");
    assert_eq!(carts["resolver"], "r@1", "{out}");
    assert!(
        carts["merges"].as_u64().unwrap() >= 2,
        "both nodes merged: {out}"
    );
    assert!(carts["fuel_p50"].as_f64().unwrap() > 0.0, "{out}");
    assert!(carts["fuel_p99"].as_f64().unwrap() >= carts["fuel_p50"].as_f64().unwrap());
    assert!(carts["seconds_p50"].as_f64().unwrap() > 0.0, "{out}");
    let plain = row("plain");
    assert_eq!(plain["resolver"], "r@2", "{out}");
    assert!(
        plain["failures_by_class"]["trap"].as_u64().unwrap() >= 2,
        "{out}"
    );
    let (ok, text, err) = isthmus(&seed, &["resolver", "list"]).await;
    assert!(ok, "{err}");
    assert!(text.contains("summed over the 2 of 2 nodes"), "{text}");
    assert!(text.contains("trap="), "{text}");

    // status: both DCs' nodes hold r@2, see it bound to plain, and failed.
    let (ok, out, err) = isthmus(&seed, &["resolver", "status", "r@2", "--json"]).await;
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{out}");
    for (node, dc) in nodes.iter().zip(["dc1", "dc2"]) {
        assert_eq!(node["dc"], dc, "{out}");
        assert_eq!(node["holds_module"], true, "{out}");
        assert_eq!(
            node["bound_keyspaces"],
            serde_json::json!(["plain"]),
            "{out}"
        );
        assert!(node["failures"].as_u64().unwrap() >= 1, "{out}");
        assert_eq!(node["failure_rate"], 1.0, "{out}");
    }

    // /metrics: the histograms, by keyspace and resolver.
    let scraped = metrics(cluster.ops_addr(&dc1)).await;
    assert!(
        scraped.contains("isthmus_merge_fuel_count{keyspace=\"carts\",resolver=\""),
        "{scraped}"
    );
    assert!(
        scraped.contains("isthmus_merge_seconds_count{keyspace=\"plain\""),
        "{scraped}"
    );
    // What the trapping resolver logged before each trap, counted.
    let logged: u64 = scraped
        .lines()
        .find(|l| l.starts_with("isthmus_resolver_log_lines_total{keyspace=\"plain\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no log line count for plain: {scraped}"));
    assert!(logged >= 1, "{scraped}");

    // A node that does not answer is shown as such.
    cluster.stop_node(&dc2).await;
    let (ok, text, err) = isthmus(&seed, &["resolver", "status", "r@2"]).await;
    assert!(ok, "{err}");
    let dc2_line = text
        .lines()
        .find(|l| l.contains(&dc2))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(dc2_line.contains("no answer"), "{text}");
    let dc1_line = text
        .lines()
        .find(|l| l.contains(&dc1))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        dc1_line.contains("yes") && dc1_line.contains("plain"),
        "{text}"
    );
    cluster.shutdown().await;
}
