//! `get`: stream a file as chunks the transfer engine frames with running digests, then its
//! whole-file digest.
//!
//! Each chunk is read (and hashed) by a blocking task of its own, a few chunks ahead of the
//! socket, so no blocking thread ever waits on the network; the bytes read ahead are taken from
//! the daemon's memory budget first and given back once sent.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use protocol::{ChunkSender, DigestKind, Frame, Get, GetReady, Hasher, Message, Permit};
use storage::{Backend, Home, Recorded, VPath};
use tokio::task::JoinHandle;

use crate::cmd::{Failure, Handled, Pace};
use crate::error::{blocking, SessionError};
use crate::hashing::{self, Key};
use crate::reply::CmdError;
use crate::session::Session;
use crate::store::Files;

/// Chunks read and hashed ahead of the socket.
const READ_AHEAD: usize = 4;

/// A send that takes longer than this means the client, not the disk, sets the pace: reading
/// further ahead would not go faster, only hold more of the shared memory budget (a reader
/// just above --min-rate held four chunks), so such a download reads one chunk ahead.
const SLOW_SEND: Duration = Duration::from_millis(20);

/// An open file checked against the request, before any hashing.
struct Opened {
    file: Arc<File>,
    size: u64,
    mtime: Option<i64>,
    /// The digests recorded at upload, when they are of the session's kind.
    recorded: Option<Recorded>,
    /// The cache key of the prefix the download starts after.
    prefix_key: Key,
}

/// What one read task hands back: the sender to go on with, and the framed chunk.
type ReadDone = (ChunkSender, Result<(Frame, Permit), CmdError>);

pub async fn run(s: &mut Session, req: Get) -> Handled {
    let path = s.resolve(&req.path)?;
    s.moved.path = Some(path.to_string());
    let offset = req.offset;
    if offset > 0 {
        crate::metrics::resumed(crate::metrics::Direction::Download);
    }
    let home = match &s.files {
        Files::Local(view) => view.home().clone(),
        Files::Remote(backend) => return remote(s, req, backend.clone(), path).await,
    };
    let target = path.clone();
    let kind = s.digest;
    // Never more than the configured chunk, whatever the file was recorded in: a file
    // uploaded in 8 MiB chunks is re-cut, not sent (and buffered) 8 MiB at a time.
    let chunk = s.config.chunk_size.min(s.client_max_chunk);
    let opened = home.clone();
    let o = blocking(move || open(&opened, &target, offset, kind)).await??;
    // A record of tiny chunks (left by an older daemon) is not replayed: its chunks would go
    // out as they were, a byte at a time.
    let replay: Option<ChunkSender> = o
        .recorded
        .clone()
        .filter(|r| r.chunk >= storage::MIN_RECORDED_CHUNK || u64::from(r.chunk) >= o.size)
        .and_then(|r| ChunkSender::replaying(offset, o.size, r.chunk, r.chunks, r.digest, chunk));
    // Bytes hashed here are checked against the record at the end, so a re-cut download
    // still proves the file unchanged since it was stored.
    // The client is told when the digests it checks are the recorded ones: a failure is then
    // damage on our disk, not in transit, and no retry can cure it.
    let recorded = replay.is_some();
    let (sender, expect) = match replay {
        Some(sender) => (sender, None),
        None => {
            // The whole-file digest covers the prefix the client already holds, so hash it.
            let prefix = match offset {
                0 => Hasher::new(kind),
                _ => hashing::prefix(s, o.file.clone(), o.prefix_key.clone(), &path).await?,
            };
            let expect = o.recorded.as_ref().map(|r| r.digest);
            (ChunkSender::new(offset, o.size, chunk, prefix), expect)
        }
    };
    // A resumed download never splices two files: the client's prefix must be ours.
    if req
        .prefix_digest
        .is_some_and(|theirs| theirs != sender.digest_so_far())
    {
        return Err(CmdError::PrefixMismatch { path, offset }.into());
    }
    s.send(Message::GetReady(GetReady {
        size: o.size,
        offset,
        mtime: o.mtime,
        recorded,
    }))
    .await?;

    let mut ready: VecDeque<(Frame, Permit)> = VecDeque::new();
    // The sender is here between reads, and with the read task while one runs.
    let mut sender = Some(sender);
    let mut reading: Option<JoinHandle<ReadDone>> = None;
    let mut sent = offset;
    let mut pace = Pace::new(s);
    let mut client_paced = false;
    // Buffers of chunks already sent, for the next reads.
    let mut spare: Vec<BytesMut> = Vec::new();
    loop {
        if let Some(incoming) = s.poll_incoming() {
            let frame = incoming?;
            match frame.message {
                Message::Cancel => {
                    return Err(Failure::Aborted(CmdError::Cancelled { offset: sent }));
                }
                // The client's next command, pipelined: it runs once this download is over.
                _ => s.stash(frame),
            }
        }
        // Start the next read if none is running and the queue has room. It waits for budget
        // only while this transfer holds none (nothing queued, nothing being read): a transfer
        // never waits for memory while keeping memory, so transfers cannot wait on each other
        // in a ring, and what each holds goes out at the network's pace.
        let ahead = if client_paced { 1 } else { READ_AHEAD };
        if reading.is_none() && ready.len() < ahead {
            if let Some(n) = sender.as_ref().and_then(ChunkSender::next_len) {
                let permit = if ready.is_empty() {
                    let wait = s.budget.take(n);
                    match tokio::time::timeout(s.config.stall_timeout, wait).await {
                        Ok(permit) => Some(permit),
                        Err(_) => return Err(Failure::Aborted(CmdError::Busy("memory"))),
                    }
                } else {
                    s.budget.try_take(n)
                };
                if let Some(permit) = permit {
                    let (file, path) = (o.file.clone(), path.clone());
                    let taken = sender.take().expect("no read is running");
                    let reuse = spare.pop();
                    reading = Some(tokio::task::spawn_blocking(move || {
                        read_one(&file, taken, &path, permit, reuse)
                    }));
                }
            }
        }
        if let Some((frame, permit)) = ready.pop_front() {
            // The read in flight goes on meanwhile, on its own thread.
            let n = frame.body.len() as u64;
            let sending = Instant::now();
            let body = s.send_chunk(frame).await?;
            client_paced = sending.elapsed() > SLOW_SEND;
            // The memory of a sent chunk is filled with the next one: no fresh pages to fault
            // in (the client's copy is on the wire, ours is unique again).
            if let Ok(buf) = body.try_into_mut() {
                spare.push(buf);
            }
            drop(permit);
            sent += n;
            s.moved.bytes += n;
            pace.moved(n)?;
        } else if let Some(job) = reading.take() {
            let (back, chunk) = joined(job).await?;
            sender = Some(back);
            ready.push_back(chunk);
        } else {
            break;
        }
        if reading.as_ref().is_some_and(JoinHandle::is_finished) {
            let (back, chunk) = joined(reading.take().expect("checked just above")).await?;
            sender = Some(back);
            ready.push_back(chunk);
        }
    }
    let eof = sender.expect("every read was joined").finish();
    if expect.is_some_and(|recorded| recorded != eof.digest) {
        // Found here, not by the client: marked for the next scrub as a report would be.
        let in_root = home.root_path(&path).to_string();
        let target = path.clone();
        let marked = blocking(move || home.report_damaged(&target, None)).await?;
        tracing::error!(path = %crate::logging::Wire(&in_root), marked = ?marked.ok(),
                        "damaged file: its bytes no longer match the digest recorded at upload");
        return Err(Failure::Aborted(CmdError::Damaged { path }));
    }
    s.moved.digest = Some(eof.digest);
    Ok(Message::Eof(eof))
}

/// The sender and the chunk a finished read task hands back.
async fn joined(job: JoinHandle<ReadDone>) -> Result<(ChunkSender, (Frame, Permit)), Failure> {
    let (sender, read) = job
        .await
        .map_err(|e| SessionError::Internal(format!("file reader failed: {e}")))?;
    Ok((sender, read.map_err(Failure::Aborted)?))
}

fn open(home: &Home, path: &VPath, offset: u64, kind: DigestKind) -> Result<Opened, CmdError> {
    let f = home.open_read(path)?;
    if offset > f.size {
        let (path, size) = (path.to_string(), f.size);
        return Err(storage::Error::PastEnd { path, offset, size }.into());
    }
    let meta = f
        .file
        .metadata()
        .map_err(|e| storage::Error::io(&path.to_string(), "stat", e))?;
    Ok(Opened {
        prefix_key: Key::of(&meta, kind, offset),
        file: Arc::new(f.file),
        size: f.size,
        mtime: f.mtime,
        recorded: f.recorded.filter(|r| r.digest.kind() == kind),
    })
}

/// Reads the chunk the sender asks for at its position and has it framed: one chunk, then the
/// thread is free again.
fn read_one(
    file: &File,
    mut sender: ChunkSender,
    path: &VPath,
    permit: Permit,
    reuse: Option<BytesMut>,
) -> ReadDone {
    let n = sender
        .next_len()
        .expect("a read is started only for a chunk");
    let mut buf = match reuse {
        // It held the last chunk (at least as long as this one), and every byte of it is
        // read over: no zeroing needed.
        Some(mut buf) if buf.len() >= n => {
            buf.truncate(n);
            buf
        }
        _ => BytesMut::zeroed(n),
    };
    if let Err(e) = file.read_exact_at(&mut buf, sender.position()) {
        let err = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => CmdError::Shrank {
                path: path.clone(),
                offset: sender.position(),
            },
            _ => storage::Error::io(&path.to_string(), "read", e).into(),
        };
        return (sender, Err(err));
    }
    let frame = sender.seal(buf.freeze());
    (sender, Ok((frame, permit)))
}

/// A download from a backend behind the storage trait (object storage): its bytes arrive as a
/// stream, cut here into the session's chunks, one chunk of the memory budget at a time; the
/// digests recorded at upload are sent again when there are any, so nothing is hashed.
async fn remote(s: &mut Session, req: Get, backend: Arc<dyn Backend>, path: VPath) -> Handled {
    let offset = req.offset;
    let kind = s.digest;
    let chunk = s.config.chunk_size.min(s.client_max_chunk);
    // A start past the end is the backend's refusal (`PastEnd`): no stat first.
    let reading = backend.read(&path, offset).await?;
    let size = reading.size;
    let recorded = reading.recorded.filter(|r| r.digest.kind() == kind);
    let replay = recorded
        .clone()
        .filter(|r| r.chunk >= storage::MIN_RECORDED_CHUNK || u64::from(r.chunk) >= size)
        .and_then(|r| ChunkSender::replaying(offset, size, r.chunk, r.chunks, r.digest, chunk));
    let replayed = replay.is_some();
    let (mut sender, expect) = match replay {
        Some(sender) => (sender, None),
        None => {
            let prefix = match offset {
                0 => Hasher::new(kind),
                _ => {
                    let body = backend.read(&path, 0).await?.body;
                    hash_stream(s.config.stall_timeout, body, offset, kind, &path).await?
                }
            };
            let expect = recorded.map(|r| r.digest);
            (ChunkSender::new(offset, size, chunk, prefix), expect)
        }
    };
    if req
        .prefix_digest
        .is_some_and(|theirs| theirs != sender.digest_so_far())
    {
        return Err(CmdError::PrefixMismatch { path, offset }.into());
    }
    s.send(Message::GetReady(GetReady {
        size,
        offset,
        mtime: reading.mtime,
        recorded: replayed,
    }))
    .await?;
    let mut body = reading.body;
    // What the stream gave that the last chunk did not take.
    let mut pending = Bytes::new();
    let mut pace = Pace::new(s);
    let mut sent = offset;
    while let Some(n) = sender.next_len() {
        if let Some(incoming) = s.poll_incoming() {
            let frame = incoming?;
            match frame.message {
                Message::Cancel => {
                    return Err(Failure::Aborted(CmdError::Cancelled { offset: sent }));
                }
                _ => s.stash(frame),
            }
        }
        let permit = match tokio::time::timeout(s.config.stall_timeout, s.budget.take(n)).await {
            Ok(permit) => permit,
            Err(_) => return Err(Failure::Aborted(CmdError::Busy("memory"))),
        };
        let bytes = match pending.len() >= n {
            // A whole chunk in what the stream gave: no copy.
            true => pending.split_to(n),
            false => {
                let mut buf = BytesMut::with_capacity(n);
                while buf.len() < n {
                    if pending.is_empty() {
                        let at = sent + buf.len() as u64;
                        pending = next_piece(s.config.stall_timeout, &mut body, &path, at).await?;
                    }
                    let take = (n - buf.len()).min(pending.len());
                    buf.extend_from_slice(&pending.split_to(take));
                }
                buf.freeze()
            }
        };
        let (back, frame) = blocking(move || {
            let frame = sender.seal(bytes);
            (sender, frame)
        })
        .await?;
        sender = back;
        s.send_chunk(frame).await?;
        drop(permit);
        let n = n as u64;
        sent += n;
        s.moved.bytes += n;
        pace.moved(n)?;
    }
    let eof = sender.finish();
    if expect.is_some_and(|recorded| recorded != eof.digest) {
        tracing::error!(path = %crate::logging::Wire(&path.to_string()),
                        "damaged object: its bytes no longer match the digest recorded at upload");
        return Err(Failure::Aborted(CmdError::Damaged { path }));
    }
    s.moved.digest = Some(eof.digest);
    Ok(Message::Eof(eof))
}

/// The next piece of a stored file's bytes, `at` bytes into it; a stream that ends early or
/// goes silent for the stall timeout ends the download.
async fn next_piece(
    stall: Duration,
    body: &mut BoxStream<'static, storage::Result<Bytes>>,
    path: &VPath,
    at: u64,
) -> Result<Bytes, Failure> {
    loop {
        match tokio::time::timeout(stall, body.next()).await {
            Ok(Some(Ok(piece))) if piece.is_empty() => continue,
            Ok(Some(Ok(piece))) => return Ok(piece),
            Ok(Some(Err(e))) => return Err(Failure::Aborted(e.into())),
            Ok(None) => {
                let path = path.clone();
                return Err(Failure::Aborted(CmdError::Shrank { path, offset: at }));
            }
            Err(_) => {
                let e = storage::Error::Unavailable {
                    path: path.to_string(),
                    why: "it stopped sending the file".into(),
                };
                return Err(Failure::Aborted(e.into()));
            }
        }
    }
}

/// Hashes the first `upto` bytes of a stored file's stream, off the reactor.
async fn hash_stream(
    stall: Duration,
    mut body: BoxStream<'static, storage::Result<Bytes>>,
    upto: u64,
    kind: DigestKind,
    path: &VPath,
) -> Result<Hasher, Failure> {
    let mut hasher = Hasher::new(kind);
    let mut done = 0u64;
    while done < upto {
        let mut piece = next_piece(stall, &mut body, path, done).await?;
        let left = usize::try_from(upto - done).unwrap_or(usize::MAX);
        piece.truncate(left);
        done += piece.len() as u64;
        hasher = blocking(move || {
            hasher.update(&piece);
            hasher
        })
        .await?;
    }
    Ok(hasher)
}

/// A stored file's MD5 (`stat --md5`): recorded at upload, or hashed from its bytes.
pub(crate) async fn remote_md5(
    stall: Duration,
    backend: &dyn Backend,
    path: &VPath,
    size: u64,
) -> Result<protocol::Digest, Failure> {
    // Opened at its end first: the record without a byte of the file (no GET of it). A file
    // that shrank since its stat is simply hashed.
    let recorded = match backend.read(path, size).await {
        Ok(at_end) => at_end.recorded,
        Err(storage::Error::PastEnd { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(r) = recorded.filter(|r| r.digest.kind() == DigestKind::Md5) {
        return Ok(r.digest);
    }
    let reading = backend.read(path, 0).await?;
    let size = reading.size;
    Ok(
        hash_stream(stall, reading.body, size, DigestKind::Md5, path)
            .await?
            .finish(),
    )
}
