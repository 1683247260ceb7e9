//! A bad network and a bad day: transfers through a proxy that corrupts, cuts or stalls the
//! stream, a daemon killed mid-upload, a full disk. Each ends in a byte-identical file or a clear
//! one-line error, never a wrong file where the user looks for the right one.
//!
//! The frame faults need to see frames, so those cases run in plaintext on loopback; the same
//! kinds of damage over TLS aim at byte offsets instead (`tls_*`), where a damaged record is a
//! broken connection and must end in an identical file after a reconnect.
//!
//! Every case prints one `fault-table` row on stderr; `cargo test --test e2e faults --
//! --nocapture` shows which outcome each fault actually had.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::proxy::{Direction, Fault, FrameRef, Proxy};
use protocol::{Digest, DigestKind};
use tempfile::TempDir;

use crate::util::{
    assert_missing, assert_same_file, names, sent_this_time, staged_bytes, tmpdir, wait_until,
    write_random, Daemon, Keys, Run, Site, MIB,
};

use Direction::{ClientToServer as C2S, ServerToClient as S2C};

/// Six chunks of the default 1 MiB, the last one short.
const SIZE: u64 = 5 * MIB + 123;
/// The file's name on both sides.
const NAME: &str = "data.bin";
/// Halfway through the file, in the middle of a chunk.
const MIDWAY: u64 = 5 * MIB / 2;
/// Inside the first chunk: a connection cut or stalled here never verifies a byte.
const FIRST_CHUNK: u64 = MIB / 2;
/// The client's `--timeout` in these tests: stalls are measured against it.
const CLIENT_TIMEOUT: &str = "2s";
/// How long one client run may take before the test fails instead of hanging.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// The one user of the daemon in the cases that log in, whose home is the whole root.
const USERS: &str = "[[user]]\nname = \"alice\"\nsecret = \"alice's secret\"\nhome = \"/\"\n";
const ALICE: &str = "alice's secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

/// What a case may end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Allowed {
    /// The file arrives identical, after at least one reconnect-and-resume.
    Resumed,
    /// The file arrives identical without any retry.
    Clean,
    /// Either an identical file (retries or not) or a clear error.
    IdenticalOrError,
    /// A clear error after exactly `attempts` connections (`None`: at most `1 + retries`), with
    /// exit status `exit` (`None`: any failure), and no file at the target.
    Fails {
        attempts: Option<usize>,
        exit: Option<i32>,
    },
}

/// What a case ended in.
#[derive(Debug)]
enum Outcome {
    /// Exit 0, the target byte-identical, after `retries` resumes.
    Identical { retries: usize },
    /// Exit status `exit` (not 0) with this one-line error, after `retries` resumes.
    Failed {
        retries: usize,
        exit: i32,
        error: String,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Identical { retries } => write!(f, "identical   | retries {retries}"),
            Outcome::Failed {
                retries,
                exit,
                error,
            } => write!(f, "clear error | retries {retries} | exit {exit} | {error}"),
        }
    }
}

/// One transfer through a faulty proxy.
struct Case {
    /// The row's name in the table.
    name: &'static str,
    op: Op,
    faults: Vec<Fault>,
    /// `--retries` for the client (its default when `None`).
    retries: Option<usize>,
    /// More client arguments.
    args: Vec<&'static str>,
    /// Over TLS, where only the byte faults can aim; plaintext otherwise.
    tls: bool,
    /// The daemon has a user, and the client logs in as it.
    login: bool,
    allowed: Allowed,
}

impl Case {
    fn new(name: &'static str, op: Op, fault: Fault, allowed: Allowed) -> Case {
        Case {
            name,
            op,
            faults: vec![fault],
            retries: None,
            args: vec![],
            tls: false,
            login: false,
            allowed,
        }
    }

    /// The same over TLS.
    fn tls(mut self) -> Case {
        self.tls = true;
        self
    }

    /// The same with a login: the daemon has [`USERS`].
    fn login(mut self) -> Case {
        self.login = true;
        self
    }

    /// A case that must fail with exit status `code`.
    fn exits(mut self, code: i32) -> Case {
        if let Allowed::Fails { exit, .. } = &mut self.allowed {
            *exit = Some(code);
        }
        self
    }

    /// The same, with BLAKE3 as the transfer digest.
    fn blake3(mut self) -> Case {
        self.args = vec!["--digest", "blake3"];
        self
    }

    /// The fault on every connection and `--retries 2`: each attempt meets it and the client
    /// gives up after three.
    fn every(name: &'static str, op: Op, fault: Fault, attempts: Option<usize>) -> Case {
        Case {
            name,
            op,
            faults: vec![fault.on_every_connection()],
            retries: Some(2),
            args: vec![],
            tls: false,
            login: false,
            allowed: Allowed::Fails {
                attempts,
                exit: None,
            },
        }
    }

    /// Runs the transfer, checks what it left behind, prints the table row and checks the
    /// outcome is one this case allows.
    fn run(self) {
        // The frame faults find frames in the stream: plaintext, on loopback.
        let site = Site::new();
        let mut daemon = site.daemon();
        if !self.tls {
            daemon = daemon.arg("--insecure-plaintext");
        }
        if self.login {
            let users = site.private_file("etc/users.toml", USERS);
            daemon = daemon.arg("--users").arg(users);
        }
        let daemon = daemon.start();
        let keys = Keys::new();
        let work = tmpdir();
        let reference = tmpdir();
        let src = reference.path().join(NAME);
        write_random(&src, SIZE, 0xfa17);
        let (target, command) = match self.op {
            Op::Put => {
                fs::copy(&src, work.path().join(NAME)).expect("cannot copy the test file");
                (daemon.path(NAME), format!("put {NAME}"))
            }
            Op::Get => {
                fs::copy(&src, daemon.path(NAME)).expect("cannot copy the test file");
                (work.path().join(NAME), format!("get {NAME}"))
            }
        };

        let proxy = Proxy::start(daemon.addr(), self.faults.clone());
        let mut cli = daemon
            .cli_via(proxy.addr())
            .cwd(&work)
            .timeout(RUN_LIMIT)
            .arg("--timeout")
            .arg(CLIENT_TIMEOUT);
        if let Some(n) = self.retries {
            cli = cli.arg("--retries").arg(n.to_string());
        }
        if self.login {
            cli = cli.user("alice", keys.secret("alice", ALICE));
        }
        for arg in &self.args {
            cli = cli.arg(arg);
        }
        let run = cli.cmds(&command).run();
        let attempts = proxy.connections();
        let events = proxy.events();
        drop(proxy);

        let outcome = classify(&run, &src, &target);
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        let notice = run.stderr.lines().find(|l| l.contains("resuming"));
        eprintln!(
            "fault-table | {:<34} | {:?} | {:<32} | {outcome} | connections {attempts} | {} | {}",
            self.name,
            self.op,
            faults.join(", "),
            notice.unwrap_or("-"),
            events.join("; ")
        );
        assert!(
            !events.is_empty(),
            "{}: the fault never fired, so the case tested nothing; {run}",
            self.name
        );
        self.check_leftovers(&daemon, &work, &outcome, &run);
        if self.login {
            // TLS refuses a damaged `auth` before the daemon reads it: no failed login, so no
            // penalty for the retry to sit out.
            let log = daemon.log();
            assert!(
                !log.contains("authentication failed") && !log.contains("login refused"),
                "{}: the damage counted as a failed login; {run}\ndaemon log:\n{log}",
                self.name
            );
        }

        let retries = match &outcome {
            Outcome::Identical { retries } | Outcome::Failed { retries, .. } => *retries,
        };
        assert_eq!(
            retries + 1,
            attempts,
            "{}: each reconnect should say it is resuming, and each resume reconnect; {run}",
            self.name
        );
        match (self.allowed, &outcome) {
            (Allowed::Resumed, Outcome::Identical { retries }) => {
                assert!(*retries >= 1, "{}: no resume reported; {run}", self.name);
            }
            (Allowed::Clean, Outcome::Identical { retries: 0 }) => {}
            (Allowed::IdenticalOrError, _) => {}
            (
                Allowed::Fails {
                    attempts: want,
                    exit,
                },
                Outcome::Failed { exit: got, .. },
            ) => {
                assert_missing(&target);
                if let Some(exit) = exit {
                    assert_eq!(*got, exit, "{}: exit status; {run}", self.name);
                }
                let max = 1 + self.retries.unwrap_or(3);
                match want {
                    Some(want) => assert_eq!(
                        attempts, want,
                        "{}: expected {want} connections; {run}",
                        self.name
                    ),
                    None => assert!(
                        attempts <= max,
                        "{}: {attempts} connections, more than 1 + --retries; {run}",
                        self.name
                    ),
                }
            }
            (allowed, outcome) => {
                panic!(
                    "{}: expected {allowed:?}, got {outcome:?}; {run}\ndaemon log:\n{}",
                    self.name,
                    daemon.log()
                )
            }
        }
    }

    /// Whatever the outcome, nothing that looks like the target may be wrong or half there:
    /// the daemon shows no other file, the client's directory holds at most a `.ftp-part`.
    fn check_leftovers(&self, daemon: &Daemon, work: &TempDir, outcome: &Outcome, run: &Run) {
        let visible = daemon.visible_files();
        let local = names(work.path());
        match self.op {
            Op::Put => {
                assert!(
                    visible.is_empty() || visible == [NAME],
                    "{}: the daemon shows {visible:?}; {run}",
                    self.name
                );
                assert_eq!(local, [NAME], "{}: {run}", self.name);
            }
            Op::Get => {
                assert_eq!(visible, [NAME], "{}: {run}", self.name);
                for name in &local {
                    let ok = name == NAME
                        || (matches!(outcome, Outcome::Failed { .. })
                            && name.ends_with(".ftp-part"));
                    assert!(
                        ok,
                        "{}: left {name:?} in the client's dir; {run}",
                        self.name
                    );
                }
            }
        }
    }
}

/// Sorts a run into its outcome, checking the invariants every outcome shares: exit 0 means an
/// identical target and a verified summary; a failure is one error line, and whatever sits at
/// the target then is still never a wrong file. Resume notices are counted, not errors.
#[track_caller]
fn classify(run: &Run, src: &Path, target: &Path) -> Outcome {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let retries = lines.iter().filter(|l| l.contains("resuming")).count();
    let others: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.contains("resuming"))
        .collect();
    if target.exists() {
        assert_same_file(src, target);
    }
    if run.status.success() {
        assert!(
            target.exists(),
            "exit 0 but {} is missing; {run}",
            target.display()
        );
        assert!(
            others.is_empty(),
            "exit 0 but stderr has more than resume notices; {run}"
        );
        let data = fs::read(src).expect("cannot read the test file");
        let digests = [DigestKind::Md5, DigestKind::Blake3].map(|k| Digest::of(k, &data));
        assert!(
            run.stdout
                .lines()
                .any(|l| l.contains("verified")
                    && digests.iter().any(|d| l.contains(&d.to_string()))),
            "exit 0 without a verified summary; {run}"
        );
        Outcome::Identical { retries }
    } else {
        assert!(run.status.code().is_some(), "killed by a signal; {run}");
        assert_eq!(others.len(), 1, "expected exactly one error line; {run}");
        assert!(
            !others[0].contains("panicked"),
            "the client panicked; {run}"
        );
        Outcome::Failed {
            retries,
            exit: run.status.code().expect("checked above"),
            error: others[0].to_owned(),
        }
    }
}

// A flipped body byte is exactly what the per-chunk MD5 is for: the receiver refuses the chunk
// and the client resumes from the last good one.

#[test]
fn chunk_body_flipped_on_put() {
    let fault = Fault::flip_chunk_body(C2S, 2);
    Case::new("chunk body flipped", Op::Put, fault, Allowed::Resumed).run();
}

#[test]
fn chunk_body_flipped_on_get() {
    let fault = Fault::flip_chunk_body(S2C, 2);
    Case::new("chunk body flipped", Op::Get, fault, Allowed::Resumed).run();
}

// The same with BLAKE3 as the running digest.

#[test]
fn chunk_body_flipped_on_put_with_blake3() {
    let fault = Fault::flip_chunk_body(C2S, 2);
    Case::new(
        "chunk body flipped (blake3)",
        Op::Put,
        fault,
        Allowed::Resumed,
    )
    .blake3()
    .run();
}

#[test]
fn chunk_body_flipped_on_get_with_blake3() {
    let fault = Fault::flip_chunk_body(S2C, 2);
    Case::new(
        "chunk body flipped (blake3)",
        Op::Get,
        fault,
        Allowed::Resumed,
    )
    .blake3()
    .run();
}

// A flipped header bit may leave valid JSON with a wrong value in it (an offset, an MD5, a
// length); whatever the receiver makes of it, no wrong file may come of it.

#[test]
fn chunk_header_flipped_on_put() {
    let fault = Fault::flip_header(C2S, FrameRef::chunk(2));
    Case::new(
        "chunk header flipped",
        Op::Put,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

#[test]
fn chunk_header_flipped_on_get() {
    let fault = Fault::flip_header(S2C, FrameRef::chunk(2));
    Case::new(
        "chunk header flipped",
        Op::Get,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

/// The `get` request itself, the only frame the client sends in a download besides `hello`.
#[test]
fn get_request_flipped() {
    let fault = Fault::flip_header(C2S, FrameRef::first("get"));
    Case::new(
        "get request flipped",
        Op::Get,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

/// The server's `put_ready`, which tells the client where to start.
#[test]
fn put_ready_flipped() {
    let fault = Fault::flip_header(S2C, FrameRef::first("put_ready"));
    Case::new(
        "put_ready flipped",
        Op::Put,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

#[test]
fn length_prefix_flipped_on_put() {
    let fault = Fault::flip_length(C2S, FrameRef::chunk(2));
    Case::new(
        "length prefix flipped",
        Op::Put,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

#[test]
fn length_prefix_flipped_on_get() {
    let fault = Fault::flip_length(S2C, FrameRef::chunk(2));
    Case::new(
        "length prefix flipped",
        Op::Get,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

// A cut connection loses nothing that was verified: the client reconnects and resumes.

#[test]
fn cut_midway_on_put() {
    let fault = Fault::cut(C2S, MIDWAY);
    Case::new("cut midway", Op::Put, fault, Allowed::Resumed).run();
}

#[test]
fn cut_midway_on_get() {
    let fault = Fault::cut(S2C, MIDWAY);
    Case::new("cut midway", Op::Get, fault, Allowed::Resumed).run();
}

/// Every chunk got through, the `eof` did not: the resume has nothing left to send but `eof`.
#[test]
fn cut_before_eof_on_put() {
    let fault = Fault::cut_before(C2S, FrameRef::first("eof"));
    Case::new("cut before eof", Op::Put, fault, Allowed::Resumed).run();
}

#[test]
fn cut_before_eof_on_get() {
    let fault = Fault::cut_before(S2C, FrameRef::first("eof"));
    Case::new("cut before eof", Op::Get, fault, Allowed::Resumed).run();
}

/// The daemon stored the file but its `stored` reply is lost: the file is there, and the client
/// may find that out or report an error, but must not report a wrong file.
#[test]
fn stored_reply_lost() {
    let fault = Fault::cut_before(S2C, FrameRef::first("stored"));
    Case::new(
        "stored reply lost",
        Op::Put,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

// A stall shorter than the client's timeout is only slow; a longer one is a lost connection.

#[test]
fn short_stall_on_put() {
    let fault = Fault::stall(C2S, MIDWAY, Duration::from_secs(1));
    Case::new("stall 1s < timeout", Op::Put, fault, Allowed::Clean).run();
}

#[test]
fn short_stall_on_get() {
    let fault = Fault::stall(S2C, MIDWAY, Duration::from_secs(1));
    Case::new("stall 1s < timeout", Op::Get, fault, Allowed::Clean).run();
}

#[test]
fn long_stall_on_put() {
    let fault = Fault::stall(C2S, MIDWAY, Duration::from_secs(4));
    Case::new(
        "stall 4s > timeout",
        Op::Put,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

#[test]
fn long_stall_on_get() {
    let fault = Fault::stall(S2C, MIDWAY, Duration::from_secs(4));
    Case::new(
        "stall 4s > timeout",
        Op::Get,
        fault,
        Allowed::IdenticalOrError,
    )
    .run();
}

// The same fault on every connection: retries cannot help, and the client must say so after
// `--retries 2` more attempts, leaving nothing at the target.

#[test]
fn chunk_body_flipped_every_time_on_put() {
    let fault = Fault::flip_chunk_body(C2S, 0);
    Case::every("every conn: chunk body flipped", Op::Put, fault, Some(3)).run();
}

#[test]
fn chunk_body_flipped_every_time_on_get() {
    let fault = Fault::flip_chunk_body(S2C, 0);
    Case::every("every conn: chunk body flipped", Op::Get, fault, Some(3)).run();
}

/// A corrupt header may also be refused outright, which ends the command at once.
#[test]
fn chunk_header_flipped_every_time_on_put() {
    let fault = Fault::flip_header(C2S, FrameRef::chunk(0));
    Case::every("every conn: chunk header flipped", Op::Put, fault, None).run();
}

#[test]
fn length_prefix_flipped_every_time_on_get() {
    let fault = Fault::flip_length(S2C, FrameRef::chunk(0));
    Case::every("every conn: length prefix flipped", Op::Get, fault, None).run();
}

#[test]
fn cut_every_time_on_put() {
    let fault = Fault::cut(C2S, FIRST_CHUNK);
    Case::every("every conn: cut in chunk 0", Op::Put, fault, Some(3)).run();
}

#[test]
fn cut_every_time_on_get() {
    let fault = Fault::cut(S2C, FIRST_CHUNK);
    Case::every("every conn: cut in chunk 0", Op::Get, fault, Some(3)).run();
}

#[test]
fn stall_every_time_on_put() {
    let fault = Fault::stall_forever(C2S, FIRST_CHUNK);
    Case::every("every conn: stall forever", Op::Put, fault, Some(3)).run();
}

#[test]
fn stall_every_time_on_get() {
    let fault = Fault::stall_forever(S2C, FIRST_CHUNK);
    Case::every("every conn: stall forever", Op::Get, fault, Some(3)).run();
}

// The same kinds of damage over TLS. The proxy cannot see frames there, so each fault aims at
// a byte offset, chosen from a recorded session (TLS 1.3, the daemon's Ed25519 key; offsets of
// the first connection, record header included):
//
//   c->s: ClientHello 0..209, ChangeCipherSpec 209..215, (empty) Certificate and Finished
//         215..297, then one record a frame: `hello` 297..452, then when logging in `auth`
//         452..569 and `auth_final` 569..791, then the request.
//   s->c: ServerHello 0..127, ChangeCipherSpec 127..133, the encrypted handshake (with its
//         CertificateRequest) 133..617, then `hello` 617..793 (..761 without users);
//         anonymous, `put_ready` 761..862 and `stored` 862..963; logging in, `auth_continue`
//         793..938 and `auth_ok` 938..1039.
//
// Each offset is well inside its record, so a few bytes more or less in a message do not move
// it into the next. Whatever it hits, a damaged record is a broken connection: the client
// reconnects and resumes, and the file ends identical.

/// Inside the ClientHello's random (after the 5-byte record header, which decides whether the
/// daemon takes the stream for TLS): the daemon answers a hello the client never sent.
const TLS_CLIENT_HELLO: u64 = 30;
/// Inside the ServerHello's key share: the two sides derive different keys.
const TLS_SERVER_HELLO: u64 = 100;
/// Inside the client's `hello` record.
const TLS_CLIENT_GREETING: u64 = 360;
/// Inside the daemon's `hello` record.
const TLS_SERVER_GREETING: u64 = 650;
/// Inside the client's `auth` record (SCRAM's first message).
const TLS_AUTH: u64 = 500;
/// Inside the daemon's `auth_continue` record (SCRAM's salt and nonce).
const TLS_AUTH_CONTINUE: u64 = 860;
/// Inside the client's `auth_final` record (SCRAM's proof).
const TLS_AUTH_FINAL: u64 = 680;
/// Inside the daemon's `auth_ok` record (its SCRAM signature).
const TLS_AUTH_OK: u64 = 990;
/// Inside the daemon's `put_ready` record.
const TLS_PUT_READY: u64 = 810;
/// Inside the daemon's `stored` record: the file is in place, the client does not know.
const TLS_STORED: u64 = 910;
/// Mid-transfer, past the first verified chunks.
const TLS_MIDSTREAM: u64 = 3 * MIB;

#[test]
fn tls_client_hello_flipped() {
    let fault = Fault::flip_byte(C2S, TLS_CLIENT_HELLO);
    Case::new("tls: ClientHello flipped", Op::Put, fault, Allowed::Resumed)
        .tls()
        .run();
}

#[test]
fn tls_server_hello_flipped() {
    let fault = Fault::flip_byte(S2C, TLS_SERVER_HELLO);
    Case::new("tls: ServerHello flipped", Op::Get, fault, Allowed::Resumed)
        .tls()
        .run();
}

/// Regression: a damaged record under the hellos ended in "cannot connect" without a retry,
/// as if the server had refused.
#[test]
fn tls_client_greeting_flipped() {
    let fault = Fault::flip_byte(C2S, TLS_CLIENT_GREETING);
    Case::new(
        "tls: client hello frame flipped",
        Op::Put,
        fault,
        Allowed::Resumed,
    )
    .tls()
    .run();
}

#[test]
fn tls_server_greeting_flipped() {
    let fault = Fault::flip_byte(S2C, TLS_SERVER_GREETING);
    Case::new(
        "tls: server hello frame flipped",
        Op::Get,
        fault,
        Allowed::Resumed,
    )
    .tls()
    .run();
}

/// The damaged `auth` never reaches the daemon's login check, so it costs no penalty (the case
/// checks the daemon's log), and the retry logs in.
#[test]
fn tls_auth_flipped() {
    let fault = Fault::flip_byte(C2S, TLS_AUTH);
    Case::new("tls: auth flipped", Op::Put, fault, Allowed::Resumed)
        .tls()
        .login()
        .run();
}

#[test]
fn tls_auth_continue_flipped() {
    let fault = Fault::flip_byte(S2C, TLS_AUTH_CONTINUE);
    Case::new(
        "tls: auth_continue flipped",
        Op::Get,
        fault,
        Allowed::Resumed,
    )
    .tls()
    .login()
    .run();
}

/// A damaged proof is caught by TLS, not checked by the daemon: no penalty, and the retry
/// logs in.
#[test]
fn tls_auth_final_flipped() {
    let fault = Fault::flip_byte(C2S, TLS_AUTH_FINAL);
    Case::new("tls: auth_final flipped", Op::Put, fault, Allowed::Resumed)
        .tls()
        .login()
        .run();
}

#[test]
fn tls_auth_ok_flipped() {
    let fault = Fault::flip_byte(S2C, TLS_AUTH_OK);
    Case::new("tls: auth_ok flipped", Op::Put, fault, Allowed::Resumed)
        .tls()
        .login()
        .run();
}

#[test]
fn tls_put_ready_flipped() {
    let fault = Fault::flip_byte(S2C, TLS_PUT_READY);
    Case::new("tls: put_ready flipped", Op::Put, fault, Allowed::Resumed)
        .tls()
        .run();
}

/// Over TLS the lost `stored` is a broken connection, not a reply that might be misread: the
/// retry finds the file stored and identical.
#[test]
fn tls_stored_flipped() {
    let fault = Fault::flip_byte(S2C, TLS_STORED);
    Case::new("tls: stored flipped", Op::Put, fault, Allowed::Resumed)
        .tls()
        .run();
}

#[test]
fn tls_flipped_midstream_on_put() {
    let fault = Fault::flip_byte(C2S, TLS_MIDSTREAM);
    Case::new("tls: flipped at 3 MiB", Op::Put, fault, Allowed::Resumed)
        .tls()
        .run();
}

#[test]
fn tls_flipped_midstream_on_get() {
    let fault = Fault::flip_byte(S2C, TLS_MIDSTREAM);
    Case::new("tls: flipped at 3 MiB", Op::Get, fault, Allowed::Resumed)
        .tls()
        .run();
}

#[test]
fn tls_cut_midway_on_put() {
    let fault = Fault::cut(C2S, MIDWAY);
    Case::new("tls: cut midway", Op::Put, fault, Allowed::Resumed)
        .tls()
        .run();
}

#[test]
fn tls_cut_midway_on_get() {
    let fault = Fault::cut(S2C, MIDWAY);
    Case::new("tls: cut midway", Op::Get, fault, Allowed::Resumed)
        .tls()
        .run();
}

/// Longer than the client's `--timeout`: the client gives up on the connection and resumes.
#[test]
fn tls_long_stall_on_put() {
    let fault = Fault::stall(C2S, MIDWAY, Duration::from_secs(4));
    Case::new("tls: stall 4s > timeout", Op::Put, fault, Allowed::Resumed)
        .tls()
        .run();
}

#[test]
fn tls_long_stall_on_get() {
    let fault = Fault::stall(S2C, MIDWAY, Duration::from_secs(4));
    Case::new("tls: stall 4s > timeout", Op::Get, fault, Allowed::Resumed)
        .tls()
        .run();
}

/// Damage on every connection, the handshake's included: the client gives up after its retries
/// as for a link that keeps dropping (exit 3), and leaves no file.
#[test]
fn tls_server_hello_flipped_every_time() {
    let fault = Fault::flip_byte(S2C, TLS_SERVER_HELLO);
    Case::every("tls every conn: ServerHello", Op::Get, fault, Some(3))
        .tls()
        .exits(3)
        .run();
}

#[test]
fn tls_flipped_in_chunk_0_every_time_on_put() {
    let fault = Fault::flip_byte(C2S, FIRST_CHUNK);
    Case::every(
        "tls every conn: flipped in chunk 0",
        Op::Put,
        fault,
        Some(3),
    )
    .tls()
    .exits(3)
    .run();
}

/// The daemon dies (SIGKILL) with three chunks of an upload staged; a new daemon on the same
/// root lets `put -c` carry on from them instead of starting over.
#[test]
fn put_continues_after_the_daemon_is_killed() {
    let site = Site::new();
    let work = tmpdir();
    let src = work.path().join("big.bin");
    let size = 8 * MIB + 5;
    write_random(&src, size, 0xdead);

    kill_the_daemon_with_3_mib_of_big_bin_staged(&site.root(), &work);
    assert_missing(site.root().join("big.bin"));

    let daemon = Daemon::start_on(site.root());
    let run = daemon
        .cli()
        .cwd(&work)
        .timeout(RUN_LIMIT)
        .cmds("put -c big.bin")
        .run()
        .ok()
        .verified(&src, 1);
    eprintln!(
        "fault-table | {:<34} | Put | {:<32} | identical   | stdout: {} | stderr: {}",
        "daemon killed, put -c",
        "SIGKILL with 3 MiB staged",
        run.stdout.trim(),
        run.stderr.trim()
    );
    assert_same_file(&src, daemon.path("big.bin"));
    assert_eq!(daemon.visible_files(), ["big.bin"]);
    // The summary reports what went over the wire: the 5 MiB after the 3 MiB staged, not 8.
    let sent = sent_this_time(&run.stdout);
    let rest = (size - 3 * MIB) as f64;
    assert!(
        sent.is_some_and(|sent| (sent - rest).abs() < 0.01 * MIB as f64),
        "put -c does not report sending only the {rest} bytes after the 3 MiB staged \
         (summary says {sent:?}); {run}\ndaemon log:\n{}",
        daemon.log()
    );
}

/// Item 10: an older version kept its private state in the root's `.ftpd`, where symlinks in
/// the root reached it. A new daemon on such a root moves it into the state directory at
/// startup, says so once, leaves no `.ftpd` in the root, and the upload staged there still
/// continues with `put -c`.
#[test]
fn an_older_roots_staged_upload_moves_to_the_state_directory_and_still_resumes() {
    let site = Site::new();
    let root = site.root();
    let work = tmpdir();
    let src = work.path().join("big.bin");
    let size = 8 * MIB + 5;
    write_random(&src, size, 0xfeed);

    let (state, staging) = kill_the_daemon_with_3_mib_of_big_bin_staged(&root, &work);
    // What an older version left: its staging and digests in the root's `.ftpd`.
    fs::rename(&state, root.join(".ftpd")).unwrap();
    // Older versions had no TLS key and no key of login salts: this one makes them anew.
    fs::remove_dir_all(root.join(".ftpd/tls")).unwrap();
    fs::remove_file(root.join(".ftpd/login-salt.key")).unwrap();

    let daemon = Daemon::start_on(&root);
    daemon.wait_for_log(&["INFO", "older version", "state directory"]);
    assert_missing(root.join(".ftpd"));
    assert!(staged_bytes(&staging) >= 3 * MIB, "the staged bytes moved");
    let run = daemon
        .cli()
        .cwd(&work)
        .timeout(RUN_LIMIT)
        .cmds("put -c big.bin")
        .run()
        .ok()
        .verified(&src, 1);
    assert_same_file(&src, daemon.path("big.bin"));
    let sent = sent_this_time(&run.stdout);
    let rest = (size - 3 * MIB) as f64;
    assert!(
        sent.is_some_and(|sent| (sent - rest).abs() < 0.01 * MIB as f64),
        "put -c did not continue from the migrated bytes (summary says {sent:?} sent); {run}"
    );
}

/// A tmpfs mounted on a temp dir, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`4m`), or says why not and returns `None` (not root, no mount).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tmpdir();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            Ok(out) => {
                eprintln!(
                    "skipping: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipping: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a process still inside): detach it now, the kernel frees it when it can.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// A 16 MiB upload to a 4 MiB file system fails with `no_space`, leaves nothing visible, and
/// the daemon goes on serving what fits.
#[test]
fn full_disk_fails_cleanly() {
    let Some(disk) = Tmpfs::mount("4m") else {
        return;
    };
    // Declared after `disk`, so the daemon is gone before the unmount.
    // The root is a directory on the small file system, not its top: the state directory must
    // be on the root's file system, outside the root.
    let root = disk.path().join("root");
    fs::create_dir(&root).unwrap();
    let daemon = Daemon::start_on(&root);
    let work = tmpdir();
    write_random(work.path().join("huge.bin"), 16 * MIB, 0xf011);
    let run = daemon
        .cli()
        .cwd(&work)
        .timeout(RUN_LIMIT)
        .cmds("put huge.bin")
        .run()
        .fails()
        .stderr_has_any(&["no_space", "no space"])
        .one_line_error();
    eprintln!(
        "fault-table | {:<34} | Put | {:<32} | clear error | {}",
        "disk full",
        "16 MiB onto a 4 MiB tmpfs",
        run.stderr.trim()
    );
    assert_missing(daemon.path("huge.bin"));
    assert!(
        daemon.visible_files().is_empty(),
        "{:?}",
        daemon.visible_files()
    );

    let small = work.path().join("small.bin");
    write_random(&small, 100 * 1024 + 1, 5);
    daemon
        .cli()
        .cwd(&work)
        .timeout(RUN_LIMIT)
        .round_trip("small.bin", "small-back.bin");
    assert_same_file(&small, daemon.path("small.bin"));
}

/// Starts a daemon on `root`, uploads `big.bin` from `work` through a proxy that stalls right
/// after the third chunk, and kills the daemon once exactly 3 MiB are staged, however fast the
/// machine. Returns the daemon's state and staging directories.
fn kill_the_daemon_with_3_mib_of_big_bin_staged(root: &Path, work: &TempDir) -> (PathBuf, PathBuf) {
    let daemon = Daemon::start_on(root);
    let (state, staging) = (daemon.state(), daemon.staging());
    let proxy = Proxy::start(
        daemon.addr(),
        vec![Fault::stall_forever(C2S, 3 * MIB + 64 * 1024)],
    );
    let mut upload = daemon
        .cli_via(proxy.addr())
        .cwd(work)
        .cmds("put big.bin")
        .spawn();
    wait_until("3 MiB are staged", Duration::from_secs(30), || {
        upload.assert_running();
        staged_bytes(&staging) >= 3 * MIB
    });
    daemon.kill();
    upload.kill();
    drop(proxy);
    (state, staging)
}

/// Regression: only transfers were retried, so a damaged record under `ls` (or `cd`, `pwd`,
/// `stat`) ended the command with exit 3. A request that may be sent twice is asked again on a
/// new connection.
#[test]
fn a_listing_over_a_damaged_link_is_asked_for_again() {
    let daemon = Daemon::start();
    fs::write(daemon.path("a.txt"), "x").unwrap();
    // Past the daemon's `hello` record (which ends at byte 761 when anonymous): the listing's.
    let proxy = Proxy::start(daemon.addr(), vec![Fault::flip_byte(S2C, 800)]);
    let run = daemon
        .cli_via(proxy.addr())
        .arg("--timeout")
        .arg(CLIENT_TIMEOUT)
        .cmds("ls")
        .timeout(RUN_LIMIT)
        .run()
        .ok();
    assert_eq!(run.stdout, "a.txt\n");
    assert!(run.stderr.contains("asking again (1/3)"), "{run}");
    assert_eq!(proxy.connections(), 2, "{run}");
}
