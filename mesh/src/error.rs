//! The crate's error type.

use crate::codec::DecodeError;
use crate::store::StoreError;

/// What can go wrong when building the core or giving it a command.
///
/// Network input never produces an error: a bad frame is counted and dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration constraint is violated.
    #[error("invalid config: {0}")]
    Config(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A string is not a valid node name.
    #[error("invalid node name {0:?}: expected a DNS label [a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?")]
    InvalidName(String),
    /// A state key is empty or too long.
    #[error("state key must be 1 to {max} bytes, got {len}")]
    StateKey {
        /// Its length.
        len: usize,
        /// The bound, `Config::state_key_size_max`.
        max: usize,
    },
    /// A state value is too large.
    #[error("state value must be at most {max} bytes, got {len}")]
    StateValue {
        /// Its length.
        len: usize,
        /// The bound, `Config::state_value_size_max`.
        max: usize,
    },
    /// The local state map is full.
    #[error("local state already holds {max} keys")]
    StateFull {
        /// The bound, `Config::state_keys_max`.
        max: usize,
    },
    /// This node's own certificate does not pass its own checks, so no member would accept
    /// what it signs.
    #[error(
        "this node's own certificate is not admitted as its own (another node's name, or not of the mesh CA)"
    )]
    OwnCertificate,
    /// The node has left the mesh and no longer changes its state.
    #[error("this node has left the mesh")]
    Left,
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(#[from] DecodeError),
}
