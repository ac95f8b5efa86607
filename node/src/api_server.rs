//! Serves the local API on a Unix socket and hands each request to the actor.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::api::{
    ApiError, CLIENT_QUEUE_LEN_MAX, CLIENTS_MAX, ErrorCode, REQUEST_LINE_LEN_MAX, Reply, Request,
};

/// One request on its way to the actor, with the way back to its client.
#[derive(Debug)]
pub struct ApiCall {
    /// The parsed request.
    pub request: Request,
    /// Where replies and events for this client go.
    pub reply_tx: mpsc::Sender<Reply>,
}

/// Binds `path` with mode 0600, replacing a stale socket file. The caller must hold the data
/// directory's lock, so no live node can own the old file.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients until the listener fails; at most [`CLIENTS_MAX`] at once.
pub async fn serve(listener: UnixListener, calls_tx: mpsc::Sender<ApiCall>) {
    let slots = std::sync::Arc::new(Semaphore::new(CLIENTS_MAX));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "local API accept failed");
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!("local API client refused: {CLIENTS_MAX} clients already connected");
            drop(stream);
            continue;
        };
        let calls_tx = calls_tx.clone();
        tokio::spawn(async move {
            client(stream, calls_tx).await;
            drop(slot);
        });
    }
}

async fn client(stream: UnixStream, calls_tx: mpsc::Sender<ApiCall>) {
    let (read, mut write) = stream.into_split();
    let (reply_tx, mut reply_rx) = mpsc::channel::<Reply>(CLIENT_QUEUE_LEN_MAX);
    let writer = tokio::spawn(async move {
        while let Some(reply) = reply_rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&reply) else {
                continue;
            };
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = REQUEST_LINE_LEN_MAX as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "local API read failed");
                break;
            }
        }
        if line.last() != Some(&b'\n') {
            // Either the line is over the limit or the client hung up mid-line: the stream
            // cannot be framed any more, so answer once and disconnect.
            if line.len() > REQUEST_LINE_LEN_MAX {
                let error = ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("request line longer than {REQUEST_LINE_LEN_MAX} bytes"),
                );
                let _ = reply_tx.send(Reply::error(None, &error)).await;
            }
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Request>(&line) {
            Ok(request) => {
                let call = ApiCall {
                    request,
                    reply_tx: reply_tx.clone(),
                };
                if calls_tx.send(call).await.is_err() {
                    break; // The node is shutting down.
                }
            }
            Err(e) => {
                let id = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
                let error = ApiError::new(ErrorCode::InvalidRequest, format!("bad request: {e}"));
                if reply_tx.send(Reply::error(id, &error)).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(reply_tx);
    let _ = writer.await;
}
