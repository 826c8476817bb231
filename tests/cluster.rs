//! A five-node cluster of real `isthmus server` processes on 127.0.0.x:
//! writes at LOCAL_QUORUM keep succeeding with one node SIGKILLed, its
//! hints are handed off when it returns, reads at quorum see every
//! acknowledged write, and a retried put adds no sibling.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use isthmus_client::wire::{Consistency, Context, NodeReport, RequestBody, ResponseBody, WriteId};
use isthmus_client::{Client, Session};

struct Node {
    id: String,
    addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(["server", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning isthmus server");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: no shutdown path runs.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cluster(dir: &Path, n: usize) -> Vec<Node> {
    let ips: Vec<String> = (0..n).map(|i| format!("127.0.0.{}", i + 2)).collect();
    let addrs: Vec<String> = ips
        .iter()
        .map(|ip| format!("{ip}:{}", free_port(ip)))
        .collect();
    (0..n)
        .map(|i| {
            let config = dir.join(format!("n{i}.toml"));
            let toml = format!(
                r#"node_id = "n{i}"
dc = "dc1"
rack = "r{rack}"
listen = "{addr}"
data_dir = "{data}"
seeds = ["{seed}"]
vnodes = 32
fsync = "always"

[keyspaces.carts]
replication = {{ dc1 = 3 }}
consistency = "LOCAL_QUORUM"
"#,
                rack = i % 3,
                addr = addrs[i],
                data = dir.join(format!("n{i}")).display(),
                seed = addrs[0],
            );
            std::fs::write(&config, toml).unwrap();
            Node {
                id: format!("n{i}"),
                addr: addrs[i].clone(),
                config,
                log: dir.join(format!("n{i}.log")),
                child: None,
            }
        })
        .collect()
}

async fn status(addr: &str) -> Option<Vec<NodeReport>> {
    let session = Session::connect(addr, "test", Duration::from_secs(1))
        .await
        .ok()?;
    match session
        .call(RequestBody::Status, Duration::from_secs(2))
        .await
        .ok()?
    {
        ResponseBody::Status { nodes, .. } => Some(nodes),
        _ => None,
    }
}

async fn until(what: &str, nodes: &[Node], mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in nodes {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        eprintln!(
            "--- {} log (tail) ---\n{}",
            node.id,
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    panic!("timed out waiting until {what}");
}

/// Every live node reports `up` nodes up.
async fn all_see(nodes: &[Node], up: usize) -> bool {
    for node in nodes.iter().filter(|n| n.child.is_some()) {
        match status(&node.addr).await {
            Some(reports) if reports.iter().filter(|r| r.up).count() == up => {}
            _ => return false,
        }
    }
    true
}

fn values(read: &isthmus_client::Read) -> Vec<Vec<u8>> {
    read.siblings.iter().map(|s| s.value.clone()).collect()
}

/// 100 blind writes of `PHASE-i` through `client`, each read back at once
/// through `quorum` (W + R > N: a quorum read after a quorum write sees it).
async fn write_and_read_back(client: &Client, quorum: &Client, phase: &str) {
    for i in 0..100u32 {
        let key = format!("{phase}-{i}");
        client
            .put(
                "carts",
                key.as_bytes(),
                key.as_bytes().to_vec(),
                &Context::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            values(&quorum.get("carts", key.as_bytes()).await.unwrap()),
            vec![key.into_bytes()]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_survive_a_sigkill_and_hand_off_hints() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 5);
    for node in nodes.iter_mut() {
        node.spawn();
    }
    until("five nodes see each other", &nodes, async || {
        all_see(&nodes, 5).await
    })
    .await;

    let client = Client::builder()
        .seed(nodes[0].addr.clone())
        .seed(nodes[1].addr.clone())
        .retries(5)
        .build()
        .await
        .unwrap();
    let quorum = Client::builder()
        .seed(nodes[1].addr.clone())
        .consistency(Consistency::LocalQuorum)
        .build()
        .await
        .unwrap();
    write_and_read_back(&client, &quorum, "before").await;

    // SIGKILL one node; writes at LOCAL_QUORUM go on.
    nodes[3].kill();
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.child.is_some()).collect();
    assert_eq!(survivors.len(), 4);
    until("n3 is seen down", &nodes, async || all_see(&nodes, 4).await).await;
    write_and_read_back(&client, &quorum, "during").await;
    let mut hinted = 0;
    for node in nodes.iter().filter(|n| n.child.is_some()) {
        let reports = status(&node.addr).await.unwrap();
        hinted += reports
            .iter()
            .find(|r| r.node_id == "n3")
            .map_or(0, |r| r.hint_bytes);
    }
    assert!(hinted > 0, "writes n3 missed must be kept as hints");

    // n3 returns; every node hands its hints off.
    nodes[3].spawn();
    until(
        "n3 is back and every hint for it is handed off",
        &nodes,
        async || {
            if !all_see(&nodes, 5).await {
                return false;
            }
            for node in &nodes {
                let Some(reports) = status(&node.addr).await else {
                    return false;
                };
                if reports
                    .iter()
                    .any(|r| r.node_id == "n3" && r.hint_bytes > 0)
                {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // Every acknowledged write, read from all three replicas.
    let all = Client::builder()
        .seed(nodes[3].addr.clone())
        .consistency(Consistency::All)
        .build()
        .await
        .unwrap();
    for phase in ["before", "during"] {
        for i in 0..100u32 {
            let key = format!("{phase}-{i}");
            assert_eq!(
                values(&all.get("carts", key.as_bytes()).await.unwrap()),
                vec![key.into_bytes()],
                "lost {phase}-{i}"
            );
        }
    }

    // A put retried with the same write id adds no sibling.
    let session = Session::connect(&nodes[2].addr, "retry", Duration::from_secs(2))
        .await
        .unwrap();
    for _ in 0..3 {
        let body = RequestBody::Put {
            keyspace: "carts".into(),
            key: b"retried".to_vec(),
            value: b"once".to_vec(),
            context: Context::default(),
            consistency: None,
            write_id: WriteId([42; 16]),
        };
        assert_eq!(
            session.call(body, Duration::from_secs(2)).await.unwrap(),
            ResponseBody::Written
        );
    }
    assert_eq!(
        values(&all.get("carts", b"retried").await.unwrap()),
        vec![b"once".to_vec()]
    );
}
