//! The podmesh node: daemon, QUIC transport, redb store, local API, CLI and TUI.
//!
//! [`daemon::run`] starts a node: it loads the certificates, opens the redb store, binds the
//! QUIC endpoint and the local API socket, and drives the `podmesh-mesh` state machine from one
//! actor task. [`client::Client`] is how the CLI and the TUI talk to a running node.

pub mod api;
pub mod api_server;
pub mod client;
pub mod config;
pub mod daemon;
pub mod directory;
pub mod faults;
pub mod metrics;
pub mod signatures;
pub mod store;
pub mod transport;
pub mod tui;
