//! Before the protocol: what turns an accepted socket into the stream a session runs over (TLS
//! 1.3 from the first byte, or plain TCP when the admin said `--insecure-plaintext`), and the
//! cheap refusal of connections that will not get a session.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use protocol::tls::{self, Fingerprint};
use protocol::{BoxStream, ErrorCode, ErrorReply, FrameCodec, Message};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Encoder;
use tracing::{debug, info};

/// A connection ready for the framed protocol.
pub struct Channel {
    /// The stream frames travel over.
    pub stream: BoxStream,
    /// The TLS exporter value the login is bound to (`None` in plaintext).
    pub binding: Option<[u8; 32]>,
    /// The key of the client's TLS certificate, if it presented one (a key login).
    pub peer_key: Option<Fingerprint>,
}

/// How connections are secured.
#[derive(Clone)]
pub enum Security {
    /// TLS 1.3 with the daemon's identity.
    Tls(TlsAcceptor),
    /// Plain TCP (`--insecure-plaintext`, loopback only).
    Plaintext,
}

/// Why a connection never reached the protocol; logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("client closed the connection")]
    Closed,
    #[error("no TLS handshake within the time limit")]
    Timeout,
    #[error("the client speaks plaintext to this TLS server (told it: TLS required)")]
    PlaintextClient,
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("the client does not speak the ftpd protocol over TLS (no \"ftpd\" ALPN)")]
    NoAlpn,
    #[error("cannot read the client's first bytes: {0}")]
    Io(std::io::Error),
}

/// Sets up an accepted connection for a session, by `deadline`.
pub async fn establish(
    tcp: TcpStream,
    security: &Security,
    deadline: Instant,
) -> Result<Channel, Refused> {
    // Small request/reply frames must not wait for Nagle's delayed acknowledgements.
    let _ = tcp.set_nodelay(true);
    let acceptor = match security {
        Security::Plaintext => {
            return Ok(Channel {
                stream: Box::new(tcp),
                binding: None,
                peer_key: None,
            })
        }
        Security::Tls(acceptor) => acceptor,
    };
    let deadline = tokio::time::Instant::from_std(deadline);
    // A client of ours without TLS sends a frame first: tell it in a frame it can read.
    let mut first = [0u8; 3];
    let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await;
    match peeked {
        Err(_) => return Err(Refused::Timeout),
        Ok(Err(e)) => return Err(Refused::Io(e)),
        Ok(Ok(0)) => return Err(Refused::Closed),
        Ok(Ok(n)) if n >= 2 && !tls::looks_like_tls(&first[..n]) => {
            send_plain_error(
                &tcp,
                ErrorCode::TlsRequired,
                "this server speaks TLS only: connect without --insecure-plaintext",
            );
            return Err(Refused::PlaintextClient);
        }
        Ok(Ok(_)) => {}
    }
    // rustls reads about a record a call; the buffer makes that one syscall for several, and
    // holds no memory while the connection is idle.
    let tcp = tls::SocketReader::new(tcp);
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Err(_) => return Err(Refused::Timeout),
        Ok(Err(e)) => return Err(Refused::Handshake(e)),
        Ok(Ok(tls)) => tls,
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(tls::ALPN) {
        return Err(Refused::NoAlpn);
    }
    let binding =
        tls::channel_binding(conn).map_err(|e| Refused::Handshake(std::io::Error::other(e)))?;
    // The handshake proved the client holds this key (its CertificateVerify was checked).
    let peer_key = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| Fingerprint::of_cert(cert).ok());
    debug!(suite = ?conn.negotiated_cipher_suite().map(|s| s.suite()), "TLS established");
    Ok(Channel {
        stream: Box::new(tls),
        binding: Some(binding),
        peer_key,
    })
}

/// Tells a client that cannot be served right now why, and closes. Cheap and bounded by
/// construction: no task, no wait, no TLS handshake, one non-blocking write of a plaintext
/// frame far smaller than any socket buffer (a peer whose buffer is somehow full just sees
/// the close). A client reads it before its handshake (docs/PROTOCOL.md, "Transport").
pub fn refuse(tcp: TcpStream, peer: SocketAddr, why: &str) {
    info!(%peer, reason = why, "connection refused");
    send_plain_error(&tcp, ErrorCode::Busy, &format!("server busy: {why}"));
}

/// One `error` frame in the clear, written without waiting.
fn send_plain_error(tcp: &TcpStream, code: ErrorCode, message: &str) {
    let reply = ErrorReply::new(code, message);
    let mut frame = BytesMut::new();
    if FrameCodec::new()
        .encode(Message::Error(reply), &mut frame)
        .is_ok()
    {
        let _ = tcp.try_write(&frame);
    }
}
