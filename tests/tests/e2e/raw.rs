//! A blocking peer that speaks the protocol's frames by hand, including ones no real client would
//! send: `Raw::connect(addr).hello()`, then `send`, `recv` and `expect_*`.
//!
//! ```text
//! +------------------+--------------------------+--------------------------+
//! | header length    | header                   | body (chunk frames only) |
//! | u32, big-endian  | JSON, `length` bytes     | `len` bytes              |
//! +------------------+--------------------------+--------------------------+
//! ```

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use protocol::scram;
use protocol::{capability, ChunkHeader, Digest, ErrorCode, ErrorReply, Get, Hello, Message};
use protocol::{Put, PutReady, VERSION};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long connecting, or one frame from the peer, may take unless a test says otherwise.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One connection, one frame at a time. Every wait is bounded by the connection's timeout.
pub struct Raw {
    /// The frames' stream: TLS (the default) or the socket itself.
    stream: Wire,
    /// The socket, with read and write timeouts set: for timeouts and shutdowns.
    tcp: TcpStream,
    /// The TLS channel binding a password login's proofs include (`None` in plaintext).
    binding: Option<[u8; 32]>,
}

/// What frames travel over.
enum Wire {
    Plain(TcpStream),
    /// A refusal the daemon sent in the clear before TLS: what the handshake read, then the
    /// socket.
    Refused(io::Chain<io::Cursor<Vec<u8>>, TcpStream>),
    Client(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Server(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Refused(s) => s.read(buf),
            Wire::Client(s) => s.read(buf),
            Wire::Server(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Refused(s) => s.get_mut().1.write(buf),
            Wire::Client(s) => s.write(buf),
            Wire::Server(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Refused(_) => Ok(()),
            Wire::Client(s) => s.flush(),
            Wire::Server(s) => s.flush(),
        }
    }
}

/// A plaintext peer over an accepted or dialled socket (`--insecure-plaintext` daemons).
impl From<TcpStream> for Raw {
    fn from(stream: TcpStream) -> Raw {
        Raw {
            tcp: stream.try_clone().expect("cannot clone the socket"),
            stream: Wire::Plain(stream),
            binding: None,
        }
        .within(TIMEOUT)
    }
}

impl Raw {
    /// Connects over TLS from the default local address (127.0.0.1 for a daemon on it).
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::tls_client(Raw::dial(addr))
    }

    /// Connects in plaintext, to a daemon started with `--insecure-plaintext`.
    #[track_caller]
    pub fn plain(addr: SocketAddr) -> Raw {
        Raw::from(Raw::dial(addr))
    }

    #[track_caller]
    fn dial(addr: SocketAddr) -> TcpStream {
        TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"))
    }

    /// Runs the TLS handshake as a client over `tcp` (any server key is accepted: this peer
    /// tests the protocol, not the client's trust), and returns the peer ready for frames. A
    /// daemon that refuses the connection does so in the clear before TLS: the peer then reads
    /// that refusal like any frame.
    #[track_caller]
    pub fn tls_client(tcp: TcpStream) -> Raw {
        let mut conn = rustls::ClientConnection::new(
            crate::tls::any_server_config(),
            "localhost".try_into().unwrap(),
        )
        .unwrap();
        let sock = tcp.try_clone().expect("cannot clone the socket");
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut sniff = Sniff {
            sock,
            first: Vec::new(),
        };
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sniff) {
                let Sniff { sock, first } = sniff;
                assert!(
                    !first.is_empty() && !protocol::tls::looks_like_tls(&first),
                    "TLS handshake failed: {e}"
                );
                return Raw {
                    stream: Wire::Refused(io::Cursor::new(first).chain(sock)),
                    tcp,
                    binding: None,
                };
            }
        }
        let sock = sniff.sock;
        let binding = Some(protocol::tls::channel_binding(&conn).unwrap());
        Raw {
            stream: Wire::Client(Box::new(rustls::StreamOwned::new(conn, sock))),
            tcp,
            binding,
        }
        .within(TIMEOUT)
    }

    /// Runs the TLS handshake as a server over an accepted `tcp`, with the tests' own
    /// certificate ([`crate::tls::TestIdentity`]); `None` if the client gave up on it.
    pub fn tls_server(tcp: TcpStream) -> Option<Raw> {
        let mut conn = rustls::ServerConnection::new(crate::tls::server_config()).ok()?;
        let mut sock = tcp.try_clone().ok()?;
        sock.set_read_timeout(Some(TIMEOUT)).ok()?;
        sock.set_write_timeout(Some(TIMEOUT)).ok()?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).ok()?;
        }
        let binding = Some(protocol::tls::channel_binding(&conn).ok()?);
        Some(
            Raw {
                stream: Wire::Server(Box::new(rustls::StreamOwned::new(conn, sock))),
                tcp,
                binding,
            }
            .within(TIMEOUT),
        )
    }

    /// The connection's channel binding, for proofs made by hand.
    pub fn binding(&self) -> Option<[u8; 32]> {
        self.binding
    }

    /// Connects over TLS from `ip`, another loopback address, so per-address limits apply to
    /// it alone.
    #[track_caller]
    pub fn connect_from(ip: IpAddr, addr: SocketAddr) -> Raw {
        Raw::tls_client(Raw::dial_from(ip, addr))
    }

    #[track_caller]
    fn dial_from(ip: IpAddr, addr: SocketAddr) -> TcpStream {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .expect("cannot create a socket");
        socket
            .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
            .unwrap_or_else(|e| panic!("cannot bind to {ip}: {e}"));
        socket
            .connect_timeout(&SockAddr::from(addr), TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect from {ip} to {addr}: {e}"));
        TcpStream::from(socket)
    }

    /// Waits up to `timeout` for each read and write from now on.
    pub fn within(self, timeout: Duration) -> Raw {
        self.tcp.set_read_timeout(Some(timeout)).unwrap();
        self.tcp.set_write_timeout(Some(timeout)).unwrap();
        self
    }

    /// The socket under the connection, to shut it from another thread.
    pub fn socket(&self) -> TcpStream {
        self.tcp.try_clone().expect("cannot clone the socket")
    }

    /// Our end's address, which the daemon logs as the peer.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap()
    }

    /// Our hello, then the server's, of the same version: a session ready for commands.
    #[track_caller]
    pub fn hello(mut self) -> Raw {
        self.send(&hello_message());
        match self.recv() {
            Message::Hello(h) => assert_eq!(h.version, VERSION),
            other => panic!("expected the server's hello, got {other:?}"),
        }
        self
    }

    /// Our hello, then the server's, which must announce password logins.
    #[track_caller]
    pub fn hello_for_login(&mut self) {
        self.send(&hello_message());
        match self.recv() {
            Message::Hello(h) => assert!(
                h.capabilities
                    .iter()
                    .any(|c| c == capability::AUTH_SCRAM_SHA256),
                "a server with users does not announce SCRAM: {h:?}"
            ),
            other => panic!("expected hello, got {other:?}"),
        }
    }

    /// Starts a SCRAM login as `user` with `password` (after [`Raw::hello_for_login`]): sends
    /// the `auth` with the client-first-message.
    #[track_caller]
    pub fn auth_start(&mut self, user: &str, password: &str) -> ScramLogin {
        let (client, first) = scram::Client::start(user, self.binding, scram::nonce());
        self.send(&Message::Auth(protocol::Auth {
            user: user.into(),
            scram: Some(first),
        }));
        ScramLogin {
            client,
            password: password.as_bytes().to_vec(),
            finished: None,
        }
    }

    /// Reads the server's `auth_continue` and sends the proof; `Some` of what the server sent
    /// instead, if it did not continue.
    #[track_caller]
    pub fn auth_prove(&mut self, login: &mut ScramLogin) -> Option<Message> {
        let server_first = match self.recv() {
            Message::AuthContinue(s) => s.scram,
            other => return Some(other),
        };
        let (salt, iterations) = login.client.salt(&server_first).unwrap();
        let salted = scram::salted_password(&login.password, &salt, iterations);
        let (last, finished) = login.client.finish(&server_first, &salted).unwrap();
        login.finished = Some(finished);
        self.send(&Message::AuthFinal(protocol::Scram { scram: last }));
        None
    }

    /// The server's answer to the proof: `auth_ok` (its signature checked, as a client must)
    /// or the refusal.
    #[track_caller]
    pub fn auth_answer(&mut self, login: &ScramLogin) -> Message {
        let answer = self.recv();
        if let Message::AuthOk(protocol::AuthOk { scram: Some(v) }) = &answer {
            let finished = login.finished.as_ref().expect("auth_ok before the proof");
            finished
                .verify(v)
                .unwrap_or_else(|e| panic!("the server's signature: {e}"));
        }
        answer
    }

    /// A whole SCRAM login as `user` with `password` after [`Raw::hello_for_login`]: the
    /// server's last answer.
    #[track_caller]
    pub fn scram(&mut self, user: &str, password: &str) -> Message {
        let mut login = self.auth_start(user, password);
        if let Some(refusal) = self.auth_prove(&mut login) {
            return refusal;
        }
        self.auth_answer(&login)
    }

    /// Logs in as `user` with `password` as PROTOCOL.md defines it; panics unless the server
    /// accepts.
    #[track_caller]
    pub fn login(mut self, user: &str, password: &str) -> Raw {
        self.hello_for_login();
        match self.scram(user, password) {
            Message::AuthOk(_) => self,
            other => panic!("{user} with the right password got {other:?}"),
        }
    }

    /// Sends our hello; true if the server's hello came back, false if the connection was
    /// refused or closed first. Panics if neither happens in time.
    #[track_caller]
    pub fn greets(&mut self) -> bool {
        if !self.try_send_bytes(&encode(&hello_message())) {
            return false;
        }
        matches!(self.try_recv(), Some(Message::Hello(_)))
    }

    #[track_caller]
    pub fn send(&mut self, message: &Message) {
        self.send_header(&serde_json::to_vec(message).unwrap());
    }

    /// One frame with `header` as it is, valid or not.
    #[track_caller]
    pub fn send_header(&mut self, header: &[u8]) {
        self.send_bytes(&frame(header));
    }

    /// A chunk frame for `body` at `offset`, and the body.
    #[track_caller]
    pub fn send_chunk(&mut self, offset: u64, body: &[u8]) {
        self.send(&chunk(offset, body));
        self.send_bytes(body);
    }

    /// Bytes as they are, framed or not.
    #[track_caller]
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("cannot send {} bytes: {e}", bytes.len()));
    }

    /// Like [`Raw::send_bytes`], but false instead of a panic if the peer has gone.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Ends our side of the connection; the peer reads EOF.
    pub fn close_write(&mut self) {
        self.tcp.shutdown(Shutdown::Write).unwrap();
    }

    /// Ends the connection both ways, which also wakes a read blocked on another handle.
    pub fn close(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    /// The next message; panics if the peer closes the connection instead.
    #[track_caller]
    pub fn recv(&mut self) -> Message {
        self.recv_frame().1
    }

    /// The next frame's header length and message; panics if the peer closes instead.
    #[track_caller]
    pub fn recv_frame(&mut self) -> (usize, Message) {
        match self.try_recv_frame() {
            Some(frame) => frame,
            None => panic!("the peer closed the connection instead of answering"),
        }
    }

    /// The next message (a chunk's body is read and dropped), or `None` once the peer has
    /// closed the connection.
    #[track_caller]
    pub fn try_recv(&mut self) -> Option<Message> {
        self.try_recv_frame().map(|(_, message)| message)
    }

    /// Waits up to `wait` for the peer to start a frame: `Waited::Nothing` if it has not,
    /// else the frame (read whole within the connection's timeout) or the close.
    #[track_caller]
    pub fn wait_frame(&mut self, wait: Duration, timeout: Duration) -> Waited {
        self.tcp.set_read_timeout(Some(wait)).unwrap();
        let mut first = [0u8; 1];
        let read = self.stream.read(&mut first);
        self.tcp.set_read_timeout(Some(timeout)).unwrap();
        match read {
            Ok(0) => Waited::Closed,
            Ok(_) => match self.frame_after(Some(first[0])) {
                Some((_, message)) => Waited::Frame(message),
                None => Waited::Closed,
            },
            Err(e) if closed(&e) => Waited::Closed,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Waited::Nothing
            }
            Err(e) => panic!("cannot read from the peer: {e}"),
        }
    }

    #[track_caller]
    fn try_recv_frame(&mut self) -> Option<(usize, Message)> {
        self.frame_after(None)
    }

    /// The rest of a frame whose first byte, if given, was read already.
    #[track_caller]
    fn frame_after(&mut self, first: Option<u8>) -> Option<(usize, Message)> {
        let mut len = [0u8; 4];
        let rest = match first {
            Some(byte) => {
                len[0] = byte;
                &mut len[1..]
            }
            None => &mut len[..],
        };
        match self.stream.read_exact(rest) {
            Ok(()) => {}
            Err(e) if closed(&e) => return None,
            Err(e) => panic!("no frame from the peer in time: {e}"),
        }
        let len = u32::from_be_bytes(len) as usize;
        assert!(
            (1..=protocol::MAX_HEADER).contains(&len),
            "the peer sent a header length of {len}"
        );
        let mut header = vec![0; len];
        self.stream
            .read_exact(&mut header)
            .unwrap_or_else(|e| panic!("a frame from the peer was cut short: {e}"));
        let message: Message = serde_json::from_slice(&header).unwrap_or_else(|e| {
            panic!(
                "the peer sent a bad header {:?}: {e}",
                String::from_utf8_lossy(&header)
            )
        });
        if let Message::Chunk(c) = &message {
            assert!(c.len as usize <= protocol::MAX_BODY, "chunk of {}", c.len);
            io::copy(
                &mut (&mut self.stream).take(u64::from(c.len)),
                &mut io::sink(),
            )
            .unwrap_or_else(|e| panic!("a chunk from the peer was cut short: {e}"));
        }
        Some((len, message))
    }

    /// Reads a download's frames until it ends.
    #[track_caller]
    pub fn skip_transfer(&mut self) {
        while let Some(m) = self.try_recv() {
            if matches!(m, Message::Eof(_) | Message::Abort(_) | Message::Error(_)) {
                return;
            }
        }
    }

    #[track_caller]
    pub fn expect_put_ready(&mut self) -> PutReady {
        match self.recv() {
            Message::PutReady(ready) => ready,
            other => panic!("expected put_ready, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn expect_error(&mut self, code: ErrorCode) -> ErrorReply {
        self.expect_error_in(&[code])
    }

    #[track_caller]
    pub fn expect_error_in(&mut self, codes: &[ErrorCode]) -> ErrorReply {
        match self.recv() {
            Message::Error(e) if codes.contains(&e.code) => e,
            other => panic!("expected an error with a code in {codes:?}, got {other:?}"),
        }
    }

    /// Panics unless the peer closes the connection without sending anything more.
    #[track_caller]
    pub fn expect_closed(&mut self) {
        if let Some(m) = self.try_recv() {
            panic!("expected the peer to close the connection, got {m:?}");
        }
        self.close();
    }

    /// Panics unless the session still answers a command.
    #[track_caller]
    pub fn expect_usable(&mut self) {
        self.send(&Message::Pwd);
        match self.recv() {
            Message::Cwd(_) => {}
            other => panic!("expected cwd in answer to pwd, got {other:?}"),
        }
    }

    /// Whether the session still answers a command (`pwd`).
    #[track_caller]
    pub fn is_usable(&mut self) -> bool {
        if !self.try_send_bytes(&encode(&Message::Pwd)) {
            return false;
        }
        matches!(self.try_recv(), Some(Message::Cwd(_)))
    }
}

/// A SCRAM login in progress (see [`Raw::auth_start`]).
pub struct ScramLogin {
    client: scram::Client,
    password: Vec<u8>,
    finished: Option<scram::Finished>,
}

/// What [`Raw::wait_frame`] saw.
#[derive(Debug)]
pub enum Waited {
    Nothing,
    Closed,
    Frame(Message),
}

/// A socket that keeps what it read during the handshake, in case it is not TLS.
struct Sniff {
    sock: TcpStream,
    first: Vec<u8>,
}

impl Read for Sniff {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        if self.first.len() < 64 * 1024 {
            self.first.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

impl Write for Sniff {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// Our `hello`: this protocol version, no capabilities.
pub fn hello_message() -> Message {
    Message::Hello(Hello {
        version: VERSION,
        min_version: None,
        agent: "e2e-raw/0".into(),
        capabilities: vec![],
        max_chunk: protocol::DEFAULT_CHUNK,
        digest: protocol::DigestKind::Md5,
    })
}

/// A download of `path` from the start.
pub fn get(path: &str) -> Message {
    Message::Get(Get {
        path: path.into(),
        offset: 0,
        prefix_digest: None,
    })
}

/// A new upload of `size` bytes to `path`, which must not exist.
pub fn put(path: &str, size: u64) -> Message {
    Message::Put(Put {
        path: path.into(),
        size,
        overwrite: false,
        resume: false,
        upload_id: None,
        mtime: None,
        pipelined: false,
    })
}

/// The header of a chunk holding `body` at `offset`, with its length and MD5.
pub fn chunk(offset: u64, body: &[u8]) -> Message {
    Message::Chunk(ChunkHeader {
        offset,
        len: u32::try_from(body.len()).unwrap(),
        digest: Digest::md5(body),
    })
}

/// `message` as the bytes of one frame.
pub fn encode(message: &Message) -> Vec<u8> {
    frame(&serde_json::to_vec(message).unwrap())
}

/// `header` behind its length prefix.
fn frame(header: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(header.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(header);
    frame
}

/// Whether a read failed because the peer closed the connection.
fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}
