//! `put`: receive a file as chunks checked by the transfer engine into a staged upload, then
//! commit it whole.

use bytes::Bytes;
use protocol::{ChunkHeader, ChunkReceiver, Eof, ErrorReply, Message, Put, PutReady, Sequence};
use storage::{Upload, UploadRequest, VPath};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};

use crate::cmd::{Failure, Handled};
use crate::error::{blocking, SessionError};
use crate::reply::CmdError;
use crate::session::Session;

/// Chunks verified and written while the next ones are read off the socket.
const PIPELINE_DEPTH: usize = 4;

/// How the client's data stream ended.
enum End {
    /// The client sent every chunk and the whole file's digest.
    Eof(Eof),
    /// The client gave up; it expects one error reply.
    Aborted(ErrorReply),
    /// We refused the stream part-way; the client is still sending until it sees our error.
    Refused(CmdError),
    /// The writer stopped on an error of its own, which it returns.
    WriterStopped,
}

pub async fn run(s: &mut Session, req: Put) -> Handled {
    s.check_writable()?;
    let path = s.resolve(&req.path)?;
    s.moved.path = Some(req.path.clone());
    let ureq = UploadRequest {
        size: req.size,
        overwrite: req.overwrite,
        upload_id: req.upload_id.clone(),
        resume: req.resume,
        mtime: req.mtime,
        digest: s.digest,
    };
    let (home, target) = (s.home.clone(), path.clone());
    let upload = blocking(move || home.begin_upload(&target, &ureq)).await??;
    let offset = upload.offset();
    // The largest chunk this server announced in its hello.
    let receiver = ChunkReceiver::new(offset, req.size, protocol::MAX_BODY as u32, upload.prefix());
    s.send(Message::PutReady(PutReady {
        offset,
        digest: receiver.digest_so_far(),
    }))
    .await?;

    let seq = receiver.sequence();
    let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
    let writer_path = path.clone();
    let mut worker =
        tokio::task::spawn_blocking(move || write_chunks(upload, receiver, &writer_path, rx));
    let mut stopped = None;
    let end = receive(s, &path, seq, &tx, &mut worker, &mut stopped).await;
    // The writer holds the staged upload. It ends before this command does, however the stream
    // ended (a lost connection too): a resume that follows must find every verified byte
    // staged, not race a writer still flushing them, whose lease it would take over.
    drop(tx);
    let done = match stopped {
        Some(done) => done,
        None => worker.await,
    };
    let (upload, receiver, written) =
        done.map_err(|e| SessionError::Internal(format!("upload writer failed: {e}")))?;
    let end = match end {
        Ok(end) => end,
        Err(e) => {
            // Dropping it flushes kept bytes to the staging file: disk work, off the reactor.
            blocking(move || drop(upload)).await?;
            return Err(e.into());
        }
    };
    s.moved.bytes = receiver.position() - offset;
    match end {
        End::Eof(eof) => {
            written?;
            let digest = match receiver.finish(&eof) {
                Ok(digest) => digest,
                Err(error) => {
                    blocking(move || upload.discard()).await?;
                    return Err(CmdError::Transfer { path, error }.into());
                }
            };
            let overwrite = req.overwrite;
            blocking(move || upload.commit(digest, overwrite)).await??;
            s.moved.digest = Some(digest);
            Ok(Message::Stored(Eof {
                size: eof.size,
                digest,
            }))
        }
        End::Aborted(r) => Err(Failure::Refused(CmdError::AbortedByClient {
            code: r.code,
            message: r.message,
        })),
        End::Refused(refusal) => Err(Failure::RefusedUpload(written.err().unwrap_or(refusal))),
        End::WriterStopped => Err(Failure::RefusedUpload(
            written
                .err()
                .unwrap_or(CmdError::OutOfPlace("upload writer stopped")),
        )),
    }
}

/// Reads the client's data stream, handing each chunk that fits the sequence to the writer,
/// until the stream ends, a chunk is refused, or the writer stops.
async fn receive(
    s: &mut Session,
    path: &VPath,
    mut seq: Sequence,
    tx: &mpsc::Sender<(ChunkHeader, Bytes)>,
    worker: &mut JoinHandle<Written>,
    stopped: &mut Option<Result<Written, JoinError>>,
) -> Result<End, SessionError> {
    loop {
        // The writer ends early only when it refuses a chunk: say so at once, not at the next
        // frame the client may never send.
        let frame = tokio::select! {
            biased;
            done = &mut *worker => {
                *stopped = Some(done);
                return Ok(End::WriterStopped);
            }
            frame = s.next_in_transfer() => frame?,
        };
        match frame.message {
            Message::Chunk(h) => {
                if let Err(error) = seq.advance(&h) {
                    let path = path.clone();
                    return Ok(End::Refused(CmdError::Transfer { path, error }));
                }
                if tx.send((h, frame.body)).await.is_err() {
                    return Ok(End::WriterStopped);
                }
            }
            Message::Eof(eof) => return Ok(End::Eof(eof)),
            Message::Abort(r) => return Ok(End::Aborted(r)),
            other => {
                let msg = format!("{other:?} in the middle of an upload");
                return Err(SessionError::Protocol(msg));
            }
        }
    }
}

/// After refusing an upload part-way, skip the chunks already on their way until the client
/// ends its stream; then the connection is back in step for the next command.
pub(crate) async fn drain(s: &mut Session) -> Result<(), SessionError> {
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

/// What the writer hands back: the upload to commit or keep, the receiver for its check at
/// `eof`, and whether every chunk it was given passed and was written.
type Written = (Upload, ChunkReceiver, Result<(), CmdError>);

/// Verifies each chunk with the transfer engine and appends it to the staged file, off the
/// reactor thread; only verified bytes reach the storage.
fn write_chunks(
    mut upload: Upload,
    mut receiver: ChunkReceiver,
    path: &VPath,
    mut rx: mpsc::Receiver<(ChunkHeader, Bytes)>,
) -> Written {
    while let Some((h, body)) = rx.blocking_recv() {
        if let Err(error) = receiver.accept(&h, &body) {
            let path = path.clone();
            return (upload, receiver, Err(CmdError::Transfer { path, error }));
        }
        if let Err(e) = upload.write_chunk(&body, h.digest) {
            return (upload, receiver, Err(e.into()));
        }
    }
    (upload, receiver, Ok(()))
}
