//! `isthmus certs ca|node|client`: a cluster CA and the certificates it
//! issues, as PEM files in a directory (see `isthmus_server::certs`).

use std::path::PathBuf;

use anyhow::Context as _;
use isthmus_client::tls::CertIdentity;
use isthmus_server::certs::{Ca, Validity};

/// What to create.
#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a CA: DIR/ca.pem (give it to every node and client) and
    /// DIR/ca.key (keep it off the nodes).
    Ca {
        /// Directory to write into.
        #[arg(long)]
        dir: PathBuf,
        /// Name of the CA.
        #[arg(long, default_value = "isthmus cluster CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node's certificate (DIR/NODE_ID.pem, DIR/NODE_ID.key),
    /// naming isthmus://node/DC/NODE_ID, signed by the CA in --ca-dir.
    Node {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Directory to write into (default: --ca-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The node's id, as in its config.
        #[arg(long)]
        node_id: String,
        /// The node's datacenter, as in its config.
        #[arg(long)]
        dc: String,
        /// Host names or IP addresses to add (optional; Isthmus itself
        /// checks the node id, not the host).
        #[arg(long)]
        host: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue a client certificate (DIR/client-NAME.pem, .key), naming
    /// isthmus://client/NAME.
    Client {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Directory to write into (default: --ca-dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The client's name.
        #[arg(long)]
        name: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// Create what `command` says; prints the files written.
pub fn run(command: CertsCommand) -> anyhow::Result<String> {
    let (dir, stem, issued) = match command {
        CertsCommand::Ca { dir, name, days } => {
            let ca = Ca::new(&name, Validity::days(days))?;
            (dir, "ca".to_owned(), ca.issued().clone())
        }
        CertsCommand::Node {
            ca_dir,
            dir,
            node_id,
            dc,
            host,
            days,
        } => {
            let ca = Ca::load(&ca_dir).context("loading the CA")?;
            let identity = CertIdentity::Node {
                node_id: node_id.clone(),
                dc,
            };
            let issued = ca.issue(&identity, &host, Validity::days(days))?;
            (dir.unwrap_or(ca_dir), node_id, issued)
        }
        CertsCommand::Client {
            ca_dir,
            dir,
            name,
            days,
        } => {
            let ca = Ca::load(&ca_dir).context("loading the CA")?;
            let identity = CertIdentity::Client { name: name.clone() };
            let issued = ca.issue(&identity, &[], Validity::days(days))?;
            (dir.unwrap_or(ca_dir), format!("client-{name}"), issued)
        }
    };
    let (cert, key) = issued.write(&dir, &stem)?;
    Ok(format!("{}\n{}\n", cert.display(), key.display()))
}
