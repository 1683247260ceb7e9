//! Many small files on one connection without a round trip each: pipelined `put`s (each with
//! its data at once) and pipelined `get`s, the answers read in order while more are sent. Each
//! file keeps every promise of a single transfer: chunks and the whole file checked, nothing
//! placed before it is whole, a failure reported for that file alone.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use protocol::{
    capability, ChunkError, ChunkHeader, ChunkReceiver, ChunkSender, DigestKind, Eof, Frame, Get,
    GetReady, Hasher, Message, Put, Sequence,
};
use tokio::task::JoinHandle;

use super::localfs::{mtime_of, open_local, part_path, place, upload_id, Access};
use super::{known, unexpected, Client, Summary};
use crate::error::{ClientError, Result};

/// Largest file moved in a pipeline: it is held whole in memory on both sides (the daemon's
/// pipeline takes the same size). Larger files go one at a time, resumable part-way.
pub const SMALL: u64 = protocol::DEFAULT_CHUNK as u64;
/// Files sent and not yet answered, at most: enough to cover a long round trip (at 50 ms and
/// 100 MB/s, about 80 files of 64 KiB are on the way).
const WINDOW: usize = 128;
/// Bytes of files sent and not yet answered, at most.
const WINDOW_BYTES: u64 = 32 << 20;
/// Files read and hashed ahead of the socket (uploads), or checked and written behind it
/// (downloads), each by a blocking task.
const AHEAD: usize = 8;
/// Downloads placed together, after one sync of their bytes.
const PLACE_GROUP: usize = 64;

/// One file of a pipeline.
#[derive(Debug, Clone)]
pub struct Job {
    /// The file here.
    pub local: PathBuf,
    /// The file on the server.
    pub remote: String,
    /// Its size as known when the batch began.
    pub size: u64,
}

/// A pipeline that stopped before every file was answered: why, and the files whose fate is
/// unknown (sent and not answered, or not sent yet), for the caller to move another way.
#[derive(Debug)]
pub struct Cut {
    /// What stopped it.
    pub error: ClientError,
    /// Files sent and not answered, then files not sent yet.
    pub unanswered: Vec<Job>,
}

/// Where a pipeline takes its files from and says how each ended.
pub trait Jobs {
    /// The next file, or `None` when there are no more.
    fn next(&mut self) -> Option<Job>;
    /// How `job` ended.
    fn done(&mut self, job: Job, result: Result<Summary>);
}

/// An upload read, hashed and framed: the `put`, its chunks, its `eof`.
struct Framed {
    /// The `put`, `pipelined`.
    put: Put,
    /// The file's chunks, with their running digests.
    chunks: Vec<Frame>,
    /// The whole file's size and digest.
    eof: Eof,
}

type Reading = JoinHandle<(Job, Result<Framed>)>;

impl Client {
    /// The session's transfer digest.
    pub fn digest_kind(&self) -> DigestKind {
        self.server.digest
    }

    /// Whether the server takes pipelined commands.
    pub fn pipelines(&self) -> bool {
        self.server
            .capabilities
            .iter()
            .any(|c| c == capability::PIPELINE)
    }

    /// Uploads the files `jobs` gives, pipelined, until it gives no more.
    pub async fn put_many(
        &mut self,
        jobs: &mut dyn Jobs,
        overwrite: bool,
    ) -> std::result::Result<(), Cut> {
        let kind = self.server.digest;
        let chunk = self.server.max_chunk.min(protocol::DEFAULT_CHUNK);
        let mut reading: FuturesOrdered<Reading> = FuturesOrdered::new();
        let mut sent: VecDeque<(Job, Eof, Instant)> = VecDeque::new();
        let mut bytes_out = 0u64;
        let mut more = true;
        loop {
            while more && reading.len() < AHEAD {
                match jobs.next() {
                    Some(job) => reading.push_back(tokio::task::spawn_blocking(move || {
                        let framed = frame_file(&job, overwrite, chunk, kind);
                        (job, framed)
                    })),
                    None => more = false,
                }
            }
            if reading.is_empty() && sent.is_empty() {
                return Ok(());
            }
            let room = sent.len() < WINDOW && bytes_out < WINDOW_BYTES;
            let cancel = self.cancel.clone();
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    return Err(cut(ClientError::Cancelled, sent.into_iter().map(|s| s.0), reading).await);
                }
                frame = self.conn.recv(self.timeout), if !sent.is_empty() => {
                    let frame = match frame.map_err(ClientError::from).and_then(known) {
                        Ok(frame) if matches!(frame.message, Message::Progress) => continue,
                        Ok(frame) => frame,
                        Err(e) => return Err(cut(e, sent.into_iter().map(|s| s.0), reading).await),
                    };
                    let (job, eof, started) = sent.pop_front().expect("guarded");
                    bytes_out -= eof.size.min(bytes_out);
                    let result = match frame.message {
                        Message::Stored(s) if s == eof => Ok(Summary {
                            name: job.remote.clone(),
                            sent: eof.size,
                            size: eof.size,
                            elapsed: started.elapsed(),
                            digest: eof.digest,
                        }),
                        Message::Stored(s) => Err(ClientError::Verify(format!(
                            "server stored {} bytes with {name} {}, we sent {} bytes with {name} {}",
                            s.size, s.digest, eof.size, eof.digest, name = eof.digest.kind().name()
                        ))),
                        Message::Error(e) => Err(ClientError::Remote(e)),
                        other => {
                            let e = unexpected("stored", &other);
                            let rest = std::iter::once(job).chain(sent.into_iter().map(|s| s.0));
                            return Err(cut(e, rest, reading).await);
                        }
                    };
                    jobs.done(job, result);
                }
                next = reading.next(), if room && !reading.is_empty() => {
                    let (job, framed) = next.expect("guarded").map_err(|e| Cut {
                        error: ClientError::Internal(format!("file reader failed: {e}")),
                        unanswered: Vec::new(),
                    })?;
                    let framed = match framed {
                        Ok(framed) => framed,
                        Err(e) => {
                            jobs.done(job, Err(e));
                            continue;
                        }
                    };
                    if let Err(e) = self.send_framed(framed.put, framed.chunks, &framed.eof).await {
                        let rest = std::iter::once(job).chain(sent.into_iter().map(|s| s.0));
                        return Err(cut(e, rest, reading).await);
                    }
                    bytes_out += framed.eof.size;
                    sent.push_back((job, framed.eof, Instant::now()));
                }
            }
        }
    }

    async fn send_framed(&mut self, put: Put, chunks: Vec<Frame>, eof: &Eof) -> Result<()> {
        self.send(Message::Put(put)).await?;
        for chunk in chunks {
            self.send(chunk).await?;
        }
        self.send(Message::Eof(*eof)).await
    }

    /// Downloads the files `jobs` gives, pipelined, until it gives no more. A file is written
    /// to its `.ftp-part`, checked, and placed with others after one sync of them all.
    pub async fn get_many(
        &mut self,
        jobs: &mut dyn Jobs,
        overwrite: bool,
    ) -> std::result::Result<(), Cut> {
        let kind = self.server.digest;
        let mut asked: VecDeque<(Job, Instant)> = VecDeque::new();
        let mut receiving: Option<Receiving> = None;
        let mut writing: FuturesOrdered<JoinHandle<Written>> = FuturesOrdered::new();
        let mut to_place: Vec<(Job, Summary)> = Vec::new();
        let mut more = true;
        let mut bytes_asked = 0u64;
        let mut lost: Option<ClientError> = None;
        let result = loop {
            while more && asked.len() < WINDOW && bytes_asked < WINDOW_BYTES {
                let Some(job) = jobs.next() else {
                    more = false;
                    break;
                };
                if !overwrite && job.local.symlink_metadata().is_ok() {
                    let shown = job.local.display().to_string();
                    let why = format!("{shown}: already exists (use get -f to overwrite)");
                    jobs.done(job, Err(ClientError::LocalExists(why)));
                    continue;
                }
                let get = Get {
                    path: job.remote.clone(),
                    offset: 0,
                    prefix_digest: None,
                };
                let sent = self.send(Message::Get(get)).await;
                bytes_asked += job.size;
                asked.push_back((job, Instant::now()));
                if let Err(e) = sent {
                    lost = Some(e);
                    break;
                }
            }
            if let Some(e) = lost.take() {
                break Err(e);
            }
            if asked.is_empty() && writing.is_empty() {
                break Ok(());
            }
            let cancel = self.cancel.clone();
            let drain = asked.is_empty() || writing.len() >= AHEAD;
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Err(ClientError::Cancelled),
                written = writing.next(), if drain && !writing.is_empty() => {
                    let (job, written) = match written.expect("guarded") {
                        Ok(w) => w,
                        Err(e) => break Err(ClientError::Internal(format!("file writer failed: {e}"))),
                    };
                    match written {
                        Ok(summary) => to_place.push((job, summary)),
                        Err(e) => jobs.done(job, Err(e)),
                    }
                    if to_place.len() >= PLACE_GROUP {
                        place_group(std::mem::take(&mut to_place), overwrite, jobs).await;
                    }
                }
                frame = self.conn.recv(self.timeout), if !asked.is_empty() && !drain => {
                    let frame = match frame.map_err(ClientError::from).and_then(known) {
                        Ok(frame) => frame,
                        Err(e) => break Err(e),
                    };
                    match (frame.message, receiving.as_mut()) {
                        (Message::GetReady(ready), None) => {
                            // The server's word: held in memory only while it stays small.
                            if ready.size > SMALL || ready.offset != 0 {
                                break Err(ClientError::Protocol(format!(
                                    "{}: the server now says {} bytes, more than a pipeline holds",
                                    asked[0].0.remote, ready.size
                                )));
                            }
                            let seq = Sequence::new(0, ready.size, protocol::MAX_BODY as u32);
                            receiving = Some(Receiving { ready, seq, chunks: Vec::new() });
                        }
                        (Message::Error(e), None) => {
                            let (job, _) = asked.pop_front().expect("guarded");
                            bytes_asked -= job.size.min(bytes_asked);
                            jobs.done(job, Err(ClientError::Remote(e)));
                        }
                        (Message::Chunk(h), Some(r)) => {
                            if let Err(e) = r.seq.advance(&h) {
                                break Err(ClientError::Protocol(e.to_string()));
                            }
                            r.chunks.push((h, frame.body));
                        }
                        (Message::Eof(eof), Some(_)) => {
                            let r = receiving.take().expect("matched");
                            let (job, started) = asked.pop_front().expect("guarded");
                            bytes_asked -= job.size.min(bytes_asked);
                            writing.push_back(tokio::task::spawn_blocking(move || {
                                let written = write_file(&job, r, &eof, kind, started);
                                (job, written)
                            }));
                        }
                        (Message::Abort(e), Some(_)) => {
                            receiving = None;
                            let (job, _) = asked.pop_front().expect("guarded");
                            bytes_asked -= job.size.min(bytes_asked);
                            jobs.done(job, Err(ClientError::Remote(e)));
                        }
                        // The server is closing the connection: its reason.
                        (Message::Error(e), Some(_)) => break Err(ClientError::Remote(e)),
                        (other, _) => break Err(unexpected("a download", &other)),
                    }
                }
            }
        };
        // What was checked and written is placed whatever stopped the pipeline.
        while let Some(written) = writing.next().await {
            if let Ok((job, written)) = written {
                match written {
                    Ok(summary) => to_place.push((job, summary)),
                    Err(e) => jobs.done(job, Err(e)),
                }
            }
        }
        place_group(to_place, overwrite, jobs).await;
        result.map_err(|error| Cut {
            error,
            unanswered: asked.into_iter().map(|(job, _)| job).collect(),
        })
    }
}

/// A download being received: its answer, where the next chunk must start, its chunks.
struct Receiving {
    /// The server's `get_ready`: size and time.
    ready: GetReady,
    /// Where the next chunk must start.
    seq: Sequence,
    /// The chunks so far, checked when the file is whole.
    chunks: Vec<(ChunkHeader, Bytes)>,
}

type Written = (Job, Result<Summary>);

/// The files of a pipeline cut short: those sent and not answered, then those being read.
async fn cut(
    error: ClientError,
    sent: impl Iterator<Item = Job>,
    reading: FuturesOrdered<Reading>,
) -> Cut {
    let mut unanswered: Vec<Job> = sent.collect();
    let read: Vec<_> = reading.collect().await;
    unanswered.extend(read.into_iter().flatten().map(|(job, _)| job));
    Cut { error, unanswered }
}

/// Reads `job`'s file whole and frames it as a pipelined upload with its running digests.
fn frame_file(job: &Job, overwrite: bool, chunk: u32, kind: DigestKind) -> Result<Framed> {
    let local = &job.local;
    let mut file = File::open(local).map_err(|e| ClientError::local(local, e))?;
    let meta = file.metadata().map_err(|e| ClientError::local(local, e))?;
    if !meta.is_file() {
        return Err(ClientError::Usage(format!(
            "{}: not a file",
            local.display()
        )));
    }
    let size = meta.len();
    let mut sender = ChunkSender::new(0, size, chunk, Hasher::new(kind));
    let mut chunks = Vec::new();
    while let Some(n) = sender.next_len() {
        let mut data = BytesMut::zeroed(n);
        file.read_exact(&mut data)
            .map_err(|e| ClientError::local(local, e))?;
        chunks.push(sender.seal(data.freeze()));
    }
    let put = Put {
        path: job.remote.clone(),
        size,
        overwrite,
        resume: false,
        upload_id: Some(upload_id(local, &meta, &job.remote)),
        mtime: mtime_of(&meta),
        pipelined: true,
    };
    Ok(Framed {
        put,
        chunks,
        eof: sender.finish(),
    })
}

/// Checks a download received whole and writes it to its `.ftp-part` (placed later, in a
/// group).
fn write_file(
    job: &Job,
    r: Receiving,
    eof: &Eof,
    kind: DigestKind,
    started: Instant,
) -> Result<Summary> {
    let size = r.ready.size;
    // Against recorded digests a failure is damage on the server's disk: not retried.
    let damaged = || ClientError::Damaged {
        name: job.remote.clone(),
        told: false,
    };
    let recorded = r.ready.recorded;
    let mut receiver = ChunkReceiver::new(0, size, protocol::MAX_BODY as u32, Hasher::new(kind));
    for (h, body) in &r.chunks {
        receiver.accept(h, body).map_err(|e| match e {
            ChunkError::BadDigest { .. } if recorded => damaged(),
            ChunkError::BadDigest { offset, kind } => ClientError::BadChunk {
                offset,
                digest: kind,
            },
            other => ClientError::Protocol(other.to_string()),
        })?;
    }
    let digest = receiver.finish(eof).map_err(|e| match e {
        ChunkError::WholeDigest { .. } if recorded => damaged(),
        ChunkError::WholeDigest { ours, theirs } => ClientError::Verify(format!(
            "whole-file {} is {ours}, server says {theirs}",
            ours.kind().name()
        )),
        other => ClientError::Verify(format!("server ended the file early: {other}")),
    })?;
    let part = part_path(&job.local);
    let mut file = open_local(&part, Access::Create)?;
    let failed = |e| ClientError::local(&part, e);
    file.set_len(0).map_err(failed)?;
    for (_, body) in &r.chunks {
        file.write_all(body).map_err(failed)?;
    }
    if let Some(mtime) = r.ready.mtime {
        let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64));
    }
    Ok(Summary {
        name: job.remote.clone(),
        sent: size,
        size,
        elapsed: started.elapsed(),
        digest,
    })
}

/// Makes checked downloads durable with one sync of their filesystem, then moves each into
/// place and says how each ended.
async fn place_group(group: Vec<(Job, Summary)>, overwrite: bool, jobs: &mut dyn Jobs) {
    if group.is_empty() {
        return;
    }
    let placed = tokio::task::spawn_blocking(move || {
        if let Some((job, _)) = group.first() {
            sync_fs_of(&part_path(&job.local));
        }
        group
            .into_iter()
            .map(|(job, summary)| {
                let placed = place(&part_path(&job.local), &job.local, overwrite);
                (job, placed.map(|()| summary))
            })
            .collect::<Vec<_>>()
    })
    .await;
    match placed {
        Ok(placed) => {
            for (job, result) in placed {
                jobs.done(job, result);
            }
        }
        Err(e) => crate::output::diagnostic(format_args!("file placer failed: {e}")),
    }
}

/// Syncs the filesystem `path` is on (best effort: a download's own check already passed).
fn sync_fs_of(path: &Path) {
    if let Ok(file) = File::open(path) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = rustix::fs::syncfs(&file);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = file.sync_all();
    }
}
