//! The login throttle of a service (issue 20): two instances `--root DIR --shared-root
//! --database URL` on a private PostgreSQL count failed logins in the database, so failures on
//! one are throttled on the other exactly as on one daemon (auth.rs's tests of one daemon), and
//! a database that does not answer refuses logins with a retryable `busy`, never lets one in
//! unchecked.
//!
//! Each test has a PostgreSQL server of its own ([`e2e::postgres::Server::private`]),
//! because one test freezes it. Without the binaries the tests print a note and pass; under CI
//! they fail.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{ErrorCode, ErrorReply, Message};

use crate::auth::{assert_retry_in_about, expect_refusal, retry_in};
use crate::raw::Raw;
use crate::util::{holds_within, tmpdir_named, Daemon, Tool};
use e2e::postgres::{Database, Server};

/// How long one frame from a daemon may take: over the daemon's own wait on the database.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The penalty after the first failure, in seconds: long enough to look at on a loaded
/// machine, short enough to wait out. [`PENALTY`] gives it to the daemons.
const FIRST: u64 = 8;
const PENALTY: [&str; 4] = ["--login-penalty", "8s", "--login-penalty-max", "60s"];
/// The fewest key-derivation iterations `ftpd adduser` takes: logins stay fast in debug builds.
const FAST: &str = "4096";

// ---------------------------------------------------------------------------------------------
// Tests

/// Failures for one name on instance A shut that name and that range out on instance B, with
/// the same penalty and the same answers as one daemon gives (auth.rs), the penalty grows per
/// failure in a row wherever the failures happen, and once it is over the right password
/// works.
#[test]
fn failures_on_one_instance_are_throttled_on_another_as_on_one() {
    let Some(c) = Service::new() else { return };
    c.adduser("alice", "alice's secret");
    c.adduser("bob", "bob's secret");
    let (a, b) = (c.instance(&PENALTY), c.instance(&PENALTY));

    let checked = expect_refusal(login_from(&a, range(1), "alice", "guess"));
    assert_eq!(checked.code, ErrorCode::AuthFailed, "{checked:?}");
    assert_eq!(retry_in(&checked), None, "the first guess is checked");

    // On B: the name is shut out from another range, unchecked even with the right password.
    let by_name = expect_refusal(login_from(&b, range(2), "alice", "alice's secret"));
    assert_eq!(by_name.code, ErrorCode::AuthFailed, "{by_name:?}");
    assert_retry_in_about(&by_name, FIRST);
    // The range too, for another name: B's first attempt from it is refused by the database
    // (after hello), and from then on B refuses the range at once, before TLS, as A does.
    let by_range = expect_refusal(login_from(&b, range(1), "bob", "bob's secret"));
    assert_eq!(by_range.code, ErrorCode::Busy, "{by_range:?}");
    assert_retry_in_about(&by_range, FIRST);
    for d in [&a, &b] {
        let mut early = Raw::connect_from(range(1), d.addr()).within(STEP_TIMEOUT);
        let refused = early.expect_error(ErrorCode::Busy);
        assert_retry_in_about(&refused, FIRST);
        early.expect_closed();
    }
    // Others are not affected.
    assert!(matches!(
        login_from(&b, range(3), "bob", "bob's secret"),
        Message::AuthOk(_)
    ));

    // The range's second failure in a row, on B once the first penalty is over: twice as long,
    // seen on A.
    let second = poll_checked(&b, range(1), "carol", "guess");
    assert_eq!(second.code, ErrorCode::AuthFailed, "{second:?}");
    // (A's own note of the first penalty is over: the database refuses this attempt.)
    let doubled = expect_refusal(login_from(&a, range(1), "bob", "bob's secret"));
    assert_eq!(doubled.code, ErrorCode::Busy, "{doubled:?}");
    assert_retry_in_about(&doubled, 2 * FIRST);

    // Alice's penalty ends; her right password works on B (refused attempts are not failures,
    // so polling for the end costs nothing).
    let deadline = Instant::now() + Duration::from_secs(3 * FIRST);
    loop {
        match login_from(&b, range(2), "alice", "alice's secret") {
            Message::AuthOk(_) => break,
            Message::Error(e) if retry_in(&e).is_some() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => panic!("alice after her penalty got {other:?}"),
        }
    }
    // The shared rows hold keyed hashes, never the names guessed at.
    let rows = c.db.query("SELECT key FROM login_failures ORDER BY key");
    assert!(rows.contains("range:127.0.1.0/24"), "{rows}");
    assert!(
        !rows.contains("alice") && !rows.contains("carol"),
        "raw names stored: {rows}"
    );
}

/// A database that does not answer (frozen: its connections stay open, nothing comes back):
/// a login waits for it, then gets a retryable `busy` and the daemon one WARN line; nothing is
/// let in unchecked. Once it answers again, logins work again.
#[test]
fn a_database_that_does_not_answer_refuses_logins_with_busy() {
    let Some(c) = Service::new() else { return };
    c.adduser("alice", "alice's secret");
    let a = c.instance(&PENALTY);
    assert!(matches!(
        login_from(&a, range(1), "alice", "alice's secret"),
        Message::AuthOk(_)
    ));

    let frozen = c.pg.freeze();
    let started = Instant::now();
    let busy = expect_refusal(login_from(&a, range(2), "alice", "alice's secret"));
    assert_eq!(busy.code, ErrorCode::Busy, "{busy:?}");
    assert!(
        busy.message.contains("try again in a moment"),
        "retryable: {busy:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited {:?}",
        started.elapsed()
    );
    a.wait_for_log(&[
        "WARN",
        "login refused unchecked",
        "the database did not answer",
    ]);
    let warnings = a
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("login refused unchecked"))
        .count();
    assert_eq!(warnings, 1, "one WARN line per refused login:\n{}", a.log());
    assert!(a.exited().is_none(), "the daemon is still up");

    drop(frozen);
    let back = holds_within(Duration::from_secs(30), || {
        matches!(
            login_from(&a, range(3), "alice", "alice's secret"),
            Message::AuthOk(_)
        )
    });
    assert!(back, "logins did not work again:\n{}", a.log());
}

// ---------------------------------------------------------------------------------------------
// Helpers: the service, logins from chosen ranges

/// A database, a shared root, and the state all instances of the service are given copies of.
struct Service {
    /// Declared first: the instances go before the database and the directories.
    db: Database,
    /// The database's own server, which a test freezes.
    pg: Arc<Server>,
    /// Holds the root and every instance's state directory.
    dir: tempfile::TempDir,
}

impl Service {
    /// `None` (after a note) without PostgreSQL.
    fn new() -> Option<Service> {
        let pg = Server::private()?;
        let db = pg.database();
        let dir = tmpdir_named("e2e-cluster-auth-");
        fs::create_dir(dir.path().join("root")).unwrap();
        Some(Service { db, pg, dir })
    }

    /// `ftpd adduser --database URL NAME`, the password on stdin.
    fn adduser(&self, name: &str, password: &str) {
        Tool::ftpd()
            .args([
                "adduser",
                "--database",
                &self.db.url(),
                "--iterations",
                FAST,
            ])
            .arg(name)
            .stdin(format!("{password}\n"))
            .run()
            .ok();
    }

    /// One more instance with its own state directory, holding copies of the first one's TLS
    /// key and login-salt key (docs/CLUSTER.md): the same name must hash to the same throttle
    /// key on every instance.
    fn instance(&self, extra: &[&str]) -> Daemon {
        let first = self.dir.path().join("state-0");
        let mut n = 0;
        let state = loop {
            let state = self.dir.path().join(format!("state-{n}"));
            if !state.exists() {
                break state;
            }
            n += 1;
        };
        if n > 0 {
            fs::DirBuilder::new().mode(0o700).create(&state).unwrap();
            copy_private(&first.join("login-salt.key"), &state.join("login-salt.key"));
            fs::DirBuilder::new()
                .mode(0o700)
                .create(state.join("tls"))
                .unwrap();
            for f in fs::read_dir(first.join("tls")).unwrap() {
                let f = f.unwrap().path();
                copy_private(&f, &state.join("tls").join(f.file_name().unwrap()));
            }
        }
        Daemon::builder()
            .root(self.dir.path().join("root"))
            .arg("--shared-root")
            .arg("--database")
            .arg(self.db.url())
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .start()
    }
}

fn copy_private(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o600)).unwrap();
}

/// An address in 127.0.`n`.0/24: each `n` its own address range for the throttle.
fn range(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, n, 1))
}

/// What `d` answers a password login from `ip`: `auth_ok`, or the error that refused it (before
/// TLS, at its `auth` or at its proof).
#[track_caller]
fn login_from(d: &Daemon, ip: IpAddr, user: &str, secret: &str) -> Message {
    let mut peer = Raw::connect_from(ip, d.addr()).within(STEP_TIMEOUT);
    if peer.binding().is_none() {
        return peer.recv(); // refused in the clear before TLS
    }
    peer.hello_for_login();
    peer.scram(user, secret)
}

/// A wrong login from `ip` polled until the throttle checks it (its penalty over): the answer.
#[track_caller]
fn poll_checked(d: &Daemon, ip: IpAddr, user: &str, secret: &str) -> ErrorReply {
    let deadline = Instant::now() + Duration::from_secs(3 * FIRST);
    loop {
        let e = expect_refusal(login_from(d, ip, user, secret));
        if retry_in(&e).is_none() || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// A private PostgreSQL, one per test
