//! `mirror` both ways: only what is new or changed moves, a second run moves nothing,
//! `--delete`, `--dry-run`, `--checksum` against the digests the server recorded, filters.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::util::{file_digests as tree, tmpdir, write_random, Daemon, Run};

/// A source tree: `n` files in two directories, one empty directory.
fn source(dir: &Path, n: u64) {
    fs::create_dir_all(dir.join("a/b")).unwrap();
    fs::create_dir_all(dir.join("empty")).unwrap();
    for i in 0..n {
        let sub = if i % 2 == 0 { "a" } else { "a/b" };
        write_random(dir.join(sub).join(format!("f{i:02}")), 1000 + i * 97, i);
    }
}

/// `commands` run by the client in `work`, expected to succeed.
#[track_caller]
fn ok(daemon: &Daemon, work: &tempfile::TempDir, commands: &str) -> Run {
    daemon.cli().cwd(work.path()).cmds(commands).run().ok()
}

/// The summary line of a run.
fn summary(stdout: &str) -> &str {
    stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("mirror:"))
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"))
}

#[test]
fn mirror_up_then_down_moves_only_what_changed() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let src = work.path().join("src");
    source(&src, 20);

    // Up: all new; again: nothing moves.
    let run = ok(&daemon, &work, "mirror -R src up");
    assert!(
        summary(&run.stdout).starts_with("mirror: 20 new, 0 changed, 0 deleted, 0 unchanged"),
        "{run}"
    );
    assert_eq!(tree(&daemon.path("up")), tree(&src));
    assert!(
        daemon.path("up/empty").is_dir(),
        "empty directories are made too"
    );
    let run = ok(&daemon, &work, "mirror -R src up");
    assert!(
        summary(&run.stdout).starts_with("mirror: 0 new, 0 changed, 0 deleted, 20 unchanged, 0 B"),
        "{run}"
    );

    // One file changed, one new: exactly those move.
    write_random(src.join("a/f00"), 5000, 99);
    write_random(src.join("new.txt"), 10, 98);
    let run = ok(&daemon, &work, "mirror -R src up");
    assert!(
        summary(&run.stdout).starts_with("mirror: 1 new, 1 changed, 0 deleted, 19 unchanged"),
        "{run}"
    );
    assert_eq!(tree(&daemon.path("up")), tree(&src));

    // Down into a new directory, then again: nothing moves.
    let run = ok(&daemon, &work, "mirror up back");
    assert!(summary(&run.stdout).starts_with("mirror: 21 new"), "{run}");
    assert_eq!(tree(&work.path().join("back")), tree(&src));
    let run = ok(&daemon, &work, "mirror up back");
    assert!(
        summary(&run.stdout).starts_with("mirror: 0 new, 0 changed, 0 deleted, 21 unchanged"),
        "{run}"
    );
}

#[test]
fn mirror_delete_and_dry_run() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let src = work.path().join("src");
    source(&src, 6);
    ok(&daemon, &work, "mirror -R src up");
    fs::remove_file(src.join("a/b/f01")).unwrap();
    fs::remove_dir_all(src.join("empty")).unwrap();

    // Without --delete, what the source lost stays.
    let run = ok(&daemon, &work, "mirror -R src up");
    assert!(summary(&run.stdout).contains("0 deleted"), "{run}");
    assert!(daemon.path("up/a/b/f01").exists());

    // A dry run says what it would do and changes nothing.
    let before = tree(&daemon.path("up"));
    let run = ok(&daemon, &work, "mirror -R --delete --dry-run src up");
    assert!(run.stdout.contains("delete a/b/f01"), "{run}");
    assert!(run.stdout.contains("delete empty"), "{run}");
    assert!(summary(&run.stdout).contains("2 deleted"), "{run}");
    assert!(summary(&run.stdout).contains("dry run"), "{run}");
    assert_eq!(tree(&daemon.path("up")), before);
    assert!(daemon.path("up/empty").is_dir());

    let run = ok(&daemon, &work, "mirror -R --delete src up");
    assert!(summary(&run.stdout).contains("2 deleted"), "{run}");
    assert_eq!(tree(&daemon.path("up")), tree(&src));
    assert!(!daemon.path("up/empty").exists());

    // Down, with --delete: a local file the remote tree lacks goes.
    ok(&daemon, &work, "mirror up back");
    fs::write(work.path().join("back/stray"), "x").unwrap();
    ok(&daemon, &work, "mirror --delete up back");
    assert!(!work.path().join("back/stray").exists());
    assert_eq!(tree(&work.path().join("back")), tree(&src));
}

/// A file changed in place, same size, its modification time put back: size and time say
/// unchanged; `--checksum` finds it (locally by hashing; on the server by the digest recorded
/// at upload, which the change voids, so the server hashes it).
#[test]
fn mirror_checksum_catches_a_same_size_same_mtime_change() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let src = work.path().join("src");
    source(&src, 4);
    ok(&daemon, &work, "mirror -R src up");
    ok(&daemon, &work, "mirror up back");

    // Locally: the downloaded copy altered, size and mtime kept.
    let copy = work.path().join("back/a/f00");
    let mtime = fs::metadata(&copy).unwrap().modified().unwrap();
    let mut bytes = fs::read(&copy).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&copy, &bytes).unwrap();
    set_mtime(&copy, mtime);
    let run = ok(&daemon, &work, "mirror up back");
    assert!(
        summary(&run.stdout).contains("0 changed"),
        "size and time cannot see it: {run}"
    );
    let run = ok(&daemon, &work, "mirror --checksum up back");
    assert!(
        summary(&run.stdout).starts_with("mirror: 0 new, 1 changed"),
        "{run}"
    );
    assert_eq!(tree(&work.path().join("back")), tree(&src));

    // On the server: the stored file altered in place, size and mtime kept.
    let stored = daemon.path("up/a/b/f01");
    let mtime = fs::metadata(&stored).unwrap().modified().unwrap();
    let mut bytes = fs::read(&stored).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&stored, &bytes).unwrap();
    set_mtime(&stored, mtime);
    let run = ok(&daemon, &work, "mirror -R --checksum src up");
    assert!(
        summary(&run.stdout).starts_with("mirror: 0 new, 1 changed"),
        "{run}"
    );
    assert_eq!(tree(&daemon.path("up")), tree(&src));
}

#[test]
fn mirror_filters_leave_out_and_take_only() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("tmp")).unwrap();
    fs::write(src.join("a.jpg"), "a").unwrap();
    fs::write(src.join("b.png"), "b").unwrap();
    fs::write(src.join("tmp/c.jpg"), "c").unwrap();
    ok(
        &daemon,
        &work,
        "mirror -R --include '*.jpg' --exclude tmp src up",
    );
    assert!(daemon.path("up/a.jpg").exists());
    assert!(!daemon.path("up/b.png").exists());
    assert!(!daemon.path("up/tmp").exists());
}

fn set_mtime(path: &Path, t: SystemTime) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(t).unwrap();
    assert!(t.duration_since(SystemTime::UNIX_EPOCH).unwrap() > Duration::ZERO);
}
