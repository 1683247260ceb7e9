//! The in-process tier's small language: a daemon on a fresh temp root, reached over
//! `tokio::io::duplex` pipes by the real client or by a raw peer that writes frames by hand.
//!
//! ```text
//! let d = InProcess::new().start();        // ftpd::Server on a temp root, no listener
//! let mut c = d.client().await;            // ftp_cli's Client, greeted (client_as: logged in)
//! let mut raw = d.raw().await;             // protocol::Connection, greeted by hand
//! ```
//!
//! Every connection is a session task of the daemon at the far end of its own pipe, so nothing
//! waits for a port or a log line, and every wait here is bounded by [`STEP`].

use std::ffi::OsString;
use std::fs;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ftp_cli::client::{Credentials, NoProgress, TransferOptions};
use futures::FutureExt;
use protocol::scram;
use protocol::{
    Auth, ChunkHeader, ChunkSender, Connection, Digest, DigestKind, Eof, ErrorCode, ErrorReply,
    Frame, GetReady, Hasher, Hello, Message, Put, PutReady, VERSION,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

/// Longest any one step may take: a frame to arrive or be taken, a client call to answer.
/// Everything here is small, so a step that takes this long is a hang, not a slow machine.
pub const STEP: Duration = Duration::from_secs(10);

/// Bytes each direction of a pipe holds before the writer waits for the reader, as a socket
/// buffer would make it wait: small enough that a daemon cannot run far ahead of its peer.
const PIPE: usize = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// The daemon

/// A daemon about to start: the arguments after `--root` (`--users` is [`InProcess::users`]).
pub struct InProcess {
    /// Flags for `ftpd::Config::load`, as they would follow `ftpd --root DIR`.
    args: Vec<OsString>,
    /// The users file's text, when the daemon should have users.
    users: Option<String>,
    /// Files kept by this backend instead of the temp root (the daemon's remote path).
    backend: Option<Arc<storage::MemoryBackend>>,
}

impl InProcess {
    /// An anonymous daemon with the default settings.
    pub fn new() -> InProcess {
        InProcess {
            args: Vec::new(),
            users: None,
            backend: None,
        }
    }

    /// One more command-line flag or value (`.arg("--chunk-size").arg("65536")`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> InProcess {
        self.args.push(arg.into());
        self
    }

    /// Users, from the text of a users file (written mode 0600 beside the root, as ftpd
    /// demands).
    pub fn users(mut self, toml: &str) -> InProcess {
        self.users = Some(toml.to_owned());
        self
    }

    /// Keeps the files in `backend` (in memory, behind `storage::Backend`, as S3 would be)
    /// instead of the temp root: the daemon's path for object storage, without a service.
    pub fn on(mut self, backend: Arc<storage::MemoryBackend>) -> InProcess {
        self.backend = Some(backend);
        self
    }

    /// Opens the root as the daemon would at startup; no listener, no task yet. `FTPD_*`
    /// variables in the test's environment apply, as they would to the binary.
    #[track_caller]
    pub fn start(self) -> Daemon {
        let site = tempfile::Builder::new()
            .prefix("inprocess-")
            .tempdir()
            .expect("cannot create a temp dir");
        let root = site.path().join("root");
        let work = site.path().join("work");
        for dir in [&root, &work] {
            fs::create_dir(dir).expect("cannot create the test's directories");
        }
        let mut argv: Vec<OsString> = vec!["ftpd".into(), "--root".into(), root.into()];
        if let Some(text) = &self.users {
            let file = site.path().join("users.toml");
            fs::write(&file, text).expect("cannot write the users file");
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
                .expect("cannot chmod 600 the users file");
            argv.extend(["--users".into(), file.into()]);
        }
        if self.backend.is_some() {
            argv.extend(["--state-dir".into(), site.path().join("state").into()]);
        }
        argv.extend(self.args);
        let config = ftpd::Config::load(&argv).expect("the test's settings are valid");
        let backend = self.backend.map(|b| b as Arc<dyn storage::Backend>);
        let server =
            ftpd::Server::with_backend(config, backend).expect("the daemon serves the temp root");
        Daemon {
            server,
            site,
            next_port: AtomicU16::new(1),
        }
    }
}

/// A daemon serving a temp root, one session per pipe.
pub struct Daemon {
    /// The daemon itself; each pipe gets a session of it.
    server: ftpd::Server,
    /// Holds `root/` (what the daemon serves), `work/` (the client's files) and the users
    /// file; removed on drop.
    site: TempDir,
    /// A distinct peer port for each connection, so the daemon's logs tell them apart.
    next_port: AtomicU16,
}

impl Daemon {
    /// A path in the daemon's root, as the disk has it (not as a client sees it).
    pub fn root_path(&self, rel: &str) -> PathBuf {
        self.site.path().join("root").join(rel)
    }

    /// A path among the client's own files.
    pub fn local_path(&self, rel: &str) -> PathBuf {
        self.site.path().join("work").join(rel)
    }

    /// Names a client can see at the top of the root (all but the private `.ftpd`), sorted.
    pub fn visible(&self) -> Vec<String> {
        names_in(&self.root_path(""))
    }

    /// Names of the staged uploads the daemon holds (in its state directory, which by
    /// default lies beside the root: `.root.ftpd-state`), sorted.
    pub fn staged(&self) -> Vec<String> {
        names_in(&self.site.path().join(".root.ftpd-state/staging"))
    }

    /// A new connection: the daemon's session at one end of a pipe, the other end ours.
    pub fn pipe(&self) -> Pipe {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        let port = self.next_port.fetch_add(1, Ordering::Relaxed);
        let peer = SocketAddr::from(([127, 0, 0, 1], port));
        let session = Session {
            task: Some(tokio::spawn(self.server.serve_stream(theirs, peer))),
        };
        Pipe {
            stream: ours,
            session,
        }
    }

    /// The real client, anonymous, with the default digest (MD5).
    pub async fn client(&self) -> Client {
        self.client_with(DigestKind::Md5, None).await
    }

    /// The real client, anonymous, asking for the `digest` transfer digest.
    pub async fn client_using(&self, digest: DigestKind) -> Client {
        self.client_with(digest, None).await
    }

    /// The real client, logged in as `user`.
    pub async fn client_as(&self, user: &str, secret: &str) -> Client {
        let creds = Credentials::new(user.into(), Some(secret.into()), None);
        self.client_with(DigestKind::Md5, Some(&creds)).await
    }

    async fn client_with(&self, digest: DigestKind, creds: Option<&Credentials>) -> Client {
        let Pipe { stream, session } = self.pipe();
        let client = ftp_cli::client::Client::over(stream, "in-process", STEP, creds, digest, None)
            .await
            .unwrap_or_else(|e| panic!("the client could not greet the daemon: {e}"));
        Client { client, session }
    }

    /// A raw peer, greeted, anonymous, using MD5.
    pub async fn raw(&self) -> Raw {
        self.raw_using(DigestKind::Md5).await
    }

    /// A raw peer, greeted, anonymous, using `digest`.
    pub async fn raw_using(&self, digest: DigestKind) -> Raw {
        let mut raw = self.pipe().raw();
        raw.hello(digest).await;
        raw
    }

    /// A raw peer, greeted and logged in by hand as `user` (HMAC both ways, as PROTOCOL.md
    /// defines it).
    pub async fn raw_as(&self, user: &str, secret: &str) -> Raw {
        let mut raw = self.pipe().raw();
        raw.hello(DigestKind::Md5).await;
        raw.login(user, secret).await;
        raw
    }
}

/// Names in `dir` but the daemon's private `.ftpd`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".ftpd")
        .collect();
    names.sort();
    names
}

/// One session of the daemon, running as a task of the test's runtime.
pub struct Session {
    /// The task; taken once it has been waited for.
    task: Option<JoinHandle<()>>,
}

impl Session {
    /// Waits for the daemon to finish the session (the peer left); panics if it panicked.
    pub async fn ended(mut self) {
        let task = self.task.take().expect("a session is waited for once");
        match tokio::time::timeout(STEP, task).await {
            Err(_) => panic!("the daemon's session did not end within {STEP:?}"),
            Ok(Err(e)) => panic!("the daemon's session failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
}

impl Drop for Session {
    /// A session that panicked fails the test, even when the peer never noticed.
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        if std::thread::panicking() || !task.is_finished() {
            return;
        }
        if let Some(Err(e)) = task.now_or_never() {
            panic!("the daemon's session failed: {e}");
        }
    }
}

/// Our end of a connection, before anything was said on it.
pub struct Pipe {
    /// The bytes to and from the daemon's session.
    pub stream: DuplexStream,
    /// The daemon's side.
    pub session: Session,
}

impl Pipe {
    /// Writes one frame's bytes as they are: `header` (JSON, valid or not) behind its length.
    pub async fn write_header(&mut self, header: &[u8]) {
        let len = u32::try_from(header.len()).unwrap().to_be_bytes();
        self.stream.write_all(&len).await.unwrap();
        self.stream.write_all(header).await.unwrap();
    }

    /// Writes one message that has no body.
    pub async fn write_message(&mut self, message: &Message) {
        self.write_header(&serde_json::to_vec(message).unwrap())
            .await;
    }

    /// Reads one frame without a body as the bytes of its header, exactly as the daemon wrote
    /// them.
    pub async fn read_header(&mut self) -> Vec<u8> {
        let read = async {
            let len = self.stream.read_u32().await?;
            let mut header = vec![0; len as usize];
            self.stream.read_exact(&mut header).await?;
            Ok::<_, std::io::Error>(header)
        };
        match tokio::time::timeout(STEP, read).await {
            Ok(Ok(header)) => header,
            Ok(Err(e)) => panic!("no frame from the daemon: {e}"),
            Err(_) => panic!("no frame from the daemon within {STEP:?}"),
        }
    }

    /// From here on, frames: the daemon's answers to whatever was written come in order.
    pub fn raw(self) -> Raw {
        Raw {
            conn: Connection::new(self.stream),
            session: self.session,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The real client

/// The real client (`ftp_cli::client::Client`, which it derefs to) and its session.
pub struct Client {
    /// The client under test.
    client: ftp_cli::client::Client,
    /// The daemon's side of its connection.
    session: Session,
}

impl Deref for Client {
    type Target = ftp_cli::client::Client;

    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.client
    }
}

impl Client {
    /// Says goodbye and waits for the daemon to end the session.
    pub async fn bye(self) {
        self.client.bye().await;
        self.session.ended().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The raw peer

/// A peer that speaks frames by hand, including ones the real client never sends.
pub struct Raw {
    /// Frames to and from the daemon.
    conn: Connection<DuplexStream>,
    /// The daemon's side.
    session: Session,
}

impl Raw {
    /// Our hello asking for `digest`; the daemon's, of our version and granting it.
    pub async fn hello(&mut self, digest: DigestKind) {
        self.send(hello(digest)).await;
        match self.recv().await.message {
            Message::Hello(h) => {
                assert_eq!(h.version, VERSION);
                assert_eq!(h.digest, digest, "the daemon did not grant {digest:?}");
            }
            other => panic!("expected the daemon's hello, got {other:?}"),
        }
    }

    /// A SCRAM login without channel binding (an in-memory pipe has no TLS), the daemon's
    /// signature checked.
    pub async fn login(&mut self, user: &str, secret: &str) {
        let (client, first) = scram::Client::start(user, None, scram::nonce());
        self.send(Message::Auth(Auth {
            user: user.into(),
            scram: Some(first),
        }))
        .await;
        let server_first = match self.recv().await.message {
            Message::AuthContinue(s) => s.scram,
            other => panic!("expected auth_continue, got {other:?}"),
        };
        let (salt, iterations) = client.salt(&server_first).unwrap();
        let salted = scram::salted_password(secret.as_bytes(), &salt, iterations);
        let (last, finished) = client.finish(&server_first, &salted).unwrap();
        self.send(Message::AuthFinal(protocol::Scram { scram: last }))
            .await;
        match self.recv().await.message {
            Message::AuthOk(ok) => finished
                .verify(ok.scram.as_deref().unwrap_or_default())
                .expect("the daemon's signature"),
            other => panic!("expected auth_ok, got {other:?}"),
        }
    }

    /// Sends one frame; panics if the daemon does not take it in time.
    pub async fn send(&mut self, frame: impl Into<Frame>) {
        let frame = frame.into();
        let what = format!("{:?}", frame.message);
        if let Err(e) = self.conn.send(frame, STEP).await {
            panic!("the daemon did not take {what}: {e}");
        }
    }

    /// Sends frames in order.
    pub async fn send_all(&mut self, frames: impl IntoIterator<Item = Frame>) {
        for frame in frames {
            self.send(frame).await;
        }
    }

    /// The next frame; panics if the daemon closes, sends what this version cannot read, or
    /// says nothing in time.
    pub async fn recv(&mut self) -> Frame {
        match self.conn.recv(STEP).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(rejected)) => panic!("the daemon sent an unreadable frame: {rejected:?}"),
            Err(e) => panic!("no frame from the daemon: {e}"),
        }
    }

    /// Sends `put` and takes the daemon's go-ahead.
    pub async fn start_put(&mut self, req: Put) -> PutReady {
        self.send(Message::Put(req)).await;
        match self.recv().await.message {
            Message::PutReady(ready) => ready,
            other => panic!("expected put_ready, got {other:?}"),
        }
    }

    /// Sends `get` for the whole of `path` and takes the daemon's go-ahead.
    pub async fn start_get(&mut self, path: &str) -> GetReady {
        self.send(Message::Get(protocol::Get {
            path: path.into(),
            offset: 0,
            prefix_digest: None,
        }))
        .await;
        match self.recv().await.message {
            Message::GetReady(ready) => ready,
            other => panic!("expected get_ready, got {other:?}"),
        }
    }

    pub async fn expect_stored(&mut self) -> Eof {
        match self.recv().await.message {
            Message::Stored(eof) => eof,
            other => panic!("expected stored, got {other:?}"),
        }
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> ErrorReply {
        match self.recv().await.message {
            Message::Error(e) if e.code == code => e,
            other => panic!("expected an error with code {code}, got {other:?}"),
        }
    }

    /// The connection is in step: the first frame after a `pwd` is its `cwd`.
    pub async fn expect_usable(&mut self) {
        self.send(Message::Pwd).await;
        match self.recv().await.message {
            Message::Cwd(_) => {}
            other => panic!("expected cwd in answer to pwd, got {other:?}"),
        }
    }

    /// Sends `message` (ignoring a connection the daemon already closed), then waits up to
    /// `ms` milliseconds for a frame: the pacing of a peer that keeps a transfer barely alive.
    /// `None` when nothing came in that time.
    pub async fn try_send_and_recv(&mut self, message: Message, ms: u64) -> Option<Message> {
        let _ = self.conn.send(message, STEP).await;
        match self.conn.recv(std::time::Duration::from_millis(ms)).await {
            Ok(Ok(frame)) => Some(frame.message),
            Ok(Err(rejected)) => panic!("the daemon sent an unreadable frame: {rejected:?}"),
            Err(protocol::ConnectionError::RecvTimeout(_)) => None,
            Err(e) => panic!("the connection failed instead of a farewell: {e}"),
        }
    }

    /// The daemon has closed the connection: nothing more arrives, and its session ended.
    pub async fn expect_closed(self) {
        let Raw { mut conn, session } = self;
        match conn.recv(STEP).await {
            Err(protocol::ConnectionError::Closed) => {}
            Ok(Ok(frame)) => panic!("expected the close, got {frame:?}"),
            other => panic!("expected the close, got {other:?}"),
        }
        session.ended().await;
    }

    /// Drops the connection without a word, as a crashed client would, and waits for the
    /// daemon to end the session.
    pub async fn hang_up(self) {
        let Raw { conn, session } = self;
        drop(conn);
        session.ended().await;
    }

    /// Says goodbye and waits for the daemon to end the session.
    pub async fn bye(mut self) {
        self.send(Message::Bye).await;
        self.hang_up().await;
    }
}

/// A raw peer's hello: this protocol version, no capabilities, the daemon's default chunk.
pub fn hello(digest: DigestKind) -> Message {
    Message::Hello(Hello {
        version: VERSION,
        min_version: None,
        agent: "inprocess-raw/0".into(),
        capabilities: vec![],
        max_chunk: protocol::DEFAULT_CHUNK,
        digest,
    })
}

/// A new upload of `size` bytes to `path`: no overwrite, no id, no resume.
pub fn put(path: &str, size: usize) -> Put {
    Put {
        path: path.into(),
        size: size as u64,
        overwrite: false,
        resume: false,
        upload_id: None,
        mtime: None,
        pipelined: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Data and frames

/// Puts `data` as `name` through `c`, then gets it back among the client's files: both
/// transfers report `data`'s size and its `digest`, and the copy holds `data`. `case` names a
/// failure. Between the two, `stored` checks where the daemon keeps it.
pub async fn put_then_get(
    d: &Daemon,
    c: &mut Client,
    name: &str,
    data: &[u8],
    digest: DigestKind,
    case: &str,
    stored: impl AsyncFnOnce(),
) {
    let (local, back) = (d.local_path(name), d.local_path(&format!("{name}.back")));
    fs::write(&local, data).unwrap();
    let want = (data.len() as u64, Digest::of(digest, data));
    let up = c
        .put(&local, name, TransferOptions::default(), &mut NoProgress)
        .await
        .unwrap_or_else(|e| panic!("{case}: put failed: {e}"));
    assert_eq!((up.size, up.digest), want, "{case}: put");
    stored().await;
    let down = c
        .get(name, &back, TransferOptions::default(), &mut NoProgress)
        .await
        .unwrap_or_else(|e| panic!("{case}: get failed: {e}"));
    assert_eq!((down.size, down.digest), want, "{case}: get");
    assert_holds(&back, data);
}

/// `len` bytes that differ for each `seed` and look random (xorshift64*).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `data` from `offset` on as a sender frames it: chunks of `chunk` bytes carrying the running
/// digest from byte 0, then the `eof` with the whole file's.
pub fn framed(data: &[u8], offset: usize, chunk: usize, kind: DigestKind) -> (Vec<Frame>, Eof) {
    let mut prefix = Hasher::new(kind);
    prefix.update(&data[..offset]);
    let chunk = u32::try_from(chunk).unwrap();
    let mut sender = ChunkSender::new(offset as u64, data.len() as u64, chunk, prefix);
    let mut frames = Vec::new();
    while let Some(n) = sender.next_len() {
        let at = sender.position() as usize;
        frames.push(sender.seal(bytes_of(&data[at..at + n])));
    }
    (frames, sender.finish())
}

/// The same chunk, with a running digest its bytes do not produce.
pub fn damaged(frame: Frame) -> Frame {
    let Message::Chunk(h) = frame.message else {
        panic!("only chunks carry a running digest");
    };
    let wrong = Digest::of(h.digest.kind(), b"not these bytes");
    assert_ne!(wrong, h.digest);
    Frame {
        message: Message::Chunk(ChunkHeader { digest: wrong, ..h }),
        body: frame.body,
    }
}

/// The same chunk, claiming to start at `offset`.
pub fn moved_to(frame: Frame, offset: u64) -> Frame {
    let Message::Chunk(h) = frame.message else {
        panic!("only chunks have an offset");
    };
    Frame {
        message: Message::Chunk(ChunkHeader { offset, ..h }),
        body: frame.body,
    }
}

/// Panics unless the file at `path` holds exactly `data`; says how it differs, not the bytes.
#[track_caller]
pub fn assert_holds(path: &Path, data: &[u8]) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        got == data,
        "{} holds {} bytes (MD5 {}), expected {} bytes (MD5 {})",
        path.display(),
        got.len(),
        Digest::md5(&got),
        data.len(),
        Digest::md5(data)
    );
}

fn bytes_of(data: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(data)
}
