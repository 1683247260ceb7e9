//! `mkdir`: create a directory, with `parents` its missing parents too.

use protocol::Mkdir;

use crate::cmd::answer_ok;
use crate::error::SessionError;
use crate::session::Session;

pub async fn run(s: &mut Session, req: Mkdir) -> Result<(), SessionError> {
    let path = match s.check_writable().and_then(|()| s.resolve(&req.path)) {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    answer_ok(s, move |root| root.mkdir(&path, req.parents)).await
}
