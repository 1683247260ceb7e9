//! Upload: `put`, the socket loop that sends chunks, and the disk loop that reads and seals them.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use protocol::{ChunkSender, Digest, Eof, ErrorCode, ErrorReply, Frame, Hasher, Message, Put};
use tokio::sync::mpsc;

use super::localfs::{mtime_of, upload_id};
use super::{known, unexpected, Client, Progress, Summary, TransferOptions, PIPELINE_DEPTH};
use crate::error::{ClientError, Result};

impl Client {
    /// Uploads `local` to `remote` (a path on the server). With `opts.resume`, continues from
    /// the bytes an earlier attempt left staged on the server, once their digest matches ours.
    pub async fn put(
        &mut self,
        local: &Path,
        remote: &str,
        opts: TransferOptions,
        progress: &mut dyn Progress,
    ) -> Result<Summary> {
        let started = Instant::now();
        let file = File::open(local).map_err(|e| ClientError::local(local, e))?;
        let meta = file.metadata().map_err(|e| ClientError::local(local, e))?;
        if meta.is_dir() {
            return Err(ClientError::Usage(format!(
                "{}: is a directory",
                local.display()
            )));
        }
        let size = meta.len();
        let upload_id = upload_id(local, &meta, remote);
        let mut resume = opts.resume;
        loop {
            self.send(Message::Put(Put {
                path: remote.to_owned(),
                size,
                overwrite: opts.overwrite,
                resume,
                upload_id: Some(upload_id.clone()),
                mtime: mtime_of(&meta),
                pipelined: false,
            }))
            .await?;
            let ready = match self.recv().await?.message {
                Message::PutReady(r) if r.offset <= size => r,
                Message::Error(e) => return Err(ClientError::Remote(e)),
                other => return Err(unexpected("put_ready", &other)),
            };
            let offset = ready.offset;
            let hashed = self
                .hash_prefix(&file, local, offset, remote, progress)
                .await;
            let (file, hasher) = match hashed {
                Ok(ok) => ok,
                Err(e) => {
                    // The server waits for our chunks: end the upload (its staged bytes stay
                    // for `put -c`) so the connection is in step for the next command.
                    let code = match e {
                        ClientError::Cancelled => ErrorCode::Cancelled,
                        _ => ErrorCode::Io,
                    };
                    let why = ErrorReply::new(code, e.to_string());
                    self.send(Message::Abort(why)).await?;
                    let _ = self.recv().await?; // the server answers an abort with one error
                    return Err(e);
                }
            };
            if offset > 0 && hasher.digest() != ready.digest {
                // What the server staged is not the start of this file: upload it afresh.
                let reply = ErrorReply::new(
                    ErrorCode::PrefixMismatch,
                    "staged bytes differ from the file",
                );
                self.send(Message::Abort(reply)).await?;
                let _ = self.recv().await?; // the server answers an abort with one error
                resume = false;
                continue;
            }
            progress.start(remote, size, offset);
            let result = self.stream_up(file, offset, size, hasher, progress).await;
            progress.finish();
            return Ok(Summary {
                name: remote.to_owned(),
                sent: size - offset,
                size,
                elapsed: started.elapsed(),
                digest: result?,
            });
        }
    }

    async fn stream_up(
        &mut self,
        file: File,
        offset: u64,
        size: u64,
        hasher: Hasher,
        progress: &mut dyn Progress,
    ) -> Result<Digest> {
        // The hello exchange checked the server's max_chunk against the protocol's floor.
        let chunk = self.server.max_chunk.min(protocol::DEFAULT_CHUNK);
        let sender = ChunkSender::new(offset, size, chunk, hasher);
        let (tx, mut rx) = mpsc::channel(PIPELINE_DEPTH);
        let reader = tokio::task::spawn_blocking(move || read_chunks(file, sender, tx));
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    drop(rx);
                    self.send(Message::Abort(ErrorReply::new(ErrorCode::Cancelled, "cancelled by the user"))).await?;
                    let _ = self.recv().await?; // the server answers an abort with one error
                    return Err(ClientError::Cancelled);
                }
                // The server may refuse part-way; it then skips our chunks until eof or abort.
                // It owes nothing while we send, so this waits for as long as sending takes.
                early = self.conn.recv(Duration::MAX) => {
                    let reply = match known(early?)?.message {
                        Message::Progress => continue,
                        Message::Error(e) => e,
                        other => return Err(unexpected("error", &other)),
                    };
                    drop(rx);
                    self.send(Message::Abort(ErrorReply::new(reply.code, "stopping after the server's error"))).await?;
                    return Err(refused_mid_stream(reply));
                }
                item = rx.recv() => match item {
                    Some(Ok(frame)) => {
                        let n = frame.body.len() as u64;
                        self.send(frame).await?;
                        progress.advance(n);
                    }
                    Some(Err(e)) => {
                        self.send(Message::Abort(ErrorReply::new(ErrorCode::Io, e.to_string()))).await?;
                        // The server answers an abort with exactly one error; read it to stay in step.
                        let _ = self.recv().await?;
                        return Err(e);
                    }
                    None => break,
                }
            }
        }
        let eof = reader
            .await
            .map_err(|e| ClientError::Internal(format!("file reader failed: {e}")))?
            .ok_or_else(|| ClientError::Internal("file reader stopped".into()))?;
        let digest = eof.digest;
        self.send(Message::Eof(eof)).await?;
        match self.recv().await?.message {
            Message::Stored(s) if s.digest == digest && s.size == size => Ok(digest),
            Message::Stored(s) => Err(ClientError::Verify(format!(
                "server stored {} bytes with {name} {}, we sent {size} bytes with {name} {digest}",
                s.size,
                s.digest,
                name = digest.kind().name()
            ))),
            Message::Error(e) => Err(refused_mid_stream(e)),
            other => Err(unexpected("stored", &other)),
        }
    }
}

/// An error the server sent while our chunks were on the wire. A malformed or out-of-place
/// frame there means the bytes were damaged in transit (the server closes the connection after
/// a framing error), so it counts as a lost link, which a retry can cure; the rest are answers.
fn refused_mid_stream(reply: ErrorReply) -> ClientError {
    match reply.code {
        ErrorCode::BadRequest | ErrorCode::TooLarge => ClientError::ConnectionLost(format!(
            "the server received damaged data: {}",
            reply.message
        )),
        _ => ClientError::Remote(reply),
    }
}

/// Reads the chunks the transfer engine asks for, off the reactor, and has it seal them with
/// their running digests; returns its `eof` (the whole file's digest), or `None` when it
/// stopped early (the error went to the socket loop, or the loop went away).
fn read_chunks(
    mut file: File,
    mut sender: ChunkSender,
    tx: mpsc::Sender<Result<Frame>>,
) -> Option<Eof> {
    while let Some(n) = sender.next_len() {
        let mut data = BytesMut::zeroed(n);
        if let Err(e) = file.read_exact(&mut data) {
            let pos = sender.position();
            let _ = tx.blocking_send(Err(ClientError::Local {
                path: "local file".into(),
                source: std::io::Error::new(e.kind(), format!("read at offset {pos}: {e}")),
            }));
            return None;
        }
        if tx.blocking_send(Ok(sender.seal(data.freeze()))).is_err() {
            return None;
        }
    }
    Some(sender.finish())
}
