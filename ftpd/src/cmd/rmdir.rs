//! `rmdir`: remove an empty directory.

use protocol::{Message, PathArg};

use crate::cmd::Handled;
use crate::session::Session;

pub async fn run(s: &mut Session, req: PathArg) -> Handled {
    s.check_writable()?;
    let path = s.resolve(&req.path)?;
    s.files.backend().remove_dir(&path).await?;
    Ok(Message::Ok)
}
