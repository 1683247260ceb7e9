//! One connection: the hello exchange, the login, then commands until the client leaves. The
//! dispatcher here is the one place that answers a command and records what it did.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{
    auth, capability, AuthChallenge, AuthOk, BoxStream, Budget, Connection, Digest, DigestKind,
    ErrorCode, ErrorReply, Frame, Hello, Incoming, Message, VERSION,
};
use storage::{Home, Root, VPath};
use tracing::{debug, info, warn};

use crate::auth::Authenticator;
use crate::cmd::{self, Failure, Handled};
use crate::error::SessionError;
use crate::hashing::Hashing;
use crate::reply::CmdError;
use crate::server::Shared;
use crate::shutdown::Shutdown;
use crate::users::User;
use crate::Config;

/// State of one client connection.
pub struct Session {
    /// Frames to and from the client.
    conn: Connection,
    /// Who is on the other end, for logs.
    pub peer: SocketAddr,
    /// The whole storage root, until login picks the home.
    root: Root,
    /// The part of the root this session may touch: the user's home, or the whole root when
    /// the daemon serves anonymously. Every path it is given, and every path its errors name,
    /// is relative to it.
    pub home: Home,
    /// Who may log in.
    auth: Arc<Authenticator>,
    /// The logged-in user; `None` when the daemon serves anonymously.
    pub user: Option<Arc<User>>,
    /// Current directory for relative paths, inside the home.
    pub cwd: VPath,
    /// The daemon's settings.
    pub config: Arc<Config>,
    /// Largest chunk the client said it accepts.
    pub client_max_chunk: u32,
    /// The transfer digest the client asked for in its hello (this server knows them all).
    pub digest: DigestKind,
    /// What the command in progress has moved so far, for the dispatcher's record.
    pub moved: Moved,
    /// Tells the session the daemon is stopping.
    shutdown: Shutdown,
    /// Memory that chunk bodies of all transfers share.
    pub budget: Budget,
    /// Whole-file hashing, shared by every session.
    pub hashing: Arc<Hashing>,
}

/// What a transfer moved, as the dispatcher records it.
#[derive(Debug, Default)]
pub struct Moved {
    /// The file, as the client named it.
    pub path: Option<String>,
    /// Bytes of content that crossed the wire (not those a resume skipped).
    pub bytes: u64,
    /// The whole file's digest, once verified.
    pub digest: Option<Digest>,
}

/// Whether the command loop goes on.
enum Flow {
    Continue,
    Quit,
}

impl Session {
    /// A session over a stream that the pre-protocol stage has set up.
    pub fn new(stream: BoxStream, peer: SocketAddr, shared: Shared, shutdown: Shutdown) -> Self {
        let mut conn = Connection::new(stream);
        conn.set_budget(shared.budget.clone());
        Session {
            conn,
            budget: shared.budget,
            hashing: shared.hashing,
            peer,
            home: shared.home.clone(),
            root: shared.root,
            auth: shared.auth,
            user: None,
            cwd: VPath::root(),
            config: shared.config,
            client_max_chunk: protocol::DEFAULT_CHUNK,
            digest: DigestKind::Md5,
            moved: Moved::default(),
            shutdown,
        }
    }

    /// Runs the session to its end and logs why it ended.
    pub async fn run(mut self) {
        info!(peer = %self.peer, "connection opened");
        let outcome = match self.handshake().await {
            Ok(()) => match self.authenticate().await {
                Ok(()) => self.command_loop().await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let reason = match &outcome {
            Ok(()) => "client said bye".to_owned(),
            Err(e) => e.to_string(),
        };
        if let Err(e) = outcome {
            if let Some(reply) = e.farewell() {
                // Best effort: the peer may already be gone or not reading.
                let _ = self
                    .conn
                    .send(Message::Error(reply), Duration::from_secs(2))
                    .await;
            }
        }
        info!(peer = %self.peer, %reason, "connection closed");
    }

    async fn handshake(&mut self) -> Result<(), SessionError> {
        let hello = self.recv(self.config.handshake_timeout, "hello").await?;
        let hello = match hello {
            Ok(Frame {
                message: Message::Hello(h),
                ..
            }) => h,
            // A hello this server cannot take (a digest it does not know, say): say what.
            Err(rejected) if rejected.kind == "hello" => {
                return Err(SessionError::Refused(ErrorReply::new(
                    ErrorCode::Unsupported,
                    format!("hello not understood: {}", rejected.reason),
                )))
            }
            _ => return Err(SessionError::Protocol("expected hello first".into())),
        };
        if hello.version != VERSION {
            return Err(SessionError::Refused(ErrorReply::new(
                ErrorCode::VersionMismatch,
                format!(
                    "server speaks protocol version {VERSION}, client speaks {}",
                    hello.version
                ),
            )));
        }
        debug!(peer = %self.peer, agent = %hello.agent, "hello");
        self.client_max_chunk = hello.max_chunk.clamp(1, protocol::MAX_BODY as u32);
        self.digest = hello.digest;
        let mut capabilities = vec![capability::RESUME.into(), capability::FILES.into()];
        if self.auth.users().is_some() {
            capabilities.push(capability::AUTH_HMAC_SHA256.into());
        }
        self.send(Message::Hello(Hello {
            version: VERSION,
            agent: concat!("ftpd/", env!("CARGO_PKG_VERSION")).into(),
            capabilities,
            max_chunk: protocol::MAX_BODY as u32,
            digest: self.digest,
        }))
        .await
    }

    /// With users configured: challenge, check the client's proof, prove ourselves. Nothing
    /// but `auth` is accepted until then, and a failure closes the connection.
    async fn authenticate(&mut self) -> Result<(), SessionError> {
        let Some(users) = self.auth.users() else {
            return Ok(());
        };
        let server_nonce = auth::nonce();
        self.send(Message::AuthChallenge(AuthChallenge {
            nonce: server_nonce,
        }))
        .await?;
        let answer = self
            .recv(self.config.handshake_timeout, "authentication")
            .await?;
        let Ok(Frame {
            message: Message::Auth(answer),
            ..
        }) = answer
        else {
            return Err(SessionError::Refused(ErrorReply::new(
                ErrorCode::AuthRequired,
                "authenticate first: this server has users",
            )));
        };
        let found = self.auth.verify(
            &users,
            &answer.user,
            &server_nonce,
            &answer.nonce,
            &answer.mac,
        );
        let Some(user) = found else {
            let delay = self.auth.failed(self.peer.ip());
            warn!(peer = %self.peer, user = %answer.user, "authentication failed");
            tokio::time::sleep(delay).await;
            return Err(SessionError::Refused(ErrorReply::new(
                ErrorCode::AuthFailed,
                "authentication failed",
            )));
        };
        self.auth.succeeded(self.peer.ip());
        let home = self.root.home(&user.home).map_err(|e| {
            warn!(peer = %self.peer, user = %user.name, "cannot open home {}: {e}", user.home);
            SessionError::Internal("cannot open the user's home".into())
        })?;
        let mac = Authenticator::proof(&user, &server_nonce, &answer.nonce);
        self.send(Message::AuthOk(AuthOk { mac })).await?;
        info!(peer = %self.peer, user = %user.name, home = %user.home, "authenticated");
        self.home = home;
        self.user = Some(user);
        Ok(())
    }

    async fn command_loop(&mut self) -> Result<(), SessionError> {
        loop {
            let idle = self.config.idle_timeout;
            let incoming = tokio::select! {
                biased;
                _ = self.shutdown.recv() => return Err(SessionError::Shutdown),
                next = self.conn.recv(idle) => {
                    next.map_err(|e| SessionError::connection(e, "command"))?
                }
            };
            let flow = match incoming {
                Ok(frame) => self.dispatch(frame.message).await?,
                Err(rejected) => {
                    let refused = Err(Failure::Refused(CmdError::Unsupported {
                        kind: rejected.kind,
                        reason: rejected.reason,
                    }));
                    self.conclude("unknown", Instant::now(), refused).await?
                }
            };
            if let Flow::Quit = flow {
                return Ok(());
            }
        }
    }

    /// Runs one command, then answers and records it.
    async fn dispatch(&mut self, message: Message) -> Result<Flow, SessionError> {
        let started = Instant::now();
        self.moved = Moved::default();
        self.recheck_user()?;
        let out_of_place = |why| Err(Failure::Refused(CmdError::OutOfPlace(why)));
        let (op, handled) = match message {
            Message::Put(req) => ("put", cmd::put::run(self, req).await),
            Message::Get(req) => ("get", cmd::get::run(self, req).await),
            Message::List(req) => ("list", cmd::list::run(self, req).await),
            Message::Stat(req) => ("stat", cmd::stat::run(self, req).await),
            Message::Cd(req) => ("cd", cmd::cd::run(self, req).await),
            Message::Pwd => ("pwd", cmd::pwd::run(self).await),
            Message::Mkdir(req) => ("mkdir", cmd::mkdir::run(self, req).await),
            Message::Rm(req) => ("rm", cmd::rm::run(self, req).await),
            Message::Rmdir(req) => ("rmdir", cmd::rmdir::run(self, req).await),
            Message::Rename(req) => ("rename", cmd::rename::run(self, req).await),
            Message::Bye => return Ok(Flow::Quit),
            // A cancel that crossed the end of a download on the wire: nothing left to stop,
            // and nothing to answer.
            Message::Cancel => return Ok(Flow::Continue),
            Message::Auth(_) => ("auth", out_of_place("already authenticated")),
            Message::Hello(_) => ("hello", out_of_place("hello was already exchanged")),
            Message::Chunk(_) | Message::Eof(_) | Message::Abort(_) => {
                ("transfer", out_of_place("no transfer in progress"))
            }
            Message::PutReady(_)
            | Message::GetReady(_)
            | Message::AuthChallenge(_)
            | Message::AuthOk(_)
            | Message::Listing(_)
            | Message::ListEnd(_)
            | Message::StatReply(_)
            | Message::Cwd(_)
            | Message::Ok
            | Message::Stored(_)
            | Message::Error(_) => (
                "server-message",
                out_of_place("that message is sent by servers, not clients"),
            ),
        };
        self.conclude(op, started, handled).await
    }

    /// Holds a logged-in session to the users in force now, not those of its login: a user
    /// removed, or whose secret or home changed (a reload revoking them), is logged out before
    /// the command runs; one made read-only is refused writes from this command on.
    fn recheck_user(&mut self) -> Result<(), SessionError> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        let now = self.auth.users();
        let current = now.as_ref().and_then(|users| users.get(&user.name));
        match current {
            Some(c) if Arc::ptr_eq(c, user) => Ok(()),
            Some(c) if c.secret.expose() == user.secret.expose() && c.home == user.home => {
                self.user = Some(c.clone());
                Ok(())
            }
            _ => {
                warn!(peer = %self.peer, user = %user.name, "account changed or removed; session ended");
                Err(SessionError::Refused(ErrorReply::new(
                    ErrorCode::AuthFailed,
                    "your account was changed or removed: log in again",
                )))
            }
        }
    }

    /// Sends a command's final reply and records its outcome: the one place both happen.
    async fn conclude(
        &mut self,
        op: &'static str,
        started: Instant,
        handled: Handled,
    ) -> Result<Flow, SessionError> {
        let (outcome, result) = match handled {
            Ok(reply) => (Ok(()), self.send(reply).await),
            Err(Failure::Refused(e)) => {
                let reply = e.reply();
                let sent = self.send(Message::Error(reply.clone())).await;
                (Err(reply), sent)
            }
            Err(Failure::RefusedUpload(e)) => {
                let reply = e.reply();
                let sent = match self.send(Message::Error(reply.clone())).await {
                    Ok(()) => cmd::put::drain(self).await,
                    Err(e) => Err(e),
                };
                (Err(reply), sent)
            }
            Err(Failure::Aborted(e)) => {
                let reply = e.reply();
                let sent = self.send(Message::Abort(reply.clone())).await;
                (Err(reply), sent)
            }
            Err(Failure::Session(e)) => {
                let reply = ErrorReply::new(ErrorCode::Internal, e.to_string());
                (Err(reply), Err(e))
            }
        };
        self.record(op, started, outcome);
        result.map(|()| Flow::Continue)
    }

    /// One log line per command: transfers at INFO (like vsftpd's xferlog), the rest at DEBUG.
    fn record(&self, op: &'static str, started: Instant, outcome: Result<(), ErrorReply>) {
        let elapsed = started.elapsed();
        let code = match &outcome {
            Ok(()) => "ok",
            Err(reply) => reply.code.as_str(),
        };
        let user = self.user.as_ref().map_or("-", |u| u.name.as_str());
        if !matches!(op, "get" | "put") {
            debug!(peer = %self.peer, user, op, outcome = code, "command");
            return;
        }
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.moved.bytes as f64 / secs / 1e6
        } else {
            0.0
        };
        let detail = match &outcome {
            Ok(()) => "ok".to_owned(),
            Err(reply) => reply.to_string(),
        };
        info!(
            target: "ftpd::xfer",
            peer = %self.peer,
            user,
            op,
            path = self.moved.path.as_deref().unwrap_or("-"),
            bytes = self.moved.bytes,
            secs = format!("{secs:.3}"),
            mb_per_s = format!("{rate:.1}"),
            digest = %self
                .moved
                .digest
                .map_or_else(|| "-".into(), |d| format!("{}:{d}", d.kind().key())),
            outcome = detail,
            "transfer"
        );
    }

    /// Sends one frame, failing the session if the client does not take it in time.
    pub async fn send(&mut self, frame: impl Into<Frame>) -> Result<(), SessionError> {
        let limit = self.config.stall_timeout;
        self.conn
            .send(frame, limit)
            .await
            .map_err(|e| SessionError::connection(e, "progress sending to the client"))
    }

    async fn recv(
        &mut self,
        within: Duration,
        waiting_for: &'static str,
    ) -> Result<Incoming, SessionError> {
        self.conn
            .recv(within)
            .await
            .map_err(|e| SessionError::connection(e, waiting_for))
    }

    /// The next frame inside a transfer, within the stall timeout.
    pub async fn next_in_transfer(&mut self) -> Result<Frame, SessionError> {
        let item = self
            .recv(self.config.stall_timeout, "data from the client")
            .await?;
        incoming_in_transfer(item)
    }

    /// A frame the client has already sent, if any, without waiting (a download's `cancel`).
    pub fn poll_incoming(&mut self) -> Option<Result<Frame, SessionError>> {
        match self.conn.try_recv()? {
            Err(e) => Some(Err(SessionError::connection(e, "data from the client"))),
            Ok(item) => Some(incoming_in_transfer(item)),
        }
    }

    /// Resolves a client path against the current directory, to a path inside the home.
    pub fn resolve(&self, path: &str) -> Result<VPath, CmdError> {
        Ok(VPath::resolve(&self.cwd, path)?)
    }

    /// The budget bytes the chunk last received holds, to keep until it is written.
    pub fn take_body_permit(&mut self) -> Option<protocol::Permit> {
        self.conn.take_body_permit()
    }

    /// Refuses writes for read-only users.
    pub fn check_writable(&self) -> Result<(), CmdError> {
        match &self.user {
            Some(u) if u.read_only => Err(CmdError::ReadOnly(u.name.clone())),
            _ => Ok(()),
        }
    }
}

fn incoming_in_transfer(item: Incoming) -> Result<Frame, SessionError> {
    item.map_err(|r| {
        SessionError::Protocol(format!("unexpected {:?} message in a transfer", r.kind))
    })
}
