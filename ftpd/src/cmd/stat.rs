//! `stat`: one path's kind, size and time, and on request its content's MD5.

use std::sync::Arc;

use protocol::{DigestKind, Message, Stat, StatReply};
use storage::FileKind;

use crate::cmd::{get, Handled};
use crate::error::blocking;
use crate::hashing::{self, Key};
use crate::reply;
use crate::session::Session;
use crate::store::Files;

pub async fn run(s: &mut Session, req: Stat) -> Handled {
    let path = s.resolve(&req.path)?;
    let home = match &s.files {
        Files::Local(view) => view.home().clone(),
        Files::Remote(backend) => {
            let mut info = backend.stat(&path).await?;
            info.name = path.to_string();
            let md5 = match req.md5 && info.kind == FileKind::File {
                true => Some(
                    get::remote_md5(s.config.stall_timeout, backend.as_ref(), &path, info.size)
                        .await?,
                ),
                false => None,
            };
            let entry = reply::entry(info);
            return Ok(Message::StatReply(StatReply { entry, md5 }));
        }
    };
    let target = path.clone();
    let (info, file) = blocking(move || {
        let mut info = home.stat(&target)?;
        info.name = target.to_string();
        let file = if req.md5 && info.kind == FileKind::File {
            let f = home.open_read(&target)?;
            let meta = f
                .file
                .metadata()
                .map_err(|e| storage::Error::io(&info.name, "stat", e))?;
            Some((f, Key::of(&meta, DigestKind::Md5, meta.len())))
        } else {
            None
        };
        Ok::<_, storage::Error>((info, file))
    })
    .await??;
    let md5 = match file {
        None => None,
        // Recorded at upload and still describing the file: nothing to hash.
        Some((f, _))
            if f.recorded
                .as_ref()
                .is_some_and(|r| r.digest.kind() == DigestKind::Md5) =>
        {
            f.recorded.map(|r| r.digest)
        }
        Some((f, key)) => {
            let hasher = hashing::prefix(s, Arc::new(f.file), key, &path).await?;
            Some(hasher.finish())
        }
    };
    let entry = reply::entry(info);
    Ok(Message::StatReply(StatReply { entry, md5 }))
}
