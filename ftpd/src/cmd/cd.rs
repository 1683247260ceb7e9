//! `cd`: change the session's current directory, kept on the server.

use protocol::{Message, PathArg};

use crate::cmd::Handled;
use crate::session::Session;

pub async fn run(s: &mut Session, req: PathArg) -> Handled {
    let path = s.resolve(&req.path)?;
    s.files.backend().check_dir(&path).await?;
    s.cwd = path;
    Ok(Message::Cwd(PathArg {
        path: s.cwd.to_string(),
    }))
}
