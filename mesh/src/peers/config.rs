//! Bounds and timing of the Pod and peer protocols, each with the reason for its default.

use std::time::Duration;

/// Bounds and timing of the Pod and peer protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersConfig {
    /// How long an RPC may take before it counts as failed. A handshake whose `Prepare` gets no
    /// answer in this time is aborted; raise it on slow links.
    pub rpc_timeout: Duration,
    /// Pause between re-sends of `Commit` and `Abort` until they are acknowledged.
    pub resend_interval: Duration,
    /// How long a participant waits for the outcome before it asks the coordinator.
    pub participant_wait: Duration,
    /// How long a participant asks a coordinator membership forgot (dead or left, tombstone
    /// collected) before it ends its entry: twice the LAN tombstone TTL, so a node that just
    /// restarted and has not heard of everyone yet never does (`Peers::end_participant`).
    pub participant_give_up: Duration,
    /// Attempts to deliver one message before the sender is told `unreachable`.
    pub delivery_attempts: u32,
    /// Largest message body, in bytes (64 KiB: messages are notifications, not bulk data).
    pub message_size_max: usize,
    /// Messages one inbox holds; a full inbox refuses with `inbox_full`, never drops.
    pub inbox_len_max: usize,
    /// Messages from the Pods of one node, together, that one inbox holds (a quarter of
    /// `inbox_len_max`): a node flooding a Pod fills its own share, refused with `inbox_full`,
    /// and leaves three quarters of the inbox to every other sender.
    pub inbox_share_per_node_max: usize,
    /// Deliveries stored together in one store transaction (group commit): those that arrive
    /// while a commit is in progress join the next one, up to this many. 64 keeps a batch of
    /// the largest messages under 4 MiB and its commit short, while 64 concurrent senders
    /// already share one fsync.
    pub delivery_batch_max: usize,
    /// Ids of the messages this node stored, remembered for deduplication and acks (oldest
    /// forgotten first). It must outlast a sender's retries: 131,072 ids last 16 s at 8,000
    /// messages a second (podmesh-bench's rate between two nodes), over the 9 s a sender
    /// retries within (`delivery_attempts` x `rpc_timeout`); they take about 100 bytes each
    /// in memory when full.
    pub dedupe_ids_max: usize,
    /// Pods one node hosts.
    pub pods_max: usize,
    /// Peers one Pod has. With `children_per_pod_max` it keeps a Pod record, gossiped as one
    /// state value, under `Config::state_value_size_max` (16 KiB): a peer address takes at most
    /// 130 bytes, a child name 65.
    pub peers_per_pod_max: usize,
    /// Peers of one local Pod that the Pods of one other node may be (a quarter of
    /// `peers_per_pod_max`): a node that registers its Pods with someone else's Pod takes at most
    /// this many of its peer slots, so other nodes always find room.
    pub peers_per_pod_per_node_max: usize,
    /// Spawned children one Pod keeps, and reclaimed children it remembers (the oldest by name
    /// forgotten first).
    pub children_per_pod_max: usize,
    /// Handshakes in progress (coordinator and participant entries together).
    pub handshakes_max: usize,
    /// Handshakes in progress here that one other node coordinates (an eighth of
    /// `handshakes_max`): a coordinator that prepares and never finishes holds at most this many
    /// participant entries, and honest coordinators keep the rest.
    pub handshakes_per_node_max: usize,
    /// Outputs queued for the driver; past it the oldest requests are dropped (they time out
    /// and are retried like any lost message).
    pub output_queue_max: usize,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            rpc_timeout: Duration::from_secs(3),
            resend_interval: Duration::from_secs(1),
            participant_wait: Duration::from_secs(10),
            participant_give_up: Duration::from_secs(600),
            delivery_attempts: 3,
            message_size_max: 64 * 1024,
            inbox_len_max: 1024,
            inbox_share_per_node_max: 256,
            delivery_batch_max: 64,
            dedupe_ids_max: 128 * 1024,
            // One replicated state key per Pod, under `Config::state_keys_max` (1024) with room
            // for the node's own keys.
            pods_max: 1000,
            peers_per_pod_max: 64,
            peers_per_pod_per_node_max: 16,
            children_per_pod_max: 32,
            handshakes_max: 256,
            handshakes_per_node_max: 32,
            output_queue_max: 4096,
        }
    }
}
