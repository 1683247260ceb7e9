//! Every command of the client, run by the real `ftp-cli` against a real daemon: listing and
//! moving about the remote tree, managing remote files, the local commands, whole trees and
//! globs, a directory too large for one frame, JSON output, exit statuses, and commands read from
//! a pipe.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use protocol::Message;
use serde_json::Value;
use tempfile::TempDir;

use crate::raw::Raw;
use crate::util::{
    assert_missing, assert_same_file, bin, clean_env, md5_file, names, tmpdir, wait_child,
    write_file, write_random, Cli, Daemon, Run, MIB,
};

/// 2020-01-02 03:04:05 UTC, a modification time no test run can produce by accident.
const T0: u64 = 1_577_934_245;
/// How long one frame from the daemon may take to arrive in the raw listing.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// A daemon and a client working directory.
struct Site {
    daemon: Daemon,
    work: TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            daemon: Daemon::start(),
            work: tmpdir(),
        }
    }

    /// A path in the client's working directory.
    fn local(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    /// A path in the served root, on disk.
    fn remote(&self, rel: &str) -> PathBuf {
        self.daemon.path(rel)
    }

    /// The client, run in the working directory, showing times in UTC (`ls -l` shows local
    /// time).
    fn cli(&self) -> Cli {
        self.daemon.cli().cwd(&self.work).env("TZ", "UTC")
    }

    /// Runs `commands` with `-c` and expects success.
    #[track_caller]
    fn ok(&self, commands: &str) -> Run {
        self.cli().cmds(commands).run().ok()
    }

    /// Runs `commands` with `-c`, expects exit status `code`, and returns the run.
    #[track_caller]
    fn exits(&self, commands: &str, code: i32) -> Run {
        self.cli().cmds(commands).run().exits(code)
    }

    /// `gallery/` in the root, every entry with a known size and modification time:
    /// `a.txt` (5 bytes, T0), `b.txt` (12345 bytes, T0+1), `Sub/` (T0+2), `c d.bin` (empty, T0+3).
    fn gallery(&self) {
        let dir = self.remote("gallery");
        fs::create_dir(&dir).unwrap();
        write_file(dir.join("a.txt"), "hello");
        write_random(dir.join("b.txt"), 12345, 1);
        fs::create_dir(dir.join("Sub")).unwrap();
        write_file(dir.join("c d.bin"), "");
        set_mtime(dir.join("a.txt"), T0);
        set_mtime(dir.join("b.txt"), T0 + 1);
        set_mtime(dir.join("Sub"), T0 + 2);
        set_mtime(dir.join("c d.bin"), T0 + 3);
    }
}

/// Sets a file's or directory's modification time to `secs` after the epoch.
fn set_mtime(path: impl AsRef<Path>, secs: u64) {
    let path = path.as_ref();
    File::open(path)
        .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::from_secs(secs)))
        .unwrap_or_else(|e| panic!("cannot set the mtime of {}: {e}", path.display()));
}

/// A file's modification time in whole seconds since the epoch.
fn mtime(path: impl AsRef<Path>) -> u64 {
    let path = path.as_ref();
    fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("cannot read the mtime of {}: {e}", path.display()))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[track_caller]
fn assert_mtime_near(path: impl AsRef<Path>, want: u64) {
    let path = path.as_ref();
    let got = mtime(path);
    assert!(
        got.abs_diff(want) <= 1,
        "{} was modified at {got}, expected {want} (within 1 s)",
        path.display()
    );
}

/// The non-empty lines of some output.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// The lines of stdout that are not transfer summaries.
fn non_summary_lines(text: &str) -> Vec<&str> {
    lines(text)
        .into_iter()
        .filter(|l| !l.contains(" verified"))
        .collect()
}

/// Single-quotes a word for the client's command parser.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r#"'"'"'"#))
}

// ---------------------------------------------------------------------------------------------
// Listing and moving about

#[test]
fn ls_prints_sorted_names_with_a_slash_after_directories() {
    let t = Site::new();
    t.gallery();
    let run = t.ok("ls gallery");
    assert_eq!(lines(&run.stdout), ["Sub/", "a.txt", "b.txt", "c d.bin"]);

    // The root's listing never shows the daemon's private directory.
    write_file(t.remote("top.txt"), "x");
    let run = t.ok("ls");
    assert_eq!(lines(&run.stdout), ["gallery/", "top.txt"]);
    let run = t.ok("ls /");
    assert_eq!(lines(&run.stdout), ["gallery/", "top.txt"]);
}

#[test]
fn ls_long_aligns_type_size_and_time() {
    let t = Site::new();
    t.gallery();
    let run = t.ok("ls -l gallery");
    assert_eq!(
        lines(&run.stdout),
        [
            "d     0  2020-01-02 03:04:07  Sub/",
            "-     5  2020-01-02 03:04:05  a.txt",
            "- 12345  2020-01-02 03:04:06  b.txt",
            "-     0  2020-01-02 03:04:08  c d.bin",
        ]
    );
    // `--long` is the same option.
    assert_eq!(t.ok("ls --long gallery").stdout, run.stdout);
}

#[test]
fn ls_of_a_missing_directory_is_a_remote_error() {
    let t = Site::new();
    t.exits("ls nowhere", 5)
        .stderr_has("no such file or directory")
        .no_internals();
}

#[test]
fn cd_and_pwd_resolve_relative_paths_against_the_remote_directory() {
    let t = Site::new();
    fs::create_dir_all(t.remote("photos/2024")).unwrap();
    write_random(t.local("a.bin"), 3000, 1);
    write_random(t.local("b.bin"), 4000, 2);
    let batch = t.local("cmds.txt");
    write_file(
        &batch,
        "cd photos\npwd\nput a.bin\ncd 2024\npwd\nput b.bin\ncd ..\npwd\nls\n\
         get 2024/b.bin b-back.bin\ncd /\npwd\nls photos\ncd photos/2024\npwd\n",
    );
    let run = t.cli().batch(&batch).run().ok();
    assert_eq!(
        non_summary_lines(&run.stdout),
        [
            "/photos",
            "/photos/2024",
            "/photos",
            "2024/",
            "a.bin",
            "/",
            "2024/",
            "a.bin",
            "/photos/2024",
        ]
    );
    assert_same_file(t.local("a.bin"), t.remote("photos/a.bin"));
    assert_same_file(t.local("b.bin"), t.remote("photos/2024/b.bin"));
    assert_same_file(t.local("b.bin"), t.local("b-back.bin"));
    assert_missing(t.remote("a.bin"));
    assert_missing(t.remote("b.bin"));
}

#[test]
fn cd_into_a_file_or_a_missing_directory_fails() {
    let t = Site::new();
    fs::create_dir(t.remote("photos")).unwrap();
    write_file(t.remote("notes.txt"), "x");
    t.exits("cd notes.txt", 5)
        .stderr_has("not a directory")
        .no_internals()
        .one_line_error();
    // The script stops at the failed `cd`: the `pwd` after it never runs.
    let run = t
        .exits("cd photos; cd missing; pwd", 5)
        .stderr_has("no such file or directory")
        .no_internals();
    assert_eq!(lines(&run.stdout), Vec::<&str>::new());
    // `..` never leaves the root.
    t.exits("cd ..", 5)
        .stderr_has("path leads outside the root")
        .no_internals();
    // A new connection starts at the top again.
    assert_eq!(lines(&t.ok("pwd").stdout), ["/"]);
}

// ---------------------------------------------------------------------------------------------
// Managing remote files

#[test]
fn mkdir_creates_directories_and_with_p_their_parents() {
    let t = Site::new();
    t.ok("mkdir new; mkdir -p deep/er/est; mkdir -p deep/er; mkdir --parents deep/x");
    for dir in ["new", "deep/er/est", "deep/x"] {
        assert!(t.remote(dir).is_dir(), "{dir} was not created");
    }
    t.exits("mkdir new", 5)
        .stderr_has("exists")
        .one_line_error();
    t.exits("mkdir no/such/parent", 5)
        .stderr_has("no such file or directory")
        .no_internals();
    assert_missing(t.remote("no"));
}

#[test]
fn rm_removes_every_path_it_can_and_counts_the_failures() {
    let t = Site::new();
    for name in ["one", "two", "three"] {
        write_file(t.remote(name), name);
    }
    fs::create_dir(t.remote("dir")).unwrap();

    let run = t
        .exits("rm one nope three", 8)
        .stderr_has("1 of 3 files failed");
    assert!(
        run.stderr.contains("nope")
            && run.stderr.contains("no such file or directory")
            && !run.stderr.contains("(not_found)"),
        "the failed path is not named: {run}"
    );
    assert_missing(t.remote("one"));
    assert_missing(t.remote("three"));
    assert!(t.remote("two").is_file());

    t.exits("rm dir", 5)
        .stderr_has("is a directory")
        .no_internals();
    assert!(t.remote("dir").is_dir());
    t.exits("rm nope", 5)
        .stderr_has("no such file or directory")
        .no_internals()
        .one_line_error();
    t.ok("rm two");
    assert_eq!(t.daemon.visible_files(), ["dir"]);
}

#[test]
fn rmdir_removes_only_empty_directories() {
    let t = Site::new();
    fs::create_dir(t.remote("full")).unwrap();
    write_file(t.remote("full/f"), "x");
    fs::create_dir(t.remote("empty")).unwrap();
    write_file(t.remote("file"), "x");

    t.exits("rmdir full", 5)
        .stderr_has("directory not empty")
        .no_internals()
        .one_line_error();
    assert!(t.remote("full/f").is_file());
    t.exits("rmdir file", 5)
        .stderr_has("not a directory")
        .no_internals();
    t.exits("rmdir nope", 5)
        .stderr_has("no such file or directory")
        .no_internals();
    t.ok("rmdir empty");
    assert_missing(t.remote("empty"));
}

#[test]
fn rename_and_mv_move_files_and_directories_but_never_replace() {
    let t = Site::new();
    write_random(t.remote("a.bin"), 1000, 1);
    write_random(t.remote("b.bin"), 2000, 2);
    fs::create_dir(t.remote("d")).unwrap();
    let a = t.local("a.orig");
    let b = t.local("b.orig");
    fs::copy(t.remote("a.bin"), &a).unwrap();
    fs::copy(t.remote("b.bin"), &b).unwrap();

    t.ok("rename a.bin c.bin; mv c.bin d/e.bin; mv d dd");
    assert_missing(t.remote("a.bin"));
    assert_missing(t.remote("d"));
    assert_same_file(&a, t.remote("dd/e.bin"));

    for cmd in ["rename b.bin dd/e.bin", "mv b.bin dd/e.bin"] {
        t.exits(cmd, 5).stderr_has("exists").one_line_error();
    }
    assert_same_file(&a, t.remote("dd/e.bin"));
    assert_same_file(&b, t.remote("b.bin"));

    // Onto an existing directory, as mv does: into it, keeping the name.
    t.ok("mv b.bin dd");
    assert_same_file(&b, t.remote("dd/b.bin"));
    t.ok("mv dd/b.bin /");
    assert_same_file(&b, t.remote("b.bin"));
    write_random(t.remote("dd/b.bin"), 10, 9);
    t.exits("mv b.bin dd", 5)
        .stderr_has("exists")
        .one_line_error();
    assert_same_file(&b, t.remote("b.bin"));

    t.exits("mv missing x", 5)
        .stderr_has("no such file or directory")
        .no_internals();
    t.exits("mv dd dd/inside", 5)
        .stderr_has("inside itself")
        .no_internals();
    t.exits("rename b.bin", 2).stderr_has("usage");
}

#[test]
fn stat_shows_kind_size_time_and_md5() {
    let t = Site::new();
    fs::create_dir(t.remote("data")).unwrap();
    let file = t.remote("data/f.bin");
    write_random(&file, 1000, 3);
    set_mtime(&file, T0);
    let md5 = md5_file(&file);

    let run = t.ok("stat data/f.bin; cd data; stat f.bin; stat --md5 f.bin");
    let want = "/data/f.bin  file  1000 bytes  modified 2020-01-02 03:04:05";
    assert_eq!(
        lines(&run.stdout),
        [
            want.to_owned(),
            want.to_owned(),
            format!("{want}  MD5 {md5}")
        ]
    );

    let run = t.ok("stat --md5 data");
    let out = lines(&run.stdout);
    assert_eq!(out.len(), 1, "{run}");
    assert!(
        out[0].starts_with("/data  directory  0 bytes  modified ") && !out[0].contains("MD5"),
        "unexpected stat of a directory: {run}"
    );
    t.exits("stat nope", 5)
        .stderr_has("no such file or directory")
        .no_internals();
}

// ---------------------------------------------------------------------------------------------
// Local commands

#[test]
fn lcd_lpwd_and_lls_act_on_the_local_side() {
    let t = Site::new();
    write_random(t.remote("a.bin"), 5000, 1);
    fs::create_dir_all(t.local("down/inner")).unwrap();
    write_file(t.local("down/x.txt"), "x");

    let run = t
        .cli()
        .stdin("lcd down\nlpwd\nlls\nget a.bin\nlls inner\n")
        .run()
        .ok();
    let down = fs::canonicalize(t.local("down")).unwrap();
    assert_eq!(
        non_summary_lines(&run.stdout),
        [down.to_str().unwrap(), "inner/", "x.txt"]
    );
    assert_same_file(t.remote("a.bin"), t.local("down/a.bin"));
    assert_missing(t.local("a.bin"));

    t.exits("lcd nowhere", 6).stderr_has("nowhere");
}

#[test]
fn bang_runs_a_command_in_the_local_shell_only() {
    let t = Site::new();
    write_file(t.remote("keep.txt"), "x");
    fs::create_dir(t.local("down")).unwrap();

    let run = t
        .cli()
        .stdin("lcd down\n!touch marker\n!echo from the shell; echo $((6 * 7))\n")
        .run()
        .ok();
    assert_eq!(lines(&run.stdout), ["from the shell", "42"]);
    assert!(t.local("down/marker").is_file(), "!touch made no marker");
    assert_missing(t.local("marker"));
    assert_eq!(t.daemon.visible_files(), ["keep.txt"]);

    // A whole `-c` string may be one shell command too; a failing one is a local error.
    t.ok("!touch second");
    assert!(t.local("second").is_file());
    t.exits("!exit 3", 6);
}

// ---------------------------------------------------------------------------------------------
// Trees and globs

/// Every path under `dir` (but a top-level `.ftpd`), `/`-joined and relative to it: `None` for
/// a directory, the MD5 for a file.
fn tree(dir: &Path) -> BTreeMap<String, Option<String>> {
    fn walk(base: &Path, rel: &Path, out: &mut BTreeMap<String, Option<String>>) {
        for entry in fs::read_dir(base.join(rel)).unwrap() {
            let entry = entry.unwrap();
            if rel.as_os_str().is_empty() && entry.file_name() == ".ftpd" {
                continue;
            }
            let child = rel.join(entry.file_name());
            let key = child.to_str().unwrap().to_owned();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                out.insert(key, None);
                walk(base, &child, out);
            } else {
                assert!(kind.is_file(), "{} is no file", entry.path().display());
                out.insert(key, Some(md5_file(entry.path())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, Path::new(""), &mut out);
    out
}

/// A tree of names that need care: spaces, unicode, `;`, both quotes, a leading dash, an empty
/// directory, three levels deep. Every file's mtime is set in 2020, one second apart.
fn odd_tree(dir: &Path) -> Vec<(String, u64)> {
    let files = [
        "plain.txt",
        "with space.bin",
        "semi;colon.dat",
        "it's \"quoted\".txt",
        "-leading-dash",
        "ünïcødé ✓/naïve café.txt",
        "ünïcødé ✓/-dash dir/deeper; still/last file",
        "empty file",
    ];
    fs::create_dir_all(dir.join("empty dir")).unwrap();
    fs::create_dir_all(dir.join("-dash top/also empty")).unwrap();
    let mut mtimes = Vec::new();
    for (i, rel) in files.iter().enumerate() {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let size = if rel.starts_with("empty") {
            0
        } else {
            1000 * i as u64 + 7
        };
        write_random(&path, size, i as u64 + 100);
        set_mtime(&path, T0 + i as u64);
        mtimes.push((rel.to_string(), T0 + i as u64));
    }
    // A file bigger than one chunk, so the trees also move files in pieces.
    write_random(dir.join("ünïcødé ✓/big.bin"), MIB + 5, 99);
    set_mtime(dir.join("ünïcødé ✓/big.bin"), T0 + 99);
    mtimes.push(("ünïcødé ✓/big.bin".into(), T0 + 99));
    mtimes
}

#[test]
fn put_r_and_get_r_round_trip_a_tree_of_odd_names() {
    let t = Site::new();
    let src = t.local("my tree");
    let mtimes = odd_tree(&src);
    let want = tree(&src);

    t.ok("mkdir up; cd up; put -r 'my tree' 'the tree'");
    assert_eq!(
        tree(&t.remote("up/the tree")),
        want,
        "put -r changed the tree"
    );
    for (rel, secs) in &mtimes {
        assert_mtime_near(t.remote("up/the tree").join(rel), *secs);
    }

    // `get -r` from a relative remote path, into a local name of our choosing.
    t.ok("cd up; get -r 'the tree' back");
    assert_eq!(tree(&t.local("back")), want, "get -r changed the tree");
    for (rel, secs) in &mtimes {
        assert_mtime_near(t.local("back").join(rel), *secs);
    }

    // And by the default local name: the remote directory's own.
    t.ok("get -r '/up/the tree'");
    assert_eq!(tree(&t.local("the tree")), want);
}

#[test]
fn put_and_get_keep_the_modification_time() {
    let t = Site::new();
    let src = t.local("old.bin");
    write_random(&src, 100_000, 5);
    set_mtime(&src, T0);

    t.ok("put old.bin; get old.bin back.bin").verified(&src, 2);
    assert_mtime_near(t.remote("old.bin"), T0);
    assert_mtime_near(t.local("back.bin"), T0);
    let run = t.ok("ls -l");
    assert!(
        run.stdout.contains("2020-01-02 03:04:05  old.bin"),
        "the listing does not show the kept time: {run}"
    );
}

#[test]
fn mput_and_mget_expand_their_globs() {
    let t = Site::new();
    for (i, name) in ["p1.dat", "p2.dat", "p3.dat", "note.txt", "skip.bin"]
        .iter()
        .enumerate()
    {
        write_random(t.local(name), 1000 + i as u64, i as u64);
    }
    let run = t.ok("mkdir in; cd in; mput *.dat *.txt");
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.contains("verified"))
            .count(),
        4,
        "{run}"
    );
    let got = names(t.remote("in"));
    assert_eq!(got, ["note.txt", "p1.dat", "p2.dat", "p3.dat"]);
    for name in &got {
        assert_same_file(t.local(name), t.remote(&format!("in/{name}")));
    }

    // Patterns with a directory (relative and absolute) and from the remote directory itself.
    fs::create_dir(t.local("one")).unwrap();
    t.ok("lcd one; mget in/p*.dat /in/*.txt");
    fs::create_dir(t.local("two")).unwrap();
    t.ok("lcd two; cd in; mget p[13].dat");
    for name in &got {
        assert_same_file(t.local(name), t.local(&format!("one/{name}")));
    }
    assert_same_file(t.local("p1.dat"), t.local("two/p1.dat"));
    assert_same_file(t.local("p3.dat"), t.local("two/p3.dat"));
    assert_missing(t.local("two/p2.dat"));

    t.exits("mget in/*.nothing", 2)
        .stderr_has("no remote file matches");
    t.exits("mput *.nothing", 2)
        .stderr_has("no local file matches");
}

#[test]
fn mput_that_partly_fails_sends_the_rest_and_exits_8() {
    let t = Site::new();
    for (i, name) in ["p1.dat", "p2.dat", "p3.dat"].iter().enumerate() {
        write_random(t.local(name), 2000 + i as u64, i as u64);
    }
    fs::create_dir(t.remote("in")).unwrap();
    write_file(t.remote("in/p2.dat"), "already here");

    let run = t
        .exits("cd in; mput *.dat", 8)
        .stderr_has("1 of 3 files failed");
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("p2.dat") && l.contains("exists")),
        "the failed file is not named with its reason: {run}"
    );
    assert_same_file(t.local("p1.dat"), t.remote("in/p1.dat"));
    assert_same_file(t.local("p3.dat"), t.remote("in/p3.dat"));
    assert_eq!(fs::read(t.remote("in/p2.dat")).unwrap(), b"already here");

    // The same for mget when one local file is in the way.
    fs::create_dir(t.local("back")).unwrap();
    write_file(t.local("back/p3.dat"), "mine");
    let run = t
        .exits("lcd back; mget in/*.dat", 8)
        .stderr_has("1 of 3 files failed");
    assert!(run.stderr.contains("p3.dat"), "{run}");
    assert_same_file(t.local("p1.dat"), t.local("back/p1.dat"));
    assert_eq!(fs::read_to_string(t.local("back/p3.dat")).unwrap(), "mine");
}

// ---------------------------------------------------------------------------------------------
// A directory too large for one frame

/// How many files the large listing holds.
const MANY: usize = 100_000;

#[test]
fn ls_of_100_000_files_arrives_whole_and_sorted_in_many_frames() {
    let t = Site::new();
    let dir = t.remote("many");
    fs::create_dir(&dir).unwrap();
    // Created in a scrambled order, so the sorting is the client's work.
    let mut names: Vec<String> = (0..MANY)
        .map(|i| format!("file-{:06}.dat", (i * 7919) % MANY))
        .collect();
    for name in &names {
        File::create(dir.join(name)).unwrap();
    }
    names.sort();

    let run = t.ok("ls many");
    let got: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(got.len(), MANY, "wrong number of names listed");
    assert!(got.iter().eq(names.iter()), "names missing or out of order");
    assert!(run.stderr.is_empty(), "{}", run.stderr);

    let frames = list_frames(t.daemon.addr(), "many");
    assert!(
        frames.sizes.len() > 1,
        "{MANY} entries came in one frame of {:?} bytes",
        frames.sizes
    );
    let largest = *frames.sizes.iter().max().unwrap();
    assert!(
        largest <= protocol::LISTING_BATCH_BYTES,
        "a listing header has {largest} bytes, over the 32 KiB the protocol allows"
    );
    assert_eq!(frames.entries, MANY, "entries in all the listing frames");
    assert_eq!(frames.announced, MANY as u64, "list_end.count");
}

/// What a directory's listing looked like on the wire.
struct Frames {
    /// Header length of each `listing` frame.
    sizes: Vec<usize>,
    /// Entries in all of them.
    entries: usize,
    /// The count in `list_end`.
    announced: u64,
}

/// Lists `path` over a raw connection, and looks at the frames the listing came in.
fn list_frames(addr: SocketAddr, path: &str) -> Frames {
    let mut raw = Raw::connect(addr).within(FRAME_TIMEOUT).hello();
    raw.send(&Message::List(protocol::List::of(path)));
    let mut frames = Frames {
        sizes: Vec::new(),
        entries: 0,
        announced: 0,
    };
    loop {
        match raw.recv_frame() {
            (len, Message::Listing(l)) => {
                frames.sizes.push(len);
                frames.entries += l.entries.len();
            }
            (_, Message::ListEnd(end)) => {
                frames.announced = end.count;
                return frames;
            }
            (_, other) => panic!("expected listing or list_end, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON output

/// Parses every line of stdout as one JSON object.
#[track_caller]
fn json_lines(stdout: &str) -> Vec<serde_json::Map<String, Value>> {
    lines(stdout)
        .into_iter()
        .map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(o)) => o,
            other => panic!("not a JSON object line: {l:?} ({other:?})"),
        })
        .collect()
}

#[test]
fn json_prints_listings_stat_and_summaries_as_objects() {
    let t = Site::new();
    t.gallery();
    let run = t.cli().arg("--json").cmds("ls gallery").run().ok();
    let entries = json_lines(&run.stdout);
    let got: Vec<(String, String, u64, u64)> = entries
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "entry");
            (
                e["name"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
                e["size"].as_u64().unwrap(),
                e["mtime"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("Sub", "dir", 0, T0 + 2),
        ("a.txt", "file", 5, T0),
        ("b.txt", "file", 12345, T0 + 1),
        ("c d.bin", "file", 0, T0 + 3),
    ]
    .map(|(n, k, s, m)| (n.to_owned(), k.to_owned(), s, m));
    assert_eq!(got, want);

    let run = t
        .cli()
        .arg("--json")
        .cmds("stat --md5 gallery/b.txt")
        .run()
        .ok();
    let stat = json_lines(&run.stdout);
    assert_eq!(stat.len(), 1, "{run}");
    let entry = &stat[0];
    assert_eq!(entry["type"], "stat");
    assert_eq!(entry["name"], "/gallery/b.txt");
    assert_eq!(entry["kind"], "file");
    assert_eq!(entry["size"], 12345);
    assert_eq!(entry["mtime"], T0 + 1);
    assert_eq!(entry["digest"]["kind"], "md5");
    let md5 = md5_file(t.remote("gallery/b.txt"));
    assert_eq!(entry["digest"]["hex"], md5.as_str());

    let src = t.local("x.bin");
    write_random(&src, MIB + 1, 7);
    let run = t
        .cli()
        .arg("--json")
        .cmds("put x.bin up.bin; get up.bin down.bin")
        .run()
        .ok();
    assert!(run.stderr.is_empty(), "{run}");
    let summaries = json_lines(&run.stdout);
    assert_eq!(summaries.len(), 2, "{run}");
    for (s, (op, name)) in summaries.iter().zip([("put", "up.bin"), ("get", "up.bin")]) {
        assert_eq!(s["type"], "transfer", "{run}");
        assert_eq!(s["op"], op, "{run}");
        assert_eq!(s["name"], name, "{run}");
        assert_eq!(s["size"], MIB + 1, "{run}");
        assert_eq!(s["sent"], MIB + 1, "{run}");
        assert!(s["seconds"].as_f64().is_some_and(|x| x >= 0.0), "{run}");
        assert_eq!(s["digest"]["kind"], "md5", "{run}");
        assert_eq!(s["digest"]["hex"], md5_file(&src).as_str(), "{run}");
    }
    assert_same_file(&src, t.local("down.bin"));
}

// ---------------------------------------------------------------------------------------------
// Exit statuses, help, and commands from a pipe

#[test]
fn exit_statuses_tell_usage_connection_remote_and_local_failures_apart() {
    let t = Site::new();
    for usage in [
        "frobnicate",
        "ls -z",
        "get",
        "rename a",
        "pwd extra",
        "put \"open",
    ] {
        t.exits(usage, 2).one_line_error();
    }
    t.exits("frobnicate", 2).stderr_has("unknown command");

    // A port nobody listens on: connection refused.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let run = Cli::new(closed)
        .cmds("ls")
        .run()
        .exits(3)
        .stderr_has("cannot connect")
        .one_line_error();
    assert!(run.stderr.contains(&closed.to_string()), "{run}");

    t.exits("get missing.bin", 5)
        .stderr_has("no such file or directory")
        .no_internals();
    t.exits("put missing.bin", 6).stderr_has("missing.bin");
    assert_missing(t.local("missing.bin"));
}

#[test]
fn help_lists_the_commands_and_the_exit_statuses() {
    let t = Site::new();
    let run = t.daemon.cli().arg("--help").run().ok();
    let help = &run.stdout;
    let (_, statuses) = help
        .split_once("Exit status")
        .unwrap_or_else(|| panic!("--help says nothing about exit statuses: {run}"));
    // Every status the client can exit with, including 8 (some files of a batch failed).
    for code in [0, 2, 3, 4, 5, 6, 7, 8] {
        assert!(
            statuses.contains(&format!("{code} ")),
            "--help does not list exit status {code}: {statuses:?}"
        );
    }

    let run = t.ok("help");
    for usage in [
        "ls [-laRhtSr1] [PATH|GLOB...]",
        "cd [PATH|-]",
        "pwd",
        "get [-f] [-c] [-r] [-P N] REMOTE [LOCAL]",
        "put [-f] [-c] [-r] [-P N] LOCAL [REMOTE]",
        "mget [-f] [-c] [-P N] NAME|GLOB...",
        "mput [-f] [-c] [-P N] NAME|GLOB...",
        "cat REMOTE...",
        "mkdir [-p] PATH",
        "rm [-rf] PATH|GLOB...",
        "rmdir PATH",
        "rename FROM TO | mv FROM TO",
        "stat [--md5] PATH",
        "du [-h] [-s] [PATH...]",
        "df",
        "open HOST[:PORT]",
        "user NAME",
        "close",
        "lcd [PATH]",
        "lpwd",
        "lls [PATH]",
        "!COMMAND",
        "history",
    ] {
        assert!(run.stdout.contains(usage), "help lacks {usage:?}: {run}");
    }
    // `help CMD` gives the whole of one: its usage, what it does, its options.
    let run = t.ok("help mv");
    assert!(run.stdout.starts_with("usage: rename FROM TO"), "{run}");
    let run = t.ok("help ls");
    for opt in ["-l ", "-a ", "-h ", "-R ", "-t ", "-S "] {
        assert!(run.stdout.contains(opt), "help ls lacks {opt}: {run}");
    }
}

#[test]
fn commands_from_a_pipe_print_no_prompt_and_no_progress() {
    let t = Site::new();
    let src = t.local("big.bin");
    write_random(&src, 3 * MIB + 3, 4);
    let run = t
        .cli()
        .stdin("put big.bin\n# a comment\n\nls\nmkdir d\ncd d\npwd\nget /big.bin back.bin\n")
        .run()
        .ok()
        .verified(&src, 2);
    assert!(
        run.stderr.is_empty(),
        "stderr is not empty on success: {run}"
    );
    assert_eq!(non_summary_lines(&run.stdout), ["big.bin", "/d"]);
    assert!(!run.stdout.contains("ftp "), "a prompt was printed: {run}");
    assert_same_file(&src, t.local("back.bin"));
}

#[test]
fn quoted_names_with_semicolons_and_spaces_reach_the_server_whole() {
    let t = Site::new();
    let name = "a; b 'c'.txt";
    write_random(t.local(name), 500, 1);
    t.ok(&format!(
        "mkdir 'x; y'; cd 'x; y'; put {0}; stat {0}; rename {0} plain.txt",
        quote(name)
    ));
    assert_same_file(t.local(name), t.remote("x; y/plain.txt"));
}

/// Many small files go side by side, each slot on a connection of its own (`-P`, default 4),
/// so no file waits for the one before it to be synced; `-P 1` moves them one at a time on the
/// session's connection. Either way every file arrives whole.
#[test]
fn many_file_commands_use_parallel_connections() {
    let t = Site::new();
    let src = t.local("many");
    fs::create_dir_all(&src).unwrap();
    for i in 0..24u64 {
        write_random(src.join(format!("f{i:02}.bin")), 20_000 + i, i);
    }
    let want = tree(&src);
    let opened = || t.daemon.log().matches("connection opened").count();

    let before = opened();
    t.ok("put -r many up");
    assert_eq!(tree(&t.remote("up")), want, "put -r changed the tree");
    let used = opened() - before;
    assert!(
        (2..=4).contains(&used),
        "put -r of 24 files used {used} connections, expected 2 to 4 (-P 4)"
    );

    let before = opened();
    let run = t
        .cli()
        .arg("-P")
        .arg("1")
        .cmds("get -r -v up back")
        .run()
        .ok();
    assert_eq!(tree(&t.local("back")), want, "get -r changed the tree");
    assert_eq!(opened() - before, 1, "-P 1 uses one connection: {run}");
    assert_eq!(run.stdout.matches("verified").count(), 24, "{run}");
}

/// `--digest blake3` checks every chunk and the file with BLAKE3 instead of MD5, both ways;
/// a file uploaded with one digest downloads with the other (the server hashes it then).
#[test]
fn blake3_digest_round_trips_and_mixes_with_md5() {
    use protocol::{Digest, DigestKind};
    let t = Site::new();
    let src = t.local("b3.bin");
    write_random(&src, 3 * MIB + 11, 33);
    let data = fs::read(&src).unwrap();
    let blake3 = Digest::of(DigestKind::Blake3, &data).to_string();

    let run = t
        .cli()
        .arg("--digest")
        .arg("blake3")
        .arg("--json")
        .cmds("put b3.bin; get b3.bin back.bin")
        .run()
        .ok();
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{run}");
    for line in &lines {
        // The same keys as with MD5: only the digest's kind says which.
        assert_eq!(line["digest"]["kind"], "blake3", "{run}");
        assert_eq!(line["digest"]["hex"], blake3.as_str(), "{run}");
        assert!(line.get("blake3").is_none(), "{run}");
    }
    assert_same_file(&src, t.remote("b3.bin"));
    assert_same_file(&src, t.local("back.bin"));

    // Uploaded with BLAKE3, downloaded with MD5 (the default), and the other way round.
    let run = t.ok("get b3.bin md5.bin; put b3.bin again.bin");
    assert_eq!(run.stdout.matches("MD5").count(), 2, "{run}");
    assert_same_file(&src, t.local("md5.bin"));
    let run = t
        .cli()
        .arg("--digest")
        .arg("blake3")
        .cmds("get again.bin b3-again.bin")
        .run()
        .ok();
    assert!(
        run.stdout.contains(&format!("BLAKE3 {blake3} verified")),
        "{run}"
    );
    assert_same_file(&src, t.local("b3-again.bin"));
}

/// A server that allows fewer connections per client than `-P` asks for still gets every
/// file: the slots that cannot connect leave their share to the others.
#[test]
fn parallel_batches_fit_a_servers_connection_limit() {
    let daemon = Daemon::with_args(["--max-connections-per-ip", "2"]);
    let work = tmpdir();
    let src = work.path().join("many");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        write_random(src.join(format!("f{i:02}.bin")), 10_000 + i, i);
    }
    let run = daemon.cli().cwd(&work).cmds("put -r many up").run().ok();
    assert_eq!(tree(&daemon.path("up")), tree(&src), "{run}");
    // Past 10 files, one total line says it, not a line each.
    assert_eq!(run.stdout.matches("verified").count(), 0, "{run}");
    assert!(run.stdout.contains(": 12 files, "), "{run}");
    assert!(run.stdout.contains(", 0 failed"), "{run}");
}

/// A reader that goes away early (`ftp-cli HOST -c 'ls -l' | head -1`) stops ftp-cli quietly:
/// status 0, no panic, nothing on stderr.
#[test]
fn a_closed_stdout_stops_the_client_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let t = Site::new();
    fs::create_dir(t.remote("many")).unwrap();
    for i in 0..3000 {
        // ~200 KiB of listing: more than a pipe holds, so writes meet the closed end.
        fs::write(t.remote(&format!("many/file-{i:04}")), b"").unwrap();
    }
    let mut cmd = Command::new(bin("ftp-cli"));
    clean_env(&mut cmd);
    let mut child = cmd
        .arg(t.daemon.addr().to_string())
        .arg("--fingerprint")
        .arg(t.daemon.fingerprint())
        .args(["-q", "-c", "ls -l many"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let status = wait_child(&mut child, Duration::from_secs(30)).expect("ftp-cli hung");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(stderr, "", "stderr after the reader left");
}
