//! `cd`: change the session's current directory, kept on the server.

use protocol::{Message, PathArg};

use crate::cmd::Handled;
use crate::error::blocking;
use crate::session::Session;

pub async fn run(s: &mut Session, req: PathArg) -> Handled {
    let path = s.resolve(&req.path)?;
    let (home, dir) = (s.home.clone(), path.clone());
    blocking(move || home.check_dir(&dir)).await??;
    s.cwd = path;
    Ok(Message::Cwd(PathArg {
        path: s.cwd.to_string(),
    }))
}
