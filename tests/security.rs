//! An attacker's suite against a TLS cluster: every attempt is refused
//! with a typed error and changes nothing; the honest paths still work.
//!
//! The cluster is two datacenters of one node each, on loopback, with a
//! CA under its root (`LocalCluster` with `ClusterSpec::tls`). The
//! attacker can reach every port and holds, case by case: nothing, a
//! client certificate of the cluster's CA, a node certificate of the
//! cluster's CA for another node, a certificate from another CA, an
//! expired one.

use std::time::Duration;

use isthmus_client::session::IoStream;
use isthmus_client::tls::{CertIdentity, TlsMaterial};
use isthmus_client::wire::{
    Context, Credentials, ErrorCode, PeerRole, Permission, RegistryRequest, RequestBody,
    ResponseBody, UserRequest, UserResponse, WriteId,
};
use isthmus_client::{Channel, ClientError, Session};
use isthmus_core::config::TlsSection;
use isthmus_core::merge::NoMerge;
use isthmus_core::model::DcName;
use isthmus_core::node::{self, NodeError, NodeTuning};
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_server::certs::{Ca, Issued, Validity};
use isthmus_testkit::cluster::{ADMIN, ADMIN_PASSWORD};
use isthmus_testkit::{ClusterSpec, LocalCluster, Root};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

async fn cluster() -> LocalCluster {
    let spec = ClusterSpec {
        tls: true,
        wan_one_way: None,
        ..ClusterSpec::new(&["dc1", "dc2"], 1)
    };
    LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap()
}

fn ca_of(cluster: &LocalCluster) -> Ca {
    Ca::load(cluster.certs_dir().unwrap()).unwrap()
}

fn node_identity(node_id: &str, dc: &str) -> CertIdentity {
    CertIdentity::Node {
        node_id: node_id.into(),
        dc: dc.into(),
    }
}

/// A day-long certificate from `ca` naming node `node_id` of `dc`.
fn node_cert(ca: &Ca, node_id: &str, dc: &str) -> Issued {
    ca.issue(&node_identity(node_id, dc), &[], Validity::days(1))
        .unwrap()
}

/// TLS material trusting `trusted`'s CA and presenting `own`.
fn material(trusted: &Ca, own: Option<&Issued>) -> TlsMaterial {
    TlsMaterial::from_pem(
        trusted.issued().cert_pem.as_bytes(),
        own.map(|i| (i.cert_pem.as_bytes(), i.key_pem.as_bytes())),
    )
    .unwrap()
}

/// A peer-role handshake with `addr` over TLS with `material`, as
/// `name`.
async fn peer_channel(
    addr: &str,
    material: &TlsMaterial,
    name: &str,
) -> Result<Channel<PeerRequest, PeerResponse>, ClientError> {
    let socket = TcpStream::connect(addr).await.unwrap();
    let (tls, _) = isthmus_client::tls::connect(material.client_config().unwrap(), socket, None)
        .await
        .map_err(|e| ClientError::Tls {
            addr: addr.into(),
            reason: e.to_string(),
        })?;
    let stream: Box<dyn IoStream> = Box::new(tls);
    Channel::handshake(stream, addr, name, PeerRole::Node, WAIT).await
}

fn refused_unauthenticated(result: &Result<Channel<PeerRequest, PeerResponse>, ClientError>) {
    match result {
        Err(ClientError::Unauthenticated { .. }) => {}
        Err(other) => panic!("expected UNAUTHENTICATED, got {other:?}"),
        Ok(_) => panic!("the peer role was granted"),
    }
}

/// The peer role is refused (before any request can be sent) with a
/// typed error: the connection never reaches the request loop.
fn refused_in_tls_or_handshake(result: &Result<Channel<PeerRequest, PeerResponse>, ClientError>) {
    assert!(
        matches!(
            result,
            Err(ClientError::Tls { .. } | ClientError::Handshake { .. })
        ),
        "expected a TLS refusal, got {:?}",
        result.as_ref().map(|_| "a channel")
    );
}

/// Gossip as a probe of whether a channel works: an empty exchange.
fn gossip() -> PeerRequest {
    PeerRequest::Gossip {
        digest: Vec::new(),
        entries: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_who_their_certificates_say_and_nobody_else() {
    let cluster = cluster().await;
    let ca = ca_of(&cluster);
    let n1 = cluster.node_id("dc1", 0);
    let addr = cluster.node(&n1).addr.clone();
    let members_before = cluster.node(&n1).gossiper().alive().len();

    // Plaintext to a TLS node: no handshake at all.
    let plain = Session::connect(&addr, "plain", WAIT).await;
    assert!(
        matches!(plain, Err(ClientError::Handshake { .. })),
        "{:?}",
        plain.err()
    );

    // No certificate, asking for the peer role.
    refused_unauthenticated(&peer_channel(&addr, &material(&ca, None), "dc2-n0").await);

    // A client certificate of the cluster's CA, asking for the peer role.
    let client_cert = ca
        .issue(
            &CertIdentity::Client {
                name: "mallory".into(),
            },
            &[],
            Validity::days(1),
        )
        .unwrap();
    refused_unauthenticated(
        &peer_channel(&addr, &material(&ca, Some(&client_cert)), "dc2-n0").await,
    );

    // A node certificate for one node, claiming to be another.
    let intruder = node_cert(&ca, "n9", "dc1");
    refused_unauthenticated(&peer_channel(&addr, &material(&ca, Some(&intruder)), "dc2-n0").await);

    // A node certificate from another CA (naming a real node).
    let other_ca = Ca::new("other", Validity::days(1)).unwrap();
    let foreign = node_cert(&other_ca, "dc2-n0", "dc2");
    refused_in_tls_or_handshake(
        &peer_channel(&addr, &material(&ca, Some(&foreign)), "dc2-n0").await,
    );

    // An expired node certificate of the right CA.
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue(
            &node_identity("dc2-n0", "dc2"),
            &[],
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    refused_in_tls_or_handshake(
        &peer_channel(&addr, &material(&ca, Some(&expired)), "dc2-n0").await,
    );

    // A node certificate of the right CA, for the node it claims: the
    // peer role works (the refusals above are not a broken listener).
    let honest = node_cert(&ca, "n9", "dc1");
    let channel = peer_channel(&addr, &material(&ca, Some(&honest)), "n9")
        .await
        .unwrap();
    assert!(matches!(
        channel.call(gossip(), WAIT).await,
        Ok(PeerResponse::Gossip { .. })
    ));
    // Even a real node cannot make another store data outside its
    // keyspaces.
    let stray = PeerRequest::Apply {
        keyspace: "nowhere".into(),
        key: b"k".to_vec(),
        versions: Vec::new(),
        hint_for: None,
    };
    match channel.call(stray, WAIT).await {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        other => panic!("a write to an unknown keyspace was taken: {other:?}"),
    }

    // Nothing the refused attempts said reached membership.
    assert_eq!(cluster.node(&n1).gossiper().alive().len(), members_before);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_batch_must_come_from_the_senders_datacenter() {
    let cluster = cluster().await;
    let ca = ca_of(&cluster);
    let far = cluster.node(&cluster.node_id("dc2", 0)).addr.clone();
    // A real node certificate of dc1, used to pass a batch off as dc2's
    // own (or a third DC's).
    let dc1_node = node_cert(&ca, "n9", "dc1");
    let channel = peer_channel(&far, &material(&ca, Some(&dc1_node)), "n9")
        .await
        .unwrap();
    for claimed in ["dc2", "dc3"] {
        let answer = channel
            .call(
                PeerRequest::Ship {
                    from_dc: DcName(claimed.into()),
                    batch: vec![1, 2, 3],
                },
                WAIT,
            )
            .await;
        match answer {
            Err(ClientError::Unauthenticated { .. }) => {}
            other => panic!("a batch claiming {claimed} was not refused: {other:?}"),
        }
    }
    // The same garbage under the sender's own DC gets past that check
    // and is refused for what it is.
    let answer = channel
        .call(
            PeerRequest::Ship {
                from_dc: DcName("dc1".into()),
                batch: vec![1, 2, 3],
            },
            WAIT,
        )
        .await;
    match answer {
        Err(ClientError::Server(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        other => panic!("garbage was taken as a batch: {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialer_refuses_a_node_other_than_the_one_it_dialled() {
    let cluster = cluster().await;
    let ca = ca_of(&cluster);
    let n1 = cluster.node_id("dc1", 0);
    let addr = cluster.node(&n1).addr.clone();
    let mine = node_cert(&ca, "n9", "dc1");
    let transport =
        isthmus_core::transport::TcpTransport::new(isthmus_core::ring::NodeId("n9".into()), WAIT)
            .with_tls(material(&ca, Some(&mine)).client_config().unwrap());
    // Gossip learnt that "dc2-n0" listens where dc1's node does.
    let wrong = isthmus_core::ring::NodeId("dc2-n0".into());
    transport.set_addr(&wrong, &addr);
    use isthmus_core::transport::Transport as _;
    let answer = transport.call(&wrong, gossip(), WAIT).await;
    assert!(matches!(answer, Err(ClientError::Tls { .. })), "{answer:?}");
    // The node that is there, by its own id, answers.
    let right = isthmus_core::ring::NodeId(n1.clone());
    transport.set_addr(&right, &addr);
    assert!(matches!(
        transport.call(&right, gossip(), WAIT).await,
        Ok(PeerResponse::Gossip { .. })
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_will_not_start_with_another_nodes_certificate() {
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::new("t", Validity::days(1)).unwrap();
    ca.issued().write(root.path(), "ca").unwrap();
    node_cert(&ca, "n2", "dc1")
        .write(root.path(), "n2")
        .unwrap();
    let mut config = isthmus_testkit::config::node("n3", "dc1", root.path().join("n3"));
    config.insecure_plaintext = false;
    config.tls = Some(TlsSection {
        ca: vec![root.path().join("ca.pem")],
        cert: root.path().join("n2.pem"),
        key: root.path().join("n2.key"),
    });
    let started = node::start(config, std::sync::Arc::new(NoMerge), NodeTuning::default()).await;
    match started {
        Err(NodeError::Tls(e)) => assert!(e.to_string().contains("n2"), "{e}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a node started with another node's certificate"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connection_cannot_send_peer_requests() {
    let cluster = cluster().await;
    let n1 = cluster.node_id("dc1", 0);
    let addr = cluster.node(&n1).addr.clone();
    // A client session whose frames carry a peer `Apply` to the registry:
    // on a client connection they are decoded as client requests, and
    // nothing peer-only exists there.
    let session: Channel<PeerRequest, ResponseBody> =
        Channel::connect_with(&addr, &cluster.connect_options("mallory"), WAIT)
            .await
            .unwrap();
    let apply = PeerRequest::Apply {
        keyspace: "_registry".into(),
        key: b"bindings/carts".to_vec(),
        versions: Vec::new(),
        hint_for: None,
    };
    let answer = session.call(apply, WAIT).await;
    assert!(
        matches!(
            &answer,
            Err(ClientError::ConnectionClosed) | Ok(ResponseBody::Error(_))
        ),
        "{answer:?}"
    );
    if let Ok(ResponseBody::Error(e)) = &answer {
        assert!(
            matches!(e.code, ErrorCode::Malformed | ErrorCode::BadRequest),
            "{e:?}"
        );
    }
    // The registry holds nothing it did not hold before.
    let probe = cluster.session(&addr, "probe").await.unwrap();
    let listing = probe
        .call(
            RequestBody::Registry(isthmus_client::wire::RegistryRequest::List),
            WAIT,
        )
        .await
        .unwrap();
    match listing {
        ResponseBody::Registry(isthmus_client::wire::RegistryResponse::Listing {
            resolvers,
            bindings,
        }) => assert!(
            resolvers.is_empty() && bindings.iter().all(|b| b.current.is_none()),
            "{resolvers:?} {bindings:?}"
        ),
        other => panic!("{other:?}"),
    }
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// Users, roles and grants

fn creds(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials {
        user: user.into(),
        password: password.into(),
    })
}

async fn login(
    cluster: &LocalCluster,
    addr: &str,
    credentials: Option<Credentials>,
) -> Result<Session, ClientError> {
    Session::connect_with(addr, &cluster.connect_as("t", credentials), WAIT).await
}

async fn put(session: &Session, key: &[u8]) -> Result<ResponseBody, ClientError> {
    session
        .call(
            RequestBody::Put {
                mode: isthmus_client::wire::WriteMode::Context,
                keyspace: "carts".into(),
                key: key.to_vec(),
                value: b"v".to_vec(),
                context: Context::default(),
                consistency: None,
                write_id: WriteId(rand_id()),
                expiry: Default::default(),
                sloppy: None,
            },
            WAIT,
        )
        .await
}

async fn get(session: &Session, key: &[u8]) -> Result<ResponseBody, ClientError> {
    session
        .call(
            RequestBody::Get {
                keyspace: "carts".into(),
                key: key.to_vec(),
                consistency: None,
            },
            WAIT,
        )
        .await
}

fn rand_id() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    id[8..].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    id
}

async fn admin_call(session: &Session, request: UserRequest) -> ResponseBody {
    session
        .call(RequestBody::User(request), WAIT)
        .await
        .unwrap()
}

fn forbidden(result: Result<ResponseBody, ClientError>, needs: Permission) {
    match result {
        Err(ClientError::Forbidden { permission, .. }) => assert_eq!(permission, needs),
        other => panic!("expected FORBIDDEN {needs}, got {other:?}"),
    }
}

/// Poll `check` on every node until it holds everywhere; returns how long
/// it took, or panics after 30 s naming `what`.
async fn everywhere<F, Fut>(cluster: &LocalCluster, what: &str, check: F) -> Duration
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    let addrs: Vec<String> = cluster.nodes.values().map(|n| n.addr.clone()).collect();
    while start.elapsed() < Duration::from_secs(30) {
        let mut all = true;
        for addr in &addrs {
            all &= check(addr.clone()).await;
        }
        if all {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not reach every node within 30 s");
}

/// Wait until `user` can log in with `password` on every node; how long
/// that took.
async fn logs_in_everywhere(cluster: &LocalCluster, user: &str, password: &str) -> Duration {
    everywhere(cluster, &format!("user {user}"), |addr| async move {
        login(cluster, &addr, creds(user, password)).await.is_ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_users_get_what_their_grants_allow_in_every_dc() {
    let cluster = cluster().await;
    let dc1 = cluster.node(&cluster.node_id("dc1", 0)).addr.clone();
    let dc2 = cluster.node(&cluster.node_id("dc2", 0)).addr.clone();
    let admin = cluster.session(&dc1, "admin").await.unwrap();

    // Anonymous: refused at the handshake, on every node.
    for addr in [&dc1, &dc2] {
        match login(&cluster, addr, None).await {
            Err(ClientError::Unauthenticated { .. }) => {}
            other => panic!("anonymous got in: {:?}", other.map(|_| "a session")),
        }
    }
    // A wrong password, and an unknown user: the same refusal.
    for (user, password) in [(ADMIN, "not-the-password"), ("nobody", "whatever-it-is")] {
        match login(&cluster, &dc1, creds(user, password)).await {
            Err(ClientError::Unauthenticated { reason }) => {
                assert!(!reason.contains("nobody"), "{reason}")
            }
            other => panic!("{user} got in: {:?}", other.map(|_| "a session")),
        }
    }

    // The admin creates a reader and a writer through dc1.
    for (name, grant) in [("reader", "role:readonly"), ("writer", "write:carts")] {
        let answer = admin_call(
            &admin,
            UserRequest::Add {
                name: name.into(),
                password: format!("{name}-password"),
                grants: vec![grant.parse().unwrap(), "read:carts".parse().unwrap()],
            },
        )
        .await;
        assert_eq!(answer, ResponseBody::User(UserResponse::Done));
    }
    // They reach dc2 through the bridge: the writer logs in there.
    let took = logs_in_everywhere(&cluster, "writer", "writer-password").await;
    eprintln!("a new user could log in on every node after {took:?}");

    let writer = login(&cluster, &dc2, creds("writer", "writer-password"))
        .await
        .unwrap();
    let reader = login(&cluster, &dc1, creds("reader", "reader-password"))
        .await
        .unwrap();
    assert_eq!(put(&writer, b"k").await.unwrap(), ResponseBody::Written);
    assert!(matches!(
        get(&writer, b"k").await,
        Ok(ResponseBody::Value { .. })
    ));
    assert!(matches!(
        get(&reader, b"k").await,
        Ok(ResponseBody::Value { .. })
    ));
    let write_carts = Permission::Write {
        keyspace: Some("carts".into()),
    };
    forbidden(put(&reader, b"k").await, write_carts);

    // The writer may not administer anything.
    let module = isthmus_testkit::example_module("isthmus-example-lww");
    let admin_only = [
        RequestBody::Registry(RegistryRequest::Upload {
            name: "lww".into(),
            version: 1,
            module,
            force: false,
        }),
        RequestBody::Registry(RegistryRequest::Attach {
            keyspace: "carts".into(),
            name: "lww".into(),
            version: 1,
        }),
        RequestBody::Decommission,
        RequestBody::Repair {
            keyspace: None,
            remote_dc: None,
        },
        RequestBody::User(UserRequest::Add {
            name: "mallory".into(),
            password: "mallory-password".into(),
            grants: vec!["role:admin".parse().unwrap()],
        }),
        RequestBody::User(UserRequest::Passwd {
            name: ADMIN.into(),
            password: "taken-over-admin".into(),
        }),
    ];
    for request in admin_only {
        forbidden(writer.call(request, WAIT).await, Permission::Admin);
    }
    // ...and nothing of it happened.
    let listing = admin.call(RequestBody::User(UserRequest::List), WAIT).await;
    match listing {
        Ok(ResponseBody::User(UserResponse::Users(users))) => {
            let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
            assert_eq!(names, [ADMIN, "reader", "writer"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cluster.nodes.len(), 2);
    assert!(
        login(&cluster, &dc1, creds(ADMIN, ADMIN_PASSWORD))
            .await
            .is_ok()
    );

    // A user may change their own password.
    let own = UserRequest::Passwd {
        name: "reader".into(),
        password: "reader-new-password".into(),
    };
    assert_eq!(
        reader.call(RequestBody::User(own), WAIT).await.unwrap(),
        ResponseBody::User(UserResponse::Done)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_and_a_new_password_take_effect_on_every_node() {
    let cluster = cluster().await;
    let dc1 = cluster.node(&cluster.node_id("dc1", 0)).addr.clone();
    let admin = cluster.session(&dc1, "admin").await.unwrap();
    admin_call(
        &admin,
        UserRequest::Add {
            name: "writer".into(),
            password: "writer-password".into(),
            grants: vec!["role:readwrite".parse().unwrap()],
        },
    )
    .await;
    logs_in_everywhere(&cluster, "writer", "writer-password").await;
    // Sessions opened before the revocation, one per node.
    let mut open = Vec::new();
    for node in cluster.nodes.values() {
        let session = login(&cluster, &node.addr, creds("writer", "writer-password"))
            .await
            .unwrap();
        assert_eq!(
            put(&session, b"before").await.unwrap(),
            ResponseBody::Written
        );
        open.push(session);
    }
    let answer = admin_call(
        &admin,
        UserRequest::Revoke {
            name: "writer".into(),
            grant: "role:readwrite".parse().unwrap(),
        },
    )
    .await;
    assert_eq!(answer, ResponseBody::User(UserResponse::Done));
    let start = std::time::Instant::now();
    loop {
        let mut refused = 0;
        for session in &open {
            if matches!(
                put(session, b"after").await,
                Err(ClientError::Forbidden { .. })
            ) {
                refused += 1;
            }
        }
        if refused == open.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the revocation did not reach every node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "a revoked grant was refused on every node's open sessions after {:?}",
        start.elapsed()
    );

    // A password change: the old password stops working everywhere, the
    // new one works everywhere.
    admin_call(
        &admin,
        UserRequest::Passwd {
            name: "writer".into(),
            password: "writer-password-2".into(),
        },
    )
    .await;
    let took = everywhere(&cluster, "the password change", |addr| {
        let cluster = &cluster;
        async move {
            let old = login(cluster, &addr, creds("writer", "writer-password")).await;
            let new = login(cluster, &addr, creds("writer", "writer-password-2")).await;
            matches!(old, Err(ClientError::Unauthenticated { .. })) && new.is_ok()
        }
    })
    .await;
    eprintln!("a password change held on every node after {took:?}");

    // Removal (a tombstone written through the coordinator): the user can
    // log in nowhere.
    let answer = admin_call(
        &admin,
        UserRequest::Remove {
            name: "writer".into(),
        },
    )
    .await;
    assert_eq!(answer, ResponseBody::User(UserResponse::Done));
    let took = everywhere(&cluster, "the removal", |addr| {
        let cluster = &cluster;
        async move {
            let login = login(cluster, &addr, creds("writer", "writer-password-2")).await;
            matches!(login, Err(ClientError::Unauthenticated { .. }))
        }
    })
    .await;
    eprintln!("a removed user was refused on every node after {took:?}");
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// Certificate rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_to_a_new_ca_while_writes_go_on_and_nothing_is_lost() {
    let spec = ClusterSpec {
        tls: true,
        ..ClusterSpec::new(&["dc1"], 3)
    };
    let mut cluster = LocalCluster::start(spec, Root::temporary().unwrap())
        .await
        .unwrap();
    let old_dir = cluster.certs_dir().unwrap().to_owned();
    let new_dir = cluster.root().join("certs-new");
    let new_ca = Ca::new("new CA", Validity::days(30)).unwrap();
    new_ca.issued().write(&new_dir, "ca").unwrap();
    // Clients trust both CAs for the whole rotation.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(old_dir.join("ca.pem")).unwrap(),
        new_ca.issued().cert_pem
    );
    let client = isthmus_client::Client::builder()
        .seed(cluster.seed().to_owned())
        .tls(TlsMaterial::from_pem(both.as_bytes(), None).unwrap())
        .credentials(Credentials {
            user: ADMIN.into(),
            password: ADMIN_PASSWORD.into(),
        })
        .retries(8)
        .build()
        .await
        .unwrap();
    let acked = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("rot:{i}");
                if client
                    .put("carts", key.as_bytes(), b"v".to_vec(), &Context::default())
                    .await
                    .is_ok()
                {
                    acked.lock().push(i);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let ids: Vec<String> = cluster.nodes.keys().cloned().collect();
    let section = |ca: Vec<std::path::PathBuf>, dir: &std::path::Path, id: &str| TlsSection {
        ca,
        cert: dir.join(format!("{id}.pem")),
        key: dir.join(format!("{id}.key")),
    };
    let both_cas = vec![old_dir.join("ca.pem"), new_dir.join("ca.pem")];
    for id in &ids {
        new_ca
            .issue(&node_identity(id, "dc1"), &[], Validity::days(30))
            .unwrap()
            .write(&new_dir, id)
            .unwrap();
    }
    // (1) trust both CAs, (2) present the new CA's certificate, (3) trust
    // only the new CA: one node at a time, writes going on.
    let steps: [(&str, Vec<std::path::PathBuf>, &std::path::Path); 3] = [
        ("trust both", both_cas.clone(), &old_dir),
        ("new certificates", both_cas.clone(), &new_dir),
        ("new CA only", vec![new_dir.join("ca.pem")], &new_dir),
    ];
    for (step, cas, dir) in steps {
        for (i, id) in ids.iter().enumerate() {
            let before = acked.lock().len();
            // The node comes back where it was: its peers know it there.
            let addr = cluster.node(id).addr.clone();
            cluster.stop_node(id).await;
            let mut config = cluster.node_config("dc1", i);
            config.listen = addr;
            config.tls = Some(section(cas.clone(), dir, id));
            cluster.start_with(config).await.unwrap();
            cluster.wait_alive(3, step).await.unwrap();
            // Writes keep being acknowledged around each restart.
            let start = std::time::Instant::now();
            while acked.lock().len() < before + 50 {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "writes stalled at step {step:?}, node {id}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    // The old CA's certificates are refused now.
    let old_ca = Ca::load(&old_dir).unwrap();
    let stale = node_cert(&old_ca, "n9", "dc1");
    let addr = cluster.node(&ids[0]).addr.clone();
    let trusting_new = TlsMaterial::from_pem(
        new_ca.issued().cert_pem.as_bytes(),
        Some((stale.cert_pem.as_bytes(), stale.key_pem.as_bytes())),
    )
    .unwrap();
    refused_in_tls_or_handshake(&peer_channel(&addr, &trusting_new, "n9").await);
    // Nothing acknowledged was lost.
    let acked = acked.lock().clone();
    assert!(
        acked.len() > 200,
        "only {} writes acknowledged",
        acked.len()
    );
    for i in &acked {
        let read = client
            .get("carts", format!("rot:{i}").as_bytes())
            .await
            .unwrap();
        assert_eq!(read.siblings.len(), 1, "rot:{i} lost");
    }
    eprintln!(
        "rotation: {} writes acknowledged through three rolling restarts, none lost",
        acked.len()
    );
    cluster.shutdown().await;
}
