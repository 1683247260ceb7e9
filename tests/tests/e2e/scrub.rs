//! `ftpd scrub` and `ftpd rerecord` on a root the daemon filled: rot found (exit 1), a clean
//! root passes (exit 0), files without a valid record counted and, with `--verbose`, listed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};

use crate::util::{bin, clean_env, tmpdir, write_random, Daemon, MIB};

/// `ftpd ARGS --root R --state-dir S` for `ftpd`'s root, run to its end.
fn admin(ftpd: &Daemon, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("ftpd"));
    clean_env(&mut cmd);
    cmd.args(&args[..1])
        .arg("--root")
        .arg(ftpd.root())
        .arg("--state-dir")
        .arg(ftpd.state())
        .args(&args[1..])
        .stdin(Stdio::null());
    cmd.output().expect("cannot run ftpd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Flips one bit at `offset` of `file`, putting its mtime back (the ctime moves on).
fn flip(file: &std::path::Path, offset: u64) {
    let mtime = std::fs::metadata(file).unwrap().modified().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[byte[0] ^ 0x10]).unwrap();
    f.set_modified(mtime).unwrap();
}

/// What a disk's rot looks like to the scrub: the bytes changed, the record still describes
/// the file. Done by flipping the bit and then writing the file's new change time into the
/// record of `name` (the only record in the state directory naming it).
fn rot(ftpd: &Daemon, name: &str, offset: u64) {
    let file = ftpd.path(name);
    flip(&file, offset);
    let meta = std::fs::metadata(&file).unwrap();
    let digests = ftpd.state().join("digests");
    let record = std::fs::read_dir(&digests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["path"] == name
        })
        .unwrap_or_else(|| panic!("no record of {name} in {}", digests.display()));
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    v["ctime"] = meta.ctime().into();
    v["ctime_nsec"] = meta.ctime_nsec().into();
    std::fs::write(&record, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn scrub_finds_rot_passes_clean_files_and_counts_unverifiable_ones() {
    let ftpd = Daemon::start();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 3 * MIB + 5, 1);
    write_random(work.path().join("b.bin"), 1000, 2);
    ftpd.cli()
        .cwd(&work)
        .cmds("put a.bin; put b.bin")
        .run()
        .ok();
    std::fs::write(ftpd.path("by-hand.txt"), "not uploaded").unwrap();

    let clean = admin(&ftpd, &["scrub"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    assert!(text(&clean.stdout).is_empty(), "{}", text(&clean.stdout));
    let log = text(&clean.stderr);
    for needle in ["intact=2", "damaged=0", "unverifiable=1"] {
        assert!(log.contains(needle), "no {needle:?} in {log}");
    }

    rot(&ftpd, "a.bin", 2 * MIB + 3);
    let damaged = admin(&ftpd, &["scrub"]);
    assert_eq!(damaged.status.code(), Some(1), "{}", text(&damaged.stderr));
    let out = text(&damaged.stdout);
    assert!(out.contains("damaged \"/a.bin\""), "{out}");
    assert!(!out.contains("b.bin") && !out.contains("by-hand"), "{out}");
    assert!(
        text(&damaged.stderr).contains("damaged=1"),
        "{}",
        text(&damaged.stderr)
    );

    // Changed through the file system (the ctime moved): the record is void, so the scrub
    // cannot tell a rot from an edit and says unverifiable, not damaged.
    flip(&ftpd.path("b.bin"), 7);
    let verbose = admin(&ftpd, &["scrub", "--verbose"]);
    assert_eq!(verbose.status.code(), Some(1));
    let out = text(&verbose.stdout);
    assert!(
        out.contains("unverifiable \"/b.bin\": no valid record"),
        "{out}"
    );
    assert!(out.contains("unverifiable \"/by-hand.txt\""), "{out}");
    assert!(
        text(&verbose.stderr).contains("unverifiable=2"),
        "{}",
        text(&verbose.stderr)
    );

    // The admin says both changes were meant: recorded afresh, the root scrubs clean.
    let rerecord = admin(&ftpd, &["rerecord", "a.bin", "/b.bin", "by-hand.txt"]);
    assert!(rerecord.status.success(), "{}", text(&rerecord.stderr));
    assert!(
        text(&rerecord.stdout).contains("recorded \"/a.bin\" md5:"),
        "{}",
        text(&rerecord.stdout)
    );
    let clean = admin(&ftpd, &["scrub"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean.stderr));
    assert!(
        text(&clean.stderr).contains("intact=3"),
        "{}",
        text(&clean.stderr)
    );
}

#[test]
fn rerecord_refuses_a_path_outside_the_root() {
    let ftpd = Daemon::start();
    let out = admin(&ftpd, &["rerecord", "../etc/passwd"]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
}

/// Regression: a file rotted on the server's disk (size and times unchanged) failed every
/// download against its recorded digests, and each failure was retried, in vain. Now the
/// download says the stored copy is damaged, once, tells the server, which marks it for the
/// scrub; rerecording it (the admin accepts the bytes as they are) makes downloads work again.
#[test]
fn a_rotted_file_is_reported_damaged_once_and_scrubbed_first() {
    let ftpd = Daemon::start();
    let work = tmpdir();
    write_random(work.path().join("a.bin"), 3 * MIB + 5, 1);
    ftpd.cli().cwd(&work).cmds("put a.bin").run().ok();
    rot(&ftpd, "a.bin", 2 * MIB + 3);

    let down = tmpdir();
    let failed = ftpd
        .cli()
        .cwd(&down)
        .cmds("get a.bin")
        .run()
        .exits(11)
        .stderr_has("a.bin: the copy stored on the server is damaged")
        .stderr_has("the server's admin has been told")
        .one_line_error();
    assert!(!failed.stderr.contains("reconnecting"), "{failed}");
    assert!(!down.path().join("a.bin").exists());
    ftpd.wait_for_log(&["client reports a damaged file", "/a.bin"]);
    ftpd.wait_for_log(&["damaged file confirmed", "/a.bin"]);
    // Exactly one attempt: one download in the transfer log, one connection.
    let log = ftpd.log();
    let gets = log
        .lines()
        .filter(|l| l.contains("transfer") && l.contains("op=\"get\""))
        .count();
    assert_eq!(gets, 1, "{log}");
    assert_eq!(log.matches("connection opened").count(), 2, "{log}");

    // The scrub checks the reported file first, then the rest, and settles the report.
    let scrub = admin(&ftpd, &["scrub"]);
    assert_eq!(scrub.status.code(), Some(1), "{}", text(&scrub.stderr));
    let out = text(&scrub.stdout);
    assert!(out.starts_with("reported \"/a.bin\": damaged\n"), "{out}");
    assert_eq!(out.matches("damaged \"/a.bin\"").count(), 1, "{out}");
    assert!(text(&scrub.stderr).contains("damaged=1"));
    let again = admin(&ftpd, &["scrub"]);
    assert!(!text(&again.stdout).contains("reported"), "settled");

    let rerecord = admin(&ftpd, &["rerecord", "a.bin"]);
    assert!(rerecord.status.success(), "{}", text(&rerecord.stderr));
    ftpd.cli().cwd(&down).cmds("get a.bin").run().ok();
    assert_eq!(
        std::fs::read(down.path().join("a.bin")).unwrap(),
        std::fs::read(ftpd.path("a.bin")).unwrap()
    );
}

/// `--scrub-every` finds rot on its own, no client asking, and logs the file and a summary.
#[test]
fn the_scheduled_scrub_finds_rot_without_a_client() {
    let ftpd = Daemon::with_args(["--scrub-every", "1s"]);
    let work = tmpdir();
    write_random(work.path().join("a.bin"), MIB + 10, 3);
    write_random(work.path().join("b.bin"), 100, 4);
    ftpd.cli()
        .cwd(&work)
        .cmds("put a.bin; put b.bin")
        .run()
        .ok();
    rot(&ftpd, "a.bin", 7);
    ftpd.wait_for_log(&["scrub found a damaged file", "/a.bin"]);
    ftpd.wait_for_log(&["scheduled scrub done", "damaged=1", "checked=2"]);
    assert!(!ftpd.log().contains("/b.bin\" from"), "{}", ftpd.log());
}
