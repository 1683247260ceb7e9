//! The PROXY protocol v2 behind a load balancer: which peers must send the header
//! (`--proxy-protocol-from`), reading it before TLS so the client's own address stands in for
//! the proxy's everywhere, and refusing the header from anyone else.
//!
//! ```text
//! +--------------------------------+---------+---------+-------------+----------------------+
//! | signature (12 bytes)           | ver|cmd | fam|prt | length u16  | addresses, TLVs      |
//! | \r\n\r\n\0\r\nQUIT\n           | 0x2_    | e.g.0x11| big-endian  | `length` bytes       |
//! +--------------------------------+---------+---------+-------------+----------------------+
//! ```
//!
//! The header is read by exact lengths, never past its end, so the bytes after it (the
//! client's TLS ClientHello) stay in the socket for the transport to peek and read.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use ppp::v2::{self, Addresses, Command, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::Config;

/// Time a listed proxy has to send its whole header, from the accept: HAProxy writes it with
/// the connect, so anything slower is a fault, and this wait is the proxy's, not counted in the
/// client's --handshake-timeout.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest header accepted, in bytes: HAProxy's own limit for what it sends and accepts
/// (the 16 fixed bytes, two IPv6 addresses and ports, and a few TLVs). The length field could
/// say up to 65535 more; nothing near that is read.
pub const MAX_HEADER: usize = 536;

/// The fixed part of a v2 header: signature, version and command, family and protocol, length.
const FIXED: usize = 16;

/// How PROXY protocol v1, the text form, begins.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// Headers of listed proxies being read at once at most, beside `--max-connections`: HAProxy
/// sends one with each connect, so only a fault keeps many waiting.
const MAX_PENDING: usize = 256;

/// The peers that must begin every connection with a PROXY protocol v2 header
/// (`--proxy-protocol-from`); empty, none may.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<IpNet>);

impl Trusted {
    pub fn new(nets: Vec<IpNet>) -> Trusted {
        Trusted(nets)
    }

    /// Whether `ip` is a listed proxy (an IPv4 address mapped into IPv6, as a dual-stack
    /// listener sees it, counts as the IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// One `--proxy-protocol-from` entry: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a bare address, a
/// /32 or a /128.
pub fn parse_source(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{s}` is neither an address nor a CIDR (e.g. 10.0.0.0/8, ::1)"))?;
    // 10.1.2.3/8 is read as 10.0.0.0/8, which is what a person writing it means.
    Ok(net.trunc())
}

/// What a listed proxy's header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Relayed for this client.
    Client(SocketAddr),
    /// The proxy's own connection (LOCAL: a health check): served as the proxy's.
    Local,
}

/// Why a listed proxy's connection was refused before its header ended; logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no whole PROXY header within {} s", HEADER_TIMEOUT.as_secs())]
    Timeout,
    #[error("the proxy closed the connection before its PROXY header ended")]
    Closed,
    #[error("a PROXY protocol v1 (text) header; only v2 is accepted (HAProxy: send-proxy-v2)")]
    Version1,
    #[error("no PROXY protocol v2 header at the start (HAProxy: send-proxy-v2)")]
    Missing,
    #[error("a PROXY header of {0} bytes, over the limit of {MAX_HEADER}")]
    TooLong(usize),
    #[error("a malformed PROXY header: {0}")]
    Malformed(v2::ParseError),
    #[error("a PROXY header relaying {0}, which has no client address to serve it under")]
    Unsupported(&'static str),
    #[error("cannot read the PROXY header: {0}")]
    Io(io::Error),
}

impl HeaderError {
    /// The `reason` label of `ftpd_connections_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HeaderError::Timeout => "proxy_header_timeout",
            _ => "proxy_header_bad",
        }
    }
}

/// Reads one PROXY protocol v2 header from the start of `stream`, within [`HEADER_TIMEOUT`],
/// and not a byte past it.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Source, HeaderError> {
    read_header_within(stream, HEADER_TIMEOUT).await
}

async fn read_header_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> Result<Source, HeaderError> {
    tokio::time::timeout(wait, read_header_unbounded(stream))
        .await
        .map_err(|_| HeaderError::Timeout)?
}

async fn read_header_unbounded<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Source, HeaderError> {
    // A health check may reset the connection as soon as it is up: no fault of anyone's.
    let closed = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => HeaderError::Closed,
        _ => HeaderError::Io(e),
    };
    let mut buf = [0u8; MAX_HEADER];
    stream.read_exact(&mut buf[..FIXED]).await.map_err(closed)?;
    if !buf.starts_with(v2::PROTOCOL_PREFIX) {
        return Err(if buf.starts_with(V1_SIGNATURE) {
            HeaderError::Version1
        } else {
            HeaderError::Missing
        });
    }
    let total = FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > MAX_HEADER {
        return Err(HeaderError::TooLong(total));
    }
    stream
        .read_exact(&mut buf[FIXED..total])
        .await
        .map_err(closed)?;
    let header = v2::Header::try_from(&buf[..total]).map_err(HeaderError::Malformed)?;
    if header.command == Command::Local {
        return Ok(Source::Local);
    }
    if header.protocol == Protocol::Datagram {
        return Err(HeaderError::Unsupported("UDP"));
    }
    match header.addresses {
        Addresses::IPv4(a) => Ok(Source::Client(SocketAddr::new(
            a.source_address.into(),
            a.source_port,
        ))),
        Addresses::IPv6(a) => Ok(Source::Client(SocketAddr::new(
            a.source_address.into(),
            a.source_port,
        ))),
        // Served under the proxy's address, every such client would share one per-IP limit
        // and one login throttle: refused instead.
        Addresses::Unix(_) => Err(HeaderError::Unsupported("a Unix socket")),
        Addresses::Unspecified => Err(HeaderError::Unsupported("an unknown protocol")),
    }
}

/// A PROXY header where a client's first bytes belong: sent by a peer not in
/// `--proxy-protocol-from`, or by a client behind a listed proxy, after the proxy's own.
#[derive(Debug, thiserror::Error)]
#[error("sent a PROXY protocol header, but is not a proxy in --proxy-protocol-from")]
pub struct Spoofed;

/// Whether `first`, a connection's first bytes (as many as have come), begin a PROXY header of
/// either version. A client of ours begins with a TLS record (0x16) or, in plaintext, a frame's
/// length (0x00), so even one byte that matches is no client of ours.
pub fn looks_like_proxy(first: &[u8]) -> bool {
    let begins = |signature: &[u8]| {
        let n = first.len().min(signature.len());
        n > 0 && first[..n] == signature[..n]
    };
    begins(v2::PROTOCOL_PREFIX) || begins(V1_SIGNATURE)
}

/// Refuses a connection whose first bytes are a PROXY header, by `deadline`, consuming
/// nothing: the bytes are peeked, so a real client's stay for the transport. A peer that sends
/// nothing in time, or closes, is let through to be refused by the transport as before.
pub async fn screen(tcp: &TcpStream, deadline: std::time::Instant) -> Result<(), Spoofed> {
    let mut first = [0u8; 16];
    let deadline = tokio::time::Instant::from_std(deadline);
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(n)) if looks_like_proxy(&first[..n]) => Err(Spoofed),
        _ => Ok(()),
    }
}

/// A connection accepted, with the address it is served under.
type Accepted = (TcpStream, SocketAddr);

/// The listener, seen through `--proxy-protocol-from`: connections from listed proxies come
/// out of [`Incoming::accept`] once their header is read, under the client's address; every
/// other connection comes out as accepted.
pub struct Incoming {
    /// The daemon's listening socket.
    listener: TcpListener,
    /// The listed proxies.
    trusted: Trusted,
    /// Headers being read at once (each task holds a permit), so that a faulty proxy cannot
    /// make the daemon hold sockets without limit.
    pending: Arc<Semaphore>,
    /// Where the header tasks hand their connections to the accept loop.
    ready_tx: mpsc::Sender<Accepted>,
    /// What [`Incoming::accept`] takes them from.
    ready_rx: mpsc::Receiver<Accepted>,
    /// The header tasks: aborted with the listener, at shutdown.
    readers: JoinSet<()>,
}

impl Incoming {
    pub fn new(listener: TcpListener, config: &Config) -> Incoming {
        let pending = config.max_connections.clamp(1, MAX_PENDING);
        let (ready_tx, ready_rx) = mpsc::channel(pending);
        Incoming {
            listener,
            trusted: Trusted::new(config.proxy_protocol_from.clone()),
            pending: Arc::new(Semaphore::new(pending)),
            ready_tx,
            ready_rx,
            readers: JoinSet::new(),
        }
    }

    /// The next connection to admit, and the address it is served under. Cancel safe: a
    /// connection whose header was read waits in the channel for the next call.
    pub async fn accept(&mut self) -> io::Result<Accepted> {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (tcp, peer) = accepted?;
                    if !self.trusted.contains(peer.ip()) {
                        return Ok((tcp, peer));
                    }
                    let Ok(permit) = self.pending.clone().try_acquire_owned() else {
                        crate::metrics::connection_refused("proxy_headers_full");
                        crate::transport::refuse(tcp, peer, "too many connections");
                        continue;
                    };
                    self.readers.spawn(relayed(tcp, peer, permit, self.ready_tx.clone()));
                }
                Some(ready) = self.ready_rx.recv() => return Ok(ready),
                // Reaps the finished header tasks, so that the set does not grow.
                Some(_) = self.readers.join_next(), if !self.readers.is_empty() => {}
            }
        }
    }
}

/// Reads the header of a listed proxy's connection and hands the connection on under the
/// client's address, or refuses it with a log line.
async fn relayed(
    mut tcp: TcpStream,
    proxy: SocketAddr,
    _permit: OwnedSemaphorePermit,
    ready: mpsc::Sender<Accepted>,
) {
    let peer = match read_header(&mut tcp).await {
        Ok(Source::Client(client)) => {
            debug!(%proxy, %client, "PROXY header read");
            client
        }
        Ok(Source::Local) => {
            debug!(%proxy, "PROXY LOCAL (a health check): served as the proxy's own connection");
            proxy
        }
        Err(e) => {
            crate::metrics::connection_refused(e.label());
            match e {
                HeaderError::Closed => info!(peer = %proxy, reason = %e, "connection refused"),
                e => warn!(peer = %proxy, reason = %e, "connection refused"),
            }
            return;
        }
    };
    // The loop gone means the daemon is shutting down: the connection closes with it.
    let _ = ready.send((tcp, peer)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, IPv4, IPv6, Version};
    use tokio::io::AsyncWriteExt;

    fn header(command: Command, addresses: impl Into<Addresses>) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    /// What `read_header` makes of `bytes` sent at once, and what it left in the stream.
    async fn read(bytes: &[u8]) -> (Result<Source, HeaderError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(bytes).await.unwrap();
        drop(client);
        let got = read_header_within(&mut server, Duration::from_secs(2)).await;
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        (got, rest)
    }

    #[test]
    fn sources_are_cidrs_or_bare_addresses() {
        let trusted = Trusted::new(
            [
                "10.0.0.0/8",
                "192.0.2.7",
                "2001:db8::/32",
                "::1",
                "172.16.5.9/12",
            ]
            .into_iter()
            .map(|s| parse_source(s).unwrap())
            .collect(),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (addr, listed) in [
            ("10.200.1.1", true),
            ("11.0.0.1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("::ffff:10.1.2.3", true),
            ("::ffff:192.0.2.7", true),
            ("2001:db8:ffff::1", true),
            ("2001:db9::1", false),
            ("::1", true),
            ("::2", false),
            ("172.31.0.1", true),
            ("172.32.0.1", false),
        ] {
            assert_eq!(trusted.contains(ip(addr)), listed, "{addr}");
        }
        assert_eq!(
            parse_source(" 192.0.2.7 ").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(parse_source("::1").unwrap().to_string(), "::1/128");
        for bad in [
            "",
            "10.0.0.0/33",
            "example.com",
            "10.0.0/8",
            "::1/129",
            "10.0.0.1:80",
        ] {
            assert!(parse_source(bad).is_err(), "{bad:?}");
        }
        assert!(!Trusted::default().contains(ip("127.0.0.1")));
    }

    #[tokio::test]
    async fn an_ipv4_header_gives_the_client_and_leaves_what_follows() {
        let mut bytes = header(
            Command::Proxy,
            IPv4::new([198, 51, 100, 7], [192, 0, 2, 1], 40000, 2121),
        );
        bytes.extend_from_slice(b"\x16\x03\x01 the client hello");
        let (got, rest) = read(&bytes).await;
        assert_eq!(
            got.unwrap(),
            Source::Client("198.51.100.7:40000".parse().unwrap())
        );
        assert_eq!(rest, b"\x16\x03\x01 the client hello");
    }

    #[tokio::test]
    async fn an_ipv6_header_with_tlvs_gives_the_client() {
        let bytes = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            IPv6::new(
                "2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap(),
                "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
                50000,
                2121,
            ),
        )
        .write_tlv(ppp::v2::Type::Authority, b"ftp.example.com")
        .unwrap()
        .build()
        .unwrap();
        let (got, rest) = read(&bytes).await;
        assert_eq!(
            got.unwrap(),
            Source::Client("[2001:db8::7]:50000".parse().unwrap())
        );
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn local_is_the_proxys_own_connection() {
        let bytes = Builder::new(Version::Two | Command::Local, 0)
            .build()
            .unwrap();
        let (got, _) = read(&bytes).await;
        assert_eq!(got.unwrap(), Source::Local);
        // HAProxy's checks may give addresses with LOCAL too: they are ignored.
        let bytes = header(
            Command::Local,
            IPv4::new([127, 0, 0, 1], [127, 0, 0, 1], 1, 2),
        );
        assert_eq!(read(&bytes).await.0.unwrap(), Source::Local);
    }

    /// Whether a refusal is the one a case expects.
    type Expected = fn(&HeaderError) -> bool;

    #[tokio::test]
    async fn garbage_truncated_and_unsupported_headers_are_refused() {
        let v4 = header(
            Command::Proxy,
            IPv4::new([198, 51, 100, 7], [192, 0, 2, 1], 40000, 2121),
        );
        let mut bad_version = v4.clone();
        bad_version[12] = 0x11;
        let mut bad_family = v4.clone();
        bad_family[13] = 0x41;
        let unix = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            ppp::v2::Unix::new([0; 108], [0; 108]),
        )
        .build()
        .unwrap();
        let udp = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Datagram,
            IPv4::new([198, 51, 100, 7], [192, 0, 2, 1], 1, 2),
        )
        .build()
        .unwrap();
        let unspec = Builder::new(Version::Two | Command::Proxy, 0)
            .build()
            .unwrap();
        let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
            (
                "a TLS hello",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh".to_vec(),
                |e| matches!(e, HeaderError::Missing),
            ),
            ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), |e| {
                matches!(e, HeaderError::Missing)
            }),
            (
                "v1",
                b"PROXY TCP4 198.51.100.7 192.0.2.1 40000 2121\r\n".to_vec(),
                |e| matches!(e, HeaderError::Version1),
            ),
            ("nothing", vec![], |e| matches!(e, HeaderError::Closed)),
            ("half the signature", v4[..7].to_vec(), |e| {
                matches!(e, HeaderError::Closed)
            }),
            ("the addresses cut", v4[..20].to_vec(), |e| {
                matches!(e, HeaderError::Closed)
            }),
            ("version 1 in binary", bad_version, |e| {
                matches!(e, HeaderError::Malformed(_))
            }),
            ("family 4", bad_family, |e| {
                matches!(e, HeaderError::Malformed(_))
            }),
            ("a Unix socket", unix, |e| {
                matches!(e, HeaderError::Unsupported(_))
            }),
            ("UDP", udp, |e| matches!(e, HeaderError::Unsupported(_))),
            ("AF_UNSPEC relayed", unspec, |e| {
                matches!(e, HeaderError::Unsupported(_))
            }),
        ];
        for (what, bytes, expected) in cases {
            let (got, _) = read(&bytes).await;
            match got {
                Err(e) if expected(&e) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    /// The length field may say 65535: nothing past the cap is read (or allocated).
    #[tokio::test]
    async fn an_oversized_header_is_refused_before_its_body() {
        let mut bytes = v2::PROTOCOL_PREFIX.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        bytes.extend_from_slice(&[7; 600]);
        let (got, rest) = read(&bytes).await;
        assert!(
            matches!(got, Err(HeaderError::TooLong(n)) if n == 16 + 65535),
            "{got:?}"
        );
        assert_eq!(rest.len(), 600, "nothing past the fixed part was read");
        // Just within the cap is fine (a TLV of padding).
        let mut bytes = v2::PROTOCOL_PREFIX.to_vec();
        let len = (MAX_HEADER - FIXED) as u16;
        bytes.extend_from_slice(&[0x21, 0x11]);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&[198, 51, 100, 7, 192, 0, 2, 1, 0, 1, 0, 2]);
        let pad = len as usize - 12 - 3;
        bytes.extend_from_slice(&[0x04]);
        bytes.extend_from_slice(&(pad as u16).to_be_bytes());
        bytes.extend(std::iter::repeat_n(0u8, pad));
        assert_eq!(bytes.len(), MAX_HEADER);
        let (got, _) = read(&bytes).await;
        assert_eq!(
            got.unwrap(),
            Source::Client("198.51.100.7:1".parse().unwrap())
        );
    }

    /// A proxy that drips its header and never ends it is cut at the timeout, however many
    /// bytes it sent (a shorter timeout than the daemon's, not to wait 5 s here).
    #[tokio::test]
    async fn a_slowloris_header_times_out() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let dripper = tokio::spawn(async move {
            let bytes = header(
                Command::Proxy,
                IPv4::new([198, 51, 100, 7], [192, 0, 2, 1], 40000, 2121),
            );
            for byte in &bytes[..bytes.len() - 1] {
                if client.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Holds the connection open without the last byte.
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let wait = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let got = read_header_within(&mut server, wait).await;
        let took = started.elapsed();
        assert!(matches!(got, Err(HeaderError::Timeout)), "{got:?}");
        assert!(took >= wait && took < wait * 5, "{took:?}");
        dripper.abort();
    }

    #[test]
    fn either_signature_is_seen_from_its_first_byte() {
        let v2 = v2::PROTOCOL_PREFIX;
        for (first, proxy) in [
            (&v2[..1], true),
            (&v2[..5], true),
            (v2, true),
            (b"PROXY TCP4 1.2.3.4".as_slice(), true),
            (b"PRO", true),
            (b"\x16\x03\x01\x02\x00", false),
            (b"\x00\x00\x00\x2a{\"type\"", false),
            (b"\r\n\r\n\x01", false),
            (b"PROXZ", false),
            (b"", false),
        ] {
            assert_eq!(looks_like_proxy(first), proxy, "{first:?}");
        }
    }

    /// Over a real socket: a PROXY header is refused and a TLS hello let through, and neither
    /// is consumed.
    #[tokio::test]
    async fn the_screen_peeks_without_consuming() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let soon = || std::time::Instant::now() + Duration::from_secs(5);
        for (first, spoofed) in [
            (v2::PROTOCOL_PREFIX, true),
            (b"PROXY TCP4 ".as_slice(), true),
            (b"\x16\x03\x01\x00\x05hello".as_slice(), false),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(first).await.unwrap();
            let (mut tcp, _) = listener.accept().await.unwrap();
            assert_eq!(screen(&tcp, soon()).await.is_err(), spoofed, "{first:?}");
            let mut got = vec![0; first.len()];
            tcp.read_exact(&mut got).await.unwrap();
            assert_eq!(got, first, "the bytes are still there");
        }
        // Silence until the deadline is not for the screen to judge.
        let _client = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(50);
        assert!(screen(&tcp, deadline).await.is_ok());
    }

    /// The flag takes a comma-separated list, repeats, and reads back from the effective
    /// settings; a bad entry is refused at start.
    #[test]
    fn the_flag_takes_lists_and_repeats() {
        let load = |args: &[&str]| {
            let mut argv = vec!["ftpd", "--root", "/srv/x"];
            argv.extend_from_slice(args);
            Config::load(
                &argv
                    .iter()
                    .map(std::ffi::OsString::from)
                    .collect::<Vec<_>>(),
            )
        };
        let shown = |c: &Config| {
            c.proxy_protocol_from
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let c = load(&["--proxy-protocol-from", "10.0.0.0/8,::1"]).unwrap();
        assert_eq!(shown(&c), ["10.0.0.0/8", "::1/128"]);
        let c = load(&[
            "--proxy-protocol-from",
            "10.0.0.1",
            "--proxy-protocol-from",
            "fd00::/8",
        ])
        .unwrap();
        assert_eq!(shown(&c), ["10.0.0.1/32", "fd00::/8"]);
        let text = c.effective();
        assert!(
            text.contains("proxy-protocol-from = \"10.0.0.1/32,fd00::/8\""),
            "{text}"
        );
        assert!(load(&[]).unwrap().proxy_protocol_from.is_empty());
        assert!(!load(&[]).unwrap().effective().contains("proxy-protocol"));
        let err = load(&["--proxy-protocol-from", "10.0.0.0/8,nowhere"]).unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
    }
}
