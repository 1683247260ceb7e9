//! Reaching the server: TCP, then TLS with the server's key checked as [`Trust`] says (or
//! plain TCP when told), and the one clear reason when what answers is not an ftpd over TLS.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use protocol::tls::{self, Fingerprint};
use protocol::{DigestKind, ErrorCode, FrameCodec, Message};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

use super::{normalize_addr, Client, Credentials};
use crate::error::{ClientError, Result};
use crate::output::Shown;
use crate::trust::{self, Security, Trust};

/// Most bytes of the server's first answer kept, to say what it was when it was not TLS: a
/// plaintext `error` frame (a refusal before TLS is one) fits many times over.
const SNIFF_BYTES: usize = 8 * 1024;

impl Client {
    /// Connects, secures the connection as `security` says, exchanges hellos and, when the
    /// server has users, authenticates both ways. With credentials, a server that does not ask
    /// for them is refused: it could be an impostor that does not know the secret.
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        creds: Option<&Credentials>,
        digest: DigestKind,
        security: &Security,
    ) -> Result<Client> {
        let target = normalize_addr(addr);
        let fail = |reason: String| ClientError::Connect {
            addr: target.clone(),
            reason,
        };
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(&target)).await {
            Err(_) => return Err(fail("timed out".into())),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok(s)) => s,
        };
        // Small request/reply frames must not wait for Nagle's delayed acknowledgements.
        let _ = tcp.set_nodelay(true);
        let trust = match security {
            Security::Plaintext => {
                // As the daemon does: without TLS, loopback only.
                let peer = tcp.peer_addr().map_err(|e| fail(e.to_string()))?;
                if !peer.ip().is_loopback() {
                    return Err(ClientError::Usage(format!(
                        "refusing --insecure-plaintext to {target} ({}), which is not a loopback \
                         address: without TLS anyone on the path reads and changes everything",
                        peer.ip()
                    )));
                }
                return Client::over(tcp, &target, timeout, creds, digest, None).await;
            }
            Security::Tls(trust) => trust,
        };
        let (expected, pin_line, roots) = match trust {
            Trust::KnownHosts { file, .. } => match trust::pinned(file, &target)? {
                Some(pin) => (Some(pin.fingerprint), Some(pin.line), None),
                None => (None, None, None),
            },
            Trust::Key(fp) => (Some(*fp), None, None),
            Trust::Ca(roots) => (None, None, Some(roots)),
        };
        // The client's key goes only to a server already trusted (or about to be, with
        // --accept-new-host): a first-contact probe does not show it to a possible impostor.
        let probing = matches!(
            trust,
            Trust::KnownHosts {
                accept_new: false,
                ..
            }
        ) && expected.is_none();
        let key = creds.and_then(|c| c.key.as_deref()).filter(|_| !probing);
        let setup = trust::client_config(expected, roots, key)?;
        let name = trust::server_name(&target)?;
        let sniff = Sniff::new(BufReader::with_capacity(tls::READ_BUFFER, tcp));
        let handshake = TlsConnector::from(setup.config)
            .connect(name, sniff)
            .into_fallible();
        let mut stream = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => return Err(fail("no TLS handshake within the timeout".into())),
            Ok(Ok(stream)) => stream,
            Ok(Err((e, sniff))) => {
                let seen = setup.seen.get();
                if let (Some(expected), Some(seen)) = (expected, seen) {
                    if expected != seen {
                        return Err(changed(&target, trust, expected, seen, pin_line));
                    }
                }
                if let (None, Some(seen)) = (roots, seen) {
                    if bad_signature(&e) {
                        return Err(not_its_key(&target, seen));
                    }
                }
                return Err(handshake_failed(&target, e, &sniff.first, roots.is_some()));
            }
        };
        // The handshake is over: nothing more to keep of what the server sends.
        stream.get_mut().0.stop();
        let (_, conn) = stream.get_ref();
        if conn.alpn_protocol() != Some(tls::ALPN) {
            return Err(ClientError::NotProtocol(format!(
                "{target} speaks TLS but not the ftpd protocol (it did not agree to ALPN \"ftpd\")"
            )));
        }
        if let Trust::KnownHosts { file, accept_new } = trust {
            if expected.is_none() {
                let seen = setup.seen.get().expect("the verifier saw a certificate");
                if !accept_new {
                    return Err(ClientError::UnknownHost {
                        addr: target,
                        fingerprint: seen,
                        known_hosts: file.clone(),
                    });
                }
                trust::pin(file, &target, &seen)?;
                eprintln!(
                    "Pinned the key of {target} ({seen}) in {}: a different key later will be \
                     refused.",
                    file.display()
                );
            }
        }
        let binding = tls::channel_binding(conn)
            .map_err(|e| ClientError::Internal(format!("TLS exporter: {e}")))?;
        Client::over(stream, &target, timeout, creds, digest, Some(binding)).await
    }
}

/// Three lines of `@` around `warning`, loud as ssh's.
fn banner(warning: &str) -> String {
    const WIDTH: usize = 61;
    let bar = "@".repeat(WIDTH);
    let line = format!("@    WARNING: {warning}");
    format!("{bar}\n{line:<width$}@\n{bar}", width = WIDTH - 1)
}

/// The refusal of a server whose key is not the pinned one, loud as ssh's.
fn changed(
    addr: &str,
    trust: &Trust,
    expected: Fingerprint,
    seen: Fingerprint,
    line: Option<usize>,
) -> ClientError {
    let warning = match trust {
        Trust::KnownHosts { .. } => "THE SERVER'S KEY HAS CHANGED!",
        _ => "THE SERVER'S KEY IS NOT THE ONE EXPECTED!",
    };
    let pinned_where = match (trust, line) {
        (Trust::KnownHosts { file, .. }, Some(line)) => format!(
            "The key pinned for {addr} is {expected},\nin {}, line {line}.\n\
             If you know the server's key was replaced on purpose (ask its admin: ftpd \
             --fingerprint),\nremove that line (sed -i '{line}d' {}) and connect again.",
            file.display(),
            // Quoted, so that the command can be pasted whatever the path holds.
            shell_words::quote(&file.to_string_lossy())
        ),
        _ => format!("--fingerprint names {expected}."),
    };
    ClientError::KeyChanged(format!(
        "{}\n\
         Someone could be eavesdropping on you right now (a man-in-the-middle attack),\n\
         or the server's key was replaced.\n\
         The server at {addr} presented the key {seen}.\n{pinned_where}\n\
         Nothing was sent to it.",
        banner(warning)
    ))
}

/// Whether the handshake failed on the server's signature: it presented a certificate whose
/// key it does not hold.
fn bad_signature(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature
        ))
    )
}

/// The refusal of a server that presented a key (the pinned one, as like as not: a
/// certificate is public) without proving it holds the private half: an impostor, not a
/// network fault, so not retried and not reported as one.
fn not_its_key(addr: &str, seen: Fingerprint) -> ClientError {
    ClientError::KeyChanged(format!(
        "{}\n\
         The server at {addr} presented a certificate for the key {seen},\n\
         but its TLS handshake is not signed by that key: it does not hold the key's private\n\
         half. Someone could be impersonating the server with a copy of its certificate.\n\
         Nothing was sent to it.",
        banner("THE SERVER DOES NOT HOLD THE KEY IT SHOWS!")
    ))
}

/// Says what answered when the handshake failed: a refusal in the clear (busy), an ftpd
/// without TLS, something that is not ftpd at all, a certificate the CA roots do not vouch
/// for, or a damaged or dropped connection (retried like any other).
fn handshake_failed(addr: &str, e: std::io::Error, first: &[u8], ca: bool) -> ClientError {
    if !first.is_empty() && !tls::looks_like_tls(first) {
        let mut buf = BytesMut::from(first);
        if let Ok(Some(Ok(frame))) = FrameCodec::new().decode(&mut buf) {
            return match frame.message {
                // Refused before TLS (too many connections, a login penalty): a reply of
                // ftpd's, retried like any busy server.
                Message::Error(e) if e.code == ErrorCode::Busy => ClientError::Remote(e),
                _ => ClientError::NotProtocol(format!(
                    "{addr} speaks the ftpd protocol without TLS (an ftpd started with \
                     --insecure-plaintext, or someone on the path answering in its place); \
                     nothing was sent to it"
                )),
            };
        }
        let shown: String = String::from_utf8_lossy(&first[..first.len().min(40)]).into();
        return ClientError::NotProtocol(format!(
            "{addr} is not an ftpd server: it does not speak TLS (it answered {})",
            Shown(&shown)
        ));
    }
    let inner = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)) => {
            ClientError::NotProtocol(format!(
                "{addr} speaks TLS but not the ftpd protocol (it refused ALPN \"ftpd\")"
            ))
        }
        Some(rustls::Error::InvalidCertificate(why)) if ca => {
            // rustls's words, which name the names a certificate is for; its bare variant
            // names otherwise.
            let why = match why {
                rustls::CertificateError::UnknownIssuer => {
                    "it is not issued by a CA given (--ca-file, --ca-system)".to_owned()
                }
                why => why.to_string(),
            };
            ClientError::Untrusted(format!(
                "the certificate of {addr} is not valid for it: {why}"
            ))
        }
        _ if first.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {
            ClientError::ConnectionLost(format!("{addr} closed the connection before TLS"))
        }
        _ => ClientError::ConnectionLost(format!("TLS handshake with {addr} failed: {e}")),
    }
}

/// A stream that keeps a copy of the first bytes it reads, to say what answered when a
/// handshake fails.
struct Sniff<S> {
    inner: S,
    /// What the server sent first, up to [`SNIFF_BYTES`].
    first: Vec<u8>,
    /// Bytes still to keep; 0 once the handshake is over.
    room: usize,
}

impl<S> Sniff<S> {
    fn new(inner: S) -> Sniff<S> {
        Sniff {
            inner,
            first: Vec::new(),
            room: SNIFF_BYTES,
        }
    }

    /// Keeps nothing more: every read after the handshake goes straight through.
    fn stop(&mut self) {
        self.room = 0;
        self.first = Vec::new();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.room > 0 {
            let new = &buf.filled()[before..];
            let keep = new.len().min(self.room);
            let this = &mut *self;
            this.first.extend_from_slice(&new[..keep]);
            this.room -= keep;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes of a server's TLS answer: a handshake record.
    const TLS_START: &[u8] = b"\x16\x03\x03\x00\x7a\x02";

    fn tls_error(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    /// A record damaged in transit fails the handshake on one side or the other, which sees a
    /// bad MAC or the peer's alert: a broken connection, retried like a dropped one.
    #[test]
    fn a_damaged_handshake_is_a_lost_connection() {
        for e in [
            rustls::Error::DecryptError,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac),
            rustls::Error::AlertReceived(rustls::AlertDescription::DecryptError),
            rustls::Error::AlertReceived(rustls::AlertDescription::DecodeError),
        ] {
            let why = format!("{e:?}");
            let err = handshake_failed("h:1", tls_error(e), TLS_START, false);
            assert!(
                matches!(err, ClientError::ConnectionLost(_)) && err.is_retriable(),
                "{why}: {err:?}"
            );
        }
    }

    #[test]
    fn a_refused_alpn_is_not_the_protocol_and_not_retried() {
        let e = rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol);
        let err = handshake_failed("h:1", tls_error(e), TLS_START, false);
        assert!(matches!(err, ClientError::NotProtocol(_)), "{err:?}");
        assert!(!err.is_retriable());
    }
}
