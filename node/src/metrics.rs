//! Prometheus metrics at `http://<metrics_listen>/metrics`, in the Prometheus text format.
//!
//! The actor owns a [`Metrics`] and refreshes it from the node's own counters when a scrape asks
//! for it, so metrics cost nothing between scrapes and every figure comes from one consistent
//! moment of the actor. The HTTP side is a deliberately small server: `GET /metrics` and
//! nothing else, each request bounded in size and time, a bounded number served at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

/// Bytes of one HTTP request head read at most; a scrape needs a few hundred.
pub const REQUEST_SIZE_MAX: usize = 8 << 10;
/// How long a client may take to send its request and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more wait for a slot (Prometheus scrapes one at a time).
pub const SCRAPES_IN_FLIGHT_MAX: usize = 8;

/// A scrape: the actor answers with the encoded metrics.
pub type Scrape = oneshot::Sender<String>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabel {
    pod: String,
}

/// What the actor knows at the moment of a scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Members by state, this node included.
    pub members: BTreeMap<&'static str, u64>,
    /// Lifeguard local health (0 is healthy).
    pub local_health: u64,
    /// Open QUIC connections.
    pub connections: u64,
    /// Cumulative counts, by metric name (without `_total`).
    pub counts: BTreeMap<&'static str, u64>,
    /// Handshakes this node coordinated, by result.
    pub handshakes: BTreeMap<&'static str, u64>,
    /// Messages that arrived for local Pods, by result.
    pub received: BTreeMap<&'static str, u64>,
    /// `send_to_peer` calls of local clients, by result: `delivered` or the error code.
    pub sends: BTreeMap<&'static str, u64>,
    /// Messages waiting in each local Pod's inbox.
    pub inboxes: BTreeMap<String, u64>,
}

/// Every help text, by cumulative count name.
const COUNTS: [(&str, &str); 11] = [
    ("podmesh_probes", "Direct probes (pings) sent"),
    (
        "podmesh_indirect_probes",
        "Indirect probes (ping-reqs) sent",
    ),
    ("podmesh_suspicions", "Members this node started to suspect"),
    (
        "podmesh_refutations",
        "Times this node refuted news of its own failure",
    ),
    (
        "podmesh_accusations_dropped",
        "Accusations dropped: their subject spoke here lately, or their accuser is back from across a cut",
    ),
    (
        "podmesh_claims_refused",
        "Claims of other nodes about themselves refused: not signed by their subject, or its certificate refused",
    ),
    (
        "podmesh_claims_held",
        "Claims held while the certificate that signed them was asked for",
    ),
    (
        "podmesh_claims_dropped",
        "Held claims dropped unchecked: too many waiting, or no certificate came in time",
    ),
    (
        "podmesh_deaths_declared",
        "Members declared dead here: suspicions that timed out, and expelled members",
    ),
    (
        "podmesh_bad_frames",
        "Frames and peer requests that did not decode",
    ),
    ("podmesh_store_write_failures", "Store writes that failed"),
];

/// The node's metrics, owned by the actor.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    members: Family<StateLabel, Gauge>,
    local_health: Gauge,
    connections: Gauge,
    counts: BTreeMap<&'static str, Counter>,
    handshakes: Family<ResultLabel, Counter>,
    received: Family<ResultLabel, Counter>,
    sends: Family<ResultLabel, Counter>,
    inboxes: Family<PodLabel, Gauge>,
    delivery_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let members = Family::<StateLabel, Gauge>::default();
        registry.register(
            "podmesh_members",
            "Members this node knows, by state, itself included",
            members.clone(),
        );
        let local_health = Gauge::default();
        registry.register(
            "podmesh_local_health",
            "Lifeguard local health score; 0 is healthy, higher stretches probes",
            local_health.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "podmesh_connections",
            "Open QUIC connections",
            connections.clone(),
        );
        let mut counts = BTreeMap::new();
        for (name, help) in COUNTS {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counts.insert(name, counter);
        }
        let handshakes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "podmesh_handshakes",
            "Peer handshakes this node coordinated, by result",
            handshakes.clone(),
        );
        let received = Family::<ResultLabel, Counter>::default();
        registry.register(
            "podmesh_messages_received",
            "Messages from peers for local Pods: stored in an inbox, or a duplicate of one",
            received.clone(),
        );
        let sends = Family::<ResultLabel, Counter>::default();
        registry.register(
            "podmesh_sends",
            "send_to_peer calls of local clients, by result (delivered or the error code)",
            sends.clone(),
        );
        let inboxes = Family::<PodLabel, Gauge>::default();
        registry.register(
            "podmesh_inbox_messages",
            "Messages waiting in a local Pod's inbox",
            inboxes.clone(),
        );
        // 0.5 ms to about 16 s: a loopback delivery to a retried one on a lossy WAN path.
        let delivery_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "podmesh_delivery_seconds",
            "Time from send_to_peer to the receiver's acknowledgement, for delivered messages",
            delivery_seconds.clone(),
        );
        Self {
            registry,
            members,
            local_health,
            connections,
            counts,
            handshakes,
            received,
            sends,
            inboxes,
            delivery_seconds,
        }
    }

    /// Records one acknowledged delivery's latency, as its sender saw it.
    pub fn observe_delivery(&self, latency: Duration) {
        self.delivery_seconds.observe(latency.as_secs_f64());
    }

    /// Brings every metric to `snapshot` and encodes the registry.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        self.members.clear();
        for state in ["alive", "suspect", "dead", "left"] {
            let count = snapshot.members.get(state).copied().unwrap_or(0);
            self.members
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(gauge_value(count));
        }
        self.local_health.set(gauge_value(snapshot.local_health));
        self.connections.set(gauge_value(snapshot.connections));
        for (name, counter) in &self.counts {
            advance(counter, snapshot.counts.get(name).copied().unwrap_or(0));
        }
        for (result, count) in &snapshot.handshakes {
            let label = ResultLabel {
                result: (*result).to_owned(),
            };
            advance(&self.handshakes.get_or_create(&label), *count);
        }
        for (family, counts) in [
            (&self.received, &snapshot.received),
            (&self.sends, &snapshot.sends),
        ] {
            for (result, count) in counts {
                let label = ResultLabel {
                    result: (*result).to_owned(),
                };
                advance(&family.get_or_create(&label), *count);
            }
        }
        // Pods come and go: the family holds exactly today's.
        self.inboxes.clear();
        for (pod, count) in &snapshot.inboxes {
            self.inboxes
                .get_or_create(&PodLabel { pod: pod.clone() })
                .set(gauge_value(*count));
        }
        let mut text = String::new();
        if prometheus_text::encode(&mut text, &self.registry).is_err() {
            warn!("metrics could not be encoded");
        }
        text
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Moves a counter up to `total`, a cumulative count kept elsewhere (counters never go down).
fn advance(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// Pause after a failed accept (out of file descriptors, say) before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `GET /metrics` on `listen`, asking the actor through `scrape_tx` for each answer,
/// until the actor is gone.
pub async fn serve(listener: tokio::net::TcpListener, scrape_tx: mpsc::Sender<Scrape>) {
    let slots = Arc::new(Semaphore::new(SCRAPES_IN_FLIGHT_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        if scrape_tx.is_closed() {
            return;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let scrape_tx = scrape_tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, scrape_tx)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics request failed"),
                Err(_) => debug!(%peer, "metrics request timed out"),
            }
        });
    }
}

/// Binds the metrics listener, with an error that names the address.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {listen}: {e}"))
}

async fn answer(
    mut stream: tokio::net::TcpStream,
    scrape_tx: mpsc::Sender<Scrape>,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let (status, content_type, body) = match request_line(&head) {
        Some(("GET", "/metrics")) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            let body = match scrape_tx.send(reply_tx).await {
                Ok(()) => reply_rx.await.ok(),
                Err(_) => None,
            };
            match body {
                Some(body) => ("200 OK", prometheus_text::CONTENT_TYPE, body),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "the node is stopping\n".to_owned(),
                ),
            }
        }
        Some(("GET", _)) => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
        Some(_) => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
        None => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head, at most [`REQUEST_SIZE_MAX`] bytes.
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_SIZE_MAX {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// The method and path of an HTTP request head.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let path = parts.next()?;
    parts.next()?.starts_with("HTTP/").then_some((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_counted_by_state_and_counters_only_move_up() {
        // A scrape shows the snapshot; a lower cumulative figure never makes a counter go down.
        let metrics = Metrics::new();
        let mut snapshot = Snapshot::default();
        snapshot.members.insert("alive", 2);
        snapshot.counts.insert("podmesh_probes", 7);
        snapshot.inboxes.insert("b".to_owned(), 3);
        let text = metrics.render(&snapshot);
        assert!(
            text.contains("podmesh_members{state=\"alive\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("podmesh_members{state=\"dead\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("podmesh_probes_total 7\n"), "{text}");
        assert!(
            text.contains("podmesh_inbox_messages{pod=\"b\"} 3\n"),
            "{text}"
        );
        snapshot.counts.insert("podmesh_probes", 5);
        snapshot.inboxes.clear();
        let text = metrics.render(&snapshot);
        assert!(text.contains("podmesh_probes_total 7\n"), "{text}");
        assert!(
            !text.contains("pod=\"b\""),
            "a removed Pod's inbox stays: {text}"
        );
    }

    #[test]
    fn a_delivery_lands_in_its_latency_bucket() {
        // The histogram's buckets are cumulative, as Prometheus expects.
        let metrics = Metrics::new();
        metrics.observe_delivery(Duration::from_millis(3));
        let text = metrics.render(&Snapshot::default());
        assert!(
            text.contains("podmesh_delivery_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains("podmesh_delivery_seconds_bucket{le=\"0.004\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("podmesh_delivery_seconds_bucket{le=\"0.002\"} 0\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_request_head_is_read_up_to_its_bound_and_no_further() {
        // A client that never ends its head costs at most REQUEST_SIZE_MAX (plus one read).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let junk = vec![b'a'; 4 * REQUEST_SIZE_MAX];
            let _ = stream.write_all(&junk).await;
            stream
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await.unwrap();
        assert!(head.len() >= REQUEST_SIZE_MAX, "{}", head.len());
        assert!(head.len() < REQUEST_SIZE_MAX + 1024, "{}", head.len());
        assert_eq!(request_line(&head), None);
        drop(stream);
        let _ = writer.await;
    }

    #[test]
    fn only_a_well_formed_request_line_is_read() {
        // Garbage or a truncated head is a bad request, never a panic.
        assert_eq!(
            request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_line(b"GET /metrics\r\n"), None);
        assert_eq!(request_line(b"\xff\xfe"), None);
        assert_eq!(request_line(b""), None);
    }
}
