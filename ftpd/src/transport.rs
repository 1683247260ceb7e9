//! Before the protocol: what turns an accepted socket into the stream a session runs over, and
//! the cheap refusal of connections that will not get a session.
//!
//! Today that is TCP with Nagle off; the PROXY header and the TLS handshake belong here too,
//! so that a session never sees anything but a ready stream.

use std::net::SocketAddr;

use bytes::BytesMut;
use protocol::{BoxStream, ErrorCode, ErrorReply, FrameCodec, Message};
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;
use tracing::info;

/// Sets up an accepted connection for a session.
pub fn establish(tcp: TcpStream) -> BoxStream {
    // Small request/reply frames must not wait for Nagle's delayed acknowledgements.
    let _ = tcp.set_nodelay(true);
    Box::new(tcp)
}

/// Tells a client that cannot be served right now why, and closes. Cheap and bounded by
/// construction: no task, no wait, one non-blocking write of a frame far smaller than any
/// socket buffer (a peer whose buffer is somehow full just sees the close).
pub fn refuse(tcp: TcpStream, peer: SocketAddr, why: &str) {
    info!(%peer, reason = why, "connection refused");
    let reply = ErrorReply::new(ErrorCode::Busy, format!("server busy: {why}"));
    let mut frame = BytesMut::new();
    if FrameCodec::new()
        .encode(Message::Error(reply), &mut frame)
        .is_ok()
    {
        let _ = tcp.try_write(&frame);
    }
}
