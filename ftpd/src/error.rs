//! Errors that end a session. Failures of a single command are not here: they are
//! [`crate::reply::CmdError`]s, answered with `error` frames, and the session goes on.

use protocol::{CodecError, ConnectionError, ErrorCode, ErrorReply};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client closed the connection")]
    Closed,
    #[error("no {0} within the time limit")]
    Timeout(&'static str),
    #[error("framing error: {0}")]
    Corrupt(CodecError),
    #[error("connection broken: {0}")]
    Broken(std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(ErrorReply),
    #[error("server is shutting down")]
    Shutdown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl SessionError {
    /// A connection failure, named by what the session was waiting for.
    pub fn connection(e: ConnectionError, waiting_for: &'static str) -> Self {
        match e {
            ConnectionError::Closed => SessionError::Closed,
            ConnectionError::RecvTimeout(_) | ConnectionError::SendTimeout(_) => {
                SessionError::Timeout(waiting_for)
            }
            ConnectionError::Corrupt(e) => SessionError::Corrupt(e),
            ConnectionError::Broken(e) => SessionError::Broken(e),
        }
    }

    /// The last frame to send before closing, when the peer is still there to read it.
    pub fn farewell(&self) -> Option<ErrorReply> {
        let code = match self {
            SessionError::Closed | SessionError::Broken(_) => return None,
            SessionError::Corrupt(
                CodecError::HeaderTooLarge(..) | CodecError::BodyTooLarge(..),
            ) => ErrorCode::TooLarge,
            SessionError::Corrupt(_) | SessionError::Protocol(_) => ErrorCode::BadRequest,
            SessionError::Timeout(_) => ErrorCode::Timeout,
            SessionError::Refused(reply) => return Some(reply.clone()),
            SessionError::Shutdown => ErrorCode::Busy,
            SessionError::Internal(_) => ErrorCode::Internal,
        };
        Some(ErrorReply::new(code, self.to_string()))
    }
}

/// Runs blocking disk work off the reactor; a panic in it ends only this session.
pub async fn blocking<T, F>(f: F) -> Result<T, SessionError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::Internal(format!("disk task failed: {e}")))
}
