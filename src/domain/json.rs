//! Lenient JSON helpers for the typing quirks of real senders (see PROTOCOLS.md).
