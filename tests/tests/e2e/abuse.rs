//! Hostile input and limits: garbage and oversized frames, path tricks and symlinks out of the
//! root, slow, silent and flooding clients, oversized uploads and quotas. None of it may disturb a
//! normal client, leak descriptors in the daemon, or touch anything outside the root.
//!
//! The attacker speaks the protocol directly with [`Raw`]. In the big test it connects from
//! 127.0.1.2, so the per-address caps apply to it and not to the real client on 127.0.0.1: the
//! daemon counts connections that have not logged in by address range (a /24), and 127.0.0.2
//! would share the real client's.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use protocol::{ChunkHeader, Digest, Eof, ErrorCode, ErrorReply, Hello, Message};

use crate::raw::{chunk, encode, get, hello_message, put, Raw, Waited};
use crate::util::{
    assert_missing, assert_same_file, holds_within, md5_file, names, staged_bytes, tmpdir,
    wait_until, write_file, write_random, Daemon, Site, MIB,
};

/// How long one client run, or one wait for the daemon to tidy up, may take here.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the attacker connects from: another loopback address than the normal client's, in
/// another /24.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2));
/// The big test's `--handshake-timeout`.
const HANDSHAKE: Duration = Duration::from_secs(2);
/// The big test's `--max-connections-per-ip`.
const PER_IP_CAP: usize = 32;
/// How late after its timeout the daemon may close a connection, on a loaded machine.
const CLOSE_MARGIN: Duration = Duration::from_secs(4);
/// Connections the flood opens and abandons, and how many it holds open at once: small enough
/// for a test process limited to 1024 descriptors, next to the other tests in this binary.
const FLOOD: usize = 1000;
const WAVE: usize = 250;
/// Descriptors the daemon may hold after the attack beyond what it held at startup.
const FD_SLACK: usize = 10;
/// Pace of the slow client's hello.
const DRIP: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// The attack, next to a normal client

#[test]
fn attacker_does_not_disturb_a_normal_client() {
    let site = Site::new();
    let sentinel = plant_sentinel(&site);
    // Symlinks planted inside the root (as a local user could), all pointing out of it.
    symlink("/etc", site.root().join("escape")).unwrap();
    symlink("/etc/passwd", site.root().join("passwd")).unwrap();
    symlink(&sentinel, site.root().join("outside")).unwrap();
    let planted = format!("e2e-abuse-planted-{}", std::process::id());
    assert_missing(Path::new("/etc").join(&planted));
    let sentinel_before = snapshot(&sentinel);

    let d = site
        .daemon()
        .args(["--handshake-timeout", "2s"])
        .arg("--max-connections-per-ip")
        .arg(PER_IP_CAP.to_string())
        .start();
    // Taken once the daemon is up: its state directory lies beside the root.
    let parent_before = names(site.dir());
    let fds_start = open_fds(d.pid());
    let (stop_watching, watcher) = watch_fds(d.pid());

    // The normal client puts and gets 32 MiB over and over until the attack is over.
    let work = tmpdir();
    let big = work.path().join("big.bin");
    write_random(&big, 32 * MIB, 7);
    let (attack_over, attack_running) = mpsc::channel::<()>();
    let normal = {
        let cli = d.cli().cwd(&work).timeout(Duration::from_secs(120));
        let (big, back, stored) = (
            big.clone(),
            work.path().join("back.bin"),
            site.root().join("big.bin"),
        );
        thread::spawn(move || {
            let mut rounds = 0;
            loop {
                cli.clone()
                    .cmds("put -f big.bin; get -f big.bin back.bin")
                    .run()
                    .ok()
                    .verified(&big, 2);
                assert_same_file(&big, &stored);
                assert_same_file(&big, &back);
                rounds += 1;
                if !matches!(attack_running.try_recv(), Err(TryRecvError::Empty)) {
                    return rounds;
                }
            }
        })
    };

    // The attack. Answers that are wrong but leave the attack able to go on are collected, so
    // one of them does not hide the others or the checks after the attack.
    let addr = d.addr();
    let drip = thread::spawn(move || slow_drip(addr));
    let mut wrong = Vec::new();
    garbage(addr);
    unknown_type(addr);
    short_body(addr);
    assert_missing(site.root().join("short.bin"));
    wrong.extend(hostile_paths(addr, &planted));
    wrong.extend(malformed_strings(addr));
    let (lived, farewell) = drip.join().expect("the slow client panicked");
    let (busy, timed_out) = flood(addr);
    let _ = attack_over.send(());
    let rounds = normal
        .join()
        .expect("the normal client failed during the attack");

    // The daemon still serves, with no more descriptors than it started with, and nothing
    // outside its root changed.
    let small = work.path().join("small.bin");
    write_random(&small, 100_000, 8);
    d.cli()
        .cwd(&work)
        .timeout(STEP_TIMEOUT)
        .round_trip("small.bin", "small-back.bin");
    let fds_end = wait_for_fds(&d, fds_start + FD_SLACK);
    let _ = stop_watching.send(());
    let fds_peak = watcher.join().unwrap();
    eprintln!(
        "abuse: daemon fds start {fds_start}, peak {fds_peak}, end {fds_end}; \
         flood: {busy} refused busy, {timed_out} closed by the handshake timeout; \
         slow client closed after {lived:?}; normal client rounds: {rounds}"
    );
    assert!(
        fds_peak > fds_start,
        "the descriptor watcher never saw the flood (start {fds_start}, peak {fds_peak})"
    );
    assert_missing(Path::new("/etc").join(&planted));
    assert_eq!(
        snapshot(&sentinel),
        sentinel_before,
        "the directory next to the root changed"
    );
    assert_eq!(
        names(site.dir()),
        parent_before,
        "files appeared or vanished next to the root"
    );
    wait_until("no staged upload is left behind", STEP_TIMEOUT, || {
        staged_bytes(&d.staging()) == 0
    });

    // The slow client: closed by the server within the handshake timeout, with a reason.
    assert!(
        lived < HANDSHAKE + CLOSE_MARGIN,
        "a client dripping its hello lived {lived:?}; the handshake timeout is {HANDSHAKE:?}"
    );
    assert!(
        matches!(&farewell, Some(Message::Error(e)) if e.code == ErrorCode::Timeout),
        "the slow client was closed with {farewell:?}, expected error timeout"
    );
    assert!(
        wrong.is_empty(),
        "hostile requests got wrong answers:\n{}",
        wrong.join("\n")
    );
}

/// Random bytes, a length prefix of 0xFFFFFFFF, a header that is not JSON (before and after
/// hello): each gets an error that says why, then the server closes the connection.
fn garbage(addr: SocketAddr) {
    let mut noise = vec![0u8; 64];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for byte in &mut noise {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut peer = attacker(addr);
    peer.send_bytes(&noise);
    peer.expect_error_in(&[ErrorCode::TooLarge, ErrorCode::BadRequest]);
    peer.expect_closed();

    let mut peer = attacker(addr);
    peer.send_bytes(&[0xFF; 4]);
    peer.expect_error(ErrorCode::TooLarge);
    peer.expect_closed();

    let mut peer = attacker(addr);
    peer.send_header(b"this is not { JSON");
    peer.expect_error(ErrorCode::BadRequest);
    peer.expect_closed();

    let mut peer = attacker(addr).hello();
    peer.send_header(b"{\"type\": \"get\", \"path\": ");
    peer.expect_error(ErrorCode::BadRequest);
    peer.expect_closed();
}

/// A well-formed message of a type the server does not know, after hello: `unsupported`, and
/// the session goes on until `bye`.
fn unknown_type(addr: SocketAddr) {
    let mut peer = attacker(addr).hello();
    peer.send_header(br#"{"type":"format_disk","disk":"C:"}"#);
    peer.expect_error(ErrorCode::Unsupported);
    peer.expect_usable();
    peer.send(&Message::Bye);
    peer.expect_closed();
}

/// A chunk whose body stops short of its declared length, then the attacker closes.
fn short_body(addr: SocketAddr) {
    let mut peer = attacker(addr).hello();
    peer.send(&put("short.bin", 100));
    peer.expect_put_ready();
    peer.send(&chunk(0, &[7; 100]));
    peer.send_bytes(&[7; 10]);
    drop(peer);
}

/// Every path trick, asked through one valid session. Returns what was answered wrongly.
fn hostile_paths(addr: SocketAddr, planted: &str) -> Vec<String> {
    use ErrorCode::{BadRequest, Denied, NotFound};
    let cases: Vec<(String, ErrorCode)> = vec![
        ("../etc/passwd".into(), Denied),
        ("/../x".into(), Denied),
        ("a/../../x".into(), Denied),
        ("..".into(), Denied),
        ("./../x".into(), Denied),
        // A host path means nothing here: it names /etc/passwd inside the root, which is absent.
        ("/etc/passwd".into(), NotFound),
        ("a\0b".into(), BadRequest),
        ("..\\..\\x".into(), BadRequest),
        ("C:\\Windows".into(), BadRequest),
        ("C:/x".into(), BadRequest),
        ("".into(), BadRequest),
        ("n".repeat(300), BadRequest),
        ("d/".repeat(2500), BadRequest),
        (".ftpd/staging/x".into(), Denied),
        ("/.ftpd".into(), Denied),
        ("a/../.ftpd/staging".into(), Denied),
        ("bell\u{7}name".into(), BadRequest),
        ("esc\u{1b}[2Jname".into(), BadRequest),
        // Symlinks inside the root that lead out of it.
        ("escape/passwd".into(), Denied),
        ("passwd".into(), Denied),
        ("outside/keep.txt".into(), Denied),
    ];
    let mut wrong = Vec::new();
    let mut peer = attacker(addr).hello();
    let mut ask = |peer: &mut Raw, what: String, request: Message, want: ErrorCode| {
        peer.send(&request);
        let problem = match peer.try_recv() {
            Some(Message::Error(e)) if e.code == want => None,
            Some(Message::Error(e)) => Some(format!("expected {want}, got {e}")),
            Some(Message::GetReady(r)) => {
                peer.skip_transfer();
                Some(format!("the server sent {} bytes", r.size))
            }
            Some(Message::PutReady(_)) => {
                // Finish the upload to see whether it lands outside; the checks after the
                // attack look there.
                peer.send_chunk(0, b"owned");
                peer.send(&Message::Eof(protocol::Eof {
                    size: 5,
                    digest: Digest::md5(b"owned"),
                }));
                Some(format!(
                    "the server accepted the upload and answered {:?}",
                    peer.try_recv()
                ))
            }
            Some(other) => Some(format!("expected error {want}, got {other:?}")),
            None => Some("the server closed the connection".into()),
        };
        if let Some(problem) = problem {
            wrong.push(format!("{what}: {problem}"));
        }
        // A refused request leaves the session usable: another request gets its answer.
        if !peer.is_usable() {
            wrong.push(format!("{what}: the session was not usable afterwards"));
            *peer = attacker(addr).hello();
        }
    };
    for (path, want) in cases {
        let what = format!("get {:?}", shorten(&path));
        ask(&mut peer, what, get(&path), want);
    }
    for dir in ["escape", "outside"] {
        let path = format!("{dir}/{planted}");
        ask(&mut peer, format!("put {path:?}"), put(&path, 5), Denied);
    }
    peer.send(&Message::Bye);
    peer.expect_closed();
    wrong
}

/// Headers whose JSON strings are not valid Unicode: a lone surrogate escape and raw bytes that
/// are not UTF-8. The header is then not a valid message at all: `bad_request`, and close.
/// Returns what was answered wrongly.
fn malformed_strings(addr: SocketAddr) -> Vec<String> {
    let cases: [(&str, &[u8]); 2] = [
        ("lone surrogate", br#"{"type":"get","path":"\ud800"}"#),
        (
            "invalid UTF-8",
            b"{\"type\":\"get\",\"path\":\"a\xff\xfe\xc3(b\"}",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, header) in cases {
        let mut peer = attacker(addr).hello();
        peer.send_header(header);
        let what = format!(
            "get with a path holding a {what} ({})",
            String::from_utf8_lossy(header)
        );
        match peer.try_recv() {
            Some(Message::Error(e)) if e.code == ErrorCode::BadRequest => {
                if let Some(m) = peer.try_recv() {
                    wrong.push(format!(
                        "{what}: expected the close after the error, got {m:?}"
                    ));
                }
            }
            Some(other) => {
                let usable = peer.is_usable();
                wrong.push(format!(
                    "{what}: expected error bad_request and the close, got {other:?} \
                     (the session {} usable afterwards)",
                    if usable { "was still" } else { "was not" }
                ));
                if usable {
                    peer.send(&Message::Bye);
                }
            }
            None => wrong.push(format!(
                "{what}: expected error bad_request, the server closed without it"
            )),
        }
    }
    wrong
}

/// A client that sends its hello one byte every [`DRIP`]. Returns how long the server let it
/// live and the frame it was closed with.
fn slow_drip(addr: SocketAddr) -> (Duration, Option<Message>) {
    let mut peer = attacker(addr);
    let connected = Instant::now();
    let hello = encode(&hello_message());
    // Half a drip first, so no byte is on the wire just as the server's timer fires.
    let mut wait = DRIP / 2;
    let mut bytes = hello.iter();
    loop {
        let farewell = match peer.wait_frame(wait, HANDSHAKE + CLOSE_MARGIN) {
            Waited::Nothing => None,
            Waited::Closed => Some(None),
            Waited::Frame(m) => Some(Some(m)),
        };
        if let Some(farewell) = farewell {
            let lived = connected.elapsed();
            if farewell.is_some() {
                if let Some(more) = peer.try_recv() {
                    panic!("the server sent {more:?} after {farewell:?} to the slow client");
                }
            }
            return (lived, farewell);
        }
        wait = DRIP;
        if connected.elapsed() > HANDSHAKE + CLOSE_MARGIN {
            // The caller fails the test on the time.
            peer.close();
            return (connected.elapsed(), None);
        }
        let Some(&byte) = bytes.next() else {
            panic!("the server took a whole hello sent a byte every {DRIP:?}")
        };
        // A write into a connection the server closed fails; the next wait sees the close.
        peer.try_send_bytes(&[byte]);
    }
}

/// Opens [`FLOOD`] connections from the attacker's address, [`WAVE`] at a time, and abandons
/// them: each must be refused with `busy` (over the per-address cap) or closed with `timeout`
/// by the handshake timeout. Returns how many got each.
fn flood(addr: SocketAddr) -> (usize, usize) {
    let (mut busy, mut timed_out) = (0, 0);
    for wave in 0..FLOOD.div_ceil(WAVE) {
        let opened = Instant::now();
        let mut peers: Vec<Raw> = (0..WAVE).map(|_| attacker(addr)).collect();
        let mut accepted = 0;
        for peer in &mut peers {
            let reply = peer.expect_error_in(&[ErrorCode::Busy, ErrorCode::Timeout]);
            peer.expect_closed();
            if reply.code == ErrorCode::Busy {
                busy += 1;
                continue;
            }
            accepted += 1;
            timed_out += 1;
            assert!(
                opened.elapsed() < HANDSHAKE + CLOSE_MARGIN,
                "a silent connection lived {:?} with a handshake timeout of {HANDSHAKE:?}",
                opened.elapsed()
            );
        }
        assert!(
            accepted <= PER_IP_CAP,
            "wave {wave}: {accepted} connections from one address were served, the cap is \
             {PER_IP_CAP}"
        );
    }
    (busy, timed_out)
}

// ---------------------------------------------------------------------------------------------
// One limit at a time

#[test]
fn header_over_the_cap_gets_too_large_and_close() {
    let d = Daemon::start();
    let mut peer = Raw::connect(d.addr()).hello();
    // Exactly at the cap is still a frame: a `get` of a path far too long, refused and
    // recoverable.
    let frame = |path_len: usize| serde_json::to_vec(&get(&"p".repeat(path_len))).unwrap();
    let overhead = frame(0).len();
    let header = frame(protocol::MAX_HEADER - overhead);
    assert_eq!(header.len(), protocol::MAX_HEADER);
    peer.send_header(&header);
    peer.expect_error(ErrorCode::BadRequest);
    peer.expect_usable();

    // One byte over: refused from the length alone. The server answers before a single header
    // byte is sent, so it cannot be waiting to buffer them.
    peer.send_bytes(&(protocol::MAX_HEADER as u32 + 1).to_be_bytes());
    peer.expect_error(ErrorCode::TooLarge);
    peer.expect_closed();

    Raw::connect(d.addr()).hello().expect_usable();
}

#[test]
fn unknown_message_type_leaves_the_connection_usable() {
    let d = Daemon::start();
    let mut peer = Raw::connect(d.addr()).hello();
    peer.send_header(br#"{"type":"teleport","to":"mars"}"#);
    peer.expect_error(ErrorCode::Unsupported);
    peer.expect_usable();
    // A known type with an ill-typed field is just as recoverable.
    peer.send_header(br#"{"type":"get","path":42}"#);
    peer.expect_error(ErrorCode::Unsupported);
    peer.expect_usable();
    peer.send(&Message::Bye);
    peer.expect_closed();

    // Before hello, though, anything else is refused and the connection closed.
    let mut peer = Raw::connect(d.addr());
    peer.send_header(br#"{"type":"teleport","to":"mars"}"#);
    peer.expect_error(ErrorCode::BadRequest);
    peer.expect_closed();
}

#[test]
fn body_shorter_than_declared_then_close_leaves_daemon_serving() {
    let d = Daemon::start();
    let mut peer = Raw::connect(d.addr()).hello();
    peer.send(&put("short.bin", 100));
    assert_eq!(peer.expect_put_ready().offset, 0);
    peer.send(&chunk(0, &[7; 100]));
    peer.send_bytes(&[7; 10]);
    peer.close_write();
    // The stream ends mid-frame: at most an error saying so, then the close.
    if let Some(m) = peer.try_recv() {
        assert!(
            matches!(&m, Message::Error(e) if e.code == ErrorCode::BadRequest),
            "expected error bad_request or a plain close, got {m:?}"
        );
        peer.expect_closed();
    }
    assert_missing(d.path("short.bin"));
    wait_until("the staged bytes are removed", STEP_TIMEOUT, || {
        staged_bytes(&d.staging()) == 0
    });

    let work = tmpdir();
    let src = work.path().join("a.bin");
    write_random(&src, 300_000, 3);
    d.cli()
        .cwd(&work)
        .timeout(STEP_TIMEOUT)
        .round_trip("a.bin", "back.bin");
    assert_same_file(&src, d.path("a.bin"));
}

#[test]
fn max_file_size_is_refused_up_front() {
    let d = Daemon::with_args(["--max-file-size", "1M"]);

    // Over the limit: refused in answer to the `put`, before any byte is sent.
    let mut peer = Raw::connect(d.addr()).hello();
    peer.send(&put("raw.bin", 2 * MIB));
    peer.expect_error(ErrorCode::TooLarge);
    peer.expect_usable();

    let work = tmpdir();
    write_random(work.path().join("big.bin"), 2 * MIB, 4);
    let started = Instant::now();
    d.cli()
        .cwd(&work)
        .cmds("put big.bin")
        .timeout(STEP_TIMEOUT)
        .run()
        .fails()
        .stderr_has_any(&["too large", "largest file size"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusing an oversized put took {:?}",
        started.elapsed()
    );
    assert_missing(d.path("big.bin"));
    assert_missing(d.path("raw.bin"));
    assert_eq!(
        staged_bytes(&d.staging()),
        0,
        "an oversized upload was staged"
    );

    // Under the limit (in decimal or binary megabytes) is fine.
    let small = work.path().join("small.bin");
    write_random(&small, 900_000, 5);
    d.cli()
        .cwd(&work)
        .cmds("put small.bin")
        .timeout(STEP_TIMEOUT)
        .run()
        .ok();
    assert_same_file(&small, d.path("small.bin"));
}

#[test]
fn quota_is_enforced() {
    let d = Daemon::with_args(["--quota", "3M"]);
    let work = tmpdir();
    write_random(work.path().join("a1.bin"), MIB, 1);
    write_random(work.path().join("a2.bin"), MIB, 2);
    write_random(work.path().join("b.bin"), 2 * MIB, 3);
    write_random(work.path().join("c.bin"), 3 * MIB / 2, 4);
    let cli = || d.cli().cwd(&work).timeout(STEP_TIMEOUT);

    cli().cmds("put a1.bin; put a2.bin").run().ok();
    cli()
        .cmds("put b.bin")
        .run()
        .fails()
        .stderr_has_any(&["too_large", "too large", "quota"]);
    assert_missing(d.path("b.bin"));
    assert_eq!(
        staged_bytes(&d.staging()),
        0,
        "an upload over quota was staged"
    );

    cli().cmds("rm a1.bin; put c.bin").run().ok();
    assert_missing(d.path("a1.bin"));
    for name in ["a2.bin", "c.bin"] {
        assert_same_file(work.path().join(name), d.path(name));
    }
}

#[test]
fn upload_longer_than_declared_is_stopped() {
    let d = Daemon::start();
    let mut peer = Raw::connect(d.addr()).hello();
    peer.send(&put("ten.bin", 10));
    peer.expect_put_ready();
    peer.send_chunk(0, &[b'x'; 20]);
    peer.expect_error(ErrorCode::SizeMismatch);
    // As a client does when refused mid-upload; the server answers nothing more to it.
    peer.send(&Message::Abort(ErrorReply::new(
        ErrorCode::BadRequest,
        "refused",
    )));
    peer.expect_usable();
    assert_missing(d.path("ten.bin"));
}

#[test]
fn idle_client_is_closed_after_idle_timeout() {
    let d = Daemon::with_args(["--idle-timeout", "1s"]);
    let mut peer = Raw::connect(d.addr()).hello();
    expect_timed_out(&mut peer, "an idle session", "idle timeout");
}

#[test]
fn stalled_upload_is_closed_after_stall_timeout() {
    let d = Daemon::with_args(["--stall-timeout", "1s"]);
    let mut peer = Raw::connect(d.addr()).hello();
    peer.send(&put("stalled.bin", 100));
    peer.expect_put_ready();
    expect_timed_out(&mut peer, "a stalled upload", "stall timeout");
    assert_missing(d.path("stalled.bin"));
}

#[test]
fn per_ip_limit_refuses_with_busy() {
    let d = Daemon::with_args(["--max-connections-per-ip", "2"]);
    let mut first = Raw::connect(d.addr()).hello();
    let mut second = Raw::connect(d.addr()).hello();

    let mut third = Raw::connect(d.addr());
    third.expect_error(ErrorCode::Busy);
    third.expect_closed();
    second.expect_usable();

    first.send(&Message::Bye);
    first.expect_closed();
    // The server frees the slot just after it closes the connection: try until it has.
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut fourth = loop {
        let mut peer = Raw::connect(d.addr());
        peer.send(&hello_message());
        match peer.try_recv() {
            Some(Message::Hello(_)) => break peer,
            Some(Message::Error(e)) if e.code == ErrorCode::Busy => {}
            None => {}
            Some(other) => panic!("expected hello or error busy, got {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "a connection is still refused {STEP_TIMEOUT:?} after one of two closed"
        );
    };
    fourth.expect_usable();
    second.expect_usable();
}

// ---------------------------------------------------------------------------------------------
// Helpers: a sentinel next to the root, the attacker, what is on disk and in /proc.

/// Creates `sentinel/` beside the site's root, with known contents nothing from the daemon may
/// touch, and returns its path.
fn plant_sentinel(site: &Site) -> PathBuf {
    let sentinel = site.path("sentinel");
    fs::create_dir_all(sentinel.join("inner")).unwrap();
    write_file(
        sentinel.join("keep.txt"),
        "nothing from the daemon may touch this\n",
    );
    write_random(sentinel.join("inner").join("deep.bin"), 10_000, 9);
    sentinel
}

/// Everything under `dir`: each path with its kind, and a file's size and MD5.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_dir() {
                todo.push(path.clone());
                "dir".to_owned()
            } else if meta.is_file() {
                format!("file {} {}", meta.len(), md5_file(&path))
            } else {
                format!("other {:?}", meta.file_type())
            };
            out.insert(path.strip_prefix(dir).unwrap().to_owned(), what);
        }
    }
    out
}

/// Panics unless the daemon closes `peer`, silent from now on, with error `timeout` once its
/// 1 s `limit` is over, and not much later. `what` names the session in the message.
#[track_caller]
fn expect_timed_out(peer: &mut Raw, what: &str, limit: &str) {
    let silent = Instant::now();
    peer.expect_error(ErrorCode::Timeout);
    peer.expect_closed();
    let waited = silent.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&waited),
        "{what} was closed after {waited:?}, the {limit} is 1 s"
    );
}

/// A raw connection from the attacker's address.
#[track_caller]
fn attacker(addr: SocketAddr) -> Raw {
    Raw::connect_from(ATTACKER, addr)
}

/// A path for a failure message: long ones cut short.
fn shorten(path: &str) -> String {
    if path.len() > 40 {
        format!("{}… ({} bytes)", &path[..40], path.len())
    } else {
        path.to_owned()
    }
}

/// How many descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    let dir = format!("/proc/{pid}/fd");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .count()
}

/// Samples the descriptors of `pid` every few milliseconds until told to stop; the thread
/// returns the most it saw.
fn watch_fds(pid: u32) -> (mpsc::Sender<()>, JoinHandle<usize>) {
    let (stop_tx, stop_rx) = mpsc::channel();
    let watcher = thread::spawn(move || {
        let mut peak = 0;
        loop {
            // The daemon may be gone if the test failed; the test reports that, not us.
            if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
                peak = peak.max(dir.count());
            }
            match stop_rx.recv_timeout(Duration::from_millis(5)) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return peak,
            }
        }
    });
    (stop_tx, watcher)
}

/// Waits until the daemon holds at most `max` descriptors; returns how many it holds then.
#[track_caller]
fn wait_for_fds(d: &Daemon, max: usize) -> usize {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let n = open_fds(d.pid());
        if n <= max {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon still holds {n} descriptors {STEP_TIMEOUT:?} after the attack, at most \
             {max} expected; /proc/{}/fd:\n{}",
            d.pid(),
            fd_targets(d.pid())
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// What each descriptor of `pid` points at, for a failure message.
fn fd_targets(pid: u32) -> String {
    let mut lines: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| {
                let e = e.ok()?;
                let target = fs::read_link(e.path()).ok()?;
                Some(format!(
                    "{} -> {}",
                    e.file_name().to_string_lossy(),
                    target.display()
                ))
            })
            .collect()
        })
        .unwrap_or_default();
    lines.sort();
    lines.join("\n")
}

/// A hello asking for a digest the server does not know is answered `unsupported`, saying
/// which field it could not take, and the connection is closed.
#[test]
fn a_hello_with_an_unknown_digest_is_unsupported() {
    let d = Daemon::start();
    let mut peer = Raw::connect(d.addr());
    peer.send_header(br#"{"type":"hello","version":3,"agent":"x","capabilities":[],"max_chunk":4096,"digest":"sha1"}"#);
    let reply = peer.expect_error(ErrorCode::Unsupported);
    assert!(reply.message.contains("sha1"), "{reply:?}");
    peer.expect_closed();
}

// ---------------------------------------------------------------------------------------------
// Strangers: connections that have not said hello (or logged in) yet

/// Regression: before `hello`, 60 strangers each sent a chunk header and an 8 MiB body, and the
/// daemon buffered every body (+481 MiB). Before login only small frames are read: a chunk is
/// refused as too large from its header alone, before a byte of its body is sent, and so is a
/// header far larger than any hello. After hello, the protocol's caps are back.
#[test]
fn a_stranger_cannot_make_the_daemon_buffer_a_chunk_before_hello() {
    let d = Daemon::with_args(["--handshake-timeout", "3s"]);
    let full_chunk = Message::Chunk(ChunkHeader {
        offset: 0,
        len: protocol::MAX_BODY as u32,
        digest: Digest::md5(b""),
    });
    let mut peer = Raw::connect(d.addr());
    peer.send(&full_chunk);
    peer.expect_error(ErrorCode::TooLarge);
    peer.expect_closed();

    // A hello of 16 KiB: within the protocol's header cap, far over what a hello needs.
    let mut peer = Raw::connect(d.addr());
    peer.send(&Message::Hello(Hello {
        agent: "a".repeat(16 * 1024),
        ..hello_fields()
    }));
    peer.expect_error(ErrorCode::TooLarge);
    peer.expect_closed();

    // After hello a full-size chunk is a frame again.
    let mut peer = Raw::connect(d.addr()).hello();
    let body = vec![5u8; protocol::MAX_BODY];
    peer.send(&put("full.bin", body.len() as u64));
    peer.expect_put_ready();
    peer.send_chunk(0, &body);
    peer.send(&Message::Eof(protocol::Eof {
        size: body.len() as u64,
        digest: Digest::md5(&body),
    }));
    match peer.recv() {
        Message::Stored(Eof { size, .. }) => assert_eq!(size, body.len() as u64),
        other => panic!("expected stored for a full-size chunk after hello, got {other:?}"),
    }
}

/// Regression: 576 silent connections from 9 addresses, reopened as the handshake timeout
/// closed them, kept a real user out 24 times in 25. Connections that have not said hello have
/// their own, smaller budget per address range (`--max-unauthenticated-per-range`, 16 by
/// default), so strangers from one range cannot take the slots a real user needs; here nine
/// addresses of 127.0.1.0/24 open eight connections each, against 24 slots in all.
#[test]
fn silent_strangers_from_one_range_cannot_keep_a_real_user_out() {
    let d = Daemon::with_args(["--max-connections", "24", "--handshake-timeout", "5s"]);
    let addr = d.addr();
    let mut silent: Vec<Raw> = (2..=10)
        .flat_map(|host| {
            (0..8).map(move |_| Raw::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 1, host)), addr))
        })
        .collect();
    // The daemon takes connections in order: the last stranger was dealt with before the real
    // user's first connection, and was refused (it is far over the range's budget).
    let refusal = silent.last_mut().unwrap().expect_error(ErrorCode::Busy);
    for attempt in 1..=5 {
        let mut real = Raw::connect(addr);
        assert!(
            real.greets(),
            "attempt {attempt}: a real user was kept out by silent strangers of another range"
        );
        real.send(&Message::Bye);
        real.expect_closed();
    }
    assert!(
        refusal.message.contains("your network"),
        "the last stranger was refused with {refusal:?}, expected the range's budget"
    );
    drop(silent);
}

/// The attack the per-range budget left open: silent strangers from many address ranges (4 of
/// them here, a few cheap /24s or /64s in the wild) filled the whole budget of connections not
/// logged in, and every real user got `busy` for as long as they kept reconnecting. A newcomer
/// from a quieter range now takes the place of the oldest stranger of the most crowded one,
/// which is told `busy`.
#[test]
fn strangers_from_many_ranges_cannot_keep_a_real_user_out() {
    let d = Daemon::with_args([
        "--max-unauthenticated",
        "8",
        "--max-unauthenticated-per-range",
        "2",
        "--handshake-timeout",
        "30s",
    ]);
    let addr = d.addr();
    let silent: Vec<Raw> = (1..=4)
        .flat_map(|net| {
            (1..=2).map(move |host| {
                Raw::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 10 + net, host)), addr)
            })
        })
        .collect();
    // Over its range's budget: refused, which also shows the daemon took every one before.
    let mut over = Raw::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 11, 3)), addr);
    over.expect_error(ErrorCode::Busy);
    for attempt in 1..=3 {
        let mut real = Raw::connect(addr);
        assert!(
            real.greets(),
            "attempt {attempt}: a real user was kept out by strangers of four ranges"
        );
        real.send(&Message::Bye);
        real.expect_closed();
    }
    drop(silent);
}

/// The budget of connections that have not said hello is a budget of those alone: a session
/// that said hello leaves it at once, and only strangers beyond it are refused.
#[test]
fn a_session_that_said_hello_leaves_the_strangers_budget() {
    let d = Daemon::with_args(["--max-unauthenticated", "1", "--handshake-timeout", "5s"]);
    let mut first = Raw::connect(d.addr()).hello();
    let mut second = Raw::connect(d.addr()).hello();
    let _silent = Raw::connect_from(ATTACKER, d.addr());
    let mut refused = Raw::connect_from(ATTACKER, d.addr());
    let refusal = refused.expect_error(ErrorCode::Busy);
    assert!(
        refusal.message.contains("not logged in"),
        "a stranger over the budget was refused with {refusal:?}"
    );
    refused.expect_closed();
    first.expect_usable();
    second.expect_usable();
}

/// Regression: a digest name in `hello` wrote forged lines (`... authenticated ... user=alice`)
/// and raw ANSI escapes into the log. Every field from the wire (the hello's agent and digest,
/// paths, rejected message kinds) is logged escaped, in both log formats.
#[test]
fn wire_fields_cannot_forge_log_lines() {
    let stamp = "2030-01-01T00:00:00.000000Z";
    let forged = format!("\n{stamp}  INFO ftpd::session: authenticated peer=10.0.0.1:1 user=alice home=alice\u{1b}[2J");
    let quoted = serde_json::to_string(&forged).unwrap();
    for format in ["human", "json"] {
        let d = Daemon::with_args(["--log-format", format, "--log-level", "debug"]);
        let mut peer = Raw::connect(d.addr());
        peer.send_header(
            format!(r#"{{"type":"hello","version":3,"agent":"x","capabilities":[],"max_chunk":4096,"digest":{quoted}}}"#).as_bytes(),
        );
        peer.expect_error(ErrorCode::Unsupported);
        peer.expect_closed();

        let mut peer = Raw::connect(d.addr());
        peer.send(&Message::Hello(Hello {
            agent: forged.clone(),
            ..hello_fields()
        }));
        peer.recv();
        peer.send(&get(&format!("x{forged}")));
        peer.expect_error(ErrorCode::BadRequest);
        peer.send_header(format!(r#"{{"type":{quoted}}}"#).as_bytes());
        peer.expect_error(ErrorCode::Unsupported);
        peer.send(&Message::Bye);
        peer.expect_closed();
        d.wait_for_log(&["connection closed", "client said bye"]);
        d.assert_log_unforged(stamp);
    }
}

/// The fields of our usual hello, to change one of them.
fn hello_fields() -> Hello {
    match hello_message() {
        Message::Hello(h) => h,
        _ => unreachable!("hello_message is a hello"),
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions from the hardening issue: storage and disk.

/// An interrupted upload with an id: `size` declared, the first `sent` bytes sent in one chunk,
/// then the connection cut. Returns once the daemon has staged them.
fn abandon_upload(d: &Daemon, name: &str, id: &str, size: u64, sent: usize) {
    let mut peer = Raw::connect(d.addr()).hello();
    peer.send(&Message::Put(protocol::Put {
        path: name.into(),
        size,
        overwrite: false,
        resume: false,
        upload_id: Some(id.into()),
        mtime: None,
        pipelined: false,
    }));
    peer.expect_put_ready();
    let body = vec![7u8; sent];
    peer.send_chunk(0, &body);
    peer.close();
}

/// Item 3: staged bytes of an abandoned upload count against `--quota`, also after the daemon
/// is killed and started again on the same root.
#[test]
fn staged_bytes_count_against_the_quota_across_a_restart() {
    let site = Site::new();
    let d = Daemon::builder()
        .root(site.root())
        .args(["--quota", "3M"])
        .start();
    abandon_upload(&d, "a.bin", "abandoned", 3 * MIB, 2 * MIB as usize);
    wait_until("the abandoned upload is staged", STEP_TIMEOUT, || {
        staged_bytes(&d.staging()) == 2 * MIB
    });
    let work = tmpdir();
    write_random(work.path().join("b.bin"), 2 * MIB, 3);
    let put_b = |d: &Daemon| {
        d.cli()
            .cwd(&work)
            .timeout(STEP_TIMEOUT)
            .cmds("put b.bin")
            .run()
    };
    put_b(&d)
        .fails()
        .stderr_has_any(&["too_large", "too large", "quota"]);
    d.kill();

    let d = Daemon::builder()
        .root(site.root())
        .args(["--quota", "3M"])
        .start();
    assert_eq!(staged_bytes(&d.staging()), 2 * MIB, "kept for a resume");
    put_b(&d)
        .fails()
        .stderr_has_any(&["too_large", "too large", "quota"]);
    assert_missing(d.path("b.bin"));
}

/// Item 18: an upload without an id cut by a crash can never be resumed: the restarted daemon
/// removes its staged file before it listens.
#[test]
fn staged_bytes_without_an_id_are_removed_when_the_daemon_restarts() {
    let site = Site::new();
    let d = Daemon::start_on(site.root());
    let mut peer = Raw::connect(d.addr()).hello();
    peer.send(&put("anon.bin", 2 * MIB));
    peer.expect_put_ready();
    peer.send_chunk(0, &vec![7u8; MIB as usize]);
    wait_until("the upload is staged", STEP_TIMEOUT, || {
        !names(d.staging()).is_empty()
    });
    d.kill();
    let d = Daemon::start_on(site.root());
    assert_eq!(names(d.staging()), Vec::<String>::new());
    drop(peer);
}

/// Item 11: `get` of a FIFO is refused at once; before, each one blocked in `open()` for good
/// and held a connection slot past every timeout.
#[test]
fn get_of_a_fifo_is_refused_at_once_and_holds_no_slot() {
    let d = Daemon::with_args(["--max-connections", "2"]);
    let status = std::process::Command::new("mkfifo")
        .arg(d.path("fifo"))
        .status()
        .expect("cannot run mkfifo");
    assert!(status.success());
    for _ in 0..4 {
        let mut peer = Raw::connect(d.addr()).hello().within(STEP_TIMEOUT);
        peer.send(&get("fifo"));
        let reply = peer.expect_error(ErrorCode::BadRequest);
        assert!(reply.message.contains("not a regular file"), "{reply:?}");
        peer.expect_usable();
        peer.send(&Message::Bye);
        peer.expect_closed();
    }
    let work = tmpdir();
    write_random(work.path().join("small.bin"), 1000, 1);
    // The slots come free just after the closes: retry briefly.
    wait_until("a normal client is served again", STEP_TIMEOUT, || {
        d.cli()
            .cwd(&work)
            .timeout(STEP_TIMEOUT)
            .cmds("put -f small.bin")
            .run()
            .status
            .success()
    });
}

// ---------------------------------------------------------------------------------------------
// Regressions from the hardening issue: the private state and other homes are out of reach.

/// Two users, each in a home of their own.
const ALICE_AND_BOB: &str = r#"
[[user]]
name = "alice"
secret = "alice's secret"
home = "alice"

[[user]]
name = "bob"
secret = "bob's secret"
home = "bob"
"#;
const ALICE: &str = "alice's secret";
const BOB: &str = "bob's secret";

/// A daemon on `site`'s root with [`ALICE_AND_BOB`].
fn alice_and_bob(site: &Site) -> Daemon {
    let users = site.private_file("etc/users.toml", ALICE_AND_BOB);
    site.daemon().arg("--users").arg(users).start()
}

/// The symlink target that leads from the directory `from` to `to`, relative (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel: PathBuf = from.components().skip(common).map(|_| "..").collect();
    rel.extend(to.components().skip(common));
    rel
}

/// An upload with an id to `name`, `size` bytes declared, its first `sent` bytes sent, left
/// in flight; returns the connection (keep it to keep the upload going) once they are staged.
fn upload_in_flight(d: &Daemon, mut peer: Raw, name: &str, size: u64, sent: usize) -> Raw {
    peer.send(&Message::Put(protocol::Put {
        path: name.into(),
        size,
        overwrite: false,
        resume: false,
        upload_id: Some("in-flight".into()),
        mtime: None,
        pipelined: false,
    }));
    peer.expect_put_ready();
    peer.send_chunk(0, &vec![9u8; sent]);
    // Staged bytes reach the disk in whole blocks: wait for the file, not its length.
    wait_until("the upload is staged", STEP_TIMEOUT, || {
        !names(d.staging()).is_empty()
    });
    peer
}

/// Item 10, the issue's scenario: through `tobob -> ../bob` and `priv -> <the state>` in her
/// home, alice read and wrote bob's files, read bob's unfinished upload, wrote a digest record
/// and removed bob's staged upload. None of it may work.
#[test]
fn symlinks_in_a_home_reach_neither_another_home_nor_the_state() {
    let site = Site::new();
    let d = alice_and_bob(&site);
    write_file(d.path("bob/secret.txt"), "bob's own");
    let bob = upload_in_flight(
        &d,
        Raw::connect(d.addr()).login("bob", BOB),
        "big.bin",
        4 * MIB,
        64 * 1024,
    );
    let staged = names(d.staging());
    let alice_home = d.path("alice");
    symlink("../bob", alice_home.join("tobob")).unwrap();
    symlink(d.state(), alice_home.join("priv")).unwrap();
    symlink(
        relative(&alice_home, &d.state()),
        alice_home.join("privrel"),
    )
    .unwrap();

    let keys = crate::util::Keys::new();
    let secret = keys.secret("alice", ALICE);
    let work = tmpdir();
    write_file(work.path().join("mine.txt"), "alice's");
    let mut attempts = vec![
        "get tobob/secret.txt stolen".to_owned(),
        "ls tobob".into(),
        "put mine.txt tobob/planted.txt".into(),
        "put -f mine.txt tobob/secret.txt".into(),
        "rm tobob/secret.txt".into(),
    ];
    for link in ["priv", "privrel"] {
        attempts.extend([
            format!("ls {link}/staging"),
            format!("get {link}/staging/{} stolen", staged[0]),
            format!("put mine.txt {link}/digests/forged.json"),
            format!("rm {link}/staging/{}", staged[0]),
        ]);
    }
    for cmd in &attempts {
        d.cli()
            .user("alice", &secret)
            .cwd(&work)
            .timeout(STEP_TIMEOUT)
            .cmds(cmd)
            .run()
            .fails();
    }
    assert_missing(work.path().join("stolen"));
    assert_eq!(
        fs::read_to_string(d.path("bob/secret.txt")).unwrap(),
        "bob's own"
    );
    assert_eq!(names(d.path("bob")), ["secret.txt"]);
    assert_eq!(
        names(d.staging()),
        staged,
        "bob's staged upload is still there"
    );
    assert_missing(d.state().join("digests/forged.json"));
    drop(bob);
}

/// Item 10: a directory of alice's swapped for a symlink to bob's home while her upload into
/// it is in flight must not land the upload in bob's home.
#[test]
fn a_directory_swapped_for_a_symlink_mid_upload_does_not_land_in_another_home() {
    let site = Site::new();
    let d = alice_and_bob(&site);
    fs::create_dir(d.path("alice/d")).unwrap();
    let body: Vec<u8> = (0..128 * 1024u32).map(|i| (i % 251) as u8).collect();
    let half = body.len() / 2;
    let mut alice = Raw::connect(d.addr()).login("alice", ALICE);
    alice.send(&put("d/f.bin", body.len() as u64));
    alice.expect_put_ready();
    alice.send(&Message::Chunk(ChunkHeader {
        offset: 0,
        len: half as u32,
        digest: Digest::md5(&body[..half]),
    }));
    alice.send_bytes(&body[..half]);
    // The upload has begun (its directory checked): now the directory becomes a way out.
    fs::rename(d.path("alice/d"), d.path("alice/d.moved")).unwrap();
    symlink("../bob", d.path("alice/d")).unwrap();
    alice.send(&Message::Chunk(ChunkHeader {
        offset: half as u64,
        len: (body.len() - half) as u32,
        digest: Digest::md5(&body),
    }));
    alice.send_bytes(&body[half..]);
    alice.send(&Message::Eof(Eof {
        size: body.len() as u64,
        digest: Digest::md5(&body),
    }));
    match alice.recv() {
        Message::Error(_) => {}
        Message::Stored(_) => assert_same_file_bytes(&d.path("alice/d.moved/f.bin"), &body),
        other => panic!("expected the upload to fail or land in alice's home, got {other:?}"),
    }
    assert_missing(d.path("bob/f.bin"));
    assert!(
        names(d.path("bob")).is_empty(),
        "{:?}",
        names(d.path("bob"))
    );
}

/// Panics unless `path` holds exactly `bytes`.
#[track_caller]
fn assert_same_file_bytes(path: &Path, bytes: &[u8]) {
    assert_eq!(fs::read(path).unwrap(), bytes, "{}", path.display());
}

/// Item 10: an anonymous session's home is the whole root, and the private state used to lie
/// in it (`.ftpd`): any symlink in the root that reached it (`x -> .ftpd`) gave every client
/// the staged uploads and the digest records. No link in the root may reach the state now.
#[test]
fn no_symlink_in_an_anonymous_root_reaches_the_private_state() {
    let site = Site::new();
    let d = site.daemon().start();
    let peer = upload_in_flight(
        &d,
        Raw::connect(d.addr()).hello(),
        "big.bin",
        4 * MIB,
        64 * 1024,
    );
    let staged = names(d.staging());
    let root = d.root();
    symlink(".ftpd", root.join("old")).unwrap();
    symlink(d.state(), root.join("abs")).unwrap();
    symlink(relative(root, &d.state()), root.join("rel")).unwrap();

    let work = tmpdir();
    write_file(work.path().join("mine.txt"), "forged");
    for link in ["old", "abs", "rel"] {
        for cmd in [
            format!("ls {link}/staging"),
            format!("get {link}/staging/{} stolen", staged[0]),
            format!("put mine.txt {link}/digests/forged.json"),
            format!("rm {link}/staging/{}", staged[0]),
        ] {
            d.cli()
                .cwd(&work)
                .timeout(STEP_TIMEOUT)
                .cmds(&cmd)
                .run()
                .fails();
        }
    }
    assert_missing(work.path().join("stolen"));
    assert_eq!(
        names(d.staging()),
        staged,
        "the staged upload is still there"
    );
    assert_missing(d.state().join("digests/forged.json"));
    drop(peer);
}

// ---------------------------------------------------------------------------------------------
// Memory, blocking threads and CPU one small request can take (hardening items 4, 15 and 20)

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// CPU time process `pid` has used, user and system, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Waits until process `pid` has used no CPU for a while (at most `timeout`); returns its
/// CPU ticks then.
fn cpu_when_idle(pid: u32, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut last = cpu_ticks(pid);
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = cpu_ticks(pid);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// The most resident memory `pid` shows over `window`, sampled every few milliseconds.
fn peak_rss_over(pid: u32, window: Duration) -> u64 {
    let mut peak = 0;
    let _ = holds_within(window, || {
        peak = peak.max(rss(pid));
        false
    });
    peak
}

/// Stores `data` as `path` over `peer` in chunks of `chunk` bytes, with their running digests.
fn upload_in_chunks(peer: &mut Raw, path: &str, data: &[u8], chunk: usize) {
    peer.send(&put(path, data.len() as u64));
    peer.expect_put_ready();
    let mut hasher = protocol::Hasher::new(protocol::DigestKind::Md5);
    for (i, body) in data.chunks(chunk).enumerate() {
        let header = Message::Chunk(protocol::ChunkHeader {
            offset: (i * chunk) as u64,
            len: body.len() as u32,
            digest: hasher.seal(body),
        });
        peer.send(&header);
        peer.send_bytes(body);
    }
    peer.send(&Message::Eof(protocol::Eof {
        size: data.len() as u64,
        digest: hasher.finish(),
    }));
    match peer.recv() {
        Message::Stored(_) => {}
        other => panic!("expected stored, got {other:?}"),
    }
}

/// Regression (hardening item 4): a file uploaded in 8 MiB chunks was sent back in 8 MiB
/// chunks, four read ahead per download, so 20 clients that `get` it and never read grew the
/// daemon by 945 MiB. Downloads are now cut to the configured chunk size (1 MiB) whatever
/// the file was recorded in, and what is read ahead comes out of the memory budget.
#[test]
fn unread_downloads_of_a_file_stored_in_8mib_chunks_hold_little_memory() {
    let d = Daemon::start();
    let data: Vec<u8> = (0..64 * MIB as usize)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    upload_in_chunks(
        &mut Raw::connect(d.addr()).hello(),
        "big",
        &data,
        8 * MIB as usize,
    );
    let before = rss(d.pid());
    let mut readers: Vec<Raw> = (0..20)
        .map(|_| {
            // Like ftp-cli, which takes chunks as large as the protocol allows.
            let mut peer = Raw::connect(d.addr());
            let Message::Hello(mut hello) = hello_message() else {
                unreachable!("a hello")
            };
            hello.max_chunk = protocol::MAX_BODY as u32;
            peer.send(&Message::Hello(hello));
            assert!(matches!(peer.recv(), Message::Hello(_)));
            peer.send(&get("big"));
            assert!(matches!(peer.recv(), Message::GetReady(_)));
            peer
        })
        .collect();
    let peak = peak_rss_over(d.pid(), Duration::from_secs(3));
    match readers[0].recv() {
        Message::Chunk(c) => assert!(
            u64::from(c.len) <= MIB,
            "a chunk of {} bytes: the recorded 8 MiB, not re-cut",
            c.len
        ),
        other => panic!("expected a chunk, got {other:?}"),
    }
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 160 * MIB,
        "20 unread downloads grew the daemon by {} MiB",
        grew / MIB
    );
    for r in &mut readers {
        r.close();
    }
}

/// Regression (hardening item 4): each upload's codec read a chunk's body as it arrived, up to
/// 8 MiB a connection, counted nowhere: 30 uploads stalled part-way through a chunk held 120
/// MiB. Bodies are now read only once the memory budget grants their bytes.
#[test]
fn stalled_uploads_hold_no_more_than_the_memory_budget() {
    let d = Daemon::builder()
        .args([
            "--memory-budget",
            "16MiB",
            "--max-connections-per-ip",
            "100",
        ])
        .start();
    let before = rss(d.pid());
    let body = vec![5u8; 4 * MIB as usize];
    let writers: Vec<_> = (0..30)
        .map(|i| {
            let mut peer = Raw::connect(d.addr()).hello();
            peer.send(&put(&format!("f{i}"), 8 * MIB));
            peer.expect_put_ready();
            let header = encode(&Message::Chunk(protocol::ChunkHeader {
                offset: 0,
                len: 8 * MIB as u32,
                digest: Digest::md5(b"not checked before the body is whole"),
            }));
            let body = body.clone();
            let closer = peer.socket();
            let writer = thread::spawn(move || {
                // Blocks once the daemon stops reading: that is the point.
                let _ = peer.try_send_bytes(&header) && peer.try_send_bytes(&body);
            });
            (closer, writer)
        })
        .collect();
    let peak = peak_rss_over(d.pid(), Duration::from_secs(3));
    let grew = peak.saturating_sub(before);
    for (closer, writer) in writers {
        let _ = closer.shutdown(std::net::Shutdown::Both);
        writer.join().unwrap();
    }
    assert!(
        grew < 48 * MIB,
        "30 stalled uploads grew the daemon by {} MiB under a 16 MiB budget",
        grew / MIB
    );
    let mut peer = Raw::connect(d.addr()).hello();
    peer.expect_usable();
}

/// Regression (hardening item 15): every upload held one of the runtime's 512 blocking
/// threads while it waited for the client's next chunk, so with more uploads than that open,
/// a `list` from another client never got a thread and hung. Disk work now takes a thread per
/// chunk and gives it back.
#[test]
fn a_list_is_answered_while_600_uploads_wait_for_their_clients() {
    let d = Daemon::builder()
        .args([
            "--max-connections",
            "700",
            "--max-connections-per-ip",
            "700",
        ])
        .args(["--stall-timeout", "120s"])
        .start();
    let mut waiting: Vec<Raw> = (0..600)
        .map(|i| {
            let mut peer = Raw::connect(d.addr()).hello();
            peer.send(&put(&format!("u{i}"), 10));
            peer
        })
        .collect();
    let mut lister = Raw::connect(d.addr()).hello();
    lister.send(&Message::List(protocol::List::of("/")));
    match lister.recv() {
        Message::Listing(_) | Message::ListEnd(_) => {}
        other => panic!("expected a listing, got {other:?}"),
    }
    // Every upload got its answer too: none waits for a thread.
    for peer in &mut waiting {
        peer.expect_put_ready();
        peer.close();
    }
}

/// Regression (hardening item 20): `stat --md5` hashed the whole file for every request, and a
/// `get` at an offset hashed the prefix even after its client had left: each 60-byte request
/// cost a second of CPU per 256 MiB. Digests are now cached by the file's identity, and a
/// hashing job stops when its client goes.
#[test]
fn repeated_stat_md5_is_hashed_once_and_abandoned_gets_stop_hashing() {
    let site = Site::new();
    let big = site.root().join("big");
    write_random(&big, 128 * MIB, 20);
    let d = site
        .daemon()
        .args(["--max-connections-per-ip", "100"])
        .start();
    let stat = |peer: &mut Raw| {
        peer.send(&Message::Stat(protocol::Stat {
            path: "big".into(),
            md5: true,
        }));
        match peer.recv() {
            Message::StatReply(r) => assert_eq!(r.md5.unwrap().to_string(), md5_file(&big)),
            other => panic!("expected stat, got {other:?}"),
        }
    };
    let mut peer = Raw::connect(d.addr()).hello();
    let start = cpu_when_idle(d.pid(), STEP_TIMEOUT);
    stat(&mut peer);
    let once = cpu_when_idle(d.pid(), STEP_TIMEOUT) - start;
    for _ in 0..4 {
        stat(&mut peer);
    }
    let again = cpu_when_idle(d.pid(), STEP_TIMEOUT) - start - once;
    assert!(
        again * 2 <= once,
        "four more stat --md5 of an unchanged file cost {again} ticks, the first {once}"
    );

    // Ten clients each ask for the last byte, which needs the whole prefix hashed, and leave.
    let before = cpu_ticks(d.pid());
    for i in 0..10u64 {
        let mut peer = Raw::connect(d.addr()).hello();
        peer.send(&Message::Get(protocol::Get {
            path: "big".into(),
            offset: 128 * MIB - 1 - i,
            prefix_digest: None,
        }));
        peer.close();
    }
    let spent = cpu_when_idle(d.pid(), Duration::from_secs(30)) - before;
    assert!(
        spent < once * 3,
        "ten abandoned gets cost {spent} ticks of CPU; hashing the file once costs {once}"
    );
    peer.expect_usable();
}
