//! mend's engine: node storage, the wire protocol, QUIC transport with mutual TLS, the
//! route list, the storage node, a client, and (later) reconciliation and the sync pipeline.
//!
//! See `ARCHITECTURE.md` at the repository root for the map and the invariants.

pub mod client;
pub mod compare;
pub mod dump;
pub mod fingerprint;
pub mod id;
pub mod kmerge;
pub mod metafile;
pub mod node;
pub mod pki;
pub mod policy;
pub mod reconcile;
pub mod route;
pub mod run;
pub mod scrub;
pub mod store;
pub mod transport;
pub mod version;
pub mod wire;

pub use fingerprint::Fingerprint;
pub use id::{Id, IdRange};
pub use route::RouteList;
pub use version::{Record, ReplicaState, Version};

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
