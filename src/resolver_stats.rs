//! What the nodes say of their resolvers: `isthmus resolver list`'s merge
//! figures (summed over every node the CLI reaches) and `isthmus resolver
//! status NAME@VERSION` (node by node). Each asks the node it is given for
//! the members, then every member at once for its registry listing and its
//! merge figures (`RequestBody::MergeStats`) over the client protocol; a
//! member that does not answer is shown as such.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use isthmus_client::wire::{
    BindingInfo, CostHistogram, MergeFailureClass, MergeStatsRow, RegistryRequest,
    RegistryResponse, RequestBody, ResolverInfo, ResponseBody,
};
use isthmus_client::{ConnectOptions, Session};
use isthmus_resolvers::host::hex;

/// Where the CLI asks: the first node, how, and each request's deadline.
#[derive(Clone, Debug)]
pub struct Asking {
    /// The node asked for the members.
    pub addr: String,
    /// TLS and credentials.
    pub options: ConnectOptions,
    /// Each request's deadline.
    pub timeout: Duration,
}

/// What one member answered.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// The member's node id.
    pub node_id: String,
    /// Its datacenter.
    pub dc: String,
    /// Its registry listing and merge figures, or why there are none.
    pub answer: Result<Answer, String>,
}

/// A member's registry listing and merge figures.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// Resolvers its replica of the registry holds.
    pub resolvers: Vec<ResolverInfo>,
    /// Keyspace bindings as it sees them.
    pub bindings: Vec<BindingInfo>,
    /// Its merge figures since it started.
    pub stats: Vec<MergeStatsRow>,
}

async fn call(
    addr: &str,
    how: &Asking,
    body: RequestBody,
) -> anyhow::Result<(Session, ResponseBody)> {
    let session = Session::connect_with(addr, &how.options, how.timeout).await?;
    let answer = session.call(body, how.timeout).await?;
    Ok((session, answer))
}

async fn ask(addr: String, how: Asking) -> Result<Answer, String> {
    let timeout = how.timeout;
    let (session, listing) = call(&addr, &how, RequestBody::Registry(RegistryRequest::List))
        .await
        .map_err(|e| format!("{e:#}"))?;
    let (resolvers, bindings) = match listing {
        ResponseBody::Registry(RegistryResponse::Listing {
            resolvers,
            bindings,
        }) => (resolvers, bindings),
        ResponseBody::Error(e) => return Err(e.message),
        other => return Err(format!("unexpected answer {other:?}")),
    };
    let stats = match session.call(RequestBody::MergeStats, timeout).await {
        Ok(ResponseBody::MergeStats(rows)) => rows,
        Ok(ResponseBody::Error(e)) => return Err(e.message),
        Ok(other) => return Err(format!("unexpected answer {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    Ok(Answer {
        resolvers,
        bindings,
        stats,
    })
}

/// Every member the node at `how.addr` knows, each asked at once.
pub fn gather(how: &Asking) -> anyhow::Result<Vec<NodeView>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let members = match call(&how.addr, how, RequestBody::Status).await?.1 {
            ResponseBody::Status { nodes, .. } => nodes,
            other => bail!("unexpected answer {other:?}"),
        };
        let mut asks = tokio::task::JoinSet::new();
        for m in members {
            let how = how.clone();
            asks.spawn(async move {
                let answer = ask(m.addr.clone(), how).await;
                NodeView {
                    node_id: m.node_id,
                    dc: m.dc,
                    answer,
                }
            });
        }
        let mut views = Vec::new();
        while let Some(view) = asks.join_next().await {
            views.push(view?);
        }
        views.sort_by(|a, b| (&a.dc, &a.node_id).cmp(&(&b.dc, &b.node_id)));
        Ok(views)
    })
}

/// One keyspace's merges by one resolver, summed over nodes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summed {
    /// Merges that replaced siblings.
    pub merges: u64,
    /// Failed or deferred merges, by class.
    pub failures: BTreeMap<MergeFailureClass, u64>,
    /// Fuel per merge.
    pub fuel: CostHistogram,
    /// Time per merge, in microseconds.
    pub time_us: CostHistogram,
}

impl Summed {
    fn add(&mut self, row: &MergeStatsRow) {
        self.merges += row.merges;
        for (class, n) in &row.failures {
            *self.failures.entry(*class).or_default() += n;
        }
        // Nodes of one release share the buckets; a node whose buckets
        // differ is left out of the percentiles, not of the counts.
        self.fuel.add(&row.fuel);
        self.time_us.add(&row.time_us);
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Rows of every answering node summed by (keyspace, resolver hex).
pub fn sum(views: &[NodeView]) -> BTreeMap<(String, String), Summed> {
    let mut out: BTreeMap<(String, String), Summed> = BTreeMap::new();
    for row in views
        .iter()
        .filter_map(|v| v.answer.as_ref().ok())
        .flat_map(|a| &a.stats)
    {
        out.entry((row.keyspace.clone(), row.resolver.clone()))
            .or_default()
            .add(row);
    }
    out
}

/// `name@version` of every registered resolver by hex content hash.
fn names(views: &[NodeView]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in views
        .iter()
        .filter_map(|v| v.answer.as_ref().ok())
        .flat_map(|a| &a.resolvers)
    {
        let names = out.entry(hex(&r.hash)).or_default();
        let name = format!("{}@{}", r.name, r.version);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    out.into_iter().map(|(h, n)| (h, n.join(","))).collect()
}

fn micros(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us < 1_000.0 => format!("{us:.1}us"),
        Some(us) if us < 1_000_000.0 => format!("{:.1}ms", us / 1_000.0),
        Some(us) => format!("{:.2}s", us / 1_000_000.0),
    }
}

fn fuel(units: Option<f64>) -> String {
    match units {
        None => "-".into(),
        Some(f) if f < 1e3 => format!("{f:.0}"),
        Some(f) if f < 1e6 => format!("{:.1}k", f / 1e3),
        Some(f) => format!("{:.1}M", f / 1e6),
    }
}

fn by_class(s: &Summed) -> String {
    if s.failures.is_empty() {
        return "-".into();
    }
    s.failures
        .iter()
        .map(|(c, n)| format!("{c}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn silent(views: &[NodeView]) -> String {
    let mut out = String::new();
    for v in views {
        if let Err(e) = &v.answer {
            out.push_str(&format!("  {} ({}): no answer: {e}\n", v.node_id, v.dc));
        }
    }
    out
}

fn summed_json(s: &Summed) -> serde_json::Value {
    serde_json::json!({
        "merges": s.merges,
        "failures": s.failed(),
        "failures_by_class": s.failures.iter().map(|(c, n)| (c.as_str().to_owned(), *n)).collect::<BTreeMap<_, _>>(),
        "fuel_p50": s.fuel.quantile(0.5),
        "fuel_p99": s.fuel.quantile(0.99),
        "seconds_p50": s.time_us.quantile(0.5).map(|us| us / 1e6),
        "seconds_p99": s.time_us.quantile(0.99).map(|us| us / 1e6),
    })
}

/// `resolver list`'s merge figures: per keyspace and resolver, summed over
/// the members that answered.
pub fn format_list(views: &[NodeView], json: bool) -> String {
    let summed = sum(views);
    let names = names(views);
    let answered = views.iter().filter(|v| v.answer.is_ok()).count();
    let name = |hash: &String| names.get(hash).cloned().unwrap_or_else(|| hash.clone());
    if json {
        let rows: Vec<_> = summed
            .iter()
            .map(|((ks, hash), s)| {
                let mut row = summed_json(s);
                row["keyspace"] = ks.as_str().into();
                row["resolver"] = name(hash).into();
                row["hash"] = hash.as_str().into();
                row
            })
            .collect();
        let silent: Vec<_> = views
            .iter()
            .filter_map(|v| {
                v.answer
                    .as_ref()
                    .err()
                    .map(|e| serde_json::json!({"node_id": v.node_id, "dc": v.dc, "error": e}))
            })
            .collect();
        return serde_json::json!({
            "nodes_asked": views.len(), "nodes_answered": answered,
            "merges": rows, "silent": silent,
        })
        .to_string()
            + "\n";
    }
    let mut out = format!(
        "\nMerges since each node started, summed over the {answered} of {} nodes that answered\n",
        views.len()
    );
    out.push_str(&format!(
        "{:<16} {:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}\n",
        "Keyspace",
        "Resolver",
        "Merges",
        "Failures",
        "Fuel p50",
        "Fuel p99",
        "Time p50",
        "Time p99",
        "Failures by class"
    ));
    for ((ks, hash), s) in &summed {
        out.push_str(&format!(
            "{:<16} {:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}\n",
            ks,
            name(hash),
            s.merges,
            s.failed(),
            fuel(s.fuel.quantile(0.5)),
            fuel(s.fuel.quantile(0.99)),
            micros(s.time_us.quantile(0.5)),
            micros(s.time_us.quantile(0.99)),
            by_class(s),
        ));
    }
    let silent = silent(views);
    if !silent.is_empty() {
        out.push_str("Did not answer:\n");
        out.push_str(&silent);
    }
    out
}

/// `resolver status NAME@VERSION`, node by node: whether its registry
/// replica holds the version, the keyspaces it sees bound to it, and its
/// merges and failures of it (per keyspace bound or merged).
pub fn format_status(
    views: &[NodeView],
    name: &str,
    version: u32,
    json: bool,
) -> anyhow::Result<String> {
    let hash = views
        .iter()
        .filter_map(|v| v.answer.as_ref().ok())
        .flat_map(|a| &a.resolvers)
        .find(|r| r.name == name && r.version == version)
        .map(|r| hex(&r.hash));
    let Some(hash) = hash else {
        if views.iter().all(|v| v.answer.is_err()) {
            bail!("no node answered:\n{}", silent(views));
        }
        bail!("no node that answered holds {name}@{version}");
    };
    let mut rows = Vec::new();
    for v in views {
        let row = v.answer.as_ref().map(|a| {
            let held = a
                .resolvers
                .iter()
                .any(|r| r.name == name && r.version == version);
            let bound: Vec<String> = a
                .bindings
                .iter()
                .filter(|b| {
                    b.current
                        .as_ref()
                        .is_some_and(|c| c.name == name && c.version == version)
                })
                .map(|b| b.keyspace.clone())
                .collect();
            let mut s = Summed::default();
            for row in a.stats.iter().filter(|r| r.resolver == hash) {
                s.add(row);
            }
            (held, bound, s)
        });
        rows.push((v, row));
    }
    if json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|(v, row)| match row {
                Ok((held, bound, s)) => {
                    let mut n = summed_json(s);
                    n["node_id"] = v.node_id.as_str().into();
                    n["dc"] = v.dc.as_str().into();
                    n["holds_module"] = (*held).into();
                    n["bound_keyspaces"] = bound.clone().into();
                    n["failure_rate"] = rate(s).into();
                    n
                }
                Err(e) => serde_json::json!({"node_id": v.node_id, "dc": v.dc, "error": e}),
            })
            .collect();
        return Ok(serde_json::json!({
            "resolver": format!("{name}@{version}"), "hash": hash, "nodes": nodes,
        })
        .to_string()
            + "\n");
    }
    let mut out = format!("{name}@{version} (blake3 {hash})\n");
    out.push_str(&format!(
        "{:<8} {:<20} {:<6} {:<20} {:>9} {:>9} {:>8}  {}\n",
        "DC", "Node", "Holds", "Bound to", "Merges", "Failures", "Rate", "Failures by class"
    ));
    for (v, row) in &rows {
        match row {
            Ok((held, bound, s)) => out.push_str(&format!(
                "{:<8} {:<20} {:<6} {:<20} {:>9} {:>9} {:>8}  {}\n",
                v.dc,
                v.node_id,
                if *held { "yes" } else { "no" },
                if bound.is_empty() {
                    "-".to_owned()
                } else {
                    bound.join(",")
                },
                s.merges,
                s.failed(),
                rate(s).map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0)),
                by_class(s),
            )),
            Err(e) => out.push_str(&format!("{:<8} {:<20} no answer: {e}\n", v.dc, v.node_id)),
        }
    }
    Ok(out)
}

/// Failed merges over all merges tried; `None` before any.
fn rate(s: &Summed) -> Option<f64> {
    let tried = s.merges + s.failed();
    (tried > 0).then(|| s.failed() as f64 / tried as f64)
}
