//! The phi accrual failure detector (Hayashibara et al., as Cassandra and
//! Akka use it).
//!
//! Instead of a yes/no timeout, the detector keeps a window of the gaps
//! between heartbeats it observed from a peer and answers with `phi`: how
//! surprised it would be, on a log10 scale, that no heartbeat has arrived
//! for as long as it has. A peer is convicted when `phi` crosses a
//! threshold (8 by default: a one-in-10^8 chance that a live peer is this
//! late). The gaps are modelled as exponentially distributed, as Cassandra
//! does, which is robust to the bursty arrival of gossip.
//!
//! Pure logic: time is passed in, so simulations drive it with their clock.

use std::collections::VecDeque;
use std::time::Duration;

/// Tuning of the detector.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorConfig {
    /// `phi` at or above which a peer is considered down.
    pub phi_threshold: f64,
    /// Heartbeat gaps remembered per peer.
    pub window_len: usize,
    /// Gap assumed before any has been observed (the gossip interval).
    /// It also stays in the window as its first sample, as in Cassandra:
    /// a peer's first heartbeats often arrive in a burst (its news reaches
    /// this node along several gossip paths at once), and a window of only
    /// those few-millisecond gaps would convict it after a few hundred
    /// milliseconds of ordinary silence.
    pub initial_interval: Duration,
    /// Gaps longer than this are not learned (a restart or a pause would
    /// otherwise teach the detector to wait forever).
    pub interval_max: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            phi_threshold: 8.0,
            window_len: 1000,
            initial_interval: Duration::from_secs(1),
            interval_max: Duration::from_secs(2),
        }
    }
}

/// Heartbeat arrival history of one peer.
#[derive(Clone, Debug)]
pub struct ArrivalWindow {
    gaps_ms: VecDeque<f64>,
    sum_ms: f64,
    last_ms: Option<u64>,
}

impl ArrivalWindow {
    /// An empty history.
    pub fn new() -> Self {
        ArrivalWindow {
            gaps_ms: VecDeque::new(),
            sum_ms: 0.0,
            last_ms: None,
        }
    }

    /// A heartbeat arrived at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: u64, config: &DetectorConfig) {
        if self.last_ms.is_none() && self.gaps_ms.is_empty() {
            let prior = config.initial_interval.as_millis() as f64;
            self.gaps_ms.push_back(prior);
            self.sum_ms += prior;
        }
        if let Some(last) = self.last_ms {
            let gap = now_ms.saturating_sub(last) as f64;
            if gap <= config.interval_max.as_millis() as f64 {
                if self.gaps_ms.len() == config.window_len.max(1) {
                    self.sum_ms -= self.gaps_ms.pop_front().unwrap_or(0.0);
                }
                self.gaps_ms.push_back(gap);
                self.sum_ms += gap;
            }
        }
        self.last_ms = Some(now_ms);
    }

    /// Mean gap, or the configured initial interval when none is known.
    fn mean_ms(&self, config: &DetectorConfig) -> f64 {
        if self.gaps_ms.is_empty() {
            config.initial_interval.as_millis() as f64
        } else {
            (self.sum_ms / self.gaps_ms.len() as f64).max(1.0)
        }
    }

    /// Suspicion at `now_ms`: `-log10(P(gap > elapsed))` under an
    /// exponential model, i.e. `elapsed / (mean * ln 10)`. Zero before the
    /// first heartbeat (nothing to be surprised about yet).
    pub fn phi(&self, now_ms: u64, config: &DetectorConfig) -> f64 {
        let Some(last) = self.last_ms else {
            return 0.0;
        };
        let elapsed = now_ms.saturating_sub(last) as f64;
        elapsed / (self.mean_ms(config) * std::f64::consts::LN_10)
    }

    /// Is the peer convicted at `now_ms`?
    pub fn is_down(&self, now_ms: u64, config: &DetectorConfig) -> bool {
        self.last_ms.is_some() && self.phi(now_ms, config) >= config.phi_threshold
    }
}

impl Default for ArrivalWindow {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_heartbeats_keep_phi_low_and_silence_raises_it() {
        let config = DetectorConfig::default();
        let mut w = ArrivalWindow::new();
        for i in 0..100 {
            w.heartbeat(i * 200, &config);
        }
        let last = 99 * 200;
        assert!(w.phi(last + 200, &config) < 1.0);
        assert!(!w.is_down(last + 1000, &config));
        // 8 * ln(10) * 200 ms ≈ 3.7 s of silence convicts.
        assert!(w.is_down(last + 4000, &config));
        assert!(w.phi(last + 8000, &config) > w.phi(last + 4000, &config));
    }

    #[test]
    fn an_early_burst_of_heartbeats_does_not_make_a_hair_trigger() {
        let config = DetectorConfig {
            initial_interval: Duration::from_millis(500),
            ..DetectorConfig::default()
        };
        let mut w = ArrivalWindow::new();
        // The same news along three paths, 2 ms apart, then the usual
        // quiet of a gossip round or two.
        for t in [1000, 1002, 1004] {
            w.heartbeat(t, &config);
        }
        assert!(!w.is_down(1004 + 1500, &config));
        // Real silence still convicts: the prior is one sample among many.
        assert!(w.is_down(1004 + 5000, &config));
        for i in 1..200 {
            w.heartbeat(1004 + i * 250, &config);
        }
        let last = 1004 + 199 * 250;
        assert!(!w.is_down(last + 1000, &config));
        assert!(w.is_down(last + 5000, &config));
    }

    #[test]
    fn long_pauses_are_not_learned() {
        let config = DetectorConfig::default();
        let mut w = ArrivalWindow::new();
        for i in 0..30 {
            w.heartbeat(i * 100, &config);
        }
        w.heartbeat(60_000, &config); // a restart, not a rhythm
        assert!(w.is_down(60_000 + 3000, &config));
        assert!(!ArrivalWindow::new().is_down(1_000_000, &config));
    }
}
