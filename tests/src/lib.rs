//! End-to-end tests live in tests/tests; this library holds what they share beyond helpers.

// A TCP proxy that corrupts, cuts or stalls the connections between `ftp-cli` and `ftpd`.
pub mod proxy;

// A private PostgreSQL: one server per test binary, a fresh database per test.
pub mod postgres;

// A moto S3 server per test.
pub mod moto;
