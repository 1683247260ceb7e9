//! Users: the HMAC challenge-response both ways, homes that confine each user, read-only users,
//! and a daemon that will not start with a users file others can read or a home outside its root.
//!
//! Most tests drive the real client; the ones about what goes over the wire (a replayed `auth`,
//! a command before `auth`, a server that cannot prove itself) speak the protocol directly with
//! the small blocking frame reader and writer at the bottom of this file.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use protocol::auth::{self, Bytes32, Role};
use protocol::{capability, Auth, AuthChallenge, AuthOk, ErrorCode, ErrorReply, Get, Hello};
use protocol::{Message, VERSION};
use tempfile::TempDir;

use crate::util::{
    assert_missing, assert_same_file, bin, tmpdir, wait_until, write_file, write_random, Cli,
    Daemon, Run,
};

/// How long a daemon may take to say it listens, or to refuse to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client run or one frame from a peer may take here: every test is small.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Three users: `alice` with an inline secret, `bob` with a secret file (ending in a newline,
/// which is not part of the secret), and `reader`, who may only download from `shared`.
const USERS: &str = r#"
[[user]]
name = "alice"
secret = "alice's secret"
home = "alice"

[[user]]
name = "bob"
secret_file = "bob.secret"
home = "bob"

[[user]]
name = "reader"
secret = "reader's secret"
home = "shared"
read_only = true
"#;
const ALICE: &str = "alice's secret";
const BOB: &str = "bob's secret";
const READER: &str = "reader's secret";

// ---------------------------------------------------------------------------------------------
// Logging in with the real client

#[test]
fn right_secret_puts_and_gets_within_the_home() {
    let d = standard_daemon();
    let work = tmpdir();
    let src = work.path().join("a.bin");
    write_random(&src, 100_000, 1);

    d.login("alice", ALICE)
        .cwd(&work)
        .cmds("put a.bin; get a.bin back.bin")
        .run()
        .ok()
        .verified(&src, 2);
    assert_same_file(&src, d.home("alice").join("a.bin"));
    assert_same_file(&src, work.path().join("back.bin"));
    assert_missing(d.root().join("a.bin"));

    // Bob's secret comes from a secret file on both sides; `/` is his home, not the root.
    d.login("bob", BOB)
        .cwd(&work)
        .cmds("put a.bin /b.bin")
        .run()
        .ok();
    assert_same_file(&src, d.home("bob").join("b.bin"));
    assert_missing(d.root().join("b.bin"));

    let log = d.log();
    for secret in [ALICE, BOB] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
}

#[test]
fn wrong_secret_is_refused() {
    let d = standard_daemon();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 1000, 2);

    let run = d
        .login("alice", "not alice's secret")
        .cwd(&work)
        .cmds("put a.bin")
        .run()
        .exits(4)
        .one_line_error();
    let want = format!("authentication failed for alice@{}", d.addr());
    assert!(run.stderr.contains(&want), "expected {want:?}; got {run}");
    assert!(
        d.visible("alice").is_empty(),
        "a refused client wrote a file"
    );
    d.wait_for_log_line(&["WARN", "authentication failed", "alice"]);
}

/// The answer must not tell an attacker which user names exist.
#[test]
fn unknown_user_gets_the_same_error_as_a_wrong_secret() {
    let d = standard_daemon();
    let wrong = d.login("alice", "guess").cmds("get x").run().exits(4);
    let unknown = d.login("mallory", "guess").cmds("get x").run().exits(4);
    assert_eq!(
        unknown.stderr,
        wrong.stderr.replace("alice", "mallory"),
        "an unknown user and a wrong secret are told apart"
    );
    unknown
        .one_line_error()
        .stderr_has(&format!("authentication failed for mallory@{}", d.addr()));
    d.wait_for_log_line(&["WARN", "authentication failed", "mallory"]);
}

/// Each failure from an address doubles the wait before the next answer: 250 ms, 500 ms, 1 s.
/// Only a lower bound is checked, which a slow machine cannot break.
#[test]
fn repeated_failures_are_slowed_down() {
    let d = standard_daemon();
    d.login("alice", "guess 1").cmds("get x").run().exits(4);
    d.login("alice", "guess 2").cmds("get x").run().exits(4);
    let started = Instant::now();
    d.login("alice", "guess 3").cmds("get x").run().exits(4);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "the third failure was answered after {took:?}, expected at least 1 s"
    );
}

#[test]
fn client_without_a_user_is_refused_by_a_server_with_users() {
    let d = standard_daemon();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 1000, 3);
    Cli::new(d.addr())
        .cwd(&work)
        .cmds("put a.bin")
        .timeout(STEP_TIMEOUT)
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has("requires a user name");
    assert!(d.visible("").iter().all(|n| n != "a.bin"));
}

/// A client with credentials does not talk to a server that never asks for them: it could be
/// anyone.
#[test]
fn client_with_a_user_refuses_an_anonymous_server() {
    let daemon = Daemon::start();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 1000, 4);
    let secret = work.path().join("secret");
    write_private(&secret, "alice's secret\n");
    daemon
        .cli()
        .cwd(&work)
        .arg("-u")
        .arg("alice")
        .arg("--secret-file")
        .arg(&secret)
        .cmds("put a.bin")
        .timeout(STEP_TIMEOUT)
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has("does not ask alice to authenticate");
    assert!(daemon.visible_files().is_empty(), "the client sent a file");
}

// ---------------------------------------------------------------------------------------------
// Homes and read-only users

#[test]
fn read_only_user_can_get_but_not_put() {
    let d = standard_daemon();
    let shared = d.home("reader");
    write_random(shared.join("report.bin"), 50_000, 5);
    let work = tmpdir();
    write_random(work.path().join("up.bin"), 1000, 6);

    d.login("reader", READER)
        .cwd(&work)
        .cmds("get report.bin")
        .run()
        .ok();
    assert_same_file(shared.join("report.bin"), work.path().join("report.bin"));

    d.login("reader", READER)
        .cwd(&work)
        .cmds("put up.bin")
        .run()
        .exits(5)
        .one_line_error()
        .stderr_has("read-only");
    assert_eq!(d.visible("shared"), ["report.bin"]);
}

#[test]
fn users_cannot_reach_each_others_homes() {
    let d = standard_daemon();
    let work = tmpdir();
    let mine = work.path().join("f");
    write_random(&mine, 20_000, 7);
    write_random(work.path().join("other"), 30_000, 8);
    d.login("alice", ALICE).cwd(&work).cmds("put f").run().ok();
    let alice_f = d.home("alice").join("f");

    // `..` cannot climb out of bob's home.
    d.login("bob", BOB)
        .cwd(&work)
        .cmds("get ../alice/f stolen")
        .run()
        .exits(5)
        .one_line_error()
        .stderr_has("denied");
    d.login("bob", BOB)
        .cwd(&work)
        .cmds("put -f other ../alice/f")
        .run()
        .exits(5)
        .stderr_has("denied");
    // `/` is bob's home, so `/alice/f` is a file bob does not have.
    d.login("bob", BOB)
        .cwd(&work)
        .cmds("get /alice/f stolen")
        .run()
        .exits(5)
        .stderr_has("not_found");

    assert_missing(work.path().join("stolen"));
    assert_eq!(d.visible("alice"), ["f"]);
    assert_same_file(&mine, &alice_f);
    assert!(d.visible("bob").is_empty(), "{:?}", d.visible("bob"));
}

// ---------------------------------------------------------------------------------------------
// On the wire

/// A recorded `auth` answers only the challenge it was made for.
#[test]
fn replayed_auth_is_refused() {
    let d = standard_daemon();

    let mut first = Raw::connect(d.addr());
    let server_nonce = first.hello_and_challenge();
    let client_nonce = auth::nonce();
    let mac = sign(Role::Client, ALICE, &server_nonce, &client_nonce, "alice");
    let recorded = Message::Auth(Auth {
        user: "alice".into(),
        nonce: client_nonce,
        mac,
    });
    first.send(&recorded);
    match first.recv() {
        Message::AuthOk(AuthOk { mac }) => assert_eq!(
            mac,
            sign(Role::Server, ALICE, &server_nonce, &client_nonce, "alice"),
            "the server's proof is not the documented HMAC"
        ),
        other => panic!("a fresh, valid auth got {other:?}"),
    }
    first.send(&Message::Bye);

    let mut second = Raw::connect(d.addr());
    let new_nonce = second.hello_and_challenge();
    assert_ne!(new_nonce, server_nonce, "the server reused its nonce");
    second.send(&recorded);
    second.expect_error(ErrorCode::AuthFailed);
    second.expect_closed();
    d.wait_for_log_line(&["WARN", "authentication failed", "alice"]);
}

#[test]
fn commands_before_auth_are_refused() {
    let d = standard_daemon();
    write_random(d.home("alice").join("f"), 100, 9);
    let mut raw = Raw::connect(d.addr());
    raw.hello_and_challenge();
    raw.send(&Message::Get(Get {
        path: "/alice/f".into(),
        offset: 0,
        prefix_md5: None,
    }));
    raw.expect_error(ErrorCode::AuthRequired);
    raw.expect_closed();
}

/// The client checks the server's proof: a server that accepts any `auth` but does not know the
/// secret (here, it signs with another one) is not trusted with a single command.
#[test]
fn client_refuses_a_server_that_cannot_prove_the_secret() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the fake server");
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || fake_server(listener, "alice", b"some other secret"));

    let work = tmpdir();
    write_random(work.path().join("a.bin"), 1000, 10);
    let secret = work.path().join("secret");
    write_private(&secret, ALICE);
    Cli::new(addr)
        .cwd(&work)
        .arg("-u")
        .arg("alice")
        .arg("--secret-file")
        .arg(&secret)
        .arg("--timeout")
        .arg("10s")
        .cmds("put a.bin")
        .timeout(STEP_TIMEOUT)
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has("could not prove");

    let after_auth = server.join().expect("the fake server panicked");
    assert_eq!(
        after_auth,
        Vec::<Message>::new(),
        "the client sent commands to a server that failed to prove itself"
    );
}

/// Plays a server that has `user` but signs its proof with `wrong_secret`. Checks the client's
/// own proof against the real secret (so the test's transcript is the documented one), then
/// returns what the client sent after `auth_ok` (but `bye`), until it closed.
fn fake_server(listener: TcpListener, user: &str, wrong_secret: &[u8]) -> Vec<Message> {
    let (stream, _) = listener.accept().expect("the client never connected");
    let mut peer = Raw::from(stream);
    match peer.recv() {
        Message::Hello(h) => assert_eq!(h.version, VERSION),
        other => panic!("expected the client's hello, got {other:?}"),
    }
    peer.send(&Message::Hello(Hello {
        version: VERSION,
        agent: "fake-ftpd/0".into(),
        capabilities: vec![
            capability::RESUME.into(),
            capability::AUTH_HMAC_SHA256.into(),
        ],
        max_chunk: protocol::DEFAULT_CHUNK,
    }));
    let server_nonce = auth::nonce();
    peer.send(&Message::AuthChallenge(AuthChallenge {
        nonce: server_nonce,
    }));
    let answer = match peer.recv() {
        Message::Auth(a) => a,
        other => panic!("expected auth, got {other:?}"),
    };
    assert_eq!(answer.user, user);
    assert_eq!(
        answer.mac,
        sign(Role::Client, ALICE, &server_nonce, &answer.nonce, user),
        "the client's proof is not the documented HMAC"
    );
    let t = auth::transcript(Role::Server, VERSION, &server_nonce, &answer.nonce, user);
    peer.send(&Message::AuthOk(AuthOk {
        mac: auth::sign(wrong_secret, &t),
    }));
    let mut after = Vec::new();
    while let Some(m) = peer.try_recv() {
        if m != Message::Bye {
            after.push(m);
        }
    }
    after
}

// ---------------------------------------------------------------------------------------------
// Refusing to start

#[test]
fn world_readable_users_file_stops_startup() {
    let site = Site::new();
    let users = site.users(USERS);
    site.secret_file("bob.secret", "bob's secret\n");
    fs::set_permissions(&users, fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = refuses_to_start(&site.args());
    assert_names(&stderr, &["chmod 600", &users.display().to_string()]);
}

#[test]
fn group_readable_secret_file_stops_startup() {
    let site = Site::new();
    site.users(USERS);
    let secret = site.secret_file("bob.secret", "bob's secret\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).unwrap();
    let stderr = refuses_to_start(&site.args());
    assert_names(&stderr, &["chmod 600", &secret.display().to_string()]);
}

#[test]
fn home_outside_the_root_stops_startup() {
    let site = Site::new();
    site.users("[[user]]\nname = \"eve\"\nsecret = \"s\"\nhome = \"../escape\"\n");
    let stderr = refuses_to_start(&site.args());
    assert_names(&stderr, &["outside the root"]);
    assert_missing(site.base.path().join("escape"));
}

/// Without users, anyone who reaches the port gets the whole root: fine on loopback, a flag
/// away elsewhere.
#[test]
fn anonymous_daemon_on_a_public_address_needs_allow_anonymous() {
    let root = tmpdir();
    let mut args: Vec<OsString> = vec![
        "--root".into(),
        root.path().into(),
        "--listen".into(),
        "0.0.0.0:0".into(),
    ];
    let stderr = refuses_to_start(&args);
    assert_names(&stderr, &["--allow-anonymous"]);

    args.push("--allow-anonymous".into());
    let daemon = Ftpd::start(&args);
    daemon.wait_for_log_line(&["WARN", "anonymously"]);
    let local = SocketAddr::from(([127, 0, 0, 1], daemon.addr.port()));
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 1000, 11);
    Cli::new(local)
        .cwd(&work)
        .cmds("put a.bin")
        .timeout(STEP_TIMEOUT)
        .run()
        .ok();
    assert_same_file(work.path().join("a.bin"), root.path().join("a.bin"));
    drop(daemon);
}

// ---------------------------------------------------------------------------------------------
// Helpers: a site (root plus users file), a daemon started on it, exit codes.

/// A root to serve and, next to it, the private directory holding the users file and secret
/// files. Both live in one temp dir, so a home that escaped the root would appear beside them.
struct Site {
    base: TempDir,
}

impl Site {
    fn new() -> Site {
        let base = tempfile::Builder::new()
            .prefix("e2e-site-")
            .tempdir()
            .expect("cannot create temp dir");
        fs::create_dir(base.path().join("root")).unwrap();
        fs::create_dir(base.path().join("etc")).unwrap();
        Site { base }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    fn users_file(&self) -> PathBuf {
        self.base.path().join("etc").join("users.toml")
    }

    /// Writes the users file, readable by its owner only.
    fn users(&self, toml: &str) -> PathBuf {
        let path = self.users_file();
        write_private(&path, toml);
        path
    }

    /// Writes a secret file next to the users file, readable by its owner only.
    fn secret_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.base.path().join("etc").join(name);
        write_private(&path, contents);
        path
    }

    fn args(&self) -> Vec<OsString> {
        vec![
            "--root".into(),
            self.root().into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--users".into(),
            self.users_file().into(),
        ]
    }
}

/// A daemon with [`USERS`]. Bob's secret file ends in a newline that is not part of it.
fn standard_daemon() -> UsersDaemon {
    let site = Site::new();
    site.users(USERS);
    site.secret_file("bob.secret", &format!("{BOB}\n"));
    let ftpd = Ftpd::start(&site.args());
    UsersDaemon {
        ftpd,
        site,
        keys: tmpdir(),
        logins: Cell::new(0),
    }
}

/// A running `ftpd` with a users file, and the client's side of the secrets.
struct UsersDaemon {
    /// Declared first so the daemon is gone before its directories are removed.
    ftpd: Ftpd,
    site: Site,
    /// Secret files for the client, one per login.
    keys: TempDir,
    /// Numbers the secret files in `keys`.
    logins: Cell<u32>,
}

impl UsersDaemon {
    fn addr(&self) -> SocketAddr {
        self.ftpd.addr
    }

    fn root(&self) -> PathBuf {
        self.site.root()
    }

    /// The home directory of a user of [`USERS`] on disk.
    fn home(&self, user: &str) -> PathBuf {
        let dir = match user {
            "reader" => "shared",
            other => other,
        };
        self.root().join(dir)
    }

    /// Names in `dir` under the root (the root itself for `""`), but the private `.ftpd`.
    fn visible(&self, dir: &str) -> Vec<String> {
        let path = self.root().join(dir);
        let mut names: Vec<String> = fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".ftpd")
            .collect();
        names.sort();
        names
    }

    /// A client logging in as `user` with `secret`, read from a file that ends in a newline.
    fn login(&self, user: &str, secret: &str) -> Cli {
        let n = self.logins.get();
        self.logins.set(n + 1);
        let file = self.keys.path().join(format!("{user}-{n}.secret"));
        write_private(&file, format!("{secret}\n"));
        Cli::new(self.addr())
            .arg("-u")
            .arg(user)
            .arg("--secret-file")
            .arg(file)
            .arg("--timeout")
            .arg("10s")
            .timeout(STEP_TIMEOUT)
    }

    fn log(&self) -> String {
        self.ftpd.log()
    }

    #[track_caller]
    fn wait_for_log_line(&self, words: &[&str]) {
        self.ftpd.wait_for_log_line(words);
    }
}

/// An `ftpd` started with the flags a test chose. Killed (and reaped) on drop.
struct Ftpd {
    child: Child,
    /// The address from its `listening on` line.
    addr: SocketAddr,
    /// Its stderr so far.
    log: Arc<Mutex<String>>,
    /// Copies stderr into `log` until EOF.
    drain: Option<JoinHandle<()>>,
}

impl Ftpd {
    /// Starts `ftpd ARGS` and waits for its `listening on` line; panics with its output if it
    /// exits or stays silent instead.
    fn start(args: &[OsString]) -> Ftpd {
        let mut child = ftpd(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn ftpd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let drain = {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut ready = Some(ready_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = ready_addr(&line) {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ftpd {
                child,
                addr,
                log,
                drain: Some(drain),
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                let _ = drain.join();
                panic!(
                    "ftpd {args:?} did not start ({status:?}); its stderr:\n{}",
                    log.lock().unwrap()
                );
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until one line of the log has all of `words` (the drain thread may lag behind).
    #[track_caller]
    fn wait_for_log_line(&self, words: &[&str]) {
        let found = || {
            self.log()
                .lines()
                .any(|line| words.iter().all(|w| line.contains(w)))
        };
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until("the log has the line", Duration::from_secs(5), found)
        }));
        if waited.is_err() {
            panic!(
                "no daemon log line has all of {words:?}; the log:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Ftpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        if thread::panicking() {
            eprintln!("--- ftpd stderr ---\n{}--- end ftpd stderr ---", self.log());
        }
    }
}

fn ftpd(args: &[OsString]) -> Command {
    let mut cmd = Command::new(bin("ftpd"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("FTPD_ROOT")
        .env_remove("FTPD_LISTEN")
        .env_remove("FTPD_USERS")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// The address in the daemon's `… listening on 127.0.0.1:4242 …` line.
fn ready_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Runs `ftpd ARGS`, which must exit with a failure status within the start timeout; returns
/// its stderr. A daemon that starts instead is killed and the test fails.
#[track_caller]
fn refuses_to_start(args: &[OsString]) -> String {
    let mut child = ftpd(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn ftpd");
    let mut pipe = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().expect("cannot poll ftpd") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ftpd {args:?} was expected to refuse to start but is still running; stderr:\n{}",
                stderr.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let stderr = stderr.join().unwrap();
    assert!(
        !status.success() && status.code().is_some(),
        "ftpd {args:?} was expected to exit with a failure, got {status}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("listening on"),
        "ftpd {args:?} listened before refusing; stderr:\n{stderr}"
    );
    stderr
}

#[track_caller]
fn assert_names(stderr: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "expected ftpd's stderr to contain {needle:?}, got:\n{stderr}"
        );
    }
}

/// Writes `contents` to `path` with mode 600, as secrets must be.
fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    write_file(path, contents);
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// The MAC of `role`'s transcript, as PROTOCOL.md defines it.
fn sign(role: Role, secret: &str, server: &Bytes32, client: &Bytes32, user: &str) -> Bytes32 {
    auth::sign(
        secret.as_bytes(),
        &auth::transcript(role, VERSION, server, client, user),
    )
}

/// Checks the client's exit code, for the failures that have their own.
trait ExitsWith {
    fn exits(self, code: i32) -> Run;
}

impl ExitsWith for Run {
    #[track_caller]
    fn exits(self, code: i32) -> Run {
        let run = self.fails();
        assert_eq!(run.status.code(), Some(code), "wrong exit code: {run}");
        run
    }
}

// ---------------------------------------------------------------------------------------------
// A blocking, header-only peer: frames are a 4-byte big-endian length and a JSON header (no
// message used here has a body).

struct Raw {
    stream: TcpStream,
}

impl From<TcpStream> for Raw {
    fn from(stream: TcpStream) -> Raw {
        stream.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(STEP_TIMEOUT)).unwrap();
        Raw { stream }
    }
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Raw::from(stream)
    }

    fn send(&mut self, message: &Message) {
        let header = serde_json::to_vec(message).unwrap();
        let len = u32::try_from(header.len()).unwrap();
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(&header);
        self.stream
            .write_all(&frame)
            .unwrap_or_else(|e| panic!("cannot send {message:?}: {e}"));
    }

    /// The next message; panics if the peer closes or goes silent instead.
    #[track_caller]
    fn recv(&mut self) -> Message {
        match self.try_recv() {
            Some(m) => m,
            None => panic!("the peer closed the connection instead of answering"),
        }
    }

    /// The next message, or `None` once the peer has closed the connection.
    fn try_recv(&mut self) -> Option<Message> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if closed(&e) => return None,
            Err(e) => panic!("no frame from the peer: {e}"),
        }
        let len = u32::from_be_bytes(len) as usize;
        assert!(
            (1..=protocol::MAX_HEADER).contains(&len),
            "header length {len}"
        );
        let mut header = vec![0; len];
        self.stream
            .read_exact(&mut header)
            .unwrap_or_else(|e| panic!("a frame was cut short: {e}"));
        let message: Message = serde_json::from_slice(&header)
            .unwrap_or_else(|e| panic!("bad header {:?}: {e}", String::from_utf8_lossy(&header)));
        assert!(
            !matches!(message, Message::Chunk(_)),
            "unexpected chunk frame"
        );
        Some(message)
    }

    /// Our hello; the server's hello announcing authentication, then its challenge's nonce.
    #[track_caller]
    fn hello_and_challenge(&mut self) -> Bytes32 {
        self.send(&Message::Hello(Hello {
            version: VERSION,
            agent: "e2e-raw/0".into(),
            capabilities: vec![],
            max_chunk: protocol::DEFAULT_CHUNK,
        }));
        match self.recv() {
            Message::Hello(h) => assert!(
                h.capabilities
                    .iter()
                    .any(|c| c == capability::AUTH_HMAC_SHA256),
                "a server with users does not announce auth: {h:?}"
            ),
            other => panic!("expected hello, got {other:?}"),
        }
        match self.recv() {
            Message::AuthChallenge(c) => c.nonce,
            other => panic!("expected auth_challenge, got {other:?}"),
        }
    }

    #[track_caller]
    fn expect_error(&mut self, code: ErrorCode) {
        match self.recv() {
            Message::Error(ErrorReply { code: got, .. }) if got == code => {}
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    /// Panics unless the server closes the connection (without sending anything more).
    #[track_caller]
    fn expect_closed(&mut self) {
        if let Some(m) = self.try_recv() {
            panic!("expected the server to close the connection, got {m:?}");
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}
