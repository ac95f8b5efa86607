//! The network model: per-link latency with jitter, loss, duplication, partitions of several
//! shapes, and slow nodes. Every decision draws from the caller's RNG, so a run is a function of
//! its seed.

use std::time::Duration;

use rand::Rng;

/// Latency, loss and duplication of the links.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// The shortest one-way latency of a link.
    pub latency_min: Duration,
    /// The longest one-way latency of a link. Each link gets a fixed base latency in
    /// `[latency_min, latency_max]`, drawn from the run's seed.
    pub latency_max: Duration,
    /// Added to every message, uniform in `[0, jitter]`; it reorders messages on a link.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a stream exchange breaks (the connection drops) so the frame or the
    /// answer to it is lost. Streams are otherwise reliable: QUIC retransmits.
    pub stream_loss: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(5),
            jitter: Duration::from_millis(1),
            loss: 0.0,
            duplicate: 0.0,
            stream_loss: 0.0,
        }
    }
}

/// How a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Unreliable: may be lost or duplicated.
    Datagram,
    /// Reliable while the path exists; breaks with `stream_loss`.
    Stream,
}

/// A partition of the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cut {
    /// Nodes in different groups cannot reach each other in either direction.
    Groups(Vec<u32>),
    /// Nodes with `true` cannot send to nodes with `false`; the other direction works.
    OneWay(Vec<bool>),
    /// Groups arranged in a ring of `groups`: a node reaches its own group and the two next to
    /// it, so every node sees a majority of the mesh but no node sees all of it.
    Ring {
        /// Group of each node.
        group: Vec<u32>,
        /// Number of groups.
        groups: u32,
    },
}

impl Cut {
    /// Two halves: the first `n / 2` nodes and the rest.
    pub fn halves(n: usize) -> Cut {
        Cut::Groups((0..n).map(|i| u32::from(i >= n / 2)).collect())
    }

    /// Node `node` alone on one side.
    pub fn isolate(n: usize, node: usize) -> Cut {
        Cut::Groups((0..n).map(|i| u32::from(i == node)).collect())
    }

    /// The second half cannot hear the first half: the first half's frames to it are lost.
    pub fn one_way(n: usize) -> Cut {
        Cut::OneWay((0..n).map(|i| i < n / 2).collect())
    }

    /// `groups` contiguous groups in a ring (at least 5, so that three of them are a majority).
    pub fn majority_ring(n: usize, groups: u32) -> Cut {
        let groups = groups.max(5);
        let per = n.div_ceil(groups as usize).max(1);
        Cut::Ring {
            group: (0..n).map(|i| (i / per) as u32).collect(),
            groups,
        }
    }

    /// Whether `from` can send to `to` across this cut.
    pub fn allows(&self, from: usize, to: usize) -> bool {
        match self {
            Cut::Groups(group) => group.get(from) == group.get(to),
            Cut::OneWay(sender_side) => {
                !(sender_side.get(from) == Some(&true) && sender_side.get(to) == Some(&false))
            }
            Cut::Ring { group, groups } => match (group.get(from), group.get(to)) {
                (Some(&a), Some(&b)) => {
                    let d = a.abs_diff(b);
                    d.min(groups - d) <= 1
                }
                _ => false,
            },
        }
    }
}

/// The links between `n` nodes and the faults currently on them.
#[derive(Debug, Clone)]
pub struct Network {
    config: NetConfig,
    link_seed: u64,
    cut: Option<Cut>,
    slow: Vec<Duration>,
    extra_loss: f64,
}

impl Network {
    /// A healthy network of `n` nodes; `link_seed` fixes every link's base latency.
    pub fn new(config: NetConfig, n: usize, link_seed: u64) -> Network {
        Network {
            config,
            link_seed,
            cut: None,
            slow: vec![Duration::ZERO; n],
            extra_loss: 0.0,
        }
    }

    /// The links' configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Installs a partition (replacing any other), or ends it with `None`; other faults stay.
    pub fn set_partition(&mut self, cut: Option<Cut>) {
        self.cut = cut;
    }

    /// Makes `node` slow: everything it sends or receives takes `delay` longer.
    pub fn set_slow(&mut self, node: usize, delay: Duration) {
        if let Some(slot) = self.slow.get_mut(node) {
            *slot = delay;
        }
    }

    /// Loss on top of the configured loss, for a loss fault.
    pub fn set_extra_loss(&mut self, loss: f64) {
        self.extra_loss = loss;
    }

    /// Removes every fault: partitions, slow nodes and extra loss.
    pub fn heal(&mut self) {
        self.cut = None;
        self.slow.iter_mut().for_each(|d| *d = Duration::ZERO);
        self.extra_loss = 0.0;
    }

    /// Whether `from` can currently send to `to`.
    pub fn reachable(&self, from: usize, to: usize) -> bool {
        self.cut.as_ref().is_none_or(|cut| cut.allows(from, to))
    }

    /// The fixed base latency of the link between `a` and `b` (the same both ways).
    pub fn link_latency(&self, a: usize, b: usize) -> Duration {
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let mut h = self.link_seed ^ lo.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= hi.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h = (h ^ (h >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 29;
        let min = self.config.latency_min.as_micros() as u64;
        let span = (self.config.latency_max.as_micros() as u64).saturating_sub(min);
        Duration::from_micros(min + if span == 0 { 0 } else { h % (span + 1) })
    }

    /// Decides the fate of one frame from `from` to `to`: the delays after which copies of it
    /// arrive (none when it is lost or cut off, two when duplicated).
    pub fn route(&self, rng: &mut impl Rng, from: usize, to: usize, kind: Kind) -> Vec<Duration> {
        if !self.reachable(from, to) {
            return Vec::new();
        }
        let copies = match kind {
            Kind::Datagram => {
                let loss = (self.config.loss + self.extra_loss).min(1.0);
                if loss > 0.0 && rng.random_bool(loss) {
                    0
                } else if self.config.duplicate > 0.0 && rng.random_bool(self.config.duplicate) {
                    2
                } else {
                    1
                }
            }
            Kind::Stream => {
                let loss = self.config.stream_loss.min(1.0);
                usize::from(!(loss > 0.0 && rng.random_bool(loss)))
            }
        };
        let base = self.link_latency(from, to) + self.slow[from] + self.slow[to];
        let jitter = self.config.jitter.as_micros() as u64;
        (0..copies)
            .map(|_| {
                let extra = if jitter == 0 {
                    0
                } else {
                    rng.random_range(0..=jitter)
                };
                base + Duration::from_micros(extra)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn cut_shapes_block_what_they_say() {
        // Halves and isolation are symmetric; one-way blocks one direction only.
        let halves = Cut::halves(4);
        assert!(halves.allows(0, 1) && halves.allows(2, 3));
        assert!(!halves.allows(0, 2) && !halves.allows(3, 1));
        let alone = Cut::isolate(4, 2);
        assert!(!alone.allows(2, 0) && !alone.allows(0, 2) && alone.allows(0, 3));
        let one_way = Cut::one_way(4);
        assert!(!one_way.allows(0, 3));
        assert!(one_way.allows(3, 0));
    }

    #[test]
    fn a_majority_ring_lets_each_node_see_a_majority_but_not_everyone() {
        // Five groups of two: each node reaches its group and both neighbours (6 of 10).
        let ring = Cut::majority_ring(10, 5);
        for from in 0..10 {
            let seen = (0..10).filter(|&to| ring.allows(from, to)).count();
            assert_eq!(seen, 6, "node {from}");
        }
        assert!(ring.allows(0, 9), "the ring wraps around");
        assert!(!ring.allows(0, 4));
    }

    #[test]
    fn links_have_fixed_symmetric_latencies_within_the_range() {
        let net = Network::new(NetConfig::default(), 50, 7);
        for a in 0..50 {
            for b in 0..50 {
                let l = net.link_latency(a, b);
                assert_eq!(l, net.link_latency(b, a));
                assert!(l >= Duration::from_millis(1) && l <= Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn loss_and_duplication_follow_their_rates() {
        // 20% loss and 10% duplication over 20,000 datagrams, within a few standard deviations.
        let config = NetConfig {
            loss: 0.2,
            duplicate: 0.1,
            ..NetConfig::default()
        };
        let net = Network::new(config, 2, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut lost, mut doubled) = (0, 0);
        for _ in 0..20_000 {
            match net.route(&mut rng, 0, 1, Kind::Datagram).len() {
                0 => lost += 1,
                2 => doubled += 1,
                _ => {}
            }
        }
        assert!((3_700..4_300).contains(&lost), "{lost}");
        assert!((1_400..1_800).contains(&doubled), "{doubled}");
        // Streams do not suffer datagram loss.
        assert!((0..100).all(|_| net.route(&mut rng, 0, 1, Kind::Stream).len() == 1));
    }

    #[test]
    fn slow_nodes_and_partitions_apply_and_heal() {
        let mut net = Network::new(NetConfig::default(), 4, 1);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        net.set_slow(1, Duration::from_secs(2));
        let d = net.route(&mut rng, 0, 1, Kind::Datagram);
        assert!(d[0] >= Duration::from_secs(2));
        net.set_partition(Some(Cut::halves(4)));
        assert!(net.route(&mut rng, 0, 3, Kind::Stream).is_empty());
        net.heal();
        assert!(net.route(&mut rng, 0, 3, Kind::Stream).len() == 1);
        assert!(net.route(&mut rng, 0, 1, Kind::Datagram)[0] < Duration::from_secs(1));
    }
}
