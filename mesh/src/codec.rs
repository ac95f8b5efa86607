//! The wire format, in one place (documented in `docs/wire.md`).
//!
//! Every frame is one protocol version byte followed by a bincode 1.3.3 body encoded with
//! explicit options: varint integers, little endian, a byte limit and trailing bytes rejected.
//! Decoding never panics and never allocates more than the limit allows: sequences are decoded
//! without trusting their announced length for preallocation, and byte strings are checked
//! against the limit by bincode before they are allocated.

use std::net::SocketAddr;

use bincode::Options;
use serde::{Deserialize, Serialize};

use crate::NodeName;
use crate::signing::SIGNATURE_LEN;

/// The protocol version byte that opens every frame. Bump it on any incompatible change.
/// Version 2 signs every claim a node makes about itself (DESIGN section 2).
pub const PROTOCOL_VERSION: u8 = 2;

/// A node's signature of one of its own claims: which certificate's key made it, and the
/// signature itself (ECDSA P-256 in its fixed form, `r` then `s`).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    key: [u8; 4],
    r: [u8; 32],
    s: [u8; 32],
}

impl Signature {
    /// A signature made with the key of the certificate whose id is `key_id`
    /// ([`crate::key_id`]).
    pub fn new(key_id: u32, bytes: [u8; SIGNATURE_LEN]) -> Self {
        let (r, s) = bytes.split_at(32);
        // Invariant: 64 bytes split at 32 are two halves of 32.
        Self {
            key: key_id.to_le_bytes(),
            r: r.try_into().expect("two halves of 32 bytes"),
            s: s.try_into().expect("two halves of 32 bytes"),
        }
    }

    /// The id of the certificate whose key made it.
    pub fn key_id(&self) -> u32 {
        u32::from_le_bytes(self.key)
    }

    /// The signature's 64 bytes.
    pub fn bytes(&self) -> [u8; SIGNATURE_LEN] {
        let mut out = [0; SIGNATURE_LEN];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature(key {:08x})", self.key_id())
    }
}

/// A member's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; will be declared dead unless it refutes in time.
    Suspect,
    /// Declared dead by the failure detector.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// Alive or suspect: still part of the mesh, probed and gossiped to.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// The state as the CLI, the local API and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }

    /// Precedence at equal incarnation: left beats dead beats suspect beats alive.
    pub(crate) fn rank(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
            MemberState::Left => 3,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame holds no byte at all.
    #[error("empty frame")]
    Empty,
    /// The frame is larger than the limit for its kind.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The frame was written by an incompatible protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
    /// The body is not a valid encoding.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A datagram: an optional probe message plus piggybacked updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Datagram {
    pub(crate) probe: Probe,
    #[serde(deserialize_with = "seq")]
    pub(crate) updates: Vec<Update>,
}

/// The failure-detector part of a datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Probe {
    /// No probe: the datagram only carries updates (a gossip tick).
    Gossip,
    /// Are you alive? `addr` is the sender's advertised address, for the Ack.
    Ping { seq: u32, addr: SocketAddr },
    /// Answer to the Ping (or relayed PingReq) with the same `seq`.
    Ack { seq: u32 },
    /// Please ping `target` for me and answer Ack or Nack with `seq`.
    PingReq {
        seq: u32,
        addr: SocketAddr,
        target: NodeName,
        target_addr: SocketAddr,
    },
    /// The indirect probe `seq` got no Ack in time, but this intermediary is alive.
    Nack { seq: u32 },
}

/// A piggybacked membership or state update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Update {
    /// Signed by `name`.
    Alive {
        name: NodeName,
        addr: SocketAddr,
        incarnation: u64,
        signature: Signature,
    },
    /// `source` suspects `name` in its life `incarnation`. An accusation only ever stands at
    /// an incarnation the accused signed, so the accused can always refute: at the one the
    /// receiver holds, or, with `life`, at the one `life` proves.
    Suspect {
        name: NodeName,
        incarnation: u64,
        source: NodeName,
        life: Option<Life>,
    },
    /// `source` declared `name` dead in its life `incarnation`; as [`Update::Suspect`].
    Dead {
        name: NodeName,
        incarnation: u64,
        source: NodeName,
        life: Option<Life>,
    },
    /// Signed by `name`.
    Left {
        name: NodeName,
        addr: SocketAddr,
        incarnation: u64,
        signature: Signature,
    },
    /// Boxed: state updates are the largest and the rarest, and every queued update pays for
    /// the inline size of the largest.
    State(Box<StateRecord>),
}

/// The accused's own Alive in the life an accusation is about: where it was, and its signature.
/// An accusation carries it while that life is new, when some receivers may still hold an older
/// one: the accusation then also brings them the newer life, which ends a suspicion of the
/// older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Life {
    pub(crate) addr: SocketAddr,
    pub(crate) signature: Signature,
}

/// One replicated state entry; `value` None is a deletion tombstone. Signed by `owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateRecord {
    pub(crate) owner: NodeName,
    pub(crate) key: String,
    pub(crate) generation: u64,
    pub(crate) version: u64,
    #[serde(deserialize_with = "opt_bytes")]
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) signature: Signature,
}

impl StateRecord {
    /// The bytes `owner` signed.
    pub(crate) fn claim(&self) -> Vec<u8> {
        claim::state(
            &self.owner,
            &self.key,
            self.generation,
            self.version,
            self.value.as_deref(),
        )
    }
}

/// A member as carried by push/pull, anti-entropy and the store. `signature` is the member's
/// own, over its Left at `addr` and `incarnation` when `state` is left, else over its Alive:
/// whoever suspects or buries a member does so at an incarnation the member signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    pub(crate) name: NodeName,
    pub(crate) addr: SocketAddr,
    pub(crate) incarnation: u64,
    pub(crate) state: MemberState,
    pub(crate) signature: Signature,
}

impl MemberRecord {
    /// The bytes `name` signed.
    pub(crate) fn claim(&self) -> Vec<u8> {
        if self.state == MemberState::Left {
            claim::left(&self.name, self.addr, self.incarnation)
        } else {
            claim::alive(&self.name, self.addr, self.incarnation)
        }
    }
}

/// A node's certificate (DER), as push/pull and certificate answers carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CertificateRecord {
    pub(crate) name: NodeName,
    #[serde(deserialize_with = "seq")]
    pub(crate) der: Vec<u8>,
}

/// A stream message; `addr` is the sender's advertised address so the receiver can answer a
/// node it does not know yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Message {
    pub(crate) addr: SocketAddr,
    pub(crate) body: Body,
}

/// The kinds of stream messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// Full state transfer on join; `reply` asks the receiver for its own. `certificates`
    /// holds the certificate of every member in `members`, so a joining node can check them.
    PushPull {
        reply: bool,
        #[serde(deserialize_with = "seq")]
        members: Vec<MemberRecord>,
        #[serde(deserialize_with = "seq")]
        entries: Vec<StateRecord>,
        #[serde(deserialize_with = "seq")]
        certificates: Vec<CertificateRecord>,
    },
    /// Anti-entropy step 1: the summary hash of the sender's digest.
    SyncSummary { hash: u64 },
    /// Anti-entropy step 2: the summaries differ; here are the receiver's bucket hashes.
    SyncBuckets {
        #[serde(deserialize_with = "seq")]
        hashes: Vec<u64>,
    },
    /// Anti-entropy step 3: the records of the differing `buckets`; `reply` asks for the
    /// receiver's newer records of the same buckets.
    SyncDelta {
        reply: bool,
        #[serde(deserialize_with = "seq")]
        buckets: Vec<u16>,
        #[serde(deserialize_with = "seq")]
        members: Vec<MemberRecord>,
        #[serde(deserialize_with = "seq")]
        entries: Vec<StateRecord>,
    },
    /// Please send the certificates of these members: the sender holds claims of theirs
    /// relayed by the receiver and cannot check them yet.
    CertificatesWanted {
        #[serde(deserialize_with = "seq")]
        names: Vec<NodeName>,
    },
    /// The answer to [`Body::CertificatesWanted`]: the certificates the sender holds.
    Certificates {
        #[serde(deserialize_with = "seq")]
        certificates: Vec<CertificateRecord>,
    },
}

/// The bytes of each claim a node signs about itself: the claim's fields in the wire encoding
/// (docs/wire.md). Drivers and test tools use these to sign and check claims exactly as the
/// core does; a signer that shares its key with other uses (the daemon's node key also signs
/// TLS handshakes) prefixes a context string of its own.
pub mod claim {
    use std::net::SocketAddr;

    use serde::Serialize;

    use crate::NodeName;

    #[derive(Serialize)]
    enum Claim<'a> {
        Alive {
            name: &'a NodeName,
            addr: SocketAddr,
            incarnation: u64,
        },
        Left {
            name: &'a NodeName,
            addr: SocketAddr,
            incarnation: u64,
        },
        State {
            owner: &'a NodeName,
            key: &'a str,
            generation: u64,
            version: u64,
            value: Option<&'a [u8]>,
        },
    }

    fn bytes(claim: &Claim<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        super::encode_into(&mut out, claim);
        out
    }

    /// Node `name` is alive at `addr` in its life `incarnation`.
    pub fn alive(name: &NodeName, addr: SocketAddr, incarnation: u64) -> Vec<u8> {
        bytes(&Claim::Alive {
            name,
            addr,
            incarnation,
        })
    }

    /// Node `name`, at `addr`, left the mesh in its life `incarnation`.
    pub fn left(name: &NodeName, addr: SocketAddr, incarnation: u64) -> Vec<u8> {
        bytes(&Claim::Left {
            name,
            addr,
            incarnation,
        })
    }

    /// Node `owner`'s replicated state holds `value` under `key` (`None`: deleted) at
    /// `(generation, version)`.
    pub fn state(
        owner: &NodeName,
        key: &str,
        generation: u64,
        version: u64,
        value: Option<&[u8]>,
    ) -> Vec<u8> {
        bytes(&Claim::State {
            owner,
            key,
            generation,
            version,
            value,
        })
    }
}

/// Decodes a sequence without preallocating its announced length: an attacker's length prefix
/// must not size an allocation, only the bytes actually present (bounded by the limit) may.
fn seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Visitor<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut access: A,
        ) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = access.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Visitor(std::marker::PhantomData))
}

fn opt_bytes<'de, D>(d: D) -> Result<Option<Vec<u8>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Bytes(#[serde(deserialize_with = "seq")] Vec<u8>);
    Ok(Option::<Bytes>::deserialize(d)?.map(|b| b.0))
}

fn options(limit: usize) -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .with_limit(u64::try_from(limit).unwrap_or(u64::MAX))
        .reject_trailing_bytes()
}

/// Encoded size of `value` without the version byte.
pub(crate) fn body_size<T: Serialize>(value: &T) -> usize {
    // Serializing our types cannot fail: every sequence has a known length and the limit is the
    // largest possible, so the error branch is unreachable and zero is a harmless answer.
    options(usize::MAX)
        .serialized_size(value)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_versioned(PROTOCOL_VERSION, value)
}

fn encode_versioned<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    encode_into(&mut out, value);
    out
}

fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    // Invariant: our wire types serialize infallibly (known-length sequences, no limit).
    options(usize::MAX)
        .serialize_into(out, value)
        .expect("wire types serialize infallibly");
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], limit: usize) -> Result<T, DecodeError> {
    decode_versioned(PROTOCOL_VERSION, bytes, limit)
}

fn decode_versioned<'a, T: Deserialize<'a>>(
    expected: u8,
    bytes: &'a [u8],
    limit: usize,
) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    if version != expected {
        return Err(DecodeError::Version(version));
    }
    options(limit)
        .deserialize(body)
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Encodes a datagram (version byte included).
pub(crate) fn encode_datagram(datagram: &Datagram) -> Vec<u8> {
    encode(datagram)
}

/// Decodes a datagram of at most `limit` bytes.
pub(crate) fn decode_datagram(bytes: &[u8], limit: usize) -> Result<Datagram, DecodeError> {
    decode(bytes, limit)
}

/// Encodes a stream message (version byte included).
pub(crate) fn encode_message(message: &Message) -> Vec<u8> {
    encode(message)
}

/// Decodes a stream message of at most `limit` bytes.
pub(crate) fn decode_message(bytes: &[u8], limit: usize) -> Result<Message, DecodeError> {
    decode(bytes, limit)
}

/// Encodes a member record for the store.
pub(crate) fn encode_member(record: &MemberRecord) -> Vec<u8> {
    encode(record)
}

/// Decodes a member record read from the store.
pub(crate) fn decode_member(bytes: &[u8]) -> Result<MemberRecord, DecodeError> {
    decode(bytes, 1024)
}

/// Largest stored record (a Pod record with its peers, an inbox message, a log entry).
pub(crate) const RECORD_SIZE_MAX: usize = 1 << 20;

/// The version byte of stored records (Pods, inbox messages, handshake log entries) and of the
/// Pod records nodes publish: apart from the protocol's, so a release that changes the wire
/// still reads the Pods and inboxes an earlier one stored. Bump it when their encoding changes.
pub(crate) const RECORD_VERSION: u8 = 1;

/// Encodes a record for the store (version byte included).
pub(crate) fn encode_record<T: Serialize>(record: &T) -> Vec<u8> {
    encode_versioned(RECORD_VERSION, record)
}

/// Decodes a record read from the store.
pub(crate) fn decode_record<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, DecodeError> {
    decode_versioned(RECORD_VERSION, bytes, RECORD_SIZE_MAX)
}

/// Encodes a peer-protocol request or answer (version byte included).
pub(crate) fn encode_peer<T: Serialize>(value: &T) -> Vec<u8> {
    encode(value)
}

/// Decodes a peer-protocol request or answer of at most `limit` bytes.
pub(crate) fn decode_peer<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, DecodeError> {
    decode(bytes, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name_strategy() -> impl Strategy<Value = NodeName> {
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?".prop_map(|s| s.parse().unwrap())
    }

    fn addr_strategy() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    fn state_strategy() -> impl Strategy<Value = MemberState> {
        prop_oneof![
            Just(MemberState::Alive),
            Just(MemberState::Suspect),
            Just(MemberState::Dead),
            Just(MemberState::Left),
        ]
    }

    fn signature_strategy() -> impl Strategy<Value = Signature> {
        (any::<u32>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(key, r, s)| {
            let mut bytes = [0; SIGNATURE_LEN];
            bytes[..32].copy_from_slice(&r);
            bytes[32..].copy_from_slice(&s);
            Signature::new(key, bytes)
        })
    }

    fn record_strategy() -> impl Strategy<Value = StateRecord> {
        (
            name_strategy(),
            "[ -~]{0,20}",
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            signature_strategy(),
        )
            .prop_map(
                |(owner, key, generation, version, value, signature)| StateRecord {
                    owner,
                    key,
                    generation,
                    version,
                    value,
                    signature,
                },
            )
    }

    fn life_strategy() -> impl Strategy<Value = Option<Life>> {
        proptest::option::of(
            (addr_strategy(), signature_strategy())
                .prop_map(|(addr, signature)| Life { addr, signature }),
        )
    }

    fn certificate_strategy() -> impl Strategy<Value = CertificateRecord> {
        (
            name_strategy(),
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(|(name, der)| CertificateRecord { name, der })
    }

    fn member_strategy() -> impl Strategy<Value = MemberRecord> {
        (
            name_strategy(),
            addr_strategy(),
            any::<u64>(),
            state_strategy(),
            signature_strategy(),
        )
            .prop_map(|(name, addr, incarnation, state, signature)| MemberRecord {
                name,
                addr,
                incarnation,
                state,
                signature,
            })
    }

    fn update_strategy() -> impl Strategy<Value = Update> {
        prop_oneof![
            (
                name_strategy(),
                addr_strategy(),
                any::<u64>(),
                signature_strategy()
            )
                .prop_map(|(name, addr, incarnation, signature)| Update::Alive {
                    name,
                    addr,
                    incarnation,
                    signature
                }),
            (
                name_strategy(),
                any::<u64>(),
                name_strategy(),
                life_strategy()
            )
                .prop_map(|(name, incarnation, source, life)| Update::Suspect {
                    name,
                    incarnation,
                    source,
                    life
                }),
            (
                name_strategy(),
                any::<u64>(),
                name_strategy(),
                life_strategy()
            )
                .prop_map(|(name, incarnation, source, life)| Update::Dead {
                    name,
                    incarnation,
                    source,
                    life
                }),
            (
                name_strategy(),
                addr_strategy(),
                any::<u64>(),
                signature_strategy()
            )
                .prop_map(|(name, addr, incarnation, signature)| Update::Left {
                    name,
                    addr,
                    incarnation,
                    signature
                }),
            record_strategy().prop_map(|r| Update::State(Box::new(r))),
        ]
    }

    fn probe_strategy() -> impl Strategy<Value = Probe> {
        prop_oneof![
            Just(Probe::Gossip),
            (any::<u32>(), addr_strategy()).prop_map(|(seq, addr)| Probe::Ping { seq, addr }),
            any::<u32>().prop_map(|seq| Probe::Ack { seq }),
            (
                any::<u32>(),
                addr_strategy(),
                name_strategy(),
                addr_strategy()
            )
                .prop_map(|(seq, addr, target, target_addr)| Probe::PingReq {
                    seq,
                    addr,
                    target,
                    target_addr
                }),
            any::<u32>().prop_map(|seq| Probe::Nack { seq }),
        ]
    }

    fn body_strategy() -> impl Strategy<Value = Body> {
        let members = || proptest::collection::vec(member_strategy(), 0..5);
        let entries = || proptest::collection::vec(record_strategy(), 0..5);
        prop_oneof![
            (
                any::<bool>(),
                members(),
                entries(),
                proptest::collection::vec(certificate_strategy(), 0..3)
            )
                .prop_map(|(reply, members, entries, certificates)| {
                    Body::PushPull {
                        reply,
                        members,
                        entries,
                        certificates,
                    }
                }),
            proptest::collection::vec(name_strategy(), 0..5)
                .prop_map(|names| Body::CertificatesWanted { names }),
            proptest::collection::vec(certificate_strategy(), 0..3)
                .prop_map(|certificates| Body::Certificates { certificates }),
            any::<u64>().prop_map(|hash| Body::SyncSummary { hash }),
            proptest::collection::vec(any::<u64>(), 0..70)
                .prop_map(|hashes| Body::SyncBuckets { hashes }),
            (
                any::<bool>(),
                proptest::collection::vec(any::<u16>(), 0..10),
                members(),
                entries()
            )
                .prop_map(|(reply, buckets, members, entries)| Body::SyncDelta {
                    reply,
                    buckets,
                    members,
                    entries
                }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            // Whatever arrives from the network or the disk, decoding returns instead of panicking.
            let _ = decode_datagram(&bytes, 1200);
            let _ = decode_message(&bytes, 1 << 20);
            let _ = decode_member(&bytes);
            let mut versioned = bytes.clone();
            versioned.insert(0, PROTOCOL_VERSION);
            let _ = decode_datagram(&versioned, 4096);
            let _ = decode_message(&versioned, 4096);
            let _ = decode_member(&versioned);
        }

        #[test]
        fn datagrams_round_trip(probe in probe_strategy(), updates in proptest::collection::vec(update_strategy(), 0..8)) {
            // What one node encodes, another decodes to the same value.
            let datagram = Datagram { probe, updates };
            let bytes = encode_datagram(&datagram);
            prop_assert_eq!(bytes.len(), 1 + body_size(&datagram));
            prop_assert_eq!(decode_datagram(&bytes, bytes.len()).unwrap(), datagram);
        }

        #[test]
        fn messages_round_trip(addr in addr_strategy(), body in body_strategy()) {
            // Stream messages round-trip too, including empty sequences and tombstones.
            let message = Message { addr, body };
            let bytes = encode_message(&message);
            prop_assert_eq!(decode_message(&bytes, bytes.len()).unwrap(), message);
        }

        #[test]
        fn member_records_round_trip(record in member_strategy()) {
            // Records written to the store read back unchanged.
            prop_assert_eq!(decode_member(&encode_member(&record)).unwrap(), record);
        }
    }

    #[test]
    fn a_ping_encodes_exactly_as_docs_wire_md_shows() {
        // The worked example of the wire documentation stays true.
        let probe = Probe::Ping {
            seq: 1,
            addr: SocketAddr::from(([10, 0, 0, 1], 7000)),
        };
        let bytes = encode_datagram(&Datagram {
            probe,
            updates: Vec::new(),
        });
        assert_eq!(
            bytes,
            [
                0x02, 0x01, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x01, 0xfb, 0x58, 0x1b, 0x00
            ]
        );
    }

    #[test]
    fn stored_records_keep_their_own_version_when_the_protocol_changes() {
        // A node of a release with a new wire protocol still reads the Pods, inboxes and logs
        // an earlier release stored: those records carry the record version, not the protocol's.
        let record = (7u64, "pod/b".to_owned());
        let stored = encode_record(&record);
        assert_eq!(stored[0], RECORD_VERSION);
        assert_ne!(RECORD_VERSION, PROTOCOL_VERSION);
        let earlier: Vec<u8> = std::iter::once(1)
            .chain(stored[1..].iter().copied())
            .collect();
        assert_eq!(decode_record::<(u64, String)>(&earlier).unwrap(), record);
        assert!(matches!(
            decode_message(&stored, 1024),
            Err(DecodeError::Version(RECORD_VERSION))
        ));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_decoding() {
        // The limit bounds the work done for an oversized frame.
        let datagram = Datagram {
            probe: Probe::Ack { seq: 1 },
            updates: Vec::new(),
        };
        let bytes = encode_datagram(&datagram);
        assert_eq!(
            decode_datagram(&bytes, bytes.len() - 1),
            Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit: bytes.len() - 1
            })
        );
    }

    #[test]
    fn a_huge_announced_length_fails_without_allocating_it() {
        // A sequence claiming 2^60 elements in a tiny frame is malformed, not an allocation.
        let mut bytes = vec![PROTOCOL_VERSION, 0]; // Probe::Gossip
        bytes.push(0xfd); // varint marker for a u64 length
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            decode_datagram(&bytes, 1200),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn wrong_version_and_trailing_bytes_are_rejected() {
        // A future version and a frame with garbage after the body are both refused.
        let datagram = Datagram {
            probe: Probe::Nack { seq: 7 },
            updates: Vec::new(),
        };
        let mut bytes = encode_datagram(&datagram);
        bytes[0] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode_datagram(&bytes, 1200),
            Err(DecodeError::Version(PROTOCOL_VERSION + 1))
        );
        let mut bytes = encode_datagram(&datagram);
        bytes.push(0);
        assert!(matches!(
            decode_datagram(&bytes, 1200),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(decode_datagram(&[], 1200), Err(DecodeError::Empty));
    }
}
