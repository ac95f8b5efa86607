//! The podmesh node: daemon, QUIC transport, redb store, local API, CLI and TUI.
