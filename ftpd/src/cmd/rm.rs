//! `rm` and `rmdir`: remove a file, or an empty directory.

use protocol::PathArg;

use crate::cmd::answer_ok;
use crate::error::SessionError;
use crate::session::Session;

pub async fn rm(s: &mut Session, req: PathArg) -> Result<(), SessionError> {
    let path = match s.check_writable().and_then(|()| s.resolve(&req.path)) {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    answer_ok(s, move |root| root.remove_file(&path)).await
}

pub async fn rmdir(s: &mut Session, req: PathArg) -> Result<(), SessionError> {
    let path = match s.check_writable().and_then(|()| s.resolve(&req.path)) {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    answer_ok(s, move |root| root.remove_dir(&path)).await
}
