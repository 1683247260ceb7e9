//! The client API: connect, put, get. No terminal I/O here; progress goes through [`Progress`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest as _, Md5};
use protocol::auth::{self, Role};
use protocol::{
    ChunkHeader, Digest, DigestKind, Entry, Eof, ErrorCode, ErrorReply, Frame, FrameCodec, Get,
    Hasher, Hello, Message, Mkdir, PathArg, Put, Rename, Stat, StatReply, VERSION,
};
use storage::DirectWriter;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

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
    /// Whole-file digest (MD5 or BLAKE3), checked by both sides.
    /// The whole file's digest, as verified.
    pub digest: Digest,
}

/// Options shared by put and get.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferOptions {
    /// Replace an existing target.
    pub overwrite: bool,
    /// Continue what an earlier attempt left (staged bytes on the server, `.ftp-part` here).
    pub resume: bool,
}

/// A user name and the secret shared with the server. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
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
    /// Set to stop the transfer in progress cleanly (the user pressed Ctrl-C).
    cancel: CancellationToken,
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
    /// Connects, exchanges hellos and, when the server has users, authenticates both ways.
    /// With credentials, a server that does not ask for them is refused: it could be an
    /// impostor that does not know the secret.
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        creds: Option<&Credentials>,
        digest: DigestKind,
    ) -> Result<Client> {
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
                digest: DigestKind::Md5,
            },
            timeout,
            addr: target.clone(),
            cancel: CancellationToken::new(),
        };
        client
            .send(Message::Hello(Hello {
                version: VERSION,
                agent: concat!("ftp-cli/", env!("CARGO_PKG_VERSION")).into(),
                capabilities: vec![protocol::capability::RESUME.into()],
                max_chunk: protocol::MAX_BODY as u32,
                digest,
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
                if h.digest != digest {
                    return Err(fail(format!(
                        "server does not use the {} digest this client asked for",
                        digest.name()
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
        let wants_auth = client
            .server
            .capabilities
            .iter()
            .any(|c| c == protocol::capability::AUTH_HMAC_SHA256);
        match (wants_auth, creds) {
            (false, None) => {}
            (true, Some(creds)) => client.authenticate(creds).await?,
            (true, None) => {
                return Err(ClientError::Auth(format!(
                    "{target} requires a user name: connect with -u NAME"
                )))
            }
            (false, Some(creds)) => {
                return Err(ClientError::Auth(format!(
                    "{target} does not ask {} to authenticate, so it cannot prove it is the \
                     server that knows the secret; not using it",
                    creds.user
                )))
            }
        }
        Ok(client)
    }

    async fn authenticate(&mut self, creds: &Credentials) -> Result<()> {
        let who = format!("{}@{}", creds.user, self.addr);
        let server_nonce = match self.recv().await?.message {
            Message::AuthChallenge(c) => c.nonce,
            Message::Error(e) => return Err(ClientError::Auth(format!("{who}: {e}"))),
            other => return Err(unexpected("auth_challenge", &other)),
        };
        let client_nonce = auth::nonce();
        let t = auth::transcript(
            Role::Client,
            VERSION,
            &server_nonce,
            &client_nonce,
            &creds.user,
        );
        self.send(Message::Auth(protocol::Auth {
            user: creds.user.clone(),
            nonce: client_nonce,
            mac: auth::sign(&creds.secret, &t),
        }))
        .await?;
        let proof = match self.recv().await {
            Ok(Frame {
                message: Message::AuthOk(ok),
                ..
            }) => ok.mac,
            Ok(Frame {
                message: Message::Error(e),
                ..
            }) if e.code == ErrorCode::AuthFailed => {
                return Err(ClientError::Auth(format!(
                    "authentication failed for {who}"
                )))
            }
            Ok(Frame {
                message: Message::Error(e),
                ..
            }) => return Err(ClientError::Auth(format!("{who}: {e}"))),
            Ok(other) => return Err(unexpected("auth_ok", &other.message)),
            Err(e) => return Err(e),
        };
        let t = auth::transcript(
            Role::Server,
            VERSION,
            &server_nonce,
            &client_nonce,
            &creds.user,
        );
        if !auth::verify(&creds.secret, &t, &proof) {
            return Err(ClientError::Auth(format!(
                "the server at {} could not prove it knows the secret for {}; not trusting it",
                self.addr, creds.user
            )));
        }
        Ok(())
    }

    /// A fresh token that stops the next transfer cleanly when cancelled: an upload is aborted
    /// (its staged bytes stay resumable), a download stopped and drained; the connection stays
    /// in step either way.
    pub fn cancel_token(&mut self) -> CancellationToken {
        self.cancel = CancellationToken::new();
        self.cancel.clone()
    }

    /// Whether the connection still looks open: the server has not closed it (an idle timeout,
    /// a restart) nor sent anything unasked. Checked before reusing a connection.
    pub fn is_alive(&mut self) -> bool {
        use futures::FutureExt;
        self.reader.next().now_or_never().is_none()
    }

    /// Says goodbye; the server closes its side.
    pub async fn bye(mut self) {
        let _ = self.send(Message::Bye).await;
    }

    async fn send(&mut self, frame: impl Into<Frame>) -> Result<()> {
        let send = futures::SinkExt::send(&mut self.writer, frame.into());
        match tokio::time::timeout(self.timeout, send).await {
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

    /// Sends a request whose answer is `ok`.
    async fn request_ok(&mut self, msg: Message) -> Result<()> {
        self.send(msg).await?;
        match self.recv().await?.message {
            Message::Ok => Ok(()),
            Message::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected("ok", &other)),
        }
    }

    /// The entries of a remote directory, in the server's order.
    pub async fn list(&mut self, path: &str) -> Result<Vec<Entry>> {
        self.send(Message::List(PathArg { path: path.into() }))
            .await?;
        let mut entries = Vec::new();
        loop {
            match self.recv().await?.message {
                Message::Listing(batch) => entries.extend(batch.entries),
                Message::ListEnd(end) if end.count == entries.len() as u64 => return Ok(entries),
                Message::ListEnd(end) => {
                    return Err(ClientError::Protocol(format!(
                        "listing announced {} entries but sent {}",
                        end.count,
                        entries.len()
                    )))
                }
                Message::Error(e) => return Err(ClientError::Remote(e)),
                other => return Err(unexpected("listing", &other)),
            }
        }
    }

    /// Describes a remote path; with `md5`, also its content's MD5 (computed by the server).
    pub async fn stat(&mut self, path: &str, md5: bool) -> Result<StatReply> {
        self.send(Message::Stat(Stat {
            path: path.into(),
            md5,
        }))
        .await?;
        match self.recv().await?.message {
            Message::StatReply(r) => Ok(r),
            Message::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected("stat_reply", &other)),
        }
    }

    /// Changes the remote directory; returns the new one.
    pub async fn cd(&mut self, path: &str) -> Result<String> {
        self.send(Message::Cd(PathArg { path: path.into() }))
            .await?;
        self.cwd_reply().await
    }

    /// The remote directory.
    pub async fn pwd(&mut self) -> Result<String> {
        self.send(Message::Pwd).await?;
        self.cwd_reply().await
    }

    async fn cwd_reply(&mut self) -> Result<String> {
        match self.recv().await?.message {
            Message::Cwd(c) => Ok(c.path),
            Message::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected("cwd", &other)),
        }
    }

    pub async fn mkdir(&mut self, path: &str, parents: bool) -> Result<()> {
        let path = path.into();
        self.request_ok(Message::Mkdir(Mkdir { path, parents }))
            .await
    }

    pub async fn rm(&mut self, path: &str) -> Result<()> {
        self.request_ok(Message::Rm(PathArg { path: path.into() }))
            .await
    }

    pub async fn rmdir(&mut self, path: &str) -> Result<()> {
        self.request_ok(Message::Rmdir(PathArg { path: path.into() }))
            .await
    }

    pub async fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (from.into(), to.into());
        self.request_ok(Message::Rename(Rename { from, to })).await
    }

    /// Uploads `local` to `remote` (a path on the server). With `opts.resume`, continues from
    /// the bytes an earlier attempt left staged on the server, once their MD5 matches ours.
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
            }))
            .await?;
            let ready = match self.recv().await?.message {
                Message::PutReady(r) if r.offset <= size => r,
                Message::Error(e) => return Err(ClientError::Remote(e)),
                other => return Err(unexpected("put_ready", &other)),
            };
            let offset = ready.offset;
            let (file, hasher) = hash_prefix_of(&file, local, offset, self.server.digest).await?;
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
        let chunk = self.server.max_chunk.clamp(1, protocol::DEFAULT_CHUNK) as usize;
        let (tx, mut rx) = mpsc::channel(PIPELINE_DEPTH);
        let reader =
            tokio::task::spawn_blocking(move || read_chunks(file, offset, size, chunk, hasher, tx));
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    drop(rx);
                    self.send(Message::Abort(ErrorReply::new(ErrorCode::BadRequest, "cancelled by the user"))).await?;
                    let _ = self.recv().await?; // the server answers an abort with one error
                    return Err(ClientError::Cancelled);
                }
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
        let digest = reader
            .await
            .map_err(|e| ClientError::Protocol(format!("file reader failed: {e}")))?;
        self.send(Message::Eof(Eof { size, digest })).await?;
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

    /// Downloads `remote` to `local`. The bytes go to `LOCAL.ftp-part` first and are renamed
    /// into place only once the whole-file MD5 matches. With `opts.resume`, continues the
    /// `.ftp-part` left by an earlier attempt (or `local` itself, a partial copy made some other
    /// way) once the server confirms it is the start of the same file.
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
        let moved = opts.resume && !part.exists() && local.is_file();
        if moved {
            std::fs::rename(local, &part).map_err(|e| ClientError::local(local, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!opts.resume)
            .open(&part)
            .map_err(|e| ClientError::local(&part, e))?;
        let held = file
            .metadata()
            .map_err(|e| ClientError::local(&part, e))?
            .len();
        let (file, hasher) = hash_prefix_of(&file, &part, held, self.server.digest).await?;
        let mut start = (file, hasher, held);
        let ready = match self.request_get(remote, held, &start.1).await {
            Ok(ready) => ready,
            Err(ClientError::Remote(e))
                if held > 0
                    && matches!(e.code, ErrorCode::PrefixMismatch | ErrorCode::BadRequest) =>
            {
                if !opts.overwrite {
                    if moved {
                        let _ = std::fs::rename(&part, local);
                    }
                    return Err(ClientError::Remote(ErrorReply::new(
                        ErrorCode::PrefixMismatch,
                        format!(
                            "the {held} bytes held locally are not the start of {remote} \
                             (use get -c -f to download it again)"
                        ),
                    )));
                }
                let (file, _) = hash_prefix_of(&start.0, &part, 0, self.server.digest).await?; // rewound to 0
                file.set_len(0).map_err(|e| ClientError::local(&part, e))?;
                start = (file, Hasher::new(self.server.digest), 0);
                self.request_get(remote, 0, &start.1).await?
            }
            Err(e) => {
                remove_if_empty(&part);
                return Err(e);
            }
        };
        let (file, hasher, offset) = start;
        progress.start(remote, ready.size, offset);
        let result = self
            .stream_down(file, offset, ready.size, hasher, progress)
            .await;
        progress.finish();
        let (file, digest) = match result {
            Ok(ok) => ok,
            Err(e) => {
                // Verified bytes stay in the .ftp-part for `get -c`; nothing else is written.
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

    /// Sends `get` from `offset` (with the MD5 of what we hold) and reads the server's answer.
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
        match self.recv().await?.message {
            Message::GetReady(r) if r.offset == offset && r.offset <= r.size => Ok(r),
            Message::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected("get_ready", &other)),
        }
    }

    /// Whether the server's `remote` is exactly `local` (size and whole-file MD5), asked as a
    /// download from the very end: the server checks our MD5 against its whole file. When it
    /// is, the answer says what the file is, as a transfer summary would.
    pub async fn same_as_remote(&mut self, local: &Path, remote: &str) -> Result<Option<Summary>> {
        let file = File::open(local).map_err(|e| ClientError::local(local, e))?;
        let size = file
            .metadata()
            .map_err(|e| ClientError::local(local, e))?
            .len();
        let (_, hasher) = hash_prefix_of(&file, local, size, self.server.digest).await?;
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
        progress: &mut dyn Progress,
    ) -> Result<(File, Digest)> {
        let (tx, rx) = mpsc::channel::<(ChunkHeader, Bytes)>(PIPELINE_DEPTH);
        let writer =
            tokio::task::spawn_blocking(move || write_chunks(file, offset, size, hasher, rx));
        let mut expected = offset;
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
                        // The writer refused a chunk (its error says why); stop the server.
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
        let (file, digest) = match (written, failure) {
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
        // The hasher started with the prefix already on disk, so this covers the whole file.
        if digest != eof.digest {
            return Err(ClientError::Verify(format!(
                "whole-file {} is {digest}, server says {}",
                digest.kind().name(),
                eof.digest
            )));
        }
        Ok((file, digest))
    }
}

/// The client's stable name for uploading this file to `remote`: the same file (path, size,
/// modification time) to the same place gets the same id, so a later `put -c` finds its bytes.
fn upload_id(local: &Path, meta: &std::fs::Metadata, remote: &str) -> String {
    let path = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_owned());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let digest = Md5::new()
        .chain_update(path.as_os_str().as_encoded_bytes())
        .chain_update([0])
        .chain_update(meta.len().to_be_bytes())
        .chain_update(mtime.to_be_bytes())
        .chain_update(remote.as_bytes())
        .finalize();
    hex::encode(digest)
}

fn mtime_of(meta: &std::fs::Metadata) -> Option<i64> {
    let t = meta.modified().ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// A clone of `file` positioned at `len`, with the digest of its first `len` bytes.
async fn hash_prefix_of(
    file: &File,
    path: &Path,
    len: u64,
    kind: DigestKind,
) -> Result<(File, Hasher)> {
    let mut file = file.try_clone().map_err(|e| ClientError::local(path, e))?;
    let shown = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = Hasher::new(kind);
        if hasher.update_from(&mut file, len)? < len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok((file, hasher))
    })
    .await
    .map_err(|e| ClientError::Protocol(format!("hashing failed: {e}")))?
    .map_err(|e| ClientError::local(&shown, e))
}

fn remove_if_empty(path: &Path) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(path);
    }
}

/// An error the server sent while our chunks were on the wire. A malformed or out-of-place
/// frame there means the bytes were damaged in transit (the server closes the connection after
/// a framing error), so it counts as a lost link, which a retry can cure; the rest are answers.
fn refused_mid_stream(reply: ErrorReply) -> ClientError {
    match reply.code {
        ErrorCode::BadRequest | ErrorCode::TooLarge => {
            ClientError::ConnectionLost(format!("the server received damaged data: {reply}"))
        }
        _ => ClientError::Remote(reply),
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

/// Reads and hashes chunks off the reactor, from `file`'s current position (`offset`);
/// `running` already holds the MD5 state of the bytes before it. Returns the whole-file MD5.
fn read_chunks(
    mut file: File,
    offset: u64,
    size: u64,
    chunk: usize,
    mut running: Hasher,
    tx: mpsc::Sender<Result<Frame>>,
) -> Digest {
    let mut pos = offset;
    while pos < size {
        let want = (size - pos).min(chunk as u64) as usize;
        let mut data = BytesMut::zeroed(want);
        if let Err(e) = file.read_exact(&mut data) {
            let _ = tx.blocking_send(Err(ClientError::Local {
                path: "local file".into(),
                source: std::io::Error::new(e.kind(), format!("read at offset {pos}: {e}")),
            }));
            return Digest::default();
        }
        let digest = running.seal(&data);
        if tx
            .blocking_send(Ok(Frame::chunk(pos, data.freeze(), digest)))
            .is_err()
        {
            return Digest::default();
        }
        pos += want as u64;
    }
    running.finish()
}

/// Checks each chunk's running digest and appends it to `file` from `offset` up to `size`;
/// returns the file and its whole-file digest. After a failure the verified bytes stay in the file, for
/// `get -c`.
fn write_chunks(
    file: File,
    offset: u64,
    size: u64,
    mut running: Hasher,
    mut rx: mpsc::Receiver<(ChunkHeader, Bytes)>,
) -> Result<(File, Digest)> {
    let failed = |source| ClientError::Local {
        path: "download".into(),
        source,
    };
    let mut out = DirectWriter::new(file, offset, size - offset).map_err(failed)?;
    let mut result = Ok(());
    while let Some((h, body)) = rx.blocking_recv() {
        if !running.check(&body, h.digest) {
            result = Err(ClientError::BadChunk {
                offset: h.offset,
                digest: running.kind(),
            });
            break;
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
    Ok((file, running.finish()))
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
