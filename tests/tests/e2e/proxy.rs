//! Behind a load balancer: a real HAProxy in TCP mode with `send-proxy-v2` in front of a real
//! ftpd, and peers that send the PROXY header by hand.
//!
//! HAProxy connects to the daemon from 127.0.0.3, the one address in `--proxy-protocol-from`;
//! clients connect to HAProxy from 127.0.0.1 or 127.0.0.2, so the daemon's log and limits show
//! whose address it took. The HAProxy tests need the Debian package `haproxy` (`.ci/run`
//! installs it): without it they fail under CI and are skipped elsewhere.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use protocol::{ErrorCode, Message};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::raw::Raw;
use crate::util::{tmpdir, write_random, Daemon, Haproxy, Site};

/// The address HAProxy connects to the daemon from: the listed proxy.
const PROXY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// A second client address, beside the default 127.0.0.1.
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// How long a refused connection may take to be closed, or HAProxy to start listening.
const STEP: Duration = Duration::from_secs(10);

/// A daemon that takes PROXY headers from [`PROXY`] alone, logging the header reads too.
fn daemon(extra: &[&str]) -> Daemon {
    Daemon::builder()
        .args(["--proxy-protocol-from", "127.0.0.3"])
        .args(["--log-level", "info,ftpd::proxy=debug"])
        .args(extra)
        .start()
}

/// Whether HAProxy is here; fails under CI (which installs it), skips elsewhere.
fn have_haproxy() -> bool {
    crate::util::have_tool("haproxy", "-v", "haproxy")
}

/// HAProxy relaying to `backend` with `send-proxy-v2` from [`PROXY`], with health checks when
/// `checks`.
fn haproxy(backend: SocketAddr, checks: bool) -> Haproxy {
    let check = if checks { " check inter 100ms" } else { "" };
    Haproxy::start(&format!(
        "    server ftpd1 {backend} send-proxy-v2 source {PROXY}{check}\n"
    ))
}

/// A TCP connection to `addr` from the loopback address `ip`.
fn dial_from(ip: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket
        .bind(&SockAddr::from(SocketAddr::from((ip, 0))))
        .unwrap_or_else(|e| panic!("cannot bind to {ip}: {e}"));
    socket
        .connect_timeout(&SockAddr::from(addr), STEP)
        .unwrap_or_else(|e| panic!("cannot connect from {ip} to {addr}: {e}"));
    let tcp = TcpStream::from(socket);
    tcp.set_read_timeout(Some(STEP)).unwrap();
    tcp
}

/// A PROXY protocol v2 header relaying TCP over IPv4 from `client` to `server`.
fn v2_header(client: SocketAddrV4, server: SocketAddrV4) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(client.ip().octets());
    header.extend(server.ip().octets());
    header.extend(client.port().to_be_bytes());
    header.extend(server.port().to_be_bytes());
    header
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("{addr} is not IPv4"),
    }
}

/// Panics unless the daemon closes `tcp` without sending a byte.
#[track_caller]
fn expect_closed_silently(tcp: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tcp.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("expected a silent close, got {:?}", &buf[..n]),
        Err(e) => panic!("expected a close within {STEP:?}: {e}"),
    }
}

/// The addresses of the daemon's `connection opened` lines.
fn opened_peers(d: &Daemon) -> Vec<String> {
    d.log()
        .lines()
        .filter(|l| l.contains("connection opened"))
        .filter_map(|l| l.split("peer=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

/// A put and a get through HAProxy: the file comes back whole, and the daemon saw the client
/// (127.0.0.1) on every line, never the proxy it came through.
#[test]
fn a_transfer_through_haproxy_is_logged_under_the_clients_address() {
    if !have_haproxy() {
        return;
    }
    let d = daemon(&[]);
    let haproxy = haproxy(d.addr(), false);
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 3_000_000, 20);
    d.cli_via(haproxy.addr)
        .cwd(work.path())
        .round_trip("a.bin", "back.bin");
    let log = d.log();
    let peers = opened_peers(&d);
    assert!(
        !peers.is_empty(),
        "no connection went through; log:\n{log}\nhaproxy:\n{}",
        haproxy.log()
    );
    for peer in &peers {
        assert!(peer.starts_with("127.0.0.1:"), "{peer} in:\n{log}");
    }
    assert!(!log.contains("peer=127.0.0.3"), "{log}");
    // The transfer log too.
    for op in ["op=\"put\"", "op=\"get\""] {
        assert!(
            log.lines()
                .any(|l| l.contains(op) && l.contains("transfer peer=127.0.0.1:")),
            "no {op} from 127.0.0.1 in:\n{log}"
        );
    }
    let relayed = log
        .lines()
        .filter(|l| l.contains("PROXY header read") && l.contains("proxy=127.0.0.3:"))
        .count();
    assert_eq!(relayed, peers.len(), "{log}");
}

/// HAProxy's health checks send a LOCAL header (its own connection, with send-proxy-v2 on the
/// server): the daemon serves them as the proxy's, and the server stays in rotation.
#[test]
fn haproxys_health_checks_are_local_and_served() {
    if !have_haproxy() {
        return;
    }
    let d = daemon(&[]);
    let haproxy = haproxy(d.addr(), true);
    d.wait_for_log(&["PROXY LOCAL", "proxy=127.0.0.3:"]);
    d.wait_for_log(&["connection opened", "peer=127.0.0.3:"]);
    let work = tmpdir();
    write_random(work.path().join("c.bin"), 100_000, 21);
    d.cli_via(haproxy.addr)
        .cwd(work.path())
        .round_trip("c.bin", "back.bin");
    let log = d.log();
    assert!(!log.contains("connection refused"), "{log}");
}

/// With one connection per address, a client behind HAProxy holding one is refused a second,
/// while another client through the same HAProxy is served: the limit counts clients, not
/// the proxy.
#[test]
fn the_per_address_limit_counts_the_client_behind_haproxy() {
    if !have_haproxy() {
        return;
    }
    let d = daemon(&["--max-connections-per-ip", "1"]);
    let haproxy = haproxy(d.addr(), false);
    let _held = Raw::connect_from(IpAddr::V4(OTHER_CLIENT), haproxy.addr);
    d.wait_for_log(&["connection opened", "peer=127.0.0.2:"]);
    let refused =
        Raw::connect_from(IpAddr::V4(OTHER_CLIENT), haproxy.addr).expect_error(ErrorCode::Busy);
    assert!(
        refused.message.contains("from your address"),
        "{}",
        refused.message
    );
    let work = tmpdir();
    write_random(work.path().join("b.bin"), 200_000, 22);
    d.cli_via(haproxy.addr)
        .cwd(work.path())
        .round_trip("b.bin", "back.bin");
}

/// A failed login through HAProxy shuts out the guesser's network (127.0.7.0/24), not the
/// proxy's: another network's client through the same HAProxy logs in.
#[test]
fn the_login_throttle_falls_on_the_client_behind_haproxy() {
    if !have_haproxy() {
        return;
    }
    let site = Site::new();
    for home in ["alice", "bob"] {
        std::fs::create_dir(site.root().join(home)).unwrap();
    }
    let users = site.private_file(
        "etc/users.toml",
        "[[user]]\nname = \"alice\"\nsecret = \"alice's secret\"\nhome = \"alice\"\n\
         [[user]]\nname = \"bob\"\nsecret = \"bob's secret\"\nhome = \"bob\"\n",
    );
    let d = site
        .daemon()
        .arg("--users")
        .arg(&users)
        .args(["--proxy-protocol-from", "127.0.0.3"])
        .args(["--login-penalty", "30s", "--login-penalty-max", "30s"])
        .start();
    let haproxy = haproxy(d.addr(), false);
    let via = |ip: [u8; 4]| Raw::connect_from(IpAddr::from(ip), haproxy.addr);

    let mut guesser = via([127, 0, 7, 1]);
    guesser.hello_for_login();
    let answer = guesser.scram("alice", "guess");
    assert!(matches!(answer, Message::Error(_)), "{answer:?}");
    let refusal = via([127, 0, 7, 2]).expect_error(ErrorCode::Busy);
    assert!(
        refusal.message.contains("failed logins from your network"),
        "{}",
        refusal.message
    );
    let mut other = via([127, 0, 8, 1]);
    other.hello_for_login();
    let answer = other.scram("bob", "bob's secret");
    assert!(matches!(answer, Message::AuthOk(_)), "{answer:?}");
    d.wait_for_log(&["authentication failed", "peer=127.0.7.1:"]);
}

/// A peer not in --proxy-protocol-from that starts with a PROXY header (either version) is
/// refused, as is a client behind a listed proxy that sends a second one of its own; a listed
/// proxy that sends garbage or nothing is refused with a log line; the daemon serves on.
#[test]
fn proxy_headers_are_taken_from_listed_proxies_alone() {
    let d = daemon(&[]);
    let addr = v4(d.addr());
    let forged = v2_header(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 1234), addr);

    let mut spoofer = dial_from(Ipv4Addr::LOCALHOST, d.addr());
    // One write: the daemon may refuse (and reset) as soon as it has read the header, so a
    // second write could meet the reset.
    spoofer
        .write_all(&[&forged[..], b"\x16\x03\x01 the rest"].concat())
        .unwrap();
    expect_closed_silently(&mut spoofer);
    d.wait_for_log(&[
        "connection closed",
        "peer=127.0.0.1:",
        "not a proxy in --proxy-protocol-from",
    ]);

    let mut v1 = dial_from(OTHER_CLIENT, d.addr());
    v1.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 1234 2121\r\n")
        .unwrap();
    expect_closed_silently(&mut v1);
    d.wait_for_log(&["peer=127.0.0.2:", "not a proxy in --proxy-protocol-from"]);

    // Through a listed proxy, the client's own header is a spoof too.
    let mut behind = dial_from(PROXY, d.addr());
    let client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 4321);
    behind
        .write_all(&[v2_header(client, addr), forged].concat())
        .unwrap();
    expect_closed_silently(&mut behind);
    d.wait_for_log(&[
        "peer=198.51.100.7:4321",
        "not a proxy in --proxy-protocol-from",
    ]);

    // A listed proxy that speaks TLS at once, or HTTP, or v1: no header.
    for (first, why) in [
        (
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 a client hello"[..],
            "no PROXY protocol v2 header",
        ),
        (
            b"PROXY TCP4 203.0.113.9 127.0.0.1 1234 2121\r\n",
            "v1 (text) header",
        ),
    ] {
        let mut garbage = dial_from(PROXY, d.addr());
        garbage.write_all(first).unwrap();
        expect_closed_silently(&mut garbage);
        d.wait_for_log(&["connection refused", "peer=127.0.0.3:", why]);
    }
    // One that says nothing is cut at the header's own timeout, not left to hang.
    let mut silent = dial_from(PROXY, d.addr());
    expect_closed_silently(&mut silent);
    d.wait_for_log(&[
        "connection refused",
        "peer=127.0.0.3:",
        "no whole PROXY header",
    ]);

    // None of them ever reached a session, and a direct client is served as before.
    let log = d.log();
    assert!(!log.contains("peer=203.0.113.9"), "{log}");
    let work = tmpdir();
    write_random(work.path().join("d.bin"), 100_000, 23);
    d.cli().cwd(work.path()).round_trip("d.bin", "back.bin");
}
