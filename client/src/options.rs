//! Per-request options: what one call may change of the client's
//! defaults (consistency level, each attempt's timeout, an overall
//! deadline across retries, the number of retries), in the style of the
//! AWS SDK's and the MongoDB driver's per-operation settings.
//!
//! ```
//! use std::time::Duration;
//! use isthmus_client::RequestOptions;
//! use isthmus_client::wire::Consistency;
//!
//! let opts = RequestOptions::new()
//!     .consistency(Consistency::All)
//!     .timeout(Duration::from_millis(300))
//!     .deadline(Duration::from_secs(1));
//! assert_eq!(opts.get_consistency(), Some(Consistency::All));
//! ```

use std::time::{Duration, Instant};

use crate::error::ClientError;
use crate::wire::Consistency;

/// Options for one request; anything unset takes the client's default
/// (set on [`ClientBuilder`](crate::ClientBuilder)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    consistency: Option<Consistency>,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    retries: Option<u32>,
}

impl RequestOptions {
    /// No overrides: the client's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The level to read or write at.
    pub fn consistency(mut self, level: Consistency) -> Self {
        self.consistency = Some(level);
        self
    }

    /// How long each attempt waits for its answer (must be more than zero).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The whole call's budget, from when it starts, across every attempt
    /// and every backoff between them (must be more than zero). An attempt
    /// never waits past it: the last one's timeout is cut to what is left.
    /// When it passes, the call fails with
    /// [`ClientError::DeadlineExceeded`], which carries the last attempt's
    /// error.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Retries after the first attempt, for retryable errors only.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// The level set, if any.
    pub fn get_consistency(&self) -> Option<Consistency> {
        self.consistency
    }

    /// The per-attempt timeout set, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The overall deadline set, if any.
    pub fn get_deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// The retries set, if any.
    pub fn get_retries(&self) -> Option<u32> {
        self.retries
    }

    /// These options over `defaults`, checked, with the deadline fixed
    /// from now.
    pub(crate) fn resolve(&self, defaults: &Defaults) -> Result<Resolved, ClientError> {
        let timeout = self.timeout.unwrap_or(defaults.timeout);
        if timeout.is_zero() {
            return Err(ClientError::InvalidOption {
                field: "timeout",
                reason: "must be more than zero".into(),
            });
        }
        let deadline = self.deadline.or(defaults.deadline);
        if deadline.is_some_and(|d| d.is_zero()) {
            return Err(ClientError::InvalidOption {
                field: "deadline",
                reason: "must be more than zero".into(),
            });
        }
        let started = Instant::now();
        Ok(Resolved {
            consistency: self.consistency.or(defaults.consistency),
            timeout,
            budget: deadline,
            deadline: deadline.map(|d| started + d),
            retries: self.retries.unwrap_or(defaults.retries),
        })
    }
}

/// The client-wide defaults options fall back on.
#[derive(Clone, Debug)]
pub(crate) struct Defaults {
    pub consistency: Option<Consistency>,
    pub timeout: Duration,
    pub deadline: Option<Duration>,
    pub retries: u32,
}

/// Options resolved for one call.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub consistency: Option<Consistency>,
    pub timeout: Duration,
    /// The overall budget, as given.
    pub budget: Option<Duration>,
    /// When the overall budget runs out.
    pub deadline: Option<Instant>,
    pub retries: u32,
}

impl Resolved {
    /// Time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The timeout of an attempt starting now: the per-attempt timeout,
    /// cut to what is left of the deadline.
    pub fn attempt_timeout(&self) -> Duration {
        match self.remaining() {
            Some(left) => left.min(self.timeout),
            None => self.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            consistency: Some(Consistency::LocalQuorum),
            timeout: Duration::from_secs(2),
            deadline: None,
            retries: 3,
        }
    }

    #[test]
    fn unset_options_take_the_defaults_and_set_ones_win() {
        let r = RequestOptions::new().resolve(&defaults()).unwrap();
        assert_eq!(r.consistency, Some(Consistency::LocalQuorum));
        assert_eq!(
            (r.timeout, r.retries, r.deadline),
            (Duration::from_secs(2), 3, None)
        );
        let r = RequestOptions::new()
            .consistency(Consistency::One)
            .timeout(Duration::from_secs(5))
            .deadline(Duration::from_millis(100))
            .retries(0)
            .resolve(&defaults())
            .unwrap();
        assert_eq!(r.consistency, Some(Consistency::One));
        assert_eq!(r.retries, 0);
        // The deadline cuts the attempt's timeout.
        assert!(r.attempt_timeout() <= Duration::from_millis(100));
    }

    #[test]
    fn zero_timeouts_are_refused_by_name() {
        let e = RequestOptions::new()
            .timeout(Duration::ZERO)
            .resolve(&defaults())
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::InvalidOption {
                    field: "timeout",
                    ..
                }
            ),
            "{e}"
        );
        let e = RequestOptions::new()
            .deadline(Duration::ZERO)
            .resolve(&defaults())
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::InvalidOption {
                    field: "deadline",
                    ..
                }
            ),
            "{e}"
        );
    }
}
