//! `stat`: one path's kind, size and time, and on request its content's MD5.

use std::io::Read;

use protocol::{EntryKind, Md5Hasher, Message, Stat, StatReply};

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
            let mut hasher = Md5Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f
                    .file
                    .read(&mut buf)
                    .map_err(|e| storage::Error::io(&entry.name, "read", e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
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
