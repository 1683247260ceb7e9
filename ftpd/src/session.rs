//! One connection: the hello exchange, then commands until the client leaves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{
    auth, capability, AuthChallenge, AuthOk, DigestKind, ErrorCode, ErrorReply, Frame, FrameCodec,
    Hello, Incoming, Message, VERSION,
};
use storage::{Root, VPath};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use crate::auth::Authenticator;
use crate::error::SessionError;
use crate::server::Shared;
use crate::shutdown::Shutdown;
use crate::users::User;
use crate::{cmd, Config};

/// State of one client connection.
pub struct Session {
    /// Frames from the client.
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    /// Frames to the client.
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    /// Who is on the other end, for logs.
    pub peer: SocketAddr,
    /// The storage this session may touch.
    pub root: Root,
    /// Who may log in.
    auth: Arc<Authenticator>,
    /// The logged-in user; `None` when the daemon serves anonymously.
    pub user: Option<Arc<User>>,
    /// Where the client's `/` is inside the root: the user's home, or the root itself.
    pub home: VPath,
    /// Current directory for relative paths, as the client sees it (inside `home`).
    pub cwd: VPath,
    /// The daemon's settings.
    pub config: Arc<Config>,
    /// Largest chunk the client said it accepts.
    pub client_max_chunk: u32,
    /// The transfer digest the client asked for in its hello (this server knows them all).
    pub digest: DigestKind,
    /// Tells the session the daemon is stopping.
    shutdown: Shutdown,
}

impl Session {
    pub fn new(stream: TcpStream, peer: SocketAddr, shared: Shared, shutdown: Shutdown) -> Self {
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Session {
            reader: FramedRead::new(r, FrameCodec::new()),
            writer: FramedWrite::new(w, FrameCodec::new()),
            peer,
            root: shared.root,
            auth: shared.auth,
            user: None,
            home: VPath::root(),
            cwd: VPath::root(),
            config: shared.config,
            client_max_chunk: protocol::DEFAULT_CHUNK,
            digest: DigestKind::Md5,
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
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    self.writer.send(Frame::from(Message::Error(reply))),
                )
                .await;
            }
        }
        info!(peer = %self.peer, %reason, "connection closed");
    }

    async fn handshake(&mut self) -> Result<(), SessionError> {
        let limit = self.config.handshake_timeout;
        let hello = match tokio::time::timeout(limit, self.reader.next()).await {
            Err(_) => return Err(SessionError::Timeout("hello")),
            Ok(None) => return Err(SessionError::Closed),
            Ok(Some(item)) => item?,
        };
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
        let limit = self.config.handshake_timeout;
        let answer = match tokio::time::timeout(limit, self.reader.next()).await {
            Err(_) => return Err(SessionError::Timeout("authentication")),
            Ok(None) => return Err(SessionError::Closed),
            Ok(Some(item)) => item?,
        };
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
        let mac = Authenticator::proof(&user, &server_nonce, &answer.nonce);
        self.send(Message::AuthOk(AuthOk { mac })).await?;
        info!(peer = %self.peer, user = %user.name, home = %user.home, "authenticated");
        self.home = user.home.clone();
        self.user = Some(user);
        Ok(())
    }

    async fn command_loop(&mut self) -> Result<(), SessionError> {
        loop {
            let idle = self.config.idle_timeout;
            let incoming = tokio::select! {
                biased;
                _ = self.shutdown.recv() => return Err(SessionError::Shutdown),
                next = tokio::time::timeout(idle, self.reader.next()) => match next {
                    Err(_) => return Err(SessionError::Timeout("command")),
                    Ok(None) => return Err(SessionError::Closed),
                    Ok(Some(item)) => item?,
                },
            };
            let frame = match incoming {
                Ok(frame) => frame,
                Err(rejected) => {
                    self.send_error(ErrorReply::new(
                        ErrorCode::Unsupported,
                        format!(
                            "cannot handle {:?} message: {}",
                            rejected.kind, rejected.reason
                        ),
                    ))
                    .await?;
                    continue;
                }
            };
            match frame.message {
                Message::Put(req) => cmd::put::run(self, req).await?,
                Message::Get(req) => cmd::get::run(self, req).await?,
                Message::List(req) => cmd::list::run(self, req).await?,
                Message::Stat(req) => cmd::stat::run(self, req).await?,
                Message::Cd(req) => cmd::cd::cd(self, req).await?,
                Message::Pwd => cmd::cd::pwd(self).await?,
                Message::Mkdir(req) => cmd::mkdir::run(self, req).await?,
                Message::Rm(req) => cmd::rm::rm(self, req).await?,
                Message::Rmdir(req) => cmd::rm::rmdir(self, req).await?,
                Message::Rename(req) => cmd::rename::run(self, req).await?,
                Message::Bye => return Ok(()),
                // A cancel that crossed the end of a download on the wire: nothing left to stop.
                Message::Cancel => {}
                Message::Auth(_) => {
                    self.send_error(ErrorReply::new(
                        ErrorCode::BadRequest,
                        "already authenticated",
                    ))
                    .await?
                }
                Message::Hello(_) => {
                    self.send_error(ErrorReply::new(
                        ErrorCode::BadRequest,
                        "hello was already exchanged",
                    ))
                    .await?
                }
                Message::Chunk(_) | Message::Eof(_) | Message::Abort(_) => {
                    self.send_error(ErrorReply::new(
                        ErrorCode::BadRequest,
                        "no transfer in progress",
                    ))
                    .await?
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
                | Message::Error(_) => {
                    self.send_error(ErrorReply::new(
                        ErrorCode::BadRequest,
                        "that message is sent by servers, not clients",
                    ))
                    .await?
                }
            }
        }
    }

    /// Sends one frame, failing the session if the client does not take it in time.
    pub async fn send(&mut self, frame: impl Into<Frame>) -> Result<(), SessionError> {
        let send = protocol::send_frame(&mut self.writer, frame.into());
        match tokio::time::timeout(self.config.stall_timeout, send).await {
            Err(_) => Err(SessionError::Timeout("progress sending to the client")),
            Ok(r) => Ok(r?),
        }
    }

    pub async fn send_error(&mut self, reply: ErrorReply) -> Result<(), SessionError> {
        self.send(Message::Error(reply)).await
    }

    /// The next frame inside a transfer, within the stall timeout.
    pub async fn next_in_transfer(&mut self) -> Result<Frame, SessionError> {
        match tokio::time::timeout(self.config.stall_timeout, self.reader.next()).await {
            Err(_) => Err(SessionError::Timeout("data from the client")),
            Ok(None) => Err(SessionError::Closed),
            Ok(Some(item)) => incoming_in_transfer(item?),
        }
    }

    /// A frame the client has already sent, if any, without waiting (a download's `cancel`).
    pub fn poll_incoming(&mut self) -> Option<Result<Frame, SessionError>> {
        use futures::FutureExt;
        match self.reader.next().now_or_never()? {
            None => Some(Err(SessionError::Closed)),
            Some(Err(e)) => Some(Err(e.into())),
            Some(Ok(item)) => Some(incoming_in_transfer(item)),
        }
    }

    /// Resolves a client path against the current directory, to a path inside the home.
    pub fn resolve(&self, path: &str) -> Result<VPath, ErrorReply> {
        self.resolve_both(path).map(|(_, full)| full)
    }

    /// The path as the client sees it, and as it is inside the root.
    pub fn resolve_both(&self, path: &str) -> Result<(VPath, VPath), ErrorReply> {
        let visible = VPath::resolve(&self.cwd, path).map_err(|e| self.user_reply(&e))?;
        let full = self.home.join(&visible);
        Ok((visible, full))
    }

    /// A storage error as this client sees it: paths shown from the client's `/`, so a user
    /// never learns where their home is in the root.
    pub fn user_reply(&self, e: &storage::Error) -> ErrorReply {
        self.scrub(storage_reply(e))
    }

    /// Rewrites a reply's leading path from the root's view to the client's.
    pub fn scrub(&self, mut reply: ErrorReply) -> ErrorReply {
        if !self.home.is_root() {
            let home = self.home.to_string();
            if let Some(rest) = reply.message.strip_prefix(&home) {
                if rest.starts_with('/') {
                    reply.message = rest.to_owned();
                } else if rest.starts_with(':') {
                    reply.message = format!("/{rest}");
                }
            }
        }
        reply
    }

    /// Refuses writes for read-only users.
    pub fn check_writable(&self) -> Result<(), ErrorReply> {
        match &self.user {
            Some(u) if u.read_only => Err(ErrorReply::new(
                ErrorCode::Denied,
                format!("user {} has read-only access", u.name),
            )),
            _ => Ok(()),
        }
    }
}

fn incoming_in_transfer(item: Incoming) -> Result<Frame, SessionError> {
    item.map_err(|r| {
        SessionError::Protocol(format!("unexpected {:?} message in a transfer", r.kind))
    })
}

/// A storage error as the client sees it.
pub fn storage_reply(e: &storage::Error) -> ErrorReply {
    ErrorReply::new(e.code(), e.to_string())
}
