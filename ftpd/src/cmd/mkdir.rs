//! `mkdir`: create a directory, with `parents` its missing parents too.

use protocol::{Message, Mkdir};

use crate::cmd::Handled;
use crate::session::Session;

pub async fn run(s: &mut Session, req: Mkdir) -> Handled {
    s.check_writable()?;
    let path = s.resolve(&req.path)?;
    s.files.backend().mkdir(&path, req.parents).await?;
    Ok(Message::Ok)
}
