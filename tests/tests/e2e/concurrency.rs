//! More than one client: transfers side by side, and a client that dies mid-upload.

use std::sync::Barrier;
use std::thread;
use std::time::Duration;

use crate::util::{
    assert_missing, assert_same_file, staged_bytes, tmpdir, wait_until, write_random, Daemon, MIB,
};

/// Puts `name` (a fresh `size`-byte file) and gets it back, checking both copies.
fn put_then_get(daemon: &Daemon, name: &str, size: u64, seed: u64, start: &Barrier) {
    let work = tmpdir();
    let src = work.path().join(name);
    write_random(&src, size, seed);
    let cli = daemon.cli().cwd(&work);
    start.wait();
    cli.round_trip(name, &format!("back-{name}"));
    assert_same_file(&src, daemon.path(name));
}

#[test]
fn two_clients_at_once() {
    let daemon = Daemon::start();
    // Both clients start together, so their transfers overlap rather than run one after another.
    let start = Barrier::new(2);
    thread::scope(|s| {
        let a = s.spawn(|| put_then_get(&daemon, "first.bin", 8 * MIB, 1, &start));
        let b = s.spawn(|| put_then_get(&daemon, "second.bin", 8 * MIB, 2, &start));
        for client in [a, b] {
            if let Err(panic) = client.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    assert_eq!(daemon.visible_files(), ["first.bin", "second.bin"]);
}

/// A client killed mid-upload must leave no partial file where clients can see it, and must not
/// disturb the daemon for the next client.
#[test]
fn killed_upload_leaves_nothing_partial() {
    let daemon = Daemon::start();
    let work = tmpdir();
    write_random(work.path().join("huge.bin"), 256 * MIB, 3);

    let mut upload = daemon.cli().cwd(&work).cmds("put huge.bin").spawn();
    wait_until(
        "the upload has staged some bytes",
        Duration::from_secs(60),
        || {
            upload.assert_running();
            staged_bytes(&daemon.staging()) > 0
        },
    );
    upload.kill();
    assert_missing(daemon.path("huge.bin"));

    let small = work.path().join("small.bin");
    write_random(&small, 2 * MIB + 3, 4);
    daemon
        .cli()
        .cwd(&work)
        .round_trip("small.bin", "small-back.bin");
    assert_same_file(&small, daemon.path("small.bin"));

    // By now the daemon has long noticed the dead connection; still nothing half-written.
    assert_missing(daemon.path("huge.bin"));
    assert_eq!(daemon.visible_files(), ["small.bin"]);
}
