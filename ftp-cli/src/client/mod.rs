//! The client API, without terminal I/O: [`Client`], its handshake, and the one-request calls.

use std::time::Duration;

use protocol::{
    handshake, BoxStream, Connection, DigestKind, Entry, Frame, FrameCodec, Hello, Incoming,
    Message, Mkdir, PathArg, Rename, Stat, StatReply, Stream, MIN_VERSION, VERSION,
};
use tokio_util::sync::CancellationToken;

use crate::error::{ClientError, Result};

mod auth;
mod connect;
mod download;
mod localfs;
mod pipeline;
mod transfer;
mod upload;

pub use auth::Credentials;
pub use localfs::{beneath, part_path, safe_name};
pub use pipeline::{Cut, Job, Jobs, SMALL};
pub use transfer::{NoProgress, Progress, Summary, TransferOptions};

/// Port used when the address names none.
pub const DEFAULT_PORT: u16 = 2121;
/// Chunks in flight between the disk thread and the socket.
const PIPELINE_DEPTH: usize = 4;
/// Most entries one listing may hold: a server that sends more is refused, so it cannot
/// exhaust the client's memory (a million entries cost the client about 60 MB besides their
/// names).
pub const MAX_LISTING_ENTRIES: usize = 1_000_000;
/// Most bytes of names one listing may hold, for the same reason: a name may be as long as a
/// frame header (64 KiB), so the entry cap alone would let a listing take 64 GB. 64 MiB is 67
/// bytes a name for a full million.
pub const MAX_LISTING_NAME_BYTES: usize = 64 << 20;

/// An open, greeted connection to a server.
pub struct Client {
    /// Frames to and from the server.
    conn: Connection,
    /// What the server said about itself in its hello.
    server: Hello,
    /// Longest the client waits for any one frame.
    timeout: Duration,
    /// `host:port` as the user gave it, for messages.
    addr: String,
    /// Set to stop the transfer in progress cleanly (the user pressed Ctrl-C).
    cancel: CancellationToken,
    /// Set when Ctrl-C gave up on a request the server was still answering (checking a long
    /// prefix): its answer may yet arrive, in the middle of the next exchange, so the
    /// connection is not reused.
    out_of_step: bool,
    /// The connection's channel binding (its TLS exporter), which a password login's proofs
    /// include; `None` in plaintext.
    binding: Option<[u8; 32]>,
}

/// Why the hello exchange failed: the server's reason, or an error of its own kind.
enum Refusal {
    Reason(String),
    Error(ClientError),
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
    /// Greets and logs in over a stream that is already set up (dialled and secured, or an
    /// in-memory pipe to a daemon in the same process); `addr` names the server in messages,
    /// `binding` is the connection's channel binding, which the login's proofs include.
    pub async fn over(
        stream: impl Stream,
        addr: &str,
        timeout: Duration,
        creds: Option<&Credentials>,
        digest: DigestKind,
        binding: Option<[u8; 32]>,
    ) -> Result<Client> {
        let target = addr.to_owned();
        let fail = |reason: String| ClientError::Connect {
            addr: target.clone(),
            reason,
        };
        // Downloads arrive in chunks of up to a MiB: a larger read buffer takes them in fewer
        // reads.
        let stream: BoxStream = Box::new(stream);
        let conn = Connection::with_codec(stream, FrameCodec::new(), 256 * 1024);
        let mut client = Client {
            conn,
            server: Hello {
                version: VERSION,
                min_version: None,
                agent: String::new(),
                capabilities: vec![],
                max_chunk: protocol::DEFAULT_CHUNK,
                digest: DigestKind::Md5,
            },
            timeout,
            addr: target.clone(),
            cancel: CancellationToken::new(),
            out_of_step: false,
            binding,
        };
        client.hello(digest).await.map_err(|e| match e {
            Refusal::Reason(reason) => fail(reason),
            Refusal::Error(e) => e,
        })?;
        client.login(creds).await?;
        Ok(client)
    }

    /// Exchanges hellos: the server must choose a protocol version we offered and use
    /// `digest`. The error is the reason the connection cannot be used, or the link failing
    /// under the exchange.
    async fn hello(&mut self, digest: DigestKind) -> Result<(), Refusal> {
        let ours = Hello {
            version: VERSION,
            min_version: Some(MIN_VERSION),
            agent: concat!("ftp-cli/", env!("CARGO_PKG_VERSION")).into(),
            capabilities: vec![
                protocol::capability::RESUME.into(),
                protocol::capability::PROGRESS.into(),
            ],
            max_chunk: protocol::MAX_BODY as u32,
            digest,
        };
        // A link that fails under the hellos (dropped, or a TLS record damaged on the way, which
        // TLS reports as a broken connection) is lost like one under any request: retried,
        // where a server's refusal is not.
        self.send(Message::Hello(ours.clone()))
            .await
            .map_err(Refusal::Error)?;
        let addr = self.addr.clone();
        let not_ftpd = || {
            Refusal::Error(ClientError::NotProtocol(format!(
                "{addr} is not an ftpd server (its answer is not an ftpd frame)"
            )))
        };
        match self.recv().await {
            Ok(Frame {
                message: Message::Hello(h),
                ..
            }) => {
                let agreed = handshake::check_answer(&ours, &h)
                    .map_err(|e| Refusal::Reason(e.to_string()))?;
                self.server = Hello {
                    max_chunk: agreed.max_chunk,
                    ..h
                };
                Ok(())
            }
            Ok(Frame {
                message: Message::Error(e),
                ..
            }) if e.code == protocol::ErrorCode::TlsRequired => {
                Err(Refusal::Error(ClientError::NotProtocol(format!(
                    "{} speaks TLS only: connect without --insecure-plaintext",
                    self.addr
                ))))
            }
            // Refused before the hello was read (too many connections, a login penalty):
            // retried like any busy server, as the same refusal before TLS is.
            Ok(Frame {
                message: Message::Error(e),
                ..
            }) if e.code == protocol::ErrorCode::Busy => {
                Err(Refusal::Error(ClientError::Remote(e)))
            }
            Ok(Frame {
                message: Message::Error(e),
                ..
            }) => Err(Refusal::Reason(e.message)),
            Ok(other) => Err(Refusal::Reason(format!(
                "unexpected greeting {:?}",
                other.message
            ))),
            // Bytes that do not form a frame before the first hello: not ftpd.
            Err(ClientError::Protocol(_)) => Err(not_ftpd()),
            Err(e) => Err(Refusal::Error(e)),
        }
    }

    /// A fresh token that stops the next transfer cleanly when cancelled: an upload is aborted
    /// (its staged bytes stay resumable), a download stopped and drained; the connection stays
    /// in step either way.
    pub fn cancel_token(&mut self) -> CancellationToken {
        self.cancel = CancellationToken::new();
        self.cancel.clone()
    }

    /// Whether the connection still looks open: the server has not closed it (an idle timeout,
    /// a restart) nor sent anything unasked, and no answer is still owed to a request given up
    /// on. Checked before reusing a connection.
    pub fn is_alive(&mut self) -> bool {
        !self.out_of_step && self.conn.try_recv().is_none()
    }

    /// Says goodbye; the server closes its side.
    pub async fn bye(mut self) {
        let _ = self.send(Message::Bye).await;
    }

    async fn send(&mut self, frame: impl Into<Frame>) -> Result<()> {
        Ok(self.conn.send(frame, self.timeout).await?)
    }

    /// The next frame but `progress` (the server telling us it still receives our upload:
    /// its bytes are what the wait needed).
    async fn recv(&mut self) -> Result<Frame> {
        loop {
            let frame = known(self.conn.recv(self.timeout).await?)?;
            if !matches!(frame.message, Message::Progress) {
                return Ok(frame);
            }
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
        self.list_with(protocol::List::of(path)).await
    }

    /// Like [`Client::list`], each file with the digest the server recorded at upload where it
    /// holds one (of the session's digest kind, for the file as it is now).
    pub async fn list_digests(&mut self, path: &str) -> Result<Vec<Entry>> {
        let digests = self.pipelines();
        let req = protocol::List {
            digests,
            ..protocol::List::of(path)
        };
        let mut entries = self.list_with(req).await?;
        let kind = self.server.digest;
        for e in &mut entries {
            // The server's word, of the session's kind only.
            e.digest = e.digest.filter(|d| d.kind() == kind);
        }
        Ok(entries)
    }

    async fn list_with(&mut self, req: protocol::List) -> Result<Vec<Entry>> {
        let path = req.path.clone();
        self.send(Message::List(req)).await?;
        let mut entries = Vec::new();
        let mut name_bytes = 0usize;
        loop {
            match self.recv().await?.message {
                Message::Listing(batch) => {
                    name_bytes += batch.entries.iter().map(|e| e.name.len()).sum::<usize>();
                    let over = if entries.len() + batch.entries.len() > MAX_LISTING_ENTRIES {
                        format!("more than {MAX_LISTING_ENTRIES} entries")
                    } else if name_bytes > MAX_LISTING_NAME_BYTES {
                        format!("more than {MAX_LISTING_NAME_BYTES} bytes of names")
                    } else {
                        entries.extend(batch.entries);
                        continue;
                    };
                    // The rest of the listing is still on its way: the connection is not
                    // reused.
                    self.out_of_step = true;
                    return Err(ClientError::Limit(format!(
                        "the server's listing of {path} holds {over}, the client's cap"
                    )));
                }
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

    /// The space and files the user (and the root) use, against their limits; `None` from a
    /// server without the `df` capability.
    pub async fn df(&mut self) -> Result<Option<protocol::DfReply>> {
        let has = self
            .server
            .capabilities
            .iter()
            .any(|c| c == protocol::capability::DF);
        if !has {
            return Ok(None);
        }
        self.send(Message::Df).await?;
        match self.recv().await?.message {
            Message::DfReply(r) => Ok(Some(r)),
            Message::Error(e) => Err(ClientError::Remote(e)),
            other => Err(unexpected("df_reply", &other)),
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
}

/// A frame the server sent, refusing one this version does not know: inside an exchange the
/// client cannot skip it.
fn known(item: Incoming) -> Result<Frame> {
    item.map_err(|r| ClientError::Protocol(format!("server sent an unknown {:?} message", r.kind)))
}

fn unexpected(wanted: &str, got: &Message) -> ClientError {
    ClientError::Protocol(format!("expected {wanted}, server sent {got:?}"))
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
}
