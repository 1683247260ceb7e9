//! `rename`: move a file or directory, never over an existing one.

use protocol::{Message, Rename};

use crate::cmd::Handled;
use crate::session::Session;

pub async fn run(s: &mut Session, req: Rename) -> Handled {
    s.check_writable()?;
    let (from, to) = (s.resolve(&req.from)?, s.resolve(&req.to)?);
    s.files.backend().rename(&from, &to).await?;
    Ok(Message::Ok)
}
