//! `put`: receive a file as chunks checked by the transfer engine into a staged upload, then
//! commit it whole.

use std::collections::VecDeque;

use bytes::Bytes;
use protocol::{ChunkHeader, ChunkReceiver, Eof, ErrorReply, Message, Permit, Put, PutReady};
use storage::{Upload, UploadRequest, VPath};
use tokio::task::JoinHandle;

use crate::cmd::{Failure, Handled, Pace};
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
    /// The connection failed or broke the protocol: the session ends, after the writer.
    Lost(SessionError),
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

    let mut seq = receiver.sequence();
    // Chunks received and waiting for the writer, each with the budget bytes it holds. A
    // blocking task writes one chunk at a time and returns, so no blocking thread ever waits
    // for the network; the next chunks are read meanwhile.
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut writer = Writer::Idle(upload, receiver);
    let mut pace = Pace::new(&s.config);
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
            frame = s.next_in_transfer(), if queue.len() < PIPELINE_DEPTH => match frame {
                Ok(frame) => frame,
                Err(e) => break End::Lost(e),
            },
        };
        match frame.message {
            Message::Chunk(h) => {
                if let Err(e) = pace.moved(u64::from(h.len)) {
                    break End::Lost(e);
                }
                if let Err(error) = seq.advance(&h) {
                    let path = path.clone();
                    break End::Refused(CmdError::Transfer { path, error });
                }
                let permit = s.take_body_permit();
                queue.push_back((h, frame.body, permit));
            }
            Message::Eof(eof) => break End::Eof(eof),
            Message::Abort(r) => break End::Aborted(r),
            other => {
                let msg = format!("{other:?} in the middle of an upload");
                break End::Lost(SessionError::Protocol(msg));
            }
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
