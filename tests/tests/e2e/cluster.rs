//! Several instances as one service (issue 20, docs/CLUSTER.md): two `ftpd` on loopback with
//! `--database` on a private PostgreSQL ([`crate::postgres`]), sharing one root
//! (`--root DIR --shared-root`) or one bucket on moto (`--storage s3://…`), each with a state
//! directory of its own holding copies of the first instance's TLS key and login-salt key.
//! What a client must see the same whichever instance answers: users and their changes, files
//! (also through HAProxy in front of both), an interrupted upload. The login throttle is
//! cluster_auth.rs's, the session and rate caps cluster_limits.rs's.
//!
//! Without PostgreSQL (or moto for the tests on S3, or HAProxy for the one behind it) a test
//! prints a note and passes; under CI (`CI` set) that is a failure: CI installs all three.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use e2e::proxy::{Direction, Fault, Proxy};
use tempfile::TempDir;

use crate::util::{
    assert_same_file, have_tool, names, sent_this_time, staged_bytes, tmpdir, tmpdir_named,
    wait_until, write_random, Bucket, Cli, Daemon, DaemonBuilder, Haproxy, Keys, Moto, Run, Tool,
    MIB,
};
use e2e::postgres::Database;

/// How long one client run, one admin command or one frame may take here: every step is small.
const STEP: Duration = Duration::from_secs(30);
/// How long a change of users may take to reach every instance: its NOTIFY is milliseconds,
/// the poll that catches a lost one 5 s; the rest is margin for a loaded machine.
const PICKUP: Duration = Duration::from_secs(20);
/// The fewest key-derivation iterations `ftpd adduser` takes: logins stay fast in debug builds.
const FAST: &str = "4096";
/// S3's smallest part, so that an upload crosses a part boundary with a file of a few MiB.
const PART: u64 = 5 * MIB;
/// The files of the state directory every instance must have the same copy of
/// (docs/CLUSTER.md, "One server key for all instances").
const IDENTITY: [&str; 3] = [
    "tls/server-key.pem",
    "tls/server-cert.pem",
    "login-salt.key",
];

// ---------------------------------------------------------------------------------------------
// The cluster: a database, shared storage, instances with one identity

/// Where the instances keep files: all of them the same.
enum Storage {
    /// One directory every instance serves with `--root DIR --shared-root`.
    SharedRoot(TempDir),
    /// One bucket on moto every instance serves with `--storage s3://BUCKET`.
    S3 {
        /// The bucket, through the S3 API (boxed: its client and runtime are large).
        bucket: Box<Bucket>,
        /// Declared last: the server outlives the bucket's client.
        _moto: Moto,
    },
}

/// A database and shared storage for instances of one service, and the client's side.
/// Instances are the test's own locals ([`Cluster::instance`]), declared after the cluster, so
/// they are gone before its directories and its database.
struct Cluster {
    /// `--database`: a fresh database of this test's own.
    db: Database,
    /// The files every instance serves.
    storage: Storage,
    /// The state directory of each instance started, in order, with the fingerprint of the
    /// key it presents; the first one's identity is copied into every later one.
    states: Mutex<Vec<(TempDir, String)>>,
    /// The client's working directory.
    work: TempDir,
    /// The client's secret files, one per login.
    secrets: Keys,
}

impl Cluster {
    /// A database and a shared root; `None` (after a note) without PostgreSQL.
    fn shared_root() -> Option<Cluster> {
        let db = Database::fresh()?;
        Some(Cluster::new(
            db,
            Storage::SharedRoot(tmpdir_named("e2e-shared-root-")),
        ))
    }

    /// A database and a bucket on moto; `None` (after a note) without PostgreSQL or moto.
    fn s3() -> Option<Cluster> {
        let db = Database::fresh()?;
        let moto = Moto::start()?;
        let bucket = Box::new(moto.bucket("cluster"));
        Some(Cluster::new(
            db,
            Storage::S3 {
                bucket,
                _moto: moto,
            },
        ))
    }

    fn new(db: Database, storage: Storage) -> Cluster {
        Cluster {
            db,
            storage,
            states: Mutex::new(Vec::new()),
            work: tmpdir(),
            secrets: Keys::new(),
        }
    }

    /// The shared root; panics on S3.
    fn root(&self) -> &Path {
        match &self.storage {
            Storage::SharedRoot(dir) => dir.path(),
            Storage::S3 { .. } => panic!("a test on S3 asked for the shared root"),
        }
    }

    /// A path in the client's working directory.
    fn local(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    /// An instance of the service with a state directory of its own, not started yet: the
    /// shared storage, `--database`, and these flags.
    fn builder(&self, state: &Path, extra: &[&str]) -> DaemonBuilder {
        let builder = match &self.storage {
            Storage::SharedRoot(root) => Daemon::builder()
                .root(root.path())
                .arg("--shared-root")
                .arg("--state-dir")
                .arg(state),
            Storage::S3 { bucket, .. } => bucket
                .daemon()
                .state_dir(state)
                .args(["--s3-part-size", "5MiB"]),
        };
        builder.arg("--database").arg(self.db.url()).args(extra)
    }

    /// Starts one more instance with `extra` flags. Every instance after the first gets a copy
    /// of the first one's TLS key and certificate and its key of login salts before it starts,
    /// as docs/CLUSTER.md says to provision them; checked: it presents the first one's key.
    #[track_caller]
    fn instance(&self, extra: &[&str]) -> Daemon {
        let state = tmpdir_named("e2e-cluster-state-");
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((first, _)) = states.first() {
            copy_identity(first.path(), state.path());
        }
        let daemon = self.builder(state.path(), extra).start();
        let key = daemon.fingerprint();
        if let Some((_, first_key)) = states.first() {
            assert_eq!(
                &key, first_key,
                "an instance presents another key than the first"
            );
        }
        states.push((state, key));
        daemon
    }

    /// `ftpd adduser --database URL --iterations FAST EXTRA NAME`, the password on stdin (not a
    /// terminal); the user's home made on the shared root. Panics unless it succeeds.
    ///
    /// Tests add their users before they start the instances, which then load them before
    /// they listen: no login races a reload (a failed one would count for the throttle). Only
    /// the test of changes picked up while running adds one later.
    #[track_caller]
    fn adduser(&self, name: &str, password: &str, extra: &[&str]) -> Run {
        let run = self
            .admin(&["adduser", "--iterations", FAST])
            .args(extra)
            .arg(name)
            .stdin(format!("{password}\n"))
            .run()
            .ok();
        if let Storage::SharedRoot(root) = &self.storage {
            fs::create_dir_all(root.path().join(name)).expect("cannot make the user's home");
        }
        run
    }

    /// `ftpd COMMAND --database URL` with the arguments to come.
    fn admin(&self, command: &[&str]) -> Tool {
        Tool::ftpd()
            .args(command)
            .arg("--database")
            .arg(self.db.url())
    }

    /// A client of `daemon` logging in as `user` with `password` (from a secret file), with
    /// short timeouts, in the working directory.
    fn login(&self, daemon: &Daemon, user: &str, password: &str) -> Cli {
        self.login_as(daemon.cli(), user, password)
            .arg("--timeout")
            .arg("10s")
            .timeout(STEP)
    }

    /// `cli` (aimed at an instance, or at a proxy in front of one) logging in as `user` with
    /// `password`, in the working directory, with the client's own timeouts.
    fn login_as(&self, cli: Cli, user: &str, password: &str) -> Cli {
        cli.cwd(&self.work)
            .user(user, self.secrets.secret(user, password))
    }
}

/// Copies the identity files of state directory `from` into `to`, private as ftpd keeps them.
fn copy_identity(from: &Path, to: &Path) {
    for rel in IDENTITY {
        let (src, dst) = (from.join(rel), to.join(rel));
        let dir = dst.parent().expect("a file in a directory");
        fs::create_dir_all(dir).expect("cannot make a state directory");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).expect("cannot chmod");
        fs::copy(&src, &dst)
            .unwrap_or_else(|e| panic!("cannot copy {} of the first instance: {e}", src.display()));
        fs::set_permissions(&dst, fs::Permissions::from_mode(0o600)).expect("cannot chmod");
    }
}

/// Polls a login of `user` with `password` on `daemon` until it succeeds; panics after
/// [`PICKUP`] with the last refusal.
#[track_caller]
fn wait_until_logged_in(c: &Cluster, daemon: &Daemon, user: &str, password: &str) {
    let deadline = Instant::now() + PICKUP;
    loop {
        let run = c.login(daemon, user, password).cmds("pwd").run();
        if run.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} could not log in on an instance within {PICKUP:?}: {run}\nlog:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `--database` says instances share state; a local root no other instance sees would make
/// them disagree on every file. Without `--shared-root` the daemon refuses to start, in one
/// line that names the way out.
#[test]
fn database_with_a_root_not_declared_shared_is_refused_in_one_line() {
    let Some(db) = Database::fresh() else { return };
    let root = tmpdir_named("e2e-cluster-root-");
    let state = tmpdir_named("e2e-cluster-state-");
    let log = Daemon::builder()
        .root(root.path())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--database")
        .arg(db.url())
        .refuses_to_start();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{log}");
    assert!(lines[0].contains("--shared-root"), "{log}");
    for internal in ["panicked", "os error", "SQLSTATE", "tokio_postgres"] {
        assert!(
            !log.contains(internal),
            "the refusal shows {internal:?}: {log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Users: added and changed in the database, in force everywhere without a restart

/// A user added with `ftpd adduser --database` logs in on both running instances; `ftpd passwd
/// --database` changes the password, and within seconds both accept the new one and refuse
/// the old, with no restart and no signal; `ftpd users --database` lists the user.
#[test]
fn a_user_added_in_the_database_logs_in_everywhere_and_a_new_password_applies_everywhere() {
    let Some(c) = Cluster::shared_root() else {
        return;
    };
    // No penalty: polling with a password not yet in force must not shut the name out.
    let a = c.instance(&["--login-penalty", "0s"]);
    let b = c.instance(&["--login-penalty", "0s"]);

    let added = c.adduser("alice", "old secret", &[]);
    assert!(!added.stdout.contains("old secret") && !added.stderr.contains("old secret"));
    for d in [&a, &b] {
        wait_until_logged_in(&c, d, "alice", "old secret");
    }
    let listed = c.admin(&["users"]).run().ok();
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.split_whitespace().next().map(|n| n.trim_matches('"')) == Some("alice")),
        "`ftpd users` does not list alice on a line of her own: {listed}"
    );
    assert!(
        !listed.stdout.contains("old secret"),
        "`ftpd users` shows a password: {listed}"
    );

    c.admin(&["passwd", "--iterations", FAST, "alice"])
        .stdin("new secret\n")
        .run()
        .ok();
    for d in [&a, &b] {
        wait_until_logged_in(&c, d, "alice", "new secret");
        c.login(d, "alice", "old secret")
            .cmds("pwd")
            .run()
            .fails()
            .one_line_error()
            .no_internals();
    }
    // Both changes were picked up by the running instances: neither was restarted.
    assert!(a.exited().is_none() && b.exited().is_none());
}

// ---------------------------------------------------------------------------------------------
// Files: put through one instance, got through the other

/// Puts a file of `size` bytes through the first instance and gets it through the second:
/// both transfers verified, the bytes identical.
fn put_on_one_get_on_the_other(c: &Cluster, size: u64) {
    c.adduser("alice", "secret", &[]);
    let a = c.instance(&[]);
    let b = c.instance(&[]);
    let src = c.local("src.bin");
    write_random(&src, size, size ^ 0xc1);
    c.login(&a, "alice", "secret")
        .cmds("put src.bin shared.bin")
        .run()
        .ok()
        .verified(&src, 1);
    c.login(&b, "alice", "secret")
        .cmds("get shared.bin back.bin; ls")
        .run()
        .ok()
        .verified(&src, 1);
    assert_same_file(&src, c.local("back.bin"));
}

#[test]
fn a_put_on_one_instance_is_got_identically_on_the_other_on_a_shared_root() {
    let Some(c) = Cluster::shared_root() else {
        return;
    };
    put_on_one_get_on_the_other(&c, 3 * MIB + 17);
    assert_same_file(c.local("src.bin"), c.root().join("alice/shared.bin"));
}

#[test]
fn a_put_on_one_instance_is_got_identically_on_the_other_on_s3() {
    let Some(c) = Cluster::s3() else { return };
    put_on_one_get_on_the_other(&c, PART + 17);
    let Storage::S3 { bucket, .. } = &c.storage else {
        unreachable!()
    };
    assert_eq!(
        bucket.size("alice/shared.bin"),
        Some(PART + 17),
        "{:?}",
        bucket.keys()
    );
    assert!(bucket.open_uploads().is_empty(), "an upload was left open");
}

/// The address HAProxy connects to the instances from: the one in `--proxy-protocol-from`.
const BALANCER_SOURCE: &str = "127.0.0.3";

/// HAProxy in front of `instances`, `balance roundrobin`, each sent a PROXY v2 header from
/// [`BALANCER_SOURCE`]; `None` (after a note) when it is not installed, which fails instead
/// under CI.
fn balancer(instances: &[&Daemon]) -> Option<Haproxy> {
    if !have_tool("haproxy", "-v", "haproxy") {
        return None;
    }
    let mut backend = "    balance roundrobin\n".to_owned();
    for (i, d) in instances.iter().enumerate() {
        backend += &format!(
            "    server ftpd{i} {} send-proxy-v2 source {BALANCER_SOURCE}\n",
            d.addr()
        );
    }
    Some(Haproxy::start(&backend))
}

/// Through HAProxy in front of both instances: a file put through the balancer is got
/// identically through each instance directly, the balancer's connections reach both
/// instances, and each saw the client's own address (127.0.0.1), never the balancer's.
#[test]
fn a_file_put_through_the_balancer_is_got_identically_from_each_instance() {
    let Some(c) = Cluster::shared_root() else {
        return;
    };
    c.adduser("alice", "secret", &[]);
    let behind = ["--proxy-protocol-from", BALANCER_SOURCE];
    let a = c.instance(&behind);
    let b = c.instance(&behind);
    let Some(balancer) = balancer(&[&a, &b]) else {
        return;
    };
    let src = c.local("src.bin");
    write_random(&src, 2 * MIB + 3, 0xba1);
    // Round robin: the put and the listing go to one instance each.
    c.login_as(a.cli_via(balancer.addr), "alice", "secret")
        .cmds("put src.bin")
        .timeout(STEP)
        .run()
        .ok()
        .verified(&src, 1);
    c.login_as(a.cli_via(balancer.addr), "alice", "secret")
        .cmds("ls")
        .timeout(STEP)
        .run()
        .ok();
    for (d, back) in [(&a, "back-a.bin"), (&b, "back-b.bin")] {
        c.login(d, "alice", "secret")
            .cmds(&format!("get src.bin {back}"))
            .run()
            .ok()
            .verified(&src, 1);
        assert_same_file(&src, c.local(back));
        let log = d.log();
        let relayed = log
            .lines()
            .filter(|l| l.contains("connection opened") && l.contains("peer=127.0.0.1:"))
            .count();
        // One connection of its own (the get), one at least through the balancer.
        assert!(
            relayed >= 2,
            "the balancer's connection did not reach this instance as the client's; log:\n\
             {log}\nhaproxy:\n{}",
            balancer.log()
        );
        assert!(!log.contains("peer=127.0.0.3"), "{log}");
    }
}

// ---------------------------------------------------------------------------------------------
// Limits of the whole service

/// Puts `big.bin` through instance `a` via a proxy that stalls after `stall_at` bytes, waits
/// until `stored` says the instance has kept what came before, then kills the instance with
/// SIGKILL (and the client).
fn kill_mid_upload(c: &Cluster, a: Daemon, stall_at: u64, mut stored: impl FnMut(&Daemon) -> bool) {
    let proxy = Proxy::start(
        a.addr(),
        vec![Fault::stall_forever(Direction::ClientToServer, stall_at)],
    );
    let mut upload = c
        .login_as(a.cli_via(proxy.addr()), "alice", "secret")
        .cmds("put big.bin")
        .spawn();
    wait_until(
        "the instance has kept the first bytes",
        Duration::from_secs(60),
        || {
            upload.assert_running();
            stored(&a)
        },
    );
    a.kill();
    upload.kill();
    drop(proxy);
}

/// Panics unless `put -c` on the second instance sent only what follows `kept` bytes.
#[track_caller]
fn assert_sent_only_after(run: &Run, size: u64, kept: u64, daemon: &Daemon) {
    let sent = sent_this_time(&run.stdout);
    let rest = (size - kept) as f64;
    assert!(
        sent.is_some_and(|sent| (sent - rest).abs() < 0.01 * MIB as f64),
        "put -c on the other instance did not continue from {kept} bytes (summary says \
         {sent:?} sent, expected {rest}); {run}\ndaemon log:\n{}",
        daemon.log()
    );
}

/// On S3: instance A killed with one part stored; `put -c` on instance B sends only the rest,
/// and the object is the file. With `--database` the upload goes through the database's
/// registry (its part recorded there, no upload record in the bucket), and the registry
/// forgets it once complete.
#[test]
fn an_upload_cut_by_killing_its_instance_continues_on_another_on_s3() {
    let Some(c) = Cluster::s3() else { return };
    let Storage::S3 { bucket, .. } = &c.storage else {
        unreachable!()
    };
    c.adduser("alice", "secret", &[]);
    let a = c.instance(&[]);
    let b = c.instance(&[]);
    let size = 2 * PART + 12345;
    write_random(c.local("big.bin"), size, 0x5e);

    let parts = || {
        c.db.query("SELECT count(*) FROM upload_parts")
            .trim()
            .to_owned()
    };
    kill_mid_upload(&c, a, PART + 2 * MIB, |_| parts() != "0");
    assert_eq!(parts(), "1", "the one part before the stall is recorded");
    assert!(
        bucket.upload_records("").is_empty(),
        "an upload record in the bucket beside the database's registry"
    );
    assert_eq!(
        bucket.size("alice/big.bin"),
        None,
        "the cut upload is visible"
    );

    let run = c
        .login(&b, "alice", "secret")
        .timeout(Duration::from_secs(120))
        .cmds("put -c big.bin; get big.bin back.bin")
        .run()
        .ok()
        .verified(c.local("big.bin"), 2);
    assert_sent_only_after(&run, size, PART, &b);
    assert_same_file(c.local("big.bin"), c.local("back.bin"));
    assert!(bucket.open_uploads().is_empty(), "an upload was left open");
    assert_eq!(
        c.db.query("SELECT count(*) FROM uploads").trim(),
        "0",
        "the registry kept the completed upload"
    );
}

/// On a shared root, staged uploads are each instance's own (docs/CLUSTER.md: an upload
/// interrupted on one instance resumes only there): instance A killed with 3 MiB of an upload
/// staged, `put -c` on instance B still ends in the whole file, identical, and nothing of A's
/// half upload ever shows in the shared root.
#[test]
fn an_upload_cut_by_killing_its_instance_completes_on_another_on_a_shared_root() {
    let Some(c) = Cluster::shared_root() else {
        return;
    };
    c.adduser("alice", "secret", &[]);
    let a = c.instance(&[]);
    let b = c.instance(&[]);
    let size = 8 * MIB + 5;
    write_random(c.local("big.bin"), size, 0x5f);

    kill_mid_upload(&c, a, 3 * MIB + 64 * 1024, |a| {
        staged_bytes(&a.state()) >= 3 * MIB
    });
    let home = c.root().join("alice");
    assert!(
        names(&home).is_empty(),
        "the cut upload shows: {:?}",
        names(&home)
    );

    c.login(&b, "alice", "secret")
        .timeout(Duration::from_secs(120))
        .cmds("put -c big.bin")
        .run()
        .ok()
        .verified(c.local("big.bin"), 1);
    assert_same_file(c.local("big.bin"), home.join("big.bin"));
    assert_eq!(names(&home), ["big.bin"]);
}
