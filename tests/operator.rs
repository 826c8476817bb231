//! What an operator sees of a running cluster: two datacenters of two
//! `isthmus server` processes each, writes in both.
//!
//! - The dashboard in a real browser: the page of a DC1 node's operations
//!   listener (HTTPS, logged in as a user) rendered by headless Chromium
//!   shows every node of both DCs
//!   up and a lag figure for writes from DC2; a DC2 node SIGKILLed
//!   mid-test is shown down within a bound.
//! - `isthmus status --cluster`: every node's view side by side, all
//!   agreeing; after the kill, the killed node's column is `?`.
//! - `isthmus put --file`: a binary value from a file and from stdin
//!   reads back byte for byte; `put --ttl` writes a value that carries
//!   its expiry, `put`/`del` take `--sloppy`/`--strict`.
//!
//! Needs Chromium (`chromium`, or the path in `$CHROMIUM`; not `ISTHMUS_`-prefixed, since the servers read those): `.ci/run` installs
//! Debian's package. Without it the test fails, except outside CI where it
//! says so and passes nothing off as checked (it returns early with a
//! message). `DASHBOARD_SCREENSHOT=path.png` also saves a
//! screenshot of the page (how `docs/dashboard.png` was made).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, all_see, call, isthmus, text, until};
use isthmus_client::wire::{Consistency, Context, RequestBody, ResponseBody, WriteId};
use isthmus_dc_bridge::wan::WanProxy;

/// The browser to drive, if this machine has one.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// Headless Chromium's flags for one page load: no sandbox (the tests
/// run as root), no GPU, a private profile, and virtual time, so that the
/// page's script runs its first fetch and renders before the DOM is
/// taken.
fn browser(chromium: &PathBuf, profile: &std::path::Path) -> Command {
    let mut command = Command::new(chromium);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=4000",
        // The listener's certificate is the node's, from the cluster's
        // own CA, which this browser profile does not trust.
        "--ignore-certificate-errors",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The DOM of `url` once its script has rendered it.
fn rendered(chromium: &PathBuf, profile: &std::path::Path, url: &str) -> String {
    let out = browser(chromium, profile)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The state the page shows for `node` (`up`/`down`), if it lists it.
fn shown_state(dom: &str, node: &str) -> Option<String> {
    let at = dom.find(&format!("data-node=\"{node}\""))?;
    let rest = &dom[at..];
    let state = rest.split("data-state=\"").nth(1)?;
    Some(state.split('"').next()?.to_owned())
}

/// The text of the lag figure for writes from `from` into `to`.
fn lag_figure(dom: &str, from: &str, to: &str) -> Option<String> {
    let at = dom.find(&format!("data-pair=\"{from}-&gt;{to}\""))?;
    let rest = &dom[at..];
    let text = rest.split_once('>')?.1;
    Some(text.split('<').next()?.to_owned())
}

/// The row of `status --cluster`'s table for member `id` (a mark, the
/// DC, the id, then one column per viewer).
fn member_row<'t>(table: &'t str, id: &str) -> Option<&'t str> {
    table.lines().find(|l| {
        let mut words = l.split_whitespace().filter(|w| *w != "*");
        words.nth(1) == Some(id) && l.starts_with([' ', '*'])
    })
}

async fn put(addr: &str, key: String) -> bool {
    let put = RequestBody::Put {
        mode: isthmus_client::wire::WriteMode::Context,
        keyspace: "carts".into(),
        key: key.into_bytes(),
        value: vec![7; 64],
        context: Context::default(),
        consistency: Some(Consistency::LocalQuorum),
        write_id: WriteId(rand::random()),
        expiry: Default::default(),
        sloppy: None,
    };
    matches!(call(addr, put).await, Ok(ResponseBody::Written))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_status_cluster_and_binary_puts_of_a_two_dc_cluster() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the dashboard test: install chromium"
        );
        eprintln!("no chromium on this machine: the dashboard test did not run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("chromium-profile");
    let wan = WanProxy::start("127.0.0.1:0", Duration::from_millis(20))
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for (d, dc) in ["dc1", "dc2"].into_iter().enumerate() {
        for i in 0..2 {
            let ip = format!("127.0.{}.{}", 40 + d, i + 2);
            nodes.push(Node::new(dir.path(), &format!("{dc}-n{i}"), dc, &ip));
        }
    }
    let seeds = [nodes[0].addr.clone(), nodes[2].addr.clone()];
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    for n in &nodes {
        wan.register(&n.addr, &n.dc);
        n.write_config(
            dir.path(),
            &format!("r{}", n.id.chars().last().unwrap()),
            &seeds,
            &format!("vnodes = 16\nwan_proxy = \"{}\"", wan.addr()),
            "dc1 = 2, dc2 = 2",
        );
    }
    for n in nodes.iter_mut() {
        n.spawn();
    }
    until("four nodes see each other", &nodes, 60, async || {
        all_see(&nodes, 4).await
    })
    .await;

    // Writes in both DCs: DC2's reach DC1 over the bridge, and DC1's
    // nodes record their lag.
    let (dc1, dc2) = (nodes[0].addr.clone(), nodes[2].addr.clone());
    let mut written = 0;
    for i in 0..40 {
        written += usize::from(put(&dc1, format!("a{i}")).await);
        written += usize::from(put(&dc2, format!("b{i}")).await);
    }
    assert_eq!(written, 80, "every write acknowledged");

    // HTTPS with the node's certificate; the page and its API need a
    // user's login (HTTP Basic, given in the URL).
    let url = format!(
        "https://{}:{}@{}/",
        common::ADMIN,
        common::ADMIN_PASSWORD,
        nodes[0].ops
    );
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dom = loop {
        let dom = tokio::task::block_in_place(|| rendered(&chromium, &profile, &url));
        let all_up = ids
            .iter()
            .all(|id| shown_state(&dom, id).as_deref() == Some("up"));
        let figure = lag_figure(&dom, "dc2", "dc1").unwrap_or_default();
        if all_up && figure.chars().any(|c| c.is_ascii_digit()) {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed every node up and a lag figure from dc2 \
             (lag figure {figure:?}):\n{dom}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(dom.contains("data-dc=\"dc1\"") && dom.contains("data-dc=\"dc2\""));
    println!(
        "lag figure dc2 -> dc1: {}",
        lag_figure(&dom, "dc2", "dc1").unwrap_or_default()
    );
    if let Some(path) = std::env::var_os("DASHBOARD_SCREENSHOT") {
        // A little history for the charts first.
        for round in 0..6 {
            for i in 0..20 {
                put(&dc2, format!("c{round}-{i}")).await;
                put(&dc1, format!("d{round}-{i}")).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let path = std::path::absolute(PathBuf::from(path)).unwrap();
        let out = browser(&chromium, &profile)
            .arg("--window-size=1280,1000")
            .arg(format!("--screenshot={}", path.display()))
            .arg(&url)
            .output()
            .expect("running chromium");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("screenshot: {}", path.display());
    }

    // Every node's view, side by side: all four agree.
    let out = isthmus(vec![
        "status".into(),
        "--cluster".into(),
        "--addr".into(),
        dc1.clone(),
    ])
    .await;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(
        table.contains("4 members, 4 views, 0 disagreement(s)"),
        "{table}"
    );
    for id in &ids {
        let row = member_row(&table, id).expect("a row per node");
        assert_eq!(row.matches("UN").count(), 4, "{table}");
    }

    // Binary values through the CLI, from a file and from stdin.
    let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let file = dir.path().join("value.bin");
    std::fs::write(&file, &binary).unwrap();
    let put_args = |key: &str, file: &str| -> Vec<String> {
        [
            "put",
            "--keyspace",
            "carts",
            "--addr",
            &dc1,
            key,
            "--file",
            file,
        ]
        .map(String::from)
        .to_vec()
    };
    let out = isthmus(put_args("bin-file", &file.display().to_string())).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdin_put = {
        let args = put_args("bin-stdin", "-");
        let bytes = binary.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
                .args(args)
                .env("ISTHMUS_CA", common::pki().ca_pem())
                .env("ISTHMUS_CERT", common::pki().admin_cert().0)
                .env("ISTHMUS_KEY", common::pki().admin_cert().1)
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    };
    assert!(stdin_put.status.success(), "{}", text(&stdin_put.stderr));
    // `isthmus scan`: every key of the keyspace, page by page (one key a
    // page here), filtered by a glob; a cursor that is not one is refused.
    let scan = |extra: &[&str]| -> Vec<String> {
        ["scan", "--keyspace", "carts", "--addr", &dc1]
            .iter()
            .chain(extra)
            .map(|a| a.to_string())
            .collect()
    };
    let out = isthmus(scan(&["--count", "1", "--match", "bin-*"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut keys: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    keys.sort();
    assert_eq!(keys, ["bin-file", "bin-stdin"]);
    let out = isthmus(scan(&["--cursor=-1"])).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid cursor"),
        "{}",
        text(&out.stderr)
    );
    for key in ["bin-file", "bin-stdin"] {
        let get = RequestBody::Get {
            keyspace: "carts".into(),
            key: key.as_bytes().to_vec(),
            consistency: Some(Consistency::LocalQuorum),
        };
        match call(&dc1, get).await {
            Ok(ResponseBody::Value { siblings, .. }) => {
                assert_eq!(siblings.len(), 1, "{key}");
                assert!(siblings[0].value == binary, "{key}: the bytes written");
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    let out = isthmus(put_args("nowhere", "/no/such/file")).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/no/such/file"),
        "{}",
        text(&out.stderr)
    );

    // `put --ttl`: the value carries its expiry (shown by `get --json`);
    // a zero TTL and a write both sloppy and strict are refused; `del`
    // takes the quorum choice too.
    let cli = |args: &[&str]| -> Vec<String> {
        args.iter()
            .copied()
            .chain(["--keyspace", "carts", "--addr", &dc1])
            .map(String::from)
            .collect()
    };
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let out = isthmus(cli(&["put", "--ttl", "600", "--sloppy", "ttl-cli", "v"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = isthmus(cli(&["get", "--json", "ttl-cli"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expires = json["siblings"][0]["expires_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no expiry shown: {json}"));
    assert!(
        (before_ms + 600_000..=before_ms + 600_000 + 60_000).contains(&expires),
        "expires at {expires}, written at {before_ms} with a TTL of 600 s"
    );
    let out = isthmus(cli(&["put", "--ttl", "0", "k", "v"])).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--ttl"), "{}", text(&out.stderr));
    let out = isthmus(cli(&["put", "--sloppy", "--strict", "k", "v"])).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be used with"),
        "{}",
        text(&out.stderr)
    );
    let out = isthmus(cli(&["del", "--strict", "ttl-cli"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = isthmus(cli(&["get", "ttl-cli"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "deleted");

    // A node killed mid-test is shown down within a bound: the failure
    // detector's conviction plus a refresh of the page.
    const SHOWN_DOWN_WITHIN: Duration = Duration::from_secs(30);
    nodes[3].kill();
    let killed_at = Instant::now();
    loop {
        let dom = tokio::task::block_in_place(|| rendered(&chromium, &profile, &url));
        if shown_state(&dom, "dc2-n1").as_deref() == Some("down") {
            println!("dc2-n1 shown down {:?} after SIGKILL", killed_at.elapsed());
            assert_eq!(shown_state(&dom, "dc2-n0").as_deref(), Some("up"));
            break;
        }
        assert!(
            killed_at.elapsed() < SHOWN_DOWN_WITHIN,
            "dc2-n1 still shown {:?} {:?} after SIGKILL",
            shown_state(&dom, "dc2-n1"),
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = isthmus(vec![
        "status".into(),
        "--cluster".into(),
        "--addr".into(),
        dc1.clone(),
    ])
    .await;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}{}", text(&out.stderr));
    assert!(table.contains("Did not answer:\n  dc2-n1:"), "{table}");
    let killed = member_row(&table, "dc2-n1").expect("a row for dc2-n1");
    assert!(
        killed.trim_end().ends_with('?'),
        "its own column is `?`: {table}"
    );
}
