//! What both sides agree on about TLS: the ALPN id, the one crypto provider, key fingerprints,
//! and the channel binding that ties a login to its TLS connection.
//!
//! Every connection is TLS 1.3 from its first byte (docs/PROTOCOL.md, "Transport"); the framed
//! protocol runs unchanged inside it.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{Buf, BytesMut};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The ALPN protocol id both sides offer. A TLS peer that does not select it is not ftpd.
pub const ALPN: &[u8] = b"ftpd";

/// How many bytes of the socket a TLS connection reads at once, through a buffer under rustls:
/// rustls reads at most about one record (16 KiB) a call, so a 1 GiB transfer took 65,000
/// `recvfrom`s, each waking the sender with a window update; with this, a quarter of that
/// (measured: 33,263 and 8,208 calls for 512 MiB). The copy out of it is of cache-hot bytes.
pub const READ_BUFFER: usize = 64 * 1024;

/// The first read of a burst, after the socket had nothing: what rustls asks for at the start
/// of a record, read straight into its buffer. A connection that then stops reading (a chunk
/// header whose body waits for the memory budget) holds no more than that here, not
/// [`READ_BUFFER`]; one still streaming doubles back to it in four reads.
const FIRST_READ: usize = 4 * 1024;

/// The socket under rustls, read up to [`READ_BUFFER`] bytes at a time into memory held only
/// while it holds bytes: once rustls has taken all of them, the buffer is freed. Measured with
/// 1,000 idle logged-in connections, tokio's `BufReader` in its place kept 64 KiB each (64 MiB
/// of the daemon's 72); an idle connection now keeps none, nor one whose reader stopped.
pub struct SocketReader<S> {
    /// The socket.
    io: S,
    /// Bytes read from the socket that rustls has not taken yet; no allocation when empty.
    buf: BytesMut,
    /// How much the next read from the socket asks for: [`FIRST_READ`] after a pause,
    /// doubled by each read that filled it, up to [`READ_BUFFER`].
    want: usize,
}

impl<S> SocketReader<S> {
    pub fn new(io: S) -> Self {
        SocketReader {
            io,
            buf: BytesMut::new(),
            want: FIRST_READ,
        }
    }

    /// The socket, for what only it knows (its addresses, say).
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The bytes read ahead of rustls, for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// A read took all it asked for: the socket has more, so the next asks for more.
    fn grow(&mut self) {
        self.want = (self.want * 2).min(READ_BUFFER);
    }

    /// The socket has nothing more for now (or failed, or ended): the empty buffer goes, and
    /// the next burst starts small.
    fn pause(&mut self) {
        self.buf = BytesMut::new();
        self.want = FIRST_READ;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SocketReader<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            // A reader asking for as much as a buffer holds gets the socket's bytes directly.
            let room = out.remaining();
            if room >= this.want {
                let before = out.filled().len();
                let read = Pin::new(&mut this.io).poll_read(cx, out);
                match &read {
                    Poll::Ready(Ok(())) if out.filled().len() - before == room => this.grow(),
                    Poll::Ready(Ok(())) => {}
                    _ => this.pause(),
                }
                return read;
            }
            this.buf = BytesMut::with_capacity(this.want);
            let asked = this.buf.capacity();
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => {
                    this.pause();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    this.pause();
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(0)) => {
                    this.pause();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(n)) if n == asked => this.grow(),
                Poll::Ready(Ok(_)) => {}
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        // Taken whole: rustls may not ask again for a while (its caller has a frame and waits,
        // say for the budget to grant a chunk's body), so the memory goes now. The next read
        // allocates afresh; that is far cheaper than the read itself.
        if this.buf.is_empty() {
            this.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SocketReader<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The TLS exporter label of RFC 9266 ("tls-exporter" channel binding).
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// The record types a TLS 1.3 peer may send first (handshake, or an alert), each followed by
/// the legacy version's major byte 3: how a plaintext reader recognises TLS.
pub fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x15 | 0x16, 0x03, ..])
}

/// The crypto provider every TLS configuration of this workspace is built with: ring, the one
/// linked (see the workspace manifest for why).
/// Made once per process and shared by every configuration.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(ring_aes128_first()))
        .clone()
}

/// Makes [`provider`] the process default, for any TLS user that does not name one; the
/// binaries call it first thing. Calling it again is harmless.
pub fn install_provider() {
    let _ = CryptoProvider::clone(&provider()).install_default();
}

/// The handshake-signature checks every certificate verifier of ours makes, whatever it
/// trusts (a pinned key, any client key, a test's any-key): the signature is checked against
/// the certificate's key with the provider's algorithms, which proves the peer holds that key;
/// TLS 1.2 is never offered, so its signatures are refused.
#[derive(Debug)]
pub struct Signatures(Arc<CryptoProvider>);

impl Default for Signatures {
    fn default() -> Self {
        Signatures(provider())
    }
}

impl Signatures {
    pub fn tls12(&self) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// ring's provider with its TLS 1.3 suites in the order AES-128-GCM, AES-256-GCM,
/// ChaCha20-Poly1305 (ring's own puts AES-256 first). The client offers them in this order and
/// the server follows the client's, so both ends of ours agree on AES-128-GCM: with AES-NI it
/// is the fastest of the three (10 rounds to AES-256's 14), and it is what the OpenSSH peers
/// are benchmarked with. The set of suites, all TLS 1.3 AEADs, is unchanged.
fn ring_aes128_first() -> CryptoProvider {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    });
    provider
}

/// The SHA-256 of a public key (its DER SubjectPublicKeyInfo): a server's or a client's
/// identity. Shown as `SHA256:<base64 without padding>`, the form `ssh-keygen -l` prints.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(spki).into())
    }

    /// The fingerprint of the public key a certificate carries (not of the certificate: a
    /// renewed certificate for the same key keeps it).
    pub fn of_cert(cert: &CertificateDer<'_>) -> Result<Fingerprint, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
        Ok(Fingerprint::of_spki(
            parsed.subject_public_key_info().as_ref(),
        ))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0);
        write!(f, "SHA256:{b64}")
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a fingerprint did not parse.
#[derive(Debug, thiserror::Error)]
#[error("not a key fingerprint (expected SHA256: and 43 base64 characters, as ftpd --fingerprint prints)")]
pub struct BadFingerprint;

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s.trim().strip_prefix("SHA256:").ok_or(BadFingerprint)?;
        // Accept the padded form too: some tools print it.
        let b64 = b64.strip_suffix('=').unwrap_or(b64);
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .map_err(|_| BadFingerprint)?;
        Ok(Fingerprint(bytes.try_into().map_err(|_| BadFingerprint)?))
    }
}

/// The 32-byte `tls-exporter` channel binding (RFC 9266) of a TLS 1.3 connection whose
/// handshake is complete.
pub fn channel_binding<D>(conn: &rustls::ConnectionCommon<D>) -> Result<[u8; 32], rustls::Error> {
    conn.export_keying_material([0u8; 32], CHANNEL_BINDING_LABEL, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_back_in_both_forms() {
        let fp = Fingerprint::of_spki(b"not really a key");
        let shown = fp.to_string();
        assert!(
            shown.starts_with("SHA256:") && shown.len() == 7 + 43,
            "{shown}"
        );
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(format!("{shown}=").parse::<Fingerprint>().unwrap(), fp);
        for bad in [
            "",
            "SHA256:",
            "MD5:abc",
            &shown[..40],
            &format!("{shown}AA"),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sha256_of_the_empty_key_is_the_known_value() {
        // The SHA-256 of no bytes, e3b0c442..., in base64.
        assert_eq!(
            Fingerprint::of_spki(b"").to_string(),
            "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }

    /// Regression: tokio's `BufReader` under rustls kept 64 KiB for every connection, idle or
    /// not; 1,000 idle clients cost the daemon 64 MiB.
    #[tokio::test]
    async fn the_socket_reader_holds_memory_only_while_bytes_wait() {
        use futures::FutureExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut reader = SocketReader::new(ours);
        assert_eq!(reader.held(), 0);
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 1000];
        while got.len() < sent.len() {
            let n = reader.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
            assert!(reader.held() <= READ_BUFFER, "{}", reader.held());
        }
        assert_eq!(got, sent);
        // All taken: the buffer went, and nothing more is read.
        assert_eq!(reader.held(), 0);
        assert!(reader.read(&mut small).now_or_never().is_none());
        assert_eq!(reader.held(), 0);
        // A reader with room for a whole buffer reads the socket directly.
        peer.write_all(b"abc").await.unwrap();
        let mut big = vec![0u8; READ_BUFFER];
        assert_eq!(reader.read(&mut big).await.unwrap(), 3);
        assert_eq!(reader.held(), 0);
        drop(peer);
        assert_eq!(reader.read(&mut small).await.unwrap(), 0, "end of stream");
    }

    #[test]
    fn tls_records_are_told_from_frames() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(looks_like_tls(&[0x15, 0x03, 0x03]));
        assert!(!looks_like_tls(&[0, 0, 0, 0x40, b'{']));
        assert!(!looks_like_tls(b"SSH-2.0-OpenSSH"));
    }
}
