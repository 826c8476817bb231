//! Scaling a datacenter the way a Kubernetes StatefulSet does it, with
//! real `isthmus server` processes on 127.0.4.x and nothing but the
//! StatefulSet's own moves: under writes, a scale-down from five nodes to
//! four runs the leaving pod's preStop hook (`isthmus pre-stop`, asking a
//! stand-in for the Kubernetes API for the StatefulSet's replicas), which
//! decommissions it, while the same hook on a restarting pod does
//! nothing; then a scale-up back to five starts that pod again on an empty
//! disk with no `bootstrap` setting, and it bootstraps by itself. Every
//! acknowledged write is then on each of its three replicas (lost = 0).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{Node, all_see, isthmus, local_set, status, text, until};

use isthmus_client::Session;
use isthmus_client::wire::{Context, NodeReport, RequestBody, ResponseBody, WriteId};
use isthmus_core::model::{DcName, key_hash};
use isthmus_core::ring::{NodeId, Placement, Ring};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STATEFULSET: &str = "isthmus-dc1";
const TOKEN: &str = "test-service-account-token";

/// A stand-in for the Kubernetes API: answers `GET` of the StatefulSet
/// with `spec.replicas` from `replicas`, to the service account's token
/// only.
async fn kubernetes_api(replicas: Arc<AtomicU32>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.4.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let replicas = replicas.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let path =
                    format!("get /apis/apps/v1/namespaces/isthmus/statefulsets/{STATEFULSET} ");
                let (status, body) = if !head.contains(&format!("bearer {TOKEN}")) {
                    ("401 Unauthorized", "{}".to_owned())
                } else if !head.starts_with(&path) {
                    ("404 Not Found", "{}".to_owned())
                } else {
                    let n = replicas.load(Ordering::SeqCst);
                    (
                        "200 OK",
                        format!(
                            r#"{{"kind":"StatefulSet","metadata":{{"name":"{STATEFULSET}"}},"spec":{{"replicas":{n}}}}}"#
                        ),
                    )
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// `isthmus pre-stop` as pod `pod`'s preStop hook runs it.
async fn pre_stop(node: &Node, api: &str, service_account: &Path) -> std::process::Output {
    isthmus(vec![
        "pre-stop".into(),
        "--addr".into(),
        node.addr.clone(),
        "--pod".into(),
        node.id.clone(),
        "--namespace".into(),
        "isthmus".into(),
        "--api".into(),
        api.into(),
        "--service-account".into(),
        service_account.display().to_string(),
        "--wait-s".into(),
        "120".into(),
    ])
    .await
}

async fn reports(nodes: &[Node]) -> Option<Vec<NodeReport>> {
    let mut all = Vec::new();
    for node in nodes.iter().filter(|n| n.running()) {
        all.extend(status(&node.addr).await?.0);
    }
    Some(all)
}

/// Every running node reports `id` in `state` (and up, unless `Left`).
async fn all_report(nodes: &[Node], id: &str, state: &str) -> bool {
    let Some(reports) = reports(nodes).await else {
        return false;
    };
    let of: Vec<_> = reports.iter().filter(|r| r.node_id == id).collect();
    let running = nodes.iter().filter(|n| n.running()).count();
    of.len() == running
        && of
            .iter()
            .all(|r| r.status == state && (r.up || state == "Left"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_scales_down_and_up_by_itself_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..5)
        .map(|i| {
            let ip = format!("127.0.4.{}", i + 2);
            Node::new(dir.path(), &format!("{STATEFULSET}-{i}"), "dc1", &ip)
        })
        .collect();
    let seeds: Vec<String> = nodes[..3].iter().map(|n| n.addr.clone()).collect();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    for (i, node) in nodes.iter().enumerate() {
        // The first five form the datacenter together (`bootstrap =
        // false`, the harness's default).
        node.write_config(
            dir.path(),
            &format!("r{}", i % 3),
            &seeds,
            "vnodes = 32\nfsync = \"always\"",
            "dc1 = 3",
        );
    }
    for node in nodes.iter_mut() {
        node.spawn();
    }
    until("five nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 5).await
    })
    .await;

    let service_account = dir.path().join("serviceaccount");
    std::fs::create_dir_all(&service_account).unwrap();
    std::fs::write(service_account.join("token"), format!("{TOKEN}\n")).unwrap();
    let replicas = Arc::new(AtomicU32::new(5));
    let api = kubernetes_api(replicas.clone()).await;

    let mut acked: Vec<Vec<u8>> = Vec::new();
    {
        let session = common::session(&nodes[0].addr, "loader", Duration::from_secs(2))
            .await
            .unwrap();
        for i in 0..300u32 {
            let key = format!("before-{i}").into_bytes();
            let put = RequestBody::Put {
                mode: isthmus_client::wire::WriteMode::Context,
                keyspace: "carts".into(),
                key: key.clone(),
                value: key.clone(),
                context: Context::default(),
                consistency: None,
                write_id: WriteId(rand::random()),
                expiry: Default::default(),
                sloppy: None,
            };
            let answer = session.call(put, Duration::from_secs(5)).await;
            assert!(matches!(answer, Ok(ResponseBody::Written)), "{answer:?}");
            acked.push(key);
        }
    }

    // Writers through pods 0..=2 all along.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, node) in nodes[..3].iter().enumerate() {
        let (addr, stop) = (node.addr.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut session: Option<Session> = None;
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if session.as_ref().is_none_or(|s| !s.is_open()) {
                    session = common::session(&addr, "writer", Duration::from_secs(2))
                        .await
                        .ok();
                }
                let Some(s) = &session else { continue };
                let key = format!("during-{w}-{i}").into_bytes();
                i += 1;
                let put = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: "carts".into(),
                    key: key.clone(),
                    value: key.clone(),
                    context: Context::default(),
                    consistency: None,
                    write_id: WriteId(rand::random()),
                    expiry: Default::default(),
                    sloppy: None,
                };
                if let Ok(ResponseBody::Written) = s.call(put, Duration::from_secs(5)).await {
                    acked.push(key);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        }));
    }

    // A restart (a rolling update, say) of pod 1: the StatefulSet still
    // wants five, so the hook does nothing.
    let out = pre_stop(&nodes[1], &api, &service_account).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("a restart, not a scale-down"),
        "{}",
        text(&out.stdout)
    );
    assert!(all_report(&nodes, &nodes[1].id, "Normal").await);

    // Scale down to four: pod 4's hook decommissions it and returns once
    // it has left; then the pod stops.
    replicas.store(4, Ordering::SeqCst);
    let out = pre_stop(&nodes[4], &api, &service_account).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("has left the ring"),
        "{}",
        text(&out.stdout)
    );
    until("every node sees pod 4 Left", &nodes, 60, async || {
        all_report(&nodes, &nodes[4].id, "Left").await
    })
    .await;
    nodes[4].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Scale up to five again: pod 4 comes back on a new, empty volume
    // (its claim was deleted with the scale-down), with no bootstrap
    // setting: it finds the ring's members and bootstraps by itself.
    std::fs::remove_dir_all(dir.path().join(&nodes[4].id)).unwrap();
    nodes[4].write_config(
        dir.path(),
        "r1",
        &seeds,
        "vnodes = 32\nfsync = \"always\"\nbootstrap = \"auto\"",
        "dc1 = 3",
    );
    let config = std::fs::read_to_string(&nodes[4].config).unwrap();
    assert!(!config.contains("bootstrap ="), "{config}");
    replicas.store(5, Ordering::SeqCst);
    nodes[4].spawn();
    until(
        "every node sees pod 4 Normal again",
        &nodes,
        120,
        async || all_report(&nodes, &nodes[4].id, "Normal").await,
    )
    .await;
    let log = std::fs::read_to_string(&nodes[4].log).unwrap();
    assert!(
        log.contains("bootstrapping into it"),
        "pod 4 decided to bootstrap"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let during = acked.len() - 300;
    assert!(during > 100, "only {during} writes during the moves");

    // Every acknowledged write on each of its three replicas of the
    // final ring, asked directly (no read repair helps).
    let (reports, _) = status(&nodes[0].addr).await.unwrap();
    let members: Vec<(NodeId, Placement, u32)> = reports
        .iter()
        .filter(|r| r.status == "Normal")
        .map(|r| {
            let placement = Placement {
                dc: DcName::from(r.dc.as_str()),
                rack: r.rack.clone(),
            };
            (NodeId(r.node_id.clone()), placement, r.vnodes)
        })
        .collect();
    assert_eq!(members.len(), 5, "{reports:?}");
    let ring = Ring::build(members.iter().map(|(n, p, v)| (n, p, *v)));
    let addr_of: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.id.clone(), n.addr.clone()))
        .collect();
    let probe = common::probe("probe");
    let dc1 = DcName("dc1".into());
    let mut missing: Vec<(Vec<u8>, NodeId)> = acked
        .iter()
        .flat_map(|key| {
            ring.replicas_in_dc(&dc1, key_hash(key), 3)
                .into_iter()
                .map(move |replica| (key.clone(), replica))
        })
        .collect();
    let copies = missing.len();
    let mut on_new = 0;
    for _ in 0..50 {
        let mut still = Vec::new();
        for (key, replica) in missing {
            match local_set(&probe, &addr_of[&replica.0], "carts", &key).await {
                Some(set)
                    if set.len() == 1 && set.versions()[0].value_bytes() == Some(&key[..]) =>
                {
                    on_new += usize::from(replica.0 == nodes[4].id);
                }
                _ => still.push((key, replica)),
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown: Vec<String> = missing
        .iter()
        .take(5)
        .map(|(k, r)| format!("{} on {r}", String::from_utf8_lossy(k)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {copies} replica copies of {} acknowledged writes missing, e.g. {shown:?}",
        missing.len(),
        acked.len()
    );
    assert!(on_new > acked.len() / 4, "the new pod holds {on_new} keys");
    eprintln!(
        "scale down and up: acknowledged={} ({during} during the moves) lost=0, the new pod holds {on_new}",
        acked.len()
    );
}
