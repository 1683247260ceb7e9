//! One module per command a client can send.

pub mod cd;
pub mod get;
pub mod list;
pub mod mkdir;
pub mod put;
pub mod rename;
pub mod rm;
pub mod stat;

use std::time::Duration;

use protocol::{Digest, Message};
use storage::Root;
use tracing::info;

use crate::error::{blocking, SessionError};
use crate::session::Session;

/// Runs a storage change off the reactor and answers `ok`, or the error.
pub(crate) async fn answer_ok<F>(s: &mut Session, f: F) -> Result<(), SessionError>
where
    F: FnOnce(&Root) -> storage::Result<()> + Send + 'static,
{
    let root = s.root.clone();
    match blocking(move || f(&root)).await? {
        Ok(()) => s.send(Message::Ok).await,
        Err(e) => s.send_error(s.user_reply(&e)).await,
    }
}

/// What a finished (or failed) transfer leaves in the log: one line, like vsftpd's xferlog.
pub(crate) struct TransferLog<'a> {
    pub peer: std::net::SocketAddr,
    pub user: Option<&'a str>,
    pub op: &'static str,
    pub path: &'a str,
    pub bytes: u64,
    pub elapsed: Duration,
    pub digest: Option<Digest>,
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
            user = self.user.unwrap_or("-"),
            op = self.op,
            path = self.path,
            bytes = self.bytes,
            secs = format!("{secs:.3}"),
            mb_per_s = format!("{rate:.1}"),
            digest = %self
                .digest
                .map_or_else(|| "-".into(), |d| format!("{}:{d}", d.kind().key())),
            outcome = self.outcome,
            "transfer"
        );
    }
}
