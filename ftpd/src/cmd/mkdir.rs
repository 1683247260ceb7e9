//! `mkdir`: create a directory, with `parents` its missing parents too.

use protocol::Mkdir;

use crate::cmd::{storage_ok, Handled};
use crate::session::Session;

pub async fn run(s: &mut Session, req: Mkdir) -> Handled {
    s.check_writable()?;
    let path = s.resolve(&req.path)?;
    storage_ok(&s.home, move |home| home.mkdir(&path, req.parents)).await
}
