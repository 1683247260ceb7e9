//! One connection: the hello exchange, the login, then commands until the client leaves. The
//! dispatcher here is the one place that answers a command and records what it did.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::tls::Fingerprint;
use protocol::{
    capability, handshake, scram, AuthOk, Budget, Connection, Digest, DigestKind, ErrorCode,
    ErrorReply, Frame, Hello, Incoming, Message, Scram,
};
use storage::VPath;
use tracing::{debug, error, info, warn};

use crate::admission::{AddrRange, Admission};
use crate::auth::{retry_secs, Authenticator, Refusal};
use crate::cmd::{self, Failure, Handled};
use crate::error::SessionError;
use crate::hashing::Hashing;
use crate::logging::Wire;
use crate::metrics::Direction;
use crate::pipeline::{Answer, Pipeline};
use crate::reply::CmdError;
use crate::server::Shared;
use crate::shutdown::Shutdown;
use crate::store::{Files, Store};
use crate::transport::Channel;
use crate::users::User;
use crate::Config;

/// Largest frame header read from a peer that has not logged in: a `hello` or an `auth` is a
/// few hundred bytes, and a stranger must not make the daemon buffer more.
const PRE_LOGIN_MAX_HEADER: usize = 4 * 1024;
/// Before login no message has a body: a chunk is refused from its header as too large, before
/// a byte of its body is read.
const PRE_LOGIN_MAX_BODY: usize = 0;
/// How long an upload's next frame may take to arrive before the client is told that the
/// server is still receiving (`progress`, to clients that take it): well under any wait a
/// client would give up after, and rare (a frame at speed takes milliseconds).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Longest part of a client's own words that a refusal before login quotes back, so that the
/// refusal always fits the small frames of that stage.
const PRE_LOGIN_MAX_QUOTE: usize = 256;

/// State of one client connection.
pub struct Session {
    /// Frames to and from the client.
    conn: Connection,
    /// Who is on the other end, for logs.
    pub peer: SocketAddr,
    /// The whole store, until login picks the home.
    store: Store,
    /// The part of the store this session may touch: the user's home, or the whole store when
    /// the daemon serves anonymously. Every path it is given, and every path its errors name,
    /// is relative to it.
    pub files: Files,
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
    /// Its place in the daemon's connection counts, when the accept loop admitted it; given up
    /// with the session, or as soon as a login fails.
    admission: Option<Admission>,
    /// Memory that chunk bodies of all transfers share.
    pub budget: Budget,
    /// Whole-file hashing, shared by every session.
    pub hashing: Arc<Hashing>,
    /// The connection's channel binding (its TLS exporter), which a password login's proofs
    /// include; `None` in plaintext.
    binding: Option<[u8; 32]>,
    /// The key of the client's TLS certificate, if it presented one.
    peer_key: Option<Fingerprint>,
    /// When hello and login must be done by; `None`: `--handshake-timeout` from the start.
    deadline: Option<Instant>,
    /// Pipelined uploads between their `put` and their answer.
    pipeline: Pipeline,
    /// A command the client sent while a download was going out (pipelined): the next to run.
    stashed: Option<Frame>,
    /// The client reads past `progress` frames (capability `progress`): a slow upload is told
    /// that the server still receives.
    progress_frames: bool,
    /// Counts this session in `ftpd_sessions_active` from its login on.
    counted: Option<crate::metrics::Active>,
    /// The rate caps this session's stream draws from, and its throttled time.
    pub meter: Arc<crate::throttle::Meter>,
    /// Every user's account.
    pub accounts: Arc<crate::accounts::Accounts>,
    /// Its place among its user's sessions (`max_sessions`), held until it ends.
    ticket: Option<crate::accounts::Ticket>,
}

/// What a transfer moved, as the dispatcher records it.
#[derive(Debug, Default)]
pub struct Moved {
    /// The file, resolved inside the home (`/photos/2024/beach.jpg` after `cd photos/2024`
    /// and `put beach.jpg`), or as the client named it when it did not resolve.
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
    pub fn new(channel: Channel, peer: SocketAddr, shared: Shared, shutdown: Shutdown) -> Self {
        let meter = crate::throttle::Meter::new(shared.accounts.clone());
        let stream = crate::throttle::Throttled::new(channel.stream, meter.clone());
        let mut conn = Connection::new(Box::new(stream) as protocol::BoxStream);
        conn.codec_mut()
            .set_limits(PRE_LOGIN_MAX_HEADER, PRE_LOGIN_MAX_BODY);
        conn.set_budget(shared.budget.clone());
        Session {
            conn,
            budget: shared.budget,
            hashing: shared.hashing,
            peer,
            files: shared.files.clone(),
            pipeline: Pipeline::new(shared.store.local().cloned()),
            store: shared.store,
            auth: shared.auth,
            user: None,
            cwd: VPath::root(),
            config: shared.config,
            client_max_chunk: protocol::DEFAULT_CHUNK,
            digest: DigestKind::Md5,
            moved: Moved::default(),
            shutdown,
            admission: None,
            binding: channel.binding,
            peer_key: channel.peer_key,
            deadline: None,
            stashed: None,
            progress_frames: false,
            counted: None,
            meter,
            accounts: shared.accounts,
            ticket: None,
        }
    }

    /// Hello and login must be done by `deadline` (which the TLS handshake shared).
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The session holds `admission` until it ends, or its login fails.
    pub fn admitted(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Runs the session to its end and logs why it ended.
    pub async fn run(mut self) {
        // One limit for hello and login together: each wait gets what is left of it.
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + self.config.handshake_timeout);
        let outcome = match self.handshake(deadline).await {
            Ok(()) => match self.authenticate(deadline).await {
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
        info!(peer = %self.peer, reason = %Wire(&reason), "connection closed");
    }

    async fn handshake(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let hello = self.recv_stranger(left(deadline), "hello").await?;
        let hello = match hello {
            Ok(Frame {
                message: Message::Hello(h),
                ..
            }) => h,
            // A hello this server cannot take (a digest it does not know, a field missing):
            // say what.
            Err(rejected) if rejected.kind == "hello" => {
                let refused = CmdError::Unsupported {
                    kind: rejected.kind,
                    reason: clip(&rejected.reason, PRE_LOGIN_MAX_QUOTE),
                };
                return Err(SessionError::Refused(refused.reply()));
            }
            _ => return Err(SessionError::Protocol("expected hello first".into())),
        };
        debug!(peer = %self.peer, agent = %Wire(&hello.agent), "hello");
        let agreed = handshake::answer(&hello, handshake::SUPPORTED)
            .map_err(|e| SessionError::Refused(CmdError::from(e).reply()))?;
        self.client_max_chunk = agreed.max_chunk;
        self.digest = agreed.digest;
        self.progress_frames = hello.capabilities.iter().any(|c| c == capability::PROGRESS);
        let mut capabilities = vec![
            capability::RESUME.into(),
            capability::FILES.into(),
            capability::PIPELINE.into(),
            capability::DAMAGED.into(),
            capability::DF.into(),
        ];
        if self.auth.users().is_some() {
            capabilities.push(capability::AUTH_SCRAM_SHA256.into());
            capabilities.push(capability::AUTH_KEY.into());
        } else {
            // Serving anonymously, hello is the login; done before the answer, so that a
            // client that has it is no stranger any more.
            self.logged_in();
            crate::metrics::login(crate::metrics::LoginResult::Ok, "anonymous");
        }
        self.send(Message::Hello(Hello {
            version: agreed.version,
            min_version: None,
            agent: concat!("ftpd/", env!("CARGO_PKG_VERSION")).into(),
            capabilities,
            max_chunk: protocol::MAX_BODY as u32,
            digest: self.digest,
        }))
        .await
    }

    /// With users configured: a key login (the TLS client certificate is one of the user's
    /// keys), or a SCRAM-SHA-256 password login bound to the TLS connection, in which the
    /// server proves it holds the user's verifier. Nothing but the login's messages is
    /// accepted until it succeeds, and a failure closes the connection.
    async fn authenticate(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let Some(users) = self.auth.users() else {
            return Ok(()); // anonymous: the hello was the login
        };
        let range = AddrRange::of(self.peer.ip());
        let mut auth = self.recv_auth(deadline).await?;
        let (user, scram_final) = match self.auth.by_key(&users, range, &auth.user, self.peer_key) {
            Some(Ok(user)) => (user, None),
            Some(Err(refusal)) => return Err(self.refused(&auth.user, "key", refusal)),
            None => {
                // A password login: refused unchecked while the range or the name serves a
                // penalty, before the salt is shown.
                if let Some(refusal) = self.auth.refused(range, &auth.user) {
                    return Err(self.refused(&auth.user, "password", refusal));
                }
                if auth.scram.is_none() {
                    // No key of the user's: a password, then (asking costs the client nothing
                    // and says nothing about the name).
                    self.send(Message::AuthPassword).await?;
                    let again = self.recv_auth(deadline).await?;
                    if again.user != auth.user || again.scram.is_none() {
                        return Err(SessionError::Refused(
                            CmdError::BadAuth {
                                reason: "the second auth must give a password for the same user"
                                    .into(),
                            }
                            .reply(),
                        ));
                    }
                    auth = again;
                }
                let first = auth.scram.as_deref().unwrap_or_default();
                let (user, answer) = self
                    .scram(&users, range, &auth.user, first, deadline)
                    .await?;
                (user, Some(answer))
            }
        };
        let home = self.store.home(&user.home, &user.name).map_err(|e| {
            let home = user.home.to_string();
            warn!(peer = %self.peer, user = %Wire(&user.name), home = %Wire(&home), "cannot open home: {e}");
            SessionError::Internal("cannot open the user's home".into())
        })?;
        let ticket = self.accounts.login(&user).await.map_err(|why| {
            let why = why.to_string();
            info!(peer = %self.peer, user = %Wire(&user.name), reason = %Wire(&why), "login refused");
            SessionError::Refused(ErrorReply::new(ErrorCode::Busy, why))
        })?;
        self.meter.set_account(ticket.account().clone());
        self.ticket = Some(ticket);
        self.logged_in();
        let method = if scram_final.is_some() {
            "password"
        } else {
            "key"
        };
        crate::metrics::login(crate::metrics::LoginResult::Ok, method);
        self.send(Message::AuthOk(AuthOk { scram: scram_final }))
            .await?;
        let home_path = user.home.to_string();
        info!(peer = %self.peer, user = %Wire(&user.name), home = %Wire(&home_path), method, "authenticated");
        self.files = home;
        self.user = Some(user);
        Ok(())
    }

    /// The next `auth`; anything else ends the login.
    async fn recv_auth(&mut self, deadline: Instant) -> Result<protocol::Auth, SessionError> {
        match self.recv_stranger(left(deadline), "authentication").await? {
            Ok(Frame {
                message: Message::Auth(auth),
                ..
            }) => Ok(auth),
            // An `auth` whose fields do not parse.
            Err(rejected) if rejected.kind == "auth" => {
                let reason = clip(&rejected.reason, PRE_LOGIN_MAX_QUOTE);
                Err(SessionError::Refused(CmdError::BadAuth { reason }.reply()))
            }
            _ => Err(SessionError::Refused(ErrorReply::new(
                ErrorCode::AuthRequired,
                "authenticate first: this server has users",
            ))),
        }
    }

    /// SCRAM's exchange after the client-first-message `first`: the user, and the
    /// server-final-message that proves the server holds the verifier.
    async fn scram(
        &mut self,
        users: &crate::users::Users,
        range: AddrRange,
        user: &str,
        first: &str,
        deadline: Instant,
    ) -> Result<(Arc<User>, String), SessionError> {
        let bad = |e: scram::ScramError| {
            SessionError::Refused(
                CmdError::BadAuth {
                    reason: e.to_string(),
                }
                .reply(),
            )
        };
        let first = scram::client_first(first, self.binding.as_ref()).map_err(bad)?;
        if first.user != user {
            return Err(bad(scram::ScramError::Malformed(
                "the SCRAM user name is not the auth's",
            )));
        }
        let (salt, iterations) = self.auth.salt(users, user);
        let (server, server_first) =
            scram::Server::start(first, &salt, iterations, &scram::nonce(), self.binding);
        self.send(Message::AuthContinue(Scram {
            scram: server_first,
        }))
        .await?;
        let last = match self.recv_stranger(left(deadline), "authentication").await? {
            Ok(Frame {
                message: Message::AuthFinal(last),
                ..
            }) => last.scram,
            _ => {
                return Err(SessionError::Refused(ErrorReply::new(
                    ErrorCode::AuthRequired,
                    "expected auth_final",
                )))
            }
        };
        let attempt = self.auth.by_password(users, range, user, |verifier| {
            match server.finish(&last, verifier) {
                Ok(answer) => Some(answer),
                Err(e) => {
                    debug!(peer = %self.peer, "SCRAM refused: {e}");
                    None
                }
            }
        });
        attempt.map_err(|refusal| self.refused(user, "password", refusal))
    }

    /// A refused login: every slot is given up before the answer (and before the log line,
    /// which a watcher may act on): the penalty is kept by the authenticator, and a failed
    /// login waiting it out would only hold a slot a real user needs.
    fn refused(&mut self, user: &str, method: &'static str, refusal: Refusal) -> SessionError {
        self.admission = None;
        let result = match refusal {
            Refusal::Failed => crate::metrics::LoginResult::Failed,
            Refusal::User(_) | Refusal::Range(_) => crate::metrics::LoginResult::Throttled,
        };
        crate::metrics::login(result, method);
        SessionError::Refused(self.refusal(user, refusal))
    }

    /// Logs a refused login and says what to answer: a failure plainly, a penalty with when
    /// to try again. Unknown users and wrong secrets get the same answer, penalised alike.
    fn refusal(&self, user: &str, refusal: Refusal) -> ErrorReply {
        match refusal {
            Refusal::Failed => {
                warn!(peer = %self.peer, user = %Wire(user), "authentication failed");
                ErrorReply::new(ErrorCode::AuthFailed, "authentication failed")
            }
            Refusal::User(wait) => {
                let secs = retry_secs(wait);
                warn!(peer = %self.peer, user = %Wire(user), retry_in_s = secs,
                      "login refused unchecked: recent failures for this user name");
                ErrorReply::new(
                    ErrorCode::AuthFailed,
                    format!(
                        "authentication failed: too many failed logins for this user name; \
                         try again in {secs} s"
                    ),
                )
            }
            Refusal::Range(wait) => {
                let secs = retry_secs(wait);
                warn!(peer = %self.peer, user = %Wire(user), retry_in_s = secs,
                      "login refused unchecked: recent failures from this address range");
                ErrorReply::new(
                    ErrorCode::Busy,
                    format!(
                        "server busy: too many failed logins from your network; \
                         try again in {secs} s"
                    ),
                )
            }
        }
    }

    /// The client has logged in (or, serving anonymously, said hello): the protocol's frame
    /// caps from now on, and its place among strangers given up.
    fn logged_in(&mut self) {
        self.conn
            .codec_mut()
            .set_limits(protocol::MAX_HEADER, protocol::MAX_BODY);
        if let Some(admission) = &mut self.admission {
            admission.logged_in();
        }
        self.counted = Some(crate::metrics::Active::session());
    }

    async fn command_loop(&mut self) -> Result<(), SessionError> {
        loop {
            while let Some(answer) = self.pipeline.next_answer() {
                self.answer(answer).await?;
            }
            let incoming = match self.stashed.take() {
                Some(frame) => Ok(frame),
                None => {
                    let idle = self.config.idle_timeout;
                    let busy = self.pipeline.busy();
                    let room = self.pipeline.has_room();
                    tokio::select! {
                        biased;
                        _ = self.shutdown.recv() => return Err(SessionError::Shutdown),
                        moved = self.pipeline.progress(), if busy => {
                            moved?;
                            continue;
                        }
                        next = self.conn.recv(idle), if room => {
                            next.map_err(|e| SessionError::connection(e, "command"))?
                        }
                    }
                }
            };
            let flow = match incoming {
                Ok(frame) => self.dispatch(frame.message).await?,
                Err(rejected) => {
                    self.flush_pipeline().await?;
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

    /// Answers every pipelined upload still in flight, in order: before any other command
    /// runs, so that replies keep the order of the commands.
    async fn flush_pipeline(&mut self) -> Result<(), SessionError> {
        loop {
            while let Some(answer) = self.pipeline.next_answer() {
                self.answer(answer).await?;
            }
            if self.pipeline.idle() {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = self.shutdown.recv() => return Err(SessionError::Shutdown),
                moved = self.pipeline.progress() => moved?,
            }
        }
    }

    /// Sends a pipelined upload's answer and records it.
    async fn answer(&mut self, answer: Answer) -> Result<(), SessionError> {
        let Answer {
            moved,
            started,
            reply,
        } = answer;
        let (frame, outcome) = match reply {
            Ok(eof) => (Message::Stored(eof), Ok(())),
            Err(e) => {
                let reply = e.reply();
                (Message::Error(reply.clone()), Err(reply))
            }
        };
        let sent = self.send(frame).await;
        self.record("put", started, outcome, &moved);
        sent
    }

    /// Runs one command, then answers and records it.
    async fn dispatch(&mut self, message: Message) -> Result<Flow, SessionError> {
        let started = Instant::now();
        self.moved = Moved::default();
        self.recheck_user()?;
        let small_upload = matches!(&message, Message::Put(p) if p.pipelined && p.size <= crate::pipeline::SMALL)
            && self.files.local().is_some();
        if small_upload {
            if let Message::Put(req) = message {
                cmd::put::pipelined(self, req, started).await?;
            }
            return Ok(Flow::Continue);
        }
        if !matches!(message, Message::Cancel) {
            self.flush_pipeline().await?;
        }
        let out_of_place = |why| Err(Failure::Refused(CmdError::OutOfPlace(why)));
        let (op, handled) = match message {
            Message::Put(req) => ("put", cmd::put::run(self, req).await),
            Message::Get(req) => ("get", cmd::get::run(self, req).await),
            Message::List(req) => ("list", cmd::list::run(self, req).await),
            Message::Stat(req) => ("stat", cmd::stat::run(self, req).await),
            Message::Df => ("df", cmd::df::run(self).await),
            Message::Cd(req) => ("cd", cmd::cd::run(self, req).await),
            Message::Pwd => ("pwd", cmd::pwd::run(self).await),
            Message::Mkdir(req) => ("mkdir", cmd::mkdir::run(self, req).await),
            Message::Rm(req) => ("rm", cmd::rm::run(self, req).await),
            Message::Rmdir(req) => ("rmdir", cmd::rmdir::run(self, req).await),
            Message::Rename(req) => ("rename", cmd::rename::run(self, req).await),
            Message::Damaged(req) => ("damaged", cmd::damaged::run(self, req).await),
            Message::Bye => return Ok(Flow::Quit),
            // A cancel that crossed the end of a download on the wire: nothing left to stop,
            // and nothing to answer.
            Message::Cancel => return Ok(Flow::Continue),
            Message::Auth(_) | Message::AuthFinal(_) => {
                ("auth", out_of_place("already authenticated"))
            }
            Message::Hello(_) => ("hello", out_of_place("hello was already exchanged")),
            Message::Chunk(_) | Message::Eof(_) | Message::Abort(_) => {
                ("transfer", out_of_place("no transfer in progress"))
            }
            Message::PutReady(_)
            | Message::GetReady(_)
            | Message::AuthPassword
            | Message::AuthContinue(_)
            | Message::AuthOk(_)
            | Message::Listing(_)
            | Message::ListEnd(_)
            | Message::StatReply(_)
            | Message::DfReply(_)
            | Message::Cwd(_)
            | Message::Ok
            | Message::Stored(_)
            | Message::Progress
            | Message::Error(_) => (
                "server-message",
                out_of_place("that message is sent by servers, not clients"),
            ),
        };
        self.conclude(op, started, handled).await
    }

    /// Holds a logged-in session to the users in force now, not those of its login: a user
    /// removed, or whose verifier, keys or home changed (a reload revoking them), is logged out before
    /// the command runs; one made read-only is refused writes from this command on.
    fn recheck_user(&mut self) -> Result<(), SessionError> {
        let Some(user) = &self.user else {
            // Anonymous: fine while the daemon has no users; a reload that gave it some ends
            // the anonymous sessions still open.
            if self.auth.users().is_some() {
                warn!(peer = %self.peer, "the daemon has users now; anonymous session ended");
                return Err(SessionError::Refused(ErrorReply::new(
                    ErrorCode::AuthRequired,
                    "this server has users now: log in",
                )));
            }
            return Ok(());
        };
        let now = self.auth.users();
        let current = now.as_ref().and_then(|users| users.get(&user.name));
        match current {
            Some(c) if Arc::ptr_eq(c, user) => Ok(()),
            Some(c) if c.same_login(user) => {
                self.user = Some(c.clone());
                Ok(())
            }
            _ => {
                warn!(peer = %self.peer, user = %Wire(&user.name), "account changed or removed; session ended");
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
        let moved = std::mem::take(&mut self.moved);
        self.record(op, started, outcome, &moved);
        if matches!(op, "put" | "mkdir" | "rm" | "rmdir" | "rename") {
            if let Some(ticket) = &self.ticket {
                self.accounts.check_quota(ticket.account());
            }
        }
        result.map(|()| Flow::Continue)
    }

    /// One log line per command: transfers at INFO (like vsftpd's xferlog); other commands at
    /// DEBUG when they succeed. A refusal is logged by what it tells the admin: the client's
    /// doing (not found, denied, read-only, quota, too large) at INFO, a failed login at WARN,
    /// a fault of the server's own (disk full, an I/O error, a bug) at ERROR.
    fn record(
        &self,
        op: &'static str,
        started: Instant,
        outcome: Result<(), ErrorReply>,
        moved: &Moved,
    ) {
        let elapsed = started.elapsed();
        let code = match &outcome {
            Ok(()) => "ok",
            Err(reply) => reply.code.as_str(),
        };
        crate::metrics::command(op, code);
        match op {
            "put" => crate::metrics::transfer(Direction::Upload, code, moved.bytes, elapsed),
            "get" => crate::metrics::transfer(Direction::Download, code, moved.bytes, elapsed),
            _ => {}
        }
        let severity = match &outcome {
            Ok(()) => Severity::Done,
            Err(reply) => Severity::of(reply.code),
        };
        let user = Wire(self.user.as_ref().map_or("-", |u| u.name.as_str()));
        let peer = &self.peer;
        let detail = match &outcome {
            Ok(()) => "ok".to_owned(),
            Err(reply) => reply.to_string(),
        };
        if !matches!(op, "get" | "put") {
            macro_rules! command {
                ($level:ident, $msg:literal) => {
                    $level!(%peer, %user, op, outcome = code,
                        detail = %Wire(&detail), $msg)
                };
            }
            match severity {
                Severity::Done => debug!(%peer, %user, op, outcome = code, "command"),
                Severity::Refused => command!(info, "refused"),
                Severity::Auth => command!(warn, "refused"),
                Severity::Fault => command!(error, "failed"),
            }
            return;
        }
        // Numbers, not strings, in the JSON format: rounded here rather than formatted.
        let secs = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
        let rate = if elapsed.as_secs_f64() > 0.0 {
            ((moved.bytes as f64 / elapsed.as_secs_f64() / 1e6) * 10.0).round() / 10.0
        } else {
            0.0
        };
        let digest = moved
            .digest
            .map_or_else(|| "-".into(), |d| format!("{}:{d}", d.kind().key()));
        macro_rules! transfer {
            ($level:ident) => {
                $level!(
                    target: "ftpd::xfer",
                    %peer,
                    %user,
                    op,
                    path = %Wire(moved.path.as_deref().unwrap_or("-")),
                    bytes = moved.bytes,
                    secs,
                    mb_per_s = rate,
                    digest = %digest,
                    outcome = %Wire(&detail),
                    "transfer"
                )
            };
        }
        match severity {
            Severity::Done | Severity::Refused => transfer!(info),
            Severity::Auth => transfer!(warn),
            Severity::Fault => transfer!(error),
        }
    }

    /// Sends one frame, failing the session if the client does not take it in time.
    pub async fn send(&mut self, frame: impl Into<Frame>) -> Result<(), SessionError> {
        let limit = self.config.stall_timeout;
        self.conn
            .send(frame, limit)
            .await
            .map_err(|e| SessionError::connection(e, "progress sending to the client"))
    }

    /// Sends a chunk like [`Session::send`] and gives its body back for the next one.
    pub async fn send_chunk(&mut self, frame: Frame) -> Result<bytes::Bytes, SessionError> {
        let limit = self.config.stall_timeout;
        self.conn
            .send_returning_body(frame, limit)
            .await
            .map_err(|e| SessionError::connection(e, "progress sending to the client"))
    }

    /// [`Session::recv`] before login, when a newcomer from a less crowded address range may
    /// take this connection's place (see `admission`): then it ends with `busy`.
    async fn recv_stranger(
        &mut self,
        within: Duration,
        waiting_for: &'static str,
    ) -> Result<Incoming, SessionError> {
        // Before login a wait is a deadline, not a limit on silence: a stranger dripping its
        // hello a byte at a time must not stretch it.
        let Some(admission) = &self.admission else {
            return self
                .conn
                .recv_by(within)
                .await
                .map_err(|e| SessionError::connection(e, waiting_for));
        };
        tokio::select! {
            biased;
            () = admission.evicted() => Err(SessionError::Refused(ErrorReply::new(
                ErrorCode::Busy,
                "server busy: too many connections not logged in yet; try again in a moment",
            ))),
            next = self.conn.recv_by(within) => {
                next.map_err(|e| SessionError::connection(e, waiting_for))
            }
        }
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

    /// The next frame of an upload, within the stall timeout, telling a client that takes
    /// them (`progress`) every [`PROGRESS_EVERY`] that bytes still come in: under a
    /// low rate cap one chunk takes longer than the client waits in silence, and after its
    /// last chunk the client waits for `stored` while the server still reads what the network
    /// holds. The stall timeout still counts from when bytes last came in.
    pub async fn next_upload_frame(&mut self) -> Result<Frame, SessionError> {
        if !self.progress_frames {
            return self.next_in_transfer().await;
        }
        let stall = self.config.stall_timeout;
        let since = tokio::time::Instant::now();
        let mut told = since;
        loop {
            let waiting = self.recv(stall, "data from the client");
            if let Ok(item) = tokio::time::timeout(PROGRESS_EVERY.min(stall), waiting).await {
                return incoming_in_transfer(item?);
            }
            // Told only while bytes come in: a client whose bytes stopped on the way must see
            // the silence, to give up on the link and resume on a new one.
            let last = self.conn.last_read().max(since);
            if last > told {
                self.send(Message::Progress).await?;
                told = tokio::time::Instant::now();
            } else if last.elapsed() >= stall {
                return Err(SessionError::Timeout("data from the client"));
            }
        }
    }

    /// A frame the client has already sent, if any, without waiting (a download's `cancel`).
    pub fn poll_incoming(&mut self) -> Option<Result<Frame, SessionError>> {
        if self.stashed.is_some() {
            return None;
        }
        match self.conn.try_recv()? {
            Err(e) => Some(Err(SessionError::connection(e, "data from the client"))),
            Ok(item) => Some(incoming_in_transfer(item)),
        }
    }

    /// Adds a pipelined upload that `job` writes (see [`crate::pipeline`]).
    pub fn pipeline_push(
        &mut self,
        moved: Moved,
        started: Instant,
        job: tokio::task::JoinHandle<crate::pipeline::Written>,
    ) {
        self.pipeline.push(moved, started, job);
    }

    /// Adds a pipelined upload refused before it was written: answered in its turn.
    pub fn pipeline_refuse(&mut self, moved: Moved, started: Instant, why: CmdError) {
        self.pipeline.refuse(moved, started, why);
    }

    /// Keeps a command the client pipelined behind a download, to run once the download is
    /// over; no further frame is read until then.
    pub fn stash(&mut self, frame: Frame) {
        self.stashed = Some(frame);
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

/// What is left of the time until `deadline` (nothing, once it has passed).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// `s`, cut to at most `max` bytes at a character boundary, saying so when it was cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

fn incoming_in_transfer(item: Incoming) -> Result<Frame, SessionError> {
    item.map_err(|r| {
        SessionError::Protocol(format!("unexpected {:?} message in a transfer", r.kind))
    })
}

/// How loud a command's outcome is in the log.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Severity {
    /// It succeeded.
    Done,
    /// The client asked for something the server may not or cannot do: INFO.
    Refused,
    /// A login failed or was missing: WARN, as for logins.
    Auth,
    /// The server failed at its own job (disk full, I/O, a bug): ERROR, for the admin to act.
    Fault,
}

impl Severity {
    fn of(code: ErrorCode) -> Severity {
        match code {
            ErrorCode::NoSpace | ErrorCode::Io | ErrorCode::Internal | ErrorCode::Damaged => {
                Severity::Fault
            }
            ErrorCode::AuthRequired | ErrorCode::AuthFailed | ErrorCode::BadAuth => Severity::Auth,
            ErrorCode::NotFound
            | ErrorCode::Exists
            | ErrorCode::Denied
            | ErrorCode::BadRequest
            | ErrorCode::ChecksumMismatch
            | ErrorCode::SizeMismatch
            | ErrorCode::PastEnd
            | ErrorCode::Cancelled
            | ErrorCode::PrefixMismatch
            | ErrorCode::IsDirectory
            | ErrorCode::NotADirectory
            | ErrorCode::NotEmpty
            | ErrorCode::TooLarge
            | ErrorCode::VersionMismatch
            | ErrorCode::Unsupported
            | ErrorCode::Busy
            | ErrorCode::Timeout
            | ErrorCode::TlsRequired
            | ErrorCode::Unknown => Severity::Refused,
        }
    }
}
