//! Nothing is overwritten without `-f`, missing files fail cleanly, and a failed command stops
//! the ones after it, whether they come from `-c`, a `-b` batch file or stdin.

use std::fs;
use std::path::PathBuf;

use tempfile::TempDir;

use crate::util::{
    assert_missing, assert_same_file, tmpdir, write_file, write_random, Cli, Daemon, MIB,
};

/// A daemon plus a client working directory holding two different files, `a.bin` and `b.bin`.
struct Setup {
    daemon: Daemon,
    work: TempDir,
}

impl Setup {
    fn new() -> Setup {
        let setup = Setup {
            daemon: Daemon::start(),
            work: tmpdir(),
        };
        write_random(setup.local("a.bin"), MIB + 10, 10);
        write_random(setup.local("b.bin"), 2000, 20);
        setup
    }

    fn local(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn cli(&self) -> Cli {
        self.daemon.cli().cwd(&self.work)
    }
}

#[test]
fn put_refuses_to_overwrite() {
    let t = Setup::new();
    t.cli().cmds("put a.bin r.bin").run().ok();
    t.cli()
        .cmds("put b.bin r.bin")
        .run()
        .fails()
        .stderr_has("exists")
        .one_line_error();
    assert_same_file(t.local("a.bin"), t.daemon.path("r.bin"));
}

#[test]
fn put_force_replaces() {
    let t = Setup::new();
    t.cli().cmds("put a.bin r.bin").run().ok();
    t.cli()
        .cmds("put -f b.bin r.bin")
        .run()
        .ok()
        .verified(t.local("b.bin"), 1);
    assert_same_file(t.local("b.bin"), t.daemon.path("r.bin"));
    // -f is permission to replace, not a requirement that something exists.
    t.cli().cmds("put -f a.bin new.bin").run().ok();
    assert_same_file(t.local("a.bin"), t.daemon.path("new.bin"));
}

#[test]
fn get_refuses_to_overwrite_local_file() {
    let t = Setup::new();
    t.cli().cmds("put a.bin r.bin").run().ok();
    write_file(t.local("mine.txt"), "keep me");
    t.cli()
        .cmds("get r.bin mine.txt")
        .run()
        .fails()
        .stderr_has("exists")
        .one_line_error();
    assert_eq!(fs::read(t.local("mine.txt")).unwrap(), b"keep me");
}

#[test]
fn get_force_replaces_local_file() {
    let t = Setup::new();
    t.cli().cmds("put a.bin r.bin").run().ok();
    write_file(t.local("mine.txt"), "replace me");
    t.cli()
        .cmds("get -f r.bin mine.txt")
        .run()
        .ok()
        .verified(t.local("a.bin"), 1);
    assert_same_file(t.local("a.bin"), t.local("mine.txt"));
}

#[test]
fn put_of_missing_local_file_fails() {
    let t = Setup::new();
    t.cli()
        .cmds("put nope.bin r.bin")
        .run()
        .fails()
        .stderr_has("nope.bin")
        .one_line_error();
    assert_missing(t.daemon.path("r.bin"));
    assert!(t.daemon.visible_files().is_empty());
}

#[test]
fn get_of_missing_remote_file_fails() {
    let t = Setup::new();
    t.cli()
        .cmds("get nope.bin")
        .run()
        .fails()
        .stderr_has_any(&["not_found", "no such file"])
        .one_line_error();
    assert_missing(t.local("nope.bin"));
}

#[test]
fn failed_command_stops_the_list() {
    let t = Setup::new();
    t.cli()
        .cmds("get nope x; put a.bin b")
        .run()
        .fails()
        .stderr_has_any(&["not_found", "no such file"]);
    assert_missing(t.local("x"));
    assert_missing(t.daemon.path("b"));
}

#[test]
fn batch_file() {
    let t = Setup::new();
    write_file(
        t.local("batch.txt"),
        "put a.bin 'r 1.bin'\nput b.bin r2.bin\nget 'r 1.bin' back.bin\n",
    );
    t.cli()
        .batch("batch.txt")
        .run()
        .ok()
        .verified(t.local("a.bin"), 2)
        .verified(t.local("b.bin"), 1);
    assert_same_file(t.local("a.bin"), t.daemon.path("r 1.bin"));
    assert_same_file(t.local("b.bin"), t.daemon.path("r2.bin"));
    assert_same_file(t.local("a.bin"), t.local("back.bin"));
}

#[test]
fn batch_file_stops_at_first_failure() {
    let t = Setup::new();
    write_file(
        t.local("batch.txt"),
        "put a.bin r.bin\nget nope x\nput b.bin b\n",
    );
    t.cli()
        .batch("batch.txt")
        .run()
        .fails()
        .stderr_has_any(&["not_found", "no such file"]);
    assert_same_file(t.local("a.bin"), t.daemon.path("r.bin"));
    assert_missing(t.local("x"));
    assert_missing(t.daemon.path("b"));
}

#[test]
fn commands_from_stdin() {
    let t = Setup::new();
    t.cli()
        .stdin("put a.bin r.bin\nget r.bin back.bin\n")
        .run()
        .ok()
        .verified(t.local("a.bin"), 2);
    assert_same_file(t.local("a.bin"), t.daemon.path("r.bin"));
    assert_same_file(t.local("a.bin"), t.local("back.bin"));
}

#[test]
fn stdin_stops_at_first_failure() {
    let t = Setup::new();
    t.cli()
        .stdin("get nope x\nput b.bin b\n")
        .run()
        .fails()
        .stderr_has_any(&["not_found", "no such file"]);
    assert_missing(t.local("x"));
    assert_missing(t.daemon.path("b"));
}
