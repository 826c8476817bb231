//! # isthmus-client
//!
//! The Isthmus wire protocol, defined once for both ends: the messages a
//! client and a node exchange, the frame codec that carries them, and the
//! guarded decoder every receiver runs on untrusted bytes. The async client
//! SDK (builder, multiplexed connections, routing, retries) grows here on
//! top of these types.
//!
//! What it is not: it holds no storage and no Wasm runtime, so applications
//! that link it stay light.
//!
//! ```
//! use isthmus_client::wire::{decode, encode, Consistency, Request, RequestBody};
//!
//! let request = Request {
//!     id: 7,
//!     timeout_ms: 1_000,
//!     deadline_ms: 0,
//!     body: RequestBody::Get {
//!         keyspace: "carts".into(),
//!         key: b"alice".to_vec(),
//!         consistency: Some(Consistency::LocalQuorum),
//!     },
//! };
//! let bytes = encode(&request);
//! assert_eq!(decode::<Request>(&bytes).unwrap(), request);
//! // Trailing garbage is refused, not ignored.
//! let mut padded = bytes.clone();
//! padded.push(0);
//! assert!(decode::<Request>(&padded).is_err());
//! ```
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod batch;
pub mod client;
pub mod error;
pub mod options;
pub mod placement;
pub mod session;
pub mod tls;
#[cfg(feature = "serde-json")]
pub mod typed;
pub mod wire;

pub use batch::PutItem;
pub use client::{Client, ClientBuilder, DcFailover, Read, Scan, ScanPage};
pub use error::ClientError;
pub use options::RequestOptions;
pub use session::ConnectOptions;
pub use session::{Channel, Session};
#[cfg(feature = "serde-json")]
pub use typed::TypedRead;
