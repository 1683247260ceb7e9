//! Logins without shared secrets, end to end: keys made by `ftp-cli keygen` and listed by
//! `ftpd adduser --key`; passwords stored only as SCRAM verifiers by `ftpd adduser` and
//! `ftpd passwd`, and put in force by SIGHUP; the old `secret` entries; a relay between two TLS
//! connections, which cannot complete a password login; and SCRAM's first answer, which must
//! not tell unknown names from known ones.
//!
//! Each test builds its users file with the real admin commands, as an operator would. Client
//! keys live in a temp dir of the test's own and are always named with `-i`: the default key
//! (`id_ed25519` in the data directory every client of the run shares) is never made.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use protocol::scram::{self, Verifier};
use protocol::{Auth, ErrorCode, Message};
use tempfile::TempDir;

use crate::raw::Raw;
use crate::util::{
    assert_same_file, names, tmpdir, tmpdir_named, write_private, write_random, Cli, Daemon,
    DaemonBuilder, Keys, Run, Site, Tool,
};

/// How long one client run, one admin command or one frame may take here.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Iterations of the verifiers most tests make: the fewest SCRAM allows, so that each login
/// costs the client little. The default (600,000) only where it is what is tested.
const FAST: &str = "4096";
/// What the daemon warns of an entry that still holds the password itself.
const LEGACY_WARNING: &str = "holds this user's password itself";

const BOB: &str = "bob's password";

// ---------------------------------------------------------------------------------------------
// Keys

/// The whole key workflow, as the README tells it: the user makes a key, the admin adds its
/// fingerprint (and no password), and the user logs in with the key alone: no password in a
/// file, in the environment or at a terminal.
#[test]
fn a_key_from_keygen_logs_in_without_a_password() {
    let site = UsersSite::new();
    let (key, fingerprint) = site.keygen("carol");
    assert_private(&key);
    site.admin(&["adduser", "carol", "--key", &fingerprint], None)
        .ok();
    let text = site.users_text();
    assert!(
        !text.contains("SCRAM-SHA-256$"),
        "adduser with a key set a password:\n{text}"
    );
    let d = site.daemon().start();

    let work = tmpdir();
    write_random(work.path().join("a.bin"), 100_000, 1);
    let run = login(&d)
        .arg("-u")
        .arg("carol")
        .arg("-i")
        .arg(&key)
        .cwd(&work)
        .round_trip("a.bin", "back.bin");
    assert!(
        !run.stderr.contains("Password"),
        "the client asked for a password: {run}"
    );
    assert_same_file(work.path().join("a.bin"), d.path("carol/a.bin"));
    d.wait_for_log(&["authenticated", "user=\"carol\"", "method=\"key\""]);
}

/// A key is the user's it is listed for: alice's key does not log in as bob. Without a
/// password the client stops and says why; with bob's password it logs in with that.
#[test]
fn another_users_key_is_not_accepted_but_their_password_is() {
    let site = UsersSite::new();
    let (alice_key, alice) = site.keygen("alice");
    site.admin(&["adduser", "alice", "--key", &alice], None)
        .ok();
    site.add_password_user("bob", BOB);
    let d = site.daemon().start();
    let work = tmpdir();
    write_random(work.path().join("b.bin"), 10_000, 2);
    let as_bob = || {
        login(&d)
            .arg("-u")
            .arg("bob")
            .arg("-i")
            .arg(&alice_key)
            .cwd(&work)
    };

    as_bob()
        .cmds("put b.bin")
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has("the key was not accepted and there is no password");
    // Asked for a password and given none, the client went away: no failed guess to count.
    d.wait_for_log(&["connection closed"]);
    assert!(!d.log().contains("authenticated"), "{}", d.log());
    assert!(!d.log().contains("authentication failed"), "{}", d.log());

    as_bob()
        .env("FTP_CLI_SECRET", BOB)
        .cmds("put b.bin")
        .run()
        .ok();
    assert_same_file(work.path().join("b.bin"), d.path("bob/b.bin"));
    d.wait_for_log(&["authenticated", "user=\"bob\"", "method=\"password\""]);
}

/// A key listed nowhere, for a user who has only keys: the server asks for a password as it
/// would of anyone (it says nothing about what the user has), and any password fails with
/// `auth_failed`, as an unknown user's would.
#[test]
fn an_unknown_key_is_refused() {
    let site = UsersSite::new();
    let (_, carol) = site.keygen("carol");
    let (stranger, _) = site.keygen("stranger");
    site.admin(&["adduser", "carol", "--key", &carol], None)
        .ok();
    let d = site.daemon().start();
    let with_stranger = |user: &str| {
        login(&d)
            .arg("-u")
            .arg(user)
            .arg("-i")
            .arg(&stranger)
            .cmds("ls")
    };

    let known = with_stranger("carol")
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has(&format!("carol@{}", d.addr()))
        .stderr_has("the key was not accepted");
    let unknown = with_stranger("nobody").run().exits(4);
    assert_eq!(
        unknown.stderr.replace("nobody", "carol"),
        known.stderr,
        "a user with keys and an unknown name are told apart"
    );

    with_stranger("carol")
        .env("FTP_CLI_SECRET", "a guess")
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has(&format!("authentication failed for carol@{}", d.addr()));
    d.wait_for_log(&["WARN", "authentication failed", "user=\"carol\""]);
    assert!(!d.log().contains("authenticated"), "{}", d.log());
}

// ---------------------------------------------------------------------------------------------
// Passwords: ftpd adduser and ftpd passwd

/// `ftpd adduser` takes the password on stdin and stores its verifier, never the password; the
/// password then logs in, and reaches no log.
#[test]
fn a_password_from_adduser_logs_in_and_is_stored_only_as_a_verifier() {
    let site = UsersSite::new();
    site.add_password_user("bob", BOB);
    let text = site.users_text();
    assert!(
        !text.contains(BOB),
        "the password is in the users file:\n{text}"
    );
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("password = \"SCRAM-SHA-256$4096:"), "{text}");
    assert_private(&site.users);
    let d = site.daemon().start();

    let work = tmpdir();
    write_random(work.path().join("a.bin"), 50_000, 3);
    login(&d)
        .user("bob", site.secret("bob", BOB))
        .cwd(&work)
        .round_trip("a.bin", "back.bin");
    assert_same_file(work.path().join("a.bin"), d.path("bob/a.bin"));
    d.wait_for_log(&["authenticated", "user=\"bob\"", "method=\"password\""]);
    assert!(!d.log().contains(BOB), "the password reached the log");
    assert!(!d.log().contains(LEGACY_WARNING), "{}", d.log());
}

/// `ftpd passwd` on a running daemon changes nothing until SIGHUP; then the new password logs
/// in and the old one is refused. A session opened with the old password is ended at its next
/// command (every command checks the account against the users in force): its login no longer
/// stands, so it may not go on as if it did.
#[test]
fn passwd_and_sighup_replace_the_password_and_end_open_sessions() {
    let site = UsersSite::new();
    site.add_password_user("bob", BOB);
    let d = site.daemon().start();
    let mut open = Raw::connect(d.addr())
        .within(STEP_TIMEOUT)
        .login("bob", BOB);
    open.expect_usable();

    let new = "bob's new password";
    site.admin(&["passwd", "bob"], Some(new)).ok();
    let text = site.users_text();
    assert!(!text.contains(new) && !text.contains(BOB), "{text}");
    d.signal("HUP");
    d.wait_for_log(&["reloaded settings and users", "users=1"]);

    open.send(&Message::Pwd);
    let ended = open.expect_error(ErrorCode::AuthFailed);
    assert!(
        ended.message.contains("changed or removed"),
        "the open session was not told why: {ended:?}"
    );
    open.expect_closed();
    d.wait_for_log(&["WARN", "account changed or removed", "user=\"bob\""]);

    login(&d)
        .user("bob", site.secret("bob", new))
        .cmds("pwd")
        .run()
        .ok();
    login(&d)
        .user("bob", site.secret("bob", BOB))
        .cmds("pwd")
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has(&format!("authentication failed for bob@{}", d.addr()));
}

/// The admin commands refuse what would lose or expose an account: adding a name that exists
/// (that is passwd's job), setting the password of a name that does not, and touching a users
/// file others can read. None of them changes the file.
#[test]
fn adduser_and_passwd_refuse_what_they_must_not_do() {
    let site = UsersSite::new();
    site.add_password_user("bob", BOB);
    let before = site.users_text();

    site.admin(&["adduser", "--iterations", FAST, "bob"], Some("other"))
        .fails()
        .stderr_has("\"bob\" exists")
        .stderr_has("ftpd passwd");
    site.admin(&["passwd", "--iterations", FAST, "nobody"], Some("pw"))
        .fails()
        .stderr_has("no user \"nobody\"")
        .stderr_has("ftpd adduser");
    assert_eq!(
        site.users_text(),
        before,
        "a refused command changed the file"
    );

    fs::set_permissions(&site.users, fs::Permissions::from_mode(0o644)).unwrap();
    site.admin(&["adduser", "--iterations", FAST, "carol"], Some("pw"))
        .fails()
        .stderr_has("chmod 600");
    site.admin(&["passwd", "--iterations", FAST, "bob"], Some("pw"))
        .fails()
        .stderr_has("chmod 600");
    assert_eq!(
        site.users_text(),
        before,
        "a refused command changed the file"
    );
    let mode = fs::metadata(&site.users).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "a refused command changed the file's mode");
    let left: Vec<String> = names(site.site.dir())
        .into_iter()
        .filter(|n| n.starts_with("users"))
        .collect();
    assert_eq!(left, ["users.toml"], "a refused command left a file behind");
}

/// An old entry that holds the password itself still logs in, with one WARN that names the
/// user and the way out; `ftpd passwd` is that way: the secret leaves the file, and the reload
/// does not warn again.
#[test]
fn a_legacy_secret_works_with_one_warning_until_passwd_replaces_it() {
    let site = UsersSite::new();
    let old = "dora's old secret";
    write_private(
        &site.users,
        format!("[[user]]\nname = \"dora\"\nsecret = \"{old}\"\nhome = \"dora\"\n"),
    );
    let d = site.daemon().start();
    let warnings = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(LEGACY_WARNING))
            .map(str::to_owned)
            .collect()
    };
    let warned = warnings(&d.log());
    assert_eq!(warned.len(), 1, "expected one warning; log:\n{}", d.log());
    for needle in ["WARN", "user=\"dora\"", "ftpd passwd"] {
        assert!(
            warned[0].contains(needle),
            "{needle:?} not in {:?}",
            warned[0]
        );
    }

    login(&d)
        .user("dora", site.secret("dora", old))
        .cmds("pwd")
        .run()
        .ok();
    d.wait_for_log(&["authenticated", "user=\"dora\"", "method=\"password\""]);
    assert_eq!(warnings(&d.log()).len(), 1, "a login warned again");

    let new = "dora's new password";
    site.admin(&["passwd", "dora"], Some(new)).ok();
    let text = site.users_text();
    assert!(!text.contains(old) && !text.contains("secret"), "{text}");
    d.signal("HUP");
    d.wait_for_log(&["reloaded settings and users"]);
    assert_eq!(warnings(&d.log()).len(), 1, "{}", d.log());
    login(&d)
        .user("dora", site.secret("dora", new))
        .cmds("pwd")
        .run()
        .ok();
}

// ---------------------------------------------------------------------------------------------
// What the password login protects against

/// A relay that holds a key the client trusts, between two TLS connections of its own, passes
/// every byte along and still cannot log in with the client's password: the client's proof is
/// bound to the client's connection (its TLS exporter), which is not the daemon's.
#[test]
fn a_relay_between_two_tls_connections_cannot_complete_a_password_login() {
    let site = UsersSite::new();
    site.add_password_user("bob", BOB);
    let d = site.daemon().start();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 10_000, 4);
    let secret = site.secret("bob", BOB);
    // The password is right: straight to the daemon, it logs in.
    login(&d).user("bob", &secret).cmds("pwd").run().ok();

    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the relay");
    let relay_addr = listener.local_addr().unwrap();
    let relay = relay(listener, d.addr());
    Cli::new(relay_addr)
        .arg("--fingerprint")
        .arg(crate::tls::identity().fingerprint.to_string())
        .arg("--timeout")
        .arg("10s")
        .timeout(STEP_TIMEOUT)
        .user("bob", &secret)
        .cwd(&work)
        .cmds("put a.bin")
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has(&format!("authentication failed for bob@{relay_addr}"));
    relay.join().expect("the relay panicked");
    d.wait_for_log(&["WARN", "authentication failed", "user=\"bob\""]);
    assert_eq!(
        d.log().matches("authenticated").count(),
        1,
        "only the direct login got in:\n{}",
        d.log()
    );
    assert!(
        d.visible("bob").is_empty(),
        "the relayed client wrote a file"
    );
}

/// Accepts one client with the tests' identity, connects to `daemon` with TLS of its own, and
/// copies the plaintext both ways until either side is done.
fn relay(listener: TcpListener, daemon: SocketAddr) -> JoinHandle<()> {
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (client, _) = within("waiting for the client", listener.accept())
                .await
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(crate::tls::server_config());
            let mut client = within("in the client's handshake", acceptor.accept(client))
                .await
                .expect("the client's TLS handshake failed");
            let tcp = tokio::net::TcpStream::connect(daemon).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(crate::tls::any_server_config());
            let name = "localhost".try_into().unwrap();
            let mut server = within("in the daemon's handshake", connector.connect(name, tcp))
                .await
                .expect("the daemon's TLS handshake failed");
            // Either side may hang up without a TLS close_notify: an error is an ending too.
            let copied = tokio::io::copy_bidirectional(&mut client, &mut server);
            let _ = within("copying", copied).await;
        });
    })
}

/// `step`'s outcome; panics, saying it was `what`, if it takes longer than [`STEP_TIMEOUT`].
async fn within<F: std::future::Future>(what: &str, step: F) -> F::Output {
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .unwrap_or_else(|_| panic!("the relay timed out {what}"))
}

/// SCRAM's first answer carries the user's salt and iteration count, so it must not differ for
/// names without a verifier (unknown, or keys only): their salt is made up from the name, the
/// same at every attempt and after a restart, different for another name, and their count is
/// the one `ftpd adduser` gives by default.
#[test]
fn scrams_first_answer_for_an_unknown_user_looks_like_a_known_users() {
    let site = UsersSite::new();
    // With the default iterations, which are what unknown names are offered.
    site.admin(&["adduser", "bob"], Some(BOB)).ok();
    let fingerprint = crate::tls::identity().fingerprint.to_string();
    site.admin(&["adduser", "carol", "--key", &fingerprint], None)
        .ok();
    let stored = site.verifier("bob");
    assert_eq!(stored.iterations, scram::DEFAULT_ITERATIONS);
    let d = site.daemon().start();

    let bob = first_answer(&d, "bob");
    assert_eq!(bob.salt, stored.salt, "bob is offered his verifier's salt");
    let mallory = first_answer(&d, "mallory");
    let carol = first_answer(&d, "carol");
    for (name, answer) in [("mallory", &mallory), ("carol", &carol)] {
        assert_eq!(
            answer.shape(),
            bob.shape(),
            "{name}'s answer differs from bob's"
        );
        assert_eq!(answer.iterations, scram::DEFAULT_ITERATIONS, "{name}");
    }
    assert_eq!(
        first_answer(&d, "mallory").salt,
        mallory.salt,
        "a second try"
    );
    let trudy = first_answer(&d, "trudy");
    assert_ne!(trudy.salt, mallory.salt, "two unknown names share a salt");
    assert_ne!(carol.salt, mallory.salt);
    assert_ne!(mallory.salt, bob.salt);

    // The made-up salts come from a key in the daemon's state: the same after a restart.
    d.kill();
    let d = site.daemon().start();
    assert_eq!(
        first_answer(&d, "mallory").salt,
        mallory.salt,
        "after a restart"
    );
    assert!(!d.log().contains("authentication failed"), "{}", d.log());
}

/// What a server-first-message says, read.
#[derive(Debug)]
struct FirstAnswer {
    /// The attributes' names, in order (`r`, `s`, `i`).
    attributes: Vec<String>,
    /// The length of the server's part of the nonce.
    suffix_len: usize,
    salt: Vec<u8>,
    iterations: u32,
}

impl FirstAnswer {
    /// Everything but the salt's bytes: what must be the same for every name.
    fn shape(&self) -> (Vec<String>, usize, usize, u32) {
        let FirstAnswer {
            attributes,
            suffix_len,
            salt,
            iterations,
        } = self;
        (attributes.clone(), *suffix_len, salt.len(), *iterations)
    }
}

/// Starts a password login as `user` and reads the server's first SCRAM message (checked as a
/// client checks it: it continues our nonce), then hangs up: no proof, so no failure counted.
#[track_caller]
fn first_answer(d: &Daemon, user: &str) -> FirstAnswer {
    let mut peer = Raw::connect(d.addr()).within(STEP_TIMEOUT);
    peer.hello_for_login();
    let nonce = scram::nonce();
    let (client, first) = scram::Client::start(user, peer.binding(), nonce.clone());
    peer.send(&Message::Auth(Auth {
        user: user.into(),
        scram: Some(first),
    }));
    let server_first = match peer.recv() {
        Message::AuthContinue(s) => s.scram,
        other => panic!("expected auth_continue for {user}, got {other:?}"),
    };
    peer.close();
    let (salt, iterations) = client
        .salt(&server_first)
        .unwrap_or_else(|e| panic!("{user}: {server_first:?}: {e}"));
    let attributes = server_first
        .split(',')
        .map(|a| a.split_once('=').map_or(a, |(name, _)| name).to_owned())
        .collect();
    let server_nonce = server_first
        .strip_prefix("r=")
        .and_then(|r| r.split(',').next())
        .expect("the nonce comes first");
    let suffix_len = server_nonce.len() - nonce.len();
    FirstAnswer {
        attributes,
        suffix_len,
        salt,
        iterations,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers: a site whose users file the admin commands write, and the client's keys.

/// A root, a users file beside it (written by `ftpd adduser` and `ftpd passwd`), and a temp
/// dir of the client's keys and secret files.
struct UsersSite {
    /// The users file: `users.toml` beside the root.
    users: PathBuf,
    /// Client keys made by `ftp-cli keygen`, one per user; never the shared data directory.
    keys: TempDir,
    /// Secret files for `--secret-file`.
    secrets: Keys,
    /// Holds the root, the users file and the daemon's state (declared last: a daemon the
    /// test started is dropped before this).
    site: Site,
}

impl UsersSite {
    fn new() -> UsersSite {
        let site = Site::new();
        UsersSite {
            users: site.path("users.toml"),
            keys: tmpdir_named("e2e-idkeys-"),
            secrets: Keys::new(),
            site,
        }
    }

    /// `ftpd` with this site's root and users file, not started yet.
    fn daemon(&self) -> DaemonBuilder {
        self.site.daemon().arg("--users").arg(&self.users)
    }

    /// `ftpd ARGS --users FILE`, with `password` and a newline on stdin if given.
    fn admin(&self, args: &[&str], password: Option<&str>) -> Run {
        let tool = Tool::ftpd().args(args).arg("--users").arg(&self.users);
        match password {
            Some(p) => tool.stdin(format!("{p}\n")).run(),
            None => tool.run(),
        }
    }

    /// Adds `name` with `password`, on stdin, at the fewest iterations.
    #[track_caller]
    fn add_password_user(&self, name: &str, password: &str) {
        let run = self
            .admin(&["adduser", "--iterations", FAST, name], Some(password))
            .ok();
        assert!(run.stderr.contains("added"), "{run}");
    }

    /// Makes a key for `user` with `ftp-cli keygen`: its file, and its fingerprint as keygen
    /// prints it for the users file.
    #[track_caller]
    fn keygen(&self, user: &str) -> (PathBuf, String) {
        let file = self.keys.path().join(format!("{user}_ed25519"));
        let run = Tool::ftp_cli().arg("keygen").arg(&file).run().ok();
        let fingerprint = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("keys = [\"")?.strip_suffix("\"]"))
            .unwrap_or_else(|| panic!("keygen printed no `keys = [...]` line: {run}"))
            .to_owned();
        assert!(fingerprint.starts_with("SHA256:"), "{run}");
        assert!(
            run.stdout
                .contains(&format!("fingerprint is {fingerprint}")),
            "keygen did not state the fingerprint: {run}"
        );
        (file, fingerprint)
    }

    /// A new secret file holding `password`, for `--secret-file`.
    fn secret(&self, user: &str, password: &str) -> PathBuf {
        self.secrets.secret(user, password)
    }

    fn users_text(&self) -> String {
        fs::read_to_string(&self.users).expect("cannot read the users file")
    }

    /// The verifier stored for `user` (the only `password = ` line of its entry).
    #[track_caller]
    fn verifier(&self, user: &str) -> Verifier {
        let text = self.users_text();
        let entry = text
            .split("[[user]]")
            .find(|e| e.contains(&format!("name = \"{user}\"")))
            .unwrap_or_else(|| panic!("no entry for {user}:\n{text}"));
        let line = entry
            .lines()
            .find_map(|l| l.strip_prefix("password = \"")?.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no password for {user}:\n{text}"));
        line.parse().expect("the stored verifier does not parse")
    }
}

/// A client of `d` with short timeouts: every step here is small.
fn login(d: &Daemon) -> Cli {
    d.cli().arg("--timeout").arg("10s").timeout(STEP_TIMEOUT)
}

/// Panics unless `path`, a key or users file, is readable by its owner only.
#[track_caller]
fn assert_private(path: &Path) {
    let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
}
