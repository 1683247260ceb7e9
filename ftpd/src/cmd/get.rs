//! `get`: stream a file as digest-checked chunks, then its whole-file digest.

use std::fs::File;
use std::io::Read;
use std::time::Instant;

use bytes::BytesMut;
use protocol::{
    Digest, DigestKind, Eof, ErrorCode, ErrorReply, Frame, Get, GetReady, Hasher, Message,
};
use storage::{Recorded, Root, VPath};
use tokio::sync::mpsc;

use crate::cmd::TransferLog;
use crate::error::{blocking, SessionError};
use crate::session::{storage_reply, Session};

/// Chunks read and hashed ahead of the socket.
const READ_AHEAD: usize = 4;

/// An open file positioned at the requested offset, with the digest of what precedes it.
struct Prepared {
    file: File,
    size: u64,
    mtime: Option<i64>,
    /// The running digest at the offset; unused when sending recorded digests.
    hasher: Hasher,
    /// The digests recorded at upload, when the download can send them as they are: then
    /// nothing is hashed here, only by the client.
    recorded: Option<Recorded>,
}

pub async fn run(s: &mut Session, req: Get) -> Result<(), SessionError> {
    let started = Instant::now();
    let path = match s.resolve(&req.path) {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    let root = s.root.clone();
    let (offset, prefix_digest) = (req.offset, req.prefix_digest);
    let (max_chunk, kind) = (s.client_max_chunk, s.digest);
    let prep = move || prepare(&root, &path, offset, prefix_digest, max_chunk, kind);
    let p = match blocking(prep).await? {
        Ok(p) => p,
        Err(reply) => return s.send_error(s.scrub(reply)).await,
    };
    let size = p.size;
    s.send(Message::GetReady(GetReady {
        size,
        offset,
        mtime: p.mtime,
    }))
    .await?;

    let chunk = s.config.chunk_size.min(s.client_max_chunk) as usize;
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || read_chunks(p, offset, chunk, tx));
    let mut sent = offset;
    let outcome = loop {
        if let Some(incoming) = s.poll_incoming() {
            match incoming?.message {
                Message::Cancel => {
                    drop(rx);
                    let reply = ErrorReply::new(ErrorCode::BadRequest, "cancelled by the client");
                    s.send(Message::Abort(reply.clone().at(sent))).await?;
                    break Err(reply);
                }
                other => {
                    return Err(SessionError::Protocol(format!(
                        "{other:?} in the middle of a download"
                    )))
                }
            }
        }
        match rx.recv().await {
            Some(Ok(frame)) => {
                let eof = match &frame.message {
                    Message::Chunk(h) => {
                        sent = h.offset + u64::from(h.len);
                        None
                    }
                    Message::Eof(eof) => Some(*eof),
                    _ => None,
                };
                s.send(frame).await?;
                if let Some(eof) = eof {
                    break Ok(eof);
                }
            }
            Some(Err(reply)) => {
                s.send(Message::Abort(reply.clone())).await?;
                break Err(reply);
            }
            None => return Err(SessionError::Internal("file reader stopped".into())),
        }
    };
    let (digest, outcome) = match &outcome {
        Ok(eof) => (Some(eof.digest), "ok".to_owned()),
        Err(reply) => (None, reply.to_string()),
    };
    TransferLog {
        peer: s.peer,
        user: s.user.as_ref().map(|u| u.name.as_str()),
        op: "get",
        path: &req.path,
        bytes: sent - offset,
        elapsed: started.elapsed(),
        digest,
        outcome: &outcome,
    }
    .emit();
    Ok(())
}

fn prepare(
    root: &Root,
    path: &VPath,
    offset: u64,
    prefix_digest: Option<Digest>,
    max_chunk: u32,
    kind: DigestKind,
) -> Result<Prepared, ErrorReply> {
    let f = root.open_read(path).map_err(|e| storage_reply(&e))?;
    if offset > f.size {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!("{path}: offset {offset} is past the end ({} bytes)", f.size),
        ));
    }
    let recorded = f
        .recorded
        .filter(|r| r.digest.kind() == kind)
        .filter(|r| r.chunk <= max_chunk && offset.is_multiple_of(u64::from(r.chunk)));
    let mut p = Prepared {
        file: f.file,
        size: f.size,
        mtime: f.mtime,
        hasher: Hasher::new(kind),
        recorded,
    };
    if let Some(r) = &p.recorded {
        // Recorded digests cover the whole file already, and the one at a chunk boundary is
        // the digest of everything before it: skip to the offset unhashed.
        let held = (offset / u64::from(r.chunk)).checked_sub(1);
        let recorded_prefix = held.map_or_else(|| Digest::empty(kind), |i| r.chunks[i as usize]);
        check_prefix(path, offset, prefix_digest, recorded_prefix)?;
        use std::io::{Seek, SeekFrom};
        p.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| storage_reply(&storage::Error::io(&path.to_string(), "seek", e)))?;
        return Ok(p);
    }
    // The whole-file digest covers the prefix the client already holds, so hash it here.
    let read = match p.hasher.update_from(&mut p.file, offset) {
        Ok(n) if n == offset => Ok(()),
        Ok(_) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Err(e) => Err(e),
    };
    read.map_err(|e| storage_reply(&storage::Error::io(&path.to_string(), "read", e)))?;
    check_prefix(path, offset, prefix_digest, p.hasher.digest())?;
    Ok(p)
}

/// Refuses to continue a download whose first `offset` bytes, as the client holds them, are
/// not the file's.
fn check_prefix(
    path: &VPath,
    offset: u64,
    theirs: Option<Digest>,
    ours: Digest,
) -> Result<(), ErrorReply> {
    match theirs {
        Some(theirs) if theirs != ours => Err(ErrorReply::new(
            ErrorCode::PrefixMismatch,
            format!("{path}: the first {offset} bytes differ from the client's"),
        )),
        _ => Ok(()),
    }
}

/// Reads, hashes and frames chunks off the reactor thread; ends with `eof`, or an error.
fn read_chunks(
    mut p: Prepared,
    mut pos: u64,
    chunk: usize,
    tx: mpsc::Sender<Result<Frame, ErrorReply>>,
) {
    let chunk = p.recorded.as_ref().map_or(chunk, |r| r.chunk as usize);
    while pos < p.size {
        let want = (p.size - pos).min(chunk as u64) as usize;
        let mut buf = BytesMut::zeroed(want);
        if let Err(e) = p.file.read_exact(&mut buf) {
            let msg = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "file shrank while it was being sent".into(),
                _ => format!("read failed: {e}"),
            };
            let _ = tx.blocking_send(Err(ErrorReply::new(ErrorCode::Io, msg).at(pos)));
            return;
        }
        let digest = match &p.recorded {
            // As recorded at upload: the client's check then also proves the bytes unchanged.
            Some(r) => r.chunks[(pos / chunk as u64) as usize],
            None => p.hasher.seal(&buf),
        };
        if tx
            .blocking_send(Ok(Frame::chunk(pos, buf.freeze(), digest)))
            .is_err()
        {
            return; // cancelled
        }
        pos += want as u64;
    }
    let digest = match &p.recorded {
        Some(r) => r.digest,
        None => p.hasher.finish(),
    };
    let eof = Eof {
        size: p.size,
        digest,
    };
    let _ = tx.blocking_send(Ok(Message::Eof(eof).into()));
}
