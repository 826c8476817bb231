//! The bridge as the simulation runs it: each node's outbox on its own
//! in-memory disk ([`MemFs`], kept across crashes), seen through
//! [`WatchedFs`], which tells the harness's [`CursorWatch`] every record
//! the outbox appends and every cursor it persists. At each persisted
//! cursor the watch checks that every record the cursor moved past is
//! present (itself or a version covering it) on some node of the DC the
//! cursor is for: a cursor never moves past an unapplied record.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};

use futures_util::FutureExt;
use isthmus_core::fs::{Fs, FsFile, MemFile, MemFs};
use isthmus_core::model::{Clock, DcName};
use isthmus_core::store::LocalStore;
use isthmus_dc_bridge::batch::Record;
use parking_lot::Mutex;

use super::node::RecStore;

/// One outbox record as the watch keeps it.
struct Kept {
    keyspace: String,
    key: Vec<u8>,
    clock: Clock,
    write_id: Option<[u8; 16]>,
}

/// A cursor as last persisted: its next record and overflow count.
#[derive(Clone, Copy)]
struct Seen {
    next: u64,
    overflows: u64,
}

/// The harness's view of every outbox: records by node and sequence
/// number, the cursors, and the violations found.
#[derive(Default)]
pub struct CursorWatch {
    records: Mutex<HashMap<String, BTreeMap<u64, Kept>>>,
    cursors: Mutex<HashMap<(String, String), Seen>>,
    /// Every node's store, by DC (set before the run).
    stores: Mutex<Vec<(DcName, String, RecStore)>>,
    /// Cursor moves checked, and records they moved past.
    pub checked: Mutex<(u64, u64)>,
    pub violations: Mutex<Vec<String>>,
}

impl CursorWatch {
    pub fn add_store(&self, dc: DcName, node: String, store: RecStore) {
        self.stores.lock().push((dc, node, store));
    }

    fn appended(&self, node: &str, frame: &[u8]) {
        // [length u32][crc32c u32][postcard(Record)], one per append.
        let Some(payload) = frame.get(8..) else {
            return;
        };
        match isthmus_client::wire::decode::<Record>(payload) {
            Ok(r) => {
                self.records
                    .lock()
                    .entry(node.to_owned())
                    .or_default()
                    .insert(
                        r.seq,
                        Kept {
                            keyspace: r.keyspace,
                            key: r.key,
                            clock: r.version.clock,
                            write_id: r.version.write_id,
                        },
                    );
            }
            Err(e) => self
                .violations
                .lock()
                .push(format!("{node}: an outbox append did not decode: {e}")),
        }
    }

    /// `node` persisted `dc`'s cursor as `text` ("next pending overflows").
    fn persisted(&self, node: &str, dc: &str, text: &str, at: std::time::Duration) {
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        let [next, _pending, overflows] = fields[..] else {
            self.violations
                .lock()
                .push(format!("{node}: cursor of {dc} unreadable: {text:?}"));
            return;
        };
        let now = Seen { next, overflows };
        let before = self
            .cursors
            .lock()
            .insert((node.to_owned(), dc.to_owned()), now);
        let Some(before) = before else {
            return; // registered
        };
        if overflows != before.overflows || next <= before.next {
            // The bound cut the DC loose (a full-sync is owed for what it
            // skipped), or nothing moved.
            return;
        }
        let records = self.records.lock();
        let stores = self.stores.lock();
        let mine = records.get(node);
        let mut checked = self.checked.lock();
        checked.0 += 1;
        for seq in before.next..next {
            let Some(kept) = mine.and_then(|m| m.get(&seq)) else {
                self.violations.lock().push(format!(
                    "{node}: the cursor of {dc} moved past record {seq}, never appended"
                ));
                continue;
            };
            checked.1 += 1;
            // The record, or another version of its write (coordinated
            // twice, the two collapse to one wherever they meet).
            let mut clocks = vec![kept.clock.clone()];
            if let (Some(id), Some((_, _, store))) = (kept.write_id, stores.first()) {
                clocks.extend(store.oracle.clocks(&id));
            }
            let present = stores
                .iter()
                .filter(|(d, _, _)| &*d.0 == dc)
                .any(|(_, _, s)| {
                    s.get(&kept.keyspace, &kept.key)
                        .now_or_never()
                        .and_then(Result::ok)
                        .is_some_and(|set| {
                            set.versions()
                                .iter()
                                .any(|v| clocks.iter().any(|c| c.is_covered_by(&v.clock)))
                        })
                });
            if !present {
                self.violations.lock().push(format!(
                    "{node} at {at:?}: the cursor of {dc} moved {}..{next} past record {seq} \
                     ({}/{}, clock {:?}), which no node of {dc} holds",
                    before.next,
                    kept.keyspace,
                    String::from_utf8_lossy(&kept.key),
                    kept.clock
                ));
            }
        }
    }
}

/// A node's disk for its outbox: a [`MemFs`] whose segment appends and
/// cursor renames the [`CursorWatch`] sees.
#[derive(Clone)]
pub struct WatchedFs {
    pub mem: MemFs,
    pub node: String,
    pub watch: std::sync::Arc<CursorWatch>,
}

/// A file of [`WatchedFs`]: segments report their appends.
pub struct WatchedFile {
    inner: MemFile,
    segment_of: Option<(String, std::sync::Arc<CursorWatch>)>,
}

fn name_of(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

impl FsFile for WatchedFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        self.inner.append(buf)?;
        if let Some((node, watch)) = &self.segment_of {
            watch.appended(node, buf);
        }
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }
}

impl WatchedFs {
    fn wrap(&self, path: &Path, inner: MemFile) -> WatchedFile {
        let segment = name_of(path).starts_with("seg-");
        WatchedFile {
            inner,
            segment_of: segment.then(|| (self.node.clone(), self.watch.clone())),
        }
    }
}

impl Fs for WatchedFs {
    type File = WatchedFile;

    fn create(&self, path: &Path) -> io::Result<WatchedFile> {
        Ok(self.wrap(path, self.mem.create(path)?))
    }

    fn open(&self, path: &Path) -> io::Result<WatchedFile> {
        Ok(self.wrap(path, self.mem.open(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        // `dc-cursor-<hex of the datacenter's name>`.
        let cursor = name_of(to)
            .strip_prefix("dc-cursor-")
            .and_then(isthmus_dc_bridge::outbox::dc_of_hex)
            .map(|dc| dc.0);
        let text = match &cursor {
            Some(_) => Some(self.mem.read_all(from)?),
            None => None,
        };
        self.mem.rename(from, to)?;
        if let (Some(dc), Some(text)) = (cursor, text) {
            let at = turmoil::sim_elapsed().unwrap_or_default();
            self.watch
                .persisted(&self.node, &dc, &String::from_utf8_lossy(&text), at);
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.mem.remove(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.mem.list(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.mem.sync_dir(dir)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.mem.create_dir_all(dir)
    }

    fn exists(&self, path: &Path) -> bool {
        self.mem.exists(path)
    }
}
