//! The node's identity file, `data_dir/IDENTITY`: its node id and its
//! actor, random per data directory, so a node whose disk was wiped never
//! reissues a dot it issued before.

use std::path::Path;
use std::time::SystemTime;

use super::NodeError;
use crate::fs::{Fs, StdFs};
use crate::model::Actor;

/// Read the identity file of `data_dir`, or create it: the actor the
/// node's dots carry. Refuses a directory that belongs to another node.
pub fn load_or_create(data_dir: &Path, node_id: &str) -> Result<Actor, NodeError> {
    let path = data_dir.join("IDENTITY");
    let bad = |reason: String| NodeError::DataDir {
        path: data_dir.to_owned(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (id, actor) = text
                .trim()
                .split_once(' ')
                .ok_or_else(|| bad("IDENTITY is malformed".into()))?;
            if id != node_id {
                return Err(bad(format!("it belongs to node {id:?}, not {node_id:?}")));
            }
            let actor =
                u64::from_str_radix(actor, 16).map_err(|e| bad(format!("IDENTITY actor: {e}")))?;
            Ok(Actor(actor))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let actor = new_actor(node_id);
            StdFs
                .write_atomic(&path, format!("{node_id} {:016x}\n", actor.0).as_bytes())
                .map_err(|e| bad(e.to_string()))?;
            Ok(actor)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// A fresh actor for `node_id`: distinct per incarnation of a data
/// directory (time and process id are mixed in).
pub fn new_actor(node_id: &str) -> Actor {
    let seed = format!("{node_id}/{:?}/{}", SystemTime::now(), std::process::id());
    Actor(xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}
