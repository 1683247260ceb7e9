//! One module per command a client can send; each `run` returns what it did, and the session's
//! dispatcher sends the final reply and records the outcome.

pub mod cd;
pub mod get;
pub mod list;
pub mod mkdir;
pub mod put;
pub mod pwd;
pub mod rename;
pub mod rm;
pub mod rmdir;
pub mod stat;

use protocol::Message;
use storage::Home;

use crate::error::{blocking, SessionError};
use crate::reply::CmdError;

/// How a command ended, when it did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Refused: answered with `error`; the session goes on.
    Refused(CmdError),
    /// An upload refused part-way: answered with `error`, then the chunks the client already
    /// sent are skipped until its `eof` or `abort`, which puts the connection back in step.
    RefusedUpload(CmdError),
    /// A download stopped part-way: answered with `abort`.
    Aborted(CmdError),
    /// The session cannot go on.
    Session(SessionError),
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        Failure::Session(e)
    }
}

impl From<CmdError> for Failure {
    fn from(e: CmdError) -> Self {
        Failure::Refused(e)
    }
}

impl From<storage::Error> for Failure {
    fn from(e: storage::Error) -> Self {
        Failure::Refused(e.into())
    }
}

/// What a command handler gives the dispatcher: the final frame to send, or why not.
pub type Handled = Result<Message, Failure>;

/// Runs a storage change off the reactor; its success is answered `ok`.
pub(crate) async fn storage_ok<F>(home: &Home, f: F) -> Handled
where
    F: FnOnce(&Home) -> storage::Result<()> + Send + 'static,
{
    let home = home.clone();
    blocking(move || f(&home)).await??;
    Ok(Message::Ok)
}
