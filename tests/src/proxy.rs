//! A fault-injecting TCP proxy: sits between `ftp-cli` and `ftpd` and corrupts, cuts or stalls
//! chosen connections, so tests can check what the real binaries make of a bad network.
//!
//! Every accepted connection is forwarded to the upstream address, both directions, one thread
//! each. A [`Fault`] applies to one connection (the first by default, the `0`-th in accept order)
//! or to every connection, in one [`Direction`]. The frame faults follow the protocol's framing
//! (`docs/PROTOCOL.md`) in that direction:
//!
//! ```text
//! +------------------+--------------------------+--------------------------+
//! | header length    | header                   | body (chunk frames only) |
//! | u32, big-endian  | JSON, `length` bytes     | `len` bytes              |
//! +------------------+--------------------------+--------------------------+
//! ```
//!
//! The proxy tracks frames on the bytes as the sender wrote them, so a flipped byte misleads the
//! receiver but never the proxy. It holds each length prefix and header back until the header is
//! complete, so that a fault can pick its frame by type ([`FrameRef`]); bodies stream through.
//! Byte-count faults ([`Action::FlipByte`], [`Action::Cut`], [`Action::Stall`]) count the bytes
//! forwarded and know nothing of frames, so they work on an opaque stream too: over TLS, where
//! the frames are encrypted, they are the only faults that can aim.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Largest header length the protocol allows; anything else means the proxy lost track.
const MAX_HEADER: u32 = 65_536;
/// How much one pump reads at a time.
const BUF_SIZE: usize = 64 * 1024;

/// Which way the bytes a fault applies to travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From `ftp-cli` to `ftpd`: requests, and the chunks of a `put`.
    ClientToServer,
    /// From `ftpd` to `ftp-cli`: replies, and the chunks of a `get`.
    ServerToClient,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ClientToServer => "c->s",
            Direction::ServerToClient => "s->c",
        })
    }
}

/// Which connections a fault applies to, counted from 0 in the order the proxy accepts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// Only this one; the client's reconnects after it pass through cleanly.
    Nth(usize),
    /// All of them, so that every retry meets the same fault.
    Every,
}

impl Connections {
    fn matches(self, index: usize) -> bool {
        match self {
            Connections::Nth(n) => n == index,
            Connections::Every => true,
        }
    }
}

/// Which frame of a direction a fault hits, counted from 0 on each connection. On the client's
/// side frame 0 is its `hello`; on the server's side, its `hello` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameRef {
    /// The `n`-th frame, whatever its type.
    Index(usize),
    /// The `n`-th frame of this `type` (`"chunk"`, `"put_ready"`, `"stored"`).
    Kind(&'static str, usize),
}

impl FrameRef {
    /// The `n`-th chunk frame.
    pub fn chunk(n: usize) -> FrameRef {
        FrameRef::Kind("chunk", n)
    }

    /// The first frame of this type.
    pub fn first(kind: &'static str) -> FrameRef {
        FrameRef::Kind(kind, 0)
    }

    fn matches(self, frame: usize, kind: &str, nth: usize) -> bool {
        match self {
            FrameRef::Index(i) => i == frame,
            FrameRef::Kind(k, n) => k == kind && n == nth,
        }
    }
}

impl fmt::Display for FrameRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameRef::Index(i) => write!(f, "frame {i}"),
            FrameRef::Kind(kind, n) => write!(f, "{kind} {n}"),
        }
    }
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// XORs `0xff` into the middle byte of the body of the `chunk`-th chunk frame (from 0): the
    /// header stays intact, so only the chunk's MD5 can tell.
    FlipChunkBody { chunk: usize },
    /// XORs `0x01` into the middle byte of the frame's JSON header. One bit, so the header may
    /// well still parse, with a wrong value (an offset or MD5 digit, a key name): the nastiest
    /// kind of corruption for a receiver.
    FlipHeader { frame: FrameRef },
    /// XORs `0x01` into the last (least significant) byte of the frame's length prefix: the
    /// receiver reads one header byte too many or too few.
    FlipLength { frame: FrameRef },
    /// Shuts down both sockets instead of forwarding the frame: the frame is lost, and
    /// everything after it.
    CutBefore { frame: FrameRef },
    /// XORs `0xff` into the byte at offset `at` (from 0) of the direction's stream, whatever
    /// it is: over TLS, a damaged record that its receiver must refuse.
    FlipByte { at: u64 },
    /// Forwards `after` bytes, then shuts down both sockets of the connection.
    Cut { after: u64 },
    /// Forwards `after` bytes, then stops forwarding for `duration` (`None`: until the proxy is
    /// dropped), then carries on.
    Stall {
        after: u64,
        duration: Option<Duration>,
    },
}

/// One fault: what, which way, on which connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub direction: Direction,
    pub action: Action,
    pub connections: Connections,
}

impl Fault {
    fn new(direction: Direction, action: Action) -> Fault {
        Fault {
            direction,
            action,
            connections: Connections::Nth(0),
        }
    }

    /// Flips a byte in the body of the `chunk`-th chunk (from 0).
    pub fn flip_chunk_body(direction: Direction, chunk: usize) -> Fault {
        Fault::new(direction, Action::FlipChunkBody { chunk })
    }

    /// Flips a bit in the JSON header of `frame`.
    pub fn flip_header(direction: Direction, frame: FrameRef) -> Fault {
        Fault::new(direction, Action::FlipHeader { frame })
    }

    /// Flips a bit in the length prefix of `frame`.
    pub fn flip_length(direction: Direction, frame: FrameRef) -> Fault {
        Fault::new(direction, Action::FlipLength { frame })
    }

    /// Cuts the connection instead of forwarding `frame`.
    pub fn cut_before(direction: Direction, frame: FrameRef) -> Fault {
        Fault::new(direction, Action::CutBefore { frame })
    }

    /// Flips the byte at offset `at` (from 0) of this direction's stream.
    pub fn flip_byte(direction: Direction, at: u64) -> Fault {
        Fault::new(direction, Action::FlipByte { at })
    }

    /// Cuts the connection once `after` bytes went this way.
    pub fn cut(direction: Direction, after: u64) -> Fault {
        Fault::new(direction, Action::Cut { after })
    }

    /// Holds this direction for `duration` once `after` bytes went this way.
    pub fn stall(direction: Direction, after: u64, duration: Duration) -> Fault {
        Fault::new(
            direction,
            Action::Stall {
                after,
                duration: Some(duration),
            },
        )
    }

    /// Holds this direction for good once `after` bytes went this way.
    pub fn stall_forever(direction: Direction, after: u64) -> Fault {
        Fault::new(
            direction,
            Action::Stall {
                after,
                duration: None,
            },
        )
    }

    /// Applies the fault to the `n`-th accepted connection (from 0) instead of the first.
    pub fn on_connection(mut self, n: usize) -> Fault {
        self.connections = Connections::Nth(n);
        self
    }

    /// Applies the fault to every connection, reconnects included.
    pub fn on_every_connection(mut self) -> Fault {
        self.connections = Connections::Every;
        self
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            Action::FlipChunkBody { chunk } => write!(f, "flip body of chunk {chunk}")?,
            Action::FlipHeader { frame } => write!(f, "flip header of {frame}")?,
            Action::FlipLength { frame } => write!(f, "flip length of {frame}")?,
            Action::CutBefore { frame } => write!(f, "cut before {frame}")?,
            Action::FlipByte { at } => write!(f, "flip byte {at}")?,
            Action::Cut { after } => write!(f, "cut after {after} B")?,
            Action::Stall {
                after,
                duration: Some(d),
            } => write!(f, "stall {d:?} after {after} B")?,
            Action::Stall {
                after,
                duration: None,
            } => write!(f, "stall forever after {after} B")?,
        }
        write!(f, " {}", self.direction)?;
        if self.connections == Connections::Every {
            write!(f, " (every conn)")?;
        }
        Ok(())
    }
}

/// A running proxy. Dropping it closes the listener and every connection and joins the threads.
pub struct Proxy {
    /// Where clients connect.
    addr: SocketAddr,
    /// State the accept loop and the pumps share with the test.
    shared: Arc<Shared>,
    /// The accept loop; joined on drop.
    accept: Option<JoinHandle<()>>,
}

/// What the proxy's threads share.
struct Shared {
    /// The daemon every connection is forwarded to.
    upstream: SocketAddr,
    /// The faults, matched against each new connection.
    faults: Vec<Fault>,
    /// Set on drop: the accept loop stops, stalls end, pumps find their sockets shut.
    stopping: AtomicBool,
    /// How many connections were accepted so far.
    accepted: AtomicUsize,
    /// Every connection, so that drop can close its sockets and join its pumps.
    conns: Mutex<Vec<Conn>>,
    /// What the faults did, one line each, for assertions and failure messages.
    events: Mutex<Vec<String>>,
}

/// One proxied connection.
struct Conn {
    /// Both sockets (clones), to shut them down from outside the pumps.
    sockets: [TcpStream; 2],
    /// Wakes stalled pumps when the connection closes.
    gate: Arc<Gate>,
    /// The two pumps.
    pumps: Vec<JoinHandle<()>>,
}

/// A "connection closed" flag a stalled pump can wait on.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn close(&self) {
        *self.closed.lock().unwrap() = true;
        self.changed.notify_all();
    }

    fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap()
    }

    /// Waits `duration` (`None`: forever) or until the connection closes; true if it closed.
    fn wait(&self, duration: Option<Duration>) -> bool {
        let closed = self.closed.lock().unwrap();
        let closed = match duration {
            Some(d) => {
                self.changed
                    .wait_timeout_while(closed, d, |c| !*c)
                    .unwrap()
                    .0
            }
            None => self.changed.wait_while(closed, |c| !*c).unwrap(),
        };
        *closed
    }
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 that forwards to `upstream`, applying `faults`.
    pub fn start(upstream: SocketAddr, faults: Vec<Fault>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the proxy");
        let addr = listener.local_addr().expect("proxy has no local address");
        let shared = Arc::new(Shared {
            upstream,
            faults,
            stopping: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || accept_loop(&listener, &shared))
        };
        Proxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections the proxy has accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// What the faults did so far, one line each (`conn 0 c->s: flipped ...`).
    pub fn events(&self) -> Vec<String> {
        self.shared.events.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own; it sees `stopping` and returns.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let conns = std::mem::take(&mut *self.shared.conns.lock().unwrap());
        for conn in &conns {
            conn.close();
        }
        for conn in conns {
            for pump in conn.pumps {
                let _ = pump.join();
            }
        }
    }
}

impl Conn {
    fn close(&self) {
        self.gate.close();
        for s in &self.sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let index = shared.accepted.fetch_add(1, Ordering::SeqCst);
        // An upstream that is gone (a killed daemon) looks to the client like a dropped
        // connection, which is what it would see without the proxy too.
        let Ok(upstream) = TcpStream::connect(shared.upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let gate = Arc::new(Gate::default());
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        ) else {
            continue;
        };
        let mut pumps = Vec::with_capacity(2);
        for (direction, from, to) in [
            (Direction::ClientToServer, c2, u2),
            (Direction::ServerToClient, u3, c3),
        ] {
            let faults: Vec<Action> = shared
                .faults
                .iter()
                .filter(|f| f.direction == direction && f.connections.matches(index))
                .map(|f| f.action)
                .collect();
            let pump = Pump {
                label: format!("conn {index} {direction}"),
                from,
                to,
                gate: Arc::clone(&gate),
                shared: Arc::clone(shared),
                corrupter: Corrupter::new(&faults),
                halts: Halts::new(&faults),
            };
            pumps.push(thread::spawn(move || pump.run()));
        }
        let conn = Conn {
            sockets: [client, upstream],
            gate,
            pumps,
        };
        // Drop joins this loop before it closes the connections, so none is missed.
        shared.conns.lock().unwrap().push(conn);
    }
}

/// One direction of one connection.
struct Pump {
    /// `conn N c->s`, for events.
    label: String,
    from: TcpStream,
    to: TcpStream,
    gate: Arc<Gate>,
    shared: Arc<Shared>,
    corrupter: Corrupter,
    halts: Halts,
}

impl Pump {
    fn run(mut self) {
        let end = self.forward();
        match end {
            // A clean end of the sender's stream: pass the half-close on, as TCP would.
            Ok(()) => {
                let _ = self.to.shutdown(Shutdown::Write);
            }
            Err(_) => self.close(),
        }
    }

    /// Shuts down both sockets; the other pump then ends too.
    fn close(&self) {
        self.gate.close();
        let _ = self.from.shutdown(Shutdown::Both);
        let _ = self.to.shutdown(Shutdown::Both);
    }

    fn event(&self, what: &str) {
        self.shared
            .events
            .lock()
            .unwrap()
            .push(format!("{}: {what}", self.label));
    }

    fn forward(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; BUF_SIZE];
        let mut out = Vec::with_capacity(BUF_SIZE);
        loop {
            let n = self.from.read(&mut buf)?;
            out.clear();
            let cut_at = if n == 0 {
                out = self.corrupter.finish();
                None
            } else {
                let applied = self.corrupter.apply(&buf[..n], &mut out);
                for event in &applied.events {
                    self.event(event);
                }
                applied.cut_at
            };
            let end = cut_at.unwrap_or(out.len());
            self.send(&mut out[..end])?;
            if cut_at.is_some() {
                self.close();
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
            if n == 0 {
                return Ok(());
            }
            if self.gate.is_closed() {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
        }
    }

    /// Writes `data` on, with the bytes a byte-count fault names flipped, stopping where one
    /// says.
    fn send(&mut self, data: &mut [u8]) -> io::Result<()> {
        // `data[start..]` is still to go; `halts.pos` counts the bytes before it.
        let mut start = 0;
        while let Some((before, halt)) = self.halts.next_within(data.len() - start) {
            let at = start + before;
            match halt {
                Halt::Flip => {
                    data[at] ^= 0xff;
                    self.event(&format!("flipped byte {}", self.halts.pos + before as u64));
                }
                Halt::Cut => {
                    self.pass(&data[start..at])?;
                    self.event(&format!("cut after {} B", self.halts.pos));
                    self.close();
                    return Err(io::ErrorKind::ConnectionAborted.into());
                }
                Halt::Stall(duration) => {
                    self.pass(&data[start..at])?;
                    start = at;
                    self.event(&format!(
                        "stalled after {} B for {}",
                        self.halts.pos,
                        duration.map_or("ever".to_owned(), |d| format!("{d:?}"))
                    ));
                    if self.gate.wait(duration) || self.shared.stopping.load(Ordering::SeqCst) {
                        return Err(io::ErrorKind::ConnectionAborted.into());
                    }
                }
            }
        }
        self.pass(&data[start..])
    }

    /// Writes `data` on and counts it.
    fn pass(&mut self, data: &[u8]) -> io::Result<()> {
        self.to.write_all(data)?;
        self.halts.advance(data.len());
        Ok(())
    }
}

/// What a byte-count fault does when its byte comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Halt {
    /// XOR `0xff` into the byte, forward it and carry on.
    Flip,
    Cut,
    Stall(Option<Duration>),
}

/// The byte-count faults of one direction, in stream order, and how far the stream got. A flip
/// at `after` hits the byte that follows the first `after`, the one a cut there would lose.
struct Halts {
    /// Bytes forwarded so far.
    pos: u64,
    /// `(after, halt)` still to come, sorted by `after`.
    pending: Vec<(u64, Halt)>,
}

impl Halts {
    fn new(actions: &[Action]) -> Halts {
        let mut pending: Vec<(u64, Halt)> = actions
            .iter()
            .filter_map(|a| match *a {
                Action::FlipByte { at } => Some((at, Halt::Flip)),
                Action::Cut { after } => Some((after, Halt::Cut)),
                Action::Stall { after, duration } => Some((after, Halt::Stall(duration))),
                _ => None,
            })
            .collect();
        pending.sort_by_key(|&(after, _)| after);
        Halts { pos: 0, pending }
    }

    /// If a halt falls before the end of the next `len` bytes, takes it and says how many of
    /// them to forward first.
    fn next_within(&mut self, len: usize) -> Option<(usize, Halt)> {
        let &(after, halt) = self.pending.first()?;
        let before = after.saturating_sub(self.pos);
        if before < len as u64 {
            self.pending.remove(0);
            Some((before as usize, halt))
        } else {
            None
        }
    }

    fn advance(&mut self, n: usize) {
        self.pos += n as u64;
    }
}

/// Where the frame parser is in the stream.
#[derive(Debug)]
enum Part {
    /// Reading the 4-byte length prefix into `held`.
    Length,
    /// Reading a JSON header of `len` bytes into `held` (after its prefix).
    Header { len: usize },
    /// Passing a chunk body through; `done` of `len` bytes so far.
    Body { len: u64, done: u64 },
    /// The stream did not look like frames; everything passes through untouched.
    Lost,
}

/// What one piece of the stream turned into.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// What the faults did, one line each.
    pub events: Vec<String>,
    /// Set when a `CutBefore` frame came: forward only this much of the output, then cut.
    pub cut_at: Option<usize>,
}

/// Follows the frames of one direction and flips the bytes the frame faults ask for.
///
/// A frame's length prefix and header are held back until the header is complete, so a fault
/// can pick a frame by its type (the third `chunk`, the first `put_ready`); bodies stream through.
#[derive(Debug)]
pub struct Corrupter {
    /// Frame faults still to fire.
    faults: Vec<Action>,
    part: Part,
    /// Index of the frame being read.
    frame: usize,
    /// How many frames of each type went by, the current one included once its header is read.
    seen: Vec<(String, usize)>,
    /// The current frame's prefix and header, as the sender wrote them, not yet forwarded.
    held: Vec<u8>,
    /// Offset, in the current chunk body, of the byte to flip.
    body_target: Option<u64>,
    /// Set once a `CutBefore` fired: nothing more is forwarded.
    cut: bool,
}

impl Corrupter {
    /// A parser at the start of a stream, with the frame faults among `actions`.
    pub fn new(actions: &[Action]) -> Corrupter {
        let faults = actions
            .iter()
            .copied()
            .filter(|a| {
                matches!(
                    a,
                    Action::FlipChunkBody { .. }
                        | Action::FlipHeader { .. }
                        | Action::FlipLength { .. }
                        | Action::CutBefore { .. }
                )
            })
            .collect();
        Corrupter {
            faults,
            part: Part::Length,
            frame: 0,
            seen: Vec::new(),
            held: Vec::with_capacity(256),
            body_target: None,
            cut: false,
        }
    }

    /// Index of the frame the next byte belongs to (for tests).
    pub fn frame(&self) -> usize {
        self.frame
    }

    /// Whether the parser gave up on the stream (for tests).
    pub fn is_lost(&self) -> bool {
        matches!(self.part, Part::Lost)
    }

    /// The bytes still held back, at the end of the stream: they go out as they are.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Takes the frame fault `pick` selects, if any.
    fn take(&mut self, pick: impl Fn(&Action) -> bool) -> bool {
        match self.faults.iter().position(pick) {
            Some(i) => {
                self.faults.remove(i);
                true
            }
            None => false,
        }
    }

    /// Gives up on framing: what is held goes out unchanged, and so does everything after.
    fn lose(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.part = Part::Lost;
    }

    /// The frame after this one starts.
    fn next_frame(&mut self) {
        self.frame += 1;
        self.part = Part::Length;
    }

    /// A header is complete in `held`: applies the faults aimed at this frame, forwards it, and
    /// decides whether a body follows. Returns false if the frame was cut.
    fn header_done(&mut self, out: &mut Vec<u8>, applied: &mut Applied) -> bool {
        let header = &self.held[4..];
        let parsed: Option<serde_json::Value> = serde_json::from_slice(header).ok();
        let kind = parsed
            .as_ref()
            .and_then(|v| v.get("type"))
            .and_then(|t| t.as_str())
            .map(str::to_owned);
        let Some(kind) = kind else {
            self.lose(out);
            return true;
        };
        let body = if kind == "chunk" {
            match parsed
                .as_ref()
                .and_then(|v| v.get("len"))
                .and_then(|l| l.as_u64())
            {
                Some(len) => len,
                None => {
                    self.lose(out);
                    return true;
                }
            }
        } else {
            0
        };
        let nth = match self.seen.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => {
                *count += 1;
                *count - 1
            }
            None => {
                self.seen.push((kind.clone(), 1));
                0
            }
        };
        let (frame, len) = (self.frame, self.held.len() - 4);
        let here = |f: FrameRef| f.matches(frame, &kind, nth);
        let name = format!("frame {frame} ({kind} {nth})");

        if self.take(|a| matches!(a, Action::CutBefore { frame } if here(*frame))) {
            applied.events.push(format!("cut before {name}"));
            applied.cut_at = Some(out.len());
            self.held.clear();
            self.cut = true;
            return false;
        }
        if self.take(|a| matches!(a, Action::FlipLength { frame } if here(*frame))) {
            self.held[3] ^= 0x01;
            applied
                .events
                .push(format!("flipped the length prefix of {name}"));
        }
        if self.take(|a| matches!(a, Action::FlipHeader { frame } if here(*frame))) {
            self.held[4 + len / 2] ^= 0x01;
            applied.events.push(format!(
                "flipped header byte {} of {len} of {name}",
                len / 2
            ));
        }
        out.append(&mut self.held);

        if kind != "chunk" || body == 0 {
            self.next_frame();
            return true;
        }
        self.body_target = self
            .take(|a| *a == Action::FlipChunkBody { chunk: nth })
            .then_some(body / 2);
        if self.body_target.is_some() {
            applied.events.push(format!(
                "flipped body byte {} of {body} of {name}",
                body / 2
            ));
        }
        self.part = Part::Body { len: body, done: 0 };
        true
    }

    /// Follows the frames in the next piece of the stream, appending to `out` what can be
    /// forwarded now, with the bytes the faults ask for flipped.
    pub fn apply(&mut self, input: &[u8], out: &mut Vec<u8>) -> Applied {
        let mut applied = Applied::default();
        let mut i = 0;
        while i < input.len() && !self.cut {
            match self.part {
                Part::Lost => {
                    out.extend_from_slice(&input[i..]);
                    break;
                }
                Part::Length => {
                    let n = (4 - self.held.len()).min(input.len() - i);
                    self.held.extend_from_slice(&input[i..i + n]);
                    i += n;
                    if self.held.len() == 4 {
                        let len = u32::from_be_bytes(self.held[..4].try_into().unwrap());
                        if len == 0 || len > MAX_HEADER {
                            self.lose(out);
                        } else {
                            self.part = Part::Header { len: len as usize };
                        }
                    }
                }
                Part::Header { len } => {
                    let n = (4 + len - self.held.len()).min(input.len() - i);
                    self.held.extend_from_slice(&input[i..i + n]);
                    i += n;
                    if self.held.len() == 4 + len && !self.header_done(out, &mut applied) {
                        break;
                    }
                }
                Part::Body { len, done } => {
                    let n = (len - done).min((input.len() - i) as u64) as usize;
                    let start = out.len();
                    out.extend_from_slice(&input[i..i + n]);
                    if let Some(at) = self.body_target {
                        if at >= done && at < done + n as u64 {
                            out[start + (at - done) as usize] ^= 0xff;
                            self.body_target = None;
                        }
                    }
                    i += n;
                    if done + n as u64 == len {
                        self.next_frame();
                    } else {
                        self.part = Part::Body {
                            len,
                            done: done + n as u64,
                        };
                    }
                }
            }
        }
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame as it goes on the wire.
    fn frame(header: &str, body: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out
    }

    fn chunk(offset: u64, body: &[u8]) -> Vec<u8> {
        let header = format!(
            r#"{{"type":"chunk","offset":{offset},"len":{},"digest":"00000000000000000000000000000000"}}"#,
            body.len()
        );
        frame(&header, body)
    }

    /// hello, put, chunk 0 (10 bytes), chunk 1 (6 bytes), eof; with where each frame starts.
    fn stream() -> (Vec<u8>, Vec<usize>) {
        let frames = [
            frame(r#"{"type":"hello","version":1}"#, b""),
            frame(r#"{"type":"put","path":"a","size":16}"#, b""),
            chunk(0, b"0123456789"),
            chunk(10, b"abcdef"),
            frame(r#"{"type":"eof","size":16,"digest":"x"}"#, b""),
        ];
        let mut starts = Vec::new();
        let mut out = Vec::new();
        for f in frames {
            starts.push(out.len());
            out.extend(f);
        }
        (out, starts)
    }

    /// Runs `input` through a corrupter in pieces of `piece` bytes; returns what it forwarded,
    /// with what it held back at the end.
    fn corrupt(actions: &[Action], input: &[u8], piece: usize) -> (Vec<u8>, Corrupter, Applied) {
        let mut c = Corrupter::new(actions);
        let mut out = Vec::new();
        let mut all = Applied::default();
        for part in input.chunks(piece.min(input.len())) {
            let applied = c.apply(part, &mut out);
            all.events.extend(applied.events);
            if let Some(at) = applied.cut_at {
                all.cut_at = Some(at);
                out.truncate(at);
                return (out, c, all);
            }
        }
        out.extend(c.finish());
        (out, c, all)
    }

    /// Positions where `a` and `b` differ, with the XOR of the bytes.
    fn diff(a: &[u8], b: &[u8]) -> Vec<(usize, u8)> {
        a.iter()
            .zip(b)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, (x, y))| (i, x ^ y))
            .collect()
    }

    const PIECES: [usize; 6] = [1, 2, 3, 7, 64, usize::MAX];

    #[test]
    fn follows_frames_without_changing_a_byte() {
        let (input, starts) = stream();
        for piece in PIECES {
            let (out, c, applied) = corrupt(&[], &input, piece);
            assert_eq!(out, input, "piece {piece}");
            assert_eq!(c.frame(), starts.len(), "piece {piece}");
            assert!(!c.is_lost(), "piece {piece}");
            assert_eq!(applied, Applied::default(), "piece {piece}");
        }
    }

    #[test]
    fn holds_back_only_an_incomplete_header() {
        let (input, starts) = stream();
        let mut c = Corrupter::new(&[]);
        let mut out = Vec::new();
        // All of frame 0, and the prefix and half the header of frame 1.
        let cut = starts[1] + 4 + 10;
        c.apply(&input[..cut], &mut out);
        assert_eq!(out, &input[..starts[1]]);
        // The rest of the header, and 3 bytes of the first chunk's body.
        let cut2 = starts[3] - 7;
        c.apply(&input[cut..cut2], &mut out);
        assert_eq!(out, &input[..cut2]);
    }

    #[test]
    fn flips_the_middle_of_the_chosen_chunk_body() {
        let (input, starts) = stream();
        // Chunk 1 is frame 3; its header precedes the 6-byte body.
        let body = starts[4] - 6;
        for piece in PIECES {
            let actions = [Action::FlipChunkBody { chunk: 1 }];
            let (out, c, applied) = corrupt(&actions, &input, piece);
            assert_eq!(diff(&input, &out), [(body + 3, 0xff)], "piece {piece}");
            assert_eq!(c.frame(), starts.len(), "piece {piece}");
            assert_eq!(
                applied.events,
                ["flipped body byte 3 of 6 of frame 3 (chunk 1)"],
                "piece {piece}"
            );
        }
    }

    #[test]
    fn flips_the_middle_of_the_chosen_header() {
        let (input, starts) = stream();
        let len = starts[3] - starts[2] - 4 - 10;
        for frame in [FrameRef::Index(2), FrameRef::chunk(0)] {
            for piece in PIECES {
                let actions = [Action::FlipHeader { frame }];
                let (out, c, applied) = corrupt(&actions, &input, piece);
                assert_eq!(
                    diff(&input, &out),
                    [(starts[2] + 4 + len / 2, 0x01)],
                    "{frame}, piece {piece}"
                );
                // The proxy keeps following the frames as sent.
                assert_eq!(c.frame(), starts.len(), "piece {piece}");
                assert_eq!(
                    applied.events,
                    [format!(
                        "flipped header byte {} of {len} of frame 2 (chunk 0)",
                        len / 2
                    )]
                );
            }
        }
    }

    #[test]
    fn flips_the_low_byte_of_the_chosen_length_prefix() {
        let (input, starts) = stream();
        for frame in [FrameRef::Index(4), FrameRef::first("eof")] {
            for piece in PIECES {
                let actions = [Action::FlipLength { frame }];
                let (out, c, applied) = corrupt(&actions, &input, piece);
                assert_eq!(diff(&input, &out), [(starts[4] + 3, 0x01)], "piece {piece}");
                assert_eq!(c.frame(), starts.len(), "piece {piece}");
                assert_eq!(
                    applied.events,
                    ["flipped the length prefix of frame 4 (eof 0)"]
                );
            }
        }
    }

    #[test]
    fn cuts_just_before_the_chosen_frame() {
        let (input, starts) = stream();
        for piece in PIECES {
            let actions = [Action::CutBefore {
                frame: FrameRef::chunk(1),
            }];
            let (out, _, applied) = corrupt(&actions, &input, piece);
            assert_eq!(out, &input[..starts[3]], "piece {piece}");
            assert_eq!(applied.events, ["cut before frame 3 (chunk 1)"]);
        }
    }

    #[test]
    fn a_fault_past_the_end_never_fires() {
        let (input, _) = stream();
        let actions = [
            Action::FlipChunkBody { chunk: 2 },
            Action::FlipHeader {
                frame: FrameRef::Index(5),
            },
            Action::CutBefore {
                frame: FrameRef::first("stored"),
            },
        ];
        let (out, _, applied) = corrupt(&actions, &input, 5);
        assert_eq!(out, input);
        assert_eq!(applied, Applied::default());
    }

    #[test]
    fn gives_up_on_a_stream_that_is_not_frames() {
        for garbage in [
            &b"\0\0\0\0abc"[..],
            b"\xff\xff\xff\xffabc",
            b"\0\0\0\x03abc\0\0\0\x01x",
            b"\0\0\0\x05[1,2]\0\0\0\x01x",
        ] {
            let actions = [
                Action::FlipChunkBody { chunk: 0 },
                Action::FlipHeader {
                    frame: FrameRef::Index(1),
                },
            ];
            for piece in PIECES {
                let (out, c, applied) = corrupt(&actions, garbage, piece);
                assert_eq!(out, garbage);
                assert!(c.is_lost(), "{garbage:?}");
                assert!(applied.events.is_empty());
            }
        }
    }

    #[test]
    fn halts_fall_on_the_exact_byte() {
        let mut h = Halts::new(&[
            Action::Stall {
                after: 10,
                duration: None,
            },
            Action::Cut { after: 3 },
        ]);
        assert_eq!(h.next_within(3), None);
        h.advance(3);
        assert_eq!(h.next_within(4), Some((0, Halt::Cut)));
        assert_eq!(h.next_within(4), None);
        h.advance(4);
        assert_eq!(h.next_within(4), Some((3, Halt::Stall(None))));
        h.advance(4);
        assert_eq!(h.next_within(usize::MAX), None);
    }

    #[test]
    fn a_flip_takes_the_byte_after_its_count_and_halts_nothing() {
        let mut h = Halts::new(&[Action::Cut { after: 8 }, Action::FlipByte { at: 2 }]);
        assert_eq!(h.next_within(2), None);
        h.advance(2);
        assert_eq!(h.next_within(1), Some((0, Halt::Flip)));
        // The flip did not move the stream on: the cut is still 6 bytes away.
        assert_eq!(h.next_within(6), None);
        assert_eq!(h.next_within(7), Some((6, Halt::Cut)));
    }

    /// An upstream that echoes everything back, one connection at a time, until it is dropped.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                thread::spawn(move || {
                    let mut back = conn.try_clone().unwrap();
                    let _ = io::copy(&mut conn, &mut back);
                    let _ = back.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    /// Sends `data` through `proxy` to the echo server and returns what comes back.
    fn round_trip(proxy: &Proxy, data: &[u8]) -> Vec<u8> {
        let mut conn = TcpStream::connect(proxy.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = conn.try_clone().unwrap();
        let data = data.to_vec();
        let send = thread::spawn(move || {
            let _ = writer.write_all(&data);
            let _ = writer.shutdown(Shutdown::Write);
        });
        let mut back = Vec::new();
        let _ = conn.read_to_end(&mut back);
        send.join().unwrap();
        back
    }

    #[test]
    fn forwards_both_ways_and_corrupts_only_the_chosen_connection() {
        let (input, _) = stream();
        let proxy = Proxy::start(
            echo_server(),
            vec![Fault::flip_chunk_body(Direction::ServerToClient, 0).on_connection(1)],
        );
        assert_eq!(round_trip(&proxy, &input), input);
        let second = round_trip(&proxy, &input);
        assert_eq!(diff(&input, &second).len(), 1);
        assert_eq!(round_trip(&proxy, &input), input);
        assert_eq!(proxy.connections(), 3);
        assert_eq!(proxy.events().len(), 1, "{:?}", proxy.events());
        assert!(proxy.events()[0].starts_with("conn 1 s->c: flipped body"));
    }

    /// Bytes that are not frames (the first length is far too large), as a TLS stream is not.
    fn opaque(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 1) as u8).collect()
    }

    #[test]
    fn flips_the_byte_at_an_offset_of_an_opaque_stream() {
        // Longer than one read, so the second flip falls in a later piece than the first.
        let data = opaque(3 * BUF_SIZE);
        let late = 2 * BUF_SIZE as u64 + 17;
        let proxy = Proxy::start(
            echo_server(),
            vec![
                Fault::flip_byte(Direction::ClientToServer, 5).on_every_connection(),
                Fault::flip_byte(Direction::ServerToClient, late).on_connection(1),
            ],
        );
        assert_eq!(diff(&data, &round_trip(&proxy, &data)), [(5, 0xff)]);
        assert_eq!(
            diff(&data, &round_trip(&proxy, &data)),
            [(5, 0xff), (late as usize, 0xff)]
        );
        assert_eq!(
            proxy.events(),
            [
                "conn 0 c->s: flipped byte 5",
                "conn 1 c->s: flipped byte 5",
                &format!("conn 1 s->c: flipped byte {late}"),
            ]
        );
    }

    #[test]
    fn cuts_after_the_given_bytes() {
        let data = vec![7u8; 100_000];
        let proxy = Proxy::start(
            echo_server(),
            vec![Fault::cut(Direction::ClientToServer, 1000).on_every_connection()],
        );
        for _ in 0..2 {
            let back = round_trip(&proxy, &data);
            assert!(back.len() <= 1000, "{} bytes came back", back.len());
        }
        assert_eq!(proxy.events().len(), 2, "{:?}", proxy.events());
    }

    #[test]
    fn a_stall_holds_then_lets_go_and_drop_ends_one_that_never_would() {
        let proxy = Proxy::start(
            echo_server(),
            vec![Fault::stall(
                Direction::ServerToClient,
                2,
                Duration::from_millis(300),
            )],
        );
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&proxy, b"hello"), b"hello");
        assert!(started.elapsed() >= Duration::from_millis(300));

        let proxy = Proxy::start(
            echo_server(),
            vec![Fault::stall_forever(Direction::ClientToServer, 0)],
        );
        let mut conn = TcpStream::connect(proxy.addr()).unwrap();
        // Not frames (a zero header length), so nothing is held back waiting for a header.
        conn.write_all(b"\0\0\0\0x").unwrap();
        wait_for(|| !proxy.events().is_empty());
        drop(proxy);
        let mut rest = Vec::new();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The proxy closed the connection instead of leaving it hanging.
        assert!(conn.read_to_end(&mut rest).is_ok_and(|n| n == 0));
    }

    fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "condition never held");
            thread::sleep(Duration::from_millis(2));
        }
    }
}
