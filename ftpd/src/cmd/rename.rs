//! `rename`: move a file or directory, never over an existing one.

use protocol::Rename;

use crate::cmd::answer_ok;
use crate::error::SessionError;
use crate::session::Session;

pub async fn run(s: &mut Session, req: Rename) -> Result<(), SessionError> {
    let paths = s
        .check_writable()
        .and_then(|()| Ok((s.resolve(&req.from)?, s.resolve(&req.to)?)));
    let (from, to) = match paths {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    answer_ok(s, move |root| root.rename(&from, &to)).await
}
