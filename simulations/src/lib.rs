//! A deterministic discrete-event simulator for the podmesh protocols.
//!
//! It runs the real [`podmesh_mesh::Mesh`] and [`podmesh_mesh::Peers`] state machines of
//! thousands of nodes in virtual time: an event heap ordered by (time, sequence), one seeded RNG
//! from which every choice derives, an in-memory store that can fail writes, and a network model
//! with latency, loss, duplication, partitions, slow nodes, crashes and restarts. Scenarios are
//! TOML files (see `docs/simulations.md`); the same scenario and seed give the same run, event
//! for event.

pub mod check;
pub mod engine;
pub mod foca_sim;
pub mod metrics;
pub mod net;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod signers;

pub use podmesh_mesh::Time;
