//! What scripts rely on: a transfer that outlives a daemon restart, and `--json` output in
//! which every line of stdout is one typed object.

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    assert_same_file, file_digests, staged_bytes, tmpdir, wait_until, write_random, Daemon, MIB,
};

/// Regression: every automatic retry was spent 1.9 s after the daemon died, too soon for it to
/// come back. A `put` through a daemon killed mid-transfer and restarted 5 s later on the same
/// port waits for it, resumes, and arrives identical with exit status 0.
#[test]
fn a_put_outlives_a_daemon_restart() {
    let dir = tmpdir();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // A free port, picked by binding port 0, for both daemons to listen on in turn.
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let first = Daemon::builder().root(&root).listen(&listen).start();
    let work = tmpdir();
    let src = work.path().join("big.bin");
    write_random(&src, 96 * MIB, 5);
    let cli = first
        .cli()
        .cwd(work.path())
        .timeout(Duration::from_secs(240))
        .cmds("put big.bin");
    let client = thread::spawn(move || cli.run());
    let staging = first.staging();
    wait_until("part of the upload staged", Duration::from_secs(60), || {
        staged_bytes(&staging) >= 2 * MIB
    });
    first.kill();
    // The downtime: the client must keep trying through it.
    thread::sleep(Duration::from_secs(5));
    let second = Daemon::builder().root(&root).listen(&listen).start();
    let run = client.join().unwrap().ok();
    assert!(run.stderr.contains("reconnecting in"), "{run}");
    assert!(!run.stderr.contains("cannot reconnect"), "{run}");
    assert_same_file(&src, second.path("big.bin"));
}

/// Files under `dir`, however deep.
fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// Regression: a many-file command took a failed first reconnect as final, so a daemon
/// restart mid-tree failed every file left. `put -r` of a tree through a daemon killed after
/// some of its files arrived and restarted 5 s later on the same port waits for it, goes on
/// where it stopped, and ends with exit status 0 and the tree identical.
#[test]
fn a_tree_put_outlives_a_daemon_restart() {
    let dir = tmpdir();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let first = Daemon::builder().root(&root).listen(&listen).start();
    let work = tmpdir();
    let tree = work.path().join("tree");
    // Small files (pipelined) and a few larger than a pipeline holds (one at a time).
    for i in 0..240u64 {
        let sub = tree.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&sub).unwrap();
        write_random(sub.join(format!("f{i:03}")), 400_000 + i, i);
    }
    for i in 0..4u64 {
        write_random(tree.join(format!("big{i}.bin")), 3 * MIB + i, 100 + i);
    }
    let total = count_files(&tree);
    let cli = first
        .cli()
        .cwd(work.path())
        .timeout(Duration::from_secs(240))
        .cmds("put -r tree");
    let client = thread::spawn(move || cli.run());
    let sent = root.join("tree");
    wait_until("some of the tree stored", Duration::from_secs(60), || {
        count_files(&sent) >= 20
    });
    first.kill();
    assert!(
        count_files(&sent) < total,
        "the tree was sent before the kill"
    );
    // The downtime: the client must keep trying through it.
    thread::sleep(Duration::from_secs(5));
    let second = Daemon::builder().root(&root).listen(&listen).start();
    let run = client.join().unwrap().ok();
    assert!(run.stderr.contains("reconnecting in"), "{run}");
    assert!(run.stdout.contains("0 failed"), "{run}");
    assert_eq!(
        file_digests(&tree),
        file_digests(&second.path("tree")),
        "{run}"
    );
}

/// Every line `--json` prints, one object with a `type`, and the types a session expects.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert!(v["type"].is_string(), "no type: {l}");
            v
        })
        .collect()
}

fn types(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|v| v["type"].as_str().unwrap()).collect()
}

/// A session of many commands with `--json`: every line of stdout parses and says its type,
/// with the same keys whatever the digest; a failure is an `error` object too, with its exit
/// status, besides the line on stderr.
#[test]
fn every_json_line_parses_and_has_a_type() {
    let daemon = Daemon::start();
    let session = "mkdir d; cd d; pwd; put a.bin; ls; ls -l; stat a.bin; stat --md5 a.bin; \
                   get a.bin b.bin; lpwd; lls; put -r tree; mget tree/f0*; \
                   mirror tree mirrored; mirror -n tree mirrored; help ls; get missing.bin";
    for digest in ["md5", "blake3"] {
        let work = tmpdir();
        write_random(work.path().join("a.bin"), 300_000, 1);
        let tree = work.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        for i in 0..12 {
            write_random(tree.join(format!("f{i:02}")), 1000 + i, i);
        }
        let run = daemon
            .cli()
            .cwd(work.path())
            .arg("--json")
            .arg("--digest")
            .arg(digest)
            .cmds(&session.replace(" d;", &format!(" {digest};")))
            .run()
            .exits(5);
        let lines = json_lines(&run.stdout);
        let seen = types(&lines);
        for want in [
            "pwd", "transfer", "entry", "stat", "lpwd", "lls", "total", "mirror", "error",
        ] {
            assert!(seen.contains(&want), "no {want} line: {run}");
        }
        for t in lines.iter().filter(|v| v["type"] == "transfer") {
            assert_eq!(t["digest"]["kind"], digest, "{run}");
            assert!(t["digest"]["hex"].is_string(), "{run}");
            assert!(t.get("md5").is_none() && t.get("blake3").is_none(), "{run}");
        }
        let total = lines.iter().find(|v| v["type"] == "total").unwrap();
        assert_eq!(total["files"], 12, "{run}");
        assert_eq!(total["failed"], 0, "{run}");
        let error = lines.last().unwrap();
        assert_eq!(error["type"], "error", "{run}");
        assert_eq!(error["status"], 5, "{run}");
        assert!(
            error["message"].as_str().unwrap().contains("missing.bin"),
            "{run}"
        );
        // The code is for programs, in its own field; the message is for people.
        assert_eq!(error["code"], "not_found", "{run}");
        assert!(
            !error["message"].as_str().unwrap().contains("not_found"),
            "{run}"
        );
        assert!(run.stderr.contains("missing.bin"), "{run}");
    }
}

/// A plain `get` in a script, of a file whose `.ftp-part` an earlier download left, says that
/// it starts over (and how to continue instead) rather than silently throwing the bytes away.
#[test]
fn a_scripted_get_says_it_starts_over_a_kept_part() {
    let daemon = Daemon::start();
    write_random(daemon.path("x.bin"), 200_000, 9);
    let work = tmpdir();
    std::fs::write(work.path().join("x.bin.ftp-part"), vec![7u8; 50_000]).unwrap();
    let run = daemon.cli().cwd(work.path()).cmds("get x.bin").run().ok();
    assert!(run.stderr.contains("starting over"), "{run}");
    assert!(run.stderr.contains("get -c continues instead"), "{run}");
    assert_same_file(daemon.path("x.bin"), work.path().join("x.bin"));
}
