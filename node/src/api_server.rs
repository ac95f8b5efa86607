//! Serves the local API on a Unix socket and hands each request to the actor.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::{debug, warn};

use crate::api::{
    ApiError, CLIENT_QUEUE_LEN_MAX, CLIENTS_MAX, ErrorCode, REQUEST_LINE_LEN_MAX, Reply, Request,
};

/// How long a client may leave [`CLIENT_REQUESTS_MAX`] replies unread, with more requests
/// waiting, before it counts as too slow and is disconnected: long for a program that is only
/// busy, short enough that one that never reads does not hold its slot.
pub const SLOW_CLIENT_WAIT: Duration = Duration::from_secs(5);

/// How long a client that is being disconnected gets to read the final error line. Meanwhile
/// its further requests are read and discarded, so that a client blocked writing them gets to
/// its reading.
pub const FINAL_LINE_WAIT: Duration = Duration::from_secs(10);

/// Requests of one client that are in progress or whose replies are not yet written. A client
/// that pipelines more waits (its requests stay unread) rather than losing replies, and the
/// events of its Pods keep [`CLIENT_QUEUE_LEN_MAX`] of room whatever it asked.
pub const CLIENT_REQUESTS_MAX: usize = 256;

/// What a client's connection tells the actor.
#[derive(Debug)]
pub enum ClientEvent {
    /// A request, with the way back to its client.
    Call(ApiCall),
    /// The client will send nothing more: the actor forgets it wherever it keeps it for events,
    /// so that its connection and its slot are given back as soon as the replies it is still
    /// owed have been written.
    Closed(ClientTx),
}

/// One request on its way to the actor, with the way back to its client.
#[derive(Debug)]
pub struct ApiCall {
    /// The parsed request.
    pub request: Request,
    /// Where replies and events for this client go.
    pub reply_tx: ClientTx,
    /// The request's room in the client's queue, used by its reply.
    pub slot: RequestSlot,
}

/// The room one request holds in its client's queue, from when it is read until its reply has
/// been written (one of [`CLIENT_REQUESTS_MAX`]).
#[derive(Debug)]
pub struct RequestSlot {
    _room: OwnedSemaphorePermit,
}

/// A reply or event queued for a client, with the room of the request it answers.
#[derive(Debug)]
struct Queued {
    reply: Reply,
    _slot: Option<RequestSlot>,
}

/// The way back to one local client: its queue of replies and events, and the flag that
/// disconnects it when it falls too far behind.
#[derive(Debug, Clone)]
pub struct ClientTx {
    queue: mpsc::Sender<Queued>,
    too_slow: Arc<watch::Sender<bool>>,
}

impl ClientTx {
    /// Queues an event (or an extra reply line, such as an attach's alerts). A client with
    /// [`CLIENT_QUEUE_LEN_MAX`] events unread is too slow: rather than have this one skipped,
    /// it is disconnected with a final error line. Returns whether the event was queued;
    /// `false` means the client is gone or going.
    pub fn send(&self, reply: Reply) -> bool {
        self.push(Queued { reply, _slot: None })
    }

    /// Queues the reply to the request that holds `slot`.
    pub fn answer(&self, slot: RequestSlot, reply: Reply) -> bool {
        self.push(Queued {
            reply,
            _slot: Some(slot),
        })
    }

    fn push(&self, queued: Queued) -> bool {
        match self.queue.try_send(queued) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.too_slow.send_replace(true);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the client's connection is gone.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Whether both lead to the same client.
    pub fn same_client(&self, other: &ClientTx) -> bool {
        self.queue.same_channel(&other.queue)
    }
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
pub async fn serve(listener: UnixListener, events_tx: mpsc::Sender<ClientEvent>) {
    let slots = Arc::new(Semaphore::new(CLIENTS_MAX));
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
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            client(stream, events_tx).await;
            drop(slot);
        });
    }
}

/// Serves one client until it hangs up or is too slow, then gives its slot back.
async fn client(stream: UnixStream, events_tx: mpsc::Sender<ClientEvent>) {
    let (read, write) = stream.into_split();
    // Requests in progress cannot fill the queue: events always have CLIENT_QUEUE_LEN_MAX.
    let (queue, replies) = mpsc::channel(CLIENT_QUEUE_LEN_MAX + CLIENT_REQUESTS_MAX);
    let too_slow = Arc::new(watch::channel(false).0);
    let mut slow = too_slow.subscribe();
    let tx = ClientTx {
        queue,
        too_slow: too_slow.clone(),
    };
    let mut writer = tokio::spawn(write_replies(write, replies, too_slow));
    let mut reader = BufReader::new(read);
    let ended = tokio::select! {
        ended = read_requests(&mut reader, tx.clone(), events_tx.clone()) => Some(ended),
        _ = slow.wait_for(|slow| *slow) => None,
        _ = &mut writer => None,
    };
    match ended {
        Some(Ended::HungUp) => {
            // Only the replies to requests it already sent keep the writer going.
            let _ = events_tx.send(ClientEvent::Closed(tx)).await;
            let _ = writer.await;
        }
        Some(Ended::TooSlow) | None => {
            tx.too_slow.send_replace(true);
            let _ = events_tx.send(ClientEvent::Closed(tx)).await;
            // Discard what it still sends while it gets the chance to read the final line.
            let mut sink = tokio::io::sink();
            let discard = tokio::io::copy(&mut reader, &mut sink);
            tokio::select! {
                _ = discard => {}
                _ = &mut writer => {}
            }
        }
    }
}

/// Why a client's requests ended.
enum Ended {
    /// It closed its side, or the connection failed.
    HungUp,
    /// It left its replies unread for [`SLOW_CLIENT_WAIT`].
    TooSlow,
}

/// Reads request lines and hands them to the actor until the client stops sending.
async fn read_requests(
    reader: &mut BufReader<OwnedReadHalf>,
    reply_tx: ClientTx,
    events_tx: mpsc::Sender<ClientEvent>,
) -> Ended {
    let requests = Arc::new(Semaphore::new(CLIENT_REQUESTS_MAX));
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = REQUEST_LINE_LEN_MAX as u64 + 1;
        match reader.take(limit).read_until(b'\n', &mut line).await {
            Ok(0) => return Ended::HungUp,
            Ok(_) => {}
            Err(e) => {
                debug!(error = %e, "local API read failed");
                return Ended::HungUp;
            }
        }
        let room = tokio::time::timeout(SLOW_CLIENT_WAIT, requests.clone().acquire_owned());
        let slot = match room.await {
            Ok(Ok(permit)) => RequestSlot { _room: permit },
            Ok(Err(_)) => return Ended::HungUp,
            Err(_) => return Ended::TooSlow,
        };
        if line.last() != Some(&b'\n') {
            // Either the line is over the limit or the client hung up mid-line: the stream
            // cannot be framed any more, so answer once and disconnect.
            if line.len() > REQUEST_LINE_LEN_MAX {
                let error = ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("request line longer than {REQUEST_LINE_LEN_MAX} bytes"),
                );
                reply_tx.answer(slot, Reply::error(None, &error));
            }
            return Ended::HungUp;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Request>(&line) {
            Ok(request) => {
                let call = ApiCall {
                    request,
                    reply_tx: reply_tx.clone(),
                    slot,
                };
                if events_tx.send(ClientEvent::Call(call)).await.is_err() {
                    return Ended::HungUp; // The node is shutting down.
                }
            }
            Err(e) => {
                let id = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
                let error = ApiError::new(ErrorCode::InvalidRequest, format!("bad request: {e}"));
                if !reply_tx.answer(slot, Reply::error(id, &error)) {
                    return Ended::HungUp;
                }
            }
        }
    }
}

/// Writes the client's replies and events in order. Once the client is too slow, it finishes
/// the line in progress, drops what is still queued, writes one `busy` error line saying why,
/// and closes, all within [`FINAL_LINE_WAIT`].
async fn write_replies(
    mut write: OwnedWriteHalf,
    mut replies: mpsc::Receiver<Queued>,
    too_slow: Arc<watch::Sender<bool>>,
) {
    // Holding the sender keeps the flag readable after every client handle is gone.
    let mut slow = too_slow.subscribe();
    loop {
        let queued = tokio::select! {
            biased;
            _ = slow.wait_for(|slow| *slow) => break,
            queued = replies.recv() => match queued {
                Some(queued) => queued,
                None => return,
            },
        };
        let line = encode(&queued.reply);
        let mut writing = std::pin::pin!(write.write_all(&line));
        let written = tokio::select! {
            biased;
            result = &mut writing => Some(result),
            _ = slow.wait_for(|slow| *slow) => None,
        };
        match written {
            Some(Ok(())) => {}
            Some(Err(_)) => return,
            // Finish the line in progress, so the final one is framed.
            None => match tokio::time::timeout(FINAL_LINE_WAIT, writing).await {
                Ok(Ok(())) => break,
                _ => return,
            },
        }
    }
    replies.close();
    let error = ApiError::new(
        ErrorCode::Busy,
        "client too slow: replies and events left unread; disconnected, later requests discarded",
    );
    let line = encode(&Reply::error(None, &error));
    let _ = tokio::time::timeout(FINAL_LINE_WAIT, write.write_all(&line)).await;
    let _ = write.shutdown().await;
}
fn encode(reply: &Reply) -> Vec<u8> {
    let mut line = serde_json::to_vec(reply).unwrap_or_else(|_| {
        br#"{"event":"error","data":{"code":"internal","message":"reply could not be encoded"}}"#
            .to_vec()
    });
    line.push(b'\n');
    line
}
