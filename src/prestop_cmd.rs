//! `isthmus pre-stop`: what a node's pod in a Kubernetes StatefulSet runs
//! before it stops (its `preStop` hook; see `docs/deployment.md`).
//!
//! A pod stops for many reasons: a rolling update, an eviction, a drained
//! machine, a scale-down. Only the last removes the node for good, and
//! only then must it hand its ranges to their next owners first. The
//! StatefulSet controller removes the pods of the highest ordinals when it
//! scales down, after it has lowered the desired count, so the hook asks
//! the Kubernetes API for the StatefulSet's `spec.replicas`: a pod whose
//! ordinal is at or past it is leaving, and decommissions the local node
//! (waiting until every node sees it `Left`); any other pod is restarting
//! and does nothing. When the API cannot be asked, nothing is done (the
//! stop is taken for a restart): decommissioning a node that comes back
//! would move every range twice, while a node that left without it is
//! still on its peers' rings and can be brought back and decommissioned.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use isthmus_client::wire::{RequestBody, ResponseBody};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::client_cmd::{self, Target};

/// Arguments of `isthmus pre-stop`.
#[derive(clap::Args, Debug)]
pub struct PreStopArgs {
    /// The local node (its data port), and how to reach it.
    #[command(flatten)]
    pub target: Target,
    /// This pod's name: the StatefulSet's name, a dash, the ordinal
    /// (`isthmus-dc1-3`); from the downward API.
    #[arg(long, env = "POD_NAME")]
    pub pod: String,
    /// The pod's namespace; default: the service account's.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// The StatefulSet; default: the pod's name without its ordinal.
    #[arg(long)]
    pub statefulset: Option<String>,
    /// The node's id, as `isthmus status` shows it; default: the pod's
    /// name.
    #[arg(long)]
    pub node_id: Option<String>,
    /// The Kubernetes API, `https://host:port` (or `http://` for a test
    /// double); default: from KUBERNETES_SERVICE_HOST and _PORT.
    #[arg(long, env = "ISTHMUS_KUBERNETES_API")]
    pub api: Option<String>,
    /// The pod's service account: `token`, `ca.crt`, `namespace`.
    #[arg(long, default_value = "/var/run/secrets/kubernetes.io/serviceaccount")]
    pub service_account: PathBuf,
    /// How long to wait for the decommission to finish, in seconds (keep
    /// it under the pod's terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 3000)]
    pub wait_s: u64,
}

/// What the hook decided for a pod.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The pod's ordinal is below the desired count: it comes back.
    Restart { ordinal: u32, replicas: u32 },
    /// The StatefulSet was scaled down past the pod: it leaves for good.
    ScaleDown { ordinal: u32, replicas: u32 },
}

/// The ordinal of `pod` in the StatefulSet `statefulset`.
pub fn ordinal(pod: &str, statefulset: &str) -> anyhow::Result<u32> {
    pod.strip_prefix(statefulset)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("pod {pod:?} is not a pod of the StatefulSet {statefulset:?}"))
}

/// Restart or scale-down, from the pod's ordinal and the StatefulSet's
/// desired replicas.
pub fn decide(ordinal: u32, replicas: u32) -> Decision {
    if ordinal >= replicas {
        Decision::ScaleDown { ordinal, replicas }
    } else {
        Decision::Restart { ordinal, replicas }
    }
}

/// `spec.replicas` of a StatefulSet as the API returns it (1 when absent,
/// as Kubernetes defaults it).
pub fn replicas_of(statefulset: &serde_json::Value) -> anyhow::Result<u32> {
    match &statefulset["spec"]["replicas"] {
        serde_json::Value::Null => Ok(1),
        n => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .with_context(|| format!("spec.replicas is {n}, not a count")),
    }
}

/// Run the hook; returns what it printed.
pub fn run(args: PreStopArgs) -> anyhow::Result<String> {
    let statefulset = match &args.statefulset {
        Some(name) => name.clone(),
        None => match args.pod.rsplit_once('-') {
            Some((name, _)) => name.to_owned(),
            None => bail!("pod {:?} has no ordinal; give --statefulset", args.pod),
        },
    };
    let ordinal = ordinal(&args.pod, &statefulset)?;
    let namespace = match &args.namespace {
        Some(ns) => ns.clone(),
        None => read_trimmed(&args.service_account.join("namespace"))
            .context("no --namespace (POD_NAMESPACE), and no service account namespace")?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let replicas = runtime
        .block_on(desired_replicas(&args, &namespace, &statefulset))
        .context("asking the Kubernetes API for the StatefulSet's replicas; not decommissioning")?;
    match decide(ordinal, replicas) {
        Decision::Restart { .. } => Ok(format!(
            "pod {} is ordinal {ordinal} of {replicas} replicas: a restart, not a scale-down; \
             the node stays a member\n",
            args.pod
        )),
        Decision::ScaleDown { .. } => {
            let mut out = format!(
                "pod {} is ordinal {ordinal}, past {replicas} replicas: a scale-down; \
                 decommissioning {}\n",
                args.pod, args.target.addr
            );
            // The decommission is an operation the CLI follows to its end
            // (printing its report); the ring says whether the node left.
            let follow = crate::operation_cmd::Follow {
                detach: false,
                json: false,
            };
            match crate::operation_cmd::run_decommission(args.target.clone(), follow) {
                Ok(true) => out.push_str("decommission done\n"),
                Ok(false) => out.push_str("decommission ended with ranges not handed over\n"),
                Err(e) => out.push_str(&format!("decommission: {e:#}; watching the ring\n")),
            }
            let node = args.node_id.clone().unwrap_or_else(|| args.pod.clone());
            let deadline = Instant::now() + Duration::from_secs(args.wait_s);
            runtime.block_on(wait_left(&args.target, &node, deadline))?;
            out.push_str(&format!("{node} has left the ring\n"));
            Ok(out)
        }
    }
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| path.display().to_string())?
        .trim()
        .to_owned())
}

/// Poll the local node until it reports itself `Left`; an error if it
/// goes back to `Normal` (a range could not be handed over) or the
/// deadline passes.
async fn wait_left(target: &Target, node: &str, deadline: Instant) -> anyhow::Result<()> {
    let mut last = String::from("unknown");
    while Instant::now() < deadline {
        if let Ok((session, timeout)) = client_cmd::connect(target).await
            && let Ok(ResponseBody::Status { nodes, .. }) =
                session.call(RequestBody::Status, timeout).await
            && let Some(own) = nodes.iter().find(|n| n.node_id == node)
        {
            last = own.status.clone();
            match own.status.as_str() {
                "Left" => return Ok(()),
                "Normal" => bail!(
                    "the decommission of {node} did not finish (a next owner is down?); \
                     it is a member still: run `isthmus decommission` again"
                ),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("{node} is still {last} after --wait-s")
}

/// The StatefulSet's `spec.replicas`, from the Kubernetes API with the
/// pod's service account token.
async fn desired_replicas(
    args: &PreStopArgs,
    namespace: &str,
    statefulset: &str,
) -> anyhow::Result<u32> {
    let api = match &args.api {
        Some(api) => api.trim_end_matches('/').to_owned(),
        None => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST")
                .context("no --api and no KUBERNETES_SERVICE_HOST: not in a pod?")?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            }
        }
    };
    let uri: hyper::Uri =
        format!("{api}/apis/apps/v1/namespaces/{namespace}/statefulsets/{statefulset}")
            .parse()
            .with_context(|| format!("--api {api:?}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => bail!("--api {api:?} is neither https:// nor http://"),
    };
    let host = uri.host().context("the API URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let token = read_trimmed(&args.service_account.join("token")).ok();
    let mut request = hyper::Request::get(uri.path())
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::ACCEPT, "application/json");
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Empty::<Bytes>::new())?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect((bare, port)))
        .await
        .context("connecting to the Kubernetes API: timed out")??;
    let (status, body) = if https {
        let ca = args.service_account.join("ca.crt");
        let tls = tls_to(&ca, bare).await?;
        let stream = tls.1.connect(tls.0, tcp).await?;
        get(stream, request).await?
    } else {
        get(tcp, request).await?
    };
    if status != hyper::StatusCode::OK {
        bail!(
            "the API answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).context("the StatefulSet is not JSON")?;
    replicas_of(&value)
}

/// A TLS connector that trusts the cluster's CA (`ca.crt` of the service
/// account) and checks the API server's name or IP.
async fn tls_to(
    ca: &Path,
    host: &str,
) -> anyhow::Result<(
    rustls_pki_types::ServerName<'static>,
    tokio_rustls::TlsConnector,
)> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
    }
    // The one provider every TLS link of the project uses.
    let config = rustls::ClientConfig::builder_with_provider(isthmus_client::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host:?} is not a server name"))?;
    Ok((name, tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// One HTTP/1.1 request on `stream`; the status and the whole body (at
/// most 16 MiB).
async fn get<S>(
    stream: S,
    request: hyper::Request<Empty<Bytes>>,
) -> anyhow::Result<(hyper::StatusCode, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the Kubernetes API")?;
    let driver = tokio::spawn(connection);
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .context("the Kubernetes API did not answer within 10 s")??;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), 16 << 20)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the API's answer: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_past_the_desired_replicas_is_scaled_down_any_other_restarts() {
        assert_eq!(ordinal("isthmus-dc1-3", "isthmus-dc1").unwrap(), 3);
        assert_eq!(ordinal("isthmus-dc1-12", "isthmus-dc1").unwrap(), 12);
        assert!(ordinal("isthmus-dc2-3", "isthmus-dc1").is_err());
        assert!(ordinal("isthmus-dc1-x", "isthmus-dc1").is_err());
        assert!(ordinal("isthmus-dc1", "isthmus-dc1").is_err());
        // Scaled from 4 to 3: ordinal 3 leaves, 0..=2 stay.
        assert_eq!(
            decide(3, 3),
            Decision::ScaleDown {
                ordinal: 3,
                replicas: 3
            }
        );
        assert_eq!(
            decide(2, 3),
            Decision::Restart {
                ordinal: 2,
                replicas: 3
            }
        );
        // Scaled to zero: every pod leaves.
        assert!(matches!(decide(0, 0), Decision::ScaleDown { .. }));
        let sts = serde_json::json!({"spec": {"replicas": 4}});
        assert_eq!(replicas_of(&sts).unwrap(), 4);
        assert_eq!(replicas_of(&serde_json::json!({"spec": {}})).unwrap(), 1);
        assert!(replicas_of(&serde_json::json!({"spec": {"replicas": "four"}})).is_err());
    }
}
