//! End-to-end tests live in tests/tests; this library holds what they share beyond helpers.

// A TCP proxy that corrupts, cuts or stalls the connections between `ftp-cli` and `ftpd`.
pub mod proxy;
