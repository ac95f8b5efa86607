//! The local API: newline-delimited JSON over `<data-dir>/podmesh.sock` (mode 0600).
//!
//! A request is `{"id":N,"method":"snake_name","params":{...}}`; a reply or event is
//! `{"id":N?,"event":"snake_name","data":{...}}`. Replies carry the request's `id` and go to the
//! requester only. Errors are the event `error` with a `code` from [`ErrorCode`]. The protocol is
//! documented for integrators in `docs/local-api.md`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The socket file inside a data directory.
pub const SOCKET_FILE: &str = "podmesh.sock";
/// Longest request line accepted; a longer one is answered `invalid_request` and the client is
/// disconnected, since the rest of its stream cannot be framed.
pub const REQUEST_LINE_LEN_MAX: usize = 1 << 20;
/// Replies and events queued for one client; a client that falls this far behind is
/// disconnected rather than silently losing events.
pub const CLIENT_QUEUE_LEN_MAX: usize = 1024;
/// Local API requests queued towards the node's actor.
pub const REQUEST_QUEUE_LEN_MAX: usize = 256;
/// Local clients connected at once.
pub const CLIENTS_MAX: usize = 256;

/// A request from a local client.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Request {
    /// Echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The method, in snake case.
    pub method: String,
    /// Method parameters.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

/// A reply or an event.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Reply {
    /// The request's id for replies; absent on events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The event name, in snake case.
    pub event: String,
    /// The payload.
    #[serde(default)]
    pub data: Value,
}

/// Error codes of the `error` event (shared with the peer protocol, which carries them).
pub use podmesh_mesh::ErrorCode;

/// An error reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of error.
    pub code: ErrorCode,
    /// A lowercase human message.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl Reply {
    /// A successful reply to request `id`.
    pub fn ok(id: Option<u64>, event: &str, data: Value) -> Self {
        Self {
            id,
            event: event.to_owned(),
            data,
        }
    }

    /// An error reply to request `id`.
    pub fn error(id: Option<u64>, error: &ApiError) -> Self {
        Self {
            id,
            event: "error".to_owned(),
            data: serde_json::to_value(error).unwrap_or(Value::Null),
        }
    }

    /// The error this reply carries, if it is an error.
    pub fn as_error(&self) -> Option<ApiError> {
        (self.event == "error")
            .then(|| serde_json::from_value(self.data.clone()).ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_have_the_documented_shape() {
        // The JSON on the wire is exactly what docs/local-api.md shows.
        let request: Request =
            serde_json::from_str(r#"{"id":3,"method":"members","params":{}}"#).unwrap();
        assert_eq!((request.id, request.method.as_str()), (Some(3), "members"));
        let bare: Request = serde_json::from_str(r#"{"method":"node_info"}"#).unwrap();
        assert_eq!(bare.id, None);
        let error = Reply::error(Some(3), &ApiError::new(ErrorCode::NotFound, "no such pod"));
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"id":3,"event":"error","data":{"code":"not_found","message":"no such pod"}}"#
        );
        assert_eq!(error.as_error().unwrap().code, ErrorCode::NotFound);
    }

    #[test]
    fn error_codes_are_spelled_as_they_serialize() {
        // Metrics and logs use `as_str`; the wire uses serde: the two must never differ.
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
