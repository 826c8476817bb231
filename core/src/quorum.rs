//! Quorum tracking, free of IO: the coordinator feeds it acknowledgements
//! and failures as they arrive and asks whether the request is won, still
//! pending, or lost. The same code runs under real sockets and under
//! simulation (the shape of raft-rs's `quorum::majority`).

use std::collections::BTreeMap;

use crate::model::{Consistency, DcName};
use crate::ring::NodeId;

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Enough replicas acknowledged for the consistency level.
    Won,
    /// Not yet decided: more answers may still arrive.
    Pending,
    /// So many replicas failed that the level can no longer be met.
    Lost,
}

/// Acknowledgements needed, per datacenter or overall.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `n` acks from any replica.
    Any(usize),
    /// `n` acks from replicas in each listed datacenter.
    PerDc(BTreeMap<DcName, usize>),
}

/// Tracks the answers of the replicas of one request.
#[derive(Clone, Debug)]
pub struct QuorumTracker {
    requirement: Requirement,
    replicas: BTreeMap<NodeId, (DcName, Option<bool>)>,
}

/// The majority of `n`: `n / 2 + 1`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl QuorumTracker {
    /// A tracker for `level`, over `replicas` (node and its datacenter), for
    /// a coordinator in `local_dc`.
    ///
    /// Local levels count only replicas in `local_dc`; when it holds none
    /// (a keyspace not replicated there), the request can never be won and
    /// the tracker reports [`Outcome::Lost`] at once.
    ///
    /// The replication factor of each DC is taken to be the number of
    /// replicas listed there; see [`QuorumTracker::for_replication`] for
    /// the coordinator's case, where the configured factor rules.
    pub fn new(level: Consistency, replicas: &[(NodeId, DcName)], local_dc: &DcName) -> Self {
        let mut rf: BTreeMap<&DcName, usize> = BTreeMap::new();
        for (_, dc) in replicas {
            *rf.entry(dc).or_default() += 1;
        }
        Self::with_factors(
            level,
            replicas,
            local_dc,
            rf.iter().map(|(dc, &n)| (*dc, n)),
        )
    }

    /// A tracker whose quorums are majorities of the configured replication
    /// factors, however many replicas the caller's view of the ring could
    /// name. A node whose view is incomplete (just restarted, say) lists
    /// fewer replicas than the factor; it must not take a majority of those
    /// for a quorum, so the request is lost at once instead.
    pub fn for_replication(
        level: Consistency,
        replicas: &[(NodeId, DcName)],
        local_dc: &DcName,
        replication: &BTreeMap<DcName, u32>,
    ) -> Self {
        let rf = replication.iter().map(|(dc, &n)| (dc, n as usize));
        Self::with_factors(level, replicas, local_dc, rf)
    }

    /// `rf`: each datacenter's replication factor, once each.
    fn with_factors<'a>(
        level: Consistency,
        replicas: &[(NodeId, DcName)],
        local_dc: &DcName,
        rf: impl Iterator<Item = (&'a DcName, usize)> + Clone,
    ) -> Self {
        let local_rf = rf
            .clone()
            .find(|(dc, _)| *dc == local_dc)
            .map_or(0, |(_, n)| n);
        let total: usize = rf.clone().map(|(_, n)| n).sum();
        let requirement = match level {
            Consistency::One => Requirement::Any(1),
            Consistency::Quorum => Requirement::Any(majority(total)),
            Consistency::All => Requirement::Any(total),
            Consistency::LocalOne if local_rf > 0 => {
                Requirement::PerDc(BTreeMap::from([(local_dc.clone(), 1)]))
            }
            Consistency::LocalQuorum if local_rf > 0 => {
                Requirement::PerDc(BTreeMap::from([(local_dc.clone(), majority(local_rf))]))
            }
            // A local level where this DC holds no replica: never reachable.
            Consistency::LocalOne | Consistency::LocalQuorum => Requirement::PerDc(BTreeMap::new()),
            Consistency::EachQuorum => Requirement::PerDc(
                rf.filter(|(_, n)| *n > 0)
                    .map(|(dc, n)| (dc.clone(), majority(n)))
                    .collect(),
            ),
        };
        QuorumTracker {
            requirement,
            replicas: replicas
                .iter()
                .map(|(n, dc)| (n.clone(), (dc.clone(), None)))
                .collect(),
        }
    }

    /// Whether a single acknowledgement, from a replica in `dc`, wins
    /// `level` for a coordinator in `local_dc` under the configured
    /// factors `replication`: what a tracker from
    /// [`QuorumTracker::for_replication`] over replicas including that one
    /// reports after its ack, found without building the tracker (a read
    /// that the coordinator's own copy wins alone asks for no more).
    pub fn one_ack_wins(
        level: Consistency,
        local_dc: &DcName,
        replication: &BTreeMap<DcName, u32>,
        dc: &DcName,
    ) -> bool {
        let local_rf = replication.get(local_dc).copied().unwrap_or(0);
        let total: u64 = replication.values().map(|&n| u64::from(n)).sum();
        match level {
            Consistency::One => true,
            Consistency::Quorum | Consistency::All => total <= 1,
            Consistency::LocalOne => local_rf > 0 && dc == local_dc,
            Consistency::LocalQuorum => local_rf == 1 && dc == local_dc,
            Consistency::EachQuorum => {
                let mut needed = replication.iter().filter(|(_, n)| **n > 0);
                matches!((needed.next(), needed.next()), (Some((only, 1)), None) if only == dc)
            }
        }
    }

    /// Record that `node` acknowledged. Unknown nodes and repeated answers
    /// are ignored (the first answer of a replica counts).
    pub fn ack(&mut self, node: &NodeId) -> Outcome {
        self.answer(node, true)
    }

    /// Record that `node` failed or timed out.
    pub fn fail(&mut self, node: &NodeId) -> Outcome {
        self.answer(node, false)
    }

    fn answer(&mut self, node: &NodeId, ok: bool) -> Outcome {
        if let Some((_, answer)) = self.replicas.get_mut(node)
            && answer.is_none()
        {
            *answer = Some(ok);
        }
        self.outcome()
    }

    /// Acknowledgements required overall (for error reports).
    pub fn required(&self) -> usize {
        match &self.requirement {
            Requirement::Any(n) => *n,
            Requirement::PerDc(per) => per.values().sum(),
        }
    }

    /// Acknowledgements received that count toward the requirement.
    pub fn acked(&self) -> usize {
        match &self.requirement {
            Requirement::Any(_) => self.count(None, |a| a == Some(true)),
            Requirement::PerDc(per) => per
                .iter()
                .map(|(dc, &need)| self.count(Some(dc), |a| a == Some(true)).min(need))
                .sum(),
        }
    }

    fn count(&self, dc: Option<&DcName>, pred: impl Fn(Option<bool>) -> bool) -> usize {
        self.replicas
            .values()
            .filter(|(d, a)| dc.is_none_or(|dc| d == dc) && pred(*a))
            .count()
    }

    /// Where the request stands now.
    pub fn outcome(&self) -> Outcome {
        let judge = |need: usize, dc: Option<&DcName>| {
            let acked = self.count(dc, |a| a == Some(true));
            let possible = self.count(dc, |a| a != Some(false));
            if need == 0 || acked >= need {
                Outcome::Won
            } else if possible < need {
                Outcome::Lost
            } else {
                Outcome::Pending
            }
        };
        match &self.requirement {
            Requirement::Any(need) => {
                if self.replicas.is_empty() {
                    Outcome::Lost
                } else {
                    judge(*need, None)
                }
            }
            Requirement::PerDc(per) => {
                if per.is_empty() {
                    // No replica anywhere the level looks: never reachable.
                    return Outcome::Lost;
                }
                let mut outcome = Outcome::Won;
                for (dc, &need) in per {
                    match judge(need, Some(dc)) {
                        Outcome::Lost => return Outcome::Lost,
                        Outcome::Pending => outcome = Outcome::Pending,
                        Outcome::Won => {}
                    }
                }
                outcome
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(spec: &[(&str, &str)]) -> Vec<(NodeId, DcName)> {
        spec.iter()
            .map(|(n, d)| (NodeId((*n).into()), (*d).into()))
            .collect()
    }

    fn n(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[test]
    fn one_ack_wins_exactly_when_a_tracker_is_won_by_that_ack() {
        let dcs: Vec<DcName> = ["dc1", "dc2", "dc3"].map(DcName::from).to_vec();
        let mut won_some = 0;
        for factors in 0..4u32.pow(3) {
            let rf: Vec<u32> = (0..3).map(|i| factors / 4u32.pow(i) % 4).collect();
            let replication: BTreeMap<DcName, u32> = dcs
                .iter()
                .zip(&rf)
                .filter(|(_, n)| **n > 0)
                .map(|(d, n)| (d.clone(), *n))
                .collect();
            let all: Vec<(NodeId, DcName)> = replication
                .iter()
                .flat_map(|(d, &n)| (0..n).map(move |i| (n_of(d, i), d.clone())))
                .collect();
            for level in Consistency::ALL_LEVELS {
                for local in &dcs {
                    for (node, dc) in &all {
                        let mut tracker =
                            QuorumTracker::for_replication(level, &all, local, &replication);
                        let won = tracker.ack(node) == Outcome::Won;
                        won_some += usize::from(won);
                        assert_eq!(
                            QuorumTracker::one_ack_wins(level, local, &replication, dc),
                            won,
                            "{level:?} from {local:?}, ack from {dc:?}, {replication:?}"
                        );
                    }
                }
            }
        }
        assert!(won_some > 0);
    }

    fn n_of(dc: &DcName, i: u32) -> NodeId {
        NodeId(format!("{}-{i}", dc.0))
    }

    #[test]
    fn local_quorum_needs_a_local_majority_only() {
        let r = replicas(&[
            ("a", "dc1"),
            ("b", "dc1"),
            ("c", "dc1"),
            ("x", "dc2"),
            ("y", "dc2"),
        ]);
        let mut t = QuorumTracker::new(Consistency::LocalQuorum, &r, &"dc1".into());
        assert_eq!(t.ack(&n("x")), Outcome::Pending);
        assert_eq!(t.ack(&n("y")), Outcome::Pending);
        assert_eq!(t.ack(&n("a")), Outcome::Pending);
        assert_eq!(t.fail(&n("b")), Outcome::Pending);
        assert_eq!(t.ack(&n("c")), Outcome::Won);
        assert_eq!((t.required(), t.acked()), (2, 2));
    }

    #[test]
    fn each_quorum_is_lost_when_one_dc_cannot_reach_majority() {
        let r = replicas(&[
            ("a", "dc1"),
            ("b", "dc1"),
            ("c", "dc1"),
            ("x", "dc2"),
            ("y", "dc2"),
            ("z", "dc2"),
        ]);
        let mut t = QuorumTracker::new(Consistency::EachQuorum, &r, &"dc1".into());
        t.ack(&n("a"));
        t.ack(&n("b"));
        assert_eq!(t.ack(&n("x")), Outcome::Pending);
        assert_eq!(t.fail(&n("y")), Outcome::Pending);
        assert_eq!(t.fail(&n("z")), Outcome::Lost);
        assert_eq!((t.required(), t.acked()), (4, 3));
    }

    #[test]
    fn quorum_one_all_over_every_replica() {
        let r = replicas(&[("a", "dc1"), ("b", "dc1"), ("x", "dc2")]);
        let mut q = QuorumTracker::new(Consistency::Quorum, &r, &"dc1".into());
        q.ack(&n("x"));
        assert_eq!(
            q.ack(&n("x")),
            Outcome::Pending,
            "a repeated ack counts once"
        );
        assert_eq!(q.ack(&n("b")), Outcome::Won);
        let mut one = QuorumTracker::new(Consistency::One, &r, &"dc1".into());
        assert_eq!(one.ack(&n("x")), Outcome::Won);
        let mut all = QuorumTracker::new(Consistency::All, &r, &"dc1".into());
        all.ack(&n("a"));
        all.ack(&n("b"));
        assert_eq!(all.fail(&n("x")), Outcome::Lost);
    }

    #[test]
    fn local_levels_without_local_replicas_are_lost() {
        let r = replicas(&[("x", "dc2")]);
        let t = QuorumTracker::new(Consistency::LocalOne, &r, &"dc1".into());
        assert_eq!(t.outcome(), Outcome::Lost);
        let t = QuorumTracker::new(Consistency::One, &[], &"dc1".into());
        assert_eq!(t.outcome(), Outcome::Lost);
    }

    #[test]
    fn quorums_follow_the_configured_factor_not_the_replicas_found() {
        // A node that knows only itself must not call itself a quorum of 3.
        let alone = replicas(&[("a", "dc1")]);
        let rf = BTreeMap::from([("dc1".into(), 3), ("dc2".into(), 3)]);
        let mut t =
            QuorumTracker::for_replication(Consistency::LocalQuorum, &alone, &"dc1".into(), &rf);
        assert_eq!(t.outcome(), Outcome::Lost);
        assert_eq!(t.ack(&n("a")), Outcome::Lost);
        assert_eq!(t.required(), 2);
        let full = replicas(&[("a", "dc1"), ("b", "dc1"), ("c", "dc1"), ("x", "dc2")]);
        let mut t =
            QuorumTracker::for_replication(Consistency::EachQuorum, &full, &"dc1".into(), &rf);
        t.ack(&n("a"));
        t.ack(&n("b"));
        assert_eq!(t.ack(&n("x")), Outcome::Lost, "dc2 can give one of two");
        let mut q = QuorumTracker::for_replication(Consistency::Quorum, &full, &"dc1".into(), &rf);
        for r in ["a", "b", "c"] {
            assert_eq!(q.ack(&n(r)), Outcome::Pending);
        }
        assert_eq!(q.ack(&n("x")), Outcome::Won, "4 of 6");
    }

    #[test]
    fn answers_from_strangers_are_ignored() {
        let r = replicas(&[("a", "dc1")]);
        let mut t = QuorumTracker::new(Consistency::One, &r, &"dc1".into());
        assert_eq!(t.ack(&n("intruder")), Outcome::Pending);
        assert_eq!(t.ack(&n("a")), Outcome::Won);
    }
}
