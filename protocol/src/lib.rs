//! The labship wire contract, shared by the shipper, the receiver and the tools.
//!
//! Everything here is pure: no files, no sockets, no clocks. Each rule that both
//! sides must agree on (what an episode id is, what a code stamp is, how the
//! `Content-Digest` header is spelled, which host a client certificate names, which error codes exist and what status they
//! travel with, which tar entries an archive may hold, what a success answer
//! says) is defined once, here.

pub mod answer;
pub mod archive;
pub mod digest;
pub mod error;
pub mod headers;
pub mod id;
pub mod identity;
pub mod stamp;
pub mod upload;

pub use answer::{NotConfirmed, StoredBody};
pub use archive::{EntryKind, EntryRole, EntryRuleError, check_entry};
pub use digest::{DigestError, Sha256Digest};
pub use error::{Disposition, ErrorBody, ErrorCode, disposition};
pub use id::{Id, IdError};
pub use stamp::{CodeStamp, Commit, StampError};
