//! `put`: receive a file as chunks checked by the transfer engine into a staged upload, then
//! commit it whole.

use std::collections::VecDeque;

use bytes::Bytes;
use std::time::Instant;

use protocol::{
    ChunkHeader, ChunkReceiver, Eof, ErrorReply, Message, Permit, Put, PutReady, Sequence,
};
use std::sync::Arc;

use storage::{Backend, Upload, UploadRequest, VPath};
use tokio::task::JoinHandle;

use crate::cmd::{Failure, Handled, Pace};
use crate::error::{blocking, SessionError};
use crate::reply::CmdError;
use crate::session::{Moved, Session};
use crate::store::Files;

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
    /// The connection failed or broke the protocol: the session ends, after the writer.
    Lost(SessionError),
}

pub async fn run(s: &mut Session, req: Put) -> Handled {
    let pipelined = req.pipelined;
    match receive(s, req).await {
        // A pipelined upload's data follows its `put` at once: a refusal before it is read
        // must still skip it.
        Err(Failure::Refused(e)) if pipelined => Err(Failure::RefusedUpload(e)),
        other => other,
    }
}

async fn receive(s: &mut Session, req: Put) -> Handled {
    if req.pipelined && req.resume {
        return Err(CmdError::OutOfPlace("a pipelined put cannot resume: it starts at 0").into());
    }
    s.check_writable()?;
    let path = s.resolve(&req.path)?;
    s.moved.path = Some(path.to_string());
    let ureq = UploadRequest {
        size: req.size,
        overwrite: req.overwrite,
        upload_id: req.upload_id.clone(),
        resume: req.resume,
        mtime: req.mtime,
        digest: s.digest,
    };
    let home = match &s.files {
        Files::Local(view) => view.home().clone(),
        Files::Remote(backend) => return remote(s, req, backend.clone(), path, ureq).await,
    };
    let target = path.clone();
    let upload = blocking(move || home.begin_upload(&target, &ureq)).await??;
    let offset = upload.offset();
    if offset > 0 {
        crate::metrics::resumed(crate::metrics::Direction::Upload);
    }
    // The largest chunk this server announced in its hello.
    let receiver = ChunkReceiver::new(offset, req.size, protocol::MAX_BODY as u32, upload.prefix());
    if !req.pipelined {
        s.send(Message::PutReady(PutReady {
            offset,
            digest: receiver.digest_so_far(),
        }))
        .await?;
    }

    let mut seq = receiver.sequence();
    // Chunks received and waiting for the writer, each with the budget bytes it holds. A
    // blocking task writes one chunk at a time and returns, so no blocking thread ever waits
    // for the network; the next chunks are read meanwhile.
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut writer = Writer::Idle(upload, receiver);
    let mut pace = Pace::new(s);
    let end = loop {
        writer = writer.start(&mut queue, &path);
        // The writer ends early only when it refuses a chunk: say so at once, not at the next
        // frame the client may never send.
        let frame = tokio::select! {
            biased;
            done = writer.done(), if writer.busy() => {
                writer = done?;
                if writer.failed() {
                    break End::WriterStopped;
                }
                continue;
            }
            frame = s.next_upload_frame(), if queue.len() < PIPELINE_DEPTH => match frame {
                Ok(frame) => frame,
                Err(e) => break End::Lost(e),
            },
        };
        match next_chunk(s, frame, &mut pace, &mut seq, &path) {
            Ok(chunk) => queue.push_back(chunk),
            Err(end) => break end,
        }
    };
    // Verified chunks already received are written whatever the end: they stay resumable. The
    // writer holds the staged upload, and it ends before this command does, a lost connection
    // too: a resume that follows must find every verified byte staged, not race a writer
    // still flushing them, whose lease it would take over.
    let (upload, receiver, written) = writer.finish(queue, &path).await?;
    let end = match end {
        End::Lost(e) => {
            // Dropping it flushes kept bytes to the staging file: disk work, off the reactor.
            blocking(move || drop(upload)).await?;
            return Err(e.into());
        }
        end => end,
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
        End::Lost(_) => unreachable!("ended the command above"),
        End::WriterStopped => Err(Failure::RefusedUpload(
            written
                .err()
                .unwrap_or(CmdError::OutOfPlace("upload writer stopped")),
        )),
    }
}

/// An upload to a backend behind the storage trait (object storage): each chunk is checked by
/// the transfer engine, off the reactor, and handed to the backend, which stores it in parts;
/// nothing is visible under the name until the whole file's digest is checked and the backend
/// commits. A connection lost part-way leaves what the backend stored for `put -c`.
async fn remote(
    s: &mut Session,
    req: Put,
    backend: Arc<dyn Backend>,
    path: VPath,
    ureq: UploadRequest,
) -> Handled {
    let mut upload = backend.begin_upload(&path, &ureq).await?;
    let offset = upload.offset();
    if offset > 0 {
        crate::metrics::resumed(crate::metrics::Direction::Upload);
    }
    let mut receiver =
        ChunkReceiver::new(offset, req.size, protocol::MAX_BODY as u32, upload.prefix());
    if !req.pipelined {
        s.send(Message::PutReady(PutReady {
            offset,
            digest: receiver.digest_so_far(),
        }))
        .await?;
    }
    let mut seq = receiver.sequence();
    let mut pace = Pace::new(s);
    let end = loop {
        let frame = match s.next_upload_frame().await {
            Ok(frame) => frame,
            Err(e) => break End::Lost(e),
        };
        let (h, body, permit) = match next_chunk(s, frame, &mut pace, &mut seq, &path) {
            Ok(chunk) => chunk,
            Err(end) => break end,
        };
        let (back, checked) = blocking(move || {
            let checked = receiver.accept(&h, &body).map(|()| (body, h.digest));
            (receiver, checked)
        })
        .await?;
        receiver = back;
        let written = match checked {
            Ok((body, digest)) => upload.write(body, digest).await.map_err(CmdError::from),
            Err(error) => Err(CmdError::Transfer {
                path: path.clone(),
                error,
            }),
        };
        drop(permit);
        if let Err(e) = written {
            break End::Refused(e);
        }
    };
    s.moved.bytes = receiver.position() - offset;
    // Every other end drops the upload, which keeps what is stored for a resume.
    match end {
        End::Eof(eof) => {
            let digest = match receiver.finish(&eof) {
                Ok(digest) => digest,
                Err(error) => {
                    upload.abort().await;
                    return Err(CmdError::Transfer { path, error }.into());
                }
            };
            upload.commit(digest, req.overwrite).await?;
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
        End::Refused(refusal) => Err(Failure::RefusedUpload(refusal)),
        End::Lost(e) => Err(e.into()),
        End::WriterStopped => unreachable!("no writer task on this path"),
    }
}

/// A small pipelined upload (see [`crate::pipeline`]): its frames are read whole now, and a
/// blocking task writes and checks it while the session reads the next command; its answer
/// comes from the pipeline, in order.
pub(crate) async fn pipelined(
    s: &mut Session,
    req: Put,
    started: Instant,
) -> Result<(), SessionError> {
    let allowed = if req.resume {
        Err(CmdError::OutOfPlace(
            "a pipelined put cannot resume: it starts at 0",
        ))
    } else {
        s.check_writable().and_then(|()| s.resolve(&req.path))
    };
    let moved = Moved {
        path: Some(match &allowed {
            Ok(path) => path.to_string(),
            Err(_) => req.path.clone(),
        }),
        bytes: 0,
        digest: None,
    };
    // The data is read whatever the verdict: it follows the `put` on the wire.
    let mut seq = Sequence::new(0, req.size, protocol::MAX_BODY as u32);
    let mut chunks: Vec<Queued> = Vec::new();
    let mut refused: Option<CmdError> = None;
    let eof = loop {
        let frame = s.next_upload_frame().await?;
        match frame.message {
            Message::Chunk(h) => {
                if refused.is_some() {
                    continue;
                }
                if let Err(error) = seq.advance(&h) {
                    refused = Some(match &allowed {
                        Ok(path) => CmdError::Transfer {
                            path: path.clone(),
                            error,
                        },
                        // Refused already: that refusal is the answer.
                        Err(_) => CmdError::OutOfPlace("refused"),
                    });
                    chunks.clear();
                    continue;
                }
                let permit = s.take_body_permit();
                chunks.push((h, frame.body, permit));
            }
            Message::Eof(eof) => break eof,
            Message::Abort(r) => {
                let why = CmdError::AbortedByClient {
                    code: r.code,
                    message: r.message,
                };
                s.pipeline_refuse(moved, started, why);
                return Ok(());
            }
            other => {
                let msg = format!("{other:?} in the middle of an upload");
                return Err(SessionError::Protocol(msg));
            }
        }
    };
    let path = match (allowed, refused) {
        (Ok(path), None) => path,
        (Err(why), _) | (Ok(_), Some(why)) => {
            s.pipeline_refuse(moved, started, why);
            return Ok(());
        }
    };
    let ureq = UploadRequest {
        size: req.size,
        overwrite: req.overwrite,
        upload_id: req.upload_id,
        resume: false,
        mtime: req.mtime,
        digest: s.digest,
    };
    let Some(home) = s.files.local().cloned() else {
        let why = CmdError::OutOfPlace("pipelined uploads are taken on the local root only");
        s.pipeline_refuse(moved, started, why);
        return Ok(());
    };
    let moved = Moved {
        bytes: seq.position(),
        ..moved
    };
    let job = tokio::task::spawn_blocking(move || {
        let upload = home.begin_upload(&path, &ureq)?;
        let receiver = ChunkReceiver::new(0, ureq.size, protocol::MAX_BODY as u32, upload.prefix());
        let (upload, receiver, written) = write_chunks(upload, receiver, &path, chunks);
        written?;
        let digest = match receiver.finish(&eof) {
            Ok(digest) => digest,
            Err(error) => {
                upload.discard();
                return Err(CmdError::Transfer { path, error });
            }
        };
        let staged = upload.stage(digest, ureq.overwrite, false)?;
        Ok((
            Box::new(staged),
            Eof {
                size: eof.size,
                digest,
            },
        ))
    });
    s.pipeline_push(moved, started, job);
    Ok(())
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

/// A received chunk waiting to be written, and the budget bytes its body holds.
type Queued = (ChunkHeader, Bytes, Option<Permit>);

/// One frame of an upload's data stream: a chunk that keeps the pace and follows the last one
/// in order (with the budget bytes its body holds), or how the stream ended.
fn next_chunk(
    s: &mut Session,
    frame: protocol::Frame,
    pace: &mut Pace,
    seq: &mut Sequence,
    path: &VPath,
) -> Result<Queued, End> {
    match frame.message {
        Message::Chunk(h) => {
            pace.moved(u64::from(h.len)).map_err(End::Lost)?;
            if let Err(error) = seq.advance(&h) {
                let path = path.clone();
                return Err(End::Refused(CmdError::Transfer { path, error }));
            }
            Ok((h, frame.body, s.take_body_permit()))
        }
        Message::Eof(eof) => Err(End::Eof(eof)),
        Message::Abort(r) => Err(End::Aborted(r)),
        other => {
            let msg = format!("{other:?} in the middle of an upload");
            Err(End::Lost(SessionError::Protocol(msg)))
        }
    }
}

/// What a write task gives back.
type WriteDone = (Upload, ChunkReceiver, Result<(), CmdError>);

/// The upload's state: here between chunks, or with the blocking task writing one.
enum Writer {
    /// Ready for the next chunk.
    Idle(Upload, ChunkReceiver),
    /// A task is verifying and writing a chunk.
    Busy(JoinHandle<WriteDone>),
    /// The last chunk was refused, or failed to write.
    Failed(Upload, ChunkReceiver, CmdError),
}

impl Writer {
    /// Hands the next queued chunk to a blocking task, if idle.
    fn start(self, queue: &mut VecDeque<Queued>, path: &VPath) -> Writer {
        match self {
            Writer::Idle(upload, receiver) => match queue.pop_front() {
                Some(item) => {
                    let path = path.clone();
                    Writer::Busy(tokio::task::spawn_blocking(move || {
                        write_chunks(upload, receiver, &path, std::iter::once(item))
                    }))
                }
                None => Writer::Idle(upload, receiver),
            },
            other => other,
        }
    }

    fn busy(&self) -> bool {
        matches!(self, Writer::Busy(_))
    }

    fn failed(&self) -> bool {
        matches!(self, Writer::Failed(..))
    }

    /// Waits for the task writing a chunk (only called while busy). Cancel-safe: the task
    /// runs on, and a later call waits for it again.
    async fn done(&mut self) -> Result<Writer, SessionError> {
        let Writer::Busy(job) = self else {
            unreachable!("waited for only while busy")
        };
        let (upload, receiver, result) = job
            .await
            .map_err(|e| SessionError::Internal(format!("upload writer failed: {e}")))?;
        Ok(match result {
            Ok(()) => Writer::Idle(upload, receiver),
            Err(e) => Writer::Failed(upload, receiver, e),
        })
    }

    /// Writes what is still queued, unless a chunk already failed, and gives the upload back.
    async fn finish(
        mut self,
        queue: VecDeque<Queued>,
        path: &VPath,
    ) -> Result<WriteDone, SessionError> {
        if self.busy() {
            self = self.done().await?;
        }
        match self {
            Writer::Idle(upload, receiver) => {
                let path = path.clone();
                blocking(move || write_chunks(upload, receiver, &path, queue)).await
            }
            Writer::Failed(upload, receiver, e) => Ok((upload, receiver, Err(e))),
            Writer::Busy(_) => unreachable!("waited for above"),
        }
    }
}

/// Verifies each chunk with the transfer engine and appends it to the staged file, off the
/// reactor thread; only verified bytes reach the storage. Each chunk's budget bytes are given
/// back once it is written.
fn write_chunks(
    mut upload: Upload,
    mut receiver: ChunkReceiver,
    path: &VPath,
    chunks: impl IntoIterator<Item = Queued>,
) -> WriteDone {
    for (h, body, permit) in chunks {
        if let Err(error) = receiver.accept(&h, &body) {
            let path = path.clone();
            return (upload, receiver, Err(CmdError::Transfer { path, error }));
        }
        if let Err(e) = upload.write_chunk(&body, h.digest) {
            return (upload, receiver, Err(e.into()));
        }
        drop(permit);
    }
    (upload, receiver, Ok(()))
}
