//! Trees of small files on the batch engine: pipelined puts and gets on one connection, the
//! answers in command order and each file's fate its own, a cut pipeline resumed where it
//! stopped, and the daemon's group commits.

use std::fs;
use std::path::Path;
use std::time::Duration;

use e2e::proxy::{Direction, Fault, Proxy};
use protocol::{ChunkHeader, Digest, ErrorCode, Message, Put};

use crate::raw::{self, Raw};
use crate::util::{file_digests as tree, md5_file, tmpdir, write_random, Daemon, MIB};

/// A pipelined upload of `body` to `path`: the `put`, its one chunk (if any) and its `eof`,
/// sent without waiting for anything.
fn send_pipelined(raw: &mut Raw, path: &str, body: &[u8], resume: bool, digest: Digest) {
    raw.send(&Message::Put(Put {
        path: path.into(),
        size: body.len() as u64,
        overwrite: false,
        resume,
        upload_id: Some(path.replace(|c: char| !c.is_ascii_alphanumeric(), "-")),
        mtime: None,
        pipelined: true,
    }));
    if !body.is_empty() {
        raw.send(&Message::Chunk(ChunkHeader {
            offset: 0,
            len: body.len() as u32,
            digest,
        }));
        raw.send_bytes(body);
    }
    raw.send(&Message::Eof(protocol::Eof {
        size: body.len() as u64,
        digest,
    }));
}

#[track_caller]
fn expect_stored(raw: &mut Raw, body: &[u8]) {
    match raw.recv() {
        Message::Stored(s) => {
            assert_eq!(s.size, body.len() as u64);
            assert_eq!(s.digest, Digest::md5(body));
        }
        other => panic!("expected stored, got {other:?}"),
    }
}

/// Five uploads and a `pwd` sent back to back, before any answer is read: each upload is
/// answered alone and in order (stored, refused as existing, refused for a bad digest,
/// refused for asking to resume, stored), and the `pwd` after them all; nothing refused is
/// visible, and the file that existed is untouched.
#[test]
fn pipelined_puts_are_answered_in_order_each_on_its_own() {
    let daemon = Daemon::start();
    fs::write(daemon.path("b.txt"), "the old b").unwrap();
    let mut raw = Raw::connect(daemon.addr()).hello();
    let (a, b, c, d, e) = (b"alpha".as_slice(), b"bravo", b"charlie", b"delta", b"");
    send_pipelined(&mut raw, "a.txt", a, false, Digest::md5(a));
    send_pipelined(&mut raw, "b.txt", b, false, Digest::md5(b));
    send_pipelined(&mut raw, "c.txt", c, false, Digest::md5(b"not charlie"));
    send_pipelined(&mut raw, "d.txt", d, true, Digest::md5(d));
    send_pipelined(&mut raw, "e.txt", e, false, Digest::md5(e));
    raw.send(&Message::Pwd);

    expect_stored(&mut raw, a);
    raw.expect_error(ErrorCode::Exists);
    raw.expect_error(ErrorCode::ChecksumMismatch);
    raw.expect_error(ErrorCode::BadRequest);
    expect_stored(&mut raw, e);
    assert!(matches!(raw.recv(), Message::Cwd(_)), "pwd answered last");
    raw.expect_usable();

    assert_eq!(fs::read(daemon.path("a.txt")).unwrap(), a);
    assert_eq!(fs::read(daemon.path("b.txt")).unwrap(), b"the old b");
    assert_eq!(fs::read(daemon.path("e.txt")).unwrap(), e);
    assert!(
        !daemon.path("c.txt").exists(),
        "a file that failed its check is not visible"
    );
    assert!(!daemon.path("d.txt").exists());
}

/// A pipelined upload larger than the daemon keeps in memory streams like any other, after
/// the small ones ahead of it are answered.
#[test]
fn a_large_pipelined_put_streams_in_its_turn() {
    let daemon = Daemon::start();
    let mut raw = Raw::connect(daemon.addr()).hello();
    let small = b"small".as_slice();
    send_pipelined(&mut raw, "small.txt", small, false, Digest::md5(small));
    let big: Vec<u8> = (0..(3 * MIB) as usize).map(|i| (i % 251) as u8).collect();
    raw.send(&Message::Put(Put {
        pipelined: true,
        ..match raw::put("big.bin", big.len() as u64) {
            Message::Put(p) => p,
            _ => unreachable!(),
        }
    }));
    let mut hasher = protocol::Hasher::new(protocol::DigestKind::Md5);
    for (i, part) in big.chunks(MIB as usize).enumerate() {
        let digest = hasher.seal(part);
        raw.send(&Message::Chunk(ChunkHeader {
            offset: i as u64 * MIB,
            len: part.len() as u32,
            digest,
        }));
        raw.send_bytes(part);
    }
    let whole = Digest::md5(&big);
    raw.send(&Message::Eof(protocol::Eof {
        size: big.len() as u64,
        digest: whole,
    }));
    expect_stored(&mut raw, small);
    expect_stored(&mut raw, &big);
    assert_eq!(md5_file(daemon.path("big.bin")), whole.to_string());
}

/// Downloads asked for back to back (and a `pwd` behind them) come back one after the other,
/// in order, each whole.
#[test]
fn gets_pipelined_behind_a_download_run_in_order() {
    let daemon = Daemon::start();
    write_random(daemon.path("one.bin"), 2 * MIB + 5, 1);
    write_random(daemon.path("two.bin"), 1000, 2);
    let mut raw = Raw::connect(daemon.addr()).hello();
    raw.send(&raw::get("one.bin"));
    raw.send(&raw::get("missing.bin"));
    raw.send(&raw::get("two.bin"));
    raw.send(&Message::Pwd);
    for (name, size) in [
        ("one.bin", 2 * MIB + 5),
        ("missing.bin", 0),
        ("two.bin", 1000),
    ] {
        if name == "missing.bin" {
            raw.expect_error(ErrorCode::NotFound);
            continue;
        }
        let Message::GetReady(ready) = raw.recv() else {
            panic!("expected get_ready for {name}");
        };
        assert_eq!(ready.size, size);
        let eof = loop {
            match raw.recv() {
                Message::Chunk(_) => {}
                Message::Eof(eof) => break eof,
                other => panic!("{name}: expected a chunk, got {other:?}"),
            }
        };
        assert_eq!(
            eof.digest.to_string(),
            md5_file(daemon.path(name)),
            "{name}"
        );
    }
    assert!(matches!(raw.recv(), Message::Cwd(_)), "pwd answered last");
}

/// `n` small files (sizes from 0 up) in `dir/a`, `dir/b/c`, and two larger than a pipeline
/// holds: the mixed tree a real directory is.
fn mixed_tree(dir: &Path, n: u64) {
    for sub in ["a", "b/c"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for i in 0..n {
        let sub = if i % 2 == 0 { "a" } else { "b/c" };
        write_random(dir.join(sub).join(format!("f{i:03}")), i * 331, i);
    }
    write_random(dir.join("big1.bin"), 3 * MIB + 1, 7);
    write_random(dir.join("b/big2.bin"), MIB + 1, 8);
}

/// `put -r` and `get -r` of a tree of many small files and two large ones round-trip it
/// byte for byte, every file verified, on the pipelined engine (one connection: `-P 1`).
#[test]
fn trees_of_small_and_large_files_round_trip_pipelined() {
    let daemon = Daemon::start();
    let work = tmpdir();
    mixed_tree(&work.path().join("src"), 150);
    let want = tree(&work.path().join("src"));
    let put = daemon
        .cli()
        .cwd(work.path())
        .arg("-P")
        .arg("1")
        .cmds("put -r -v src up")
        .run()
        .ok();
    assert_eq!(put.stdout.matches("verified").count(), 152, "{put}");
    assert!(put.stdout.contains("put -r src: 152 files, "), "{put}");
    assert_eq!(tree(&daemon.path("up")), want, "put -r changed the tree");
    let get = daemon
        .cli()
        .cwd(work.path())
        .cmds("get -r up back")
        .run()
        .ok();
    // Past 10 files, only the total line, unless told -v.
    assert_eq!(get.stdout.matches("verified").count(), 0, "{get}");
    let total = get.stdout.lines().last().unwrap_or_default();
    assert!(total.starts_with("get -r up: 152 files, "), "{get}");
    assert!(total.ends_with(", 0 failed"), "{get}");
    assert_eq!(
        tree(&work.path().join("back")),
        want,
        "get -r changed the tree"
    );
    assert_eq!(
        fs::read_dir(daemon.staging()).unwrap().count(),
        0,
        "nothing left staged"
    );
}

/// A connection cut in the middle of a pipelined `put -r`: the files answered stay done, the
/// rest go again on a new connection, and the tree arrives whole with exit status 0.
#[test]
fn a_cut_pipeline_resumes_where_it_stopped() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..120u64 {
        write_random(src.join(format!("f{i:03}")), 64 * 1024, i);
    }
    let want = tree(&src);
    // About halfway through the tree's 7.5 MiB, on the first connection only.
    let proxy = Proxy::start(
        daemon.addr(),
        vec![Fault::cut(Direction::ClientToServer, 4 * MIB)],
    );
    let run = daemon
        .cli_via(proxy.addr())
        .cwd(work.path())
        .arg("-P")
        .arg("1")
        .arg("--timeout")
        .arg("5s")
        .timeout(Duration::from_secs(120))
        .cmds("put -rv src up")
        .run()
        .ok();
    assert!(
        proxy.connections() >= 2,
        "the cut made the client reconnect: {run}"
    );
    assert!(run.stderr.contains("resuming"), "{run}");
    assert_eq!(run.stdout.matches("verified").count(), 120, "{run}");
    assert_eq!(tree(&daemon.path("up")), want, "the tree arrived whole");
}

/// `get -r` onto a tree where one file already exists: that file alone fails (and keeps its
/// bytes), the others arrive, and the exit status says some failed.
#[test]
fn get_r_refuses_an_existing_file_alone() {
    let daemon = Daemon::start();
    fs::create_dir(daemon.path("up")).unwrap();
    for i in 0..20u64 {
        write_random(daemon.path(&format!("up/f{i:02}")), 5000 + i, i);
    }
    let work = tmpdir();
    fs::create_dir(work.path().join("back")).unwrap();
    fs::write(work.path().join("back/f07"), "mine").unwrap();
    let run = daemon
        .cli()
        .cwd(work.path())
        .cmds("get -r -v up back")
        .run()
        .exits(8);
    assert!(run.stderr.contains("f07: already exists"), "{run}");
    assert_eq!(fs::read(work.path().join("back/f07")).unwrap(), b"mine");
    assert_eq!(run.stdout.matches("verified").count(), 19, "{run}");
    assert!(run.stdout.contains("get -r up: 19 files, "), "{run}");
    assert!(run.stdout.contains(", 1 failed"), "{run}");
    assert_eq!(fs::read_dir(work.path().join("back")).unwrap().count(), 20);
}

/// `--no-fsync` changes what `stored` promises, not what is stored.
#[test]
fn no_fsync_stores_the_same_tree() {
    let daemon = Daemon::with_args(["--no-fsync"]);
    let work = tmpdir();
    mixed_tree(&work.path().join("src"), 40);
    daemon
        .cli()
        .cwd(work.path())
        .cmds("put -r src up")
        .run()
        .ok();
    assert_eq!(tree(&daemon.path("up")), tree(&work.path().join("src")));
}

/// `put -r -c` over a tree an earlier run left half done: the files already stored whole are
/// skipped (not refused as existing), the rest are sent, and the command succeeds.
#[test]
fn put_r_c_continues_an_interrupted_tree() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..30u64 {
        write_random(src.join(format!("f{i:02}")), 10_000 + i, i);
    }
    // The first run stored a third of the tree.
    fs::create_dir(daemon.path("up")).unwrap();
    for i in 0..10u64 {
        let name = format!("f{i:02}");
        fs::copy(src.join(&name), daemon.path(&format!("up/{name}"))).unwrap();
    }
    let run = daemon
        .cli()
        .cwd(work.path())
        .cmds("put -r -c src up")
        .run()
        .ok();
    assert!(!run.stderr.contains("exists"), "{run}");
    assert_eq!(tree(&daemon.path("up")), tree(&src));
}

/// A tree sent a second time: not a wall of "already exists" lines (one per file) but the
/// first few, then one line counting them all and saying what to do (`-c`, `-f`).
#[test]
fn a_tree_sent_again_counts_the_existing_files_in_one_line() {
    let daemon = Daemon::start();
    let work = tmpdir();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..30u64 {
        write_random(src.join(format!("f{i:02}")), 1000 + i, i);
    }
    let cli = daemon.cli().cwd(work.path()).cmds("put -r src");
    cli.run().ok();
    let run = cli.run().exits(8);
    let refusals = run.stderr.matches("already exists").count();
    assert_eq!(refusals, 3, "{run}");
    assert!(
        run.stderr.contains(
            "30 files already on the server (27 more not shown): -c skips the complete ones"
        ),
        "{run}"
    );
    assert!(run.stdout.contains("0 files, 0 B"), "{run}");
    daemon
        .cli()
        .cwd(work.path())
        .cmds("put -r -c src")
        .run()
        .ok();
    assert_eq!(tree(&daemon.path("src")), tree(&src));
}
