//! `isthmus server` as a process: its operations listener on the address
//! its config names, and its logs in JSON lines when `[ops] log_format =
//! "json"`, lifecycle events at info (started, ready).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::Node;

/// `GET path` on `addr`: the status and the body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

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
        if let Some((200, body)) = get(&node.ops, "/readyz") {
            assert!(body.contains("\"ready\":true"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "{} never ready", node.ops);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&node.ops, "/healthz").map(|a| a.0), Some(200));
    let (status, metrics) = get(&node.ops, "/metrics").unwrap();
    assert_eq!(status, 200);
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
