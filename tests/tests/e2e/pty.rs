//! The interactive shell, driven through a real pseudo-terminal as a person would: the prompt,
//! tab completion of remote names, a failed command that leaves the shell where it was, Ctrl-C
//! at the prompt and during a transfer, and Ctrl-D. The shell's history goes to a temporary home,
//! never the real one.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rexpect::session::{spawn_with_options, Options, PtySession};

use crate::util::{
    assert_missing, assert_same_file, bin, md5_file, names, staged_bytes, tmpdir, wait_until,
    write_private, write_random, Daemon, Site, MIB,
};

/// How long the shell may take to show what a step waits for: up to a whole transfer of
/// [`BIG_UPLOAD`], on a debug build, maybe next to other tests.
const STEP_TIMEOUT_MS: u64 = 60_000;
/// How long a transfer may take to put its first bytes on disk.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The download interrupted by Ctrl-C: a debug build needs seconds for it (about 200 MB/s here),
/// the key lands tens of milliseconds after the first bytes, and it is never fetched whole.
const BIG_DOWNLOAD: u64 = 512 * MIB;
/// The upload interrupted by Ctrl-C and then resumed, so sent almost whole: still on the wire
/// long after the key is pressed (about 1 s at the 120 MB/s of a debug build), yet quick to
/// finish.
const BIG_UPLOAD: u64 = 128 * MIB;
/// The complete local file whose check Ctrl-C interrupts: about a second to hash on each side,
/// so the key lands well inside it, yet small enough not to slow the tests beside it.
/// Long enough to check that Ctrl-C lands while it runs, even on a loaded machine (MD5 takes
/// well over a second for it), and free to make: the files are sparse.
const BIG_CHECK: u64 = 1024 * MIB;

/// `ftp-cli ADDR` on a pseudo-terminal, in `cwd`, with `home` as its home and data directory.
fn shell(daemon: &Daemon, cwd: &Path, home: &Path) -> PtySession {
    let addr = daemon.addr().to_string();
    shell_with(&[addr.as_str()], daemon, cwd, home)
}

/// `ftp-cli ARGS --fingerprint FP` on a pseudo-terminal, as [`shell`] starts it.
fn shell_with(args: &[&str], daemon: &Daemon, cwd: &Path, home: &Path) -> PtySession {
    shell_cmd(Command::new(bin("ftp-cli")), args, daemon, cwd, home)
}

/// [`shell_with`] on a terminal `cols` columns wide (set by `stty` before ftp-cli starts).
fn shell_at_width(
    cols: u16,
    args: &[&str],
    daemon: &Daemon,
    cwd: &Path,
    home: &Path,
) -> PtySession {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("stty cols {cols} rows 24 && exec \"$0\" \"$@\""))
        .arg(bin("ftp-cli"));
    shell_cmd(cmd, args, daemon, cwd, home)
}

fn shell_cmd(
    mut cmd: Command,
    args: &[&str],
    daemon: &Daemon,
    cwd: &Path,
    home: &Path,
) -> PtySession {
    cmd.args(args)
        .arg("--fingerprint")
        .arg(daemon.fingerprint())
        .current_dir(cwd)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .env("SHELL", "/bin/sh")
        .env("PS1", "local-sh> ")
        .env_remove("FTP_CLI_SECRET");
    let options = Options::new()
        .timeout_ms(Some(STEP_TIMEOUT_MS))
        .strip_ansi_escape_codes(true);
    spawn_with_options(cmd, options).expect("cannot start ftp-cli on a pseudo-terminal")
}

/// Waits until the shell has printed `needle`; returns what came before it.
#[track_caller]
fn expect(sh: &mut PtySession, needle: &str) -> String {
    sh.exp_string(needle)
        .unwrap_or_else(|e| panic!("the shell never printed {needle:?}: {e}"))
}

/// Types `keys` (no Enter) and flushes them to the terminal.
/// Waits for a transfer's summary line and checks it names `file`'s MD5.
fn expect_verified(sh: &mut PtySession, file: &Path) {
    let md5 = md5_file(file);
    let summary = expect(sh, "verified");
    assert!(
        summary.contains(&md5),
        "the summary line lacks {}'s MD5 {md5}: {summary:?}",
        file.display()
    );
}

fn type_keys(sh: &mut PtySession, keys: &str) {
    sh.send(keys).expect("cannot type into the terminal");
    sh.flush().expect("cannot type into the terminal");
}

/// Presses Ctrl-D on an empty line; panics unless the shell then exits with status 0.
#[track_caller]
fn leave(sh: &mut PtySession) {
    sh.send_control('d').unwrap();
    sh.exp_eof().expect("the shell did not exit on Ctrl-D");
    // rexpect does not re-export nix's `WaitStatus`, so its `Debug` form stands in for it:
    // `Exited(Pid(1234), 0)`.
    let status = format!(
        "{:?}",
        sh.process().wait().expect("cannot wait for the shell")
    );
    assert!(
        status.starts_with("Exited(") && status.ends_with(", 0)"),
        "the shell ended with {status} on Ctrl-D, expected exit status 0"
    );
}

/// Writes `size` bytes (at least 1 MiB) to `path` fast: one pseudo-random MiB from `seed`, over
/// and over. Hundreds of MiB this way take a fraction of what [`write_random`] needs.
/// A file of `size` zero bytes that takes no disk.
fn write_sparse(path: &Path, size: u64) {
    let file =
        fs::File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    file.set_len(size)
        .unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
}

fn write_repeated(path: &Path, size: u64, seed: u64) {
    write_random(path, MIB, seed);
    let block = fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut left = size.saturating_sub(MIB);
    while left > 0 {
        let n = left.min(MIB) as usize;
        out.write_all(&block[..n]).expect("cannot write test data");
        left -= n as u64;
    }
}

/// The size of the file at `path`; 0 while there is none.
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

#[test]
fn shell_completes_remote_names_and_obeys_ctrl_c_and_ctrl_d() {
    let daemon = Daemon::start();
    write_random(daemon.path("photo-2024.jpg"), 300_000, 24);
    fs::create_dir(daemon.path("albums 2023")).unwrap();
    write_random(daemon.path("albums 2023/inside.jpg"), 1000, 23);
    let work = tmpdir();
    let home = tmpdir();
    let addr = daemon.addr();
    let prompt = |dir: &str| format!("ftp {addr}:{dir}> ");

    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt("/"));

    // `get pho` + TAB completes the remote name; Enter downloads it into the local directory.
    type_keys(&mut sh, "get pho");
    expect(&mut sh, "get pho");
    type_keys(&mut sh, "\t");
    expect(&mut sh, "get photo-2024.jpg");
    type_keys(&mut sh, "\r");
    expect_verified(&mut sh, &daemon.path("photo-2024.jpg"));
    expect(&mut sh, &prompt("/"));
    assert_same_file(
        daemon.path("photo-2024.jpg"),
        work.path().join("photo-2024.jpg"),
    );

    // A directory completes with its space escaped and a trailing slash; `cd` then shows in the
    // prompt.
    type_keys(&mut sh, "cd alb");
    expect(&mut sh, "cd alb");
    type_keys(&mut sh, "\t");
    expect(&mut sh, "cd albums\\ 2023/");
    type_keys(&mut sh, "\r");
    expect(&mut sh, &prompt("/albums 2023"));

    // A failed `cd` is reported, and the shell stays where it was.
    type_keys(&mut sh, "cd nope\r");
    expect(&mut sh, "nope: no such file or directory");
    expect(&mut sh, &prompt("/albums 2023"));
    type_keys(&mut sh, "pwd\r");
    expect(&mut sh, "\n/albums 2023\r\n");
    expect(&mut sh, &prompt("/albums 2023"));

    // Ctrl-C at the prompt throws the half-typed line away, unrun, and prompts again: had the
    // line been kept, the `pwd` typed next would make `mkdir half-typedpwd`.
    type_keys(&mut sh, "mkdir half-typed");
    expect(&mut sh, "mkdir half-typed");
    sh.send_control('c').unwrap();
    expect(&mut sh, &prompt("/albums 2023"));
    let status = format!("{:?}", sh.process().status());
    assert_eq!(status, "Some(StillAlive)", "Ctrl-C ended the shell");
    type_keys(&mut sh, "pwd\r");
    expect(&mut sh, "\n/albums 2023\r\n");
    expect(&mut sh, &prompt("/albums 2023"));
    assert_missing(daemon.path("albums 2023/half-typed"));

    // Ctrl-D on an empty line leaves, with status 0.
    leave(&mut sh);

    // The history went to the temporary data directory.
    let history = home.path().join("data/ftp-cli/history");
    let history = fs::read_to_string(&history)
        .unwrap_or_else(|e| panic!("no history at {}: {e}", history.display()));
    assert!(
        history.contains("get photo-2024.jpg"),
        "history: {history:?}"
    );
}

#[test]
fn ctrl_c_during_a_transfer_cancels_it_and_keeps_the_session() {
    let daemon = Daemon::start();
    write_repeated(&daemon.path("big.bin"), BIG_DOWNLOAD, 41);
    write_random(daemon.path("small.txt"), 10_000, 42);
    let work = tmpdir();
    let home = tmpdir();
    let upload = work.path().join("upload.bin");
    write_repeated(&upload, BIG_UPLOAD, 43);
    let prompt = format!("ftp {}:/> ", daemon.addr());

    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt);

    // Ctrl-C once the download's first bytes are on disk stops it, and the shell prompts again.
    let part = work.path().join("big.bin.ftp-part");
    type_keys(&mut sh, "get big.bin\r");
    wait_until("big.bin.ftp-part holds bytes", START_TIMEOUT, || {
        file_len(&part) > 0
    });
    sh.send_control('c').unwrap();
    // It says what is kept, and how to go on.
    expect(&mut sh, "kept in big.bin.ftp-part");
    expect(&mut sh, "get -c big.bin continues it");
    expect(&mut sh, "ftp-cli: cancelled");
    expect(&mut sh, &prompt);
    let status = format!("{:?}", sh.process().status());
    assert_eq!(status, "Some(StillAlive)", "Ctrl-C ended the shell");
    assert_missing(work.path().join("big.bin"));
    // The client told the daemon, rather than dropping the connection.
    daemon.wait_for_log(&["transfer", "big.bin", "cancelled by the client"]);

    // The connection is still in step: the next commands get their own answers.
    type_keys(&mut sh, "pwd\r");
    expect(&mut sh, "\n/\r\n");
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "get small.txt\r");
    expect_verified(&mut sh, &daemon.path("small.txt"));
    expect(&mut sh, &prompt);
    assert_same_file(daemon.path("small.txt"), work.path().join("small.txt"));
    assert_missing(work.path().join("big.bin"));

    // Ctrl-C once the upload's first bytes are staged aborts it, and nothing appears in the root.
    type_keys(&mut sh, "put upload.bin\r");
    wait_until(
        "the daemon has staged bytes of upload.bin",
        START_TIMEOUT,
        || staged_bytes(&daemon.staging()) > 0,
    );
    sh.send_control('c').unwrap();
    expect(&mut sh, "ftp-cli: cancelled");
    expect(&mut sh, &prompt);
    daemon.wait_for_log(&["transfer", "upload.bin", "upload aborted by the client"]);
    type_keys(&mut sh, "ls\r");
    expect(&mut sh, "big.bin\r\nsmall.txt\r\n");
    let rest = expect(&mut sh, &prompt);
    assert!(
        !rest.contains("upload.bin"),
        "`ls` shows the cancelled upload: {rest:?}"
    );
    assert_eq!(daemon.visible_files(), ["big.bin", "small.txt"]);

    // What was staged before Ctrl-C stays: `put -c` sends only the rest.
    type_keys(&mut sh, "put -c upload.bin\r");
    let summary = expect(&mut sh, "verified");
    assert!(
        summary.contains("of it sent this time"),
        "`put -c` did not resume the cancelled upload: {summary:?}"
    );
    assert!(
        summary.contains(&md5_file(&upload)),
        "the summary line lacks upload.bin's MD5: {summary:?}"
    );
    expect(&mut sh, &prompt);
    assert_same_file(&upload, daemon.path("upload.bin"));

    // A plain `get` of it asks rather than throwing the kept bytes away; cancel keeps them.
    let kept = file_len(&part);
    type_keys(&mut sh, "get big.bin\r");
    expect(&mut sh, "or cancel?");
    type_keys(&mut sh, "n\r");
    expect(&mut sh, "big.bin.ftp-part kept");
    expect(&mut sh, &prompt);
    assert_eq!(file_len(&part), kept, "the kept part changed");

    leave(&mut sh);
    // Only the cancelled download's verified bytes may be left beside what was asked for.
    let mut local = names(work.path());
    local.retain(|n| n != "big.bin.ftp-part");
    assert_eq!(local, ["small.txt", "upload.bin"]);
    // The session ended with a goodbye, and the daemon never saw the two sides out of step.
    daemon.wait_for_log(&["connection closed", "client said bye"]);
    let log = daemon.log();
    assert!(
        !log.contains("protocol violation") && !log.contains("framing error"),
        "ftpd logged a protocol error:\n{log}"
    );
}

/// The regression: `reget` of a large file that was already complete hashed it for seconds in
/// silence, Ctrl-C waited for the hashing to end, and the file was left renamed to `.ftp-part`.
/// Now the check shows a bar, Ctrl-C stops it at once, and the file stays as it was.
#[test]
fn ctrl_c_while_reget_checks_a_complete_file_stops_at_once_and_changes_nothing() {
    let daemon = Daemon::start();
    write_sparse(&daemon.path("big.bin"), BIG_CHECK);
    let work = tmpdir();
    let home = tmpdir();
    let local = work.path().join("big.bin");
    write_sparse(&local, BIG_CHECK);
    let before = fs::metadata(&local).unwrap();
    let prompt = format!("ftp {}:/> ", daemon.addr());

    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "reget big.bin\r");
    expect(&mut sh, "checking big.bin");
    let pressed = Instant::now();
    sh.send_control('c').unwrap();
    expect(&mut sh, "ftp-cli: cancelled");
    let took = pressed.elapsed();
    expect(&mut sh, &prompt);
    // Checking the whole file takes over a second here; stopping it, a block's worth.
    assert!(
        took < Duration::from_secs(1),
        "Ctrl-C took {took:?} to stop the check"
    );
    let after = fs::metadata(&local).unwrap();
    assert_eq!(
        names(work.path()),
        ["big.bin"],
        "Ctrl-C left the file renamed"
    );
    assert_eq!(
        (after.ino(), after.len(), after.ctime()),
        (before.ino(), before.len(), before.ctime()),
        "the cancelled check changed the file"
    );

    // Left alone, the same check ends saying so, and the session is still in step.
    type_keys(&mut sh, "reget big.bin\r");
    expect(&mut sh, "already complete");
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "pwd\r");
    expect(&mut sh, "\n/\r\n");
    expect(&mut sh, &prompt);
    leave(&mut sh);
    assert_eq!(names(work.path()), ["big.bin"]);
    assert_eq!(fs::metadata(&local).unwrap().ctime(), before.ctime());
}

/// The regression: rustyline reads the terminal in raw mode through a buffer of its own, and
/// threw what was left in it away at the end of every line, so of lines typed ahead (while a
/// command ran) or pasted without bracketed paste, only the first ran. Now every line runs, in
/// order, once.
#[test]
fn lines_typed_ahead_all_run_in_order() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let home = tmpdir();
    write_random(work.path().join("a.txt"), 5_000, 61);
    let addr = daemon.addr();
    let prompt = |dir: &str| format!("ftp {addr}:{dir}> ");

    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt("/"));
    // Typed one after another, each before the one before it is done.
    for line in [
        "mkdir photos\r",
        "cd photos\r",
        "put a.txt\r",
        "ls -l\r",
        "pwd\r",
    ] {
        type_keys(&mut sh, line);
    }
    expect_verified(&mut sh, &work.path().join("a.txt"));
    expect(&mut sh, "a.txt\r\n");
    expect(&mut sh, "\n/photos\r\n");
    expect(&mut sh, &prompt("/photos"));
    assert_same_file(work.path().join("a.txt"), daemon.path("photos/a.txt"));

    // A paste: several lines in one write.
    type_keys(&mut sh, "mkdir more\rcd more\rpwd\rlpwd\r");
    expect(&mut sh, "\n/photos/more\r\n");
    expect(&mut sh, &format!("{}\r\n", work.path().display()));
    expect(&mut sh, &prompt("/photos/more"));
    leave(&mut sh);
    let history = fs::read_to_string(home.path().join("data/ftp-cli/history")).unwrap();
    let pos = |needle: &str| {
        history
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} is not in the history: {history:?}"))
    };
    assert!(pos("mkdir photos") < pos("cd photos") && pos("cd photos") < pos("put a.txt"));
    assert!(pos("mkdir more") < pos("lpwd"));
}

/// Of `pwd` and `lpwd` typed while a download ran, only one ran.
#[test]
fn lines_typed_during_a_transfer_run_after_it() {
    let daemon = Daemon::start();
    write_repeated(&daemon.path("big.bin"), BIG_UPLOAD, 62);
    let work = tmpdir();
    let home = tmpdir();
    let prompt = format!("ftp {}:/> ", daemon.addr());

    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "get big.bin\r");
    let part = work.path().join("big.bin.ftp-part");
    wait_until("big.bin.ftp-part holds bytes", START_TIMEOUT, || {
        file_len(&part) > 0
    });
    type_keys(&mut sh, "pwd\r");
    type_keys(&mut sh, "lpwd\r");
    expect_verified(&mut sh, &daemon.path("big.bin"));
    expect(&mut sh, "\n/\r\n");
    expect(&mut sh, &format!("{}\r\n", work.path().display()));
    expect(&mut sh, &prompt);
    leave(&mut sh);
}

/// Tab lists the names when there are several (it used to cycle through them in the line),
/// after completing what they have in common.
#[test]
fn tab_lists_the_candidates() {
    let daemon = Daemon::start();
    write_random(daemon.path("photo-a.jpg"), 100, 71);
    write_random(daemon.path("photo-b.jpg"), 100, 72);
    let work = tmpdir();
    let home = tmpdir();
    let prompt = format!("ftp {}:/> ", daemon.addr());
    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "get pho");
    expect(&mut sh, "get pho");
    type_keys(&mut sh, "\t");
    expect(&mut sh, "get photo-");
    type_keys(&mut sh, "\t");
    expect(&mut sh, "photo-a.jpg");
    expect(&mut sh, "photo-b.jpg");
    // The line is still there to finish.
    type_keys(&mut sh, "b\t\r");
    expect_verified(&mut sh, &daemon.path("photo-b.jpg"));
    expect(&mut sh, &prompt);
    leave(&mut sh);
}

/// `get` onto a local file at the shell asks: overwrite, keep both (`NAME (1).EXT`), or skip.
/// Scripts refuse without `-f`, as before (overwrite.rs).
#[test]
fn get_onto_an_existing_file_asks_what_to_do() {
    let daemon = Daemon::start();
    write_random(daemon.path("x.txt"), 3000, 73);
    let work = tmpdir();
    let home = tmpdir();
    let mine = work.path().join("x.txt");
    fs::write(&mine, "my own words\n").unwrap();
    let prompt = format!("ftp {}:/> ", daemon.addr());
    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt);

    type_keys(&mut sh, "get x.txt\r");
    expect(
        &mut sh,
        "overwrite it, keep both (the new one as x (1).txt), or skip?",
    );
    type_keys(&mut sh, "s\r");
    expect(&mut sh, "skipped");
    expect(&mut sh, &prompt);
    assert_eq!(fs::read(&mine).unwrap(), b"my own words\n");

    type_keys(&mut sh, "get x.txt\r");
    expect(&mut sh, "or skip?");
    type_keys(&mut sh, "k\r");
    expect_verified(&mut sh, &daemon.path("x.txt"));
    expect(&mut sh, &prompt);
    assert_eq!(fs::read(&mine).unwrap(), b"my own words\n");
    assert_same_file(daemon.path("x.txt"), work.path().join("x (1).txt"));

    // Typed ahead, the answer comes after its question, in order.
    type_keys(&mut sh, "get x.txt\ro\rpwd\r");
    expect_verified(&mut sh, &daemon.path("x.txt"));
    expect(&mut sh, "\n/\r\n");
    expect(&mut sh, &prompt);
    assert_same_file(daemon.path("x.txt"), &mine);
    leave(&mut sh);
    assert_eq!(names(work.path()), ["x (1).txt", "x.txt"]);
}

/// `get -r` and `mget` onto existing local files ask as `get` does, and an answer "for all"
/// (`K`, `O`, `S`) settles every conflict of the tree with one question.
#[test]
fn many_file_downloads_onto_existing_files_ask_once_for_all() {
    let daemon = Daemon::start();
    fs::create_dir(daemon.path("t")).unwrap();
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        write_random(
            daemon.path(&format!("t/{name}.txt")),
            2000 + i as u64,
            80 + i as u64,
        );
    }
    write_random(daemon.path("x1.txt"), 1500, 90);
    write_random(daemon.path("x2.txt"), 1600, 91);
    let work = tmpdir();
    let home = tmpdir();
    fs::create_dir(work.path().join("t")).unwrap();
    for name in ["a", "b", "c"] {
        fs::write(work.path().join(format!("t/{name}.txt")), "mine\n").unwrap();
    }
    fs::write(work.path().join("x1.txt"), "mine\n").unwrap();
    let prompt = format!("ftp {}:/> ", daemon.addr());
    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt);

    // Three conflicts, one question: keep both, for all.
    type_keys(&mut sh, "get -r t\r");
    expect(
        &mut sh,
        "t/a.txt exists here, and 2 more: overwrite, keep both, skip?",
    );
    type_keys(&mut sh, "K\r");
    expect(&mut sh, "get -r t: 5 files");
    expect(&mut sh, &prompt);
    for name in ["a", "b", "c"] {
        assert_eq!(
            fs::read(work.path().join(format!("t/{name}.txt"))).unwrap(),
            b"mine\n"
        );
        let remote = daemon.path(&format!("t/{name}.txt"));
        assert_same_file(&remote, work.path().join(format!("t/{name} (1).txt")));
    }
    for name in ["d", "e"] {
        let remote = daemon.path(&format!("t/{name}.txt"));
        assert_same_file(&remote, work.path().join(format!("t/{name}.txt")));
    }

    // Now all five exist here: overwrite, for all.
    type_keys(&mut sh, "get -r t\r");
    expect(&mut sh, "exists here, and 4 more");
    type_keys(&mut sh, "O\r");
    expect(&mut sh, "get -r t: 5 files");
    expect(&mut sh, &prompt);
    for name in ["a", "b", "c", "d", "e"] {
        let remote = daemon.path(&format!("t/{name}.txt"));
        assert_same_file(&remote, work.path().join(format!("t/{name}.txt")));
    }

    // Ctrl-C at the question cancels the command: nothing is fetched, the shell stays.
    type_keys(&mut sh, "mget x*\r");
    expect(
        &mut sh,
        "x1.txt exists here: overwrite it, keep both, or skip?",
    );
    sh.send_control('c').unwrap();
    expect(&mut sh, "cancelled");
    expect(&mut sh, &prompt);
    assert!(!work.path().join("x2.txt").exists(), "fetched after Ctrl-C");

    // One conflict in an mget: the plain question; skipped, the other file fetched.
    type_keys(&mut sh, "mget x*\r");
    expect(
        &mut sh,
        "x1.txt exists here: overwrite it, keep both, or skip?",
    );
    type_keys(&mut sh, "s\r");
    expect(&mut sh, "mget: 1 existing file skipped");
    expect(&mut sh, "mget: 1 file");
    expect(&mut sh, &prompt);
    assert_eq!(fs::read(work.path().join("x1.txt")).unwrap(), b"mine\n");
    assert_same_file(daemon.path("x2.txt"), work.path().join("x2.txt"));
    leave(&mut sh);
}

/// The shell without a host starts unconnected; `open`, `close`, and commands that need a
/// server say so until then.
#[test]
fn the_shell_starts_without_a_host_and_opens_one() {
    let daemon = Daemon::start();
    write_random(daemon.path("there.txt"), 10, 74);
    let work = tmpdir();
    let home = tmpdir();
    let addr = daemon.addr().to_string();
    let mut sh = shell_with(&[], &daemon, work.path(), home.path());
    expect(&mut sh, "ftp> ");
    type_keys(&mut sh, "ls\r");
    expect(&mut sh, "not connected: open HOST");
    expect(&mut sh, "ftp> ");
    type_keys(&mut sh, &format!("open {addr}\r"));
    let prompt = format!("ftp {addr}:/> ");
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "ls\r");
    expect(&mut sh, "there.txt");
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "close\r");
    expect(&mut sh, "ftp> ");
    leave(&mut sh);
}

/// The regression: a wrong password left a prompt where every command failed. Now the shell
/// asks again.
#[test]
fn a_failed_login_asks_for_the_password_again() {
    let site = Site::new();
    let users = site.path("etc/users.toml");
    fs::create_dir_all(users.parent().unwrap()).unwrap();
    write_private(
        &users,
        "[[user]]\nname = \"alice\"\nsecret = \"alice's secret\"\nhome = \"alice\"\n",
    );
    let daemon = site
        .daemon()
        .arg("--users")
        .arg(&users)
        .args(["--login-penalty", "0s"])
        .start();
    write_random(daemon.path("alice/hers.txt"), 10, 75);
    let work = tmpdir();
    let home = tmpdir();
    let wrong = work.path().join("wrong.secret");
    write_private(&wrong, "not alice's secret");
    let addr = daemon.addr().to_string();
    let wrong = wrong.display().to_string();
    let args = [
        addr.as_str(),
        "-u",
        "alice",
        "--secret-file",
        wrong.as_str(),
    ];
    let mut sh = shell_with(&args, &daemon, work.path(), home.path());
    expect(&mut sh, "authentication failed for alice");
    expect(&mut sh, "try again");
    expect(&mut sh, "Password for alice@");
    type_keys(&mut sh, "alice's secret\r");
    let prompt = format!("ftp alice@{addr}:/> ");
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "ls\r");
    expect(&mut sh, "hers.txt");
    expect(&mut sh, &prompt);
    leave(&mut sh);
}

/// A line typed ahead of a password prompt is never taken as the password: it is dropped,
/// and the user told. Here `ls` typed right after a wrong password would have been the
/// second try's password.
#[test]
fn a_line_typed_ahead_is_never_taken_as_the_password() {
    let site = Site::new();
    let users = site.path("etc/users.toml");
    fs::create_dir_all(users.parent().unwrap()).unwrap();
    write_private(
        &users,
        "[[user]]\nname = \"alice\"\nsecret = \"alice's secret\"\nhome = \"alice\"\n",
    );
    let daemon = site
        .daemon()
        .arg("--users")
        .arg(&users)
        .args(["--login-penalty", "0s"])
        .start();
    let work = tmpdir();
    let home = tmpdir();
    let addr = daemon.addr().to_string();
    let mut sh = shell_with(
        &[addr.as_str(), "-u", "alice"],
        &daemon,
        work.path(),
        home.path(),
    );
    expect(&mut sh, "Password for alice@");
    // One write: the terminal hands the prompt one line, and `ls` waits behind it.
    type_keys(&mut sh, "wrong\rls\r");
    expect(&mut sh, "try again");
    let before = expect(&mut sh, "not taken as the password");
    assert!(
        !before.contains("ls"),
        "the typed-ahead line was echoed: {before:?}"
    );
    expect(&mut sh, "Password for alice@");
    type_keys(&mut sh, "alice's secret\r");
    let prompt = format!("ftp alice@{addr}:/> ");
    let before = expect(&mut sh, &prompt);
    assert!(
        !before.contains("try again"),
        "a second try failed: {before:?}"
    );
    type_keys(&mut sh, "pwd\r");
    expect(&mut sh, "\n/\r\n");
    leave(&mut sh);
}

/// History is written as each command runs, `history` shows it, a mistyped command gets a
/// suggestion, `!` alone is a shell, and help fits the terminal.
#[test]
fn history_suggestions_a_local_shell_and_help() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let home = tmpdir();
    let prompt = format!("ftp {}:/> ", daemon.addr());
    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "pwd\r");
    expect(&mut sh, "\n/\r\n");
    expect(&mut sh, &prompt);
    let file = home.path().join("data/ftp-cli/history");
    let saved = fs::read_to_string(&file).unwrap_or_default();
    assert!(
        saved.contains("pwd"),
        "pwd is not in the history yet: {saved:?}"
    );

    type_keys(&mut sh, "lss\r");
    expect(&mut sh, "did you mean ls?");
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "history\r");
    expect(&mut sh, "1  pwd");
    expect(&mut sh, "2  lss");
    expect(&mut sh, &prompt);

    // Typed once the shell is there: what is typed ahead is the line editor's, not the
    // shell's.
    type_keys(&mut sh, "!\r");
    expect(&mut sh, "local-sh> ");
    type_keys(&mut sh, "echo inside-$((40+2))\r");
    expect(&mut sh, "inside-42");
    type_keys(&mut sh, "exit\r");
    expect(&mut sh, &prompt);

    type_keys(&mut sh, "help\r");
    let help = expect(&mut sh, &prompt);
    assert!(help.contains("mget"), "{help:?}");
    for line in help.lines() {
        assert!(
            line.chars().count() <= 80,
            "a help line is wider than the terminal: {line:?}"
        );
    }
    leave(&mut sh);
}

/// `-c` at a terminal draws a bar, as scp does (scripts whose stderr is not a terminal get
/// none: every other test's stderr is a pipe); a long name loses its middle to an ellipsis;
/// before the first byte the bar shows no "0 B/s".
#[test]
fn commands_given_with_c_draw_a_bar_at_a_terminal() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let home = tmpdir();
    let name = "a-rather-long-name-for-an-upload-of-some-size.bin";
    write_repeated(&work.path().join(name), 64 * MIB, 61);
    let addr = daemon.addr().to_string();
    let put = format!("put {name}");
    let mut sh = shell_with(
        &[addr.as_str(), "-c", &put],
        &daemon,
        work.path(),
        home.path(),
    );
    let before = expect(&mut sh, "verified");
    // The terminal's bytes come back as Latin-1 here: the ellipsis between is three of them.
    let bar = before.split('\r').next().unwrap_or_default();
    assert!(
        bar.starts_with("a-rather-") && bar.contains("size.bin ["),
        "no bar: {before:?}"
    );
    assert!(
        !bar.contains("long-name"),
        "the name is not shortened: {bar:?}"
    );
    assert!(
        !before.contains("0 B/s"),
        "a rate before the first byte: {before:?}"
    );
    sh.exp_eof().expect("ftp-cli -c did not exit");
    assert_same_file(work.path().join(name), daemon.path(name));
}

/// At a 60-column terminal, every line `-c` draws fits: bars, a file's summary and a tree's
/// total, with long names shortened and the digest whole.
#[test]
fn bars_and_summaries_fit_a_sixty_column_terminal() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let home = tmpdir();
    let name = "a-rather-long-name-for-an-upload-of-some-size-indeed.bin";
    write_repeated(&work.path().join(name), 16 * MIB, 62);
    let tree = work
        .path()
        .join("a-tree-with-a-name-long-enough-to-need-shortening");
    fs::create_dir(&tree).unwrap();
    for i in 0..3 {
        write_random(tree.join(format!("f{i}")), 1000, i);
    }
    let addr = daemon.addr().to_string();
    let cmds = format!("put {name}; put -r a-tree-with-a-name-long-enough-to-need-shortening");
    let mut sh = shell_at_width(
        60,
        &[addr.as_str(), "-c", &cmds],
        &daemon,
        work.path(),
        home.path(),
    );
    let out = sh.exp_eof().expect("ftp-cli -c did not exit");
    // The terminal's bytes come back as Latin-1 here: an ellipsis is three of them.
    let out = out.replace("\u{e2}\u{80}\u{a6}", "\u{2026}");
    let md5 = md5_file(work.path().join(name));
    assert!(
        out.lines()
            .any(|l| l.trim() == format!("MD5 {md5} verified")),
        "the digest is not whole on a line of its own: {out:?}"
    );
    assert!(out.contains("files, "), "no total line: {out:?}");
    for line in out.split(['\n', '\r']) {
        assert!(
            line.chars().count() <= 60,
            "wider than 60 columns: {line:?} in {out:?}"
        );
    }
    assert_same_file(work.path().join(name), daemon.path(name));
}

/// A transfer whose bytes stop coming says "stalled" on its bar (here the daemon is stopped
/// with SIGSTOP mid-download), and finishes when they come again.
#[test]
fn a_stalled_transfer_says_stalled() {
    let daemon = Daemon::start();
    write_sparse(&daemon.path("big.bin"), BIG_DOWNLOAD);
    let work = tmpdir();
    let home = tmpdir();
    let addr = daemon.addr().to_string();
    let mut sh = shell_with(
        &[addr.as_str(), "-c", "get big.bin"],
        &daemon,
        work.path(),
        home.path(),
    );
    let part = work.path().join("big.bin.ftp-part");
    wait_until("big.bin.ftp-part holds bytes", START_TIMEOUT, || {
        file_len(&part) > 0
    });
    daemon.signal("STOP");
    let stalled = sh.exp_string("stalled");
    daemon.signal("CONT");
    stalled.unwrap_or_else(|e| panic!("the bar never said stalled: {e}"));
    expect(&mut sh, "verified");
    sh.exp_eof().expect("ftp-cli -c did not exit");
    assert_eq!(file_len(&work.path().join("big.bin")), BIG_DOWNLOAD);
}

/// Ctrl-C during `get -r` says, as after one file, that what moved is kept and that
/// `get -r -c` continues; that then completes the tree.
#[test]
fn ctrl_c_during_a_tree_says_how_to_continue() {
    let daemon = Daemon::start();
    fs::create_dir(daemon.path("big")).unwrap();
    for i in 0..4 {
        write_repeated(&daemon.path(&format!("big/b{i}.bin")), 128 * MIB, 50 + i);
    }
    let work = tmpdir();
    let home = tmpdir();
    let prompt = format!("ftp {}:/> ", daemon.addr());
    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "get -r big\r");
    let local = work.path().join("big");
    wait_until("part of the tree here", START_TIMEOUT, || {
        fs::read_dir(&local)
            .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false)
    });
    sh.send_control('c').unwrap();
    expect(&mut sh, "get -r big: stopped;");
    expect(&mut sh, "get -r -c big continues it");
    expect(&mut sh, &prompt);
    type_keys(&mut sh, "get -r -c big\r");
    expect(&mut sh, "get -r big: 4 files");
    expect(&mut sh, &prompt);
    for i in 0..4 {
        let name = format!("big/b{i}.bin");
        assert_same_file(daemon.path(&name), work.path().join(&name));
    }
    leave(&mut sh);
}

/// The README's "A short tour", typed into the shell as written (in temp directories, with
/// the key trusted by --fingerprint): each step works.
#[test]
fn the_readme_tour_runs_as_written() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let home = tmpdir();
    let pictures = home.path().join("Pictures/2024");
    fs::create_dir_all(pictures.join("party")).unwrap();
    write_random(pictures.join("beach.jpg"), 2_483_921, 71);
    write_random(pictures.join("party/cake.jpg"), 10_000, 72);
    let addr = daemon.addr();
    let prompt = |dir: &str| format!("ftp {addr}:{dir}> ");
    let mut sh = shell(&daemon, work.path(), home.path());
    expect(&mut sh, &prompt("/"));
    type_keys(&mut sh, "mkdir photos\r");
    expect(&mut sh, &prompt("/"));
    type_keys(&mut sh, "cd photos\r");
    expect(&mut sh, &prompt("/photos"));
    for (typed, shows) in [
        ("put -r ~/Pictures/2024", "0 failed".to_owned()),
        ("ls -l 2024", "party/".to_owned()),
        ("get 2024/beach.jpg", "verified".to_owned()),
        (
            "stat --md5 2024/beach.jpg",
            md5_file(pictures.join("beach.jpg")),
        ),
        // -f: beach.jpg is here already, from the get before.
        ("mget -f 2024/*.jpg", "0 failed".to_owned()),
        ("!ls -l", "beach.jpg".to_owned()),
        ("help", "mkdir".to_owned()),
    ] {
        type_keys(&mut sh, &format!("{typed}\r"));
        expect(&mut sh, &shows);
        expect(&mut sh, &prompt("/photos"));
    }
    assert_same_file(pictures.join("beach.jpg"), work.path().join("beach.jpg"));
    type_keys(&mut sh, "quit\r");
    sh.exp_eof().expect("quit did not end the shell");
}
