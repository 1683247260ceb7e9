//! Users: the SCRAM-SHA-256 login both ways, homes that confine each user, read-only users,
//! and a daemon that will not start with a users file others can read or a home outside its root.
//!
//! Most tests drive the real client; the ones about what goes over the wire (a replayed `auth`,
//! a command before `auth`, a server that cannot prove itself) speak the protocol directly with
//! [`Raw`].

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use protocol::scram::{self, Verifier};
use protocol::{capability, Auth, AuthOk, ErrorCode, Hello, Scram};
use protocol::{ChunkHeader, Digest, Eof, ErrorReply, Message, VERSION};

use crate::raw::{get, put, Raw};
use crate::util::{
    assert_missing, assert_same_file, tmpdir, write_private, write_random, Cli, Daemon,
    DaemonBuilder, Keys, Site,
};

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
        .round_trip("a.bin", "back.bin");
    assert_same_file(&src, d.home("alice").join("a.bin"));
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
    d.wait_for_log(&["WARN", "authentication failed", "alice"]);
}

/// The answer must not tell an attacker which user names exist. (Without the penalty, which
/// would refuse the second login from this address outright.)
#[test]
fn unknown_user_gets_the_same_error_as_a_wrong_secret() {
    let d = standard_daemon_with(&["--login-penalty", "0s"]);
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
    d.wait_for_log(&["WARN", "authentication failed", "mallory"]);
}

// ---------------------------------------------------------------------------------------------
// Guessing: the penalty after a failure, by address range and by user name

/// Regression: each failed login held its connection slot through its delay, so after a burst
/// of failures real logins got `busy`. A failed login gives up its slot before it is answered
/// (and logged): here the only slot is free again as soon as the failure is logged.
#[test]
fn a_failed_login_does_not_hold_its_slot() {
    let d = standard_daemon_with(&["--max-connections", "1"]);
    let mut guess = Raw::connect_from(range(1), d.addr()).within(STEP_TIMEOUT);
    guess.hello_for_login();
    let mut login = guess.auth_start("alice", "guess");
    assert_eq!(guess.auth_prove(&mut login), None);
    d.wait_for_log(&["WARN", "authentication failed", "alice"]);
    raw_login(&d, "bob", BOB).send(&Message::Bye);
    let failed = guess.expect_error(ErrorCode::AuthFailed);
    assert_eq!(retry_in(&failed), None, "a checked guess: {failed:?}");
    guess.expect_closed();
}

/// Regression, the other half of the one above: with failures no longer parking connections,
/// the penalty must still hold. After a failed login, new connections from its address range
/// are refused at once with `busy`, and logins as its user name from anywhere with
/// `auth_failed`, unchecked even with the right secret; each says when to retry. Other users
/// from other ranges are not affected.
#[test]
fn a_failed_login_is_penalised_by_address_range_and_by_user_name() {
    let d = standard_daemon_with(&["--login-penalty", "30s", "--login-penalty-max", "30s"]);
    let failed = expect_refusal(login_from(&d, range(1), "alice", "guess"));
    assert_eq!(
        retry_in(&failed),
        None,
        "the first guess is checked: {failed:?}"
    );
    for ip in [range(1), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 200))] {
        let mut peer = Raw::connect_from(ip, d.addr()).within(STEP_TIMEOUT);
        let refusal = peer.expect_error(ErrorCode::Busy);
        assert_retry_in_about(&refusal, 30);
        peer.expect_closed();
    }
    let refusal = expect_refusal(login_from(&d, range(2), "alice", ALICE));
    assert_eq!(refusal.code, ErrorCode::AuthFailed, "{refusal:?}");
    assert_retry_in_about(&refusal, 30);
    assert!(
        matches!(login_from(&d, range(3), "bob", BOB), Message::AuthOk(_)),
        "bob, from a range with no failures, was refused"
    );
    // The real client says why, and when to retry.
    d.login("alice", ALICE)
        .cmds("pwd")
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has("try again in");
}

/// Regression: a success cleared the failure count, so alternating guesses at one account with
/// logins as another kept the delay at its first step (0.25 s). A success clears only its own
/// user name's failures.
#[test]
fn a_login_as_another_user_does_not_clear_a_users_failures() {
    let d = standard_daemon_with(&["--login-penalty", "30s", "--login-penalty-max", "30s"]);
    expect_refusal(login_from(&d, range(1), "alice", "guess"));
    assert!(
        matches!(
            login_from(&d, range(2), "reader", READER),
            Message::AuthOk(_)
        ),
        "reader, from a range with no failures, was refused"
    );
    let refusal = expect_refusal(login_from(&d, range(3), "alice", ALICE));
    assert_eq!(refusal.code, ErrorCode::AuthFailed, "{refusal:?}");
    assert_retry_in_about(&refusal, 30);
}

/// Regression (found attacking the per-name penalty): one address guessing at a user name once
/// a penalty kept its owner out from everywhere. A range that logged in as the user lately is
/// not shut out by the name's penalty; any other range still is.
#[test]
fn a_guesser_cannot_keep_a_user_out_of_where_they_log_in_from() {
    let d = standard_daemon_with(&["--login-penalty", "30s", "--login-penalty-max", "30s"]);
    let (home, guesser, elsewhere) = (range(5), range(6), range(7));
    assert!(matches!(
        login_from(&d, home, "alice", ALICE),
        Message::AuthOk(_)
    ));
    expect_refusal(login_from(&d, guesser, "alice", "guess"));
    let away = expect_refusal(login_from(&d, elsewhere, "alice", ALICE));
    assert_retry_in_about(&away, 30);
    let at_home = login_from(&d, home, "alice", ALICE);
    assert!(
        matches!(at_home, Message::AuthOk(_)),
        "alice, from where she logged in before, got {at_home:?}"
    );
}

/// Regression: 64 source addresses made ~100 guesses/s against one account, each connection
/// waiting out its own delay. Guesses at one user name are checked one per penalty window, however
/// many connections from however many ranges make them at once.
#[test]
fn parallel_connections_cannot_multiply_the_guessing_rate() {
    let d = standard_daemon_with(&["--login-penalty", "5s"]);
    let mut peers: Vec<Raw> = (10..42)
        .map(|n| {
            let mut peer = Raw::connect_from(range(n), d.addr()).within(STEP_TIMEOUT);
            peer.hello_for_login();
            peer
        })
        .collect();
    // Every guess gets as far as its proof before any is checked.
    let mut logins: Vec<_> = peers
        .iter_mut()
        .map(|peer| peer.auth_start("alice", "guess"))
        .collect();
    for (peer, login) in peers.iter_mut().zip(&mut logins) {
        assert_eq!(peer.auth_prove(login), None);
    }
    let answers: Vec<ErrorReply> = peers
        .iter_mut()
        .map(|peer| peer.expect_error(ErrorCode::AuthFailed))
        .collect();
    let checked = answers.iter().filter(|e| retry_in(e).is_none()).count();
    assert_eq!(
        checked,
        1,
        "{checked} of {} parallel guesses at one user were checked: {answers:?}",
        answers.len()
    );
}

/// Regression: before `auth`, a chunk header of 8 MiB was taken and its body waited for (and
/// buffered). Before login only small frames are read: the chunk is refused from its header.
#[test]
fn a_chunk_before_login_is_refused_from_its_header() {
    let d = standard_daemon_with(&["--handshake-timeout", "3s"]);
    let mut peer = Raw::connect(d.addr()).within(STEP_TIMEOUT);
    peer.hello_for_login();
    peer.send(&Message::Chunk(ChunkHeader {
        offset: 0,
        len: protocol::MAX_BODY as u32,
        digest: Digest::md5(b""),
    }));
    peer.expect_error(ErrorCode::TooLarge);
    peer.expect_closed();
}

/// Regression: a user name in `auth` wrote forged lines (`... authenticated ... user=alice`)
/// and raw ANSI escapes into the log. It is logged escaped, in both log formats.
#[test]
fn a_user_name_cannot_forge_log_lines() {
    let stamp = "2030-01-01T00:00:00.000000Z";
    let forged = format!(
        "mallory\n{stamp}  INFO ftpd::session: authenticated peer=10.0.0.1:1 user=alice \
         home=alice\u{1b}[2J"
    );
    for format in ["human", "json"] {
        let d = standard_daemon_with(&["--log-format", format]);
        expect_refusal(login_from(&d, range(1), &forged, "guess"));
        d.wait_for_log(&["authentication failed", "mallory"]);
        d.assert_log_unforged(stamp);
    }
}

#[test]
fn client_without_a_user_is_refused_by_a_server_with_users() {
    let d = standard_daemon();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 1000, 3);
    d.cli()
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
        .user("alice", &secret)
        .cmds("put a.bin")
        .timeout(STEP_TIMEOUT)
        .run()
        .exits(4)
        .one_line_error()
        .stderr_has("does not ask alice to log in");
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
        .stderr_has("path leads outside the root")
        .no_internals();
    d.login("bob", BOB)
        .cwd(&work)
        .cmds("put -f other ../alice/f")
        .run()
        .exits(5)
        .stderr_has("path leads outside the root")
        .no_internals();
    // `/` is bob's home, so `/alice/f` is a file bob does not have.
    d.login("bob", BOB)
        .cwd(&work)
        .cmds("get /alice/f stolen")
        .run()
        .exits(5)
        .stderr_has("no such file or directory")
        .no_internals();

    assert_missing(work.path().join("stolen"));
    assert_eq!(d.visible("alice"), ["f"]);
    assert_same_file(&mine, &alice_f);
    assert!(d.visible("bob").is_empty(), "{:?}", d.visible("bob"));
}

// ---------------------------------------------------------------------------------------------
// On the wire

/// A recorded proof answers only the exchange it was made for: the server's nonce is fresh
/// every time, so replaying the client's messages fails.
#[test]
fn replayed_auth_is_refused() {
    let d = standard_daemon();

    let mut first = Raw::connect(d.addr()).within(STEP_TIMEOUT);
    first.hello_for_login();
    let (client, client_first) = scram::Client::start("alice", first.binding(), scram::nonce());
    first.send(&Message::Auth(Auth {
        user: "alice".into(),
        scram: Some(client_first.clone()),
    }));
    let server_first = match first.recv() {
        Message::AuthContinue(s) => s.scram,
        other => panic!("expected auth_continue, got {other:?}"),
    };
    let (salt, iterations) = client.salt(&server_first).unwrap();
    let salted = scram::salted_password(ALICE.as_bytes(), &salt, iterations);
    let (client_final, finished) = client.finish(&server_first, &salted).unwrap();
    first.send(&Message::AuthFinal(Scram {
        scram: client_final.clone(),
    }));
    match first.recv() {
        Message::AuthOk(AuthOk { scram: Some(v) }) => finished
            .verify(&v)
            .expect("the server's signature is not SCRAM's"),
        other => panic!("a fresh, valid login got {other:?}"),
    }
    first.send(&Message::Bye);

    // The same messages on a new connection (the relay of a recording): the server's nonce
    // differs, and the recorded proof no longer fits. (Over TLS the binding differs too.)
    let mut second = Raw::connect(d.addr()).within(STEP_TIMEOUT);
    second.hello_for_login();
    second.send(&Message::Auth(Auth {
        user: "alice".into(),
        scram: Some(client_first),
    }));
    match second.recv() {
        Message::AuthContinue(s) => {
            assert_ne!(s.scram, server_first, "the server reused its nonce")
        }
        other => panic!("expected auth_continue, got {other:?}"),
    }
    second.send(&Message::AuthFinal(Scram {
        scram: client_final,
    }));
    second.expect_error(ErrorCode::AuthFailed);
    second.expect_closed();
    d.wait_for_log(&["WARN", "authentication failed", "alice"]);
}

#[test]
fn commands_before_auth_are_refused() {
    let d = standard_daemon();
    write_random(d.home("alice").join("f"), 100, 9);
    let mut raw = Raw::connect(d.addr()).within(STEP_TIMEOUT);
    raw.hello_for_login();
    raw.send(&get("/alice/f"));
    raw.expect_error(ErrorCode::AuthRequired);
    raw.expect_closed();
}

/// Regression: a `put` whose `eof` carried a wrong whole-file digest, by a user whose home is
/// `homes/alice`, was refused with "/homes/alice/a.bin: whole-file MD5 is ...": the one error
/// whose path was not rewritten from the root's view to the user's, so it told her where her home
/// lies in the root.
#[test]
fn wrong_whole_file_digest_does_not_reveal_where_a_nested_home_lies() {
    let d = nested_home_daemon();
    let mut alice = raw_login(&d, "alice", ALICE);

    alice.send(&put("a.bin", 3));
    alice.expect_put_ready();
    alice.send_chunk(0, b"abc");
    alice.send(&Message::Eof(Eof {
        size: 3,
        digest: Digest::md5(b"abd"),
    }));
    let refusal = alice.expect_error(ErrorCode::ChecksumMismatch);
    assert_names_only_the_home(&refusal, "/a.bin:");
    assert_missing(d.path(NESTED_HOME).join("a.bin"));
    alice.expect_usable();
}

/// Regression, alongside the one above: the other refusals that name a path (a missing file, a
/// chunk that fails its running digest) must name it from the user's `/` too.
#[test]
fn missing_file_and_bad_chunk_do_not_reveal_where_a_nested_home_lies() {
    let d = nested_home_daemon();
    let mut alice = raw_login(&d, "alice", ALICE);

    alice.send(&get("nope"));
    let refusal = alice.expect_error(ErrorCode::NotFound);
    assert_names_only_the_home(&refusal, "/nope");

    alice.send(&put("a.bin", 3));
    alice.expect_put_ready();
    // "abc" under the running digest of "abd".
    alice.send(&Message::Chunk(ChunkHeader {
        offset: 0,
        len: 3,
        digest: Digest::md5(b"abd"),
    }));
    alice.send_bytes(b"abc");
    // The server may refuse before `eof` or after it; either way it reads up to `eof`.
    alice.send(&Message::Eof(Eof {
        size: 3,
        digest: Digest::md5(b"abc"),
    }));
    let refusal = alice.expect_error(ErrorCode::ChecksumMismatch);
    assert_names_only_the_home(&refusal, "/a.bin:");
    assert_eq!(
        refusal.offset,
        Some(0),
        "the bad chunk's offset: {refusal:?}"
    );
    assert_missing(d.path(NESTED_HOME).join("a.bin"));
    alice.expect_usable();
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
        .arg("--fingerprint")
        .arg(crate::tls::identity().fingerprint.to_string())
        .cwd(&work)
        .user("alice", &secret)
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

/// Plays a server that has `user` but holds the verifier of `wrong_secret`. Checks the
/// client's own proof against the real password (so the test's exchange is the documented
/// one), then returns what the client sent after `auth_ok` (but `bye`), until it closed.
fn fake_server(listener: TcpListener, user: &str, wrong_secret: &[u8]) -> Vec<Message> {
    let (stream, _) = listener.accept().expect("the client never connected");
    let mut peer = Raw::tls_server(stream)
        .expect("the client gave up on the TLS handshake")
        .within(STEP_TIMEOUT);
    match peer.recv() {
        Message::Hello(h) => assert_eq!(h.version, VERSION),
        other => panic!("expected the client's hello, got {other:?}"),
    }
    peer.send(&Message::Hello(Hello {
        version: VERSION,
        min_version: None,
        agent: "fake-ftpd/0".into(),
        capabilities: vec![
            capability::RESUME.into(),
            capability::AUTH_SCRAM_SHA256.into(),
        ],
        max_chunk: protocol::DEFAULT_CHUNK,
        digest: protocol::DigestKind::Md5,
    }));
    let answer = match peer.recv() {
        Message::Auth(a) => a,
        other => panic!("expected auth, got {other:?}"),
    };
    assert_eq!(answer.user, user);
    let first = scram::client_first(answer.scram.as_deref().unwrap(), peer.binding().as_ref())
        .expect("the client's first message is not SCRAM's, bound to the channel");
    let salt = b"fake salt";
    let (server, server_first) = scram::Server::start(
        first,
        salt,
        scram::MIN_ITERATIONS,
        &scram::nonce(),
        peer.binding(),
    );
    peer.send(&Message::AuthContinue(Scram {
        scram: server_first,
    }));
    let last = match peer.recv() {
        Message::AuthFinal(s) => s.scram,
        other => panic!("expected auth_final, got {other:?}"),
    };
    let right = Verifier::new(ALICE.as_bytes(), salt, scram::MIN_ITERATIONS);
    server
        .finish(&last, &right)
        .expect("the client's proof is not the documented SCRAM proof");
    let wrong = Verifier::new(wrong_secret, salt, scram::MIN_ITERATIONS);
    // A server that accepts anything still cannot sign as the holder of the verifier.
    let forged = server
        .finish(&last, &wrong)
        .unwrap_or_else(|_| "v=bm90IGl0".into());
    peer.send(&Message::AuthOk(AuthOk {
        scram: Some(forged),
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
    let users = site.private_file(USERS_FILE, USERS);
    site.private_file("etc/bob.secret", "bob's secret\n");
    fs::set_permissions(&users, fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = with_users(&site).refuses_to_start();
    assert_names(&stderr, &["chmod 600", &users.display().to_string()]);
}

#[test]
fn group_readable_secret_file_stops_startup() {
    let site = Site::new();
    site.private_file(USERS_FILE, USERS);
    let secret = site.private_file("etc/bob.secret", "bob's secret\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).unwrap();
    let stderr = with_users(&site).refuses_to_start();
    assert_names(&stderr, &["chmod 600", &secret.display().to_string()]);
}

#[test]
fn home_outside_the_root_stops_startup() {
    let site = Site::new();
    let eve = "[[user]]\nname = \"eve\"\nsecret = \"s\"\nhome = \"../escape\"\n";
    site.private_file(USERS_FILE, eve);
    let stderr = with_users(&site).refuses_to_start();
    assert_names(&stderr, &["outside the root"]);
    assert_missing(site.path("escape"));
}

/// Without users, anyone who reaches the port gets the whole root: fine on loopback, a flag
/// away elsewhere.
#[test]
fn anonymous_daemon_on_a_public_address_needs_allow_anonymous() {
    let site = Site::new();
    let public = || Daemon::builder().root(site.root()).listen("0.0.0.0:0");
    let stderr = public().refuses_to_start();
    assert_names(&stderr, &["--allow-anonymous"]);

    let daemon = public().arg("--allow-anonymous").start();
    daemon.wait_for_log(&["WARN", "anonymously"]);
    let local = SocketAddr::from(([127, 0, 0, 1], daemon.addr().port()));
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 1000, 11);
    daemon
        .cli_via(local)
        .cwd(&work)
        .cmds("put a.bin")
        .timeout(STEP_TIMEOUT)
        .run()
        .ok();
    assert_same_file(work.path().join("a.bin"), site.root().join("a.bin"));
    drop(daemon);
}

// ---------------------------------------------------------------------------------------------
// Helpers: a daemon with users, and logging in to it.

/// Where the users file goes beside the root; its `secret_file`s are read from beside it.
const USERS_FILE: &str = "etc/users.toml";

/// `ftpd` on the site's root with the site's users file, not started yet.
fn with_users(site: &Site) -> DaemonBuilder {
    site.daemon().arg("--users").arg(site.path(USERS_FILE))
}

/// A daemon with [`USERS`]. Bob's secret file ends in a newline that is not part of it.
fn standard_daemon() -> UsersDaemon {
    standard_daemon_with(&[])
}

/// A daemon with [`USERS`] and these flags too.
fn standard_daemon_with(args: &[&str]) -> UsersDaemon {
    let site = Site::new();
    site.private_file(USERS_FILE, USERS);
    site.private_file("etc/bob.secret", format!("{BOB}\n"));
    UsersDaemon {
        daemon: with_users(&site).args(args).start(),
        _site: site,
        keys: Keys::new(),
    }
}

/// An address in 127.0.`n`.0/24: each `n` its own address range for the daemon's penalties and
/// budgets, none of them the real client's (127.0.0.1).
fn range(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, n, 1))
}

/// What the daemon answers a login from `ip` as `user` proving `secret`: `auth_ok`, or the
/// error that refused it (at its `auth` or at its proof).
#[track_caller]
fn login_from(d: &Daemon, ip: IpAddr, user: &str, secret: &str) -> Message {
    let mut peer = Raw::connect_from(ip, d.addr()).within(STEP_TIMEOUT);
    peer.hello_for_login();
    peer.scram(user, secret)
}

/// The error a login was refused with; panics if it was not refused.
#[track_caller]
pub(crate) fn expect_refusal(answer: Message) -> ErrorReply {
    match answer {
        Message::Error(e) => e,
        other => panic!("expected the login to be refused, got {other:?}"),
    }
}

/// The seconds a refusal says to wait before trying again ("... try again in N s"), if it says.
pub(crate) fn retry_in(refusal: &ErrorReply) -> Option<u64> {
    let (_, after) = refusal.message.split_once("try again in ")?;
    after.strip_suffix(" s")?.parse().ok()
}

/// Panics unless `refusal` says to try again in about `secs` seconds (a little less is fine:
/// the penalty started a moment before).
#[track_caller]
pub(crate) fn assert_retry_in_about(refusal: &ErrorReply, secs: u64) {
    match retry_in(refusal) {
        Some(n) if n <= secs && n + 5 >= secs => {}
        _ => panic!("expected a refusal saying to try again in about {secs} s, got {refusal:?}"),
    }
}

/// A running `ftpd` with a users file, and the client's side of the secrets.
struct UsersDaemon {
    /// Declared first so the daemon is gone before its directories are removed.
    daemon: Daemon,
    /// Holds the root and the users file.
    _site: Site,
    /// Secret files for the client, one per login.
    keys: Keys,
}

impl Deref for UsersDaemon {
    type Target = Daemon;

    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl UsersDaemon {
    /// The home directory of a user of [`USERS`] on disk.
    fn home(&self, user: &str) -> PathBuf {
        let dir = match user {
            "reader" => "shared",
            other => other,
        };
        self.path(dir)
    }

    /// A client logging in as `user` with `secret`, read from a file that ends in a newline.
    fn login(&self, user: &str, secret: &str) -> Cli {
        self.cli()
            .user(user, self.keys.secret(user, secret))
            .arg("--timeout")
            .arg("10s")
            .timeout(STEP_TIMEOUT)
    }
}

/// Alice's home in [`NESTED_USERS`], two levels into the root.
const NESTED_HOME: &str = "homes/alice";

/// Only alice, with her usual secret, living at [`NESTED_HOME`]: a home whose place in the root
/// would show in any path not written from her `/`.
const NESTED_USERS: &str = r#"
[[user]]
name = "alice"
secret = "alice's secret"
home = "homes/alice"
"#;

/// A daemon with [`NESTED_USERS`].
fn nested_home_daemon() -> UsersDaemon {
    let site = Site::new();
    site.private_file(USERS_FILE, NESTED_USERS);
    UsersDaemon {
        daemon: with_users(&site).start(),
        _site: site,
        keys: Keys::new(),
    }
}

/// A raw session on `d`, logged in as `user` with the documented proof and ready for commands.
#[track_caller]
fn raw_login(d: &Daemon, user: &str, secret: &str) -> Raw {
    Raw::connect(d.addr())
        .within(STEP_TIMEOUT)
        .login(user, secret)
}

/// Panics unless `refusal` names its path from the user's `/`, starting with `start`, and
/// nowhere mentions `homes`, where [`NESTED_HOME`] lies in the root.
#[track_caller]
fn assert_names_only_the_home(refusal: &ErrorReply, start: &str) {
    assert!(
        refusal.message.starts_with(start),
        "expected a message starting with {start:?}, got {refusal:?}"
    );
    assert!(
        !refusal.message.contains("homes"),
        "the message reveals where the home lies in the root: {refusal:?}"
    );
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
