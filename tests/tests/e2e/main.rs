//! End-to-end tests: a real `ftpd` on a temp root and port 0, driven by the real `ftp-cli`.
//!
//! Both binaries are found next to this test executable, so build the workspace first:
//! `cargo test --workspace` does.

// The helpers every test is written with: `Daemon`, the `Cli` builder, file comparison.
mod util;

// Whole files survive put then get byte for byte, at the sizes around chunk boundaries and with
// names that need quoting.
mod transfer;

// Several clients at once, and a client killed mid-upload that leaves nothing half-written.
mod concurrency;

// Refusing to overwrite without `-f`, missing files on either side, and stopping at the first
// failed command, whether commands come from `-c`, `-b` or stdin.
mod overwrite;
