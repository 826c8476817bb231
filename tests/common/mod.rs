//! What the process-level tests share: spawning and SIGKILLing
//! `isthmus server` processes, free ports on 127.0.0.x, the client and
//! peer calls the tests make, running the `isthmus` CLI, and waiting for a
//! condition with the nodes' log tails printed when it never comes.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use isthmus_client::tls::{CertIdentity, TlsMaterial};
use isthmus_client::wire::{BridgeReport, NodeReport, RequestBody, ResponseBody};
use isthmus_client::{ClientError, ConnectOptions, Session};
use isthmus_core::model::VersionSet;
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_core::ring::NodeId;
use isthmus_core::transport::TcpTransport;
use isthmus_server::certs::{Ca, Validity};

/// One `isthmus server` process: its config file, its log (stderr,
/// appended across restarts) and, while it runs, the child.
pub struct Node {
    pub id: String,
    pub dc: String,
    pub addr: String,
    /// Its operations listener (`/metrics`, `/healthz`, `/readyz`).
    pub ops: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Node {
    /// A node `id` of `dc` listening on a free port of `ip`, with its
    /// config and log in `dir` (the config is the caller's to write).
    pub fn new(dir: &Path, id: &str, dc: &str, ip: &str) -> Node {
        Node {
            id: id.to_owned(),
            dc: dc.to_owned(),
            addr: format!("{ip}:{}", free_port(ip)),
            ops: format!("{ip}:{}", free_port(ip)),
            config: dir.join(format!("{id}.toml")),
            log: dir.join(format!("{id}.log")),
            child: None,
        }
    }

    /// Write this node's config: its identity, rack `rack`, its address,
    /// a data directory under `dir`, `seeds`, the top-level `settings`
    /// (TOML lines: vnodes, fsync, ...; `bootstrap = false` unless they
    /// set it), TLS with a certificate from the
    /// tests' CA ([`pki`]) and a `carts` keyspace at
    /// LOCAL_QUORUM with `replication` (e.g. `dc1 = 3, dc2 = 3`).
    pub fn write_config(
        &self,
        dir: &Path,
        rack: &str,
        seeds: &[&str],
        settings: &str,
        replication: &str,
    ) {
        let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}\"")).collect();
        // Nodes form their cluster together unless a test says otherwise
        // (`bootstrap = true`, or absent on purpose: `bootstrap = "auto"`
        // in `settings` drops the line, so the node decides).
        let settings = if settings.contains("bootstrap = \"auto\"") {
            settings.replace("bootstrap = \"auto\"", "")
        } else if settings.contains("bootstrap") {
            settings.to_owned()
        } else {
            format!("{settings}\nbootstrap = false")
        };
        let toml = format!(
            r#"node_id = "{id}"
dc = "{dc}"
rack = "{rack}"
listen = "{addr}"
data_dir = "{data}"
seeds = [{seeds}]
{settings}

{tls}

[ops]
listen = "{ops}"

[keyspaces.carts]
replication = {{ {replication} }}
consistency = "LOCAL_QUORUM"
"#,
            id = self.id,
            dc = self.dc,
            addr = self.addr,
            data = dir.join(&self.id).display(),
            seeds = seeds.join(", "),
            tls = pki().tls_section(&self.id, &self.dc),
            ops = self.ops,
        );
        std::fs::write(&self.config, toml).unwrap();
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(["server", "--config"])
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning isthmus server");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process holds its sockets and its state, and does
    /// nothing, until [`Node::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running node");
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} {}", child.id());
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The wasm32 build of an example resolver package, as
/// `scripts/build-resolvers.sh` leaves it.
pub fn wasm(package: &str) -> PathBuf {
    let path = isthmus_testkit::built_module(Path::new(env!("CARGO_MANIFEST_DIR")), package);
    assert!(
        path.exists(),
        "{} is missing; build it with scripts/build-resolvers.sh",
        path.display()
    );
    path
}

/// Where scaffolded resolver crates build: a directory of its own beside
/// the test's target directory (kept between runs, so their dependencies
/// build once; not the test's own, whose lock the running `cargo test`
/// holds).
#[allow(dead_code)]
pub fn scaffold_target() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test binary>
    exe.ancestors()
        .nth(3)
        .expect("the test binary lies in target/<profile>/deps")
        .join("resolver-scaffold")
}

/// `isthmus resolver new NAME` into `parent/NAME` (the SDK by path, the
/// repository's lock file), then `isthmus resolver build` (wasm32 and the
/// law checker, which must pass): the built module.
#[allow(dead_code)]
pub fn scaffold_and_build(name: &str, parent: &Path) -> PathBuf {
    let dir = parent.join(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(args)
            .env("CARGO_TARGET_DIR", scaffold_target())
            .output()
            .expect("running isthmus");
        assert!(
            out.status.success(),
            "isthmus {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let dir_s = dir.display().to_string();
    let sdk = root.join("sdk-wasm").display().to_string();
    run(&["resolver", "new", name, "--dir", &dir_s, "--sdk-path", &sdk]);
    std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock")).expect("copying Cargo.lock");
    let built = run(&["resolver", "build", "--dir", &dir_s]);
    let module = built
        .lines()
        .find_map(|l| l.strip_prefix("built "))
        .unwrap_or_else(|| panic!("resolver build names no module: {built}"));
    PathBuf::from(module)
}

/// The first admin of every process-test cluster.
pub const ADMIN: &str = "admin";
/// Its password (tests log in by certificate; the CLI tests by password).
pub const ADMIN_PASSWORD: &str = "process-tests-admin";

/// The process's test CA: a directory with `ca.pem` and `ca.key`, and
/// the node certificates issued so far (`<dc>--<id>.pem`, `.key`). Every
/// process test runs its nodes with TLS on.
pub struct Pki {
    pub dir: PathBuf,
    ca: Ca,
    client: Arc<rustls::ClientConfig>,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("isthmus-test-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = Ca::new("process tests CA", Validity::days(1)).unwrap();
        ca.issued().write(&dir, "ca").unwrap();
        // Test clients log in as the first admin by certificate (no
        // password check per connection).
        let admin = CertIdentity::Client { name: ADMIN.into() };
        let issued = ca.issue(&admin, &[], Validity::days(1)).unwrap();
        issued.write(&dir, "client-admin").unwrap();
        let client = TlsMaterial::from_pem(
            ca.issued().cert_pem.as_bytes(),
            Some((issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())),
        )
        .unwrap()
        .client_config()
        .unwrap();
        Pki { dir, ca, client }
    })
}

impl Pki {
    /// The CA certificate, for `--ca` (the CLI also reads `ISTHMUS_CA`).
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Certificate and key of node `id` of `dc`, issued the first time.
    pub fn node_cert(&self, id: &str, dc: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{dc}--{id}");
        let files = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        if !files.0.exists() {
            let identity = CertIdentity::Node {
                node_id: id.to_owned(),
                dc: dc.to_owned(),
            };
            let issued = self.ca.issue(&identity, &[], Validity::days(1)).unwrap();
            issued.write(&self.dir, &stem).unwrap();
        }
        files
    }

    /// The `[tls]` and `[auth]` tables of node `id` of `dc`: TLS with
    /// its certificate, and the first admin [`ADMIN`].
    pub fn tls_section(&self, id: &str, dc: &str) -> String {
        let (cert, key) = self.node_cert(id, dc);
        format!(
            "[tls]\nca = [\"{}\"]\ncert = \"{}\"\nkey = \"{}\"\n\n[auth]\nbootstrap_admin = \"{ADMIN}\"\nbootstrap_password = \"{ADMIN_PASSWORD}\"",
            self.ca_pem().display(),
            cert.display(),
            key.display()
        )
    }

    /// The admin's client certificate and key, for the CLI.
    pub fn admin_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.join("client-admin.pem"),
            self.dir.join("client-admin.key"),
        )
    }

    /// What test clients trust (the tests' CA) and present (the admin's
    /// client certificate).
    pub fn material(&self) -> TlsMaterial {
        let (cert, key) = self.admin_cert();
        TlsMaterial::load(&[self.ca_pem()], Some((&cert, &key))).unwrap()
    }

    /// How test clients connect: TLS, trusting the tests' CA.
    pub fn options(&self, name: &str) -> ConnectOptions {
        ConnectOptions {
            name: name.to_owned(),
            tls: Some(self.client.clone()),
            credentials: None,
        }
    }
}

/// A client session with `addr` over TLS.
pub async fn session(addr: &str, name: &str, timeout: Duration) -> Result<Session, ClientError> {
    Session::connect_with(addr, &pki().options(name), timeout).await
}

/// A peer transport for reading nodes' own replicas: a node of `dc1`
/// named `name`, with a node certificate from the tests' CA.
pub fn probe(name: &str) -> TcpTransport {
    let pki = pki();
    let (cert, key) = pki.node_cert(name, "dc1");
    let material = TlsMaterial::load(&[pki.ca_pem()], Some((&cert, &key))).unwrap();
    TcpTransport::new(NodeId(name.into()), Duration::from_secs(2))
        .with_tls(material.client_config().unwrap())
}

/// One request on a fresh client connection to `addr`.
pub async fn call(addr: &str, body: RequestBody) -> Result<ResponseBody, ClientError> {
    let session = session(addr, "test", Duration::from_secs(1)).await?;
    session.call(body, Duration::from_secs(30)).await
}

/// What `addr` reports of every node and of its bridge, or `None` when it
/// does not answer.
pub async fn status(addr: &str) -> Option<(Vec<NodeReport>, Vec<BridgeReport>)> {
    let session = session(addr, "test", Duration::from_secs(1)).await.ok()?;
    match session
        .call(RequestBody::Status, Duration::from_secs(2))
        .await
        .ok()?
    {
        ResponseBody::Status { nodes, bridges } => Some((nodes, bridges)),
        _ => None,
    }
}

/// Every running node reports `up` nodes up.
pub async fn all_see(nodes: &[Node], up: usize) -> bool {
    for node in nodes.iter().filter(|n| n.running()) {
        match status(&node.addr).await {
            Some((reports, _)) if reports.iter().filter(|r| r.up).count() == up => {}
            _ => return false,
        }
    }
    true
}

/// Poll `check` until it holds; after `secs`, print the tail of every
/// node's log and fail naming `what`.
pub async fn until(what: &str, nodes: &[Node], secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dump_logs(nodes);
    panic!("timed out waiting until {what}");
}

/// Print the last lines of every node's log (on the way to a failure).
pub fn dump_logs(nodes: &[Node]) {
    for node in nodes {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        let mut tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.reverse();
        eprintln!("--- {} log (tail) ---\n{}", node.id, tail.join("\n"));
    }
}

/// `isthmus ARGS...`, run to completion off the async runtime.
pub async fn isthmus(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .args(args)
            .env("ISTHMUS_CA", pki().ca_pem())
            .env("ISTHMUS_CERT", pki().admin_cert().0)
            .env("ISTHMUS_KEY", pki().admin_cert().1)
            .output()
            .expect("running isthmus")
    })
    .await
    .unwrap()
}

/// `GET path` on a node's operations listener, which speaks HTTPS with
/// the node's certificate (trusted through the tests' CA), logged in as
/// `login` (user, password) by HTTP Basic; the status and the body, or
/// `None` when it does not answer.
pub fn ops_get(addr: &str, path: &str, login: Option<(&str, &str)>) -> Option<(u16, String)> {
    use base64::Engine as _;
    use std::io::{Read, Write};
    let config = pki().material().client_config().ok()?;
    let host = addr.rsplit_once(':')?.0;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
    let connection = rustls::ClientConnection::new(config, name).ok()?;
    let tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let authorization = login
        .map(|(user, password)| {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Authorization: Basic {encoded}\r\n")
        })
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = Vec::new();
    // A peer that closes without close_notify still sent its answer.
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The tests' admin login, for [`ops_get`].
pub fn admin_login() -> Option<(&'static str, &'static str)> {
    Some((ADMIN, ADMIN_PASSWORD))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A node's own replica of a key, asked over the peer protocol (no
/// coordinator, no read repair).
pub async fn local_set(
    transport: &TcpTransport,
    addr: &str,
    keyspace: &str,
    key: &[u8],
) -> Option<VersionSet> {
    let channel = transport.connect(addr).await.ok()?;
    let request = PeerRequest::Read {
        keyspace: keyspace.into(),
        key: key.to_vec(),
    };
    match channel.call(request, Duration::from_secs(2)).await.ok()? {
        PeerResponse::Versions(set) => Some(set),
        _ => None,
    }
}
