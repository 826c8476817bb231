//! Pipelines through the Redis front door: a run of plain `GET`s and
//! `SET`s on distinct keys is served at once, yet every command of a
//! pipeline still sees the earlier commands of its connection on its key,
//! and the replies come back in order, interleaved with commands that are
//! served one at a time (`DEL`, `SET ... NX`, `MGET`, `SELECT`).

use std::time::Duration;

use isthmus_core::config::NodeConfig;
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn configure(config: &mut NodeConfig) {
    let carts = config.keyspaces["carts"].clone();
    config.keyspaces.insert("other".into(), carts);
    config.redis.enabled = true;
    config.redis.databases = vec!["carts".into(), "other".into()];
}

/// A command as RESP2.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
    }
    out
}

/// The next RESP2 reply at the front of `buf`, shown as text (`+OK`,
/// `:1`, `$v`, `$nil`, `*[a,b]`), and its length; `None` if incomplete.
fn parse(buf: &[u8]) -> Option<(String, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..line_end]).unwrap();
    let rest = line_end + 2;
    match buf[0] {
        b'+' | b'-' | b':' => Some((format!("{}{line}", buf[0] as char), rest)),
        b'$' => {
            let n: i64 = line.parse().unwrap();
            if n < 0 {
                return Some(("$nil".into(), rest));
            }
            let end = rest + n as usize;
            if buf.len() < end + 2 {
                return None;
            }
            Some((
                format!("${}", std::str::from_utf8(&buf[rest..end]).unwrap()),
                end + 2,
            ))
        }
        b'*' => {
            let n: usize = line.parse().unwrap();
            let mut at = rest;
            let mut items = Vec::new();
            for _ in 0..n {
                let (item, used) = parse(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((format!("*[{}]", items.join(",")), at))
        }
        other => panic!("unexpected reply type {:?}", other as char),
    }
}

/// Send `commands` in one write; their replies, in order.
async fn pipeline(addr: &str, commands: &[Vec<String>]) -> Vec<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = Vec::new();
    for command in commands {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        request.extend(encode(&args));
    }
    stream.write_all(&request).await.unwrap();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(60), async {
        while replies.len() < commands.len() {
            while let Some((reply, used)) = parse(&buf) {
                buf.drain(..used);
                replies.push(reply);
            }
            if replies.len() == commands.len() {
                break;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {} replies", replies.len());
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("every reply within a minute");
    replies
}

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_sees_its_own_writes_in_order() {
    let mut spec = ClusterSpec::new(&["dc1"], 1);
    spec.configure = Some(configure);
    let cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    let node = cluster.node(&cluster.node_id("dc1", 0));
    let redis = node.redis_addr.clone().expect("the front door is on");

    let mut commands = Vec::new();
    let mut expected = Vec::new();
    let mut push = |args: &[&str], reply: &str| {
        commands.push(cmd(args));
        expected.push(reply.to_owned());
    };
    // A run of distinct keys (served at once), then the same keys again:
    // each GET sees the SET before it, never the one after.
    for round in ["a", "b", "c"] {
        for i in 0..100 {
            let (key, value) = (format!("k{i}"), format!("{round}{i}"));
            push(&["SET", &key, &value], "+OK");
        }
        for i in 0..100 {
            push(&["GET", &format!("k{i}")], &format!("${round}{i}"));
        }
    }
    // A key written, read, written again and read within one run.
    for i in 0..20 {
        push(&["SET", "same", &i.to_string()], "+OK");
        push(&["GET", "same"], &format!("${i}"));
    }
    // Commands served one at a time, between plain ones.
    push(&["GET", "fresh"], "$nil");
    push(&["SET", "fresh", "1"], "+OK");
    push(&["SET", "fresh", "2", "NX"], "$nil");
    push(&["GET", "fresh"], "$1");
    push(&["DEL", "fresh"], ":1");
    push(&["GET", "fresh"], "$nil");
    push(&["SET", "fresh", "3"], "+OK");
    push(&["MGET", "fresh", "k0", "nothing"], "*[$3,$c0,$nil]");
    // SELECT moves the plain commands after it to the other keyspace.
    push(&["SET", "where", "carts"], "+OK");
    push(&["SELECT", "1"], "+OK");
    push(&["GET", "where"], "$nil");
    push(&["SET", "where", "other"], "+OK");
    push(&["GET", "where"], "$other");
    push(&["SELECT", "0"], "+OK");
    push(&["GET", "where"], "$carts");
    // An unknown command's error sits in its place.
    push(
        &["NOSUCH", "x"],
        "-ERR unknown command 'NOSUCH', with args beginning with: 'x'",
    );
    push(&["GET", "k99"], "$c99");

    let replies = pipeline(&redis, &commands).await;
    for (i, (got, want)) in replies.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "reply {i} to {:?}", commands[i]);
    }
    assert_eq!(replies.len(), expected.len());

    // Many connections pipelining at once: each sees its own writes.
    let tasks: Vec<_> = (0..8)
        .map(|c| {
            let redis = redis.clone();
            tokio::spawn(async move {
                let mut commands = Vec::new();
                for i in 0..200 {
                    let key = format!("c{c}-{}", i % 50);
                    commands.push(cmd(&["SET", &key, &i.to_string()]));
                    commands.push(cmd(&["GET", &key]));
                }
                let replies = pipeline(&redis, &commands).await;
                for (i, pair) in replies.chunks(2).enumerate() {
                    assert_eq!(pair, ["+OK".to_owned(), format!("${i}")], "connection {c}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    cluster.shutdown().await;
}
