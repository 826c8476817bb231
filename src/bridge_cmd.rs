//! `isthmus bridge quarantine list|export|replay`: the records another
//! datacenter refused for good (a keyspace it does not know, a value over
//! its limit), kept in a node's bridge quarantine. Each node keeps its own
//! (the records of the writes it coordinated): run the commands against
//! every node of the sending datacenter.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use isthmus_client::wire::{
    QuarantinePosition, QuarantineRequest, QuarantineResponse, QuarantinedRecord, RequestBody,
    ResponseBody,
};

use crate::client_cmd::{Target, connect};

/// `isthmus bridge …`.
#[derive(Subcommand, Debug)]
pub enum BridgeCommand {
    /// Records another datacenter refused for good, held by a node.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
}

/// `isthmus bridge quarantine …`.
#[derive(Subcommand, Debug)]
pub enum QuarantineCommand {
    /// List the records a node holds: datacenter, id, keyspace, key, and
    /// why they were refused.
    List {
        #[command(flatten)]
        target: Target,
        /// One remote datacenter only.
        #[arg(long)]
        dc: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Write the records a node holds, whole, to a file of JSON lines
    /// (`record_hex` is the outbox record as the bridge encodes it). The
    /// file must not exist.
    Export {
        #[command(flatten)]
        target: Target,
        /// One remote datacenter only.
        #[arg(long)]
        dc: Option<String>,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Ship records to their datacenter again (once the cause is fixed
    /// there: the keyspace created, the limit raised) and remove them
    /// from the quarantine. A record refused again comes back to it.
    Replay {
        #[command(flatten)]
        target: Target,
        /// The remote datacenter.
        #[arg(long)]
        dc: String,
        /// Record ids (from `list`); repeat the flag for several.
        #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<u64>,
        /// Every record held for the datacenter.
        #[arg(long)]
        all: bool,
    },
}

/// Run a bridge command; returns what to print.
pub fn run(command: BridgeCommand) -> anyhow::Result<String> {
    let BridgeCommand::Quarantine { command } = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            QuarantineCommand::List { target, dc, json } => {
                let records = list_all(&target, dc, false).await?;
                Ok(format_list(&records, json))
            }
            QuarantineCommand::Export { target, dc, out } => {
                let records = list_all(&target, dc, true).await?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&out)
                    .with_context(|| format!("creating {}", out.display()))?;
                let mut text = String::new();
                for r in &records {
                    text.push_str(&json_line(r).to_string());
                    text.push('\n');
                }
                file.write_all(text.as_bytes())
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("writing {}", out.display()))?;
                Ok(format!(
                    "exported {} record(s) to {}\n",
                    records.len(),
                    out.display()
                ))
            }
            QuarantineCommand::Replay {
                target,
                dc,
                ids,
                all: _,
            } => {
                let (session, timeout) = connect(&target).await?;
                let body = RequestBody::Quarantine(QuarantineRequest::Replay {
                    dc: dc.clone(),
                    ids,
                });
                match session.call(body, timeout).await? {
                    ResponseBody::Quarantine(QuarantineResponse::Replayed {
                        replayed,
                        missing,
                    }) => {
                        let mut out = format!("replayed {replayed} record(s) to {dc}\n");
                        if !missing.is_empty() {
                            let ids: Vec<String> = missing.iter().map(u64::to_string).collect();
                            out.push_str(&format!("not held: {}\n", ids.join(", ")));
                        }
                        Ok(out)
                    }
                    other => bail!("unexpected answer {other:?}"),
                }
            }
        }
    })
}

/// Every record the node holds, page by page.
async fn list_all(
    target: &Target,
    dc: Option<String>,
    records: bool,
) -> anyhow::Result<Vec<QuarantinedRecord>> {
    let (session, timeout) = connect(target).await?;
    let mut after: Option<QuarantinePosition> = None;
    let mut all = Vec::new();
    loop {
        let body = RequestBody::Quarantine(QuarantineRequest::List {
            dc: dc.clone(),
            after: after.clone(),
            records,
        });
        match session.call(body, timeout).await? {
            ResponseBody::Quarantine(QuarantineResponse::Listing { records, next }) => {
                all.extend(records);
                match next {
                    Some(n) if Some(&n) != after.as_ref() => after = Some(n),
                    _ => return Ok(all),
                }
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key as text when it is printable UTF-8, else `0x…`.
fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => format!("0x{}", hex(key)),
    }
}

fn json_line(r: &QuarantinedRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "dc": r.dc, "id": r.id, "quarantined_ms": r.quarantined_ms,
        "keyspace": r.keyspace, "key": key_text(&r.key), "key_hex": hex(&r.key),
        "code": r.code.name(), "message": r.message, "seq": r.seq,
        "timestamp_ms": r.timestamp_ms, "tombstone": r.tombstone, "value_bytes": r.value_bytes,
    });
    if let Some(record) = &r.record {
        v["record_hex"] = serde_json::Value::String(hex(record));
    }
    v
}

/// The listing as `isthmus bridge quarantine list` prints it.
fn format_list(records: &[QuarantinedRecord], json: bool) -> String {
    let mut out = String::new();
    if json {
        for r in records {
            out.push_str(&json_line(r).to_string());
            out.push('\n');
        }
        return out;
    }
    if records.is_empty() {
        return "no quarantined records\n".into();
    }
    out.push_str(&format!(
        "{:<10} {:>6} {:<16} {:<24} {:<18} {}\n",
        "Remote DC", "Id", "Keyspace", "Key", "Code", "Message"
    ));
    for r in records {
        out.push_str(&format!(
            "{:<10} {:>6} {:<16} {:<24} {:<18} {}\n",
            r.dc,
            r.id,
            r.keyspace,
            key_text(&r.key),
            r.code.name(),
            r.message
        ));
    }
    out.push_str(&format!("{} record(s)\n", records.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_client::wire::ErrorCode;

    fn record() -> QuarantinedRecord {
        QuarantinedRecord {
            dc: "dc2".into(),
            id: 7,
            quarantined_ms: 1_700_000_000_000,
            keyspace: "orders".into(),
            key: vec![0, 1, 0xff],
            code: ErrorCode::BadRequest,
            message: "unknown keyspace \"orders\"".into(),
            seq: 42,
            timestamp_ms: 1_699_999_999_000,
            tombstone: false,
            value_bytes: 3,
            record: Some(vec![0xab, 0xcd]),
        }
    }

    #[test]
    fn listings_print_as_text_and_json_lines() {
        let text = format_list(&[record()], false);
        assert!(
            text.contains("dc2") && text.contains("0x0001ff") && text.contains("BAD_REQUEST"),
            "{text}"
        );
        let line: serde_json::Value =
            serde_json::from_str(format_list(&[record()], true).trim()).unwrap();
        assert_eq!(line["id"], 7);
        assert_eq!(line["key_hex"], "0001ff");
        assert_eq!(line["record_hex"], "abcd");
        assert_eq!(line["code"], "BAD_REQUEST");
        assert_eq!(format_list(&[], false), "no quarantined records\n");
    }
}
