//! One framed connection for both sides: frames in and out over any byte stream, every wait
//! bounded.
//!
//! Whatever comes before the protocol (accepting or dialling, later a PROXY header and the TLS
//! handshake) produces a stream; from then on a [`Connection`] is the only thing that reads or
//! writes it. It is generic over the stream, so the daemon and the client run over TCP, TLS or
//! an in-memory `tokio::io::duplex` pipe alike.
//!
//! A wait fails when no bytes moved for its time limit, not when a whole frame took longer:
//! a 1 MiB chunk at a rate cap of 8 KiB/s takes 128 s, and crosses a 60 s stall timeout
//! untouched as long as its bytes keep coming.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, Framed, FramedParts};

use crate::{Budget, CodecError, Frame, FrameCodec, Incoming, Permit};

/// A read buffer larger than this is given up once it is empty of a chunk: a connection idle
/// after an upload must not keep a chunk's worth of memory.
const KEEP_READ_BUFFER: usize = 64 * 1024;

/// The read buffer a connection starts with, and gets back after a chunk: room for a
/// command's header; a larger frame reserves what its length prefix says. Small, because a
/// connection whose chunk waits for the budget holds this much of the body meanwhile.
const READ_CAPACITY: usize = 2 * 1024;

/// A write buffer larger than this is given up once flushed: a connection that sent a long
/// listing must not keep the listing's worth of memory while idle.
const KEEP_WRITE_BUFFER: usize = 16 * 1024;

/// A byte stream a connection can run over: TCP, TLS, an in-memory pipe.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Any stream, boxed: what the daemon and the client hold once the pre-protocol stage is over,
/// so that neither is generic over how the bytes travel.
pub type BoxStream = Box<dyn Stream>;

/// Why a connection can no longer be used. Everything here ends the connection; a frame the
/// peer got wrong but that kept the stream in step is an [`Incoming`] `Err`, not this.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The peer closed its side, between frames or in the middle of one.
    #[error("the peer closed the connection")]
    Closed,
    /// Nothing arrived within the time allowed.
    #[error("nothing received for {} s", .0.as_secs())]
    RecvTimeout(Duration),
    /// The peer took none of what we sent within the time allowed.
    #[error("the peer took no data for {} s", .0.as_secs())]
    SendTimeout(Duration),
    /// The bytes no longer form frames (a length over its cap, a header that is not JSON).
    #[error("{0}")]
    Corrupt(CodecError),
    /// The operating system reported the connection broken.
    #[error("{0}")]
    Broken(std::io::Error),
}

impl From<CodecError> for ConnectionError {
    fn from(e: CodecError) -> Self {
        match e {
            // A TLS peer that closes the socket without TLS's close_notify, between frames: the
            // same as a plain close (a cut inside a frame is `Truncated`, also a close).
            CodecError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                ConnectionError::Closed
            }
            CodecError::Io(e) => ConnectionError::Broken(e),
            CodecError::Truncated => ConnectionError::Closed,
            other => ConnectionError::Corrupt(other),
        }
    }
}

/// When bytes last moved each way on a connection: what its waits measure silence from.
struct Progress {
    /// What the stamps count from.
    base: Instant,
    /// Microseconds after `base` that bytes were last read.
    read: AtomicU64,
    /// Microseconds after `base` that bytes were last written.
    written: AtomicU64,
}

impl Progress {
    fn new() -> Arc<Progress> {
        Arc::new(Progress {
            base: Instant::now(),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    fn stamp(&self, which: &AtomicU64) {
        let micros = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX);
        which.store(micros, Ordering::Relaxed);
    }

    fn last(&self, which: &AtomicU64) -> Instant {
        self.base + Duration::from_micros(which.load(Ordering::Relaxed))
    }
}

/// The stream, stamping [`Progress`] whenever bytes move.
struct Tracked<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.progress.stamp(&this.progress.read);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.progress.stamp(&this.progress.written);
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Which way a wait waits for bytes.
#[derive(Clone, Copy)]
enum Way {
    In,
    Out,
}

/// Runs `work` until it is done, or until no bytes moved `way` for `within` (counted from the
/// start at the earliest): `None` then.
async fn unless_silent<F: Future>(
    progress: &Progress,
    way: Way,
    within: Duration,
    work: F,
) -> Option<F::Output> {
    let stamp = match way {
        Way::In => &progress.read,
        Way::Out => &progress.written,
    };
    let start = Instant::now();
    tokio::pin!(work);
    // A wait without a limit (`Duration::MAX`) is simply a wait.
    let Some(mut deadline) = start.checked_add(within) else {
        return Some(work.await);
    };
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            () = tokio::time::sleep_until(deadline) => {
                match progress.last(stamp).max(start).checked_add(within) {
                    Some(next) if next > Instant::now() => deadline = next,
                    _ => return None,
                }
            }
        }
    }
}

/// Frames over a stream `S`, with the codec's caps on every length.
pub struct Connection<S = BoxStream> {
    /// The stream with its read and write buffers, and the codec that checks every length.
    framed: Framed<Tracked<S>, Gated>,
    /// When bytes last moved, which the waits measure silence from.
    progress: Arc<Progress>,
    /// Memory that chunk bodies read from this connection are taken from, if any.
    budget: Option<Budget>,
    /// The bytes granted to the chunk last returned, until its holder takes them.
    body_permit: Option<Permit>,
    /// The bytes granted to the body being read.
    granted: Option<Permit>,
}

/// The frame codec, stopping after a chunk's header until the body's bytes are granted.
struct Gated {
    /// The codec proper.
    codec: FrameCodec,
    /// Whether a body must be granted before it is read: only when there is a budget.
    hold_bodies: bool,
    /// The pending body was granted.
    granted: bool,
}

/// One step of decoding: a frame, or a chunk header whose body waits to be granted.
enum Step {
    Frame(Incoming),
    Body(u32),
}

impl Decoder for Gated {
    type Item = Step;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Step>, CodecError> {
        if let Some(frame) = self.codec.decode_head(src)? {
            return Ok(Some(Step::Frame(frame)));
        }
        match self.codec.pending_body() {
            // Returned before the body is read or room made for it: the stream is not
            // polled again until the connection holds the bytes.
            Some(len) if self.hold_bodies && !self.granted => Ok(Some(Step::Body(len))),
            _ => {
                let frame = self.codec.decode_body(src)?;
                if frame.is_some() {
                    self.granted = false;
                }
                Ok(frame.map(Step::Frame))
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Step>, CodecError> {
        match self.decode(src)? {
            Some(step) => Ok(Some(step)),
            None if src.is_empty() && self.codec.pending_body().is_none() => Ok(None),
            None => Err(CodecError::Truncated),
        }
    }
}

impl Encoder<Frame> for Gated {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.codec.encode(frame, dst)
    }
}

impl Encoder<crate::Message> for Gated {
    type Error = CodecError;

    fn encode(&mut self, message: crate::Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.codec.encode(message, dst)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// A connection with the protocol's default caps.
    pub fn new(stream: S) -> Self {
        Self::with_codec(stream, FrameCodec::new(), READ_CAPACITY)
    }

    /// A connection with the given codec (its caps) and initial read buffer size: a peer that
    /// receives bulk data reads faster with a larger one.
    pub fn with_codec(stream: S, codec: FrameCodec, read_capacity: usize) -> Self {
        let gated = Gated {
            codec,
            hold_bodies: false,
            granted: false,
        };
        let progress = Progress::new();
        let stream = Tracked {
            inner: stream,
            progress: progress.clone(),
        };
        let mut framed = Framed::with_capacity(stream, gated, read_capacity);
        // The write buffer starts empty (tokio-util's is 8 KiB at once): most connections
        // only ever send short replies, and sit idle most of the time.
        *framed.write_buffer_mut() = BytesMut::new();
        Connection {
            framed,
            progress,
            budget: None,
            body_permit: None,
            granted: None,
        }
    }

    /// From now on, every chunk body is read only once its bytes are taken from `budget`; the
    /// chunk returned last holds them until [`Connection::take_body_permit`] or the next
    /// receive. A wait for them counts against the receive's time limit.
    pub fn set_budget(&mut self, budget: Budget) {
        self.framed.codec_mut().hold_bodies = true;
        self.budget = Some(budget);
    }

    /// The budget bytes the chunk last received holds, to keep until its body is written.
    pub fn take_body_permit(&mut self) -> Option<Permit> {
        self.body_permit.take()
    }

    /// Sends one frame, failing if the peer takes none of its bytes for `within`.
    pub async fn send(
        &mut self,
        frame: impl Into<Frame>,
        within: Duration,
    ) -> Result<(), ConnectionError> {
        let progress = self.progress.clone();
        let sending = self.send_now(frame.into());
        let sent = match unless_silent(&progress, Way::Out, within, sending).await {
            None => Err(ConnectionError::SendTimeout(within)),
            Some(r) => r.map_err(Into::into),
        };
        self.shrink_write_buffer();
        sent
    }

    /// Gives up a write buffer grown for a large frame once it is flushed.
    fn shrink_write_buffer(&mut self) {
        let buf = self.framed.write_buffer_mut();
        if buf.is_empty() && buf.capacity() > KEEP_WRITE_BUFFER {
            *buf = BytesMut::new();
        }
    }

    /// Sends one frame like [`Connection::send`], and gives its body back once written, so a
    /// sender can fill the same memory with the next chunk: a fresh buffer per chunk costs a
    /// page fault per page on machines that return freed memory to their host.
    pub async fn send_returning_body(
        &mut self,
        frame: Frame,
        within: Duration,
    ) -> Result<Bytes, ConnectionError> {
        let body = frame.body.clone();
        self.send(frame, within).await?;
        Ok(body)
    }

    /// A chunk's body goes to the stream from its own memory rather than being copied into the
    /// write buffer first: that copy cost a memcpy of every byte sent, and left each
    /// connection that ever sent a chunk holding a buffer the size of one.
    async fn send_now(&mut self, frame: Frame) -> Result<(), CodecError> {
        if frame.body.is_empty() {
            return self.framed.send(frame).await;
        }
        SinkExt::<Frame>::flush(&mut self.framed).await?; // what is buffered goes first
        let mut head = BytesMut::new();
        self.framed
            .codec_mut()
            .codec
            .encode_head(&frame, &mut head)?;
        let io = self.framed.get_mut();
        io.write_all(&head).await?;
        io.write_all(&frame.body).await?;
        Ok(())
    }

    /// The next frame, or a header the peer got wrong but that kept the stream in step;
    /// fails once no bytes arrived for `within`. Cancel-safe: a frame half read stays
    /// buffered for the next call.
    pub async fn recv(&mut self, within: Duration) -> Result<Incoming, ConnectionError> {
        let progress = self.progress.clone();
        match unless_silent(&progress, Way::In, within, self.next_frame()).await {
            None => Err(ConnectionError::RecvTimeout(within)),
            Some(r) => r,
        }
    }

    /// Like [`Connection::recv`], but the whole frame must be here within `within`, however
    /// its bytes trickle: for the waits that are deadlines (a hello, a login), which a peer
    /// dripping a byte at a time must not stretch.
    pub async fn recv_by(&mut self, within: Duration) -> Result<Incoming, ConnectionError> {
        match tokio::time::timeout(within, self.next_frame()).await {
            Err(_) => Err(ConnectionError::RecvTimeout(within)),
            Ok(r) => r,
        }
    }

    /// A frame the peer has already sent, if one is here, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<Incoming, ConnectionError>> {
        self.next_frame().now_or_never()
    }

    /// The next frame, a chunk's body read only once its bytes are granted. Cancel-safe: a
    /// grant being waited for is simply waited for again by the next call.
    async fn next_frame(&mut self) -> Result<Incoming, ConnectionError> {
        // The last chunk's bytes are its holder's to keep; if nobody took them, they are free.
        self.body_permit = None;
        loop {
            let step = match self.framed.next().await {
                None => return Err(ConnectionError::Closed),
                Some(step) => step?,
            };
            match step {
                Step::Body(len) => {
                    let budget = self
                        .budget
                        .as_ref()
                        .expect("bodies are held only with a budget");
                    // Kept in the connection, not here: a caller that drops this future (a
                    // `select!`) must not lose the grant the codec already counts on.
                    self.granted = Some(budget.take(len as usize).await);
                    self.framed.codec_mut().granted = true;
                    // The body is received in the memory of an earlier one, if one is free.
                    // (What the buffer holds already is the body's start.)
                    let buf = self.framed.read_buffer_mut();
                    let room = len as usize;
                    if buf.capacity() < room {
                        if let Some(mut reused) = budget.reuse(room) {
                            reused.extend_from_slice(buf);
                            *buf = reused;
                        }
                    }
                }
                Step::Frame(incoming) => {
                    if let Ok(f) = &incoming {
                        if matches!(f.message, crate::Message::Chunk(_)) {
                            self.body_permit = self.granted.take();
                            self.shrink_read_buffer(f.body.len());
                        }
                    }
                    return Ok(incoming);
                }
            }
        }
    }

    /// Gives up a read buffer grown for a chunk (whose body of `body` bytes was split from
    /// it): the chunk's body shares its memory, which must go when the body does, not stay
    /// with the connection. With a budget, the budget keeps it to receive a later chunk in.
    fn shrink_read_buffer(&mut self, body: usize) {
        let buf = self.framed.read_buffer_mut();
        // What is left after the split reports only its own capacity, not the memory's.
        if buf.capacity() + body > KEEP_READ_BUFFER {
            let mut fresh = BytesMut::with_capacity(READ_CAPACITY.max(buf.len()));
            fresh.extend_from_slice(buf);
            let old = std::mem::replace(buf, fresh);
            if let Some(budget) = &self.budget {
                let size = old.capacity() + body;
                budget.keep(old, size);
            }
        }
    }

    /// Flushes what is buffered and closes our side of the stream, within `within`.
    pub async fn shutdown(&mut self, within: Duration) -> Result<(), ConnectionError> {
        let close = async {
            SinkExt::<Frame>::flush(&mut self.framed).await?;
            self.framed.get_mut().shutdown().await?;
            Ok::<_, CodecError>(())
        };
        match tokio::time::timeout(within, close).await {
            Err(_) => Err(ConnectionError::SendTimeout(within)),
            Ok(r) => r.map_err(Into::into),
        }
    }

    /// When bytes last came in (the connection's start if none has yet).
    pub fn last_read(&self) -> Instant {
        self.progress.last(&self.progress.read)
    }

    /// The codec, to change its caps (smaller frames before login, say).
    pub fn codec_mut(&mut self) -> &mut FrameCodec {
        &mut self.framed.codec_mut().codec
    }

    /// The stream underneath, for what only it knows (a TLS session's exporter, say).
    pub fn get_ref(&self) -> &S {
        &self.framed.get_ref().inner
    }
}

impl<S: Stream> Connection<S> {
    /// The same connection over a boxed stream, what is buffered included.
    pub fn boxed(self) -> Connection<BoxStream> {
        let old = self.framed.into_parts();
        let io = Tracked {
            inner: Box::new(old.io.inner) as BoxStream,
            progress: old.io.progress,
        };
        let mut parts = FramedParts::new::<Frame>(io, old.codec);
        parts.read_buf = old.read_buf;
        parts.write_buf = old.write_buf;
        Connection {
            framed: Framed::from_parts(parts),
            progress: self.progress,
            budget: self.budget,
            body_permit: self.body_permit,
            granted: self.granted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, ErrorReply, Message};
    use bytes::Bytes;

    const SEC: Duration = Duration::from_secs(1);

    fn pair() -> (Connection, Connection) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (
            Connection::new(Box::new(a) as BoxStream),
            Connection::new(Box::new(b) as BoxStream),
        )
    }

    #[tokio::test]
    async fn frames_cross_in_order_with_bodies() {
        let (mut a, mut b) = pair();
        let body = Bytes::from(vec![7u8; 200_000]);
        let digest = crate::Digest::md5(&body);
        let sent = vec![
            Frame::from(Message::Pwd),
            Frame::chunk(5, body, digest),
            Frame::from(Message::Bye),
        ];
        let expect = sent.clone();
        let writer = tokio::spawn(async move {
            for f in sent {
                a.send(f, SEC).await.unwrap();
            }
            a
        });
        for want in expect {
            assert_eq!(b.recv(SEC).await.unwrap().unwrap(), want);
        }
        drop(writer.await.unwrap());
        assert!(matches!(b.recv(SEC).await, Err(ConnectionError::Closed)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_and_a_stuck_one_too() {
        let (mut a, _b) = pair();
        assert!(matches!(
            a.recv(SEC).await,
            Err(ConnectionError::RecvTimeout(_))
        ));
        // Nobody reads `_b`: the pipe's buffer fills and the send cannot finish.
        let big = Bytes::from(vec![0u8; 1 << 20]);
        let frame = Frame::chunk(0, big.clone(), crate::Digest::md5(&big));
        assert!(matches!(
            a.send(frame, SEC).await,
            Err(ConnectionError::SendTimeout(_))
        ));
    }

    /// Regression (issue 18): a wait failed when a whole frame took longer than its limit, so
    /// a 1 MiB chunk under a rate cap of 8 KiB/s (128 s) failed a 60 s stall timeout on both
    /// sides. Now a frame whose bytes keep moving takes as long as it takes, on both sides.
    #[tokio::test(start_paused = true)]
    async fn a_slow_frame_that_keeps_moving_does_not_time_out() {
        let (a, b) = tokio::io::duplex(1024);
        let (mut a, b) = (Connection::new(a), Connection::new(b));
        let body = Bytes::from(vec![9u8; 64 * 1024]);
        let frame = Frame::chunk(0, body.clone(), crate::Digest::md5(&body));
        let want = frame.clone();
        // The reader takes 1 KiB every 100 ms: 64 KiB take 6.4 s, the limit is 1 s.
        let slow = tokio::spawn(async move {
            let mut raw = b.framed.into_parts().io.inner;
            let mut wire = Vec::new();
            let mut piece = [0u8; 1024];
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = tokio::io::AsyncReadExt::read(&mut raw, &mut piece)
                    .await
                    .unwrap();
                if n == 0 {
                    break;
                }
                wire.extend_from_slice(&piece[..n]);
            }
            wire
        });
        let started = Instant::now();
        a.send(frame, SEC).await.unwrap();
        assert!(
            started.elapsed() > 5 * SEC,
            "the frame crossed in {:?}",
            started.elapsed()
        );
        drop(a);
        let wire = slow.await.unwrap();
        let mut want_wire = BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut FrameCodec::new(), want.clone(), &mut want_wire)
            .unwrap();
        assert_eq!(wire, want_wire.to_vec());

        // And a receiver fed 1 KiB every 100 ms gets the whole frame within 1 s waits.
        let (mut raw, b) = tokio::io::duplex(1 << 20);
        let mut b = Connection::new(b);
        let feeding = tokio::spawn(async move {
            for piece in want_wire.chunks(1024) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                raw.write_all(piece).await.unwrap();
            }
            raw
        });
        assert_eq!(b.recv(SEC).await.unwrap().unwrap(), want);
        drop(feeding.await.unwrap());
        // Silence still fails the wait.
        assert!(matches!(
            b.recv(SEC).await,
            Err(ConnectionError::Closed | ConnectionError::RecvTimeout(_))
        ));
    }

    /// Regression (hardening item 4): every connection's codec read a chunk's body as soon as
    /// its header arrived, so a thousand uploads each held a chunk's worth of memory, counted
    /// nowhere. Now the body is not read until the budget grants its bytes.
    #[tokio::test]
    async fn a_chunk_body_is_not_read_until_the_budget_grants_it() {
        let (a, b) = tokio::io::duplex(4 << 20);
        let (mut a, mut b) = (Connection::new(a), Connection::new(b));
        let budget = Budget::new(2 << 20);
        b.set_budget(budget.clone());
        let everything = budget.take(2 << 20).await;
        let body = Bytes::from(vec![3u8; 1 << 20]);
        let frame = Frame::chunk(0, body.clone(), crate::Digest::md5(&body));
        a.send(frame.clone(), SEC).await.unwrap();
        let waited = b.recv(Duration::from_millis(200)).await;
        assert!(
            matches!(waited, Err(ConnectionError::RecvTimeout(_))),
            "{waited:?}"
        );
        assert!(
            b.framed.read_buffer().capacity() <= KEEP_READ_BUFFER,
            "the body was buffered before it was granted: {} bytes",
            b.framed.read_buffer().capacity()
        );
        drop(everything);
        assert_eq!(b.recv(SEC).await.unwrap().unwrap(), frame);
        let permit = b.take_body_permit().expect("the chunk holds its bytes");
        assert_eq!(budget.available(), 1 << 20);
        assert!(
            b.framed.read_buffer().capacity() <= KEEP_READ_BUFFER,
            "buffer kept"
        );
        drop(permit);
        assert_eq!(budget.available(), 2 << 20);
        // Frames without bodies need nothing from the budget.
        let all = budget.take(2 << 20).await;
        a.send(Message::Pwd, SEC).await.unwrap();
        assert_eq!(b.recv(SEC).await.unwrap().unwrap().message, Message::Pwd);
        drop(all);
    }

    /// A receive given up (a timeout, a `select!`) after its body was granted keeps the grant
    /// for the next one: the body is never read with its bytes given back.
    #[tokio::test]
    async fn a_grant_survives_a_receive_given_up_mid_body() {
        let (mut raw, b) = tokio::io::duplex(4 << 20);
        let mut b = Connection::new(b);
        let budget = Budget::new(2 << 20);
        b.set_budget(budget.clone());
        let body = vec![1u8; 1 << 20];
        let mut wire = BytesMut::new();
        let frame = Frame::chunk(0, Bytes::from(body), crate::Digest::md5(b"x"));
        tokio_util::codec::Encoder::encode(&mut FrameCodec::new(), frame.clone(), &mut wire)
            .unwrap();
        let half = wire.len() - (1 << 19);
        raw.write_all(&wire[..half]).await.unwrap();
        let cut = b.recv(Duration::from_millis(100)).await;
        assert!(
            matches!(cut, Err(ConnectionError::RecvTimeout(_))),
            "{cut:?}"
        );
        assert_eq!(budget.available(), 1 << 20, "the grant was kept");
        raw.write_all(&wire[half..]).await.unwrap();
        assert_eq!(b.recv(SEC).await.unwrap().unwrap(), frame);
        assert!(b.take_body_permit().is_some());
        assert_eq!(budget.available(), 2 << 20);
    }

    /// A connection starts without a write buffer, and one grown for a long frame is given
    /// up once sent: an idle connection holds no more than a short reply's worth.
    #[tokio::test]
    async fn a_write_buffer_grown_for_a_long_frame_is_given_up() {
        let (mut a, mut b) = pair();
        assert_eq!(a.framed.write_buffer().capacity(), 0);
        let long = ErrorReply::new(ErrorCode::Busy, "x".repeat(40_000));
        let reading = tokio::spawn(async move {
            let got = b.recv(SEC).await.unwrap().unwrap();
            (b, got)
        });
        a.send(Message::Error(long.clone()), SEC).await.unwrap();
        assert!(a.framed.write_buffer().capacity() <= KEEP_WRITE_BUFFER);
        let (_b, got) = reading.await.unwrap();
        assert_eq!(got.message, Message::Error(long));
    }

    /// A chunk is received in the memory of one received earlier once that one's body is
    /// gone, not in a fresh allocation; never while the earlier body is still held.
    #[tokio::test]
    async fn chunks_reuse_the_memory_of_earlier_ones_whose_bodies_are_gone() {
        let (a, b) = tokio::io::duplex(4 << 20);
        let (mut a, mut b) = (Connection::new(a), Connection::new(b));
        let budget = Budget::new(8 << 20);
        b.set_budget(budget.clone());
        let chunk = |n: u8| {
            let body = Bytes::from(vec![n; 300_000]);
            Frame::chunk(0, body.clone(), crate::Digest::md5(&body))
        };
        let mut held = Vec::new();
        for n in 0..2 {
            a.send(chunk(n), SEC).await.unwrap();
            held.push(b.recv(SEC).await.unwrap().unwrap());
        }
        assert_eq!(budget.kept(), 2, "both bodies still held: two buffers");
        drop(held);
        for n in 2..6 {
            a.send(chunk(n), SEC).await.unwrap();
            let got = b.recv(SEC).await.unwrap().unwrap();
            assert_eq!(got, chunk(n));
        }
        assert_eq!(
            budget.kept(),
            2,
            "each chunk took a kept buffer and gave it back"
        );
    }

    /// Regression: the read buffer was given up after a chunk only if its capacity was over
    /// `KEEP_READ_BUFFER`, but after the body is split off, what is left reports almost none;
    /// once the body was gone, the next read reclaimed the whole chunk's memory for the
    /// connection, and an idle connection kept a chunk's worth (300,070 bytes here).
    #[tokio::test]
    async fn a_connection_keeps_no_chunk_memory_once_the_body_is_gone() {
        for budget in [None, Some(Budget::new(8 << 20))] {
            let (a, b) = tokio::io::duplex(4 << 20);
            let (mut a, mut b) = (Connection::new(a), Connection::new(b));
            if let Some(budget) = budget {
                b.set_budget(budget);
            }
            let body = Bytes::from(vec![5u8; 300_000]);
            a.send(
                Frame::chunk(0, body.clone(), crate::Digest::md5(&body)),
                SEC,
            )
            .await
            .unwrap();
            drop(b.recv(SEC).await.unwrap().unwrap());
            a.send(Message::Pwd, SEC).await.unwrap();
            assert_eq!(b.recv(SEC).await.unwrap().unwrap().message, Message::Pwd);
            let kept = b.framed.read_buffer().capacity();
            assert!(kept <= KEEP_READ_BUFFER, "{kept} bytes kept");
        }
    }

    #[tokio::test]
    async fn garbage_is_corrupt_and_a_cut_frame_is_closed() {
        let (raw, b) = tokio::io::duplex(1024);
        let mut b = Connection::new(b);
        let mut raw = raw;
        raw.write_all(&[0, 0, 0, 3, b'x', b'y', b'z'])
            .await
            .unwrap();
        assert!(matches!(
            b.recv(SEC).await,
            Err(ConnectionError::Corrupt(CodecError::BadHeader(_)))
        ));

        let (mut raw, b) = tokio::io::duplex(1024);
        let mut b = Connection::new(b);
        raw.write_all(&[0, 0, 0, 50, b'{']).await.unwrap();
        drop(raw);
        assert!(matches!(b.recv(SEC).await, Err(ConnectionError::Closed)));
    }

    #[tokio::test]
    async fn a_rejected_header_keeps_the_connection_in_step() {
        let (raw, b) = tokio::io::duplex(1024);
        let mut b = Connection::new(b);
        let mut raw = raw;
        let junk = br#"{"type":"frobnicate"}"#;
        raw.write_all(&(junk.len() as u32).to_be_bytes())
            .await
            .unwrap();
        raw.write_all(junk).await.unwrap();
        let mut ok = BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut FrameCodec::new(), Message::Ok, &mut ok).unwrap();
        raw.write_all(&ok).await.unwrap();
        assert_eq!(b.recv(SEC).await.unwrap().unwrap_err().kind, "frobnicate");
        assert_eq!(b.recv(SEC).await.unwrap().unwrap().message, Message::Ok);
    }

    #[tokio::test]
    async fn try_recv_takes_only_what_is_here() {
        let (mut a, mut b) = pair();
        assert!(b.try_recv().is_none());
        let reply = ErrorReply::new(ErrorCode::Busy, "x");
        a.send(Message::Error(reply.clone()), SEC).await.unwrap();
        let got = b.try_recv().expect("a frame is here").unwrap().unwrap();
        assert_eq!(got.message, Message::Error(reply));
        a.shutdown(SEC).await.unwrap();
        assert!(matches!(b.try_recv(), Some(Err(ConnectionError::Closed))));
    }

    #[tokio::test]
    async fn boxing_keeps_what_is_buffered() {
        let (a, b) = tokio::io::duplex(1024);
        let mut a = Connection::new(a);
        let mut b = Connection::new(b);
        a.send(Message::Pwd, SEC).await.unwrap();
        a.send(Message::Bye, SEC).await.unwrap();
        assert_eq!(b.recv(SEC).await.unwrap().unwrap().message, Message::Pwd);
        let mut b = b.boxed();
        assert_eq!(b.recv(SEC).await.unwrap().unwrap().message, Message::Bye);
    }

    /// A chunk's body goes straight to the stream, after whatever the write buffer still
    /// holds: the bytes on the wire are exactly those of encoding the frames in order.
    #[tokio::test]
    async fn chunk_bodies_go_out_in_order_after_what_is_buffered() {
        let frames = vec![
            Frame::from(Message::Bye),
            Frame::chunk(0, Bytes::from(vec![7u8; 100_000]), crate::Digest::md5(b"x")),
            Frame::from(Message::Ok),
            Frame::chunk(
                100_000,
                Bytes::from_static(b"tail"),
                crate::Digest::md5(b""),
            ),
        ];
        let (a, mut raw) = tokio::io::duplex(1 << 20);
        let mut a = Connection::new(a);
        // Buffered, not yet flushed: it must still go out before the chunk.
        SinkExt::<Frame>::feed(&mut a.framed, frames[0].clone())
            .await
            .unwrap();
        for f in &frames[1..] {
            a.send(f.clone(), SEC).await.unwrap();
        }
        drop(a);
        let mut wire = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut wire)
            .await
            .unwrap();
        let mut want = BytesMut::new();
        for f in frames {
            tokio_util::codec::Encoder::encode(&mut FrameCodec::new(), f, &mut want).unwrap();
        }
        assert_eq!(wire, want.to_vec());
    }
}
