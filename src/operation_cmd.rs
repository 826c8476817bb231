//! Long work from the command line: `isthmus repair`, `decommission` and
//! `rebuild` start an operation on a node, then follow it to its end with
//! a progress bar (or return its id at once with `--detach`);
//! `isthmus operations [ID]` and `isthmus repair|decommission|rebuild
//! status [ID]` show where operations stand.
//!
//! The node answers the request that starts the work at once with the
//! operation's id; the CLI then asks for it by id twice a second. No
//! request waits on the work itself, so no deadline cuts a long one off.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use isthmus_client::Session;
use isthmus_client::wire::{
    OperationInfo, OperationKind, OperationState, OperationsRequest, RequestBody, ResponseBody,
};

use crate::client_cmd::{Target, connect, format_repair, human_bytes};

/// How often a waiting CLI asks for its operation.
const POLL: Duration = Duration::from_millis(500);

/// `status [ID]` of `repair`, `decommission` and `rebuild`, and the
/// options of `isthmus operations`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// One operation by id; without, every operation of the kind the node
    /// remembers (the running ones and the last finished ones).
    pub id: Option<u64>,
    /// Where to ask.
    #[command(flatten)]
    pub target: Target,
    /// Print JSON (one object for an id, else an array).
    #[arg(long)]
    pub json: bool,
}

/// The `status` subcommand of `repair`, `decommission` and `rebuild`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum StatusCommand {
    /// Show the progress of the node's operations of this kind, or of one
    /// by id.
    Status(StatusArgs),
}

/// How a started operation is followed.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Follow {
    /// Return the operation's id at once instead of waiting for it to end
    /// (follow it with `status ID`).
    #[arg(long)]
    pub detach: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Start the work `body` asks for on the node, then follow it: with
/// `--detach`, print the operation and return; else wait for its end,
/// drawing a progress bar when stdout is a terminal (nothing when it is
/// not), and print the final report. `Ok(false)` when it finished with
/// ranges it could not sync.
pub fn run_start(target: Target, body: RequestBody, follow: Follow) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (session, timeout) = connect(&target).await?;
        let started = match session.call(body, timeout).await? {
            ResponseBody::Started(info) => info,
            other => bail!("unexpected answer {other:?}"),
        };
        if follow.detach {
            if follow.json {
                println!("{}", serde_json::to_string(&started)?);
            } else {
                println!(
                    "started {} {} on {}; follow it with `isthmus operations {}`",
                    started.kind.name(),
                    started.id,
                    target.addr,
                    started.id
                );
            }
            return Ok(true);
        }
        let done = wait(&target, session, started).await?;
        finish(done, follow.json)
    })
}

/// What a finished operation prints and exits with.
fn finish(done: OperationInfo, json: bool) -> anyhow::Result<bool> {
    match done.state {
        OperationState::Done => {
            print!("{}", format_repair(&done.progress, json));
            Ok(done.progress.ranges_failed == 0)
        }
        state => bail!(
            "{} {} {}: {}",
            done.kind.name(),
            done.id,
            state.name(),
            done.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

/// Ask for the operation until it has ended. A lost connection is opened
/// again (a few times in a row at most): the work goes on in the node
/// whatever happens to this process.
async fn wait(
    target: &Target,
    session: Session,
    started: OperationInfo,
) -> anyhow::Result<OperationInfo> {
    let bar = progress_bar(&started);
    let mut session = Some(session);
    let mut failures = 0;
    loop {
        tokio::time::sleep(POLL).await;
        if session.as_ref().is_none_or(|s| !s.is_open()) {
            session = connect(target).await.ok().map(|(s, _)| s);
        }
        let answer = match &session {
            Some(s) => s
                .call(
                    RequestBody::Operations(OperationsRequest::Get { id: started.id }),
                    Duration::from_millis(target.timeout_ms),
                )
                .await
                .map_err(anyhow::Error::from),
            None => Err(anyhow::anyhow!("cannot reach {}", target.addr)),
        };
        let info = match answer {
            Ok(ResponseBody::Operation(info)) => info,
            Ok(other) => bail!("unexpected answer {other:?}"),
            Err(e) => {
                failures += 1;
                session = None;
                if failures >= 20 {
                    bar.abandon();
                    return Err(e.context(format!(
                        "lost operation {} (it may go on in the node: `isthmus operations {} --addr {}`)",
                        started.id, started.id, target.addr
                    )));
                }
                continue;
            }
        };
        failures = 0;
        show(&bar, &info);
        if info.state != OperationState::Running {
            bar.finish_and_clear();
            return Ok(info);
        }
    }
}

/// A bar over the operation's planned range syncs, on stdout when it is a
/// terminal; hidden otherwise (scripts read the final report only).
fn progress_bar(info: &OperationInfo) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(info.ranges_total),
        if std::io::stdout().is_terminal() {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} ranges {msg}",
    )
    .expect("a valid template");
    bar.set_style(style);
    bar.set_prefix(format!("{} {}", info.kind.name(), info.id));
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn show(bar: &ProgressBar, info: &OperationInfo) {
    let p = &info.progress;
    bar.set_length(info.ranges_total);
    bar.set_position(p.ranges + p.ranges_failed);
    bar.set_message(format!(
        "{} failed, {} keys moved, {}",
        p.ranges_failed,
        p.keys_pulled + p.keys_pushed,
        human_bytes(p.bytes)
    ));
}

/// `status [ID]` and `isthmus operations [ID]`: one operation, or every
/// one of `kinds` (every kind when empty).
pub fn run_status(args: StatusArgs, kinds: &[OperationKind]) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (session, timeout) = connect(&args.target).await?;
        match args.id {
            Some(id) => {
                let request = RequestBody::Operations(OperationsRequest::Get { id });
                match session.call(request, timeout).await? {
                    ResponseBody::Operation(info) if args.json => {
                        Ok(format!("{}\n", serde_json::to_string(&info)?))
                    }
                    ResponseBody::Operation(info) => Ok(format_one(&info)),
                    other => bail!("unexpected answer {other:?}"),
                }
            }
            None => {
                let request = RequestBody::Operations(OperationsRequest::List);
                let list = match session.call(request, timeout).await? {
                    ResponseBody::Operations(list) => list,
                    other => bail!("unexpected answer {other:?}"),
                };
                let list: Vec<OperationInfo> = list
                    .into_iter()
                    .filter(|o| kinds.is_empty() || kinds.contains(&o.kind))
                    .collect();
                if args.json {
                    Ok(format!("{}\n", serde_json::to_string(&list)?))
                } else {
                    Ok(format_table(&list))
                }
            }
        }
    })
}

/// One operation, field by field.
fn format_one(o: &OperationInfo) -> String {
    let p = &o.progress;
    let mut out = format!(
        "id:             {}\nkind:           {}\nstate:          {}\n",
        o.id,
        o.kind.name(),
        o.state.name()
    );
    if let Some(ks) = &o.keyspace {
        out += &format!("keyspace:       {ks}\n");
    }
    if let Some(dc) = &o.dc {
        out += &format!("datacenter:     {dc}\n");
    }
    out += &format!(
        "ranges:         {} of {} ({} failed)\nkeys differing: {}\nkeys pulled:    {}\nkeys pushed:    {}\nbytes:          {} ({})\nrunning for:    {}\n",
        p.ranges,
        o.ranges_total,
        p.ranges_failed,
        p.keys_differing,
        p.keys_pulled,
        p.keys_pushed,
        p.bytes,
        human_bytes(p.bytes),
        duration(o)
    );
    if let Some(e) = &o.error {
        out += &format!("error:          {e}\n");
    }
    out
}

/// Operations as a table, oldest first.
fn format_table(list: &[OperationInfo]) -> String {
    if list.is_empty() {
        return "no operations\n".into();
    }
    let mut out = format!(
        "{:<16} {:<13} {:<10} {:>15} {:>7} {:>10} {:>10} {:>9}  {}\n",
        "ID", "KIND", "STATE", "RANGES", "FAILED", "KEYS", "BYTES", "TIME", "TARGET"
    );
    for o in list {
        let p = &o.progress;
        let target = match (&o.keyspace, &o.dc) {
            (Some(ks), Some(dc)) => format!("{ks} / {dc}"),
            (Some(ks), None) => ks.clone(),
            (None, Some(dc)) => dc.clone(),
            (None, None) => "-".into(),
        };
        out += &format!(
            "{:<16} {:<13} {:<10} {:>15} {:>7} {:>10} {:>10} {:>9}  {}\n",
            o.id,
            o.kind.name(),
            o.state.name(),
            format!("{}/{}", p.ranges + p.ranges_failed, o.ranges_total),
            p.ranges_failed,
            p.keys_pulled + p.keys_pushed,
            human_bytes(p.bytes),
            duration(o),
            target
        );
    }
    out
}

/// How long it ran (or has been running, on this machine's clock).
fn duration(o: &OperationInfo) -> String {
    let end = o.finished_ms.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    });
    format!("{:.1} s", end.saturating_sub(o.started_ms) as f64 / 1000.0)
}

/// Options of `isthmus repair`.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RepairArgs {
    /// `status [ID]`: the progress of the node's repairs and full syncs.
    #[command(subcommand)]
    pub command: Option<StatusCommand>,
    /// Node to repair (its ranges, with their other replicas).
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub addr: String,
    /// Deadline of each request, in milliseconds (the repair itself runs
    /// as long as it takes; the CLI follows it request by request).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Repair one keyspace only.
    #[arg(long)]
    pub keyspace: Option<String>,
    /// Fully sync with this other datacenter instead of repairing within
    /// the node's own.
    #[arg(long)]
    pub dc: Option<String>,
    /// Cancel the repair, full sync or other administrative operation
    /// running on the node instead (what it moved so far stays).
    #[arg(long, conflicts_with_all = ["keyspace", "dc", "detach"])]
    pub cancel: bool,
    /// Waiting or not, and JSON.
    #[command(flatten)]
    pub follow: Follow,
    /// TLS and credentials.
    #[command(flatten)]
    pub security: crate::client_cmd::Security,
}

/// `isthmus decommission`: the node hands its ranges to their next owners
/// and leaves the ring, as an operation the CLI follows to its end (or
/// not, with `--detach`); prints what moved.
pub fn run_decommission(target: Target, follow: Follow) -> anyhow::Result<bool> {
    run_start(target, RequestBody::Decommission, follow)
}

/// `isthmus repair`: run Merkle repair on a node now, follow it and print
/// what it did; `status [ID]` shows the progress of repairs and full
/// syncs. `Ok(false)` (exit status 1) when some range could not be synced.
pub fn run_repair(args: RepairArgs) -> anyhow::Result<(String, bool)> {
    let target = Target {
        addr: args.addr.clone(),
        timeout_ms: args.timeout_ms,
        security: args.security.clone(),
    };
    if let Some(StatusCommand::Status(status)) = args.command {
        let kinds = [OperationKind::Repair, OperationKind::FullSync];
        return Ok((run_status(status, &kinds)?, true));
    }
    if args.cancel {
        return Ok((crate::client_cmd::run_cancel(target)?, true));
    }
    let body = RequestBody::Repair {
        keyspace: args.keyspace.clone(),
        remote_dc: args.dc.clone(),
    };
    let complete = run_start(target, body, args.follow)?;
    Ok((String::new(), complete))
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_client::wire::RepairReport;

    fn op(state: OperationState) -> OperationInfo {
        OperationInfo {
            id: 42,
            kind: OperationKind::FullSync,
            keyspace: Some("carts".into()),
            dc: Some("dc2".into()),
            state,
            started_ms: 1_000,
            finished_ms: Some(3_500),
            ranges_total: 12,
            progress: RepairReport {
                ranges: 10,
                ranges_failed: 2,
                keys_pulled: 5,
                keys_pushed: 1,
                bytes: 2048,
                ..RepairReport::default()
            },
            error: None,
        }
    }

    #[test]
    fn operations_print_as_a_table_and_one_by_one() {
        let table = format_table(&[op(OperationState::Done)]);
        let row = table.lines().nth(1).unwrap();
        for field in [
            "42",
            "full_sync",
            "done",
            "12/12",
            "2.0 KiB",
            "2.5 s",
            "carts / dc2",
        ] {
            assert!(row.contains(field), "{field} in {row}");
        }
        let one = format_one(&op(OperationState::Running));
        assert!(one.contains("ranges:         10 of 12 (2 failed)"), "{one}");
        assert_eq!(format_table(&[]), "no operations\n");
    }

    #[test]
    fn a_finished_operation_reports_like_a_repair_and_a_failed_one_errs() {
        assert!(!finish(op(OperationState::Done), true).unwrap());
        let failed = OperationInfo {
            error: Some("a next owner is down".into()),
            ..op(OperationState::Failed)
        };
        let e = finish(failed, false).unwrap_err().to_string();
        assert!(
            e.contains("full_sync 42 failed: a next owner is down"),
            "{e}"
        );
    }
}
