//! The terminal UI attached to the local node (`podmesh tui`).
//!
//! [`app`] holds the state and drawing with no IO; [`run`] connects it to the node's local API
//! (one connection attached to the selected Pod for events, one for requests) and to the
//! terminal.

pub mod app;
