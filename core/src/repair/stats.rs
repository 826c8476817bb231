//! What a repair did, counted.

/// What a repair did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairStats {
    /// Range syncs completed (a range synced with two partners counts
    /// twice).
    pub ranges: u64,
    /// Range syncs that could not run (partner down) or failed (partner
    /// unreachable, storage error); the next run retries them.
    pub ranges_failed: u64,
    /// Keys whose sets differed between the two sides.
    pub keys_differing: u64,
    /// Keys for which this node absorbed versions it lacked.
    pub keys_pulled: u64,
    /// Keys for which the partner was sent versions it lacked.
    pub keys_pushed: u64,
    /// Postcard-encoded bytes of the requests to partners and their
    /// answers (peer message bodies, without envelopes and frame headers).
    pub bytes: u64,
}

/// One line for logs: `R ranges (F failed), D keys differing, P pulled,
/// S pushed, B bytes`.
impl std::fmt::Display for RepairStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ranges ({} failed), {} keys differing, {} pulled, {} pushed, {} bytes",
            self.ranges,
            self.ranges_failed,
            self.keys_differing,
            self.keys_pulled,
            self.keys_pushed,
            self.bytes
        )
    }
}

impl std::ops::AddAssign for RepairStats {
    fn add_assign(&mut self, other: RepairStats) {
        self.ranges += other.ranges;
        self.ranges_failed += other.ranges_failed;
        self.keys_differing += other.keys_differing;
        self.keys_pulled += other.keys_pulled;
        self.keys_pushed += other.keys_pushed;
        self.bytes += other.bytes;
    }
}
