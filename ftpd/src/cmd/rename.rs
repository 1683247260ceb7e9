//! `rename`: move a file or directory, never over an existing one.

use protocol::Rename;

use crate::cmd::{storage_ok, Handled};
use crate::session::Session;

pub async fn run(s: &mut Session, req: Rename) -> Handled {
    s.check_writable()?;
    let (from, to) = (s.resolve(&req.from)?, s.resolve(&req.to)?);
    storage_ok(&s.home, move |home| home.rename(&from, &to)).await
}
