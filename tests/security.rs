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
use isthmus_client::wire::{ErrorCode, PeerRole, RequestBody, ResponseBody};
use isthmus_client::{Channel, ClientError, Session};
use isthmus_core::config::TlsSection;
use isthmus_core::merge::NoMerge;
use isthmus_core::model::DcName;
use isthmus_core::node::{self, NodeError, NodeTuning};
use isthmus_core::peer::{PeerRequest, PeerResponse};
use isthmus_server::certs::{Ca, Issued, Validity};
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
    let intruder = ca
        .issue(&node_identity("n9", "dc1"), &[], Validity::days(1))
        .unwrap();
    refused_unauthenticated(&peer_channel(&addr, &material(&ca, Some(&intruder)), "dc2-n0").await);

    // A node certificate from another CA (naming a real node).
    let other_ca = Ca::new("other", Validity::days(1)).unwrap();
    let foreign = other_ca
        .issue(&node_identity("dc2-n0", "dc2"), &[], Validity::days(1))
        .unwrap();
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
    let honest = ca
        .issue(&node_identity("n9", "dc1"), &[], Validity::days(1))
        .unwrap();
    let channel = peer_channel(&addr, &material(&ca, Some(&honest)), "n9")
        .await
        .unwrap();
    assert!(matches!(
        channel.call(gossip(), WAIT).await,
        Ok(PeerResponse::Gossip { .. })
    ));

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
    let dc1_node = ca
        .issue(&node_identity("n9", "dc1"), &[], Validity::days(1))
        .unwrap();
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
    let mine = ca
        .issue(&node_identity("n9", "dc1"), &[], Validity::days(1))
        .unwrap();
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
    ca.issue(&node_identity("n2", "dc1"), &[], Validity::days(1))
        .unwrap()
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
