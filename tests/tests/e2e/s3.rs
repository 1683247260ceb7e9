//! The daemon on S3 (`--storage s3://…`) against a real S3 server, moto's, one per test: the
//! promises of the local root kept on a bucket, checked through the real client and, for what
//! clients cannot see, through the bucket's own API.
//!
//! Without `moto_server` every test prints a note and passes, except under CI (`CI` set), where
//! it fails: CI installs it (`pip install 'moto[server]'`). With `E2E_S3_ENDPOINT` set they run
//! against that server instead, a bucket each (bench/garage runs them on a Garage cluster).

use std::time::Duration;

use e2e::proxy::{Direction, Fault, Proxy};
use tempfile::TempDir;

use crate::util::{
    assert_same_file, free_port, sent_this_time, tmpdir, tmpdir_named, wait_until, write_file,
    write_private, write_random, Bucket, CannedHttp, Cli, Daemon, DaemonBuilder, Keys, Moto, Run,
    MIB,
};

/// The part size the daemons here use: S3's smallest, so that tests cross part boundaries with
/// files of a few MiB.
const PART: u64 = 5 * MIB;
/// `--s3-part-size` for [`PART`].
const PART_FLAG: [&str; 2] = ["--s3-part-size", "5MiB"];
/// How long one client run may take before the test fails instead of hanging.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The bucket every test makes on its own moto (with a suffix on an external server).
const BUCKET: &str = "files";

/// A moto server with one empty bucket, and a client working directory.
struct S3 {
    /// The bucket, through the S3 API.
    bucket: Bucket,
    /// The client's working directory.
    work: TempDir,
    /// Declared last: the server outlives the daemons and clients of the test.
    _moto: Moto,
}

impl S3 {
    /// moto with an empty bucket, or `None` (after a note) when moto is not installed.
    fn new() -> Option<S3> {
        let moto = Moto::start()?;
        Some(S3 {
            bucket: moto.bucket(BUCKET),
            work: tmpdir(),
            _moto: moto,
        })
    }

    /// A daemon on the whole bucket with 5 MiB parts, not started yet.
    fn daemon(&self) -> DaemonBuilder {
        self.bucket.daemon().args(PART_FLAG)
    }

    /// A path in the client's working directory.
    fn local(&self, rel: &str) -> std::path::PathBuf {
        self.work.path().join(rel)
    }

    /// A client of `daemon` in the working directory.
    fn cli(&self, daemon: &Daemon) -> Cli {
        daemon
            .cli()
            .cwd(&self.work)
            .timeout(RUN_LIMIT)
            .env("TZ", "UTC")
    }
}

/// Quotes a name for the client's shell-style command line.
fn quote(name: &str) -> String {
    format!("'{}'", name.replace('\'', r#"'"'"'"#))
}

/// The non-empty lines of some output.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// Puts a fresh `size`-byte file as `remote`, gets it back, and checks both transfers verified,
/// the object in the bucket has the size, and the bytes that came back are the bytes sent.
fn round_trip(remote: &str, size: u64) {
    let Some(t) = S3::new() else { return };
    let daemon = t.daemon().start();
    let src = t.local("src.bin");
    write_random(&src, size, size ^ 0x53);
    let q = quote(remote);
    t.cli(&daemon)
        .cmds(&format!("put src.bin {q}; get {q} back.bin"))
        .run()
        .ok()
        .verified(&src, 2);
    assert_same_file(&src, t.local("back.bin"));
    assert_eq!(t.bucket.size(remote), Some(size), "object {remote:?}");
    assert_eq!(
        t.bucket.visible_keys(""),
        [remote],
        "bucket: {:?}",
        t.bucket.keys()
    );
    assert!(
        t.bucket.open_uploads().is_empty(),
        "an upload was left open"
    );
}

#[test]
fn empty_file() {
    round_trip("empty.bin", 0);
}

#[test]
fn one_byte() {
    round_trip("one.bin", 1);
}

#[test]
fn exactly_one_part() {
    round_trip("part.bin", PART);
}

#[test]
fn one_part_plus_one_byte() {
    round_trip("part1.bin", PART + 1);
}

/// With the default part size (8 MiB): eight full parts and a short one.
#[test]
fn over_64_mib_with_the_default_part_size() {
    let Some(t) = S3::new() else { return };
    let daemon = t.bucket.daemon().start();
    let size = 64 * MIB + 7;
    write_random(t.local("big.bin"), size, 64);
    t.cli(&daemon)
        .timeout(Duration::from_secs(300))
        .round_trip("big.bin", "big-back.bin");
    assert_eq!(t.bucket.size("big.bin"), Some(size));
}

/// Names S3 must see exactly as typed, though URLs give their characters meanings: each is one
/// key, listed under its own name, and comes back.
#[test]
fn odd_names_are_keys_as_typed() {
    let Some(t) = S3::new() else { return };
    let daemon = t.daemon().start();
    let names = [
        "with spaces.bin",
        "ünïcødé ✓.bin",
        "hash#query?pct%plus+amp&eq=.bin",
        "semi;colon.bin",
        "%2F not a slash.bin",
    ];
    let mut cmds = String::from("mkdir 'odd dir ✓'");
    for (i, name) in names.iter().enumerate() {
        write_random(t.local(name), 100 + i as u64, i as u64);
        let remote = quote(&format!("odd dir ✓/{name}"));
        let back = quote(&format!("back-{name}"));
        cmds += &format!("; put {} {remote}; get {remote} {back}", quote(name));
    }
    t.cli(&daemon).cmds(&cmds).run().ok();
    for name in names {
        assert_same_file(t.local(name), t.local(&format!("back-{name}")));
    }
    let mut want: Vec<String> = names.iter().map(|n| format!("odd dir ✓/{n}")).collect();
    want.push("odd dir ✓/".into());
    want.sort();
    assert_eq!(t.bucket.visible_keys(""), want);

    let run = t.cli(&daemon).cmds("ls 'odd dir ✓'").run().ok();
    let mut listed = lines(&run.stdout);
    listed.sort();
    let mut names = names.to_vec();
    names.sort();
    assert_eq!(listed, names, "{run}");
}

// ---------------------------------------------------------------------------------------------
// Directories, listings, rm and mv: as the local root answers them

/// Replaces each `YYYY-MM-DD HH:MM:SS` of `ls -l` with a placeholder of the same width: the
/// times of two stores written a moment apart differ, nothing else may. A directory on S3 is a
/// prefix, which has no time: `ls -l` shows dashes there, taken as a time too.
fn without_times(text: &str) -> String {
    let mask = b"dddd-dd-dd dd:dd:dd";
    let mut out: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i + mask.len() <= out.len() {
        let window = &out[i..i + mask.len()];
        let no_time = window.iter().all(|c| *c == '-');
        let fits = no_time
            || mask.iter().zip(window).all(|(m, c)| match m {
                b'd' => c.is_ascii_digit(),
                m => *c == *m as char,
            });
        if fits {
            out.splice(i..i + mask.len(), "YYYY-MM-DD hh:mm:ss".chars());
            i += mask.len();
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// A transfer summary (`put a.txt: 6 B (6 bytes) in 0.06 s, 105 B/s, MD5 … verified`) without
/// its duration and rate, which differ from run to run.
fn without_rate(line: &str) -> String {
    match (line.find(") in "), line.find(", MD5 ")) {
        (Some(from), Some(to)) if from < to => format!("{}) in …{}", &line[..from], &line[to..]),
        _ => line.to_owned(),
    }
}

/// What a command answered, comparable between two daemons: the exit status, stdout without
/// times and rates, stderr.
fn answer(run: &Run) -> (Option<i32>, String, String) {
    let stdout: Vec<String> = without_times(&run.stdout)
        .lines()
        .map(without_rate)
        .collect();
    (run.status.code(), stdout.join("\n"), run.stderr.clone())
}

/// The same commands, one client run each (a failure stops a run), against a daemon on a local
/// root and one on S3, answer the same: exit status, output and errors.
#[test]
fn directories_listings_rm_and_mv_answer_as_on_the_local_root() {
    let Some(t) = S3::new() else { return };
    let s3 = t.daemon().start();
    let local = Daemon::start();
    write_file(t.local("a.txt"), "hello");
    write_random(t.local("b.txt"), 12345, 1);
    write_file(t.local("c d.bin"), "");
    let steps = [
        "mkdir gallery; mkdir gallery/Sub; put a.txt gallery/a.txt; put b.txt gallery/b.txt; \
         put 'c d.bin' 'gallery/c d.bin'; put a.txt top.txt",
        "ls",
        "ls /",
        "ls gallery",
        "ls -l gallery",
        "ls -l",
        "ls nowhere",
        "mkdir gallery",
        "mkdir top.txt",
        "mkdir no/such/parent",
        "mkdir -p deep/er/est; ls deep/er",
        "rmdir gallery",
        "rmdir top.txt",
        "rmdir nope",
        "rmdir deep/er/est; ls deep/er; ls -l deep",
        "rm top.txt; ls",
        "rm nope",
        "rm gallery",
        "mv gallery/a.txt moved.txt; ls; ls gallery",
        "mv moved.txt gallery/b.txt",
        "mv moved.txt gallery; ls gallery",
        "mv missing x",
        "rename gallery/Sub gallery/Other; ls gallery",
        "cd gallery; pwd; ls; cd ..; pwd",
        "get gallery/moved.txt back.txt",
    ];
    let mut differ = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        // Each daemon's client in a directory of its own, so local files do not collide.
        let (wl, ws) = (tmpdir(), tmpdir());
        for name in ["a.txt", "b.txt", "c d.bin"] {
            std::fs::copy(t.local(name), wl.path().join(name)).unwrap();
            std::fs::copy(t.local(name), ws.path().join(name)).unwrap();
        }
        let on_disk = local.cli().cwd(&wl).env("TZ", "UTC").cmds(step).run();
        let on_s3 = s3
            .cli()
            .cwd(&ws)
            .env("TZ", "UTC")
            .timeout(RUN_LIMIT)
            .cmds(step)
            .run();
        if answer(&on_disk) != answer(&on_s3) {
            differ.push(format!(
                "step {i} `{step}`:\n  local root: {on_disk}\n  S3:         {on_s3}"
            ));
        }
    }
    assert!(differ.is_empty(), "answers differ:\n{}", differ.join("\n"));

    // Directories are markers; the daemon's private records stay out of every listing above.
    let keys = t.bucket.visible_keys("");
    for marker in ["gallery/", "gallery/Other/", "deep/", "deep/er/"] {
        assert!(
            keys.iter().any(|k| k == marker),
            "no marker {marker}: {keys:?}"
        );
    }
    assert!(
        !keys.iter().any(|k| k.starts_with("deep/er/est")),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("gallery/Sub")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k == "top.txt"), "{keys:?}");
    assert_eq!(
        t.bucket.read("gallery/moved.txt").as_deref(),
        Some(&b"hello"[..])
    );
}

// ---------------------------------------------------------------------------------------------
// No clobber

#[test]
fn put_refuses_to_replace_without_f_and_replaces_with_it() {
    let Some(t) = S3::new() else { return };
    let daemon = t.daemon().start();
    write_random(t.local("a.bin"), PART + 10, 10);
    write_random(t.local("b.bin"), 2000, 20);
    t.cli(&daemon).cmds("put a.bin r.bin").run().ok();

    t.cli(&daemon)
        .cmds("put b.bin r.bin")
        .run()
        .exits(5)
        .stderr_has("exists")
        .no_internals()
        .one_line_error();
    t.cli(&daemon).cmds("get r.bin back-a.bin").run().ok();
    assert_same_file(t.local("a.bin"), t.local("back-a.bin"));
    assert!(
        t.bucket.open_uploads().is_empty(),
        "the refused upload is left open"
    );

    t.cli(&daemon)
        .cmds("put -f b.bin r.bin; get r.bin back-b.bin")
        .run()
        .ok()
        .verified(t.local("b.bin"), 2);
    assert_same_file(t.local("b.bin"), t.local("back-b.bin"));
    assert_eq!(t.bucket.size("r.bin"), Some(2000));
}

// ---------------------------------------------------------------------------------------------
// Cut uploads, resumed

/// Two full parts and a short one.
const BIG: u64 = 2 * PART + 12345;
/// Where the proxy stalls an upload: past the first part, before the second.
const STALL_AT: u64 = PART + 2 * MIB;

/// Puts `big.bin` from `t`'s directory through a proxy that stalls it after [`STALL_AT`]
/// bytes, and returns once the daemon has recorded the first part, with the client still
/// running and the proxy holding it. Checks on the way that nothing under the target name is
/// in the bucket, nor in a listing, while the upload is open.
fn stall_after_one_part(t: &S3, daemon: &Daemon, prefix: &str) -> (crate::util::Running, Proxy) {
    let proxy = Proxy::start(
        daemon.addr(),
        vec![Fault::stall_forever(Direction::ClientToServer, STALL_AT)],
    );
    let mut upload = daemon
        .cli_via(proxy.addr())
        .cwd(&t.work)
        .cmds("put big.bin")
        .spawn();
    wait_until(
        "the first part is recorded",
        Duration::from_secs(60),
        || {
            upload.assert_running();
            t.bucket.recorded_parts(prefix, "big.bin") >= 1
        },
    );
    assert_eq!(
        t.bucket.open_uploads().len(),
        1,
        "one multipart upload open"
    );
    let keys = t.bucket.keys();
    assert!(
        !keys
            .iter()
            .any(|k| k.ends_with("big.bin") && !k.contains(".ftpd/")),
        "the upload is visible under its name before it is complete: {keys:?}"
    );
    let run = t.cli(daemon).cmds("ls").run().ok();
    assert!(lines(&run.stdout).is_empty(), "listed mid-upload: {run}");
    t.cli(daemon)
        .cmds("get big.bin early.bin")
        .run()
        .exits(5)
        .stderr_has("no such file");
    (upload, proxy)
}

/// Panics unless the run's summary says it sent only what follows the first part.
#[track_caller]
fn assert_sent_after_the_first_part(run: &Run, daemon: &Daemon) {
    let sent = sent_this_time(&run.stdout);
    let rest = (BIG - PART) as f64;
    assert!(
        sent.is_some_and(|sent| (sent - rest).abs() < 0.01 * MIB as f64),
        "put -c did not continue from the first part's boundary (summary says {sent:?} sent, \
         expected {rest}); {run}\ndaemon log:\n{}",
        daemon.log()
    );
}

/// A client killed with one part stored: `put -c` sends the rest only, and the object is the
/// file.
#[test]
fn a_put_cut_midway_continues_with_put_c() {
    let Some(t) = S3::new() else { return };
    let daemon = t.daemon().start();
    write_random(t.local("big.bin"), BIG, 0xc07);
    let (upload, proxy) = stall_after_one_part(&t, &daemon, "");
    upload.kill();
    drop(proxy);

    let run = t
        .cli(&daemon)
        .cmds("put -c big.bin; get big.bin back.bin")
        .run()
        .ok()
        .verified(t.local("big.bin"), 2);
    assert_sent_after_the_first_part(&run, &daemon);
    assert_same_file(t.local("big.bin"), t.local("back.bin"));
    assert_eq!(t.bucket.size("big.bin"), Some(BIG));
    assert!(
        t.bucket.open_uploads().is_empty(),
        "an upload was left open"
    );
    assert!(
        t.bucket.upload_records("").is_empty(),
        "an upload record was left"
    );
}

/// The daemon killed with SIGKILL with one part stored and recorded; a new daemon on the same
/// bucket and state lets `put -c` carry on from that part: nothing before it is sent again.
#[test]
fn put_continues_after_the_daemon_is_killed() {
    let Some(t) = S3::new() else { return };
    let state = tmpdir_named("e2e-s3-state-");
    write_random(t.local("big.bin"), BIG, 0xdead);
    {
        let daemon = t.daemon().state_dir(state.path()).start();
        let (upload, proxy) = stall_after_one_part(&t, &daemon, "");
        daemon.kill();
        upload.kill();
        drop(proxy);
    }
    assert_eq!(t.bucket.open_uploads().len(), 1);
    assert_eq!(t.bucket.size("big.bin"), None);

    // Regression: moto says every upload was initiated in 2010, and a sweeper that went by
    // that alone aborted this one at start under the default --staging-max-age (1h), so
    // `put -c` started over. The upload's record, written a moment ago, spares it.
    let daemon = t.daemon().state_dir(state.path()).start();
    let run = t
        .cli(&daemon)
        .cmds("put -c big.bin; get big.bin back.bin")
        .run()
        .ok()
        .verified(t.local("big.bin"), 2);
    assert_sent_after_the_first_part(&run, &daemon);
    assert_same_file(t.local("big.bin"), t.local("back.bin"));
    assert!(
        t.bucket.open_uploads().is_empty(),
        "an upload was left open"
    );
    assert!(
        t.bucket.upload_records("").is_empty(),
        "an upload record was left"
    );
}

// ---------------------------------------------------------------------------------------------
// The sweeper

/// An upload nobody will finish (opened with the S3 API, as a daemon that died before its
/// first record leaves it) is aborted by the sweeper of a daemon whose `--staging-max-age` it
/// exceeds: moto says every upload was initiated in 2010.
#[test]
fn the_sweeper_aborts_an_abandoned_multipart_upload() {
    let Some(t) = S3::new() else { return };
    t.bucket
        .block(t.bucket.client().create_multipart("stale.bin"))
        .expect("cannot open a multipart upload");
    assert_eq!(t.bucket.open_uploads().len(), 1);

    let daemon = t.daemon().args(["--staging-max-age", "1s"]).start();
    daemon.wait_for_log(&["abandoned"]);
    wait_until("the upload is aborted", Duration::from_secs(30), || {
        t.bucket.open_uploads().is_empty()
    });
    assert!(
        t.bucket.visible_keys("").is_empty(),
        "{:?}",
        t.bucket.keys()
    );
    // And the daemon goes on serving.
    write_random(t.local("after.bin"), 1000, 3);
    t.cli(&daemon).round_trip("after.bin", "after-back.bin");
}

// ---------------------------------------------------------------------------------------------
// Starting up: one clear line, or the effective config

/// Panics unless `stderr` is one non-empty line that mentions one of `needles` (ignoring case)
/// and shows no internals: no HTTP status, no XML, no OS error number.
#[track_caller]
fn assert_one_clear_line(stderr: &str, needles: &[&str]) {
    let lines = lines(stderr);
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    let line = lines[0].to_lowercase();
    assert!(
        needles.iter().any(|n| line.contains(&n.to_lowercase())),
        "expected the line to mention one of {needles:?}: {stderr}"
    );
    for internal in ["<error>", "<code>", "os error", "403", "reqwest", "hyper"] {
        assert!(
            !line.contains(internal),
            "the line shows {internal:?}: {stderr}"
        );
    }
}

/// S3 as it answers credentials it does not know.
const INVALID_KEY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>\
    InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our \
    records.</Message><RequestId>E2E</RequestId></Error>";

/// moto accepts any credentials (and answers a presigned request it would check with a 500),
/// so the refusal comes from a server that answers as AWS does to an unknown key.
#[test]
fn bad_credentials_stop_startup_with_one_line() {
    let refusing = CannedHttp::start("403 Forbidden", INVALID_KEY);
    // What the daemon will meet, as the S3 client sees it.
    let seen = Bucket::new(&refusing.endpoint(), "files");
    let refused = seen
        .block(seen.client().head("probe"))
        .expect_err("the fake service refuses everything");
    assert_eq!(refused.kind(), s3store::ErrorKind::Denied, "{refused}");
    let state = tmpdir_named("e2e-s3-state-");
    let stderr = DaemonBuilder::s3("s3://files", &refusing.endpoint())
        .state_dir(state.path())
        .refuses_to_start();
    assert_one_clear_line(&stderr, &["credential", "denied", "access", "key"]);
}

#[test]
fn an_unreachable_endpoint_stops_startup_with_one_line() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let state = tmpdir_named("e2e-s3-state-");
    let stderr = DaemonBuilder::s3("s3://files", &closed)
        .state_dir(state.path())
        .refuses_to_start();
    assert_one_clear_line(&stderr, &["answer", "reach", "connect", "unavailable"]);
}

#[test]
fn a_missing_bucket_stops_startup_with_one_line() {
    let Some(moto) = Moto::start() else { return };
    let bucket = moto.bucket_named("no-such-bucket");
    let stderr = bucket.daemon().refuses_to_start();
    assert_one_clear_line(&stderr, &["bucket", "not found", "no such"]);
    assert!(stderr.contains(bucket.name()), "{stderr}");
}

/// `--check-config` names the storage and what the service honours, and what is weaker on it.
#[test]
fn check_config_reports_the_storage_and_what_it_honours() {
    let Some(t) = S3::new() else { return };
    let run = t.bucket.daemon().prefix("p").check_config().ok();
    let storage: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("# storage:"))
        .collect();
    assert!(
        storage.iter().any(|l| l.contains(&t.bucket.location("p"))),
        "no `# storage:` line for the bucket: {run}"
    );
    // moto 5 honours If-None-Match on both; the probe says so. Another server (Garage, with
    // E2E_S3_ENDPOINT) may ignore it: then the probe must say that, and a `# weaker:` line why.
    let said = storage.join("\n");
    let honoured = said.contains("put If-None-Match honoured")
        && said.contains("complete If-None-Match honoured");
    let external = std::env::var_os("E2E_S3_ENDPOINT").is_some();
    assert!(
        honoured || (external && said.contains("If-None-Match ignored")),
        "{run}"
    );
    if !honoured {
        assert!(run.stdout.contains("# weaker: no clobber"), "{run}");
    }
    // The probe cleans up after itself: nothing left in the bucket, no upload open.
    assert!(
        t.bucket.visible_keys("p/").is_empty(),
        "{:?}",
        t.bucket.keys()
    );
    assert!(t.bucket.open_uploads().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Users: homes are prefixes, read-only users cannot write

/// `alice` in `alice/`, `admin` over everything, `reader` read-only in `shared/`.
const USERS: &str = r#"
[[user]]
name = "alice"
secret = "alice's secret"
home = "alice"

[[user]]
name = "admin"
secret = "admin's secret"
home = "/"

[[user]]
name = "reader"
secret = "reader's secret"
home = "shared"
read_only = true
"#;

#[test]
fn homes_are_prefixes_and_read_only_users_only_read() {
    let Some(t) = S3::new() else { return };
    let etc = tmpdir_named("e2e-s3-etc-");
    let users = etc.path().join("users.toml");
    write_private(&users, USERS);
    let daemon = t.daemon().prefix("srv").arg("--users").arg(&users).start();
    let keys = Keys::new();
    let login = |user: &str, secret: &str| t.cli(&daemon).user(user, keys.secret(user, secret));
    write_random(t.local("a.bin"), PART + 3, 1);
    write_random(t.local("s.bin"), 3000, 2);

    login("alice", "alice's secret")
        .cmds("put a.bin; mkdir docs; put a.bin docs/a.bin")
        .run()
        .ok();
    login("admin", "admin's secret")
        .cmds("mkdir shared; put s.bin shared/s.bin")
        .run()
        .ok();
    // A home's own marker may or may not be there (a home is a prefix); all else must.
    let mut stored = t.bucket.visible_keys("srv/");
    stored.retain(|k| k != "alice/");
    assert_eq!(
        stored,
        [
            "alice/a.bin",
            "alice/docs/",
            "alice/docs/a.bin",
            "shared/",
            "shared/s.bin"
        ],
        "bucket: {:?}",
        t.bucket.keys()
    );
    assert!(
        t.bucket.keys().iter().all(|k| k.starts_with("srv/")),
        "a key outside the prefix: {:?}",
        t.bucket.keys()
    );

    // Alice sees her home as `/`, and nothing of the others'.
    let run = login("alice", "alice's secret").cmds("ls /").run().ok();
    assert_eq!(lines(&run.stdout), ["a.bin", "docs/"], "{run}");
    login("alice", "alice's secret")
        .cmds("get ../shared/s.bin x.bin")
        .run()
        .fails();

    // The reader gets, and may not put, remove, rename or make directories.
    login("reader", "reader's secret")
        .cmds("get s.bin s-back.bin")
        .run()
        .ok()
        .verified(t.local("s.bin"), 1);
    assert_same_file(t.local("s.bin"), t.local("s-back.bin"));
    let before = t.bucket.keys();
    login("reader", "reader's secret")
        .cmds("put a.bin")
        .run()
        .exits(5)
        .one_line_error()
        .stderr_has("read-only");
    for cmd in ["rm s.bin", "mv s.bin t.bin", "mkdir d"] {
        login("reader", "reader's secret")
            .cmds(cmd)
            .run()
            .exits(5)
            .stderr_has_any(&["read-only", "denied"])
            .no_internals();
    }
    assert_eq!(
        t.bucket.keys(),
        before,
        "a read-only user changed the bucket"
    );
    assert!(t.bucket.open_uploads().is_empty());
}
