//! `pwd`: the session's current directory, as the client sees it.

use protocol::{Message, PathArg};

use crate::cmd::Handled;
use crate::session::Session;

pub async fn run(s: &mut Session) -> Handled {
    Ok(Message::Cwd(PathArg {
        path: s.cwd.to_string(),
    }))
}
