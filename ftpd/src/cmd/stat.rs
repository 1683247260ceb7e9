//! `stat`: one path's kind, size and time, and on request its content's MD5.

use protocol::{DigestKind, EntryKind, Hasher, Message, Stat, StatReply};

use crate::error::{blocking, SessionError};
use crate::session::Session;

pub async fn run(s: &mut Session, req: Stat) -> Result<(), SessionError> {
    let (visible, full) = match s.resolve_both(&req.path) {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    let root = s.root.clone();
    let answer = blocking(move || {
        let mut entry = root.stat(&full)?;
        entry.name = visible.to_string();
        let md5 = if req.md5 && entry.kind == EntryKind::File {
            let mut f = root.open_read(&full)?;
            let mut hasher = Hasher::new(DigestKind::Md5);
            hasher
                .update_from(&mut f.file, u64::MAX)
                .map_err(|e| storage::Error::io(&entry.name, "read", e))?;
            Some(hasher.finish())
        } else {
            None
        };
        Ok::<_, storage::Error>(StatReply { entry, md5 })
    })
    .await?;
    match answer {
        Ok(reply) => s.send(Message::StatReply(reply)).await,
        Err(e) => s.send_error(s.user_reply(&e)).await,
    }
}
