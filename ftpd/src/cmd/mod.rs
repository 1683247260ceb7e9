//! One module per command a client can send.

pub mod get;
pub mod put;

use std::time::Duration;

use protocol::Md5Digest;
use tracing::info;

/// What a finished (or failed) transfer leaves in the log: one line, like vsftpd's xferlog.
pub(crate) struct TransferLog<'a> {
    pub peer: std::net::SocketAddr,
    pub op: &'static str,
    pub path: &'a str,
    pub bytes: u64,
    pub elapsed: Duration,
    pub md5: Option<Md5Digest>,
    pub outcome: &'a str,
}

impl TransferLog<'_> {
    pub fn emit(&self) {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.bytes as f64 / secs / 1e6
        } else {
            0.0
        };
        info!(
            target: "ftpd::xfer",
            peer = %self.peer,
            op = self.op,
            path = self.path,
            bytes = self.bytes,
            secs = format!("{secs:.3}"),
            mb_per_s = format!("{rate:.1}"),
            md5 = %self.md5.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            outcome = self.outcome,
            "transfer"
        );
    }
}
