//! TLS for every link: clients to nodes, node to node, datacenter to
//! datacenter. rustls with its `ring` provider, TLS 1.3 only.
//!
//! Trust is one cluster CA (or several, while certificates rotate), and
//! identity is in the certificate: a node's certificate carries the URI
//! subject alternative name `isthmus://node/<dc>/<node_id>`, a client's
//! `isthmus://client/<name>` ([`CertIdentity`]). Hostnames and addresses
//! are not checked: what a client or node needs to know is that it talks
//! to *a node of this cluster* (a client) or to *the node it dialled* (a
//! node), and the identity URI says exactly that, wherever the node
//! listens. So:
//!
//! - a client accepts a server certificate that chains to a trusted CA,
//!   is valid now, is meant for servers (extended key usage), and names a
//!   node ([`TlsMaterial::client_config`]);
//! - a node dialling a peer also checks that the certificate names the
//!   node it meant ([`connect`] with an expected node id);
//! - a node serving accepts connections with no client certificate
//!   (clients that log in with a password) or with one that chains to a
//!   trusted CA and is meant for clients; what the certificate names
//!   decides what the connection may do, later, in the handshake (only a
//!   node certificate gets the peer role).
//!
//! Several CAs may be trusted at once: during a rotation every node
//! trusts the old and the new CA, certificates are reissued by the new
//! one node by node, then the old CA is dropped.
//!
//! What it is not: it issues no certificates (`isthmus certs` does) and
//! knows nothing of users and passwords.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

/// The URI prefix of a node's identity: `isthmus://node/<dc>/<node_id>`.
pub const NODE_URI_PREFIX: &str = "isthmus://node/";
/// The URI prefix of a client's identity: `isthmus://client/<name>`.
pub const CLIENT_URI_PREFIX: &str = "isthmus://client/";

/// The server name a TLS client sends (SNI). Nodes are known by the
/// identity in their certificate, not by a host name, so it is fixed.
pub const SERVER_NAME: &str = "node.isthmus";

/// Who a certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CertIdentity {
    /// A node of the cluster.
    Node {
        /// Its node id.
        node_id: String,
        /// Its datacenter.
        dc: String,
    },
    /// A client (an application, an operator's tool).
    Client {
        /// The name it was issued to.
        name: String,
    },
}

impl CertIdentity {
    /// The URI subject alternative name that carries this identity.
    pub fn uri(&self) -> String {
        match self {
            CertIdentity::Node { node_id, dc } => format!("{NODE_URI_PREFIX}{dc}/{node_id}"),
            CertIdentity::Client { name } => format!("{CLIENT_URI_PREFIX}{name}"),
        }
    }

    /// Parse an identity URI; `None` for URIs that are not Isthmus
    /// identities.
    pub fn from_uri(uri: &str) -> Option<Result<Self, TlsError>> {
        let bad = |reason: &str| {
            Some(Err(TlsError::Identity {
                reason: format!("{uri:?}: {reason}"),
            }))
        };
        if let Some(rest) = uri.strip_prefix(NODE_URI_PREFIX) {
            let Some((dc, node_id)) = rest.split_once('/') else {
                return bad("a node identity is isthmus://node/<dc>/<node_id>");
            };
            if !valid_part(dc) || !valid_part(node_id) {
                return bad("datacenter and node id must be non-empty, without '/'");
            }
            return Some(Ok(CertIdentity::Node {
                node_id: node_id.to_owned(),
                dc: dc.to_owned(),
            }));
        }
        if let Some(name) = uri.strip_prefix(CLIENT_URI_PREFIX) {
            if !valid_part(name) {
                return bad("a client name must be non-empty, without '/'");
            }
            return Some(Ok(CertIdentity::Client {
                name: name.to_owned(),
            }));
        }
        None
    }
}

fn valid_part(s: &str) -> bool {
    !s.is_empty() && !s.contains('/') && !s.chars().any(char::is_control)
}

impl std::fmt::Display for CertIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertIdentity::Node { node_id, dc } => write!(f, "node {node_id} of {dc}"),
            CertIdentity::Client { name } => write!(f, "client {name}"),
        }
    }
}

/// Why TLS material could not be loaded or a peer not be identified.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// A file holds no PEM item of the kind expected, or a bad one.
    #[error("{what}: {reason}")]
    Pem {
        /// Which item (and file).
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate names no identity, or a malformed one.
    #[error("certificate identity: {reason}")]
    Identity {
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration (for example a key that does not
    /// match its certificate).
    #[error("TLS configuration: {reason}")]
    Config {
        /// rustls's error.
        reason: String,
    },
}

/// The identity a DER certificate names in its URI subject alternative
/// names: exactly one Isthmus identity, or an error.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<CertIdentity, TlsError> {
    let bad = |reason: String| TlsError::Identity { reason };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| bad(format!("unparsable certificate: {e}")))?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|e| bad(format!("bad subject alternative names: {e}")))?;
    let mut found = None;
    for name in names.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(identity) = CertIdentity::from_uri(uri)
        {
            if found.is_some() {
                return Err(bad("more than one Isthmus identity".into()));
            }
            found = Some(identity?);
        }
    }
    found.ok_or_else(|| bad("no isthmus://node/ or isthmus://client/ URI name".into()))
}

/// The identity of the first certificate a TLS peer presented, if it
/// presented any.
pub fn peer_identity(
    certs: Option<&[CertificateDer<'_>]>,
) -> Option<Result<CertIdentity, TlsError>> {
    certs.and_then(|c| c.first()).map(identity_of)
}

/// The provider every TLS configuration here uses: rustls's `ring`,
/// chosen explicitly (no process-wide default is installed or read).
/// rustls marks it deprecated because *ring* offers no post-quantum key
/// exchange (X25519, P-256 and P-384 only); links are still TLS 1.3 with
/// forward secrecy. Moving to the aws-lc-rs provider (hybrid ML-KEM) is a
/// one-line change here, at the cost of a C toolchain in the build.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trusted CAs and, for nodes and clients that present one, a certificate
/// chain with its key.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    own: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    identity: Option<CertIdentity>,
}

impl TlsMaterial {
    /// From PEM text: the trusted CA certificates (one or more, in one
    /// text) and optionally a certificate chain (leaf first) and its key.
    pub fn from_pem(ca_pem: &[u8], own: Option<(&[u8], &[u8])>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| pem_error("CA certificates", e))?;
            roots.add(cert).map_err(|e| TlsError::Pem {
                what: "CA certificate".into(),
                reason: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem {
                what: "CA certificates".into(),
                reason: "no certificate found".into(),
            });
        }
        let (own, identity) = match own {
            None => (None, None),
            Some((chain_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(chain_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| pem_error("certificate", e))?;
                let leaf = chain.first().ok_or_else(|| TlsError::Pem {
                    what: "certificate".into(),
                    reason: "no certificate found".into(),
                })?;
                let identity = identity_of(leaf)?;
                let key =
                    PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error("key", e))?;
                (Some((chain, Arc::new(key))), Some(identity))
            }
        };
        Ok(TlsMaterial {
            roots: Arc::new(roots),
            own,
            identity,
        })
    }

    /// From files: CA certificates (each file may hold several), and
    /// optionally a certificate chain and its key.
    pub fn load(ca: &[PathBuf], own: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::Read {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let mut ca_pem = Vec::new();
        for path in ca {
            ca_pem.extend(read(path)?);
            ca_pem.push(b'\n');
        }
        match own {
            None => Self::from_pem(&ca_pem, None),
            Some((cert, key)) => Self::from_pem(&ca_pem, Some((&read(cert)?, &read(key)?))),
        }
    }

    /// Who this material's own certificate names.
    pub fn identity(&self) -> Option<&CertIdentity> {
        self.identity.as_ref()
    }

    /// A node's server side: its certificate, and client certificates
    /// optional but verified against the trusted CAs when presented.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let (chain, key) = self.own.as_ref().ok_or_else(|| TlsError::Config {
            reason: "a node needs its own certificate and key".into(),
        })?;
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(config_error)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(config_error)?;
        Ok(Arc::new(config))
    }

    /// The connecting side (a client, or a node dialling a peer): the
    /// server must present a node certificate from a trusted CA; its own
    /// certificate, if it has one, goes along.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verifier = Arc::new(ClusterVerifier {
            roots: self.roots.clone(),
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.own {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(config_error)?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

fn pem_error(what: &str, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Pem {
        what: what.into(),
        reason: e.to_string(),
    }
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config {
        reason: e.to_string(),
    }
}

/// A server certificate is good when it chains to a trusted CA, is valid
/// now and meant for servers, and names a node. The name the client asked
/// for is not compared: nodes are known by identity, not host name (see
/// the module docs); a node dialling a peer compares the identity itself.
#[derive(Debug)]
struct ClusterVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ClusterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match identity_of(end_entity) {
            Ok(CertIdentity::Node { .. }) => Ok(ServerCertVerified::assertion()),
            Ok(other) => Err(rustls::Error::General(format!(
                "the server's certificate names {other}, not a node"
            ))),
            Err(e) => Err(rustls::Error::General(e.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS stream on the connecting side.
pub type ClientTlsStream<S> = tokio_rustls::client::TlsStream<S>;

/// Run the TLS handshake over `stream` as the connecting side and return
/// the stream and the node the server's certificate names. With
/// `expected` set (a node dialling a peer it knows by id), a certificate
/// naming any other node is refused.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ClientConfig>,
    stream: S,
    expected: Option<&str>,
) -> Result<(ClientTlsStream<S>, CertIdentity), std::io::Error> {
    let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await?;
    let identity = peer_identity(tls.get_ref().1.peer_certificates())
        .ok_or_else(|| std::io::Error::other("the server presented no certificate"))?
        .map_err(std::io::Error::other)?;
    if let (Some(want), CertIdentity::Node { node_id, .. }) = (expected, &identity)
        && node_id != want
    {
        return Err(std::io::Error::other(format!(
            "dialled node {want} but {identity} answered"
        )));
    }
    Ok((tls, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip_and_bad_ones_are_refused() {
        let node = CertIdentity::Node {
            node_id: "n1".into(),
            dc: "dc1".into(),
        };
        let client = CertIdentity::Client {
            name: "alice".into(),
        };
        for id in [&node, &client] {
            assert_eq!(CertIdentity::from_uri(&id.uri()), Some(Ok(id.clone())));
        }
        assert_eq!(node.uri(), "isthmus://node/dc1/n1");
        assert_eq!(CertIdentity::from_uri("https://example.com/"), None);
        for bad in [
            "isthmus://node/dc1",
            "isthmus://node//n1",
            "isthmus://node/dc1/",
            "isthmus://node/dc1/n1/x",
            "isthmus://client/",
            "isthmus://client/a/b",
        ] {
            assert!(
                matches!(
                    CertIdentity::from_uri(bad),
                    Some(Err(TlsError::Identity { .. }))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_pem_is_a_typed_error() {
        assert!(matches!(
            TlsMaterial::from_pem(b"not a pem", None),
            Err(TlsError::Pem { .. })
        ));
        assert!(matches!(
            identity_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])),
            Err(TlsError::Identity { .. })
        ));
    }
}
