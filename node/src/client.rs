//! A client of the local API, used by the CLI and the TUI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::api::{ApiError, Reply, Request, SOCKET_FILE};

/// How long a client waits for a reply before giving up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error(
        "cannot reach the node at {path}: {source} (is `podmesh node run` running with this --data-dir?)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The node answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The connection broke or the node sent something unreadable.
    #[error("local API: {0}")]
    Protocol(String),
}

/// One connection to a node's local API.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
    /// Events that arrived while waiting for a reply, in order.
    pending_events: std::collections::VecDeque<Reply>,
}

/// The socket path of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

impl Client {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, write) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            writer: write,
            next_id: 1,
            pending_events: Default::default(),
        })
    }

    /// Sends a request and waits for its reply; an error reply is an `Err`. Events that arrive
    /// meanwhile are kept for [`Client::next_event`].
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Reply, ClientError> {
        let reply = self.request(method, params).await?;
        match reply.as_error() {
            Some(error) => Err(error.into()),
            None => Ok(reply),
        }
    }

    /// Sends a request and returns its reply as it came, error replies included.
    pub async fn request(&mut self, method: &str, params: Value) -> Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = Request {
            id: Some(id),
            method: method.to_owned(),
            params,
        };
        let mut line =
            serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let wait = async {
            loop {
                let reply = self.read_reply().await?;
                if reply.id == Some(id) {
                    return Ok::<Reply, ClientError>(reply);
                }
                self.pending_events.push_back(reply);
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, wait)
            .await
            .map_err(|_| ClientError::Protocol("no reply from the node in time".into()))?
    }

    /// Sends a request without waiting for its reply (for `attach`, whose reply follows the
    /// prelude); read what comes with [`Client::next_event`].
    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The next event (a message without a request id, or a stray reply).
    pub async fn next_event(&mut self) -> Result<Reply, ClientError> {
        if let Some(event) = self.pending_events.pop_front() {
            return Ok(event);
        }
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "the node closed the connection".into(),
            ));
        }
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("bad reply: {e}")))
    }
}
