//! `rmdir`: remove an empty directory.

use protocol::PathArg;

use crate::cmd::{storage_ok, Handled};
use crate::session::Session;

pub async fn run(s: &mut Session, req: PathArg) -> Handled {
    s.check_writable()?;
    let path = s.resolve(&req.path)?;
    storage_ok(&s.home, move |home| home.remove_dir(&path)).await
}
