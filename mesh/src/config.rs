//! Tuning knobs and bounds, with LAN and WAN presets.

use std::time::Duration;

use crate::Error;

/// Protocol timing and every bound the core enforces.
///
/// Start from [`Config::lan`] or [`Config::wan`] and change single fields; [`Config::validate`]
/// (called by `Mesh::new`) rejects combinations that would break the protocol. All nodes of a
/// mesh should run the same values: the size limits are also decode limits, and `sync_buckets`
/// must match for anti-entropy to drill down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Time between two probes (SWIM protocol period). Must be > `probe_timeout`. Lower detects
    /// failures sooner at the cost of more datagrams; LAN 1 s, WAN 5 s.
    pub probe_interval: Duration,
    /// How long to wait for a direct Ack before asking others to probe indirectly. Must be > 0 and
    /// < `probe_interval`; set it around the 99th percentile round trip time. LAN 500 ms, WAN 3 s.
    pub probe_timeout: Duration,
    /// How many members are asked to probe a silent target (PingReq), and how many independent
    /// confirmations make a suspicion reach its minimum timeout. Must be >= 1; 3 as in Lifeguard.
    pub indirect_checks: usize,
    /// Minimum suspicion timeout is `suspicion_mult * max(1, log10 N) * probe_interval`. Must be
    /// >= 1. Higher tolerates more loss before declaring a node dead. LAN 4, WAN 6.
    pub suspicion_mult: u32,
    /// A fresh suspicion starts at `suspicion_max_mult` times the minimum and shrinks towards the
    /// minimum with confirmations. Must be >= 1; 6 as in Lifeguard.
    pub suspicion_max_mult: u32,
    /// Each update is piggybacked `retransmit_mult * ceil(log10(N + 1))` times. Must be >= 1.
    /// Raise it on lossy networks. LAN 4, WAN 4.
    pub retransmit_mult: u32,
    /// Time between gossip ticks, which push queued updates to `gossip_fanout` members. Must be
    /// > 0. LAN 200 ms, WAN 500 ms.
    pub gossip_interval: Duration,
    /// Members per gossip tick. Must be >= 1. LAN 3, WAN 4.
    pub gossip_fanout: usize,
    /// Dead members keep receiving gossip this long, so a falsely declared node hears of it and
    /// refutes. Must be <= `tombstone_ttl`. LAN 30 s, WAN 60 s.
    pub gossip_to_dead: Duration,
    /// Local health score ceiling: the probe interval and timeout stretch up to this many times.
    /// Must be >= 1; 8 as in Lifeguard.
    pub awareness_max: u32,
    /// Time between anti-entropy rounds with one random live member. Must be > 0. Each round
    /// costs one small summary message while states agree. LAN 10 s, WAN 30 s.
    pub sync_interval: Duration,
    /// Buckets of the anti-entropy digest; a differing summary costs one message of this many
    /// hashes. Must be in 1..=4096 and equal on all nodes. Default 64.
    pub sync_buckets: u16,
    /// Mean time between re-contacts of a seed and of a random dead member (each a small summary
    /// message while nothing differs), which heals partitions and islands. Must be > 0. Lower
    /// heals faster at the cost of connection attempts to members that are really dead.
    /// LAN 10 s, WAN 60 s.
    pub reconnect_interval: Duration,
    /// How many last known members a node with no live member contacts at once when it has no
    /// seeds. Must be >= 1. Default 3.
    pub rejoin_fanout: usize,
    /// Most members a node keeps in its store to rejoin through after a restart: a random sample
    /// of the live ones, refilled as they die or leave. Must be >= `rejoin_fanout`. Default 32:
    /// the store's size and write load stay flat in the mesh size, and 32 members are rarely all
    /// down at once.
    pub members_persisted_max: usize,
    /// Time between writes of the stored members (only when they changed); must
    /// not be zero. Default 1 s: a node that crashes soon after joining still remembers whom
    /// to rejoin, and a quiet mesh writes nothing. Raise it if membership churns on slow disks.
    pub persist_interval: Duration,
    /// Dead and left members, and deleted state entries, are kept this long and then collected.
    /// Must be >= `gossip_to_dead` and long enough for gossip and anti-entropy to spread the
    /// tombstone everywhere (several `sync_interval`s). LAN 5 min, WAN 15 min.
    pub tombstone_ttl: Duration,
    /// Largest datagram sent or accepted, in bytes. Must be >= 256. Default 1100: QUIC assumes a
    /// path carries 1200-byte UDP payloads until it has probed for more, and a DATAGRAM frame
    /// in such a packet holds about 1160 bytes after the packet header, the frame header and the
    /// AEAD tag; 1100 leaves room for longer connection ids.
    pub datagram_size_max: usize,
    /// Largest stream message sent or accepted, in bytes. Must be >= `datagram_size_max` and hold
    /// a full-size state entry. Default 1 MiB; a join push/pull larger than this is truncated and
    /// completed by anti-entropy.
    pub message_size_max: usize,
    /// Most members (excluding this node) kept in the member table; news of more is dropped.
    /// Must be >= 1 and < 2^32 - 1 (members are indexed by `u32`). Default 16384.
    pub members_max: usize,
    /// Most updates waiting to be piggybacked; when full, the most retransmitted is dropped.
    /// Must be >= 1. Default 4096.
    pub broadcast_queue_max: usize,
    /// Most indirect probes this node runs for others at once; more PingReqs are dropped.
    /// Must be >= 1. Default 256.
    pub indirect_pending_max: usize,
    /// Most outputs waiting for the driver; when full, new outputs are dropped and counted. The
    /// driver should drain after every call. Must be >= 1. Default 65536.
    pub output_queue_max: usize,
    /// Most seed addresses remembered from `Join`. Must be >= 1. Default 16.
    pub seeds_max: usize,
    /// Most replicated state keys per owner, tombstones included. Must be >= 1. Default 1024.
    pub state_keys_max: usize,
    /// Longest state key in bytes. Must be >= 1. Default 128.
    pub state_key_size_max: usize,
    /// Largest state value in bytes. Values too large for a datagram travel by anti-entropy only.
    /// Default 16 KiB.
    pub state_value_size_max: usize,
    /// Most claims held while the certificate that signed them is asked for (a member this node
    /// has not met, or one that renewed its certificate); more are dropped and counted, and
    /// come again by gossip or anti-entropy. Must be >= 1. Default 4096: during a join burst
    /// every new member's Alive waits here for a round trip, and each held claim is at most a
    /// state record.
    pub claims_held_max: usize,
    /// Most certificates asked for, or answered, in one message. Must be >= 1. Default 256:
    /// 256 certificates of about 500 bytes make a 128 KiB answer, well within
    /// `message_size_max`.
    pub certificates_wanted_max: usize,
    /// How long claims wait for their certificate before they are dropped. Must be > 0. A stream
    /// round trip takes milliseconds, so a relay that has not answered by then will not; the
    /// claims come again from other relays. LAN 2 s, WAN 10 s.
    pub certificate_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config::lan()
    }
}

impl Config {
    /// Defaults for a local network (DESIGN section 3).
    pub fn lan() -> Self {
        Config {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            gossip_to_dead: Duration::from_secs(30),
            awareness_max: 8,
            sync_interval: Duration::from_secs(10),
            sync_buckets: 64,
            reconnect_interval: Duration::from_secs(10),
            rejoin_fanout: 3,
            members_persisted_max: 32,
            persist_interval: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(300),
            datagram_size_max: 1100,
            message_size_max: 1 << 20,
            members_max: 16_384,
            broadcast_queue_max: 4096,
            indirect_pending_max: 256,
            output_queue_max: 65_536,
            seeds_max: 16,
            state_keys_max: 1024,
            state_key_size_max: 128,
            state_value_size_max: 16 << 10,
            claims_held_max: 4096,
            certificates_wanted_max: 256,
            certificate_wait: Duration::from_secs(2),
        }
    }

    /// Defaults for members spread over a wide-area network: slower, more tolerant timers.
    pub fn wan() -> Self {
        Config {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            suspicion_mult: 6,
            gossip_interval: Duration::from_millis(500),
            gossip_fanout: 4,
            gossip_to_dead: Duration::from_secs(60),
            sync_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(60),
            tombstone_ttl: Duration::from_secs(900),
            certificate_wait: Duration::from_secs(10),
            ..Config::lan()
        }
    }

    /// Checks every constraint stated on the fields.
    pub fn validate(&self) -> Result<(), Error> {
        let checks: [(bool, &'static str); 25] = [
            (!self.probe_timeout.is_zero(), "probe_timeout must be > 0"),
            (
                self.probe_timeout < self.probe_interval,
                "probe_timeout must be < probe_interval",
            ),
            (self.indirect_checks >= 1, "indirect_checks must be >= 1"),
            (self.suspicion_mult >= 1, "suspicion_mult must be >= 1"),
            (
                self.suspicion_max_mult >= 1,
                "suspicion_max_mult must be >= 1",
            ),
            (self.retransmit_mult >= 1, "retransmit_mult must be >= 1"),
            (
                !self.gossip_interval.is_zero(),
                "gossip_interval must be > 0",
            ),
            (self.gossip_fanout >= 1, "gossip_fanout must be >= 1"),
            (
                self.gossip_to_dead <= self.tombstone_ttl,
                "gossip_to_dead must be <= tombstone_ttl",
            ),
            (self.awareness_max >= 1, "awareness_max must be >= 1"),
            (!self.sync_interval.is_zero(), "sync_interval must be > 0"),
            (
                (1..=4096).contains(&self.sync_buckets),
                "sync_buckets must be in 1..=4096",
            ),
            (
                !self.reconnect_interval.is_zero(),
                "reconnect_interval must be > 0",
            ),
            (self.rejoin_fanout >= 1, "rejoin_fanout must be >= 1"),
            (
                self.members_persisted_max >= self.rejoin_fanout,
                "members_persisted_max must be >= rejoin_fanout",
            ),
            (
                !self.persist_interval.is_zero(),
                "persist_interval must be > 0",
            ),
            (
                self.datagram_size_max >= 256,
                "datagram_size_max must be >= 256",
            ),
            (
                self.message_size_max >= self.datagram_size_max
                    && self.message_size_max
                        >= self.state_value_size_max + self.state_key_size_max + 256,
                "message_size_max must be >= datagram_size_max and hold a full state entry",
            ),
            (
                self.members_max >= 1 && self.broadcast_queue_max >= 1,
                "members_max and broadcast_queue_max must be >= 1",
            ),
            (
                u32::try_from(self.members_max).is_ok_and(|max| max < u32::MAX),
                "members_max must be < 2^32 - 1",
            ),
            (
                self.indirect_pending_max >= 1 && self.output_queue_max >= 1,
                "indirect_pending_max and output_queue_max must be >= 1",
            ),
            (
                self.seeds_max >= 1 && self.state_keys_max >= 1,
                "seeds_max and state_keys_max must be >= 1",
            ),
            (
                self.state_key_size_max >= 1,
                "state_key_size_max must be >= 1",
            ),
            (
                self.claims_held_max >= 1 && self.certificates_wanted_max >= 1,
                "claims_held_max and certificates_wanted_max must be >= 1",
            ),
            (
                !self.certificate_wait.is_zero(),
                "certificate_wait must be > 0",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(Error::Config(why)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_lan_matches_the_design() {
        // The documented LAN defaults are the ones DESIGN section 3 names.
        let lan = Config::lan();
        lan.validate().unwrap();
        Config::wan().validate().unwrap();
        assert_eq!(lan.probe_interval, Duration::from_secs(1));
        assert_eq!(lan.probe_timeout, Duration::from_millis(500));
        assert_eq!(
            (
                lan.indirect_checks,
                lan.suspicion_mult,
                lan.suspicion_max_mult
            ),
            (3, 4, 6)
        );
        assert_eq!(
            (lan.retransmit_mult, lan.gossip_fanout, lan.awareness_max),
            (4, 3, 8)
        );
        assert_eq!(lan.gossip_interval, Duration::from_millis(200));
    }

    #[test]
    fn validate_rejects_a_timeout_longer_than_the_interval() {
        // A probe that times out after the next one starts would overlap probes.
        let config = Config {
            probe_timeout: Duration::from_secs(2),
            ..Config::lan()
        };
        assert!(matches!(config.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn validate_rejects_bounds_the_core_cannot_honour() {
        // Fewer stored members than a rejoin contacts, or more members than a u32 index holds.
        let too_few_stored = Config {
            rejoin_fanout: 4,
            members_persisted_max: 3,
            ..Config::lan()
        };
        assert!(matches!(
            too_few_stored.validate(),
            Err(Error::Config(
                "members_persisted_max must be >= rejoin_fanout"
            ))
        ));
        let too_many = Config {
            members_max: u32::MAX as usize,
            ..Config::lan()
        };
        assert!(matches!(
            too_many.validate(),
            Err(Error::Config("members_max must be < 2^32 - 1"))
        ));
    }
}
