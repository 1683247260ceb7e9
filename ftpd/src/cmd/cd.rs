//! `cd` and `pwd`: the session's current directory, kept on the server.

use protocol::{Message, PathArg};

use crate::error::{blocking, SessionError};
use crate::session::Session;

pub async fn cd(s: &mut Session, req: PathArg) -> Result<(), SessionError> {
    let (visible, full) = match s.resolve_both(&req.path) {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    let root = s.root.clone();
    match blocking(move || root.check_dir(&full)).await? {
        Ok(()) => {
            s.cwd = visible;
            pwd(s).await
        }
        Err(e) => s.send_error(s.user_reply(&e)).await,
    }
}

pub async fn pwd(s: &mut Session) -> Result<(), SessionError> {
    let path = s.cwd.to_string();
    s.send(Message::Cwd(PathArg { path })).await
}
