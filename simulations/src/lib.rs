//! Deterministic discrete-event simulator for the podmesh protocols.
//!
//! It drives the real `podmesh-mesh` state machines in virtual time.
