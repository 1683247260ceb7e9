//! Download: `get`, `same_as_remote`, the socket loop taking chunks, the disk loop writing them.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use fileio::DirectWriter;
use protocol::{
    ChunkError, ChunkHeader, ChunkReceiver, Digest, ErrorCode, ErrorReply, Get, Hasher, Message,
};
use tokio::sync::mpsc;

use super::localfs::{
    hash_prefix_of, open_local, part_path, place, remove_if_empty, Access, HashJob,
};
use super::{unexpected, Client, NoProgress, Progress, Summary, TransferOptions, PIPELINE_DEPTH};
use crate::error::{ClientError, Result};

impl Client {
    /// Downloads `remote` to `local`. The bytes go to `LOCAL.ftp-part` first and are renamed
    /// into place only once the whole-file digest matches. With `opts.resume`, continues the
    /// `.ftp-part` left by an earlier attempt (or `local` itself, a partial copy made some other
    /// way) once the server confirms it is the start of the same file; a `local` that already
    /// is the whole file is left as it is.
    pub async fn get(
        &mut self,
        remote: &str,
        local: &Path,
        opts: TransferOptions,
        progress: &mut dyn Progress,
    ) -> Result<Summary> {
        let started = Instant::now();
        if !opts.resume && !opts.overwrite && local.symlink_metadata().is_ok() {
            return Err(ClientError::LocalExists(format!(
                "{}: already exists (use get -f to overwrite)",
                local.display()
            )));
        }
        let part = part_path(local);
        // Looked at without following symlinks: a symlink at either name is never written
        // through ([`open_local`] refuses it), nor taken for a partial copy.
        let held_locally = local.symlink_metadata().ok();
        if opts.resume && held_locally.as_ref().is_some_and(|m| m.is_symlink()) {
            return Err(ClientError::Local {
                path: local.display().to_string(),
                source: std::io::Error::other("a symlink, not a partial copy; not resumed through"),
            });
        }
        let no_part = part.symlink_metadata().is_err();
        let start = if opts.resume && no_part && held_locally.is_some_and(|m| m.is_file()) {
            self.start_from_local(remote, local, &part, opts, progress)
                .await?
        } else {
            Start::Stream(self.start_from_part(remote, &part, opts, progress).await?)
        };
        let ((file, hasher, offset, ready), moved) = match start {
            Start::Stream(s) => (s, false),
            Start::Moved(s) => (s, true),
            Start::Complete { size, digest } => {
                return Ok(Summary {
                    name: remote.to_owned(),
                    sent: 0,
                    size,
                    elapsed: started.elapsed(),
                    digest,
                })
            }
        };
        progress.start(remote, ready.size, offset);
        let result = self
            .stream_down(file, offset, ready.size, hasher, ready.recorded, progress)
            .await;
        progress.finish();
        // Against the digests recorded at upload, a failed check is the server's disk, not
        // the link: said so, told to the server, and not retried.
        let result = match result {
            Err(ClientError::BadChunk { offset, .. }) if ready.recorded => {
                Err(self.report_damaged(remote, Some(offset)).await)
            }
            Err(ClientError::Damaged { told: false, .. }) if ready.recorded => {
                Err(self.report_damaged(remote, None).await)
            }
            Err(ClientError::Damaged { told, .. }) => Err(ClientError::Damaged {
                name: remote.to_owned(),
                told,
            }),
            other => other,
        };
        let (file, digest) = match result {
            Ok(ok) => ok,
            Err(e) => {
                // Verified bytes stay in the .ftp-part for `get -c`; nothing else is written.
                // A partial copy of the user's that gained nothing goes back where it was: the
                // server confirmed it, but then sent nothing that passed (it may have lied).
                if moved {
                    put_back(&part, local, offset);
                }
                remove_if_empty(&part);
                return Err(e);
            }
        };
        if let Some(mtime) = ready.mtime {
            let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64));
        }
        drop(file);
        place(&part, local, opts.overwrite || opts.resume)?;
        Ok(Summary {
            name: remote.to_owned(),
            sent: ready.size - offset,
            size: ready.size,
            elapsed: started.elapsed(),
            digest,
        })
    }

    /// Starts the download into `part` (ours: made, truncated or continued), resuming what it
    /// holds with `opts.resume`.
    async fn start_from_part(
        &mut self,
        remote: &str,
        part: &Path,
        opts: TransferOptions,
        progress: &mut dyn Progress,
    ) -> Result<Stream> {
        let file = open_local(part, Access::Create)?;
        if !opts.resume {
            file.set_len(0).map_err(|e| ClientError::local(part, e))?;
        }
        let held = file
            .metadata()
            .map_err(|e| ClientError::local(part, e))?
            .len();
        let hashed = self.hash_prefix(&file, part, held, remote, progress).await;
        let (file, hasher) = hashed.inspect_err(|_| remove_if_empty(part))?;
        match self.request_get(remote, held, &hasher).await {
            Ok(ready) => Ok((file, hasher, held, ready)),
            Err(ClientError::Remote(e)) if held > 0 && not_the_start(&e) => {
                if !opts.overwrite {
                    return Err(prefix_differs(held, remote));
                }
                file.set_len(0).map_err(|e| ClientError::local(part, e))?;
                let hasher = Hasher::new(self.server.digest);
                let ready = self.request_get(remote, 0, &hasher).await?;
                Ok((file, hasher, 0, ready))
            }
            Err(e) => {
                remove_if_empty(part);
                Err(e)
            }
        }
    }

    /// Starts a resumed download whose prefix is `local` itself, a partial copy made some other
    /// way. It is hashed where it lies and offered to the server; only once the server confirms
    /// it as the start of `remote` (and more is to come) does it become `part`. A file the
    /// server does not have, one that is not its start, and one that is already the whole of it
    /// leave `local` exactly as it was.
    async fn start_from_local(
        &mut self,
        remote: &str,
        local: &Path,
        part: &Path,
        opts: TransferOptions,
        progress: &mut dyn Progress,
    ) -> Result<Start> {
        // Read-only: a copy that turns out to be complete needs no write access, and is not
        // touched.
        let file = open_local(local, Access::Read)?;
        let held = file
            .metadata()
            .map_err(|e| ClientError::local(local, e))?
            .len();
        let (_, hasher) = self
            .hash_prefix(&file, local, held, remote, progress)
            .await?;
        drop(file);
        match self.request_get(remote, held, &hasher).await {
            Ok(ready) if ready.size == held => {
                // The server confirmed all we hold as its start, and sends only its eof.
                let digest = hasher.finish();
                match self.recv().await?.message {
                    Message::Eof(eof) if eof.digest == digest => {
                        Ok(Start::Complete { size: held, digest })
                    }
                    Message::Eof(eof) => Err(ClientError::Verify(format!(
                        "{} is as long as {remote}, but its {} is {digest}, the server's {}",
                        local.display(),
                        digest.kind().name(),
                        eof.digest
                    ))),
                    Message::Abort(reply) => Err(ClientError::Remote(reply)),
                    other => Err(unexpected("eof", &other)),
                }
            }
            Ok(ready) => match continue_in_part(local, part) {
                Ok(file) => Ok(Start::Moved((file, hasher, held, ready))),
                Err(e) => {
                    self.abandon_get().await?;
                    Err(e)
                }
            },
            Err(ClientError::Remote(e)) if held > 0 && not_the_start(&e) => {
                if !opts.overwrite {
                    return Err(prefix_differs(held, remote));
                }
                // `get -c -f`: downloaded afresh beside it; `local` is replaced only by a
                // verified copy.
                let fresh = TransferOptions {
                    resume: false,
                    ..opts
                };
                self.start_from_part(remote, part, fresh, progress)
                    .await
                    .map(Start::Stream)
            }
            Err(e) => Err(e),
        }
    }

    /// Hashes the first `len` bytes of `file` (at `path`) for a transfer of `name`, showing
    /// progress for a long prefix; Ctrl-C stops it at once.
    pub(super) async fn hash_prefix(
        &self,
        file: &File,
        path: &Path,
        len: u64,
        name: &str,
        progress: &mut dyn Progress,
    ) -> Result<(File, Hasher)> {
        let job = HashJob {
            kind: self.server.digest,
            name,
            progress,
            cancel: &self.cancel,
        };
        hash_prefix_of(file, path, len, job).await
    }

    /// Stops a download the server has started after its `get_ready`, reading what it sends
    /// until it ends, so the connection stays in step for the next command.
    async fn abandon_get(&mut self) -> Result<()> {
        self.send(Message::Cancel).await?;
        loop {
            match self.recv().await?.message {
                Message::Chunk(_) => {}
                Message::Eof(_) | Message::Abort(_) => return Ok(()),
                other => return Err(unexpected("eof", &other)),
            }
        }
    }

    /// Tells a server that takes reports that `remote` failed against its recorded digests
    /// (from the chunk at `offset`), once the download has ended; the error to return, saying
    /// whether the server took the report.
    async fn report_damaged(&mut self, remote: &str, offset: Option<u64>) -> ClientError {
        let takes_reports = self
            .server
            .capabilities
            .iter()
            .any(|c| c == protocol::capability::DAMAGED);
        let mut told = false;
        if takes_reports {
            let sent = self
                .send(Message::Damaged(protocol::Damaged {
                    path: remote.to_owned(),
                    offset,
                }))
                .await;
            match sent {
                Ok(()) => match self.recv().await.map(|f| f.message) {
                    Ok(Message::Ok) => told = true,
                    Ok(Message::Error(_)) => {}
                    // Not the answer: the connection is not to be trusted for the next command.
                    Ok(_) | Err(_) => self.out_of_step = true,
                },
                Err(_) => self.out_of_step = true,
            }
        }
        ClientError::Damaged {
            name: remote.to_owned(),
            told,
        }
    }

    /// Sends `get` from `offset` (with the digest of what we hold) and reads the server's answer.
    async fn request_get(
        &mut self,
        remote: &str,
        offset: u64,
        held: &Hasher,
    ) -> Result<protocol::GetReady> {
        self.send(Message::Get(Get {
            path: remote.to_owned(),
            offset,
            prefix_digest: (offset > 0).then(|| held.digest()),
        }))
        .await?;
        // The server checks our prefix before it answers, which takes as long as hashing it
        // did here: Ctrl-C must not wait for that.
        let cancel = self.cancel.clone();
        let frame = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                self.out_of_step = true;
                return Err(ClientError::Cancelled);
            }
            frame = self.recv() => frame?,
        };
        match frame.message {
            Message::GetReady(r) if r.offset == offset && r.offset <= r.size => Ok(r),
            Message::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected("get_ready", &other)),
        }
    }

    /// Whether the server's `remote` is exactly `local` (size and whole-file digest), asked as a
    /// download from the very end: the server checks our digest against its whole file. When it
    /// is, the answer says what the file is, as a transfer summary would.
    pub async fn same_as_remote(&mut self, local: &Path, remote: &str) -> Result<Option<Summary>> {
        let file = File::open(local).map_err(|e| ClientError::local(local, e))?;
        let size = file
            .metadata()
            .map_err(|e| ClientError::local(local, e))?
            .len();
        let (_, hasher) = self
            .hash_prefix(&file, local, size, remote, &mut NoProgress)
            .await?;
        match self.request_get(remote, size, &hasher).await {
            Ok(ready) if ready.size == size => {}
            Ok(_) => {
                // Larger on the server: drain what it sends and say no.
                loop {
                    match self.recv().await?.message {
                        Message::Chunk(_) => {}
                        Message::Eof(_) | Message::Abort(_) => return Ok(None),
                        other => return Err(unexpected("eof", &other)),
                    }
                }
            }
            Err(ClientError::Remote(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        let digest = hasher.finish();
        match self.recv().await?.message {
            Message::Eof(eof) if eof.digest == digest => Ok(Some(Summary {
                name: remote.to_owned(),
                sent: 0,
                size,
                elapsed: Duration::ZERO,
                digest,
            })),
            Message::Eof(_) | Message::Abort(_) => Ok(None),
            other => Err(unexpected("eof", &other)),
        }
    }

    async fn stream_down(
        &mut self,
        file: File,
        offset: u64,
        size: u64,
        hasher: Hasher,
        recorded: bool,
        progress: &mut dyn Progress,
    ) -> Result<(File, Digest)> {
        // The largest chunk this client announced in its hello.
        let receiver = ChunkReceiver::new(offset, size, protocol::MAX_BODY as u32, hasher);
        let mut seq = receiver.sequence();
        let (tx, rx) = mpsc::channel::<(ChunkHeader, Bytes)>(PIPELINE_DEPTH);
        let writer = tokio::task::spawn_blocking(move || write_chunks(file, receiver, rx));
        let mut failure: Option<ClientError> = None;
        let cancel = self.cancel.clone();
        let eof = loop {
            let frame = if failure.is_some() {
                self.recv().await?
            } else {
                tokio::select! {
                    frame = self.recv() => frame?,
                    () = cancel.cancelled() => {
                        failure = Some(ClientError::Cancelled);
                        self.send(Message::Cancel).await?;
                        continue;
                    }
                }
            };
            match frame.message {
                Message::Chunk(h) => {
                    if failure.is_some() {
                        continue; // draining after a cancel
                    }
                    if let Err(e) = seq.advance(&h) {
                        failure = Some(ClientError::Protocol(e.to_string()));
                        self.send(Message::Cancel).await?;
                        continue;
                    }
                    let n = u64::from(h.len);
                    if tx.send((h, frame.body)).await.is_err() {
                        // The writer refused a chunk (its error says why); stop the server.
                        failure = Some(ClientError::Verify("writer stopped".into()));
                        self.send(Message::Cancel).await?;
                        continue;
                    }
                    progress.advance(n);
                }
                Message::Eof(eof) => break Some(eof),
                // After our cancel, its answer (`cancelled`) is no news: `failure` says why.
                Message::Abort(reply) => {
                    if failure.is_none() {
                        failure = Some(match reply.code {
                            // The server found it, and knows.
                            ErrorCode::Damaged => ClientError::Damaged {
                                name: String::new(),
                                told: true,
                            },
                            _ => ClientError::Remote(reply),
                        });
                    }
                    break None;
                }
                // The server is closing the connection (a timeout, a shutdown): its reason.
                Message::Error(reply) => return Err(ClientError::Remote(reply)),
                other => return Err(unexpected("chunk", &other)),
            }
        };
        drop(tx);
        let written = writer
            .await
            .map_err(|e| ClientError::Internal(format!("file writer failed: {e}")))?;
        let (file, receiver) = match (written, failure) {
            (Err(e), _) => return Err(e),
            (Ok(_), Some(f)) => return Err(f),
            (Ok(done), None) => done,
        };
        let eof = eof.expect("eof when no failure");
        // The receiver started with the prefix already on disk, so this covers the whole file.
        match receiver.finish(&eof) {
            Ok(digest) => Ok((file, digest)),
            // Named, and reported when the digests were recorded ones, by the caller.
            Err(ChunkError::WholeDigest { .. }) if recorded => Err(ClientError::Damaged {
                name: String::new(),
                told: false,
            }),
            Err(ChunkError::WholeDigest { ours, theirs }) => Err(ClientError::Verify(format!(
                "whole-file {} is {ours}, server says {theirs}",
                ours.kind().name()
            ))),
            Err(e) => Err(ClientError::Verify(format!(
                "server ended the file early: {e}"
            ))),
        }
    }
}

/// How a download starts: a stream to take (the file to write to, positioned at the offset;
/// the digest of what it holds; that offset; the server's answer), or nothing to do at all.
enum Start {
    Stream(Stream),
    /// Like `Stream`, continuing the user's own partial copy, which is now the `.ftp-part`.
    Moved(Stream),
    /// The local file already is the whole remote file: nothing was changed.
    Complete {
        /// The file's size.
        size: u64,
        /// Its whole-file digest, as both sides computed it.
        digest: Digest,
    },
}

/// A download under way from an offset: see [`Start::Stream`].
type Stream = (File, Hasher, u64, protocol::GetReady);

/// Whether the server refused a resumed `get` because what we hold is not the start of its
/// file (`prefix_mismatch`) or is longer than it (`past_end`).
fn not_the_start(e: &ErrorReply) -> bool {
    matches!(e.code, ErrorCode::PrefixMismatch | ErrorCode::PastEnd)
}

/// The error for a resume whose `held` local bytes are not the start of `remote`.
fn prefix_differs(held: u64, remote: &str) -> ClientError {
    ClientError::Remote(ErrorReply::new(
        ErrorCode::PrefixMismatch,
        format!(
            "the {held} bytes held locally are not the start of {remote} \
             (use get -c -f to download it again)"
        ),
    ))
}

/// Makes a partial copy the server confirmed into the `.ftp-part` the download continues
/// (written at offsets, so its position does not matter); on failure it stays where it was.
fn continue_in_part(local: &Path, part: &Path) -> Result<File> {
    std::fs::rename(local, part).map_err(|e| ClientError::local(local, e))?;
    open_local(part, Access::Write).inspect_err(|_| {
        let _ = std::fs::rename(part, local);
    })
}

/// Moves a partial copy made the `.ftp-part` back to `local` if it still holds just the `held`
/// bytes it had, and nothing has taken its old name since.
fn put_back(part: &Path, local: &Path, held: u64) {
    if std::fs::metadata(part).is_ok_and(|m| m.len() == held)
        && std::fs::hard_link(part, local).is_ok()
    {
        let _ = std::fs::remove_file(part);
    }
}

/// Has the transfer engine check each chunk and appends the ones it accepts to `file` (at the
/// receiver's position); returns the file and the receiver, for its check at `eof`. After a
/// failure the verified bytes stay in the file, for `get -c`.
fn write_chunks(
    file: File,
    mut receiver: ChunkReceiver,
    mut rx: mpsc::Receiver<(ChunkHeader, Bytes)>,
) -> Result<(File, ChunkReceiver)> {
    let failed = |source| ClientError::Local {
        path: "download".into(),
        source,
    };
    let (offset, size) = (receiver.position(), receiver.sequence().size());
    let mut out = DirectWriter::new(file, offset, size - offset).map_err(failed)?;
    let mut result = Ok(());
    while let Some((h, body)) = rx.blocking_recv() {
        match receiver.accept(&h, &body) {
            Ok(()) => {}
            Err(ChunkError::BadDigest { offset, kind }) => {
                result = Err(ClientError::BadChunk {
                    offset,
                    digest: kind,
                });
                break;
            }
            Err(e) => {
                result = Err(ClientError::Protocol(e.to_string()));
                break;
            }
        }
        if let Err(e) = out.write_all(&body) {
            result = Err(failed(e));
            break;
        }
    }
    out.flush().map_err(failed)?;
    result?;
    let file = out.into_inner();
    file.sync_all().map_err(failed)?;
    Ok((file, receiver))
}
