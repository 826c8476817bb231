//! `isthmus resolver …`: tooling for resolver modules: the law checker,
//! one merge run locally (`call`), and the cluster's resolver registry
//! (upload, attach (everywhere or as a canary), promote, detach, rollback,
//! pause, resume, delete, list) through any node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use isthmus_client::wire::{
    BindingInfo, BoundResolver, CanaryInfo, ErrorCode, LawCheckOutcome, RegistryRequest,
    RegistryResponse, RequestBody, ResolverInfo, ResponseBody,
};
use isthmus_client::{ClientError, Session};
use isthmus_resolvers::check::{CheckOptions, check};
use isthmus_resolvers::host::hex;
use isthmus_resolvers::{Host, ResolverLimits};

use crate::resolver_scaffold::{SdkSource, build, scaffold};

/// Where registry commands go.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Node to talk to (any node: the registry is replicated to all).
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub addr: String,
    /// Request deadline in milliseconds (an upload runs the law checker
    /// on the node; a node caps a request at 30 s).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// TLS and credentials.
    #[command(flatten)]
    pub security: crate::client_cmd::Security,
}

/// Resolver subcommands.
#[derive(Subcommand, Debug)]
pub enum ResolverCommand {
    /// Check that a module's merge is a join (commutative, associative,
    /// idempotent, deterministic) by running it in the real host on
    /// generated sibling sets. Exit status 0 only if every law holds, 1 if
    /// one fails (with a counterexample), 2 if the module cannot be loaded.
    Check {
        /// The resolver module (`.wasm`, built for wasm32-unknown-unknown).
        file: PathBuf,
        /// Seed of the generated cases (printed; default: random).
        #[arg(long)]
        seed: Option<u64>,
        /// Sibling sets generated per set size (2, 3 and 4 siblings).
        #[arg(long, default_value_t = 48)]
        cases: usize,
        /// Extra values to merge: one per line, `0x…` lines are hex, lines
        /// starting with `#` and empty lines are skipped.
        #[arg(long)]
        corpus: Option<PathBuf>,
    },
    /// Run one merge of a module locally, in the same host a node runs,
    /// and print its output, the fuel it used and the time it took. Exit
    /// status 0 when it merged, 1 when the merge failed (the failure class
    /// and message are printed), 2 when the module or the siblings cannot
    /// be read.
    Call {
        /// The resolver module (`.wasm`, built for wasm32-unknown-unknown).
        file: PathBuf,
        /// The siblings, as JSON (or `@PATH` to read them from a file): an
        /// array whose items are a string (a value), `null` (a tombstone),
        /// or an object with `value` (text) or `value_hex`, or
        /// `"tombstone": true`, and optionally `timestamp_ms` and
        /// `origin_dc`. Each sibling gets its own writer, so all are
        /// concurrent.
        #[arg(long)]
        siblings: String,
        /// The key the merge is told it is merging.
        #[arg(long, default_value = "key")]
        key: String,
    },
    /// Write a new resolver crate (a set-union merge, its law-checker unit
    /// test, a release profile for small modules, a small shadow stack and
    /// a README) that builds as it stands. Refuses a directory that exists
    /// and is not empty.
    New {
        /// Crate and resolver name (an ASCII letter, then letters, digits,
        /// `-`, `_`).
        name: String,
        /// Where to write it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on the SDK at this path (a checkout's `sdk-wasm`)
        /// instead of `isthmus-sdk-wasm = "0.1"` from crates.io.
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Build the resolver crate in --dir for wasm32-unknown-unknown
    /// (release), then run the law checker on the module, as `check` does.
    /// Exit status 0 when it built and passed, 1 when the check failed, 2
    /// when the build failed.
    Build {
        /// The crate's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Seed of the check's generated cases (default: random).
        #[arg(long)]
        seed: Option<u64>,
        /// Sibling sets generated per set size (2, 3 and 4 siblings).
        #[arg(long, default_value_t = 48)]
        cases: usize,
    },
    /// Register a module in the cluster as NAME@VERSION. The node loads it
    /// and runs the law checker; a module that fails is refused (exit
    /// status 1) unless --force, which records the override.
    Upload {
        #[command(flatten)]
        node: NodeArgs,
        /// Resolver name (letters, digits, `.`, `_`, `-`).
        #[arg(long)]
        name: String,
        /// Version number (a name and version hold one module forever).
        #[arg(long)]
        version: u32,
        /// Register even if the law check fails.
        #[arg(long)]
        force: bool,
        /// The module (`.wasm`, built for wasm32-unknown-unknown).
        file: PathBuf,
    },
    /// Bind a keyspace to a registered NAME@VERSION on every node; with
    /// --canary-dc and/or --canary-share, only in that scope (a canary,
    /// which the nodes in scope roll back themselves when its failure
    /// rate passes --canary-failure-rate-max over --canary-window-ms,
    /// once --canary-merges-min merges ran). `resolver promote` makes a
    /// canary the binding everywhere, `resolver rollback` drops it.
    Attach {
        #[command(flatten)]
        node: NodeArgs,
        /// The keyspace.
        #[arg(long)]
        keyspace: String,
        /// The resolver, NAME@VERSION.
        resolver: String,
        /// Canary: only merges on nodes of this datacenter use it.
        #[arg(long)]
        canary_dc: Option<String>,
        /// Canary: only keys in this share (more than 0, at most 1) of the
        /// key-hash space use it.
        #[arg(long)]
        canary_share: Option<f64>,
        /// Canary: the window its failure rate is measured over
        /// (1000 to 3600000 ms; default 60000).
        #[arg(long)]
        canary_window_ms: Option<u64>,
        /// Canary: merges the window must hold before the rate is judged
        /// (1 to 1000000; default 20).
        #[arg(long)]
        canary_merges_min: Option<u64>,
        /// Canary: the failure rate (failed / attempted merges, more than
        /// 0, at most 1) past which it is rolled back (default 0.1).
        #[arg(long)]
        canary_failure_rate_max: Option<f64>,
    },
    /// Make a keyspace's canary its binding on every node.
    Promote {
        #[command(flatten)]
        node: NodeArgs,
        /// The keyspace.
        #[arg(long)]
        keyspace: String,
    },
    /// Pause a keyspace's merges: siblings are kept (and returned to
    /// readers) until `resolver resume`.
    Pause {
        #[command(flatten)]
        node: NodeArgs,
        /// The keyspace.
        #[arg(long)]
        keyspace: String,
    },
    /// Merge a paused keyspace again.
    Resume {
        #[command(flatten)]
        node: NodeArgs,
        /// The keyspace.
        #[arg(long)]
        keyspace: String,
    },
    /// Unbind a keyspace (its siblings are then kept for clients).
    Detach {
        #[command(flatten)]
        node: NodeArgs,
        /// The keyspace.
        #[arg(long)]
        keyspace: String,
    },
    /// Restore a keyspace's previous binding; with a canary on, drop the
    /// canary (the binding elsewhere stays).
    Rollback {
        #[command(flatten)]
        node: NodeArgs,
        /// The keyspace.
        #[arg(long)]
        keyspace: String,
    },
    /// Delete a registered NAME@VERSION that no keyspace uses (bound now,
    /// in the binding history a rollback returns to, or as a keyspace's
    /// configured default), from every node. Needs the admin permission.
    Delete {
        #[command(flatten)]
        node: NodeArgs,
        /// The resolver, NAME@VERSION.
        resolver: String,
    },
    /// List registered resolvers (name, version, hash, size, law check)
    /// and keyspace bindings, as the node's replica holds them; then the
    /// merges, failures by class, fuel and time p50/p99 per keyspace and
    /// resolver, summed over every node that answers.
    List {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Node by node, in every DC: whether its registry holds NAME@VERSION,
    /// the keyspaces bound to it, its merges, failures and failure rate
    /// (a node that does not answer is shown as such).
    Status {
        #[command(flatten)]
        node: NodeArgs,
        /// The resolver, NAME@VERSION.
        resolver: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Send one registry request.
fn call(node: &NodeArgs, request: RegistryRequest) -> Result<RegistryResponse, ClientError> {
    let options = node
        .security
        .options("isthmus-cli")
        .map_err(|e| ClientError::Tls {
            addr: node.addr.clone(),
            reason: format!("{e:#}"),
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Connect {
            addr: node.addr.clone(),
            reason: format!("starting the async runtime: {e}"),
        })?;
    runtime.block_on(async {
        let timeout = Duration::from_millis(node.timeout_ms);
        let session = Session::connect_with(&node.addr, &options, timeout).await?;
        match session
            .call(RequestBody::Registry(request), timeout)
            .await?
        {
            ResponseBody::Registry(answer) => Ok(answer),
            other => Err(ClientError::Handshake {
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    })
}

fn short(hash: &[u8]) -> String {
    hex(&hash[..8.min(hash.len())])
}

fn resolver_name(r: &Option<BoundResolver>) -> String {
    match r {
        Some(r) => format!("{}@{}", r.name, r.version),
        None => "(none)".into(),
    }
}

fn law_check_text(outcome: &LawCheckOutcome) -> String {
    match outcome {
        LawCheckOutcome::Passed { seed } => format!("passed (seed {seed})"),
        LawCheckOutcome::Overridden { seed, violations } => format!(
            "FAILED, overridden (seed {seed}): {}",
            violations.join("; ")
        ),
    }
}

fn format_binding(b: &BindingInfo) -> String {
    let hash = b
        .current
        .as_ref()
        .and_then(|r| r.hash)
        .map_or_else(|| "-".into(), |h| short(&h));
    let mut out = format!(
        "{} -> {} (blake3 {hash})\n",
        b.keyspace,
        resolver_name(&b.current)
    );
    if let Some(c) = &b.canary {
        out.push_str(&format!("canary: {}\n", canary_text(c)));
    }
    if b.paused {
        out.push_str("paused: siblings are kept\n");
    }
    out
}

fn ppm_text(ppm: u32) -> String {
    format!("{}", f64::from(ppm) / 1e6)
}

/// A canary in one line: resolver, scope and guard.
fn canary_text(c: &CanaryInfo) -> String {
    let mut scope = Vec::new();
    if let Some(dc) = &c.dc {
        scope.push(format!("dc {dc}"));
    }
    if let Some(share) = c.share_ppm {
        scope.push(format!("share {}", ppm_text(share)));
    }
    format!(
        "{} in {}; rolled back past failure rate {} over {} ms (at least {} merges)",
        resolver_name(&Some(c.resolver.clone())),
        scope.join(" and "),
        ppm_text(c.failure_rate_max_ppm),
        c.window_ms,
        c.merges_min
    )
}

/// A fraction given on the command line, in millionths; `flag` names it
/// in the error.
fn fraction_ppm(flag: &str, value: f64) -> anyhow::Result<u32> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0 && value <= 1.0,
        "{flag}: {value} is not more than 0 and at most 1"
    );
    Ok((value * 1e6).round() as u32)
}

/// `isthmus resolver list` output.
fn format_listing(resolvers: &[ResolverInfo], bindings: &[BindingInfo], json: bool) -> String {
    if json {
        let resolvers: Vec<_> = resolvers
            .iter()
            .map(|r| {
                let (outcome, seed, violations) = match &r.law_check {
                    LawCheckOutcome::Passed { seed } => ("passed", seed, &[][..]),
                    LawCheckOutcome::Overridden { seed, violations } => {
                        ("overridden", seed, &violations[..])
                    }
                };
                serde_json::json!({
                    "name": r.name, "version": r.version, "hash": hex(&r.hash),
                    "module_bytes": r.module_bytes,
                    "law_check": { "outcome": outcome, "seed": seed, "violations": violations },
                })
            })
            .collect();
        let bound = |r: &Option<BoundResolver>| {
            r.as_ref().map(|r| {
                serde_json::json!({
                    "name": r.name, "version": r.version, "hash": r.hash.map(|h| hex(&h)),
                })
            })
        };
        let bindings: Vec<_> = bindings
            .iter()
            .map(|b| {
                serde_json::json!({
                    "keyspace": b.keyspace,
                    "current": bound(&b.current),
                    "history": b.history.iter().map(bound).collect::<Vec<_>>(),
                    "source": if b.from_config { "config" } else { "registry" },
                    "canary": b.canary.as_ref().map(|c| serde_json::json!({
                        "resolver": bound(&Some(c.resolver.clone())),
                        "dc": c.dc,
                        "share": c.share_ppm.map(|p| f64::from(p) / 1e6),
                        "window_ms": c.window_ms,
                        "merges_min": c.merges_min,
                        "failure_rate_max": f64::from(c.failure_rate_max_ppm) / 1e6,
                        "since_ms": c.since_ms,
                    })),
                    "paused": b.paused,
                    "events": b.events.iter().map(|e| serde_json::json!({
                        "at_ms": e.at_ms, "note": e.note,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return format!(
            "{}\n",
            serde_json::json!({ "resolvers": resolvers, "bindings": bindings })
        );
    }
    let mut out = String::from("Resolvers\n");
    out.push_str(&format!(
        "{:<24} {:>7} {:>10} {:<16}  {}\n",
        "Name", "Version", "Size", "Blake3", "Law check"
    ));
    for r in resolvers {
        let check = match &r.law_check {
            LawCheckOutcome::Passed { .. } => "passed".to_owned(),
            LawCheckOutcome::Overridden { violations, .. } => {
                format!("overridden ({} violations)", violations.len())
            }
        };
        out.push_str(&format!(
            "{:<24} {:>7} {:>10} {:<16}  {check}\n",
            r.name,
            r.version,
            r.module_bytes,
            short(&r.hash)
        ));
    }
    out.push_str("\nBindings\n");
    out.push_str(&format!(
        "{:<24} {:<24} {:<16} {:<8} {}\n",
        "Keyspace", "Resolver", "Blake3", "Source", "Earlier"
    ));
    for b in bindings {
        let hash = b
            .current
            .as_ref()
            .and_then(|r| r.hash)
            .map_or_else(|| "(not uploaded)".into(), |h| short(&h));
        let earlier: Vec<String> = b.history.iter().map(resolver_name).collect();
        out.push_str(&format!(
            "{:<24} {:<24} {:<16} {:<8} {}\n",
            b.keyspace,
            resolver_name(&b.current),
            if b.current.is_some() {
                hash
            } else {
                "-".into()
            },
            if b.from_config { "config" } else { "registry" },
            earlier.join(", ")
        ));
        if let Some(c) = &b.canary {
            out.push_str(&format!("  canary: {}\n", canary_text(c)));
        }
        if b.paused {
            out.push_str("  paused: siblings are kept\n");
        }
        for e in &b.events {
            out.push_str(&format!("  {}: {}\n", e.at_ms, e.note));
        }
    }
    out
}

/// How `resolver list` and `status` ask every member.
fn asking(node: &NodeArgs) -> anyhow::Result<crate::resolver_stats::Asking> {
    Ok(crate::resolver_stats::Asking {
        addr: node.addr.clone(),
        options: node.security.options("isthmus-cli")?,
        timeout: Duration::from_millis(node.timeout_ms),
    })
}

/// A registry command's outcome: text to print and the exit status.
fn registry_command(command: ResolverCommand) -> anyhow::Result<(String, u8)> {
    let expect = |what: &str, other: RegistryResponse| {
        anyhow::anyhow!("unexpected answer to {what}: {other:?}")
    };
    match command {
        ResolverCommand::Check { .. }
        | ResolverCommand::Call { .. }
        | ResolverCommand::New { .. }
        | ResolverCommand::Build { .. } => {
            anyhow::bail!("check, call, new and build are not registry commands")
        }
        ResolverCommand::Upload {
            node,
            name,
            version,
            force,
            file,
        } => {
            let module =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let request = RegistryRequest::Upload {
                name: name.clone(),
                version,
                module,
                force,
            };
            match call(&node, request) {
                Ok(RegistryResponse::Uploaded(r)) => Ok((
                    format!(
                        "registered {}@{} ({} bytes, blake3 {})\nlaw check: {}\n",
                        r.name,
                        r.version,
                        r.module_bytes,
                        hex(&r.hash),
                        law_check_text(&r.law_check)
                    ),
                    0,
                )),
                Ok(other) => Err(expect("upload", other)),
                Err(ClientError::Server(e)) if e.code == ErrorCode::LawCheckFailed => {
                    eprintln!("error: {}", e.message);
                    eprintln!("(upload with --force to register it anyway)");
                    Ok((String::new(), 1))
                }
                Err(e) => Err(anyhow::Error::new(e)
                    .context(format!("uploading {} as {name}@{version}", file.display()))),
            }
        }
        ResolverCommand::Attach {
            node,
            keyspace,
            resolver,
            canary_dc,
            canary_share,
            canary_window_ms,
            canary_merges_min,
            canary_failure_rate_max,
        } => {
            let (name, version) = isthmus_core::config::parse_resolver_binding(&resolver)
                .with_context(|| format!("{resolver:?} is not NAME@VERSION"))?;
            let canary = canary_dc.is_some() || canary_share.is_some();
            let guard_given = canary_window_ms.is_some()
                || canary_merges_min.is_some()
                || canary_failure_rate_max.is_some();
            anyhow::ensure!(
                canary || !guard_given,
                "--canary-window-ms, --canary-merges-min and --canary-failure-rate-max need --canary-dc or --canary-share"
            );
            let request = if canary {
                RegistryRequest::Canary {
                    keyspace,
                    name,
                    version,
                    dc: canary_dc,
                    share_ppm: canary_share
                        .map(|f| fraction_ppm("--canary-share", f))
                        .transpose()?,
                    window_ms: canary_window_ms,
                    merges_min: canary_merges_min,
                    failure_rate_max_ppm: canary_failure_rate_max
                        .map(|f| fraction_ppm("--canary-failure-rate-max", f))
                        .transpose()?,
                }
            } else {
                RegistryRequest::Attach {
                    keyspace,
                    name,
                    version,
                }
            };
            match call(&node, request)? {
                RegistryResponse::Bound(b) => Ok((format_binding(&b), 0)),
                other => Err(expect("attach", other)),
            }
        }
        ResolverCommand::Promote { node, keyspace } => {
            match call(&node, RegistryRequest::Promote { keyspace })? {
                RegistryResponse::Bound(b) => Ok((format_binding(&b), 0)),
                other => Err(expect("promote", other)),
            }
        }
        ResolverCommand::Pause { node, keyspace } => {
            match call(&node, RegistryRequest::Pause { keyspace })? {
                RegistryResponse::Bound(b) => Ok((format_binding(&b), 0)),
                other => Err(expect("pause", other)),
            }
        }
        ResolverCommand::Resume { node, keyspace } => {
            match call(&node, RegistryRequest::Resume { keyspace })? {
                RegistryResponse::Bound(b) => Ok((format_binding(&b), 0)),
                other => Err(expect("resume", other)),
            }
        }
        ResolverCommand::Detach { node, keyspace } => {
            match call(&node, RegistryRequest::Detach { keyspace })? {
                RegistryResponse::Bound(b) => Ok((format_binding(&b), 0)),
                other => Err(expect("detach", other)),
            }
        }
        ResolverCommand::Rollback { node, keyspace } => {
            match call(&node, RegistryRequest::Rollback { keyspace })? {
                RegistryResponse::Bound(b) => Ok((format_binding(&b), 0)),
                other => Err(expect("rollback", other)),
            }
        }
        ResolverCommand::Delete { node, resolver } => {
            let (name, version) = isthmus_core::config::parse_resolver_binding(&resolver)
                .with_context(|| format!("{resolver:?} is not NAME@VERSION"))?;
            match call(&node, RegistryRequest::Delete { name, version })? {
                RegistryResponse::Deleted(r) => Ok((
                    format!(
                        "deleted {}@{} (blake3 {})\n",
                        r.name,
                        r.version,
                        hex(&r.hash)
                    ),
                    0,
                )),
                other => Err(expect("delete", other)),
            }
        }
        ResolverCommand::List { node, json } => match call(&node, RegistryRequest::List)? {
            RegistryResponse::Listing {
                resolvers,
                bindings,
            } => {
                let listing = format_listing(&resolvers, &bindings, json);
                let views = crate::resolver_stats::gather(&asking(&node)?)?;
                let merges = crate::resolver_stats::format_list(&views, json);
                if !json {
                    return Ok((listing + &merges, 0));
                }
                let mut doc: serde_json::Value = serde_json::from_str(&listing)?;
                doc["merge_stats"] = serde_json::from_str(&merges)?;
                Ok((format!("{doc}\n"), 0))
            }
            other => Err(expect("list", other)),
        },
        ResolverCommand::Status {
            node,
            resolver,
            json,
        } => {
            let (name, version) = isthmus_core::config::parse_resolver_binding(&resolver)
                .with_context(|| format!("{resolver:?} is not NAME@VERSION"))?;
            let views = crate::resolver_stats::gather(&asking(&node)?)?;
            let text = crate::resolver_stats::format_status(&views, &name, version, json)?;
            Ok((text, 0))
        }
    }
}

/// Run a resolver subcommand; returns the process exit status.
pub fn run(command: ResolverCommand) -> anyhow::Result<u8> {
    match command {
        ResolverCommand::Check {
            file,
            seed,
            cases,
            corpus,
        } => {
            let corpus = match corpus {
                Some(path) => parse_corpus(
                    &std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )?,
                None => Vec::new(),
            };
            check_file(&file, seed, cases, corpus)
        }
        ResolverCommand::New {
            name,
            dir,
            sdk_path,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = match sdk_path {
                Some(p) => SdkSource::Path(p),
                None => SdkSource::Version,
            };
            let files = scaffold(&name, &dir, &sdk)?;
            println!("created resolver {name} in {}:", dir.display());
            for f in files {
                println!("  {f}");
            }
            println!(
                "next: cd {} && cargo test && isthmus resolver build",
                dir.display()
            );
            Ok(0)
        }
        ResolverCommand::Build { dir, seed, cases } => match build(&dir) {
            Ok(module) => {
                println!("built {}", module.display());
                check_file(&module, seed, cases, Vec::new())
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(2)
            }
        },
        ResolverCommand::Call {
            file,
            siblings,
            key,
        } => {
            let (out, status) = call_local(&file, &siblings, &key)?;
            print!("{out}");
            Ok(status)
        }
        other => {
            let (out, status) = registry_command(other)?;
            print!("{out}");
            Ok(status)
        }
    }
}

/// `resolver check` on a module file: print the report; exit status 0 if
/// every law held, 1 if one failed.
fn check_file(
    file: &std::path::Path,
    seed: Option<u64>,
    cases: usize,
    corpus: Vec<Vec<u8>>,
) -> anyhow::Result<u8> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let host = Host::new(ResolverLimits::default())?;
    let resolver = host
        .load(&bytes)
        .with_context(|| format!("loading {}", file.display()))?;
    let seed = seed.unwrap_or_else(rand::random);
    println!(
        "checking {} ({} bytes, blake3 {})",
        file.display(),
        bytes.len(),
        hex(&resolver.hash())
    );
    let report = check(
        &host,
        &resolver,
        &CheckOptions {
            seed: Some(seed),
            cases_per_size: cases,
            corpus,
            ..CheckOptions::default()
        },
    )?;
    print!("{report}");
    let stats = resolver.stats();
    if stats.log_lines() + stats.log_dropped() > 0 {
        println!(
            "guest log: {} lines, {} dropped by the rate limit; the last ones:",
            stats.log_lines(),
            stats.log_dropped()
        );
        for line in stats.log_recent() {
            println!("  log: {line}");
        }
    }
    if report.passed() {
        println!("PASS: the merge is a join on every case tried");
        Ok(0)
    } else {
        println!("FAIL: reproduce with --seed {}", report.seed);
        Ok(1)
    }
}

/// One sibling given to `resolver call`.
#[derive(Debug, PartialEq, Eq)]
struct GivenSibling {
    value: Option<Vec<u8>>,
    timestamp_ms: u64,
    origin_dc: String,
}

/// Parse `resolver call --siblings` (see its help).
fn parse_siblings(json: &str) -> anyhow::Result<Vec<GivenSibling>> {
    let items: Vec<serde_json::Value> =
        serde_json::from_str(json).context("--siblings: expected a JSON array")?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = |what: &str| format!("--siblings[{i}]: {what}");
            let mut sibling = GivenSibling {
                value: None,
                timestamp_ms: 1_000 + i as u64,
                origin_dc: "dc1".into(),
            };
            match item {
                serde_json::Value::Null => {}
                serde_json::Value::String(text) => sibling.value = Some(text.into_bytes()),
                serde_json::Value::Object(fields) => {
                    for (name, field) in fields {
                        match (name.as_str(), field) {
                            ("value", serde_json::Value::String(t)) => {
                                sibling.value = Some(t.into_bytes());
                            }
                            ("value_hex", serde_json::Value::String(h)) => {
                                sibling.value =
                                    Some(decode_hex(&h).ok_or_else(|| {
                                        anyhow::anyhow!(at("value_hex is not hex"))
                                    })?);
                            }
                            ("tombstone", serde_json::Value::Bool(true)) => sibling.value = None,
                            ("timestamp_ms", serde_json::Value::Number(n)) => {
                                sibling.timestamp_ms = n
                                    .as_u64()
                                    .ok_or_else(|| anyhow::anyhow!(at("timestamp_ms")))?;
                            }
                            ("origin_dc", serde_json::Value::String(dc)) => sibling.origin_dc = dc,
                            (other, _) => anyhow::bail!(at(&format!("unexpected field {other:?}"))),
                        }
                    }
                }
                other => anyhow::bail!(at(&format!(
                    "expected a string, null or an object, not {other}"
                ))),
            }
            Ok(sibling)
        })
        .collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `isthmus resolver call`: what to print and the exit status.
fn call_local(file: &std::path::Path, siblings: &str, key: &str) -> anyhow::Result<(String, u8)> {
    use isthmus_sdk_wasm::{Dot, Merged, Payload, Sibling, SiblingClock};
    use std::fmt::Write as _;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let json = match siblings.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => siblings.to_owned(),
    };
    let given = parse_siblings(&json)?;
    let host = Host::new(ResolverLimits::default())?;
    let resolver = host
        .load(&bytes)
        .with_context(|| format!("loading {}", file.display()))?;
    let siblings: Vec<Sibling<'_>> = given
        .iter()
        .enumerate()
        .map(|(i, g)| Sibling {
            payload: g
                .value
                .as_deref()
                .map_or(Payload::Tombstone, Payload::Value),
            timestamp_ms: g.timestamp_ms,
            origin_dc: &g.origin_dc,
            clock: SiblingClock {
                vector: Vec::new(),
                dots: vec![Dot {
                    actor: i as u64 + 1,
                    counter: 1,
                }],
            },
        })
        .collect();
    let started = std::time::Instant::now();
    let run = host.merge_siblings_in(
        &resolver,
        key.as_bytes(),
        &siblings,
        &isthmus_resolvers::host::MergeContext::default(),
    );
    let took = started.elapsed();
    let (result, fuel) = (run.result, run.fuel);
    let shown = |v: &[u8]| match std::str::from_utf8(v) {
        Ok(text) => format!("{text:?} ({} bytes)", v.len()),
        Err(_) => format!("0x{} ({} bytes, not UTF-8)", hex(v), v.len()),
    };
    let mut out = String::new();
    let status = match &result {
        Ok(Merged::Value(v)) => {
            let _ = writeln!(out, "output: value {}", shown(v));
            0
        }
        Ok(Merged::Delete) => {
            let _ = writeln!(out, "output: delete");
            0
        }
        Err(e) => {
            let _ = writeln!(out, "failed ({}): {e}", e.class());
            1
        }
    };
    let _ = writeln!(
        out,
        "fuel: {fuel} of the {} a merge may use",
        host.limits().fuel_per_merge
    );
    let _ = writeln!(
        out,
        "time: {} µs (one merge in a fresh instance)",
        took.as_micros()
    );
    for line in &run.log.lines {
        let _ = writeln!(out, "log: {line}");
    }
    if run.log.dropped > 0 {
        let _ = writeln!(
            out,
            "log: {} more lines dropped by the rate limit",
            run.log.dropped
        );
    }
    Ok((out, status))
}

/// Parse a corpus file (see `--corpus`).
fn parse_corpus(text: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut values = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(hexed) = line.strip_prefix("0x") {
            anyhow::ensure!(
                hexed.len() % 2 == 0,
                "corpus line {}: odd number of hex digits",
                n + 1
            );
            let bytes = (0..hexed.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hexed[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .with_context(|| format!("corpus line {}: bad hex", n + 1))?;
            values.push(bytes);
        } else {
            values.push(line.as_bytes().to_vec());
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_lines_are_text_or_hex() {
        let c = parse_corpus("# carts\n{\"a\":1}\n\n0x00ff\n").unwrap();
        assert_eq!(c, vec![b"{\"a\":1}".to_vec(), vec![0x00, 0xff]]);
        assert!(parse_corpus("0x0").is_err());
        assert!(parse_corpus("0xzz").is_err());
    }

    fn example(package: &str) -> PathBuf {
        let path = isthmus_testkit::built_module(&isthmus_testkit::module::workspace(), package);
        assert!(
            path.exists(),
            "{} is missing; build it first: cargo build --release --target wasm32-unknown-unknown -p {package}",
            path.display()
        );
        path
    }

    fn check_status(package: &str) -> u8 {
        run(ResolverCommand::Check {
            file: example(package),
            seed: Some(3),
            cases: 8,
            corpus: None,
        })
        .unwrap()
    }

    #[test]
    fn check_exits_0_for_a_join_and_1_for_the_wrong_resolver() {
        assert_eq!(check_status("isthmus-example-lww"), 0);
        assert_eq!(check_status("isthmus-example-wrong-first-wins"), 1);
    }

    #[test]
    fn siblings_are_values_tombstones_or_objects() {
        let given = parse_siblings(
            r#"["a", null, {"value_hex": "0x00ff", "timestamp_ms": 7, "origin_dc": "dc2"}, {"tombstone": true}]"#,
        )
        .unwrap();
        assert_eq!(given[0].value.as_deref(), Some(&b"a"[..]));
        assert_eq!(given[1].value, None);
        assert_eq!(
            given[2],
            GivenSibling {
                value: Some(vec![0, 0xff]),
                timestamp_ms: 7,
                origin_dc: "dc2".into()
            }
        );
        assert_eq!(given[3].value, None);
        for bad in [
            r#"{"a": 1}"#,
            "[1]",
            r#"[{"value_hex": "0xz"}]"#,
            r#"[{"colour": "red"}]"#,
        ] {
            assert!(parse_siblings(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn call_runs_one_merge_and_reports_its_output_and_fuel() {
        let file = example("isthmus-example-lww");
        let (out, status) = call_local(
            &file,
            r#"[{"value": "old", "timestamp_ms": 5}, {"value": "new", "timestamp_ms": 9}]"#,
            "k",
        )
        .unwrap();
        assert_eq!(status, 0, "{out}");
        assert!(out.contains("output: value \"new\" (3 bytes)"), "{out}");
        assert!(out.contains("fuel: "), "{out}");
        let (out, status) = call_local(
            &example("isthmus-example-pn-counter"),
            r#"["not json", "{}"]"#,
            "k",
        )
        .unwrap();
        assert_eq!(status, 1, "{out}");
        assert!(out.contains("failed (guest_error)"), "{out}");
    }

    #[test]
    fn canary_fractions_are_checked_and_guards_need_a_scope() {
        assert_eq!(fraction_ppm("--canary-share", 0.25).unwrap(), 250_000);
        assert_eq!(fraction_ppm("--canary-share", 1.0).unwrap(), 1_000_000);
        for bad in [0.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            let err = fraction_ppm("--canary-share", bad).unwrap_err();
            assert!(err.to_string().contains("--canary-share"), "{err}");
        }
        // A guard without --canary-dc or --canary-share: refused before
        // any node is asked.
        let err = registry_command(ResolverCommand::Attach {
            node: NodeArgs {
                addr: "127.0.0.1:1".into(),
                timeout_ms: 10,
                security: crate::client_cmd::Security::default(),
            },
            keyspace: "carts".into(),
            resolver: "m@2".into(),
            canary_dc: None,
            canary_share: None,
            canary_window_ms: None,
            canary_merges_min: Some(3),
            canary_failure_rate_max: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("need --canary-dc"), "{err}");
    }

    #[test]
    fn a_binding_shows_its_canary_pause_and_log() {
        let resolver = BoundResolver {
            name: "m".into(),
            version: 1,
            hash: Some([1; 32]),
        };
        let b = BindingInfo {
            keyspace: "carts".into(),
            current: Some(resolver.clone()),
            history: vec![None],
            from_config: false,
            canary: Some(CanaryInfo {
                resolver: BoundResolver {
                    version: 2,
                    ..resolver
                },
                dc: Some("dc1".into()),
                share_ppm: Some(100_000),
                window_ms: 60_000,
                merges_min: 20,
                failure_rate_max_ppm: 100_000,
                since_ms: 5,
            }),
            paused: true,
            events: vec![isthmus_client::wire::BindingEvent {
                at_ms: 6,
                note: "canary m@2 began".into(),
            }],
        };
        let text = format_listing(&[], std::slice::from_ref(&b), false);
        assert!(
            text.contains(
                "canary: m@2 in dc dc1 and share 0.1; rolled back past failure rate 0.1 over 60000 ms (at least 20 merges)"
            ),
            "{text}"
        );
        assert!(text.contains("paused: siblings are kept"), "{text}");
        assert!(text.contains("6: canary m@2 began"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&format_listing(&[], &[b], true)).unwrap();
        assert_eq!(json["bindings"][0]["canary"]["dc"], "dc1");
        assert_eq!(json["bindings"][0]["paused"], true);
        assert_eq!(json["bindings"][0]["events"][0]["note"], "canary m@2 began");
    }

    #[test]
    fn check_fails_cleanly_on_a_missing_or_invalid_file() {
        let missing = run(ResolverCommand::Check {
            file: "/nonexistent.wasm".into(),
            seed: None,
            cases: 1,
            corpus: None,
        });
        assert!(missing.is_err());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.wasm");
        std::fs::write(&bad, b"not wasm").unwrap();
        let err = run(ResolverCommand::Check {
            file: bad,
            seed: None,
            cases: 1,
            corpus: None,
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("invalid module"), "{err:#}");
    }
}
