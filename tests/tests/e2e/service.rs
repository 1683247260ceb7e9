//! Running ftpd as a service: systemd's readiness, stopping and watchdog notifications, socket
//! activation, SIGTERM with a transfer in flight, SIGHUP reloading the users, settings from a
//! file, the environment and flags, and logs a collector can read.
//!
//! The daemon's log is a file (see [`Daemon`]), so when a notification arrives the log holds
//! exactly what was logged before it was sent.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use e2e::proxy::{Direction, Fault, Proxy};
use serde_json::Value;

use crate::raw::Raw;
use crate::util::{
    assert_missing, assert_same_file, bin, clean_env, holds_within, md5_file, staged_bytes, tmpdir,
    wait_child, wait_until, write_file, write_random, Cli, Daemon, DaemonBuilder, Keys, KillOnDrop,
    Site, MIB,
};

/// How long a daemon may take to start, or a notification or log line to arrive.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit once nothing holds it any more.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one client run, or one command of a long session, may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// systemd: notifications and socket activation

/// systemd starts units that depend on ftpd once it says READY=1: by then the port must accept,
/// and the `listening on` line must already be in the log. SIGTERM then says STOPPING=1 and
/// ends in a clean exit.
#[test]
fn ready_is_notified_only_once_the_port_accepts() {
    let site = Site::new();
    let notify = Notifications::bind(&site);
    let ftpd = notifying(&site, &notify).spawn();

    let first = notify.next(START_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no notification within {START_TIMEOUT:?}; log:\n{}",
            ftpd.log()
        )
    });
    assert_eq!(
        first,
        "READY=1",
        "the first notification; log:\n{}",
        ftpd.log()
    );
    // Whatever the daemon logged before it sent READY=1 is in the file now.
    let addr = ftpd.logged_addr().unwrap_or_else(|| {
        panic!(
            "READY=1 came before the `listening on` line; log:\n{}",
            ftpd.log()
        )
    });
    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("READY=1 was sent but {addr} does not accept: {e}"));
    // The accept loop runs, so the SIGTERM handler is in place (see the regression test below).
    ftpd.wait_for_log(&["connection opened"]);
    drop(conn);

    ftpd.signal("TERM");
    let states = notify.until("STOPPING=1", EXIT_TIMEOUT);
    assert!(
        !states.iter().any(|s| s == "READY=1"),
        "READY=1 was sent twice: {states:?}"
    );
    let status = ftpd.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "SIGTERM ended ftpd with {status}; log:\n{}",
        ftpd.log()
    );
    ftpd.wait_for_log(&["stopped"]);
}

/// With `WatchdogSec=`, systemd sets WATCHDOG_USEC and kills a service that stops pinging.
#[test]
fn watchdog_pings_when_asked() {
    let site = Site::new();
    let notify = Notifications::bind(&site);
    let ftpd = notifying(&site, &notify)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .spawn();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pings = 0;
    let mut seen = Vec::new();
    while pings < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(state) = notify.next(left) else {
            panic!(
                "{pings} WATCHDOG=1 within 10 s (expected 3, one every 100 ms); got {seen:?}; \
                 log:\n{}",
                ftpd.log()
            );
        };
        if state == "WATCHDOG=1" {
            pings += 1;
        }
        seen.push(state);
    }
}

/// `ftpd.socket`: systemd binds the port and hands the socket over as fd 3 with LISTEN_FDS=1
/// and LISTEN_PID set to the daemon's pid; `--listen` is then ignored.
#[test]
fn serves_a_socket_handed_over_by_systemd() {
    let site = Site::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the socket to hand over");
    let addr = listener.local_addr().unwrap();
    let ftpd = site.daemon().socket(listener).spawn();

    assert_eq!(
        ftpd.addr(),
        addr,
        "ftpd did not listen on the socket it was given; log:\n{}",
        ftpd.log()
    );
    ftpd.wait_for_log(&["using the listening socket passed by systemd"]);

    let work = tmpdir();
    let src = work.path().join("a.bin");
    write_random(&src, 3 * MIB + 17, 31);
    ftpd.cli()
        .cwd(&work)
        .timeout(RUN_LIMIT)
        .round_trip("a.bin", "back.bin");
    assert_same_file(&src, site.root().join("a.bin"));
}

/// Regression: the SIGTERM handler was installed only when the accept loop first ran, after
/// READY=1, so `systemctl stop` right after start killed ftpd outright (status: killed by
/// SIGTERM, no STOPPING=1, no "stopped"). Tried a few times, since it is a race.
#[test]
fn sigterm_right_after_ready_stops_cleanly() {
    for attempt in 1..=5 {
        let site = Site::new();
        let notify = Notifications::bind(&site);
        let ftpd = ready(&site, &notify);
        ftpd.signal("TERM");
        let status = ftpd.wait_exit(EXIT_TIMEOUT);
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM right after READY=1 ended ftpd with {status}, not a \
             clean stop; log:\n{}",
            ftpd.log()
        );
    }
}

/// Regression: the SIGHUP handler was installed by a task spawned after READY=1, so
/// `systemctl reload` right after start killed ftpd (SIGHUP's default action).
#[test]
fn sighup_right_after_ready_does_not_kill_the_daemon() {
    for attempt in 1..=5 {
        let site = Site::new();
        let notify = Notifications::bind(&site);
        let ftpd = ready(&site, &notify);
        ftpd.signal("HUP");
        let reloaded = holds_within(START_TIMEOUT, || {
            ftpd.exited().is_some() || ftpd.log().contains("reloaded settings")
        });
        if let Some(status) = ftpd.exited() {
            panic!(
                "attempt {attempt}: SIGHUP right after READY=1 ended ftpd with {status}; log:\n{}",
                ftpd.log()
            );
        }
        assert!(
            reloaded,
            "attempt {attempt}: no `reloaded settings` line; log:\n{}",
            ftpd.log()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Stopping with transfers in flight

/// SIGTERM closes the door at once but lets an upload in flight finish within the grace period
/// (30 s by default). The upload is held in flight by a proxy that pauses it for a while.
#[test]
fn sigterm_lets_a_transfer_in_flight_finish() {
    let site = Site::new();
    let ftpd = site.daemon().start();
    let work = tmpdir();
    let src = work.path().join("big.bin");
    write_random(&src, 24 * MIB + 5, 41);
    let proxy = Proxy::start(
        ftpd.addr(),
        vec![Fault::stall(
            Direction::ClientToServer,
            8 * MIB,
            Duration::from_secs(10),
        )],
    );
    let upload = {
        let cli = ftpd
            .cli_via(proxy.addr())
            .cwd(&work)
            .cmds("put big.bin")
            .timeout(RUN_LIMIT);
        thread::spawn(move || cli.run())
    };
    let staging = ftpd.staging();
    wait_until("the upload is staged and held", RUN_LIMIT, || {
        assert!(!upload.is_finished(), "the upload ended before the stall");
        staged_bytes(&staging) > 0 && !proxy.events().is_empty()
    });

    ftpd.signal("TERM");
    ftpd.wait_for_log(&["shutting down"]);
    assert_refused(ftpd.addr());
    assert!(
        !upload.is_finished(),
        "the upload finished before the daemon stopped accepting: the test proves nothing"
    );

    let run = upload.join().expect("the client thread panicked");
    run.ok().verified(&src, 1);
    assert_same_file(&src, site.root().join("big.bin"));
    let status = ftpd.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "ftpd exited with {status}");
    let log = ftpd.log();
    let line_of = |words: &[&str]| {
        log.lines()
            .position(|l| words.iter().all(|w| l.contains(w)))
            .unwrap_or_else(|| panic!("no log line has all of {words:?}; log:\n{log}"))
    };
    assert!(
        line_of(&["shutting down"]) < line_of(&["op=\"put\"", "outcome=\"ok\""]),
        "the upload was not in flight when shutdown began; log:\n{log}"
    );
    assert!(
        !log.contains("grace period over"),
        "the grace period cut the upload; log:\n{log}"
    );
}

/// An upload that cannot finish within `--shutdown-grace` is cut, the daemon exits cleanly
/// anyway, and the staged bytes stay for `put -c` on the next start.
#[test]
fn sigterm_after_grace_cuts_and_keeps_staged_bytes() {
    let site = Site::new();
    let ftpd = site.daemon().args(["--shutdown-grace", "1s"]).start();
    let work = tmpdir();
    let src = work.path().join("big.bin");
    let size = 8 * MIB + 5;
    write_random(&src, size, 42);
    // Held for good right after the third chunk: the upload can never finish.
    let proxy = Proxy::start(
        ftpd.addr(),
        vec![Fault::stall_forever(
            Direction::ClientToServer,
            3 * MIB + 64 * 1024,
        )],
    );
    let mut upload = ftpd
        .cli_via(proxy.addr())
        .cwd(&work)
        .cmds("put big.bin")
        .spawn();
    let staging = ftpd.staging();
    wait_until("3 MiB are staged", RUN_LIMIT, || {
        upload.assert_running();
        staged_bytes(&staging) >= 3 * MIB
    });

    let signalled = Instant::now();
    ftpd.signal("TERM");
    let status = ftpd.wait_exit(EXIT_TIMEOUT);
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "ftpd exited with {status}; log:\n{}",
        ftpd.log()
    );
    assert!(
        took < Duration::from_secs(10),
        "ftpd took {took:?} to stop with a 1 s grace period; log:\n{}",
        ftpd.log()
    );
    ftpd.wait_for_log(&["grace period over"]);
    assert_missing(site.root().join("big.bin"));
    assert!(
        staged_bytes(&staging) >= 3 * MIB,
        "the staged bytes are gone ({} left)",
        staged_bytes(&staging)
    );
    upload.kill();
    drop(proxy);

    // Resumable: the next daemon on the same root carries on from them.
    let daemon = Daemon::start_on(site.root());
    let run = daemon
        .cli()
        .cwd(&work)
        .timeout(RUN_LIMIT)
        .cmds("put -c big.bin")
        .run()
        .ok()
        .verified(&src, 1);
    assert!(
        run.stdout.contains("sent this time"),
        "put -c sent the whole file again instead of resuming: {}",
        run.stdout
    );
    assert_same_file(&src, daemon.path("big.bin"));
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

const ALICE_ONLY: &str = r#"
[[user]]
name = "alice"
secret = "alice's secret"
home = "alice"
"#;

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

/// `systemctl reload` after adding a user: the new user gets in, and a session already open
/// carries on untouched.
#[test]
fn sighup_reloads_users_without_dropping_connections() {
    let site = Site::new();
    let users = site.private_file("users.toml", ALICE_ONLY);
    // Bob fails, then logs in right after the reload, from the same address: no penalty for
    // the failure in between (auth.rs tests the penalty).
    let ftpd = site
        .daemon()
        .arg("--users")
        .arg(&users)
        .args(["--login-penalty", "0s"])
        .start();
    let keys = Keys::new();
    let work = tmpdir();
    let src = work.path().join("a");
    write_random(&src, 2 * MIB + 3, 51);

    let mut alice = Session::start(
        &ftpd,
        "alice",
        &keys.secret("alice", "alice's secret"),
        work.path(),
    );
    alice.send("put a");
    alice.expect_line("verified", &src);

    // Bob is unknown until the reload.
    login(&ftpd, &keys, "bob", "bob's secret")
        .cwd(&work)
        .cmds("put a")
        .run()
        .fails()
        .stderr_has("authentication failed");

    // Rewritten in place: the file keeps its mode 600.
    write_file(&users, ALICE_AND_BOB);
    ftpd.signal("HUP");
    ftpd.wait_for_log(&["reloaded settings and users", "users=2"]);

    login(&ftpd, &keys, "bob", "bob's secret")
        .cwd(&work)
        .cmds("put a")
        .run()
        .ok()
        .verified(&src, 1);
    assert_same_file(&src, site.root().join("bob").join("a"));

    alice.send("get a b");
    alice.expect_line("verified", &src);
    let status = alice.finish();
    assert!(status.success(), "alice's session ended with {status}");
    assert_same_file(&src, site.root().join("alice").join("a"));
    assert_same_file(&src, work.path().join("b"));
    let log = ftpd.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("connection closed") && l.contains("shutting down")),
        "the reload closed a connection; log:\n{log}"
    );
}

/// Regression (hardening item 19): a reload that made a user read-only, or changed their
/// secret, refused new logins, but a session already open went on storing files. Every
/// command now checks the session's user against the users in force.
#[test]
fn sighup_revoking_a_user_stops_their_open_session_storing() {
    let site = Site::new();
    let users = site.private_file("users.toml", ALICE_ONLY);
    let ftpd = site.daemon().arg("--users").arg(&users).start();
    let keys = Keys::new();
    let work = tmpdir();
    let src = work.path().join("a");
    write_random(&src, 100_000, 53);
    let secret = keys.secret("alice", "alice's secret");
    let reloads = |n: usize| {
        ftpd.wait_log(&format!("{n} reloads"), |log| {
            log.matches("reloaded settings and users").count() >= n
        })
    };
    let mut writer = Session::start(&ftpd, "alice", &secret, work.path());
    writer.send("put a");
    writer.expect_line("verified", &src);
    let mut reader = Session::start(&ftpd, "alice", &secret, work.path());
    reader.send("get a c");
    reader.expect_line("verified", &src);

    // Made read-only, same secret: her open sessions may still read, no longer write.
    write_file(&users, format!("{ALICE_ONLY}read_only = true\n"));
    ftpd.signal("HUP");
    reloads(1);
    writer.send("put a b");
    let status = writer.finish();
    assert!(!status.success(), "a read-only session stored a file");
    assert_missing(site.root().join("alice").join("b"));
    reader.send("get a d");
    reader.expect_line("verified", &src);

    // Her secret changed: the open session is logged out at its next command.
    write_file(&users, ALICE_ONLY.replace("alice's secret", "a new secret"));
    ftpd.signal("HUP");
    reloads(2);
    reader.send("get a e");
    let status = reader.finish();
    assert!(!status.success(), "the revoked session carried on");
    assert_missing(work.path().join("e"));
    ftpd.wait_for_log(&["account changed or removed"]);
}

/// A reload that cannot read the users file keeps the users in force, and says so.
#[test]
fn sighup_with_a_broken_users_file_keeps_the_old_users() {
    let site = Site::new();
    let users = site.private_file("users.toml", ALICE_AND_BOB);
    let ftpd = site.daemon().arg("--users").arg(&users).start();
    let keys = Keys::new();
    let work = tmpdir();
    let src = work.path().join("a");
    write_random(&src, 1000, 52);
    let both_get_in = |file: &str| {
        for (user, secret) in [("alice", "alice's secret"), ("bob", "bob's secret")] {
            login(&ftpd, &keys, user, secret)
                .cwd(&work)
                .cmds(&format!("put a {file}"))
                .run()
                .ok()
                .verified(&src, 1);
            assert_same_file(&src, site.root().join(user).join(file));
        }
    };
    // Also makes sure the daemon is up and serving before it gets the signal.
    both_get_in("before");

    write_file(&users, "[[user]\nname = \"alice\n");
    ftpd.signal("HUP");
    ftpd.wait_for_log(&["reload failed", "users.toml"]);
    both_get_in("after");
}

// ---------------------------------------------------------------------------------------------
// Settings

/// A flag beats its FTPD_* variable, which beats the `--config` file, which beats the default:
/// `--check-config` prints what is in force.
#[test]
fn settings_file_flag_env_precedence() {
    let site = Site::new();
    let config = site.path("ftpd.toml");
    write_file(
        &config,
        format!(
            "root = {:?}\nmax-connections = 7\nmax-connections-per-ip = 3\nidle-timeout = \"2m\"\n",
            site.root().to_str().expect("a UTF-8 temp path")
        ),
    );
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = bare(bin("ftpd"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--check-config")
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = output(cmd);
        assert!(
            out.status.success(),
            "ftpd --check-config {args:?} {env:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 settings")
    };

    let file_only = check(&[], &[]);
    let root = format!("{:?}", site.root().to_str().unwrap());
    for (key, value) in [
        ("root", root.as_str()),
        ("max-connections", "7"),
        ("max-connections-per-ip", "3"),
        ("idle-timeout", "\"2m\""),
        ("stall-timeout", "\"1m\""),
    ] {
        assert_setting(&file_only, key, value);
    }

    let flag = check(&["--max-connections", "9"], &[]);
    assert_setting(&flag, "max-connections", "9");
    assert_setting(&flag, "max-connections-per-ip", "3");

    let env = check(&[], &[("FTPD_MAX_CONNECTIONS_PER_IP", "5")]);
    assert_setting(&env, "max-connections-per-ip", "5");
    assert_setting(&env, "max-connections", "7");

    let both = check(
        &["--max-connections", "9"],
        &[("FTPD_MAX_CONNECTIONS", "8"), ("FTPD_IDLE_TIMEOUT", "30s")],
    );
    assert_setting(&both, "max-connections", "9");
    assert_setting(&both, "idle-timeout", "\"30s\"");
}

#[test]
fn unknown_setting_names_key_and_line() {
    let site = Site::new();
    let config = site.path("ftpd.toml");
    write_file(
        &config,
        format!(
            "root = {:?}\n\n# a typo below\nmax-conections = 5\n",
            site.root().to_str().unwrap()
        ),
    );
    let mut cmd = bare(bin("ftpd"));
    cmd.arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"]);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "ftpd started with an unknown setting ({}); stderr:\n{stderr}",
        out.status
    );
    for needle in ["max-conections", "line 4", "ftpd.toml"] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn check_config_validates_the_root() {
    let site = Site::new();
    let missing = site.path("no-such-dir");
    let not_a_dir = site.path("a-file");
    write_file(&not_a_dir, "x");
    for (root, why) in [
        (&missing, "no such file or directory"),
        (&not_a_dir, "not a directory"),
    ] {
        let mut cmd = bare(bin("ftpd"));
        cmd.arg("--root").arg(root).arg("--check-config");
        let out = output(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "--check-config passed with root {}: {}",
            root.display(),
            out.status
        );
        for needle in ["storage root", &root.display().to_string(), why] {
            assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
        }
        assert!(
            out.stdout.is_empty(),
            "settings were printed for a bad root: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn version_flags() {
    let version = env!("CARGO_PKG_VERSION");
    for (name, flag) in [
        ("ftpd", "--version"),
        ("ftpd", "-V"),
        ("ftp-cli", "--version"),
        ("ftp-cli", "-V"),
    ] {
        let mut cmd = bare(bin(name));
        cmd.arg(flag);
        let out = output(cmd);
        assert!(out.status.success(), "{name} {flag}: {}", out.status);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{name} {version}"),
            "{name} {flag}"
        );
    }
}

#[test]
fn man_and_completions_are_generated() {
    let run = |name: &str, args: &[&str]| {
        let mut cmd = bare(bin(name));
        cmd.args(args);
        let out = output(cmd);
        assert!(out.status.success(), "{name} {args:?}: {}", out.status);
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    let man = run("ftpd", &["--man"]);
    assert!(
        man.starts_with('.'),
        "not roff: {:?}",
        &man[..man.len().min(80)]
    );
    assert!(man.lines().any(|l| l.starts_with(".TH ftpd")), "{man}");
    assert!(
        man.contains("shutdown\\-grace"),
        "flags missing from:\n{man}"
    );

    let bash = run("ftpd", &["--completions", "bash"]);
    assert!(bash.contains("_ftpd"), "{bash}");
    assert!(bash.contains("--shutdown-grace"), "{bash}");

    let man = run("ftp-cli", &["--man", "x"]);
    assert!(man.lines().any(|l| l.starts_with(".TH ftp-cli")), "{man}");
    let bash = run("ftp-cli", &["--completions", "bash", "x"]);
    assert!(
        bash.contains("complete") && bash.contains("ftp-cli"),
        "{bash}"
    );
}

// ---------------------------------------------------------------------------------------------
// Logs

/// `--log-format json`: one object per line, and the transfer log (target `ftpd::xfer`) has
/// the fields a collector keys on; its path is the file's inside the home, not what the client
/// typed after a `cd` (it said `a.bin` for `/photos/a.bin`).
#[test]
fn json_log_format() {
    let site = Site::new();
    let users = site.private_file("users.toml", ALICE_ONLY);
    let ftpd = site
        .daemon()
        .args(["--log-format", "json", "--users"])
        .arg(&users)
        .start();
    let keys = Keys::new();
    let work = tmpdir();
    let src = work.path().join("a.bin");
    let size = MIB + 11;
    write_random(&src, size, 71);
    login(&ftpd, &keys, "alice", "alice's secret")
        .cwd(&work)
        .cmds("mkdir photos; cd photos; put a.bin")
        .run()
        .ok();
    let xfer = wait_for_json(&ftpd, |v| v["target"] == "ftpd::xfer");
    ftpd.signal("TERM");
    let status = ftpd.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "ftpd exited with {status}");

    let lines = json_lines(&ftpd.log());
    assert!(lines.len() >= 5, "{lines:?}");
    for line in &lines {
        for key in ["timestamp", "level", "message", "target"] {
            assert!(line.get(key).is_some(), "no {key:?} in {line}");
        }
    }
    let listening = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on "))
        })
        .expect("no `listening on` line");
    assert_eq!(
        listening["message"],
        format!("listening on {}", ftpd.addr()),
        "{listening}"
    );

    assert_eq!(xfer["op"], "put", "{xfer}");
    assert_eq!(xfer["path"], "/photos/a.bin", "{xfer}");
    assert_eq!(xfer["bytes"], size, "{xfer}");
    assert_eq!(xfer["digest"], format!("md5:{}", md5_file(&src)), "{xfer}");
    assert_eq!(xfer["outcome"], "ok", "{xfer}");
    assert_eq!(xfer["user"], "alice", "{xfer}");
    assert_eq!(xfer["level"], "INFO", "{xfer}");
    let peer = xfer["peer"].as_str().unwrap_or_default();
    assert!(
        peer.parse::<SocketAddr>()
            .is_ok_and(|p| p.ip().is_loopback()),
        "peer {peer:?} in {xfer}"
    );
}

/// In the JSON format numbers are JSON numbers (`secs` and `mb_per_s` were strings), and a
/// refused request is logged at INFO with its code, whether a transfer or not.
#[test]
fn json_log_numbers_are_numbers_and_refusals_are_info() {
    let site = Site::new();
    let ftpd = site.daemon().args(["--log-format", "json"]).start();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 100_000, 3);
    ftpd.cli().cwd(&work).cmds("put a.bin").run().ok();
    ftpd.cli().cwd(&work).cmds("get missing.bin").run().fails();
    ftpd.cli().cmds("rm missing.bin").run().fails();
    let put = wait_for_json(&ftpd, |v| v["target"] == "ftpd::xfer" && v["op"] == "put");
    for key in ["bytes", "secs", "mb_per_s"] {
        assert!(put[key].is_number(), "{key} is not a number in {put}");
    }
    assert!(put["secs"].as_f64().is_some_and(|s| s >= 0.0), "{put}");
    let get = wait_for_json(&ftpd, |v| v["target"] == "ftpd::xfer" && v["op"] == "get");
    assert_eq!(get["level"], "INFO", "{get}");
    assert!(get["secs"].is_number(), "{get}");
    assert!(
        get["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("not_found")),
        "{get}"
    );
    let rm = wait_for_json(&ftpd, |v| v["op"] == "rm");
    assert_eq!(rm["level"], "INFO", "{rm}");
    assert_eq!(rm["outcome"], "not_found", "{rm}");
    assert_eq!(rm["message"], "refused", "{rm}");
}

/// A settings file that stops parsing at reload leaves one log line, not toml's snippet.
#[test]
fn a_failed_reload_is_one_line() {
    let site = Site::new();
    let config = site.path("ftpd.toml");
    write_file(&config, "");
    let ftpd = site
        .daemon()
        .args(["--log-format", "json", "--config"])
        .arg(&config)
        .start();
    write_file(&config, "max-connections = = 3\n");
    ftpd.signal("HUP");
    let failed = wait_for_json(&ftpd, |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reload failed"))
    });
    let message = failed["message"].as_str().unwrap();
    assert!(
        !message.contains('\n') && message.contains("line 1"),
        "{message}"
    );
}

/// `--check-config` refuses what the daemon would refuse to run: anonymous on a public address.
#[test]
fn check_config_refuses_anonymous_on_a_public_address() {
    let site = Site::new();
    let mut cmd = bare(bin("ftpd"));
    cmd.arg("--root")
        .arg(site.root())
        .args(["--listen", "0.0.0.0:0", "--check-config"]);
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refusing to serve anonymously"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A bad value in the settings file names the file, the line and the key, not a flag.
#[test]
fn a_bad_setting_value_names_file_and_line() {
    let site = Site::new();
    let config = site.path("ftpd.toml");
    write_file(
        &config,
        format!(
            "root = {:?}\n\nidle-timeout = \"soon\"\n",
            site.root().to_str().unwrap()
        ),
    );
    let mut cmd = bare(bin("ftpd"));
    cmd.arg("--config").arg(&config).arg("--check-config");
    let out = output(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in ["ftpd.toml", "line 3", "`idle-timeout`"] {
        assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
    }
    assert!(!stderr.contains("--idle-timeout"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// `--listen localhost:PORT`: a host name is resolved.
#[test]
fn listen_takes_a_host_name() {
    let site = Site::new();
    let ftpd = site.daemon().listen("localhost:0").start();
    assert!(ftpd.addr().ip().is_loopback(), "{}", ftpd.addr());
    ftpd.cli().cmds("ls").run().ok();
}

/// Each connection leaves a pair of lines: opened, and closed with why.
#[test]
fn connection_open_and_close_are_logged_with_a_reason() {
    let site = Site::new();
    let ftpd = site
        .daemon()
        .args(["--log-format", "json", "--handshake-timeout", "1s"])
        .start();
    let closed = |peer: &str| {
        let peer = peer.to_owned();
        move |v: &Value| v["message"] == "connection closed" && v["peer"] == peer.as_str()
    };

    // A client that says goodbye.
    ftpd.cli().cmds("ls").run().ok();
    let opened = wait_for_json(&ftpd, |v| v["message"] == "connection opened");
    let peer = opened["peer"].as_str().expect("no peer").to_owned();
    let line = wait_for_json(&ftpd, closed(&peer));
    assert_eq!(line["reason"], "client said bye", "{line}");

    // A connection dropped before the TLS handshake.
    let conn = TcpStream::connect(ftpd.addr()).unwrap();
    let peer = conn.local_addr().unwrap().to_string();
    drop(conn);
    let line = wait_for_json(&ftpd, closed(&peer));
    assert_eq!(line["reason"], "client closed the connection", "{line}");

    // One that never starts TLS.
    let silent = TcpStream::connect(ftpd.addr()).unwrap();
    let peer = silent.local_addr().unwrap().to_string();
    let line = wait_for_json(&ftpd, closed(&peer));
    assert_eq!(
        line["reason"], "no TLS handshake within the time limit",
        "{line}"
    );
    drop(silent);

    // One that makes the TLS handshake but never says hello.
    let quiet = Raw::connect(ftpd.addr());
    let peer = quiet.local_addr().to_string();
    let line = wait_for_json(&ftpd, closed(&peer));
    assert_eq!(line["reason"], "no hello within the time limit", "{line}");
    quiet.close();

    // An idle session when the daemon stops.
    let mut idle = Raw::connect(ftpd.addr()).within(START_TIMEOUT);
    let peer = idle.local_addr().to_string();
    assert!(idle.greets(), "no hello reply");
    ftpd.signal("TERM");
    let line = wait_for_json(&ftpd, closed(&peer));
    assert_eq!(line["reason"], "server is shutting down", "{line}");
    let status = ftpd.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "ftpd exited with {status}");

    let lines = json_lines(&ftpd.log());
    let count = |m: &str| lines.iter().filter(|l| l["message"] == m).count();
    assert_eq!(count("connection opened"), 5, "{lines:#?}");
    assert_eq!(count("connection closed"), 5, "{lines:#?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers: the daemon's notifications, programs that exit at once, and a long client session
// fed through a pipe.

/// A daemon on `site` that tells `notify` how it is doing, as systemd's `Type=notify` asks.
fn notifying(site: &Site, notify: &Notifications) -> DaemonBuilder {
    site.daemon().env("NOTIFY_SOCKET", notify.path())
}

/// Spawns a [`notifying`] daemon and waits for its first notification, which must be READY=1.
#[track_caller]
fn ready(site: &Site, notify: &Notifications) -> Daemon {
    let ftpd = notifying(site, notify).spawn();
    let first = notify.next(START_TIMEOUT);
    assert_eq!(first.as_deref(), Some("READY=1"), "log:\n{}", ftpd.log());
    ftpd
}

/// A program run to completion with the clean environment, for commands that exit at once.
fn bare(program: PathBuf) -> Command {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to its end, within [`START_TIMEOUT`].
#[track_caller]
fn output(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let status = wait_child(&mut child, START_TIMEOUT)
        .unwrap_or_else(|| panic!("{cmd:?} still runs after {START_TIMEOUT:?}"));
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Waits until a JSON log line of `ftpd` matches `pred`, and returns it.
#[track_caller]
fn wait_for_json(ftpd: &Daemon, pred: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    ftpd.wait_log("the expected JSON line", |log| {
        found = json_lines(log).into_iter().find(&pred);
        found.is_some()
    });
    found.unwrap()
}

/// Every line of a JSON log, parsed; panics on a line that is not a JSON object.
fn json_lines(log: &str) -> Vec<Value> {
    // A line still being written has no newline yet: only complete lines count.
    let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => v,
            _ => panic!("not a JSON object: {line:?}"),
        })
        .collect()
}

/// The socket systemd would give as NOTIFY_SOCKET, with the states received on it.
struct Notifications {
    /// Bound at `path`; the daemon sends one datagram per notification.
    socket: UnixDatagram,
    /// What NOTIFY_SOCKET says.
    path: PathBuf,
}

impl Notifications {
    fn bind(site: &Site) -> Notifications {
        let path = site.path("notify.sock");
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        Notifications { socket, path }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// The next state (`READY=1`), or `None` if none comes within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("cannot receive a notification: {e}"),
        }
    }

    /// The states received until `state` (not included); panics if it does not come in time.
    #[track_caller]
    fn until(&self, state: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(s) if s == state => return seen,
                Some(s) => seen.push(s),
                None => panic!("no {state} within {timeout:?}; got {seen:?}"),
            }
        }
    }
}

/// Panics unless a new connection to `addr` is refused: the connect fails, or the connection
/// closes without a reply to our hello.
#[track_caller]
fn assert_refused(addr: SocketAddr) {
    let Ok(conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(10)) else {
        return;
    };
    assert!(
        !Raw::from(conn).within(START_TIMEOUT).greets(),
        "a connection made after shutdown began got a hello reply"
    );
}

#[track_caller]
fn assert_setting(effective: &str, key: &str, value: &str) {
    let found = effective.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    });
    assert_eq!(
        found,
        Some(value),
        "{key} in the effective settings:\n{effective}"
    );
}

/// A client of `ftpd` logging in as `user`, the secret in a new private file under `keys`.
fn login(ftpd: &Daemon, keys: &Keys, user: &str, secret: &str) -> Cli {
    ftpd.cli()
        .user(user, keys.secret(user, secret))
        .timeout(RUN_LIMIT)
}

/// A long `ftp-cli` session reading its commands from a pipe, one at a time. Killed on drop.
struct Session {
    /// The client; killed on drop.
    child: KillOnDrop,
    /// Where commands go; closed by [`Session::finish`] to end the session.
    stdin: Option<ChildStdin>,
    /// Lines of stdout, as they come.
    lines: mpsc::Receiver<String>,
    /// Everything seen so far on stdout and stderr, for failure messages.
    seen: Arc<Mutex<String>>,
    /// The threads copying stdout and stderr; joined once the client has exited.
    readers: Vec<JoinHandle<()>>,
}

impl Session {
    /// `ftp-cli ADDR -u USER --secret-file FILE` in `cwd`, commands from stdin.
    fn start(ftpd: &Daemon, user: &str, secret_file: &Path, cwd: &Path) -> Session {
        let mut cmd = bare(bin("ftp-cli"));
        let mut child = cmd
            .arg(ftpd.addr().to_string())
            .arg("--fingerprint")
            .arg(ftpd.fingerprint())
            .args(["-u", user, "--timeout", "20s", "--secret-file"])
            .arg(secret_file)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn ftp-cli");
        let seen = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![
            {
                let seen = Arc::clone(&seen);
                thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        seen.lock().unwrap().push_str(&format!("out: {line}\n"));
                        let _ = tx.send(line);
                    }
                })
            },
            {
                let seen = Arc::clone(&seen);
                thread::spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        seen.lock().unwrap().push_str(&format!("err: {line}\n"));
                    }
                })
            },
        ];
        Session {
            stdin: child.stdin.take(),
            child: KillOnDrop::new(child),
            lines,
            seen,
            readers,
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot send {command:?}: {e}; output:\n{}", self.seen()));
    }

    /// Waits for a stdout line with `word` and the MD5 of `file`.
    #[track_caller]
    fn expect_line(&self, word: &str, file: &Path) {
        let md5 = md5_file(file);
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(word) && line.to_lowercase().contains(&md5) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line with {word:?} and {md5} from ftp-cli; output:\n{}",
                    self.seen()
                ),
            }
        }
    }

    /// Closes stdin (end of commands) and waits for the client to exit.
    #[track_caller]
    fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        let status = wait_child(&mut self.child, RUN_LIMIT)
            .unwrap_or_else(|| panic!("ftp-cli did not exit; output:\n{}", self.seen()));
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }

    fn seen(&self) -> String {
        self.seen.lock().unwrap().clone()
    }
}
