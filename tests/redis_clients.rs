//! Client libraries of two languages against the Redis front door of a
//! two-DC cluster (in-process nodes, real sockets, TLS and logins):
//! redis-py (PyPI `redis`) and ioredis (npm), both installed by `.ci/run`.
//! Each program (`tests/clients/`) checks, through a front door in each
//! DC: a value set in DC1 is read in DC2 once replicated; `INCR` sent
//! from both DCs at once counts every increment in both; a key set with
//! `EX` is gone in both DCs; of two clients racing `SET NX` in one DC,
//! exactly one wins. Database 0 is a plain keyspace, database 1 one of
//! counters with the pn-counter resolver.

mod common;

use std::path::Path;
use std::process::Command;

use isthmus_core::config::NodeConfig;
use isthmus_testkit::cluster::{ADMIN, ADMIN_PASSWORD};
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};

/// `hits` (the spec's keyspace, with the resolver) holds counters;
/// `carts` beside it does not; both behind the front door.
fn front_doors(config: &mut NodeConfig) {
    let hits = config
        .keyspaces
        .get_mut("hits")
        .expect("the spec's keyspace");
    hits.counter = true;
    let mut carts = hits.clone();
    carts.counter = false;
    carts.resolver = None;
    config.keyspaces.insert("carts".into(), carts);
    config.redis.enabled = true;
    config.redis.databases = vec!["carts".into(), "hits".into()];
}

/// Whether `program --version` runs; in CI it must.
fn available(program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "CI must run the client library tests: `{program} {}` failed",
        args.join(" ")
    );
    if !ok {
        eprintln!(
            "`{program} {}` failed: that client's test did not run",
            args.join(" ")
        );
    }
    ok
}

fn run(program: &str, script: &Path, env: &[(&str, String)]) {
    let out = Command::new(program)
        .arg(script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{program} {}:\n{stdout}{stderr}", script.display());
    assert!(out.status.success(), "{program} failed:\n{stdout}{stderr}");
    assert!(stdout.contains("ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_py_and_ioredis_on_two_dcs() {
    let python = available("python3", &["-c", "import redis"]);
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let node = available(
        "node",
        &[
            "-e",
            &format!(
                "require({:?})",
                clients.join("node_modules/ioredis").display().to_string()
            ),
        ],
    );
    if !python && !node {
        return;
    }
    let module = std::fs::read(common::wasm("isthmus-example-pn-counter")).unwrap();
    let spec = ClusterSpec {
        keyspace: "hits".into(),
        resolver: Some(("pn-counter".into(), module)),
        configure: Some(front_doors),
        tls: true,
        ..ClusterSpec::new(&["dc1", "dc2"], 2)
    };
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    cluster.wait_alive(4, "two dcs").await.unwrap();
    let door = |dc: &str| {
        cluster
            .node(&cluster.node_id(dc, 0))
            .redis_addr
            .clone()
            .expect("a front door")
    };
    let env = vec![
        ("DC1_REDIS", door("dc1")),
        ("DC2_REDIS", door("dc2")),
        (
            "REDIS_CA",
            cluster
                .certs_dir()
                .unwrap()
                .join("ca.pem")
                .display()
                .to_string(),
        ),
        ("REDIS_USER", ADMIN.to_owned()),
        ("REDIS_PASSWORD", ADMIN_PASSWORD.to_owned()),
    ];
    let env2 = env.clone();
    let py_script = clients.join("redis_py_check.py");
    let js_script = clients.join("ioredis_check.js");
    // Both at once: two clients of two languages on one cluster.
    let py = tokio::task::spawn_blocking(move || python.then(|| run("python3", &py_script, &env)));
    let js = tokio::task::spawn_blocking(move || node.then(|| run("node", &js_script, &env2)));
    let (py, js) = (py.await, js.await);
    cluster.shutdown().await;
    py.unwrap();
    js.unwrap();
}
