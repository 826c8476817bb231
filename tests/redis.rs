//! The Redis-protocol front door of an `isthmus server` process, driven
//! by `redis-cli` (Debian's `redis-tools`, installed by `.ci/run`) over
//! TLS: a client that has not logged in is refused, `AUTH` with a user of
//! the cluster lets it in; SET, GET (with siblings: the deterministic
//! choice), MSET, MGET, EXISTS, DEL, GETDEL, ECHO, PING, HELLO 3, CLIENT,
//! INFO, SELECT between keyspaces, ISTHMUS.SIBLINGS and ISTHMUS.PUTCTX,
//! SCAN (followed to the end by `redis-cli --scan`, with MATCH and COUNT);
//! SET NX, SETNX and SET XX (of racing clients, exactly one NX wins);
//! expiries: SET EX (gone after 1.5 s) / PX / EXAT / PXAT / KEEPTTL, TTL,
//! PTTL, EXPIRE with NX / XX / GT / LT, PEXPIRE, EXPIREAT, PERSIST, and a
//! keyspace's default TTL;
//! concurrent SETs of one key (`redis-benchmark`, 20 writers) leave one
//! value, no siblings;
//! Redis-style errors for unknown commands and wrong arity; a pipeline of
//! a thousand commands (`--pipe`); a connection that sends garbage is
//! closed and another is not disturbed.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN, ADMIN_PASSWORD, Node, free_port, pki, text};

/// `redis-cli` against `port` of `host` over TLS (the tests' CA), with
/// `login` and extra `flags`, running `args`; stdout and success.
fn cli(host: &str, port: u16, login: bool, flags: &[&str], args: &[&str]) -> (String, bool) {
    let mut command = Command::new("redis-cli");
    command
        .args(["--tls", "--cacert"])
        .arg(pki().ca_pem())
        .args(["-h", host, "-p", &port.to_string()]);
    if login {
        command.args([
            "--user",
            ADMIN,
            "--pass",
            ADMIN_PASSWORD,
            "--no-auth-warning",
        ]);
    }
    let out = command
        .args(flags)
        .args(args)
        .output()
        .expect("running redis-cli");
    (text(&out.stdout) + &text(&out.stderr), out.status.success())
}

/// SET's expiry options, TTL, PTTL, EXPIRE (and its conditions),
/// PEXPIRE, EXPIREAT, PERSIST, with Redis's answers.
fn expiries(run: &dyn Fn(&[&str]) -> String) {
    let int = |args: &[&str]| -> i64 {
        let out = run(args);
        out.parse()
            .unwrap_or_else(|_| panic!("{args:?} answered {out:?}"))
    };
    assert_eq!(int(&["TTL", "nokey"]), -2);
    assert_eq!(int(&["PTTL", "nokey"]), -2);
    assert_eq!(run(&["SET", "e", "v", "EX", "1"]), "OK");
    let pttl = int(&["PTTL", "e"]);
    assert!((1..=1000).contains(&pttl), "PTTL {pttl}");
    assert!((0..=1).contains(&int(&["TTL", "e"])));
    assert_eq!(int(&["EXISTS", "e"]), 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(run(&["GET", "e"]), "");
    assert_eq!(int(&["EXISTS", "e"]), 0);
    assert_eq!(int(&["TTL", "e"]), -2);
    // SET NX sees an expired key as absent.
    assert_eq!(run(&["SET", "e", "v", "NX", "PX", "100000"]), "OK");
    assert!((99..=100).contains(&int(&["TTL", "e"])));
    assert_eq!(run(&["SET", "e", "v2", "KEEPTTL"]), "OK");
    assert_eq!(run(&["GET", "e"]), "v2");
    assert!((99..=100).contains(&int(&["TTL", "e"])));
    // A plain SET drops the expiry (db 0's keyspace has no default).
    assert_eq!(run(&["SET", "e", "v3"]), "OK");
    assert_eq!(int(&["TTL", "e"]), -1);
    assert_eq!(int(&["EXPIRE", "e", "50", "XX"]), 0);
    assert_eq!(int(&["EXPIRE", "e", "50"]), 1);
    assert!((49..=50).contains(&int(&["TTL", "e"])));
    assert_eq!(run(&["GET", "e"]), "v3");
    assert_eq!(int(&["EXPIRE", "e", "10", "GT"]), 0);
    assert_eq!(int(&["EXPIRE", "e", "100", "GT"]), 1);
    assert_eq!(int(&["EXPIRE", "e", "20", "LT"]), 1);
    assert!((19..=20).contains(&int(&["TTL", "e"])));
    assert_eq!(int(&["EXPIRE", "e", "30", "NX"]), 0);
    assert_eq!(int(&["PERSIST", "e"]), 1);
    assert_eq!(int(&["TTL", "e"]), -1);
    assert_eq!(int(&["PERSIST", "e"]), 0);
    assert_eq!(int(&["PERSIST", "nokey"]), 0);
    assert_eq!(int(&["EXPIRE", "nokey", "10"]), 0);
    assert_eq!(int(&["PEXPIRE", "e", "100000"]), 1);
    let pttl = int(&["PTTL", "e"]);
    assert!((99_000..=100_000).contains(&pttl), "PTTL {pttl}");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(int(&["EXPIREAT", "e", &(now_s + 1000).to_string()]), 1);
    assert!((998..=1000).contains(&int(&["TTL", "e"])));
    let at_ms = (now_s + 2000) * 1000;
    assert_eq!(run(&["SET", "f", "v", "PXAT", &at_ms.to_string()]), "OK");
    assert!((1998..=2000).contains(&int(&["TTL", "f"])));
    assert_eq!(
        run(&["SET", "f", "v", "EXAT", &(now_s + 3000).to_string()]),
        "OK"
    );
    assert!((2998..=3000).contains(&int(&["TTL", "f"])));
    // A time already past deletes the key.
    assert_eq!(int(&["EXPIRE", "f", "-1"]), 1);
    assert_eq!(int(&["EXISTS", "f"]), 0);
    assert!(
        run(&["SET", "e", "v", "EX", "0"]).contains("ERR invalid expire time in 'set' command")
    );
    assert!(run(&["SET", "e", "v", "EX", "ten"]).contains("ERR value is not an integer"));
    assert!(run(&["SET", "e", "v", "EX", "10", "PX", "10"]).contains("ERR syntax error"));
    assert!(run(&["SET", "e", "v", "EX"]).contains("ERR syntax error"));
    assert!(run(&["EXPIRE", "e", "10", "NX", "XX"]).contains("ERR NX and XX"));
    assert!(run(&["TTL"]).contains("ERR wrong number of arguments for 'ttl' command"));
    // Leave db 0 as the rest of the test expects it.
    assert_eq!(int(&["DEL", "e"]), 1);
}

#[test]
fn redis_cli_speaks_to_the_front_door() {
    if Command::new("redis-cli").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the front door test: install redis-tools"
        );
        eprintln!("no redis-cli on this machine: the front door test did not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ip = "127.0.9.2";
    let mut node = Node::new(dir.path(), "r1", "dc1", ip);
    node.write_config(dir.path(), "r1", &[], "", "dc1 = 1");
    let port = free_port(ip);
    let config = std::fs::read_to_string(&node.config).unwrap()
        + &format!(
            "\n[redis]\nenabled = true\nlisten = \"{ip}:{port}\"\ndatabases = [\"carts\", \"sessions\"]\n\n\
             [keyspaces.sessions]\nreplication = {{ dc1 = 1 }}\nconsistency = \"LOCAL_QUORUM\"\nttl_s = 3600\n"
        );
    std::fs::write(&node.config, config).unwrap();
    node.spawn();

    // Up, and the first admin written (it is, once the node has a ring).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (out, _) = cli(ip, port, true, &[], &["PING"]);
        if out.trim() == "PONG" {
            break;
        }
        assert!(Instant::now() < deadline, "never PONG: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let run = |args: &[&str]| cli(ip, port, true, &[], args).0.trim_end().to_owned();
    // No login, no data.
    let (out, _) = cli(ip, port, false, &[], &["GET", "k"]);
    assert!(out.contains("NOAUTH"), "{out}");
    let (out, _) = cli(ip, port, false, &[], &["AUTH", ADMIN, "wrong"]);
    assert!(out.contains("WRONGPASS"), "{out}");

    assert_eq!(run(&["SET", "k", "v1"]), "OK");
    assert_eq!(run(&["GET", "k"]), "v1");
    assert_eq!(run(&["SET", "k", "v2", "GET"]), "v1");
    assert_eq!(run(&["GET", "k"]), "v2");
    assert_eq!(run(&["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(run(&["MGET", "a", "nope", "b"]), "1\n\n2");
    assert_eq!(run(&["EXISTS", "a", "nope", "a"]), "2");
    assert_eq!(run(&["DEL", "a", "nope"]), "1");
    assert_eq!(run(&["GET", "a"]), "");
    assert_eq!(run(&["GETDEL", "b"]), "2");
    assert_eq!(run(&["EXISTS", "b"]), "0");
    assert_eq!(run(&["ECHO", "hi"]), "hi");
    assert_eq!(run(&["PING", "x"]), "x");
    assert!(run(&["INFO", "keyspace"]).contains("db1:keyspace=sessions"));
    assert!(run(&["INFO"]).contains("dc_dc1:nodes=1,up=1"));
    let hello = cli(ip, port, true, &["-3"], &["HELLO", "3"]).0;
    assert!(
        hello.contains("proto") && hello.contains('3') && hello.contains("isthmus"),
        "{hello}"
    );
    assert!(run(&["FLUSHALL"]).contains("ERR unknown command 'FLUSHALL'"));
    assert!(run(&["GET"]).contains("ERR wrong number of arguments for 'get' command"));
    expiries(&run);
    assert!(run(&["SELECT", "2"]).contains("DB index is out of range"));

    // Databases are keyspaces: a key of db 0 is not in db 1. redis-cli
    // `-n` selects before the command.
    assert_eq!(
        cli(ip, port, true, &["-n", "1"], &["GET", "k"]).0.trim(),
        ""
    );
    assert_eq!(
        cli(ip, port, true, &["-n", "1"], &["SET", "k", "s"])
            .0
            .trim(),
        "OK"
    );
    assert_eq!(run(&["GET", "k"]), "v2");
    // db 1's keyspace has a default TTL of an hour; db 0's has none.
    assert_eq!(
        cli(ip, port, true, &["-n", "1"], &["TTL", "k"]).0.trim(),
        "3600"
    );
    assert_eq!(run(&["TTL", "k"]), "-1");

    // Siblings: two blind writes over no context are concurrent. GET
    // answers the later one; ISTHMUS.SIBLINGS answers both and the
    // context, which ISTHMUS.PUTCTX writes over.
    assert_eq!(run(&["ISTHMUS.PUTCTX", "twin", "first", ""]), "OK");
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(run(&["ISTHMUS.PUTCTX", "twin", "second", ""]), "OK");
    assert_eq!(run(&["GET", "twin"]), "second");
    let siblings = run(&["ISTHMUS.SIBLINGS", "twin"]);
    let lines: Vec<&str> = siblings.lines().collect();
    assert_eq!(&lines[..2], ["first", "second"], "{siblings}");

    // A pipeline: a thousand SETs written at once.
    let mut pipe = Vec::new();
    for i in 0..1000 {
        let (key, value) = (format!("p{i}"), format!("v{i}"));
        write!(
            pipe,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
            key.len(),
            value.len()
        )
        .unwrap();
    }
    let mut child = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(pki().ca_pem())
        .args(["-h", ip, "-p", &port.to_string()])
        .args([
            "--user",
            ADMIN,
            "--pass",
            ADMIN_PASSWORD,
            "--no-auth-warning",
            "--pipe",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&pipe).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = text(&out.stdout);
    assert!(report.contains("errors: 0, replies: 1000"), "{report}");
    assert_eq!(run(&["GET", "p999"]), "v999");

    // SCAN: redis-cli follows the cursors to 0 (pages of the default 10
    // keys). Every live key once (on one node, a stable cluster), deleted
    // ones not; MATCH filters.
    let (scanned, ok) = cli(ip, port, true, &["--scan"], &[]);
    assert!(ok, "{scanned}");
    let keys: Vec<&str> = scanned.lines().collect();
    let distinct: std::collections::BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(keys.len(), distinct.len(), "a key returned twice");
    let expected: std::collections::BTreeSet<String> = (0..1000)
        .map(|i| format!("p{i}"))
        .chain(["k".to_owned(), "twin".to_owned()])
        .collect();
    assert_eq!(
        distinct,
        expected.iter().map(String::as_str).collect(),
        "scan of db 0"
    );
    let (matched, _) = cli(ip, port, true, &["--scan", "--pattern", "p1[0-4]?"], &[]);
    let mut matched: Vec<&str> = matched.lines().collect();
    matched.sort();
    let mut want: Vec<String> = (100..150).map(|i| format!("p{i}")).collect();
    want.sort();
    assert_eq!(matched, want);
    // One page by hand: at most COUNT keys and a cursor to go on from.
    let page = run(&["SCAN", "0", "COUNT", "3"]);
    let lines: Vec<&str> = page.lines().collect();
    assert!(lines.len() <= 4 && lines[0] != "0", "{page}");
    assert!(lines[0].parse::<u64>().is_ok(), "{page}");
    // Hostile cursors and options: Redis's errors.
    assert!(run(&["SCAN", "abc"]).contains("ERR invalid cursor"));
    assert!(run(&["SCAN", "-1"]).contains("ERR invalid cursor"));
    assert!(run(&["SCAN", "18446744073709551616"]).contains("ERR invalid cursor"));
    assert!(run(&["SCAN", "0", "COUNT", "0"]).contains("ERR syntax error"));
    assert!(run(&["SCAN", "0", "MATCH"]).contains("ERR syntax error"));
    assert!(run(&["SCAN", "0", "COUNT", "x"]).contains("ERR value is not an integer"));
    assert!(run(&["SCAN"]).contains("ERR wrong number of arguments for 'scan' command"));

    // SET NX, SETNX and SET XX: conditional writes, checked atomically at
    // the key's deciding replica.
    assert_eq!(run(&["SET", "nx", "a", "NX"]), "OK");
    assert_eq!(run(&["SET", "nx", "b", "NX"]), "");
    assert_eq!(run(&["GET", "nx"]), "a");
    assert_eq!(run(&["SETNX", "nx2", "a"]), "1");
    assert_eq!(run(&["SETNX", "nx2", "b"]), "0");
    assert_eq!(run(&["GET", "nx2"]), "a");
    assert_eq!(run(&["SET", "xx", "a", "XX"]), "");
    assert_eq!(run(&["EXISTS", "xx"]), "0");
    assert_eq!(run(&["SET", "nx2", "c", "XX"]), "OK");
    assert_eq!(run(&["SET", "nx2", "d", "XX", "GET"]), "c");
    assert_eq!(run(&["GET", "nx2"]), "d");
    assert_eq!(run(&["SET", "nx2", "e", "NX", "GET"]), "d");
    assert!(run(&["SET", "nx2", "f", "NX", "XX"]).contains("syntax error"));
    assert_eq!(run(&["DEL", "nx2"]), "1");
    assert_eq!(run(&["SETNX", "nx2", "g"]), "1", "a deleted key is absent");
    // Several clients at once: exactly one NX wins.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(pki().ca_pem())
                .args(["-h", ip, "-p", &port.to_string()])
                .args([
                    "--user",
                    ADMIN,
                    "--pass",
                    ADMIN_PASSWORD,
                    "--no-auth-warning",
                ])
                .args(["SET", "race", &format!("r{i}"), "NX"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let answers: Vec<String> = racers
        .into_iter()
        .map(|c| {
            text(&c.wait_with_output().unwrap().stdout)
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(
        answers.iter().filter(|a| *a == "OK").count(),
        1,
        "{answers:?}"
    );
    assert_eq!(answers.iter().filter(|a| a.is_empty()).count(), 7);

    // Concurrent SETs of one key overwrite: no siblings pile up (a read
    // then a write over its context left one per race, up to
    // TOO_MANY_SIBLINGS). redis-benchmark's SET writes one key.
    let bench = Command::new("redis-benchmark")
        .args(["--tls", "--cacert"])
        .arg(pki().ca_pem())
        .args(["-h", ip, "-p", &port.to_string()])
        .args(["--user", ADMIN, "-a", ADMIN_PASSWORD])
        .args(["-t", "set", "-n", "20000", "-c", "20", "-q"])
        .output();
    if let Ok(out) = bench {
        let report = text(&out.stdout) + &text(&out.stderr);
        eprintln!("redis-benchmark -t set -n 20000 -c 20: {report}");
        assert!(out.status.success(), "{report}");
        assert!(!report.contains("TOO_MANY_SIBLINGS"), "{report}");
        assert!(!report.contains("rror"), "{report}");
        let siblings = run(&["ISTHMUS.SIBLINGS", "key:__rand_int__"]);
        let value = run(&["GET", "key:__rand_int__"]);
        let values = siblings.lines().filter(|l| *l == value).count();
        assert_eq!(values, 1, "one value: {siblings:?}");
    }
    let writers: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                (0..25)
                    .map(|j| cli(ip, port, true, &[], &["SET", "hot", &format!("{i}-{j}")]).0)
                    .filter(|out| out.trim() != "OK")
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for w in writers {
        let failures = w.join().unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    let siblings = run(&["ISTHMUS.SIBLINGS", "hot"]);
    let is_value = |l: &&str| {
        l.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
        })
    };
    let values = siblings.lines().filter(is_value).count();
    assert_eq!(values, 1, "one value: {siblings:?}");

    // Garbage on one connection closes it; another goes on.
    let config = pki().material().client_config().unwrap();
    let name = rustls::pki_types::ServerName::try_from(ip.to_owned()).unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = std::net::TcpStream::connect((ip, port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    stream.write_all(b"*2\r\n$3\r\nGET\r\n$-7\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("-ERR Protocol error"), "{answer}");
    assert_eq!(run(&["GET", "k"]), "v2");
}
