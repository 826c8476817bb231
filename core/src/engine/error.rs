//! The storage engine's error type: one enum for the whole boundary, with
//! named fields so that an operator reading a log line knows which file and
//! which byte offset went wrong.

use std::path::PathBuf;

use crate::limit::LimitError;

/// Everything the storage engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An operating-system IO call failed.
    #[error("io error on {path:?}: {source}")]
    Io {
        /// File or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file's bytes are not what the engine wrote: a checksum mismatch,
    /// a truncated structure before the tail, or an undecodable record.
    #[error("corrupt {file:?} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged structure.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// A file was written by a format version this build does not read.
    #[error("{file:?} has format version {found}, this build reads {expected}")]
    FormatVersion {
        /// The file.
        file: PathBuf,
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// An earlier write or fsync failed; the engine refuses every further
    /// write because it can no longer tell what reached the disk (the
    /// "fsyncgate" lesson: retrying a failed fsync may report success for
    /// data the kernel already dropped). Reopen the engine to recover.
    #[error("the engine is poisoned by an earlier write or fsync failure; reopen it to recover")]
    Poisoned,
    /// The disk is full: the write was not persisted (and is refused, as
    /// every write is until a probe finds room again). Reads go on.
    #[error("the disk under {path:?} is full: writes are refused until there is room again")]
    DiskFull {
        /// The file the engine could not grow.
        path: PathBuf,
    },
    /// A request exceeded a configured limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The engine is shutting down or closed.
    #[error("the engine is closed")]
    Closed,
}

impl EngineError {
    /// Shorthand for an [`EngineError::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }

    /// The disk had no room for it (ENOSPC), as an IO error or as
    /// [`EngineError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        match self {
            EngineError::DiskFull { .. } => true,
            EngineError::Io { source, .. } => is_disk_full(source),
            _ => false,
        }
    }

    /// Shorthand for an [`EngineError::Corrupt`].
    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        EngineError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// An IO error that says the disk has no room (ENOSPC).
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
}
