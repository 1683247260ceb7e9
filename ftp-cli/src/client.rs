//! The client API: connect, put, get. No terminal I/O here; progress goes through [`Progress`].

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use md5::{Digest as _, Md5};
use protocol::{
    ChunkHeader, Eof, ErrorCode, ErrorReply, Frame, FrameCodec, Get, Hello, Md5Digest, Md5Hasher,
    Message, Put, VERSION,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{ClientError, Result};

/// Port used when the address names none.
pub const DEFAULT_PORT: u16 = 2121;
/// Chunks in flight between the disk thread and the socket.
const PIPELINE_DEPTH: usize = 4;

/// Receives progress of a transfer; the terminal front end draws it, scripts ignore it.
pub trait Progress: Send {
    /// A transfer of `total` bytes starts, `done` of them already in place (a resume).
    fn start(&mut self, name: &str, total: u64, done: u64);
    /// `n` more bytes were verified.
    fn advance(&mut self, n: u64);
    /// The transfer ended, well or not.
    fn finish(&mut self);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: u64, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// What a finished transfer reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The name as the user gave it.
    pub name: String,
    /// Bytes that crossed the wire this time.
    pub sent: u64,
    /// Size of the whole file.
    pub size: u64,
    pub elapsed: Duration,
    /// Whole-file MD5, checked by both sides.
    pub md5: Md5Digest,
}

/// Options shared by put and get.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferOptions {
    /// Replace an existing target.
    pub overwrite: bool,
}

/// An open, greeted connection to a server.
pub struct Client {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    /// What the server said about itself in its hello.
    server: Hello,
    /// Longest the client waits for any one frame.
    timeout: Duration,
    /// `host:port` as the user gave it, for messages.
    addr: String,
}

/// Turns `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address into something to dial.
pub fn normalize_addr(addr: &str) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_owned();
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, DEFAULT_PORT).to_string();
    }
    match addr.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => addr.to_owned(),
        _ => format!("{addr}:{DEFAULT_PORT}"),
    }
}

impl Client {
    /// Connects and exchanges hellos.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client> {
        let target = normalize_addr(addr);
        let fail = |reason: String| ClientError::Connect {
            addr: target.clone(),
            reason,
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&target)).await {
            Err(_) => return Err(fail("timed out".into())),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut client = Client {
            reader: FramedRead::with_capacity(r, FrameCodec::new(), 256 * 1024),
            writer: FramedWrite::new(w, FrameCodec::new()),
            server: Hello {
                version: VERSION,
                agent: String::new(),
                capabilities: vec![],
                max_chunk: protocol::DEFAULT_CHUNK,
            },
            timeout,
            addr: target.clone(),
        };
        client
            .send(Message::Hello(Hello {
                version: VERSION,
                agent: concat!("ftp-cli/", env!("CARGO_PKG_VERSION")).into(),
                capabilities: vec![protocol::capability::RESUME.into()],
                max_chunk: protocol::MAX_BODY as u32,
            }))
            .await
            .map_err(|e| fail(e.to_string()))?;
        match client.recv().await {
            Ok(Frame {
                message: Message::Hello(h),
                ..
            }) => {
                if h.version != VERSION {
                    return Err(fail(format!(
                        "server speaks protocol version {}, this client {VERSION}",
                        h.version
                    )));
                }
                client.server = h;
            }
            Ok(Frame {
                message: Message::Error(e),
                ..
            }) => return Err(fail(e.to_string())),
            Ok(other) => return Err(fail(format!("unexpected greeting {:?}", other.message))),
            Err(e) => return Err(fail(e.to_string())),
        }
        Ok(client)
    }

    /// `host:port` this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's hello.
    pub fn server(&self) -> &Hello {
        &self.server
    }

    /// Says goodbye; the server closes its side.
    pub async fn bye(mut self) {
        let _ = self.send(Message::Bye).await;
    }

    async fn send(&mut self, frame: impl Into<Frame>) -> Result<()> {
        match tokio::time::timeout(self.timeout, self.writer.send(frame.into())).await {
            Err(_) => Err(ClientError::ConnectionLost("server stopped reading".into())),
            Ok(r) => Ok(r?),
        }
    }

    async fn recv(&mut self) -> Result<Frame> {
        match tokio::time::timeout(self.timeout, self.reader.next()).await {
            Err(_) => Err(ClientError::ConnectionLost(format!(
                "no answer for {} s",
                self.timeout.as_secs()
            ))),
            Ok(None) => Err(ClientError::ConnectionLost(
                "server closed the connection".into(),
            )),
            Ok(Some(item)) => item?.map_err(|r| {
                ClientError::Protocol(format!("server sent an unknown {:?} message", r.kind))
            }),
        }
    }

    /// Uploads `local` to `remote` (a path on the server).
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
        self.send(Message::Put(Put {
            path: remote.to_owned(),
            size,
            overwrite: opts.overwrite,
            resume: false,
            upload_id: None,
        }))
        .await?;
        let ready = match self.recv().await?.message {
            Message::PutReady(r) => r,
            Message::Error(e) => return Err(ClientError::Remote(e)),
            other => return Err(unexpected("put_ready", &other)),
        };
        let offset = ready.offset;
        progress.start(remote, size, offset);
        let result = self.stream_up(file, offset, size, progress).await;
        progress.finish();
        let md5 = result?;
        Ok(Summary {
            name: remote.to_owned(),
            sent: size - offset,
            size,
            elapsed: started.elapsed(),
            md5,
        })
    }

    async fn stream_up(
        &mut self,
        file: File,
        offset: u64,
        size: u64,
        progress: &mut dyn Progress,
    ) -> Result<Md5Digest> {
        let chunk = self.server.max_chunk.clamp(1, protocol::DEFAULT_CHUNK) as usize;
        let (tx, mut rx) = mpsc::channel(PIPELINE_DEPTH);
        let reader =
            tokio::task::spawn_blocking(move || read_chunks(file, offset, size, chunk, tx));
        loop {
            tokio::select! {
                biased;
                // The server may refuse part-way; it then skips our chunks until eof or abort.
                early = self.reader.next() => {
                    drop(rx);
                    let reply = match early {
                        Some(Ok(Ok(Frame { message: Message::Error(e), .. }))) => e,
                        Some(Ok(Ok(other))) => return Err(unexpected("error", &other.message)),
                        Some(Ok(Err(r))) => return Err(ClientError::Protocol(format!("unknown {:?}", r.kind))),
                        Some(Err(e)) => return Err(e.into()),
                        None => return Err(ClientError::ConnectionLost("server closed the connection".into())),
                    };
                    self.send(Message::Abort(ErrorReply::new(reply.code, "stopping after the server's error"))).await?;
                    return Err(ClientError::Remote(reply));
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
        let md5 = reader
            .await
            .map_err(|e| ClientError::Protocol(format!("file reader failed: {e}")))?;
        self.send(Message::Eof(Eof { size, md5 })).await?;
        match self.recv().await?.message {
            Message::Stored(s) if s.md5 == md5 && s.size == size => Ok(md5),
            Message::Stored(s) => Err(ClientError::Verify(format!(
                "server stored {} bytes with MD5 {}, we sent {size} bytes with MD5 {md5}",
                s.size, s.md5
            ))),
            Message::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected("stored", &other)),
        }
    }

    /// Downloads `remote` to `local`. The bytes go to `LOCAL.ftp-part` first and are renamed
    /// into place only once the whole-file MD5 matches.
    pub async fn get(
        &mut self,
        remote: &str,
        local: &Path,
        opts: TransferOptions,
        progress: &mut dyn Progress,
    ) -> Result<Summary> {
        let started = Instant::now();
        if !opts.overwrite && local.symlink_metadata().is_ok() {
            return Err(ClientError::LocalExists(format!(
                "{}: already exists (use get -f to overwrite)",
                local.display()
            )));
        }
        let part = part_path(local);
        let file = File::create(&part).map_err(|e| ClientError::local(&part, e))?;
        self.send(Message::Get(Get {
            path: remote.to_owned(),
            offset: 0,
            prefix_md5: None,
        }))
        .await?;
        let ready = match self.recv().await?.message {
            Message::GetReady(r) => r,
            Message::Error(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(ClientError::Remote(e));
            }
            other => return Err(unexpected("get_ready", &other)),
        };
        progress.start(remote, ready.size, ready.offset);
        let result = self
            .stream_down(file, ready.offset, ready.size, progress)
            .await;
        progress.finish();
        let (file, md5) = match result {
            Ok(ok) => ok,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        };
        if let Some(mtime) = ready.mtime {
            let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime.max(0) as u64));
        }
        drop(file);
        place(&part, local, opts.overwrite)?;
        Ok(Summary {
            name: remote.to_owned(),
            sent: ready.size - ready.offset,
            size: ready.size,
            elapsed: started.elapsed(),
            md5,
        })
    }

    async fn stream_down(
        &mut self,
        file: File,
        offset: u64,
        size: u64,
        progress: &mut dyn Progress,
    ) -> Result<(File, Md5Digest)> {
        let (tx, rx) = mpsc::channel::<(ChunkHeader, Bytes)>(PIPELINE_DEPTH);
        let writer = tokio::task::spawn_blocking(move || write_chunks(file, rx));
        let mut expected = offset;
        let mut failure: Option<ClientError> = None;
        let eof = loop {
            let frame = self.recv().await?;
            match frame.message {
                Message::Chunk(h) => {
                    if failure.is_some() {
                        continue; // draining after a cancel
                    }
                    if h.offset != expected || h.offset + u64::from(h.len) > size {
                        failure = Some(ClientError::Protocol(format!(
                            "chunk at offset {}, expected {expected}",
                            h.offset
                        )));
                        self.send(Message::Cancel).await?;
                        continue;
                    }
                    expected += u64::from(h.len);
                    let n = u64::from(h.len);
                    if tx.send((h, frame.body)).await.is_err() {
                        // The writer refused a chunk; stop the server and drain.
                        failure = Some(ClientError::Verify("writer stopped".into()));
                        self.send(Message::Cancel).await?;
                        continue;
                    }
                    progress.advance(n);
                }
                Message::Eof(eof) => break Some(eof),
                Message::Abort(reply) => {
                    if failure.is_none() {
                        failure = Some(ClientError::Remote(reply));
                    }
                    break None;
                }
                other => return Err(unexpected("chunk", &other)),
            }
        };
        drop(tx);
        let written = writer
            .await
            .map_err(|e| ClientError::Protocol(format!("file writer failed: {e}")))?;
        let (file, md5) = match (written, failure) {
            (Err(e), _) => return Err(e),
            (Ok(_), Some(f)) => return Err(f),
            (Ok(done), None) => done,
        };
        let eof = eof.expect("eof when no failure");
        if eof.size != size || expected != size {
            return Err(ClientError::Verify(format!(
                "server ended the file at {expected} of {size} bytes"
            )));
        }
        // Resumed downloads hash the prefix already on disk, so the digest covers the file.
        if md5 != eof.md5 {
            return Err(ClientError::Verify(format!(
                "whole-file MD5 is {md5}, server says {}",
                eof.md5
            )));
        }
        Ok((file, md5))
    }
}

fn unexpected(wanted: &str, got: &Message) -> ClientError {
    ClientError::Protocol(format!("expected {wanted}, server sent {got:?}"))
}

/// Where a download is written until it is verified.
pub fn part_path(local: &Path) -> PathBuf {
    let mut name = local.file_name().unwrap_or_default().to_owned();
    name.push(".ftp-part");
    local.with_file_name(name)
}

/// Moves a verified download into place; without `overwrite`, never over an existing file.
fn place(part: &Path, local: &Path, overwrite: bool) -> Result<()> {
    let result = if overwrite {
        std::fs::rename(part, local)
    } else {
        std::fs::hard_link(part, local).and_then(|()| std::fs::remove_file(part))
    };
    result.map_err(|e| {
        let _ = std::fs::remove_file(part);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ClientError::LocalExists(format!("{}: already exists", local.display()))
        } else {
            ClientError::local(local, e)
        }
    })
}

/// Reads and hashes chunks off the reactor; returns the whole-file MD5.
fn read_chunks(
    mut file: File,
    offset: u64,
    size: u64,
    chunk: usize,
    tx: mpsc::Sender<Result<Frame>>,
) -> Md5Digest {
    use std::io::{Seek, SeekFrom};
    let mut whole = Md5::new();
    let mut pos = 0u64;
    let mut buf = vec![0u8; chunk];
    // Bytes before the offset are already on the server; hash them for the whole-file MD5.
    while pos < offset {
        let want = (offset - pos).min(chunk as u64) as usize;
        if let Err(e) = file.read_exact(&mut buf[..want]) {
            let _ = tx.blocking_send(Err(ClientError::Local {
                path: "local file".into(),
                source: e,
            }));
            return Md5Digest::default();
        }
        whole.update(&buf[..want]);
        pos += want as u64;
    }
    let _ = file.seek(SeekFrom::Start(offset));
    while pos < size {
        let want = (size - pos).min(chunk as u64) as usize;
        let mut data = BytesMut::zeroed(want);
        if let Err(e) = file.read_exact(&mut data) {
            let _ = tx.blocking_send(Err(ClientError::Local {
                path: "local file".into(),
                source: std::io::Error::new(e.kind(), format!("read at offset {pos}: {e}")),
            }));
            return Md5Digest::default();
        }
        whole.update(&data);
        if tx
            .blocking_send(Ok(Frame::chunk(pos, data.freeze())))
            .is_err()
        {
            return Md5Digest::default();
        }
        pos += want as u64;
    }
    Md5Digest(whole.finalize().into())
}

/// Verifies each chunk and appends it; returns the file and its whole-file MD5.
fn write_chunks(
    mut file: File,
    mut rx: mpsc::Receiver<(ChunkHeader, Bytes)>,
) -> Result<(File, Md5Digest)> {
    let mut whole = Md5Hasher::new();
    while let Some((h, body)) = rx.blocking_recv() {
        if Md5Digest::of(&body) != h.md5 {
            return Err(ClientError::Verify(format!(
                "chunk at offset {} failed its MD5 check; nothing of it was written",
                h.offset
            )));
        }
        file.write_all(&body).map_err(|e| ClientError::Local {
            path: "download".into(),
            source: e,
        })?;
        whole.update(&body);
    }
    file.sync_all().map_err(|e| ClientError::Local {
        path: "download".into(),
        source: e,
    })?;
    Ok((file, whole.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for (input, want) in [
            ("127.0.0.1", "127.0.0.1:2121"),
            ("127.0.0.1:9", "127.0.0.1:9"),
            ("localhost", "localhost:2121"),
            ("localhost:80", "localhost:80"),
            ("::1", "[::1]:2121"),
            ("[::1]:5", "[::1]:5"),
        ] {
            assert_eq!(normalize_addr(input), want, "{input}");
        }
    }

    #[test]
    fn part_files_sit_next_to_the_target() {
        assert_eq!(
            part_path(Path::new("d/a.bin")),
            Path::new("d/a.bin.ftp-part")
        );
    }
}
