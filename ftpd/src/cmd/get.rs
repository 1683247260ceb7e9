//! `get`: stream a file as chunks the transfer engine frames with running digests, then its
//! whole-file digest.

use std::fs::File;
use std::io::Read;

use bytes::BytesMut;
use protocol::{ChunkSender, Digest, DigestKind, Eof, Frame, Get, GetReady, Hasher, Message};
use storage::{Home, VPath};
use tokio::sync::mpsc;

use crate::cmd::{Failure, Handled};
use crate::error::{blocking, SessionError};
use crate::reply::CmdError;
use crate::session::Session;

/// Chunks read and hashed ahead of the socket.
const READ_AHEAD: usize = 4;

/// An open file positioned at the requested offset, and the sender that frames it.
struct Prepared {
    file: File,
    size: u64,
    mtime: Option<i64>,
    sender: ChunkSender,
}

/// What the reader thread hands the socket.
enum Produced {
    Chunk(Frame),
    End(Eof),
}

pub async fn run(s: &mut Session, req: Get) -> Handled {
    let path = s.resolve(&req.path)?;
    s.moved.path = Some(req.path.clone());
    let (home, target) = (s.home.clone(), path.clone());
    let (offset, prefix) = (req.offset, req.prefix_digest);
    let (max_chunk, kind) = (s.client_max_chunk, s.digest);
    let chunk = s.config.chunk_size.min(max_chunk);
    let prep = move || prepare(&home, &target, offset, prefix, max_chunk, kind, chunk);
    let p = blocking(prep).await??;
    s.send(Message::GetReady(GetReady {
        size: p.size,
        offset,
        mtime: p.mtime,
    }))
    .await?;

    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || read_chunks(p.file, p.sender, &path, tx));
    let mut sent = offset;
    loop {
        if let Some(incoming) = s.poll_incoming() {
            match incoming?.message {
                Message::Cancel => {
                    drop(rx);
                    return Err(Failure::Aborted(CmdError::Cancelled { offset: sent }));
                }
                other => {
                    let msg = format!("{other:?} in the middle of a download");
                    return Err(SessionError::Protocol(msg).into());
                }
            }
        }
        match rx.recv().await {
            Some(Ok(Produced::Chunk(frame))) => {
                let n = frame.body.len() as u64;
                s.send(frame).await?;
                sent += n;
                s.moved.bytes += n;
            }
            Some(Ok(Produced::End(eof))) => {
                s.moved.digest = Some(eof.digest);
                return Ok(Message::Eof(eof));
            }
            Some(Err(e)) => return Err(Failure::Aborted(e)),
            None => return Err(SessionError::Internal("file reader stopped".into()).into()),
        }
    }
}

fn prepare(
    home: &Home,
    path: &VPath,
    offset: u64,
    prefix: Option<Digest>,
    max_chunk: u32,
    kind: DigestKind,
    chunk: u32,
) -> Result<Prepared, CmdError> {
    let f = home.open_read(path)?;
    if offset > f.size {
        return Err(CmdError::PastEnd {
            path: path.clone(),
            offset,
            size: f.size,
        });
    }
    let mut file = f.file;
    let io = |op, e| CmdError::from(storage::Error::io(&path.to_string(), op, e));
    // Digests recorded at upload cover the whole file already: then nothing is hashed here,
    // only by the client, whose check also proves the bytes unchanged since.
    let replay = f
        .recorded
        .filter(|r| r.digest.kind() == kind)
        .and_then(|r| {
            ChunkSender::replaying(offset, f.size, r.chunk, r.chunks, r.digest, max_chunk)
        });
    let sender = match replay {
        Some(sender) => {
            use std::io::{Seek, SeekFrom};
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| io("seek", e))?;
            sender
        }
        None => {
            // The whole-file digest covers the prefix the client already holds, so hash it.
            let mut hasher = Hasher::new(kind);
            match hasher.update_from(&mut file, offset) {
                Ok(n) if n == offset => {}
                Ok(_) => return Err(io("read", std::io::ErrorKind::UnexpectedEof.into())),
                Err(e) => return Err(io("read", e)),
            }
            ChunkSender::new(offset, f.size, chunk, hasher)
        }
    };
    // A resumed download never splices two files: the client's prefix must be ours.
    if prefix.is_some_and(|theirs| theirs != sender.digest_so_far()) {
        return Err(CmdError::PrefixMismatch {
            path: path.clone(),
            offset,
        });
    }
    Ok(Prepared {
        file,
        size: f.size,
        mtime: f.mtime,
        sender,
    })
}

/// Reads the chunks the sender asks for and has it frame them, off the reactor thread; ends
/// with the sender's `eof`, or an error.
fn read_chunks(
    mut file: File,
    mut sender: ChunkSender,
    path: &VPath,
    tx: mpsc::Sender<Result<Produced, CmdError>>,
) {
    while let Some(n) = sender.next_len() {
        let mut buf = BytesMut::zeroed(n);
        if let Err(e) = file.read_exact(&mut buf) {
            let err = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => CmdError::Shrank {
                    path: path.clone(),
                    offset: sender.position(),
                },
                _ => storage::Error::io(&path.to_string(), "read", e).into(),
            };
            let _ = tx.blocking_send(Err(err));
            return;
        }
        let frame = sender.seal(buf.freeze());
        if tx.blocking_send(Ok(Produced::Chunk(frame))).is_err() {
            return; // cancelled
        }
    }
    let _ = tx.blocking_send(Ok(Produced::End(sender.finish())));
}
