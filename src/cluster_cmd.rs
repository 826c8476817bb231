//! `isthmus status --cluster`: every node's view of every other, side by
//! side. The target names the members it knows; each of them (the target
//! included) is asked for its own status over its client address, at
//! once, within the target's deadline. A member whose views disagree (one
//! node believes it up and another down, or they see it in different
//! states) is marked, as is a node that did not answer (its column is
//! `?`) or that knows a member the target does not.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;
use isthmus_client::wire::{NodeReport, RequestBody, ResponseBody};

use crate::client_cmd::{Target, connect};

/// What one node said, or why it said nothing.
type View = Result<Vec<NodeReport>, String>;

/// Two letters for how a view sees a member: `U`/`D` (up, down) and the
/// first letter of its state (`N`ormal, `J`oining, `L`eaving, le`F`t).
pub fn cell(n: &NodeReport) -> String {
    let state = match n.status.as_str() {
        "Left" => 'F',
        other => other.chars().next().unwrap_or('?'),
    };
    format!("{}{}", if n.up { 'U' } else { 'D' }, state)
}

/// The table: one row per member (by DC, then id), one column per viewer;
/// `*` marks a row whose answering views disagree, or that a viewer did
/// not answer for.
pub fn table(views: &BTreeMap<String, View>) -> (Vec<String>, Vec<Row>) {
    let viewers: Vec<String> = views.keys().cloned().collect();
    let mut members: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for (viewer, view) in views {
        if let Ok(nodes) = view {
            for n in nodes {
                members
                    .entry((n.dc.clone(), n.node_id.clone()))
                    .or_default()
                    .insert(viewer.clone(), cell(n));
            }
        }
    }
    let rows = members
        .into_iter()
        .map(|((dc, id), seen)| {
            let cells: Vec<String> = viewers
                .iter()
                .map(|v| match (&views[v], seen.get(v)) {
                    (Err(_), _) => "?".to_owned(),
                    (Ok(_), Some(c)) => c.clone(),
                    (Ok(_), None) => "-".to_owned(),
                })
                .collect();
            let distinct: BTreeSet<&String> = cells.iter().filter(|c| *c != "?").collect();
            let disagree = distinct.len() > 1;
            Row {
                dc,
                id,
                cells,
                disagree,
            }
        })
        .collect();
    (viewers, rows)
}

/// One member's row.
#[derive(Debug, PartialEq, Eq)]
pub struct Row {
    /// Its DC.
    pub dc: String,
    /// Its id.
    pub id: String,
    /// How each viewer sees it (`?`: the viewer did not answer; `-`: the
    /// viewer does not know it).
    pub cells: Vec<String>,
    /// Whether the answering viewers disagree.
    pub disagree: bool,
}

/// Run `isthmus status --cluster`.
pub fn run(target: Target, json: bool) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let views = runtime.block_on(async {
        let members = status(&target).await?;
        let mut asks = tokio::task::JoinSet::new();
        for m in &members {
            let target = Target {
                addr: m.addr.clone(),
                ..target.clone()
            };
            let id = m.node_id.clone();
            asks.spawn(async move {
                let view = status(&target).await.map_err(|e| format!("{e:#}"));
                (id, view)
            });
        }
        let mut views = BTreeMap::new();
        while let Some(answer) = asks.join_next().await {
            let (id, view) = answer?;
            views.insert(id, view);
        }
        anyhow::Ok(views)
    })?;
    let (viewers, rows) = table(&views);
    if json {
        let doc = serde_json::json!({
            "viewers": viewers.iter().map(|v| serde_json::json!({
                "node_id": v,
                "error": views[v].as_ref().err(),
            })).collect::<Vec<_>>(),
            "members": rows.iter().map(|r| serde_json::json!({
                "dc": r.dc, "node_id": r.id, "views": r.cells, "disagree": r.disagree,
            })).collect::<Vec<_>>(),
            "disagreements": rows.iter().filter(|r| r.disagree).count(),
        });
        return Ok(format!("{doc}\n"));
    }
    let width = viewers.iter().map(String::len).max().unwrap_or(2).max(2);
    let id_width = rows.iter().map(|r| r.id.len()).max().unwrap_or(4).max(4);
    let mut out = String::from(
        "Each column is one node's view: U/D up or down, then N/J/L/F normal, joining, leaving, left;\n\
         ? the node did not answer, - it does not know the member, * the views disagree.\n\n",
    );
    out.push_str(&format!("  {:<8} {:<id_width$}", "DC", "Node"));
    for v in &viewers {
        out.push_str(&format!(" {v:>width$}"));
    }
    out.push('\n');
    for r in &rows {
        out.push_str(&format!(
            "{} {:<8} {:<id_width$}",
            if r.disagree { '*' } else { ' ' },
            r.dc,
            r.id
        ));
        for c in &r.cells {
            out.push_str(&format!(" {c:>width$}"));
        }
        out.push('\n');
    }
    let silent: Vec<String> = viewers
        .iter()
        .filter_map(|v| views[v].as_ref().err().map(|e| format!("  {v}: {e}\n")))
        .collect();
    if !silent.is_empty() {
        out.push_str("\nDid not answer:\n");
        out.extend(silent);
    }
    let disagreements = rows.iter().filter(|r| r.disagree).count();
    out.push_str(&format!(
        "\n{} members, {} views, {disagreements} disagreement(s)\n",
        rows.len(),
        viewers.len()
    ));
    Ok(out)
}

async fn status(target: &Target) -> anyhow::Result<Vec<NodeReport>> {
    let (session, timeout) = connect(target).await?;
    match session.call(RequestBody::Status, timeout).await? {
        ResponseBody::Status { nodes, .. } => Ok(nodes),
        other => bail!("unexpected answer {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, dc: &str, up: bool, status: &str) -> NodeReport {
        NodeReport {
            node_id: id.into(),
            addr: format!("{id}:7401"),
            dc: dc.into(),
            rack: "r1".into(),
            vnodes: 16,
            up,
            status: status.into(),
            load_bytes: 0,
            hint_bytes: 0,
            ownership: 0.5,
        }
    }

    #[test]
    fn views_that_disagree_are_marked_and_a_silent_node_is_not_a_disagreement() {
        let a = vec![
            report("a", "dc1", true, "Normal"),
            report("b", "dc1", true, "Normal"),
            report("c", "dc2", true, "Normal"),
        ];
        let b = vec![
            report("a", "dc1", true, "Normal"),
            report("b", "dc1", true, "Normal"),
            report("c", "dc2", false, "Normal"),
        ];
        let views = BTreeMap::from([
            ("a".to_owned(), Ok(a)),
            ("b".to_owned(), Ok(b)),
            ("c".to_owned(), Err("connection refused".to_owned())),
        ]);
        let (viewers, rows) = table(&views);
        assert_eq!(viewers, ["a", "b", "c"]);
        assert_eq!(
            rows,
            vec![
                Row {
                    dc: "dc1".into(),
                    id: "a".into(),
                    cells: vec!["UN".into(), "UN".into(), "?".into()],
                    disagree: false,
                },
                Row {
                    dc: "dc1".into(),
                    id: "b".into(),
                    cells: vec!["UN".into(), "UN".into(), "?".into()],
                    disagree: false,
                },
                Row {
                    dc: "dc2".into(),
                    id: "c".into(),
                    cells: vec!["UN".into(), "DN".into(), "?".into()],
                    disagree: true,
                },
            ]
        );
    }

    #[test]
    fn a_member_one_view_lacks_is_a_disagreement() {
        let views = BTreeMap::from([
            (
                "a".to_owned(),
                Ok(vec![
                    report("a", "dc1", true, "Normal"),
                    report("d", "dc1", true, "Joining"),
                ]),
            ),
            ("b".to_owned(), Ok(vec![report("a", "dc1", true, "Normal")])),
        ]);
        let (_, rows) = table(&views);
        let d = rows.iter().find(|r| r.id == "d").unwrap();
        assert_eq!(d.cells, ["UJ", "-"]);
        assert!(d.disagree);
        assert_eq!(cell(&report("x", "dc1", false, "Left")), "DF");
    }
}
