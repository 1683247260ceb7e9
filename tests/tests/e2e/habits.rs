//! The habits of lftp and sftp users, run by the real `ftp-cli` against a real daemon: `ls`
//! with ls's options and globs, `cd` alone and `cd -`, `~` in local paths, `rm -r` and globs,
//! moving into directories, `-P N`, `cat`, `du`, `open`/`user`/`close`, suggestions for a
//! mistyped command, errors that name the command (and the line of a batch file) without
//! internals, local times, and `--man` without a host.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tempfile::TempDir;

use crate::util::{
    assert_missing, assert_same_file, tmpdir, write_file, write_private, write_random, Cli, Daemon,
    Run, Site, Tool,
};

/// 2020-01-02 03:04:05 UTC.
const T0: u64 = 1_577_934_245;

/// A daemon, a client working directory and a home directory for `~`.
struct Habits {
    daemon: Daemon,
    work: TempDir,
    home: TempDir,
}

impl Habits {
    fn new() -> Habits {
        Habits {
            daemon: Daemon::start(),
            work: tmpdir(),
            home: tmpdir(),
        }
    }

    fn local(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    fn remote(&self, rel: &str) -> PathBuf {
        self.daemon.path(rel)
    }

    /// The client in the working directory, with its own home, in UTC.
    fn cli(&self) -> Cli {
        self.daemon
            .cli()
            .cwd(&self.work)
            .env("HOME", self.home.path())
            .env("TZ", "UTC")
    }

    #[track_caller]
    fn ok(&self, commands: &str) -> Run {
        self.cli().cmds(commands).run().ok()
    }

    #[track_caller]
    fn exits(&self, commands: &str, code: i32) -> Run {
        self.cli().cmds(commands).run().exits(code)
    }

    /// `pics/` on the server: `a.jpg` (5 bytes, T0), `b.jpg` (3000 bytes, T0+20),
    /// `c.txt` (100 bytes, T0+10), `.hidden`, and `sub/d.jpg` (7 bytes).
    fn pics(&self) {
        let dir = self.remote("pics");
        fs::create_dir_all(dir.join("sub")).unwrap();
        write_file(dir.join("a.jpg"), "hello");
        write_random(dir.join("b.jpg"), 3000, 1);
        write_random(dir.join("c.txt"), 100, 2);
        write_file(dir.join(".hidden"), "x");
        write_file(dir.join("sub/d.jpg"), "1234567");
        set_mtime(dir.join("a.jpg"), T0);
        set_mtime(dir.join("b.jpg"), T0 + 20);
        set_mtime(dir.join("c.txt"), T0 + 10);
        set_mtime(dir.join("sub"), T0 + 5);
    }
}

fn set_mtime(path: impl AsRef<Path>, secs: u64) {
    File::open(path.as_ref())
        .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::from_secs(secs)))
        .unwrap();
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// The last column of each line: the names in an `ls -l`.
fn names_of(text: &str) -> Vec<&str> {
    lines(text)
        .into_iter()
        .map(|l| l.rsplit("  ").next().unwrap())
        .collect()
}

#[test]
fn ls_takes_ls_options_in_any_combination() {
    let t = Habits::new();
    t.pics();
    assert_eq!(
        lines(&t.ok("ls pics").stdout),
        ["a.jpg", "b.jpg", "c.txt", "sub/"],
        "dotfiles are shown with -a only"
    );
    assert_eq!(
        names_of(&t.ok("ls -la pics").stdout),
        [".hidden", "a.jpg", "b.jpg", "c.txt", "sub/"]
    );
    assert_eq!(
        t.ok("ls -l -a pics").stdout,
        t.ok("ls -la pics").stdout,
        "-l -a is -la"
    );
    assert_eq!(lines(&t.ok("ls -1 pics").stdout).len(), 4);
    assert_eq!(
        names_of(&t.ok("ls -lt pics").stdout),
        ["b.jpg", "c.txt", "sub/", "a.jpg"],
        "-t: newest first"
    );
    assert_eq!(
        names_of(&t.ok("ls -ltr pics").stdout),
        ["a.jpg", "sub/", "c.txt", "b.jpg"],
        "-r reverses"
    );
    assert_eq!(
        names_of(&t.ok("ls -lS pics").stdout),
        ["b.jpg", "c.txt", "a.jpg", "sub/"],
        "-S: largest first"
    );
    let human = t.ok("ls -lh pics").stdout;
    assert!(
        human.contains("2.93 KiB  2020-01-02 03:04:25  b.jpg"),
        "{human}"
    );
    assert!(human.contains("5 B  2020-01-02 03:04:05  a.jpg"), "{human}");

    // -R: each directory under a DIR: line, after its parent.
    let run = t.ok("ls -R pics");
    assert_eq!(
        lines(&run.stdout),
        [
            "pics:",
            "a.jpg",
            "b.jpg",
            "c.txt",
            "sub/",
            "pics/sub:",
            "d.jpg"
        ]
    );
    // `dir` is `ls`.
    assert_eq!(t.ok("dir -R pics").stdout, run.stdout);
}

#[test]
fn ls_lists_globs_and_single_files() {
    let t = Habits::new();
    t.pics();
    assert_eq!(lines(&t.ok("cd pics; ls *.jpg").stdout), ["a.jpg", "b.jpg"]);
    assert_eq!(
        lines(&t.ok("ls pics/*.jpg").stdout),
        ["pics/a.jpg", "pics/b.jpg"]
    );
    let run = t.ok("ls -l pics/c.txt");
    assert_eq!(
        lines(&run.stdout),
        ["- 100  2020-01-02 03:04:15  pics/c.txt"]
    );
    // A file and a directory: the file first, then the directory under its name.
    let run = t.ok("ls pics/a.jpg pics/sub");
    assert_eq!(lines(&run.stdout), ["pics/a.jpg", "pics/sub:", "d.jpg"]);
    t.exits("ls pics/*.png", 2)
        .stderr_has("nothing matches pics/*.png");
    t.exits("ls nowhere", 5).stderr_has("ls nowhere");
}

#[test]
fn ls_l_shows_local_time() {
    let t = Habits::new();
    t.pics();
    let at = |tz: &str| {
        t.cli()
            .env("TZ", tz)
            .cmds("ls -l pics; stat pics/a.jpg")
            .run()
            .ok()
            .stdout
    };
    let utc = at("UTC");
    assert!(utc.contains("2020-01-02 03:04:05  a.jpg"), "{utc}");
    // India is 5:30 ahead of UTC, with no daylight saving time.
    let india = at("Asia/Kolkata");
    assert!(india.contains("2020-01-02 08:34:05  a.jpg"), "{india}");
    assert!(india.contains("modified 2020-01-02 08:34:05"), "{india}");
}

#[test]
fn cd_alone_goes_to_the_top_and_cd_dash_goes_back() {
    let t = Habits::new();
    fs::create_dir_all(t.remote("a/b")).unwrap();
    let run = t.ok("cd a/b; cd; pwd; cd -; pwd; cd -; pwd");
    assert_eq!(lines(&run.stdout), ["/", "/a/b", "/"]);
    t.exits("cd -", 2).stderr_has("no directory before");
}

#[test]
fn tilde_in_local_paths_is_the_home_directory() {
    let t = Habits::new();
    let home = t.home.path();
    write_random(home.join("x.bin"), 2000, 3);
    fs::create_dir(home.join("pics")).unwrap();
    write_random(home.join("pics/p1.dat"), 100, 4);
    write_random(home.join("pics/p2.dat"), 200, 5);

    t.ok("put ~/x.bin; get x.bin ~/back.bin");
    assert_same_file(home.join("x.bin"), t.remote("x.bin"));
    assert_same_file(home.join("x.bin"), home.join("back.bin"));
    t.ok("mkdir m; cd m; mput ~/pics/*.dat");
    assert_same_file(home.join("pics/p2.dat"), t.remote("m/p2.dat"));
    t.ok("put -r ~/pics tree");
    assert_same_file(home.join("pics/p1.dat"), t.remote("tree/p1.dat"));

    let run = t.ok("lls ~; lcd ~/pics; lpwd; lcd ~; lpwd");
    let out = lines(&run.stdout);
    assert!(out.contains(&"x.bin") && out.contains(&"pics/"), "{run}");
    let home_shown = home.display().to_string();
    assert_eq!(out[out.len() - 2], format!("{home_shown}/pics"));
    assert_eq!(out[out.len() - 1], home_shown);
}

#[test]
fn rm_takes_globs_and_r() {
    let t = Habits::new();
    t.pics();
    t.ok("rm pics/*.jpg");
    assert_missing(t.remote("pics/a.jpg"));
    assert_missing(t.remote("pics/b.jpg"));
    assert!(t.remote("pics/c.txt").is_file());
    assert!(
        t.remote("pics/sub/d.jpg").is_file(),
        "a glob stays in its directory"
    );
    t.exits("rm pics/*.jpg", 2).stderr_has("nothing matches");
    t.exits("rm pics", 5);
    assert!(
        t.remote("pics").is_dir(),
        "rm without -r removed a directory"
    );
    t.ok("rm -r pics");
    assert_missing(t.remote("pics"));
    t.exits("rm nope", 5);
    t.ok("rm -f nope pics/*.png");
}

#[test]
fn put_and_mv_go_into_existing_directories() {
    let t = Habits::new();
    fs::create_dir(t.remote("dir")).unwrap();
    write_random(t.local("f.bin"), 1000, 6);
    t.ok("put f.bin dir/");
    assert_same_file(t.local("f.bin"), t.remote("dir/f.bin"));
    t.ok("mkdir other; put f.bin other");
    assert_same_file(t.local("f.bin"), t.remote("other/f.bin"));
    t.ok("mv dir/f.bin /; mv other dir");
    assert_same_file(t.local("f.bin"), t.remote("f.bin"));
    assert_same_file(t.local("f.bin"), t.remote("dir/other/f.bin"));
    // A new name is still a rename.
    t.ok("mv f.bin g.bin");
    assert_same_file(t.local("f.bin"), t.remote("g.bin"));
}

#[test]
fn transfer_commands_say_which_command_to_use_instead() {
    let t = Habits::new();
    fs::create_dir(t.remote("rdir")).unwrap();
    fs::create_dir(t.local("ldir")).unwrap();
    t.exits("get a b c", 2)
        .stderr_has("use mget a b c")
        .one_line_error();
    t.exits("put a b c", 2).stderr_has("use mput a b c");
    t.exits("put ldir", 2)
        .stderr_has("put -r ldir")
        .one_line_error();
    t.exits("get rdir", 2)
        .stderr_has("get -r rdir")
        .one_line_error();
    assert_missing(t.local("rdir"));
}

#[test]
fn mget_takes_plain_names_and_transfers_take_p() {
    let t = Habits::new();
    t.pics();
    t.ok("mget pics/a.jpg pics/*.txt");
    assert_same_file(t.remote("pics/a.jpg"), t.local("a.jpg"));
    assert_same_file(t.remote("pics/c.txt"), t.local("c.txt"));
    assert_missing(t.local("b.jpg"));

    fs::create_dir(t.local("tree")).unwrap();
    for i in 0..6 {
        write_random(t.local(&format!("tree/f{i}")), 1000 + i, i);
    }
    t.ok("put -r -P 4 tree up; get -r -P 2 up down; mget -P 1 pics/b.jpg");
    for i in 0..6 {
        assert_same_file(
            t.local(&format!("tree/f{i}")),
            t.local(&format!("down/f{i}")),
        );
    }
    assert_same_file(t.remote("pics/b.jpg"), t.local("b.jpg"));
    t.exits("put -r -P 0 tree", 2).stderr_has("from 1 to 32");
}

#[test]
fn cat_du_df_and_history() {
    let t = Habits::new();
    t.pics();
    let run = t.ok("cat pics/a.jpg pics/sub/d.jpg");
    assert_eq!(run.stdout, "hello1234567");
    assert!(
        fs::read_dir(t.work.path()).unwrap().next().is_none(),
        "cat left a file here"
    );
    t.exits("cat pics", 2).stderr_has("a directory");

    let run = t.ok("du pics; du -sh pics/sub");
    assert_eq!(
        lines(&run.stdout),
        ["3113\tpics\t(5 files)", "7 B\tpics/sub\t(1 file)"]
    );
    // Neither the user nor the server has a quota here (issue 18 made df report usage).
    assert_eq!(
        t.ok("df").stdout.trim(),
        "no quota: neither you nor the server has one"
    );
    t.exits("history", 2).stderr_has("interactive shell");
}

#[test]
fn a_mistyped_command_gets_a_suggestion() {
    let t = Habits::new();
    for (typed, want) in [
        ("lss", "did you mean ls?"),
        ("mkdri x", "did you mean mkdir?"),
        ("gte x", "did you mean get?"),
    ] {
        t.exits(typed, 2).stderr_has(want).one_line_error();
    }
    let run = t.exits("frobnicate", 2);
    assert!(!run.stderr.contains("did you mean"), "{run}");
}

/// Before, `-b` said what failed but not where, and errors carried `(os error 2)` and the name
/// of the download's `.ftp-part`.
#[test]
fn script_errors_name_the_command_and_line_without_internals() {
    let t = Habits::new();
    write_random(t.local("a.bin"), 100, 7);
    let batch = t.local("cmds.txt");
    write_file(&batch, "put a.bin\n# a comment\nget missing.bin\nls\n");
    t.cli()
        .batch(&batch)
        .run()
        .exits(5)
        .stderr_has(&format!("{}:3: get missing.bin:", batch.display()))
        .one_line_error();
    write_file(&batch, "pwd\nlss\n");
    t.cli()
        .batch(&batch)
        .run()
        .exits(2)
        .stderr_has(&format!("{}:2: unknown command", batch.display()));

    let run = t.exits("pwd; put nope.bin", 6).one_line_error();
    assert!(run.stderr.contains("put nope.bin: nope.bin:"), "{run}");
    assert!(!run.stderr.contains("os error"), "{run}");
    t.cli()
        .stdin("pwd\nget missing.bin\n")
        .run()
        .exits(5)
        .stderr_has("stdin:2: get missing.bin:");

    // A download whose .ftp-part cannot be made names the file asked for.
    write_random(t.remote("x.jpg"), 100, 8);
    fs::create_dir(t.local("x.jpg.ftp-part")).unwrap();
    let run = t.exits("get x.jpg", 6).one_line_error();
    assert!(
        !run.stderr.contains("ftp-part") && !run.stderr.contains("os error"),
        "{run}"
    );
    assert!(run.stderr.contains("get x.jpg: x.jpg:"), "{run}");
}

#[test]
fn open_and_close_without_a_host_on_the_command_line() {
    let t = Habits::new();
    write_file(t.remote("there.txt"), "x");
    let addr = t.daemon.addr().to_string();
    let fp = t.daemon.fingerprint();
    let run = Tool::ftp_cli()
        .args(["--fingerprint", &fp, "-c"])
        .arg(format!("open {addr}; ls; close; lpwd"))
        .run()
        .ok();
    assert_eq!(lines(&run.stdout)[0], "there.txt", "{run}");
    let run = Tool::ftp_cli()
        .args(["--fingerprint", &fp, "-c", "ls"])
        .run()
        .exits(2);
    assert!(run.stderr.contains("open HOST"), "{run}");
    t.exits("close; ls", 2).stderr_has("not connected");
}

#[test]
fn user_logs_in_as_another_user() {
    let site = Site::new();
    let users = site.path("etc/users.toml");
    fs::create_dir_all(users.parent().unwrap()).unwrap();
    write_private(
        &users,
        "[[user]]\nname = \"alice\"\nsecret = \"alice's secret\"\nhome = \"alice\"\n\n\
         [[user]]\nname = \"bob\"\nsecret = \"bob's secret\"\nhome = \"bob\"\n",
    );
    let daemon = site.daemon().arg("--users").arg(&users).start();
    write_file(daemon.path("bob/bobs.txt"), "b");
    let run = daemon
        .cli()
        .env("FTP_CLI_SECRET", "bob's secret")
        .cmds("user bob; ls")
        .run()
        .ok();
    assert_eq!(lines(&run.stdout), ["bobs.txt"], "{run}");
}

#[test]
fn man_and_completions_need_no_host_and_the_man_page_has_the_commands() {
    let run = Tool::ftp_cli().arg("--man").run().ok();
    for needle in [".SH COMMANDS", "mget", "lcd", "cd [PATH|\\-]", "\\fBls"] {
        assert!(run.stdout.contains(needle), "the man page lacks {needle:?}");
    }
    let run = Tool::ftp_cli().args(["--completions", "bash"]).run().ok();
    assert!(run.stdout.contains("ftp-cli"), "{run}");
}
