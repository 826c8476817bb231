//! Client commands: `isthmus put|get|del|status|repair --addr HOST:PORT ...`.
//!
//! `put` and `del` first read the key (at the same level) and write over
//! the context they got, so a command-line write replaces what it saw
//! rather than adding a sibling next to it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use isthmus_client::tls::TlsMaterial;
use isthmus_client::wire::{
    BridgeReport, Consistency, Context, Credentials, Expiry, MergeFailureInfo, NodeReport,
    RepairReport, RequestBody, ResponseBody, SCAN_COUNT_MAX, ScanCursor, Sibling, WriteId,
};
use isthmus_client::{ConnectOptions, Session};

/// How a command reaches a node securely: the CA to trust and the
/// client's own certificate, by flag or environment variable.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Security {
    /// The cluster's CA certificate(s), PEM (`ca.pem` of `isthmus certs`).
    #[arg(long, env = "ISTHMUS_CA")]
    pub ca: Option<PathBuf>,
    /// A client certificate to present, PEM (with --key).
    #[arg(long, env = "ISTHMUS_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's key, PEM.
    #[arg(long, env = "ISTHMUS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Speak plaintext: only nodes configured with `insecure_plaintext`
    /// accept it.
    #[arg(long, conflicts_with = "ca")]
    pub insecure_plaintext: bool,
    /// User to log in as (its password from ISTHMUS_PASSWORD or
    /// --password-file; never on the command line).
    #[arg(long, env = "ISTHMUS_USER")]
    pub user: Option<String>,
    /// A file holding the user's password (trailing newline ignored).
    #[arg(long, env = "ISTHMUS_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
}

/// Read a password from a file, without its trailing newline.
pub fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

impl Security {
    /// What TLS trusts and presents (`None`: plaintext, asked for by
    /// name).
    pub fn material(&self) -> anyhow::Result<Option<TlsMaterial>> {
        match (&self.ca, self.insecure_plaintext) {
            (Some(ca), _) => {
                let own = self.cert.as_deref().zip(self.key.as_deref());
                Ok(Some(TlsMaterial::load(std::slice::from_ref(ca), own)?))
            }
            (None, true) => Ok(None),
            (None, false) => bail!(
                "no CA to trust: give --ca FILE (or ISTHMUS_CA), or --insecure-plaintext \
                 for a node that runs without TLS"
            ),
        }
    }

    /// Connection options for a client named `name`.
    pub fn options(&self, name: &str) -> anyhow::Result<ConnectOptions> {
        let tls = match self.material()? {
            Some(material) => Some(material.client_config()?),
            None => None,
        };
        let credentials = match &self.user {
            None => None,
            Some(user) => {
                let password = match (&self.password_file, std::env::var("ISTHMUS_PASSWORD")) {
                    (Some(path), _) => read_password(path)?,
                    (None, Ok(password)) => password,
                    (None, Err(_)) => {
                        bail!("--user {user} needs a password: ISTHMUS_PASSWORD or --password-file")
                    }
                };
                Some(Credentials {
                    user: user.clone(),
                    password,
                })
            }
        };
        Ok(ConnectOptions {
            name: name.to_owned(),
            tls,
            credentials,
        })
    }
}

/// Options every client command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Node to talk to.
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub addr: String,
    /// Request deadline in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// TLS and credentials.
    #[command(flatten)]
    pub security: Security,
}

/// Options of key commands.
#[derive(clap::Args, Debug, Clone)]
pub struct KeyArgs {
    /// Where to send the request.
    #[command(flatten)]
    pub target: Target,
    /// Keyspace of the key.
    #[arg(long, default_value = "default")]
    pub keyspace: String,
    /// Consistency level (ONE, LOCAL_ONE, LOCAL_QUORUM, QUORUM, EACH_QUORUM, ALL);
    /// the keyspace default when absent.
    #[arg(long)]
    pub consistency: Option<Consistency>,
}

/// Options of the commands that write (`put`, `del`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WriteArgs {
    /// Take a sloppy quorum for this write (with replicas down, the next
    /// healthy nodes of their datacenter keep the copy as a hint and count
    /// toward the level), whatever the keyspace's `sloppy_quorum` says.
    #[arg(long, conflicts_with = "strict")]
    pub sloppy: bool,
    /// Take a strict quorum for this write, whatever the keyspace says.
    #[arg(long)]
    pub strict: bool,
}

impl WriteArgs {
    /// The request's quorum choice (`None`: the keyspace's).
    pub fn sloppy(&self) -> Option<bool> {
        match (self.sloppy, self.strict) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// `isthmus put --ttl | --no-ttl`: the value's expiry.
pub fn expiry(ttl_s: Option<u64>, no_ttl: bool) -> Expiry {
    match (ttl_s, no_ttl) {
        (Some(s), _) => Expiry::AfterMs(s.saturating_mul(1000)),
        (None, true) => Expiry::Never,
        (None, false) => Expiry::KeyspaceDefault,
    }
}

/// `isthmus scan`: where and what to scan.
#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// Where to send the requests.
    #[command(flatten)]
    pub target: Target,
    /// The keyspace to scan.
    #[arg(long, default_value = "default")]
    pub keyspace: String,
    /// Keys per page asked of the node (1..=10000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=SCAN_COUNT_MAX as i64))]
    pub count: u32,
    /// Print only the keys matching this Redis glob (`*`, `?`, `[a-z]`,
    /// `\x`); the whole keyspace is still read.
    #[arg(long = "match", value_name = "GLOB")]
    pub pattern: Option<String>,
    /// Resume a scan from this cursor (what a failed scan printed).
    #[arg(long, default_value = "0")]
    pub cursor: ScanCursor,
    /// Print each key as a JSON string (escaped) instead of as it is.
    #[arg(long)]
    pub json: bool,
}

/// Scan a keyspace page by page, printing each page's keys (one per line)
/// as it arrives. A page that fails ends the command with the cursor to
/// resume from (`--cursor`, on this node or another).
pub fn run_scan(args: ScanArgs) -> anyhow::Result<u8> {
    use std::io::Write as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (session, timeout) = connect(&args.target).await?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut cursor = args.cursor;
        loop {
            let body = RequestBody::Scan {
                keyspace: args.keyspace.clone(),
                cursor: cursor.0,
                count: args.count,
            };
            let (keys, next) = match session.call(body, timeout).await {
                Ok(ResponseBody::ScanPage { keys, cursor }) => (keys, ScanCursor(cursor)),
                Ok(other) => bail!("unexpected answer {other:?}"),
                Err(e) => {
                    out.flush()?;
                    bail!("{e}; resume with --cursor {cursor}")
                }
            };
            for key in keys {
                if let Some(pattern) = &args.pattern
                    && !isthmus_core::redis::pattern::matches(pattern.as_bytes(), &key)
                {
                    continue;
                }
                let text = String::from_utf8_lossy(&key);
                if args.json {
                    writeln!(out, "{}", serde_json::Value::String(text.into_owned()))?;
                } else {
                    writeln!(out, "{text}")?;
                }
            }
            if next.is_end() {
                break;
            }
            cursor = next;
        }
        out.flush()?;
        Ok(0)
    })
}

/// What a client command does.
#[derive(Debug)]
pub enum Op {
    /// Print the live siblings.
    Get {
        /// The key.
        key: String,
        /// Print JSON instead of one value per line.
        json: bool,
    },
    /// Write a value over what is there.
    Put {
        /// The key.
        key: String,
        /// The value's bytes.
        value: Vec<u8>,
        /// When it expires.
        expiry: Expiry,
        /// The quorum choice.
        write: WriteArgs,
    },
    /// Delete what is there.
    Del {
        /// The key.
        key: String,
        /// The quorum choice.
        write: WriteArgs,
    },
}

pub async fn connect(target: &Target) -> anyhow::Result<(Session, Duration)> {
    let timeout = Duration::from_millis(target.timeout_ms);
    let options = target.security.options("isthmus-cli")?;
    let session = Session::connect_with(&target.addr, &options, timeout)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    Ok((session, timeout))
}

async fn read(
    session: &Session,
    args: &KeyArgs,
    key: &str,
    timeout: Duration,
) -> anyhow::Result<(Vec<Sibling>, Context, Option<MergeFailureInfo>)> {
    let body = RequestBody::Get {
        keyspace: args.keyspace.clone(),
        key: key.as_bytes().to_vec(),
        consistency: args.consistency,
    };
    match session.call(body, timeout).await? {
        ResponseBody::Value {
            siblings,
            context,
            merge_failure,
        } => Ok((siblings, context, merge_failure)),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// The line `isthmus get` prints (on stderr) when the keyspace's resolver
/// did not merge the siblings it shows.
fn not_merged(failure: &MergeFailureInfo) -> String {
    let resolver = failure
        .resolver
        .as_deref()
        .unwrap_or("the keyspace's resolver");
    format!(
        "not merged: {resolver} did not merge these siblings ({})",
        failure.class
    )
}

fn write_id() -> WriteId {
    WriteId(rand::random())
}

/// Run a key command; returns the text to print.
pub fn run_key(args: KeyArgs, op: Op) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (session, timeout) = connect(&args.target).await?;
        match op {
            Op::Get { key, json } => {
                let (siblings, context, failure) = read(&session, &args, &key, timeout).await?;
                if json {
                    let siblings: Vec<_> = siblings
                        .iter()
                        .map(|s| {
                            serde_json::json!({
                                "value": String::from_utf8_lossy(&s.value),
                                "timestamp_ms": s.timestamp_ms,
                                "origin_dc": s.origin_dc,
                                "expires_ms": s.expires_ms,
                            })
                        })
                        .collect();
                    let context: String = context.0.iter().map(|b| format!("{b:02x}")).collect();
                    Ok(format!(
                        "{}\n",
                        serde_json::json!({
                            "siblings": siblings,
                            "context": context,
                            "merge_failure": failure.map(|f| serde_json::json!({
                                "class": f.class.as_str(),
                                "resolver": f.resolver,
                            })),
                        })
                    ))
                } else {
                    // On stderr: stdout holds the values alone, one a line.
                    if let Some(failure) = failure {
                        eprintln!("{}", not_merged(&failure));
                    }
                    Ok(siblings
                        .iter()
                        .map(|s| format!("{}\n", String::from_utf8_lossy(&s.value)))
                        .collect())
                }
            }
            Op::Put {
                key,
                value,
                expiry,
                write,
            } => {
                let (_, context, _) = read(&session, &args, &key, timeout).await?;
                let body = RequestBody::Put {
                    mode: isthmus_client::wire::WriteMode::Context,
                    keyspace: args.keyspace.clone(),
                    key: key.into_bytes(),
                    value,
                    context,
                    consistency: args.consistency,
                    write_id: write_id(),
                    expiry,
                    sloppy: write.sloppy(),
                };
                session.call(body, timeout).await?;
                Ok(String::new())
            }
            Op::Del { key, write } => {
                let (_, context, _) = read(&session, &args, &key, timeout).await?;
                let body = RequestBody::Delete {
                    keyspace: args.keyspace.clone(),
                    key: key.into_bytes(),
                    context,
                    consistency: args.consistency,
                    write_id: write_id(),
                    sloppy: write.sloppy(),
                };
                session.call(body, timeout).await?;
                Ok(String::new())
            }
        }
    })
}

/// The most bytes `isthmus put --file` reads: past the frame cap no
/// node would take the value anyway.
pub const PUT_FILE_BYTES_MAX: u64 = isthmus_client::wire::frame::FRAME_BYTES_MAX_DEFAULT as u64;

/// The value `isthmus put` writes: the argument's bytes, or a file's
/// (`-`: stdin), read whole up to [`PUT_FILE_BYTES_MAX`].
pub fn value_of(value: Option<String>, file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let Some(path) = file else {
        return value.map(String::into_bytes).context("a value or --file");
    };
    let mut bytes = Vec::new();
    let read = if path == std::path::Path::new("-") {
        std::io::stdin()
            .lock()
            .take(PUT_FILE_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .context("reading the value from stdin")?
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(PUT_FILE_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?
    };
    if read as u64 > PUT_FILE_BYTES_MAX {
        bail!("the value is larger than {PUT_FILE_BYTES_MAX} bytes, more than any node accepts");
    }
    Ok(bytes)
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `isthmus status`: every node by datacenter and rack, like `nodetool status`.
pub fn run_status(target: Target, json: bool) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut nodes, bridges): (Vec<NodeReport>, Vec<BridgeReport>) = runtime.block_on(async {
        let (session, timeout) = connect(&target).await?;
        match session.call(RequestBody::Status, timeout).await? {
            ResponseBody::Status { nodes, bridges } => anyhow::Ok((nodes, bridges)),
            other => bail!("unexpected answer {other:?}"),
        }
    })?;
    nodes.sort_by(|a, b| (&a.dc, &a.rack, &a.node_id).cmp(&(&b.dc, &b.rack, &b.node_id)));
    if json {
        let rows: Vec<_> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node_id": n.node_id, "addr": n.addr, "dc": n.dc, "rack": n.rack,
                    "up": n.up, "status": n.status, "load_bytes": n.load_bytes, "hint_bytes": n.hint_bytes,
                    "ownership": n.ownership,
                })
            })
            .collect();
        let links: Vec<_> = bridges
            .iter()
            .map(|b| {
                serde_json::json!({
                    "remote_dc": b.remote_dc, "outbox_records": b.outbox_records,
                    "outbox_bytes": b.outbox_bytes, "shipped_records": b.shipped_records,
                    "raw_bytes": b.raw_bytes, "shipped_bytes": b.shipped_bytes,
                    "overflows": b.overflows, "full_sync_pending": b.full_sync_pending,
                    "lag_in_p50_ms": b.lag_in_p50_ms, "lag_in_p99_ms": b.lag_in_p99_ms,
                    "applied_in": b.applied_in, "quarantined": b.quarantined,
                    "quarantine_held": b.quarantine_held, "quarantine_bytes": b.quarantine_bytes,
                    "quarantine_overflows": b.quarantine_overflows,
                })
            })
            .collect();
        let doc = serde_json::json!({ "nodes": rows, "bridges": links });
        return Ok(format!("{doc}\n"));
    }
    let mut out = String::new();
    let mut dc = None;
    for n in &nodes {
        if dc != Some(&n.dc) {
            dc = Some(&n.dc);
            out.push_str(&format!("Datacenter: {}\n", n.dc));
            out.push_str("Status=Up/Down State=Normal/Joining/Leaving/Left\n");
            out.push_str(&format!(
                "{:<3} {:<22} {:<10} {:<8} {:>10} {:>7} {:>12}\n",
                "--", "Address", "Node", "Rack", "Load", "Owns", "Hints held"
            ));
        }
        let state = format!(
            "{}{}",
            if n.up { 'U' } else { 'D' },
            n.status.chars().next().unwrap_or('?')
        );
        out.push_str(&format!(
            "{:<3} {:<22} {:<10} {:<8} {:>10} {:>6.1}% {:>12}\n",
            state,
            n.addr,
            n.node_id,
            n.rack,
            human_bytes(n.load_bytes),
            n.ownership * 100.0,
            human_bytes(n.hint_bytes)
        ));
    }
    if !bridges.is_empty() {
        out.push_str("\nBridge (this node)\n");
        out.push_str(&format!(
            "{:<10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>10} {:>11}\n",
            "Remote DC",
            "Outbox",
            "Shipped",
            "Wire/raw",
            "Overflow",
            "Lag p50",
            "Lag p99",
            "Applied in",
            "Quarantine"
        ));
        for b in &bridges {
            let ratio = if b.raw_bytes == 0 {
                0.0
            } else {
                b.shipped_bytes as f64 / b.raw_bytes as f64
            };
            out.push_str(&format!(
                "{:<10} {:>10} {:>10} {:>10.2} {:>8} {:>7.1}ms {:>7.1}ms {:>10} {:>11}\n",
                b.remote_dc,
                b.outbox_records,
                b.shipped_records,
                ratio,
                format!(
                    "{}{}",
                    b.overflows,
                    if b.full_sync_pending { "*" } else { "" }
                ),
                b.lag_in_p50_ms,
                b.lag_in_p99_ms,
                b.applied_in,
                // Held now; `+N!` when N refused records found no room.
                format!(
                    "{}{}",
                    b.quarantine_held,
                    if b.quarantine_overflows > 0 {
                        format!("+{}!", b.quarantine_overflows)
                    } else {
                        String::new()
                    }
                )
            ));
        }
    }
    Ok(out)
}

/// The report as `isthmus repair` prints it.
pub(crate) fn format_repair(r: &RepairReport, json: bool) -> String {
    if json {
        return format!(
            "{}\n",
            serde_json::json!({
                "ranges": r.ranges, "ranges_failed": r.ranges_failed,
                "keys_differing": r.keys_differing, "keys_pulled": r.keys_pulled,
                "keys_pushed": r.keys_pushed, "bytes": r.bytes,
            })
        );
    }
    format!(
        "ranges synced:  {}\nranges failed:  {}\nkeys differing: {}\nkeys pulled:    {}\nkeys pushed:    {}\nbytes:          {} ({})\n",
        r.ranges,
        r.ranges_failed,
        r.keys_differing,
        r.keys_pulled,
        r.keys_pushed,
        r.bytes,
        human_bytes(r.bytes)
    )
}

/// `--cancel` of `isthmus repair` and `isthmus decommission`: stop the
/// administrative operation running on the node; says what it was.
pub fn run_cancel(target: Target) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (session, timeout) = connect(&target).await?;
        match session.call(RequestBody::Cancel, timeout).await? {
            ResponseBody::Cancelled {
                operation: Some(what),
            } => Ok(format!("cancelled {what} on {}\n", target.addr)),
            ResponseBody::Cancelled { operation: None } => {
                Ok(format!("nothing was running on {}\n", target.addr))
            }
            other => bail!("unexpected answer {other:?}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_reports_print_as_text_and_json() {
        let r = RepairReport {
            ranges: 64,
            ranges_failed: 0,
            keys_differing: 3,
            keys_pulled: 2,
            keys_pushed: 1,
            bytes: 4096,
        };
        let text = format_repair(&r, false);
        assert!(
            text.contains("keys differing: 3") && text.contains("4.0 KiB"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&format_repair(&r, true)).unwrap();
        assert_eq!(json["keys_pushed"], 1);
        assert_eq!(json["bytes"], 4096);
    }
}
