//! Per-request options: what one call may change of the client's
//! defaults (consistency level, each attempt's timeout, an overall
//! deadline across retries, the number of retries), in the style of the
//! AWS SDK's and the MongoDB driver's per-operation settings, and what
//! only a write can choose (a sloppy or strict quorum, the value's
//! expiry, the write's id). A write-only option on a read is refused
//! ([`ClientError::InvalidOption`]), never ignored.
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
use crate::wire::{Consistency, Expiry, WriteId};

/// Options for one request; anything unset takes the client's default
/// (set on [`ClientBuilder`](crate::ClientBuilder)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestOptions {
    consistency: Option<Consistency>,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    retries: Option<u32>,
    sloppy: Option<bool>,
    expiry: Option<Expiry>,
    write_id: Option<WriteId>,
}

/// What a call is, for the options it may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// A read or a scan: no write option.
    Read,
    /// One write of a value.
    Write,
    /// A delete (a tombstone has no expiry).
    Delete,
    /// Many writes, each its own (no shared write id).
    ManyWrites,
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

    /// Writes only: a sloppy quorum (`true`: with replicas of the key
    /// down, the next healthy nodes of their datacenter along the ring
    /// take the write as a hint and count toward the level, and deliver it
    /// when the replica returns) or a strict one (`false`), whatever the
    /// keyspace's `sloppy_quorum` says. Reads are always strict.
    pub fn sloppy(mut self, sloppy: bool) -> Self {
        self.sloppy = Some(sloppy);
        self
    }

    /// Writes of a value only: when it expires, instead of the keyspace's
    /// default (additions to a counter keep the counter's expiry unless
    /// this is set).
    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = Some(expiry);
        self
    }

    /// Single writes only: the write's id instead of a fresh random one.
    /// Sending the same write again with the same id after an error (a
    /// timeout, an unavailable node) is the same write, which takes effect
    /// at most once wherever its attempts land.
    pub fn write_id(mut self, write_id: WriteId) -> Self {
        self.write_id = Some(write_id);
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

    /// The quorum choice set, if any.
    pub fn get_sloppy(&self) -> Option<bool> {
        self.sloppy
    }

    /// The expiry set, if any.
    pub fn get_expiry(&self) -> Option<Expiry> {
        self.expiry
    }

    /// The write id set, if any.
    pub fn get_write_id(&self) -> Option<WriteId> {
        self.write_id
    }

    /// [`Self::resolve`] for a call of kind `use_`, refusing an option it
    /// cannot honour.
    pub(crate) fn resolve_for(
        &self,
        defaults: &Defaults,
        use_: Use,
    ) -> Result<Resolved, ClientError> {
        let refuse = |field: &'static str, reason: &str| {
            Err(ClientError::InvalidOption {
                field,
                reason: reason.into(),
            })
        };
        match use_ {
            Use::Read if self.sloppy.is_some() => {
                return refuse("sloppy", "reads are always strict; it applies to writes");
            }
            Use::Read if self.expiry.is_some() => {
                return refuse("expiry", "only a write of a value takes an expiry");
            }
            Use::Read if self.write_id.is_some() => {
                return refuse("write_id", "only a write has a write id");
            }
            Use::Delete if self.expiry.is_some() => {
                return refuse("expiry", "a delete has no expiry");
            }
            Use::ManyWrites if self.write_id.is_some() => {
                return refuse(
                    "write_id",
                    "each write of a batch has its own id; give one per write",
                );
            }
            _ => {}
        }
        self.resolve(defaults)
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
            sloppy: self.sloppy,
            expiry: self.expiry,
            write_id: self.write_id,
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
    pub sloppy: Option<bool>,
    pub expiry: Option<Expiry>,
    pub write_id: Option<WriteId>,
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

    #[test]
    fn write_options_are_refused_where_they_cannot_apply() {
        let refused = |opts: RequestOptions, use_: Use| match opts.resolve_for(&defaults(), use_) {
            Err(ClientError::InvalidOption { field, .. }) => field,
            other => panic!("{opts:?} for {use_:?} was not refused: {other:?}"),
        };
        let id = WriteId([7; 16]);
        assert_eq!(
            refused(RequestOptions::new().sloppy(true), Use::Read),
            "sloppy"
        );
        assert_eq!(
            refused(RequestOptions::new().expiry(Expiry::Never), Use::Read),
            "expiry"
        );
        assert_eq!(
            refused(RequestOptions::new().write_id(id), Use::Read),
            "write_id"
        );
        assert_eq!(
            refused(
                RequestOptions::new().expiry(Expiry::AfterMs(5)),
                Use::Delete
            ),
            "expiry"
        );
        assert_eq!(
            refused(RequestOptions::new().write_id(id), Use::ManyWrites),
            "write_id"
        );
        // Where they apply, they are carried as given.
        let r = RequestOptions::new()
            .sloppy(false)
            .expiry(Expiry::AtMs(9))
            .write_id(id)
            .resolve_for(&defaults(), Use::Write)
            .unwrap();
        assert_eq!(
            (r.sloppy, r.expiry, r.write_id),
            (Some(false), Some(Expiry::AtMs(9)), Some(id))
        );
        let r = RequestOptions::new()
            .sloppy(true)
            .write_id(id)
            .resolve_for(&defaults(), Use::Delete)
            .unwrap();
        assert_eq!((r.sloppy, r.write_id), (Some(true), Some(id)));
        let r = RequestOptions::new()
            .sloppy(true)
            .expiry(Expiry::Never)
            .resolve_for(&defaults(), Use::ManyWrites)
            .unwrap();
        assert_eq!((r.sloppy, r.expiry), (Some(true), Some(Expiry::Never)));
    }
}
