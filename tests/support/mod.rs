//! Shared test support; include with `mod support;` from a test file.
pub mod azurite;
