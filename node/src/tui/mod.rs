//! The terminal UI attached to the local node (`podmesh tui`).
