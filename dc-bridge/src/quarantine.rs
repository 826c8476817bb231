//! The quarantine: a dead-letter store, per remote datacenter, of the
//! records that datacenter refused for a reason retrying cannot change
//! (see [`isthmus_core::bridge::is_permanent`]: a keyspace it does not
//! know or does not replicate, a key, value or sibling count over its
//! limits). The shipper moves its cursor past such a record only once the
//! record is durable here, so the DC pair moves on and nothing is dropped
//! silently; an operator lists, exports and replays the records
//! (`isthmus bridge quarantine`) once the cause is fixed.
//!
//! On disk, one file per remote datacenter, `DIR/q-<hex of the DC
//! name>.log` (a reversible name: two DCs never share a file):
//!
//! ```text
//! [magic "ISTHQRN" + format version (1 byte)]
//! then records: [payload length: u32 LE][crc32c of payload: u32 LE][payload: postcard(Entry)]
//! ```
//!
//! An add appends and fsyncs before it returns (a new file's name is made
//! durable first). An add that fails is cut back before it returns, or
//! the store refuses adds until the node restarts; a failed fsync refuses
//! them too (what reached the disk is uncertain). Opening cuts a torn
//! tail (an add the crash interrupted: its records are still behind the
//! cursor, shipped and refused again); damage before the end (a complete
//! record with a bad checksum) loses the records after it, and the
//! bridge owes that DC a full sync.
//!
//! Each DC's file is bounded by `bytes_max`: a refused record that does
//! not fit is not kept, and the caller owes the DC a full sync instead
//! (counted as an overflow), so the pair still moves on and the loss is
//! never silent. Removal (after a replay) rewrites the file with
//! [`Fs::write_atomic`]. Only an index (offsets, sequence numbers) stays
//! in memory; listings read the records from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use isthmus_client::wire::{ErrorCode, QuarantinePosition, QuarantinedRecord};
use isthmus_core::fs::{Fs, FsFile};
use isthmus_core::model::{DcName, Payload};
use isthmus_core::store::StoreError;
use isthmus_core::wall_clock::now_ms;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::batch::Record;

/// The file header: magic and format version.
pub const HEADER: &[u8; 8] = b"ISTHQRN\x01";

/// Largest entry accepted when reading (a larger claimed length is
/// damage).
const ENTRY_BYTES_MAX: usize = 8 << 20;

/// Most records in one listing page.
pub const PAGE_RECORDS_MAX: usize = 1000;

/// Most encoded record bytes in one listing page (a page travels in one
/// frame).
pub const PAGE_BYTES_MAX: usize = 4 << 20;

/// Longest refusal message kept (the receiver writes it; a longer one is
/// cut at a character boundary).
pub const MESSAGE_BYTES_MAX: usize = 1024;

fn clip(message: &str) -> String {
    let mut end = message.len().min(MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

/// One quarantined record as the store keeps it (format version 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its id in its DC's store (increasing).
    pub id: u64,
    /// When it was quarantined, Unix ms.
    pub quarantined_ms: u64,
    /// The refusal's code.
    pub code: ErrorCode,
    /// The refusal's message, as the receiver wrote it.
    pub message: String,
    /// The outbox record, as shipped.
    pub record: Record,
}

/// A record refused for good, to keep.
#[derive(Clone, Debug)]
pub struct Refused {
    /// The record.
    pub record: Arc<Record>,
    /// Why it was refused.
    pub code: ErrorCode,
    /// The receiver's message.
    pub message: String,
}

/// What [`Quarantine::add`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Added {
    /// Records now held (new, or held already from an earlier try).
    pub kept: usize,
    /// Records the bound left no room for: the caller owes the DC a full
    /// sync before it moves its cursor past them.
    pub overflowed: usize,
}

/// Per-DC figures for the bridge's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineStats {
    /// Records quarantined since the node started.
    pub quarantined: u64,
    /// Records held now.
    pub held: u64,
    /// Bytes of the DC's file.
    pub bytes: u64,
    /// Records the bound left no room for since the node started.
    pub overflows: u64,
}

struct Slot {
    offset: u64,
    len: u32,
}

struct DcStore<F: Fs> {
    path: PathBuf,
    file: Option<F::File>,
    slots: BTreeMap<u64, Slot>,
    /// Outbox sequence numbers held (a retried batch is kept once).
    seqs: BTreeSet<u64>,
    bytes: u64,
    next_id: u64,
    stats: QuarantineStats,
    /// An add failed and could not be cut back, or an fsync failed: adds
    /// are refused until the node restarts.
    broken: Option<String>,
}

/// The quarantine of one node's bridge, on the file system `F`.
pub struct Quarantine<F: Fs> {
    fs: F,
    dir: PathBuf,
    bytes_max: u64,
    stores: Mutex<BTreeMap<DcName, DcStore<F>>>,
}

fn failed(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed {
        reason: format!("quarantine {}: {e}", path.display()),
    }
}

fn file_name(dc: &DcName) -> String {
    format!("q-{}.log", crate::outbox::dc_hex(dc))
}

fn dc_of(name: &str) -> Option<DcName> {
    crate::outbox::dc_of_hex(name.strip_prefix("q-")?.strip_suffix(".log")?)
}

fn frame(entry: &Entry) -> Vec<u8> {
    let payload = isthmus_client::wire::encode(entry);
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// How a file read: its entries with their slots, the readable length,
/// and whether what follows it is damage rather than a torn tail.
struct Scan {
    entries: Vec<(Entry, Slot)>,
    good: usize,
    damaged: bool,
}

fn scan(bytes: &[u8]) -> Scan {
    let mut entries = Vec::new();
    if bytes.len() < HEADER.len() || &bytes[..HEADER.len()] != HEADER {
        // A file a crash left before its header was durable holds no
        // entry; anything else is not ours to read.
        let damaged = !HEADER.starts_with(&bytes[..bytes.len().min(HEADER.len())]);
        return Scan {
            entries,
            good: 0,
            damaged,
        };
    }
    let mut at = HEADER.len();
    let mut damaged = false;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        if len > ENTRY_BYTES_MAX {
            damaged = true;
            break;
        }
        if bytes.len() - at - 8 < len {
            break; // torn: the crash cut the last add short
        }
        let payload = &bytes[at + 8..at + 8 + len];
        let entry = (crc32c::crc32c(payload) == crc)
            .then(|| isthmus_client::wire::decode::<Entry>(payload).ok())
            .flatten();
        let Some(entry) = entry else {
            damaged = true;
            break;
        };
        let slot = Slot {
            offset: at as u64,
            len: (8 + len) as u32,
        };
        entries.push((entry, slot));
        at += 8 + len;
    }
    Scan {
        entries,
        good: at,
        damaged,
    }
}

impl<F: Fs> Quarantine<F> {
    /// Open (creating) the quarantine in `dir` on `fs`, each remote DC's
    /// file bounded by `bytes_max`. Returns it and the DCs whose file was
    /// damaged (records lost: the caller owes them a full sync).
    pub fn open(fs: F, dir: &Path, bytes_max: u64) -> Result<(Self, Vec<DcName>), StoreError> {
        fs.create_dir_all(dir).map_err(|e| failed(dir, e))?;
        // The directory's own name, durable before any file in it counts.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent).map_err(|e| failed(parent, e))?;
        }
        let mut stores = BTreeMap::new();
        let mut damaged = Vec::new();
        for path in fs.list(dir).map_err(|e| failed(dir, e))? {
            let Some(dc) = path.file_name().and_then(|n| n.to_str()).and_then(dc_of) else {
                continue;
            };
            let bytes = fs.read_all(&path).map_err(|e| failed(&path, e))?;
            let found = scan(&bytes);
            if found.damaged {
                tracing::error!(path = %path.display(), offset = found.good, "quarantine file damaged; the records after it are lost, full sync owed");
                damaged.push(dc.clone());
            }
            let mut store = DcStore {
                path: path.clone(),
                file: None,
                slots: BTreeMap::new(),
                seqs: BTreeSet::new(),
                bytes: 0,
                next_id: 1,
                stats: QuarantineStats::default(),
                broken: None,
            };
            if found.good < HEADER.len() {
                // No header (a crash before it was durable, or not ours):
                // start the file over.
                Self::create_file(&fs, dir, &path)?;
            } else if found.good < bytes.len() {
                let f = fs.open(&path).map_err(|e| failed(&path, e))?;
                f.truncate(found.good as u64)
                    .and_then(|()| f.sync())
                    .map_err(|e| failed(&path, e))?;
            }
            store.bytes = found.good.max(HEADER.len()) as u64;
            for (entry, slot) in found.entries {
                store.next_id = store.next_id.max(entry.id + 1);
                store.seqs.insert(entry.record.seq);
                store.slots.insert(entry.id, slot);
            }
            store.stats.held = store.slots.len() as u64;
            stores.insert(dc, store);
        }
        let quarantine = Quarantine {
            fs,
            dir: dir.to_owned(),
            bytes_max,
            stores: Mutex::new(stores),
        };
        Ok((quarantine, damaged))
    }

    fn create_file(fs: &F, dir: &Path, path: &Path) -> Result<F::File, StoreError> {
        let f = fs.create(path).map_err(|e| failed(path, e))?;
        f.append(HEADER)
            .and_then(|()| f.sync())
            .and_then(|()| fs.sync_dir(dir))
            .map_err(|e| failed(path, e))?;
        Ok(f)
    }

    /// Keep `refused` in `dc`'s store, durably when it returns (one
    /// fsync). Records already held (by outbox sequence number) are not
    /// kept twice; records past the bound are not kept (see [`Added`]).
    /// Blocking.
    pub fn add(&self, dc: &DcName, refused: &[Refused]) -> Result<Added, StoreError> {
        let mut stores = self.stores.lock();
        let store = stores.entry(dc.clone()).or_insert_with(|| DcStore {
            path: self.dir.join(file_name(dc)),
            file: None,
            slots: BTreeMap::new(),
            seqs: BTreeSet::new(),
            bytes: HEADER.len() as u64,
            next_id: 1,
            stats: QuarantineStats::default(),
            broken: None,
        });
        if let Some(why) = &store.broken {
            return Err(failed(&store.path, why));
        }
        if store.file.is_none() {
            let file = if self.fs.exists(&store.path) {
                self.fs
                    .open(&store.path)
                    .map_err(|e| failed(&store.path, e))?
            } else {
                Self::create_file(&self.fs, &self.dir, &store.path)?
            };
            store.file = Some(file);
        }
        let file = store.file.as_ref().expect("opened above");
        let mut added = Added::default();
        let mut new: Vec<(u64, u64, Slot)> = Vec::new();
        let mut end = store.bytes;
        let mut next_id = store.next_id;
        let now = now_ms();
        for r in refused {
            if store.seqs.contains(&r.record.seq) || new.iter().any(|(_, s, _)| *s == r.record.seq)
            {
                added.kept += 1;
                continue;
            }
            let entry = Entry {
                id: next_id,
                quarantined_ms: now,
                code: r.code,
                message: clip(&r.message),
                record: (*r.record).clone(),
            };
            let bytes = frame(&entry);
            if end + bytes.len() as u64 > self.bytes_max || bytes.len() > ENTRY_BYTES_MAX {
                added.overflowed += 1;
                continue;
            }
            if let Err(e) = file.append(&bytes) {
                return Err(self.cut_back(store, e));
            }
            new.push((
                next_id,
                r.record.seq,
                Slot {
                    offset: end,
                    len: bytes.len() as u32,
                },
            ));
            end += bytes.len() as u64;
            next_id += 1;
            added.kept += 1;
        }
        if !new.is_empty()
            && let Err(e) = file.sync()
        {
            let why = format!("an fsync failed ({e}); adds are refused until the node restarts");
            store.broken = Some(why.clone());
            return Err(failed(&store.path, why));
        }
        let count = new.len() as u64;
        for (id, seq, slot) in new {
            store.slots.insert(id, slot);
            store.seqs.insert(seq);
        }
        store.bytes = end;
        store.next_id = next_id;
        store.stats.quarantined += count;
        store.stats.overflows += added.overflowed as u64;
        store.stats.held = store.slots.len() as u64;
        Ok(added)
    }

    /// An append failed part-way: cut the file back to its last whole
    /// record, or refuse adds until restart (opening cuts it then).
    fn cut_back(&self, store: &mut DcStore<F>, e: std::io::Error) -> StoreError {
        let cut = store
            .file
            .as_ref()
            .map(|f| f.truncate(store.bytes))
            .unwrap_or(Ok(()));
        if let Err(t) = cut {
            store.broken = Some(format!(
                "an add failed ({e}) and could not be cut back ({t}); adds are refused until the node restarts"
            ));
        }
        failed(&store.path, e)
    }

    /// Figures per DC.
    pub fn stats(&self) -> BTreeMap<DcName, QuarantineStats> {
        self.stores
            .lock()
            .iter()
            .map(|(dc, s)| {
                let stats = QuarantineStats {
                    bytes: s.bytes,
                    ..s.stats
                };
                (dc.clone(), stats)
            })
            .collect()
    }

    /// The entries of `dc` with ids in `ids` (every one when `None`), at
    /// most `count_max` of them and about `bytes_max` bytes (at least
    /// one), in id order from `after` on. Blocking.
    pub fn entries(
        &self,
        dc: &DcName,
        after: u64,
        ids: Option<&BTreeSet<u64>>,
        count_max: usize,
        bytes_max: usize,
    ) -> Result<(Vec<Entry>, bool), StoreError> {
        let stores = self.stores.lock();
        let Some(store) = stores.get(dc) else {
            return Ok((Vec::new(), false));
        };
        if store.slots.is_empty() {
            return Ok((Vec::new(), false));
        }
        let file = self
            .fs
            .open(&store.path)
            .map_err(|e| failed(&store.path, e))?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for (id, slot) in store.slots.range(after + 1..) {
            if ids.is_some_and(|ids| !ids.contains(id)) {
                continue;
            }
            if out.len() >= count_max || (bytes + slot.len as usize > bytes_max && !out.is_empty())
            {
                more = true;
                break;
            }
            let mut buf = vec![0; slot.len as usize];
            file.read_at(&mut buf, slot.offset)
                .map_err(|e| failed(&store.path, e))?;
            let entry = isthmus_client::wire::decode::<Entry>(&buf[8..])
                .map_err(|e| failed(&store.path, format!("entry {id}: {e}")))?;
            bytes += buf.len();
            out.push(entry);
        }
        Ok((out, more))
    }

    /// A page of the listing: entries of `dc` (or of every DC) after
    /// `after`, as the operator sees them. Blocking.
    pub fn list(
        &self,
        dc: Option<&DcName>,
        after: Option<&QuarantinePosition>,
        with_records: bool,
    ) -> Result<(Vec<QuarantinedRecord>, Option<QuarantinePosition>), StoreError> {
        let dcs: Vec<DcName> = self
            .stores
            .lock()
            .keys()
            .filter(|d| dc.is_none_or(|only| only == *d))
            .filter(|d| after.is_none_or(|a| *d.0 >= *a.dc))
            .cloned()
            .collect();
        let mut out = Vec::new();
        let mut bytes = 0;
        for d in dcs {
            let from = after.filter(|a| *a.dc == *d.0).map_or(0, |a| a.id);
            let (entries, more) = self.entries(
                &d,
                from,
                None,
                PAGE_RECORDS_MAX - out.len(),
                PAGE_BYTES_MAX.saturating_sub(bytes).max(1),
            )?;
            for e in entries {
                let encoded = isthmus_client::wire::encode(&e.record);
                bytes += encoded.len();
                out.push(summary(&d, e, with_records.then_some(encoded)));
            }
            if more || out.len() >= PAGE_RECORDS_MAX || bytes >= PAGE_BYTES_MAX {
                let next = out.last().map(|r| QuarantinePosition {
                    dc: r.dc.clone(),
                    id: r.id,
                });
                return Ok((out, next));
            }
        }
        Ok((out, None))
    }

    /// Remove `ids` from `dc`'s store (records replayed): the file is
    /// rewritten without them, atomically. Blocking.
    pub fn remove(&self, dc: &DcName, ids: &BTreeSet<u64>) -> Result<(), StoreError> {
        let mut stores = self.stores.lock();
        let Some(store) = stores.get_mut(dc) else {
            return Ok(());
        };
        let bytes = self
            .fs
            .read_all(&store.path)
            .map_err(|e| failed(&store.path, e))?;
        let found = scan(&bytes[..(store.bytes as usize).min(bytes.len())]);
        let mut kept = HEADER.to_vec();
        let mut slots = BTreeMap::new();
        let mut seqs = BTreeSet::new();
        for (entry, slot) in found.entries {
            if ids.contains(&entry.id) {
                continue;
            }
            let at = kept.len() as u64;
            let from = slot.offset as usize;
            kept.extend_from_slice(&bytes[from..from + slot.len as usize]);
            seqs.insert(entry.record.seq);
            slots.insert(
                entry.id,
                Slot {
                    offset: at,
                    len: slot.len,
                },
            );
        }
        store.file = None;
        if let Err(e) = self.fs.write_atomic(&store.path, &kept) {
            // The file holds the old content or the new: index what it
            // holds.
            let now = self.fs.read_all(&store.path).unwrap_or_default();
            let found = scan(&now);
            store.slots.clear();
            store.seqs.clear();
            for (entry, slot) in found.entries {
                store.seqs.insert(entry.record.seq);
                store.slots.insert(entry.id, slot);
            }
            store.bytes = found.good.max(HEADER.len()) as u64;
            store.stats.held = store.slots.len() as u64;
            return Err(failed(&store.path, e));
        }
        store.slots = slots;
        store.seqs = seqs;
        store.bytes = kept.len() as u64;
        store.stats.held = store.slots.len() as u64;
        Ok(())
    }
}

/// An entry as the operator sees it.
fn summary(dc: &DcName, e: Entry, record: Option<Vec<u8>>) -> QuarantinedRecord {
    let (tombstone, value_bytes) = match &e.record.version.payload {
        Payload::Value(v) => (false, v.len() as u64),
        Payload::Tombstone => (true, 0),
    };
    QuarantinedRecord {
        dc: dc.0.to_string(),
        id: e.id,
        quarantined_ms: e.quarantined_ms,
        keyspace: e.record.keyspace,
        key: e.record.key,
        code: e.code,
        message: e.message,
        seq: e.record.seq,
        timestamp_ms: e.record.version.timestamp_ms,
        tombstone,
        value_bytes,
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_core::fs::MemFs;
    use isthmus_core::model::{Actor, Clock, Dot, Version};

    fn dir() -> &'static Path {
        Path::new("/bridge/quarantine")
    }

    fn refused(seq: u64, value_bytes: usize) -> Refused {
        let mut clock = Clock::new();
        clock.add_dot(Dot {
            actor: Actor(1),
            counter: seq + 1,
        });
        Refused {
            record: Arc::new(Record {
                seq,
                enqueued_ms: 1_700_000_000_000,
                keyspace: "orders".into(),
                key: format!("o{seq}").into_bytes(),
                version: Version::value(clock, vec![b'v'; value_bytes], 5, "dc1".into()),
                only: None,
            }),
            code: ErrorCode::BadRequest,
            message: "unknown keyspace \"orders\"".into(),
        }
    }

    fn held(q: &Quarantine<MemFs>, dc: &DcName) -> Vec<u64> {
        q.list(Some(dc), None, false)
            .unwrap()
            .0
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    #[test]
    fn records_survive_power_loss_and_removal_rewrites_the_file() {
        let fs = MemFs::new();
        let dc2 = DcName("dc2".into());
        let (q, damaged) = Quarantine::open(fs.clone(), dir(), 1 << 20).unwrap();
        assert!(damaged.is_empty());
        let added = q
            .add(&dc2, &[refused(3, 10), refused(5, 10), refused(8, 10)])
            .unwrap();
        assert_eq!(
            added,
            Added {
                kept: 3,
                overflowed: 0
            }
        );
        let fs = fs.crash();
        let (q, damaged) = Quarantine::open(fs.clone(), dir(), 1 << 20).unwrap();
        assert!(damaged.is_empty());
        assert_eq!(held(&q, &dc2), vec![3, 5, 8]);
        let (page, next) = q.list(None, None, true).unwrap();
        assert_eq!(next, None);
        assert_eq!(page[1].code, ErrorCode::BadRequest);
        assert_eq!(page[1].key, b"o5");
        let record: Record =
            isthmus_client::wire::decode(page[1].record.as_ref().unwrap()).unwrap();
        assert_eq!(record.seq, 5);
        let ids: BTreeSet<u64> = [page[0].id, page[2].id].into();
        q.remove(&dc2, &ids).unwrap();
        assert_eq!(held(&q, &dc2), vec![5]);
        // New ids never reuse a removed one's while records remain.
        q.add(&dc2, &[refused(9, 10)]).unwrap();
        let fs = fs.crash();
        let (q, _) = Quarantine::open(fs, dir(), 1 << 20).unwrap();
        assert_eq!(held(&q, &dc2), vec![5, 9]);
        assert_eq!(q.stats()[&dc2].held, 2);
    }

    #[test]
    fn a_retried_batch_is_kept_once_and_the_bound_overflows_typed() {
        let fs = MemFs::new();
        let dc2 = DcName("dc2".into());
        let (q, _) = Quarantine::open(fs, dir(), 2048).unwrap();
        assert_eq!(q.add(&dc2, &[refused(1, 100)]).unwrap().kept, 1);
        // The same record again (its batch was resent): held once.
        assert_eq!(q.add(&dc2, &[refused(1, 100)]).unwrap().kept, 1);
        assert_eq!(held(&q, &dc2), vec![1]);
        // Past the bound: not kept, reported for the caller to owe a sync.
        let added = q.add(&dc2, &[refused(2, 100), refused(3, 4000)]).unwrap();
        assert_eq!(
            added,
            Added {
                kept: 1,
                overflowed: 1
            }
        );
        let stats = q.stats()[&dc2];
        assert_eq!((stats.held, stats.quarantined, stats.overflows), (2, 2, 1));
        assert!(stats.bytes <= 2048);
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_owes_a_full_sync() {
        let fs = MemFs::new();
        let dc2 = DcName("dc2".into());
        let (q, _) = Quarantine::open(fs.clone(), dir(), 1 << 20).unwrap();
        q.add(&dc2, &[refused(1, 10), refused(2, 10)]).unwrap();
        let path = dir().join(file_name(&dc2));
        // A torn tail: half a record after the two.
        let f = fs.open(&path).unwrap();
        let size = f.size().unwrap();
        f.append(
            &frame(&Entry {
                id: 99,
                quarantined_ms: 0,
                code: ErrorCode::BadRequest,
                message: String::new(),
                record: (*refused(3, 10).record).clone(),
            })[..20],
        )
        .unwrap();
        f.sync().unwrap();
        let (q, damaged) = Quarantine::open(fs.clone(), dir(), 1 << 20).unwrap();
        assert!(damaged.is_empty(), "a torn tail is no damage");
        assert_eq!(held(&q, &dc2), vec![1, 2]);
        assert_eq!(fs.open(&path).unwrap().size().unwrap(), size);
        q.add(&dc2, &[refused(4, 10)]).unwrap();
        assert_eq!(held(&q, &dc2), vec![1, 2, 4]);
        // Bit rot in the first record: the rest is lost, and said so.
        fs.corrupt(&path, HEADER.len() + 12, 0x55).unwrap();
        let (q, damaged) = Quarantine::open(fs, dir(), 1 << 20).unwrap();
        assert_eq!(damaged, vec![dc2.clone()]);
        assert!(held(&q, &dc2).is_empty());
    }

    #[test]
    fn file_names_are_reversible_so_datacenters_never_share_one() {
        for name in ["dc1", "dc.1", "dc_1", "eu/west", ""] {
            let dc = DcName(name.into());
            assert_eq!(dc_of(&file_name(&dc)), Some(dc));
        }
        assert_ne!(
            file_name(&DcName("dc.1".into())),
            file_name(&DcName("dc_1".into()))
        );
        assert_eq!(dc_of("q-zz.log"), None);
        assert_eq!(dc_of("seg-0001.log"), None);
    }

    #[test]
    fn listings_come_in_pages_that_resume_where_they_stopped() {
        let fs = MemFs::new();
        let (q, _) = Quarantine::open(fs, dir(), 64 << 20).unwrap();
        for dc in ["dc2", "dc3"] {
            let batch: Vec<Refused> = (0..700).map(|s| refused(s, 1)).collect();
            q.add(&DcName(dc.into()), &batch).unwrap();
        }
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let (page, next) = q.list(None, after.as_ref(), false).unwrap();
            assert!(page.len() <= PAGE_RECORDS_MAX);
            seen.extend(page.into_iter().map(|r| (r.dc, r.id)));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), 1400);
        let distinct: BTreeSet<_> = seen.iter().collect();
        assert_eq!(distinct.len(), 1400);
    }
}
