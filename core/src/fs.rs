//! The file-system seam: every byte the engine, the hint store and the
//! cross-DC outbox read or write goes through [`Fs`] and [`FsFile`].
//!
//! Two implementations: [`StdFs`] over `std::fs` (the real path; users are
//! generic over `Fs`, so there is no dynamic dispatch per record), and
//! [`MemFs`], an in-memory file system that remembers, per file, what was
//! fsynced and what was not, and per directory which names were made
//! durable by a directory sync. [`MemFs::crash`] throws away everything not
//! durable, like a power cut; [`MemFs::fail_next_sync`] and
//! [`MemFs::fail_sync_after`] make an fsync fail, to prove callers neither
//! acknowledge what is not durable nor lose what they acknowledged.
//!
//! [`Fs::write_atomic`] is the one way a small file is replaced whole
//! (the engine's manifest, the node's identity, the remembered peers, the
//! outbox cursors): write a temporary file, fsync it, rename it over the
//! old one, fsync the directory. A crash leaves the old content or the new,
//! never a mix, and once it returns the new content survives power loss.
//!
//! What it is not: a general VFS. Directories are only created and synced,
//! files only appended, read at offsets and truncated, as the log-shaped
//! files here need.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// A file opened by an [`Fs`]: positional reads, appends, fsync.
pub trait FsFile: Send + Sync + 'static {
    /// Append all of `buf` at the end of the file.
    fn append(&self, buf: &[u8]) -> io::Result<()>;
    /// Fill `buf` from `offset`; a short file is an `UnexpectedEof` error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Make the content durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Cut the file to `len` bytes (used to drop a torn log tail).
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// The operations Isthmus needs from a file system.
pub trait Fs: Clone + Send + Sync + 'static {
    /// File handle type.
    type File: FsFile;
    /// Create (or truncate) a file for appending and reading.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Open an existing file for reading and appending.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Atomically rename `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Paths of the files directly inside `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Make creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Create `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Does `path` exist?
    fn exists(&self, path: &Path) -> bool;

    /// Read a whole file.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let f = self.open(path)?;
        let len = usize::try_from(f.size()?).map_err(|_| io::Error::other("file too large"))?;
        let mut buf = vec![0; len];
        f.read_at(&mut buf, 0)?;
        Ok(buf)
    }

    /// Replace `path` with `bytes` atomically and durably: write
    /// `<path>.tmp`, fsync it, rename it over `path`, fsync the directory.
    ///
    /// A crash at any point leaves the old content or the new one; once
    /// this returns `Ok`, the new content survives power loss. Without the
    /// file fsync the rename could reach the disk before the data (an empty
    /// or partial file after a crash); without the directory fsync the
    /// rename itself could be lost, bringing back the old content after
    /// the caller acted on the new. Callers serialise writers of one path
    /// (they share the temporary name).
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let f = self.create(&tmp)?;
        f.append(bytes)?;
        f.sync()?;
        drop(f);
        self.rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        self.sync_dir(dir)
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

/// A file of [`StdFs`].
#[derive(Debug)]
pub struct StdFile(std::fs::File);

impl FsFile for StdFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        // Opened in append mode: every write lands at the end.
        (&self.0).write_all(buf)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Fs for StdFs {
    type File = StdFile;
    fn create(&self, path: &Path) -> io::Result<StdFile> {
        // std refuses append together with truncate, so cut explicitly.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        f.set_len(0)?;
        Ok(StdFile(f))
    }
    fn open(&self, path: &Path) -> io::Result<StdFile> {
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map(StdFile)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

#[derive(Debug, Default)]
struct MemNode {
    /// What survives a crash.
    durable: Vec<u8>,
    /// What readers see now.
    current: Vec<u8>,
}

type Node = Arc<Mutex<MemNode>>;

#[derive(Debug, Default)]
struct MemState {
    /// Names visible now.
    names: HashMap<PathBuf, Node>,
    /// Names that survive a crash (made durable by `sync_dir`).
    durable_names: HashMap<PathBuf, Node>,
    /// Bumped by every crash; handles from an older epoch are dead.
    epoch: u64,
    /// Fail a `sync` (file or directory) with an IO error after this many
    /// more succeed.
    fail_sync_in: Option<u64>,
    /// Removals are durable at once (see [`MemFs::eager_removals`]).
    eager_removals: bool,
    /// Count of successful file syncs (tests check group commit with it).
    syncs: u64,
    /// Bytes appends may still add before the disk is full (`None`:
    /// unlimited). An append past it writes what fits and fails.
    space: Option<u64>,
    /// Fail the next truncate with an IO error.
    fail_truncate: bool,
    /// How long a file fsync takes (a slow disk); zero by default.
    sync_delay: std::time::Duration,
}

/// An in-memory, fault-injecting file system for tests (see module docs).
///
/// Clones share the same state. After [`MemFs::crash`], handles from
/// before the crash fail every operation, as the process that held them
/// would be gone; use the `MemFs` that `crash` returns to reopen.
#[derive(Clone, Debug, Default)]
pub struct MemFs {
    state: Arc<Mutex<MemState>>,
    epoch: u64,
}

/// A file of [`MemFs`].
#[derive(Debug)]
pub struct MemFile {
    node: Node,
    state: Arc<Mutex<MemState>>,
    epoch: u64,
}

fn dead() -> io::Error {
    io::Error::other("handle from before a simulated crash")
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulate a power cut: every unsynced byte and every unsynced
    /// directory change is lost. Returns the handle to use afterwards.
    pub fn crash(&self) -> MemFs {
        let mut st = self.state.lock();
        st.epoch += 1;
        st.names = st.durable_names.clone();
        for node in st.names.values() {
            let mut n = node.lock();
            n.current = n.durable.clone();
        }
        st.fail_sync_in = None;
        MemFs {
            state: self.state.clone(),
            epoch: st.epoch,
        }
    }

    /// Make the next fsync (file or directory) fail.
    pub fn fail_next_sync(&self) {
        self.fail_sync_after(0);
    }

    /// Let `n` more fsyncs (file or directory) succeed, then fail the next
    /// one. Tests sweep `n` over every sync a scenario makes, cut the power
    /// where it failed, and check what survived: a crash at every sync
    /// point.
    pub fn fail_sync_after(&self, n: u64) {
        self.state.lock().fail_sync_in = Some(n);
    }

    /// From now on (crashes included), a removed name is gone for good at
    /// once, as if a journal commit carried the removal to disk ahead of
    /// everything not yet synced. This is the pessimistic order for code
    /// that must make a pointer durable before deleting what it pointed
    /// past (the outbox's cursors and segments): a missing directory sync
    /// before the removal shows up as lost data.
    pub fn eager_removals(&self) {
        self.state.lock().eager_removals = true;
    }

    /// Let appends add `bytes` more before the disk is full (`None`: no
    /// limit). An append that does not fit writes the part that fits and
    /// fails with `StorageFull` (ENOSPC), as a write(2) that ran out of
    /// space mid-way leaves a partial record.
    pub fn set_space(&self, bytes: Option<u64>) {
        self.state.lock().space = bytes;
    }

    /// Make every file fsync from now on take `delay`, as a slow disk's
    /// does (group commit shows with it).
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.state.lock().sync_delay = delay;
    }

    /// Make the next truncate fail.
    pub fn fail_next_truncate(&self) {
        self.state.lock().fail_truncate = true;
    }

    /// Number of successful file fsyncs so far.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Overwrite bytes of a file in place, durably (tests use it to
    /// simulate bit rot).
    pub fn corrupt(&self, path: &Path, offset: usize, xor: u8) -> io::Result<()> {
        let st = self.state.lock();
        let node = st
            .names
            .get(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut n = node.lock();
        if offset >= n.current.len() {
            return Err(io::Error::other("offset past end"));
        }
        n.current[offset] ^= xor;
        n.durable = n.current.clone();
        Ok(())
    }

    fn live(&self) -> io::Result<parking_lot::MutexGuard<'_, MemState>> {
        let st = self.state.lock();
        if st.epoch != self.epoch {
            return Err(dead());
        }
        Ok(st)
    }

    fn take_sync_failure(st: &mut MemState) -> io::Result<()> {
        match st.fail_sync_in {
            Some(0) => {
                st.fail_sync_in = None;
                Err(io::Error::other("injected fsync failure"))
            }
            Some(n) => {
                st.fail_sync_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl MemFile {
    fn check(&self) -> io::Result<parking_lot::MutexGuard<'_, MemState>> {
        let st = self.state.lock();
        if st.epoch != self.epoch {
            return Err(dead());
        }
        Ok(st)
    }
}

impl FsFile for MemFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        let mut st = self.check()?;
        match st.space {
            Some(space) if (buf.len() as u64) > space => {
                let fits = usize::try_from(space).unwrap_or(usize::MAX).min(buf.len());
                self.node.lock().current.extend_from_slice(&buf[..fits]);
                st.space = Some(0);
                Err(io::Error::from(io::ErrorKind::StorageFull))
            }
            space => {
                st.space = space.map(|s| s - buf.len() as u64);
                self.node.lock().current.extend_from_slice(buf);
                Ok(())
            }
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let _st = self.check()?;
        let n = self.node.lock();
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= n.current.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&n.current[start..end]);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        let _st = self.check()?;
        Ok(self.node.lock().current.len() as u64)
    }
    fn sync(&self) -> io::Result<()> {
        let delay = self.state.lock().sync_delay;
        if !delay.is_zero() {
            // Outside the file system's lock: other files (and appends)
            // go on meanwhile, as they would on a disk.
            std::thread::sleep(delay);
        }
        let mut st = self.check()?;
        MemFs::take_sync_failure(&mut st)?;
        st.syncs += 1;
        let mut n = self.node.lock();
        n.durable = n.current.clone();
        Ok(())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut st = self.check()?;
        if std::mem::take(&mut st.fail_truncate) {
            return Err(io::Error::other("injected truncate failure"));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        self.node.lock().current.truncate(len);
        Ok(())
    }
}

impl Fs for MemFs {
    type File = MemFile;
    fn create(&self, path: &Path) -> io::Result<MemFile> {
        let mut st = self.live()?;
        let node: Node = Arc::default();
        st.names.insert(path.to_path_buf(), node.clone());
        Ok(MemFile {
            node,
            state: self.state.clone(),
            epoch: self.epoch,
        })
    }
    fn open(&self, path: &Path) -> io::Result<MemFile> {
        let st = self.live()?;
        let node = st
            .names
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(MemFile {
            node,
            state: self.state.clone(),
            epoch: self.epoch,
        })
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        let node = st
            .names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        st.names.insert(to.to_path_buf(), node);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        st.names
            .remove(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if st.eager_removals {
            st.durable_names.remove(path);
        }
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let st = self.live()?;
        let mut out: Vec<PathBuf> = st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        out.sort();
        Ok(out)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.live()?;
        MemFs::take_sync_failure(&mut st)?;
        let st = &mut *st;
        st.durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, node) in &st.names {
            if p.parent() == Some(dir) {
                st.durable_names.insert(p.clone(), node.clone());
            }
        }
        Ok(())
    }
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        // Directories are implicit in MemFs.
        self.live().map(|_| ())
    }
    fn exists(&self, path: &Path) -> bool {
        self.live().is_ok_and(|st| st.names.contains_key(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_bytes_and_names() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        let a = fs.create(&dir.join("a")).unwrap();
        a.append(b"hello").unwrap();
        a.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        a.append(b" world").unwrap();
        let b = fs.create(&dir.join("b")).unwrap();
        b.append(b"x").unwrap();
        b.sync().unwrap(); // content synced but the name is not
        let fs2 = fs.crash();
        assert!(a.append(b"!").is_err(), "old handles die with the crash");
        assert_eq!(fs2.read_all(&dir.join("a")).unwrap(), b"hello");
        assert!(!fs2.exists(&dir.join("b")));
    }

    #[test]
    fn injected_sync_failure_fails_once() {
        let fs = MemFs::new();
        let f = fs.create(Path::new("/d/a")).unwrap();
        fs.fail_next_sync();
        assert!(f.sync().is_err());
        assert!(f.sync().is_ok());
        fs.fail_sync_after(2);
        assert!(f.sync().is_ok());
        assert!(fs.sync_dir(Path::new("/d")).is_ok());
        assert!(f.sync().is_err());
        assert!(f.sync().is_ok());
    }

    #[test]
    fn eager_removals_survive_a_crash_without_a_directory_sync() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        fs.create(&dir.join("a")).unwrap().sync().unwrap();
        fs.create(&dir.join("b")).unwrap().sync().unwrap();
        fs.sync_dir(dir).unwrap();
        fs.remove(&dir.join("a")).unwrap();
        fs.eager_removals();
        fs.remove(&dir.join("b")).unwrap();
        let fs = fs.crash();
        assert!(
            fs.exists(&dir.join("a")),
            "an ordinary removal needs a sync"
        );
        assert!(!fs.exists(&dir.join("b")));
    }

    /// Power cut at every sync point of a replacement: old or new content,
    /// never anything else, and the new content once it returned.
    #[test]
    fn write_atomic_leaves_old_or_new_content_and_new_once_it_returns() {
        let path = Path::new("/d/state");
        for n in 0.. {
            let fs = MemFs::new();
            fs.write_atomic(path, b"old").unwrap();
            fs.fail_sync_after(n);
            let result = fs.write_atomic(path, b"new content");
            let fs = fs.crash();
            let got = fs.read_all(path).unwrap();
            if result.is_ok() {
                assert_eq!(got, b"new content", "returned Ok, then lost at sync {n}");
                break;
            }
            assert!(
                got == b"old" || got == b"new content",
                "{got:?} at sync {n}"
            );
        }
    }
}
