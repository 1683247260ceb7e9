//! `put`: receive a file as digest-checked chunks into a staged upload, then commit it whole.

use std::time::Instant;

use bytes::Bytes;
use protocol::{ChunkHeader, Digest, Eof, ErrorCode, ErrorReply, Message, Put, PutReady};
use storage::{Upload, UploadRequest};
use tokio::sync::mpsc;

use crate::cmd::TransferLog;
use crate::error::{blocking, SessionError};
use crate::session::{storage_reply, Session};

/// Chunks verified and written while the next ones are read off the socket.
const PIPELINE_DEPTH: usize = 4;

/// How the client's data stream ended.
enum End {
    /// The client sent every chunk and the whole file's digest.
    Eof(Eof),
    /// The client gave up; it expects one error reply.
    Aborted(ErrorReply),
    /// We refused the stream part-way; the client is still sending until it sees our error.
    Failed(ErrorReply),
}

pub async fn run(s: &mut Session, req: Put) -> Result<(), SessionError> {
    let started = Instant::now();
    let path = match s.check_writable().and_then(|()| s.resolve(&req.path)) {
        Ok(p) => p,
        Err(reply) => return s.send_error(reply).await,
    };
    let root = s.root.clone();
    let ureq = UploadRequest {
        size: req.size,
        overwrite: req.overwrite,
        upload_id: req.upload_id.clone(),
        resume: req.resume,
        mtime: req.mtime,
        digest: s.digest,
    };
    let target = path.clone();
    let upload = match blocking(move || root.begin_upload(&target, &ureq)).await? {
        Ok(u) => u,
        Err(e) => return s.send_error(s.user_reply(&e)).await,
    };
    let offset = upload.offset();
    s.send(Message::PutReady(PutReady {
        offset,
        digest: upload.digest_so_far(),
    }))
    .await?;

    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    let worker = tokio::task::spawn_blocking(move || write_chunks(upload, rx));
    let mut expected = offset;
    let end = loop {
        let frame = s.next_in_transfer().await?;
        match frame.message {
            Message::Chunk(h) => {
                if h.offset != expected {
                    break End::Failed(
                        ErrorReply::new(
                            ErrorCode::BadRequest,
                            format!("chunk at offset {}, expected {expected}", h.offset),
                        )
                        .at(h.offset),
                    );
                }
                expected += u64::from(h.len);
                if expected > req.size {
                    break End::Failed(
                        ErrorReply::new(
                            ErrorCode::TooLarge,
                            format!("more bytes than the declared size {}", req.size),
                        )
                        .at(h.offset),
                    );
                }
                if tx.send((h, frame.body)).await.is_err() {
                    // The writer stopped: its own error says why.
                    break End::Failed(ErrorReply::new(ErrorCode::Io, "writer stopped"));
                }
            }
            Message::Eof(eof) => break End::Eof(eof),
            Message::Abort(r) => {
                break End::Aborted(ErrorReply::new(
                    r.code,
                    format!("upload aborted by the client: {}", r.message),
                ))
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "{other:?} in the middle of an upload"
                )))
            }
        }
    };
    drop(tx);
    let (upload, written) = worker
        .await
        .map_err(|e| SessionError::Internal(format!("upload writer failed: {e}")))?;

    let written = written.map_err(|r| s.scrub(r));
    let result = match end {
        End::Eof(eof) => match written {
            Err(reply) => Err(reply),
            Ok(()) if eof.size != req.size => Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "upload ended at {} bytes, {} were declared",
                    eof.size, req.size
                ),
            )),
            Ok(()) => {
                let overwrite = req.overwrite;
                blocking(move || upload.commit(eof.digest, overwrite))
                    .await?
                    .map(|digest| Eof {
                        size: eof.size,
                        digest,
                    })
                    .map_err(|e| storage_reply(&e))
            }
        },
        End::Aborted(reply) => Err(reply),
        End::Failed(reply) => {
            let reply = written.err().unwrap_or(reply);
            s.send_error(reply.clone()).await?;
            drain(s).await?;
            log(s, &req, started, expected, None, &reply.to_string());
            return Ok(());
        }
    };
    match result {
        Ok(stored) => {
            log(
                s,
                &req,
                started,
                stored.size - offset,
                Some(stored.digest),
                "ok",
            );
            s.send(Message::Stored(stored)).await
        }
        Err(reply) => {
            log(
                s,
                &req,
                started,
                expected - offset,
                None,
                &reply.to_string(),
            );
            s.send_error(reply).await
        }
    }
}

/// After refusing an upload part-way, skip the chunks already on their way until the client
/// ends its stream; then the connection is back in step for the next command.
async fn drain(s: &mut Session) -> Result<(), SessionError> {
    loop {
        match s.next_in_transfer().await?.message {
            Message::Chunk(_) => {}
            Message::Eof(_) | Message::Abort(_) => return Ok(()),
            other => {
                return Err(SessionError::Protocol(format!(
                    "{other:?} in the middle of an upload"
                )))
            }
        }
    }
}

/// Checks each chunk's running digest and appends it to the staged file, off the reactor thread.
fn write_chunks(
    mut upload: Upload,
    mut rx: mpsc::Receiver<(ChunkHeader, Bytes)>,
) -> (Upload, Result<(), ErrorReply>) {
    while let Some((h, body)) = rx.blocking_recv() {
        if let Err(e) = upload.write_chunk(body, h.digest) {
            return (upload, Err(storage_reply(&e).at(h.offset)));
        }
    }
    (upload, Ok(()))
}

fn log(
    s: &Session,
    req: &Put,
    started: Instant,
    bytes: u64,
    digest: Option<Digest>,
    outcome: &str,
) {
    TransferLog {
        peer: s.peer,
        user: s.user.as_ref().map(|u| u.name.as_str()),
        op: "put",
        path: &req.path,
        bytes,
        elapsed: started.elapsed(),
        digest,
        outcome,
    }
    .emit();
}
