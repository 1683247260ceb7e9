//! One module per command a client can send; each `run` returns what it did, and the session's
//! dispatcher sends the final reply and records the outcome.

pub mod cd;
pub mod damaged;
pub mod df;
pub mod get;
pub mod list;
pub mod mkdir;
pub mod put;
pub mod pwd;
pub mod rename;
pub mod rm;
pub mod rmdir;
pub mod stat;

use std::time::{Duration, Instant};

use protocol::Message;

use crate::error::SessionError;
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

/// The slowest a transfer may move for long (`--min-rate`). Without it, a frame per stall
/// timeout kept a transfer open forever while it moved next to nothing: one upload that
/// reserved the whole quota and sent an empty chunk every 59 s made every other upload fail
/// `too_large`, and a download read at a trickle held its connection and memory.
pub(crate) struct Pace {
    /// Each window must move at least `least` bytes: the stall timeout.
    window: Duration,
    /// Bytes a window must move; 0 turns the check off.
    least: u64,
    /// When the current window began.
    since: Instant,
    /// Bytes moved in the current window.
    moved: u64,
    /// The session's time waiting for rate caps, which is not the client's slowness.
    meter: std::sync::Arc<crate::throttle::Meter>,
    /// The meter's throttled time when the current window began.
    throttled_since: Duration,
}

impl Pace {
    pub fn new(session: &crate::session::Session) -> Self {
        let window = session.config.stall_timeout;
        Pace {
            window,
            least: (session.config.min_rate as f64 * window.as_secs_f64()) as u64,
            since: Instant::now(),
            moved: 0,
            throttled_since: session.meter.throttled(),
            meter: session.meter.clone(),
        }
    }

    /// The current window's length, less the time it waited for rate caps: a session held
    /// back by its own cap is not slow by its client's doing.
    fn elapsed(&self) -> Duration {
        let throttled = self.meter.throttled().saturating_sub(self.throttled_since);
        self.since.elapsed().saturating_sub(throttled)
    }

    /// Counts `n` more bytes moved (0 for an empty chunk, which is no progress at all); fails
    /// once a whole window has passed with fewer than the least.
    pub fn moved(&mut self, n: u64) -> Result<(), SessionError> {
        self.moved = self.moved.saturating_add(n);
        if self.elapsed() < self.window {
            return Ok(());
        }
        if self.moved < self.least {
            return Err(SessionError::Timeout(
                "progress at the minimum rate (--min-rate)",
            ));
        }
        self.since = Instant::now();
        self.throttled_since = self.meter.throttled();
        self.moved = 0;
        Ok(())
    }
}
