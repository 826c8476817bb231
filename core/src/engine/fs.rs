//! The file-system seam: every byte the engine reads or writes goes through
//! [`Fs`] and [`FsFile`].
//!
//! Two implementations: [`StdFs`] over `std::fs` (the real path; the engine
//! is generic over `Fs`, so there is no dynamic dispatch per record), and
//! [`MemFs`], an in-memory file system that remembers, per file, what was
//! fsynced and what was not, and per directory which names were made
//! durable by a directory sync. [`MemFs::crash`] throws away everything not
//! durable, like a power cut; [`MemFs::fail_next_sync`] makes the next
//! fsync fail, to prove the engine poisons itself.

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

/// The operations the engine needs from a file system.
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
    /// Fail the next `sync` (file or directory) with an IO error.
    fail_next_sync: bool,
    /// Count of successful file syncs (tests check group commit with it).
    syncs: u64,
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
        st.fail_next_sync = false;
        MemFs {
            state: self.state.clone(),
            epoch: st.epoch,
        }
    }

    /// Make the next fsync (file or directory) fail.
    pub fn fail_next_sync(&self) {
        self.state.lock().fail_next_sync = true;
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
        if std::mem::take(&mut st.fail_next_sync) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
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
        let _st = self.check()?;
        self.node.lock().current.extend_from_slice(buf);
        Ok(())
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
        let mut st = self.check()?;
        MemFs::take_sync_failure(&mut st)?;
        st.syncs += 1;
        let mut n = self.node.lock();
        n.durable = n.current.clone();
        Ok(())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        let _st = self.check()?;
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
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
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
    }
}
