//! `Version` and `Clock` builders for tests and benches.
//!
//! A version starts from its clock ([`dotted`], [`covering`],
//! [`with_clock`]), may take a timestamp ([`VersionBuilder::at`]) and an
//! origin datacenter ([`VersionBuilder::dc`]), and ends as a value or a
//! tombstone:
//!
//! ```
//! use isthmus_testkit::version::{dot, dotted, with_clock};
//!
//! let a = dotted(1, 1).value(b"a"); // timestamp 1, from dc1
//! let b = dotted(2, 1).at(1_700_000_000_000).dc("dc2").tombstone();
//! assert!(a.clock.is_concurrent_with(&b.clock));
//! assert_eq!(with_clock(dot(1, 1)).value(b"a"), a);
//! ```

use isthmus_core::model::{Actor, Clock, DcName, Dot, Version};

/// A clock holding one detached event: `actor`'s `counter`-th, without
/// its predecessors. Versions with dots of different actors are
/// concurrent.
pub fn dot(actor: u64, counter: u64) -> Clock {
    Clock::from_parts(
        [],
        [Dot {
            actor: Actor(actor),
            counter,
        }],
    )
}

/// A clock holding every event of `actor` up to `counter`: it dominates
/// any earlier history of that actor alone.
pub fn history(actor: u64, counter: u64) -> Clock {
    Clock::from_parts([(Actor(actor), counter)], [])
}

/// A version whose clock is [`dot`]`(actor, counter)`.
pub fn dotted(actor: u64, counter: u64) -> VersionBuilder {
    with_clock(dot(actor, counter))
}

/// A version whose clock is [`history`]`(actor, counter)`.
pub fn covering(actor: u64, counter: u64) -> VersionBuilder {
    with_clock(history(actor, counter))
}

/// A version with any clock.
pub fn with_clock(clock: Clock) -> VersionBuilder {
    VersionBuilder {
        clock,
        timestamp_ms: None,
        dc: "dc1".into(),
    }
}

/// A version under construction; see the [module](self) docs.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until .value() or .tombstone()"]
pub struct VersionBuilder {
    clock: Clock,
    timestamp_ms: Option<u64>,
    dc: DcName,
}

impl VersionBuilder {
    /// The wall-clock timestamp, in ms. Without it, the greatest counter
    /// in the clock (so later events of an actor sort later).
    pub fn at(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// The datacenter that coordinated it (`dc1` without it).
    pub fn dc(mut self, dc: &str) -> Self {
        self.dc = dc.into();
        self
    }

    /// The version, holding `value`.
    pub fn value(self, value: impl AsRef<[u8]>) -> Version {
        let ts = self.timestamp();
        Version::value(self.clock, value.as_ref().to_vec(), ts, self.dc)
    }

    /// The version, a tombstone.
    pub fn tombstone(self) -> Version {
        let ts = self.timestamp();
        Version::tombstone(self.clock, ts, self.dc)
    }

    fn timestamp(&self) -> u64 {
        self.timestamp_ms.unwrap_or_else(|| {
            let prefix = self.clock.vector().values().copied().max();
            let detached = self.clock.dots().iter().map(|d| d.counter).max();
            prefix.max(detached).unwrap_or(0)
        })
    }
}
