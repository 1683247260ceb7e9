//! What put and get share: their options, the progress callback, and the summary they return.

use std::time::Duration;

use protocol::Digest;

/// Receives progress of a transfer; the terminal front end draws it, scripts ignore it.
pub trait Progress: Send {
    /// A transfer of `total` bytes starts, `done` of them already in place (a resume).
    fn start(&mut self, name: &str, total: u64, done: u64);
    /// `n` more bytes were verified.
    fn advance(&mut self, n: u64);
    /// The transfer ended, well or not.
    fn finish(&mut self);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: u64, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// What a finished transfer reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The name as the user gave it.
    pub name: String,
    /// Bytes that crossed the wire this time.
    pub sent: u64,
    /// Size of the whole file.
    pub size: u64,
    /// How long the transfer took, for the rate in its summary line.
    pub elapsed: Duration,
    /// The whole file's digest (MD5 or BLAKE3, as the session agreed), checked by both sides.
    pub digest: Digest,
}

/// Options shared by put and get.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferOptions {
    /// Replace an existing target.
    pub overwrite: bool,
    /// Continue what an earlier attempt left (staged bytes on the server, `.ftp-part` here).
    pub resume: bool,
}
