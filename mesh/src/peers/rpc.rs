//! The peer protocol's wire types, the messages of DESIGN sections 5.1 and 5.2: the requests one
//! node sends another, their answers, and the ids, operations and errors they carry, with the
//! size bounds of both directions.
//!
//! A leaf module: it depends on no other part of `peers`, which re-exports its public types. The
//! encoding is `crate::codec`'s, documented in `docs/wire.md`, section 7.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::NodeName;
use crate::codec;
use crate::pod::{PodAddr, PodName};

/// Error codes shared with the local API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request or invalid parameters.
    InvalidRequest,
    /// The Pod is running and cannot change its peers now.
    AlreadyRunning,
    /// A Pod, node or method does not exist.
    NotFound,
    /// The target is not live.
    NotLive,
    /// The target's node cannot be reached.
    Unreachable,
    /// Another request on the same pair is in progress.
    Busy,
    /// The target's inbox is full.
    InboxFull,
    /// Something failed inside the node (a store write, for instance).
    Internal,
}

impl ErrorCode {
    /// Every code, for listings and tests.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::InvalidRequest,
        ErrorCode::AlreadyRunning,
        ErrorCode::NotFound,
        ErrorCode::NotLive,
        ErrorCode::Unreachable,
        ErrorCode::Busy,
        ErrorCode::InboxFull,
        ErrorCode::Internal,
    ];

    /// The code as the local API spells it (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::AlreadyRunning => "already_running",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotLive => "not_live",
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::Busy => "busy",
            ErrorCode::InboxFull => "inbox_full",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A refused or failed Pod operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct PeerError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// A lowercase explanation.
    pub message: String,
}

impl PeerError {
    pub(super) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PeerError {
            code,
            message: message.into(),
        }
    }
}

/// A globally unique id: the issuing node, its incarnation and a counter.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// The issuing node.
    pub node: NodeName,
    /// Its incarnation when it issued the id.
    pub incarnation: u64,
    /// A counter within that incarnation.
    pub seq: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            self.node.as_str(),
            self.incarnation,
            self.seq
        )
    }
}

/// Parses the form [`RequestId`] displays, `node-incarnation-seq`; node names may hold `-`, so
/// the two numbers are taken from the right.
impl std::str::FromStr for RequestId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let invalid = || format!("{s:?} is not a message id (node-incarnation-seq)");
        let mut parts = s.rsplitn(3, '-');
        let seq = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(invalid)?;
        let incarnation = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(invalid)?;
        let node = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(invalid)?;
        Ok(RequestId {
            node,
            incarnation,
            seq,
        })
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Whether a handshake adds or removes the relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerOp {
    /// `register_peer`.
    Register,
    /// `unregister_peer`.
    Unregister,
}

impl PeerOp {
    pub(super) fn wanted(self) -> bool {
        self == PeerOp::Register
    }
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Phase one: change `target`'s peers provisionally.
    Prepare {
        /// Handshake id.
        id: RequestId,
        /// The requesting Pod; its node must be the authenticated sender.
        source: PodAddr,
        /// The Pod on the receiving node.
        target: PodName,
        /// Add or remove.
        op: PeerOp,
    },
    /// The handshake committed.
    Commit {
        /// Handshake id.
        id: RequestId,
    },
    /// The handshake aborted.
    Abort {
        /// Handshake id.
        id: RequestId,
    },
    /// A participant asks the coordinator for the outcome.
    Query {
        /// Handshake id.
        id: RequestId,
    },
    /// A message from a Pod of the sending node to a peer Pod of the receiving node.
    Deliver {
        /// Message id, for deduplication.
        id: RequestId,
        /// The sending Pod (its node is the authenticated sender).
        from: PodName,
        /// The receiving Pod.
        to: PodName,
        /// The message.
        body: String,
    },
}

impl PeerRequest {
    /// Encodes the request as the peer protocol sends it.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_peer(self)
    }

    /// Decodes a request of at most `limit` bytes; never panics on arbitrary bytes.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Self, crate::DecodeError> {
        codec::decode_peer(bytes, limit)
    }
}

impl PeerResponse {
    /// Decodes an answer; never panics on arbitrary bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        codec::decode_peer(bytes, RESPONSE_SIZE_MAX)
    }
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// `Prepare` applied and logged.
    Prepared,
    /// `Prepare` or `Deliver` refused; nothing changed.
    Rejected(PeerError),
    /// `Commit` or `Abort` applied (or already applied).
    Acked,
    /// The outcome of a handshake, for `Query`.
    Outcome {
        /// Whether it committed.
        committed: bool,
    },
    /// The message is in the inbox.
    Delivered,
}

/// Room for a `Deliver` request's fields around its body.
pub(super) const REQUEST_OVERHEAD_MAX: usize = 1024;
/// Largest encoded answer (a rejection's message included).
pub(super) const RESPONSE_SIZE_MAX: usize = 4096;
