//! `stat`: one path's kind, size and time, and on request its content's MD5.

use protocol::{DigestKind, Hasher, Message, Stat, StatReply};
use storage::FileKind;

use crate::cmd::Handled;
use crate::error::blocking;
use crate::reply;
use crate::session::Session;

pub async fn run(s: &mut Session, req: Stat) -> Handled {
    let path = s.resolve(&req.path)?;
    let home = s.home.clone();
    let reply = blocking(move || {
        let mut info = home.stat(&path)?;
        info.name = path.to_string();
        let md5 = if req.md5 && info.kind == FileKind::File {
            let mut f = home.open_read(&path)?;
            let mut hasher = Hasher::new(DigestKind::Md5);
            hasher
                .update_from(&mut f.file, u64::MAX)
                .map_err(|e| storage::Error::io(&info.name, "read", e))?;
            Some(hasher.finish())
        } else {
            None
        };
        let entry = reply::entry(info);
        Ok::<_, storage::Error>(StatReply { entry, md5 })
    })
    .await??;
    Ok(Message::StatReply(reply))
}
