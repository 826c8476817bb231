//! `isthmus server` as a process: its operations listener on the address
//! its config names, over HTTPS with the node's certificate, the health
//! probes open and the figures behind a user's login; and its logs in JSON
//! lines when `[ops] log_format = "json"`, lifecycle events at info
//! (started, ready).

mod common;

use std::time::{Duration, Instant};

use common::{Node, admin_login, ops_get};

#[test]
fn a_server_process_serves_its_operations_listener_and_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "n1", "dc1", "127.0.7.1");
    node.write_config(dir.path(), "r1", &[], "", "dc1 = 1");
    let config = std::fs::read_to_string(&node.config).unwrap();
    let config = config.replacen("[ops]\n", "[ops]\nlog_format = \"json\"\n", 1);
    assert!(config.contains("log_format = \"json\""));
    std::fs::write(&node.config, config).unwrap();
    node.spawn();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, body)) = ops_get(&node.ops, "/readyz", None) {
            assert!(body.contains("\"ready\":true"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{} never ready", node.ops);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ops_get(&node.ops, "/healthz", None).map(|a| a.0), Some(200));
    // The figures need a login; the listener speaks HTTPS (ops_get
    // verifies the node's certificate against the cluster's CA).
    for path in ["/metrics", "/api/v1/overview", "/"] {
        let (status, body) = ops_get(&node.ops, path, None).unwrap();
        assert_eq!(status, 401, "{path} without a login: {body}");
        let (status, body) = ops_get(&node.ops, path, Some(("admin", "not-the-password"))).unwrap();
        assert_eq!(status, 401, "{path} with a wrong password: {body}");
    }
    // The first admin is written once the node has its ring.
    let metrics = loop {
        match ops_get(&node.ops, "/metrics", admin_login()) {
            Some((200, metrics)) => break metrics,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.contains("\nisthmus_node_ready 1\n"), "{metrics}");
    node.kill();

    let log = std::fs::read_to_string(&node.log).unwrap();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            entry["timestamp"].is_string() && entry["level"].is_string(),
            "{line}"
        );
        messages.push(
            entry["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    for event in ["node started", "node ready", "serving"] {
        assert!(
            messages.iter().any(|m| m == event),
            "no {event:?} in {messages:?}"
        );
    }
}

/// `[tuning.runtime] worker_threads` sets how many threads run the node's
/// tasks (a number no machine's CPU count gives by default), as its
/// `/metrics` shows.
#[test]
fn a_server_process_runs_the_worker_threads_its_config_names() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new(dir.path(), "w1", "dc1", "127.0.7.2");
    node.write_config(
        dir.path(),
        "r1",
        &[],
        &format!("bootstrap = false\n[tuning.runtime]\nworker_threads = {threads}\n"),
        "dc1 = 1",
    );
    node.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        if let Some((200, body)) = ops_get(&node.ops, "/metrics", admin_login()) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "{} never answered: {}",
            node.ops,
            std::fs::read_to_string(&node.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("isthmus_runtime_worker_threads {threads}")),
        "{metrics}"
    );
}
