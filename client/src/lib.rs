#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod batch;
pub mod client;
pub mod counter;
pub mod error;
pub mod options;
pub mod placement;
pub mod pool;
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
