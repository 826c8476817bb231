//! The `isthmus` binary.
//!
//! - `demo`: the main job, a local two-datacenter cluster doing real work.
//! - `bench`, `bench-bridge`: load against a cluster; the cross-DC bridge
//!   measured on a local two-DC cluster.
//! - `server --config FILE`: run one node.
//! - `certs ca|node|client`: a cluster CA and its certificates.
//! - `user add|passwd|grant|revoke|remove|list`: users and grants.
//! - `put`, `get`, `del`, `status`: client commands against a node.
//! - `repair`: Merkle repair of a node's ranges (or a cross-DC full sync).
//! - `pre-stop`: a Kubernetes pod's preStop hook (decommission on a
//!   scale-down, nothing on a restart).
//! - `bridge quarantine list|export|replay`: records another datacenter
//!   refused for good, held by a node's bridge.
//! - `resolver check FILE.wasm`: the law checker for merge modules;
//!   `resolver upload|attach|detach|rollback|delete|list --addr HOST:PORT`: the
//!   cluster's replicated resolver registry.
//!
//! `demo`, `bench` and `bench-bridge` are the `demo` feature (on by
//! default): they run on `isthmus-testkit`'s in-process cluster. A server
//! build without it (`--no-default-features`) links neither the testkit
//! nor the example resolvers.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "demo")]
mod bench_cmd;
#[cfg(feature = "demo")]
mod bridge_bench;
mod bridge_cmd;
mod certs_cmd;
mod client_cmd;
mod cluster_cmd;
#[cfg(feature = "demo")]
mod demo;
mod operation_cmd;
mod prestop_cmd;
mod resolver_cmd;
mod resolver_scaffold;
mod resolver_stats;
mod server_cmd;
mod user_cmd;

/// mimalloc: thread-local heaps, where glibc's malloc made the runtime's
/// threads contend on its arena locks (a node allocates on every request).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Isthmus: a multi-datacenter key-value store with WebAssembly merge functions.
#[derive(Parser, Debug)]
#[command(name = "isthmus", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run two datacenters of three nodes locally, shop, take one
    /// datacenter down and back, and audit that nothing was lost.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Run one node.
    Server(server_cmd::ServerArgs),
    /// YCSB-style load against a running cluster (ops/s, p50/p99/p999).
    #[cfg(feature = "demo")]
    Bench(bench_cmd::BenchArgs),
    /// Measure the cross-DC bridge on a local two-DC cluster: lag, bytes
    /// per write, catch-up after an outage.
    #[cfg(feature = "demo")]
    BenchBridge(bridge_bench::BridgeBenchArgs),
    /// Print the live siblings of a key, one per line (nothing when absent).
    Get {
        #[command(flatten)]
        args: client_cmd::KeyArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The key.
        #[arg(id = "target_key", value_name = "KEY")]
        key: String,
    },
    /// Write a value over whatever the key holds: the VALUE argument, or
    /// the bytes of a file (`--file PATH`; `--file -` reads stdin), so
    /// binary values can be written.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["value", "file"])))]
    Put {
        #[command(flatten)]
        args: client_cmd::KeyArgs,
        /// The key.
        #[arg(id = "target_key", value_name = "KEY")]
        key: String,
        /// The value, as given.
        value: Option<String>,
        /// Read the value from this file (`-`: stdin), byte for byte.
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
        /// Expire the value this many seconds after the node receives it,
        /// instead of at the keyspace's `ttl_s`.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=(u64::MAX / 1000)), conflicts_with = "no_ttl")]
        ttl: Option<u64>,
        /// Never expire the value, whatever the keyspace's `ttl_s`.
        #[arg(long)]
        no_ttl: bool,
        #[command(flatten)]
        write: client_cmd::WriteArgs,
    },
    /// Print every live key of a keyspace, one per line, unordered (a
    /// cursor-based scan, page by page; keys written during the scan may
    /// or may not appear).
    Scan(client_cmd::ScanArgs),
    /// Delete a key.
    Del {
        #[command(flatten)]
        args: client_cmd::KeyArgs,
        /// The key.
        #[arg(id = "target_key", value_name = "KEY")]
        key: String,
        #[command(flatten)]
        write: client_cmd::WriteArgs,
    },
    /// Show every node by datacenter and rack, with state, load and
    /// ownership; with --cluster, every node's view of every other, with
    /// the members whose views disagree marked.
    Status {
        #[command(flatten)]
        target: client_cmd::Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Ask every node the target knows for its view, side by side.
        #[arg(long)]
        cluster: bool,
    },
    /// Repair a node's ranges with their other live replicas now (Merkle
    /// trees: only differing keys move), or fully sync it with another
    /// datacenter with --dc; waits with a progress bar and prints what
    /// moved (--detach: returns the operation id at once). `repair status
    /// [ID]` shows progress.
    Repair(operation_cmd::RepairArgs),
    /// Rebuild a node's replicas from other datacenters: every range it
    /// owns, pulled from a live replica there (Cassandra's `nodetool
    /// rebuild`). For fresh nodes replacing a datacenter lost for good;
    /// the node is not ready until it is done. `rebuild status [ID]`
    /// shows progress.
    Rebuild(RebuildArgs),
    /// The long work of a node (repairs, full syncs, decommission, join,
    /// rebuilds): the running operations and the last finished ones, or
    /// one by id, with their progress.
    Operations(operation_cmd::StatusArgs),
    /// The cross-DC bridge: records another datacenter refused for good
    /// (`quarantine list|export|replay`).
    Bridge {
        #[command(subcommand)]
        command: bridge_cmd::BridgeCommand,
    },
    /// Take a node out of the ring: it streams every range it holds to
    /// the next owners, then leaves (status `Left`); stop it afterwards.
    /// Waits with a progress bar (--detach: returns the operation id at
    /// once); `decommission status [ID]` shows progress.
    #[command(args_conflicts_with_subcommands = true)]
    Decommission {
        /// `status [ID]`: the progress of the node's decommission.
        #[command(subcommand)]
        command: Option<operation_cmd::StatusCommand>,
        #[command(flatten)]
        target: client_cmd::Target,
        /// Waiting or not, and JSON.
        #[command(flatten)]
        follow: operation_cmd::Follow,
        /// Cancel the decommission running on the node instead: it goes
        /// back to normal, a member still.
        #[arg(long, conflicts_with = "detach")]
        cancel: bool,
    },
    /// A StatefulSet pod's preStop hook: decommission the local node when
    /// the StatefulSet was scaled down past this pod, nothing on a restart.
    PreStop(prestop_cmd::PreStopArgs),
    /// Work with resolver (merge function) modules.
    Resolver {
        #[command(subcommand)]
        command: resolver_cmd::ResolverCommand,
    },
    /// Manage users and their grants.
    User {
        #[command(subcommand)]
        command: user_cmd::UserCommand,
    },
    /// Create a cluster CA and issue node and client certificates.
    Certs {
        #[command(subcommand)]
        command: certs_cmd::CertsCommand,
    },
}

/// Options of `isthmus rebuild`.
#[derive(clap::Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
struct RebuildArgs {
    /// `status [ID]`: the progress of the node's rebuilds.
    #[command(subcommand)]
    command: Option<operation_cmd::StatusCommand>,
    /// The node to rebuild.
    #[command(flatten)]
    target: client_cmd::Target,
    /// The datacenter to pull from (default: every other datacenter the
    /// node's keyspaces replicate to).
    #[arg(long)]
    from_dc: Option<String>,
    /// Waiting or not, and JSON.
    #[command(flatten)]
    follow: operation_cmd::Follow,
}

/// An operation's outcome as an exit status: 0, or 1 when it finished
/// with ranges it could not sync.
fn complete(result: anyhow::Result<bool>) -> anyhow::Result<u8> {
    result.map(|complete| if complete { 0 } else { 1 })
}

/// Print a command's output; exit status 0.
fn print(output: anyhow::Result<String>) -> anyhow::Result<u8> {
    print!("{}", output?);
    Ok(0)
}

/// Log to stderr in `format`, at `default_level` unless `RUST_LOG` says
/// otherwise.
pub(crate) fn init_logs(format: isthmus_core::config::LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_level.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        isthmus_core::config::LogFormat::Text => logs.init(),
        isthmus_core::config::LogFormat::Json => logs.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs as its configuration says, once it has read it.
    if !matches!(cli.command, Command::Server(_)) {
        init_logs(isthmus_core::config::LogFormat::Text, "warn");
    }
    let result = match cli.command {
        Command::Resolver { command } => resolver_cmd::run(command),
        Command::Certs { command } => print(certs_cmd::run(command)),
        Command::Bridge { command } => print(bridge_cmd::run(command)),
        Command::User { command } => print(user_cmd::run(command)),
        #[cfg(feature = "demo")]
        Command::Bench(args) => print(bench_cmd::run(args)),
        #[cfg(feature = "demo")]
        Command::BenchBridge(args) => bridge_bench::run(args).map(|()| 0),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args).map(|ok| if ok { 0 } else { 1 }),
        Command::Server(args) => server_cmd::run(args).map(|()| 0),
        Command::Get { args, json, key } => {
            print(client_cmd::run_key(args, client_cmd::Op::Get { key, json }))
        }
        Command::Put {
            args,
            key,
            value,
            file,
            ttl,
            no_ttl,
            write,
        } => print(
            client_cmd::value_of(value, file.as_deref()).and_then(|value| {
                let expiry = client_cmd::expiry(ttl, no_ttl);
                client_cmd::run_key(
                    args,
                    client_cmd::Op::Put {
                        key,
                        value,
                        expiry,
                        write,
                    },
                )
            }),
        ),
        Command::Scan(args) => client_cmd::run_scan(args),
        Command::Del { args, key, write } => print(client_cmd::run_key(
            args,
            client_cmd::Op::Del { key, write },
        )),
        Command::Status {
            target,
            json,
            cluster: false,
        } => print(client_cmd::run_status(target, json)),
        Command::Status {
            target,
            json,
            cluster: true,
        } => print(cluster_cmd::run(target, json)),
        Command::Decommission {
            command: Some(operation_cmd::StatusCommand::Status(args)),
            ..
        } => print(operation_cmd::run_status(
            args,
            &[isthmus_client::wire::OperationKind::Decommission],
        )),
        Command::Decommission {
            target,
            cancel: true,
            ..
        } => print(client_cmd::run_cancel(target)),
        Command::Decommission { target, follow, .. } => {
            complete(operation_cmd::run_decommission(target, follow))
        }
        Command::Rebuild(RebuildArgs {
            command: Some(operation_cmd::StatusCommand::Status(args)),
            ..
        }) => print(operation_cmd::run_status(
            args,
            &[isthmus_client::wire::OperationKind::Rebuild],
        )),
        Command::Rebuild(args) => complete(operation_cmd::run_start(
            args.target,
            isthmus_client::wire::RequestBody::Rebuild {
                from_dc: args.from_dc,
            },
            args.follow,
        )),
        Command::Operations(args) => print(operation_cmd::run_status(args, &[])),
        Command::PreStop(args) => print(prestop_cmd::run(args)),
        Command::Repair(args) => operation_cmd::run_repair(args).map(|(out, complete)| {
            print!("{out}");
            if complete { 0 } else { 1 }
        }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's own consistency checks over every subcommand (unique
    /// argument names, valid groups and requirements); in a release build
    /// a clash would not panic but silently mix two arguments up.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
