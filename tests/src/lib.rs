//! End-to-end tests with real `podmesh` node processes over real QUIC (see `tests/`).
