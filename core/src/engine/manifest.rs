//! The manifest: which tables make up the store, in which level, and which
//! log segments still hold data not yet in a table.
//!
//! # On-disk format (version [`MANIFEST_FORMAT_VERSION`])
//!
//! File `MANIFEST`:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic [`MANIFEST_MAGIC`] (LE u32) |
//! | 4..8 | format version (LE u32) |
//! | 8..12 | body length (LE u32) |
//! | 12..16 | crc32c of the body (LE u32) |
//! | 16.. | body: postcard-encoded [`ManifestBody`] |
//!
//! Version 2 replaced version 1's single bottom run (`l1`) with a list of
//! sorted runs (`levels`, L1 first). A version-1 manifest is still read:
//! its `l1` becomes the one run of L1.
//!
//! It is replaced atomically by [`Fs::write_atomic`]: the new content is
//! written to `MANIFEST.tmp`, fsynced, renamed over `MANIFEST`, and the
//! directory is fsynced. A crash leaves either the old or the new manifest,
//! never a mix.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::EngineError;
use crate::fs::Fs;

/// Format version of manifests written by this build.
pub const MANIFEST_FORMAT_VERSION: u32 = 2;
/// The previous manifest format (two levels), still readable.
const MANIFEST_FORMAT_VERSION_V1: u32 = 1;
/// Magic number opening the manifest ("ISMF").
pub const MANIFEST_MAGIC: u32 = 0x464d_5349;
const HEADER_BYTES: usize = 16;
/// File name of the manifest.
pub(crate) const MANIFEST_FILE: &str = "MANIFEST";

/// What the manifest records about one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMeta {
    /// Table id; the file is `<id:016>.sst`.
    pub id: u64,
    /// File size in bytes.
    pub size_bytes: u64,
    /// Number of keys.
    pub entries: u64,
    /// Smallest key.
    pub min_key: Vec<u8>,
    /// Largest key.
    pub max_key: Vec<u8>,
}

/// The manifest's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBody {
    /// Next unused table id.
    pub next_table_id: u64,
    /// Log segments with an id below this are fully in tables and may be
    /// deleted; segments at or above it are replayed at open.
    pub log_floor: u64,
    /// Level 0: flushed memtables, newest first, key ranges may overlap.
    pub l0: Vec<TableMeta>,
    /// Levels 1.. (`levels[0]` is L1): each one sorted run of
    /// non-overlapping tables ordered by key; the last is the bottom.
    pub levels: Vec<Vec<TableMeta>>,
}

/// The version-1 body: L0 and a single bottom run.
#[derive(Deserialize)]
struct ManifestBodyV1 {
    next_table_id: u64,
    log_floor: u64,
    l0: Vec<TableMeta>,
    l1: Vec<TableMeta>,
}

impl ManifestBody {
    /// Every table, L0 first.
    pub fn tables(&self) -> impl Iterator<Item = &TableMeta> {
        self.l0.iter().chain(self.levels.iter().flatten())
    }
}

/// Path of a table file.
pub(crate) fn table_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.sst"))
}

/// Table id of a path named like [`table_path`].
pub(crate) fn parse_table_path(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let id = name.strip_suffix(".sst")?;
    if id.len() != 16 {
        return None;
    }
    id.parse().ok()
}

impl ManifestBody {
    /// Encode with header and checksum.
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_allocvec(self)
            .unwrap_or_else(|_| unreachable!("encoding into a Vec cannot fail"));
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        out.extend_from_slice(&MANIFEST_MAGIC.to_le_bytes());
        out.extend_from_slice(&MANIFEST_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Verify and decode. Never panics.
    pub fn decode(bytes: &[u8], file: &Path) -> Result<Self, EngineError> {
        let corrupt = |offset: u64, reason: &str| EngineError::corrupt(file, offset, reason);
        if bytes.len() < HEADER_BYTES {
            return Err(corrupt(0, "manifest shorter than its header"));
        }
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        if word(0) != MANIFEST_MAGIC {
            return Err(corrupt(0, "bad manifest magic"));
        }
        let version = word(4);
        if version != MANIFEST_FORMAT_VERSION && version != MANIFEST_FORMAT_VERSION_V1 {
            return Err(EngineError::FormatVersion {
                file: file.to_path_buf(),
                found: word(4),
                expected: MANIFEST_FORMAT_VERSION,
            });
        }
        let len = word(8) as usize;
        let body = &bytes[HEADER_BYTES..];
        if body.len() != len {
            return Err(corrupt(8, "manifest length does not match the file"));
        }
        if crc32c::crc32c(body) != word(12) {
            return Err(corrupt(12, "manifest checksum mismatch"));
        }
        let undecodable = |e: postcard::Error| {
            corrupt(HEADER_BYTES as u64, &format!("undecodable manifest: {e}"))
        };
        let m: ManifestBody = if version == MANIFEST_FORMAT_VERSION_V1 {
            let v1: ManifestBodyV1 = postcard::from_bytes(body).map_err(undecodable)?;
            ManifestBody {
                next_table_id: v1.next_table_id,
                log_floor: v1.log_floor,
                l0: v1.l0,
                levels: if v1.l1.is_empty() {
                    vec![]
                } else {
                    vec![v1.l1]
                },
            }
        } else {
            postcard::from_bytes(body).map_err(undecodable)?
        };
        let bad_range = m.tables().any(|t| t.min_key > t.max_key);
        let ids_ok = m.tables().all(|t| t.id < m.next_table_id);
        let runs_ok = m
            .levels
            .iter()
            .all(|run| run.windows(2).all(|w| w[0].max_key < w[1].min_key));
        if bad_range || !ids_ok || !runs_ok {
            return Err(corrupt(HEADER_BYTES as u64, "inconsistent table list"));
        }
        Ok(m)
    }

    /// Read the manifest of `dir`, or an empty one for a fresh directory.
    pub(crate) fn load(fs: &impl Fs, dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join(MANIFEST_FILE);
        if !fs.exists(&path) {
            return Ok(ManifestBody {
                next_table_id: 1,
                log_floor: 1,
                ..ManifestBody::default()
            });
        }
        let bytes = fs.read_all(&path).map_err(|e| EngineError::io(&path, e))?;
        Self::decode(&bytes, &path)
    }

    /// Atomically replace the manifest of `dir` (module docs).
    pub(crate) fn store(&self, fs: &impl Fs, dir: &Path) -> Result<(), EngineError> {
        let path = dir.join(MANIFEST_FILE);
        fs.write_atomic(&path, &self.encode())
            .map_err(|e| EngineError::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_manifests_are_read() {
        #[derive(Serialize)]
        struct V1<'a> {
            next_table_id: u64,
            log_floor: u64,
            l0: &'a [TableMeta],
            l1: &'a [TableMeta],
        }
        let t = |id: u64, a: &[u8], b: &[u8]| TableMeta {
            id,
            size_bytes: 1,
            entries: 1,
            min_key: a.to_vec(),
            max_key: b.to_vec(),
        };
        let (l0, l1) = (
            vec![t(3, b"a", b"z")],
            vec![t(1, b"a", b"c"), t(2, b"d", b"f")],
        );
        let body = postcard::to_allocvec(&V1 {
            next_table_id: 4,
            log_floor: 2,
            l0: &l0,
            l1: &l1,
        })
        .unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MANIFEST_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&MANIFEST_FORMAT_VERSION_V1.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let m = ManifestBody::decode(&bytes, Path::new("M")).unwrap();
        assert_eq!(m.l0, l0);
        assert_eq!(m.levels, vec![l1]);
        assert_eq!((m.next_table_id, m.log_floor), (4, 2));
    }

    #[test]
    fn manifest_round_trips_and_rejects_every_flip() {
        let m = ManifestBody {
            next_table_id: 9,
            log_floor: 4,
            l0: vec![TableMeta {
                id: 3,
                size_bytes: 100,
                entries: 2,
                min_key: b"a".to_vec(),
                max_key: b"z".to_vec(),
            }],
            levels: vec![
                vec![],
                vec![TableMeta {
                    id: 5,
                    size_bytes: 10,
                    entries: 1,
                    min_key: b"b".to_vec(),
                    max_key: b"c".to_vec(),
                }],
            ],
        };
        let bytes = m.encode();
        assert_eq!(ManifestBody::decode(&bytes, Path::new("M")).unwrap(), m);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                ManifestBody::decode(&bad, Path::new("M")).is_err(),
                "flip at {i}"
            );
        }
    }
}
