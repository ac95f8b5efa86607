//! Frames carrying claims that a node makes about other nodes: what a forger sends.
//!
//! An honest node never sends these; the simulator's forging node and the real-process forgery
//! tests do, to check that honest nodes refuse every one of them (DESIGN section 2). The caller
//! signs each claim however it likes (with its own key, under the subject's key id, or not at
//! all), through `sign`, which gets the claim's bytes ([`crate::claim`]) and the claim's subject.

use std::net::SocketAddr;

use crate::NodeName;
use crate::codec::{
    self, Body, CertificateRecord, Datagram, Life, MemberRecord, MemberState, Message, Probe,
    Signature, StateRecord, Update, claim,
};

/// A claim about one node, to be signed by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forgery {
    /// `subject` is alive at `addr` in life `incarnation`.
    Alive {
        /// Whom it is about.
        subject: NodeName,
        /// The address it gives.
        addr: SocketAddr,
        /// The life.
        incarnation: u64,
    },
    /// `subject`, at `addr`, left in life `incarnation`.
    Left {
        /// Whom it is about.
        subject: NodeName,
        /// The address it gives.
        addr: SocketAddr,
        /// The life.
        incarnation: u64,
    },
    /// `subject` is suspect (or `dead`) in life `incarnation`, according to `source`, with a
    /// signed Alive of that life at `addr`.
    Accusation {
        /// Whom it is about.
        subject: NodeName,
        /// The address of the life.
        addr: SocketAddr,
        /// The life.
        incarnation: u64,
        /// Dead rather than suspect.
        dead: bool,
        /// The accuser it names.
        source: NodeName,
    },
    /// `owner`'s state holds `value` under `key` at `(generation, version)`.
    State {
        /// Whose state.
        owner: NodeName,
        /// The key.
        key: String,
        /// The generation.
        generation: u64,
        /// The version.
        version: u64,
        /// The value, `None` for a deletion.
        value: Option<Vec<u8>>,
    },
}

impl Forgery {
    /// The node the claim is about.
    pub fn subject(&self) -> &NodeName {
        match self {
            Forgery::Alive { subject, .. }
            | Forgery::Left { subject, .. }
            | Forgery::Accusation { subject, .. } => subject,
            Forgery::State { owner, .. } => owner,
        }
    }

    /// The bytes a signature of this claim covers.
    pub fn claim(&self) -> Vec<u8> {
        match self {
            Forgery::Alive {
                subject,
                addr,
                incarnation,
            }
            | Forgery::Accusation {
                subject,
                addr,
                incarnation,
                ..
            } => claim::alive(subject, *addr, *incarnation),
            Forgery::Left {
                subject,
                addr,
                incarnation,
            } => claim::left(subject, *addr, *incarnation),
            Forgery::State {
                owner,
                key,
                generation,
                version,
                value,
            } => claim::state(owner, key, *generation, *version, value.as_deref()),
        }
    }

    fn update(&self, signature: Signature) -> Update {
        match self.clone() {
            Forgery::Alive {
                subject,
                addr,
                incarnation,
            } => Update::Alive {
                name: subject,
                addr,
                incarnation,
                signature,
            },
            Forgery::Left {
                subject,
                addr,
                incarnation,
            } => Update::Left {
                name: subject,
                addr,
                incarnation,
                signature,
            },
            Forgery::Accusation {
                subject,
                addr,
                incarnation,
                dead,
                source,
            } => {
                let life = Some(Life { addr, signature });
                if dead {
                    Update::Dead {
                        name: subject,
                        incarnation,
                        source,
                        life,
                    }
                } else {
                    Update::Suspect {
                        name: subject,
                        incarnation,
                        source,
                        life,
                    }
                }
            }
            Forgery::State {
                owner,
                key,
                generation,
                version,
                value,
            } => Update::State(Box::new(StateRecord {
                owner,
                key,
                generation,
                version,
                value,
                signature,
            })),
        }
    }
}

/// A gossip datagram carrying `forgeries`, each signed by `sign`.
pub fn datagram(
    forgeries: &[Forgery],
    mut sign: impl FnMut(&NodeName, &[u8]) -> Signature,
) -> Vec<u8> {
    let updates = forgeries
        .iter()
        .map(|f| f.update(sign(f.subject(), &f.claim())))
        .collect();
    codec::encode_datagram(&Datagram {
        probe: Probe::Gossip,
        updates,
    })
}

/// A push/pull message from a node at `addr` carrying `forgeries` as member records and state
/// entries (an accusation becomes a suspect or dead record), each signed by `sign`, and the
/// `certificates` it presents for them, by name.
pub fn push_pull(
    addr: SocketAddr,
    forgeries: &[Forgery],
    certificates: Vec<(NodeName, Vec<u8>)>,
    mut sign: impl FnMut(&NodeName, &[u8]) -> Signature,
) -> Vec<u8> {
    let (mut members, mut entries) = (Vec::new(), Vec::new());
    for forgery in forgeries {
        let signature = sign(forgery.subject(), &forgery.claim());
        let (name, addr, incarnation, state, signature) = match forgery.update(signature) {
            Update::Alive {
                name,
                addr,
                incarnation,
                signature,
            } => (name, addr, incarnation, MemberState::Alive, signature),
            Update::Left {
                name,
                addr,
                incarnation,
                signature,
            } => (name, addr, incarnation, MemberState::Left, signature),
            Update::Suspect {
                name,
                incarnation,
                life: Some(Life { addr, signature }),
                ..
            } => (name, addr, incarnation, MemberState::Suspect, signature),
            Update::Dead {
                name,
                incarnation,
                life: Some(Life { addr, signature }),
                ..
            } => (name, addr, incarnation, MemberState::Dead, signature),
            Update::State(record) => {
                entries.push(*record);
                continue;
            }
            Update::Suspect { .. } | Update::Dead { .. } => continue,
        };
        members.push(MemberRecord {
            name,
            addr,
            incarnation,
            state,
            signature,
        });
    }
    let certificates = certificates
        .into_iter()
        .map(|(name, der)| CertificateRecord { name, der })
        .collect();
    codec::encode_message(&Message {
        addr,
        body: Body::PushPull {
            reply: false,
            members,
            entries,
            certificates,
        },
    })
}

/// An answer to a request for certificates, presenting `certificates` under the given names
/// whether or not they are those nodes' own.
pub fn certificates(addr: SocketAddr, certificates: Vec<(NodeName, Vec<u8>)>) -> Vec<u8> {
    let certificates = certificates
        .into_iter()
        .map(|(name, der)| CertificateRecord { name, der })
        .collect();
    codec::encode_message(&Message {
        addr,
        body: Body::Certificates { certificates },
    })
}
