//! Round trips: what goes up with `put` comes back down with `get`, byte for byte, and the copy in
//! the daemon's root is identical too.

use crate::util::{assert_same_file, tmpdir, write_random, Daemon, MIB};

/// Quotes a name for the client's shell-style command line.
fn quote(name: &str) -> String {
    assert!(!name.contains('\''), "test names must not contain a quote");
    format!("'{name}'")
}

/// Puts a fresh `size`-byte file `local` as `remote`, gets it back as `back`, and checks the
/// upload, the file on the server and the download are the same bytes, each transfer reported as
/// verified.
fn round_trip(local: &str, remote: &str, back: &str, size: u64) {
    let daemon = Daemon::start();
    let work = tmpdir();
    let src = work.path().join(local);
    write_random(&src, size, size ^ 0x5eed);

    let (local_q, remote_q, back_q) = (quote(local), quote(remote), quote(back));
    daemon
        .cli()
        .cwd(&work)
        .cmds(&format!(
            "put {local_q} {remote_q}; get {remote_q} {back_q}"
        ))
        .run()
        .ok()
        .verified(&src, 2);

    assert_same_file(&src, daemon.path(remote));
    assert_same_file(&src, work.path().join(back));
}

#[test]
fn empty_file() {
    round_trip("empty.bin", "empty.bin", "back.bin", 0);
}

#[test]
fn one_byte() {
    round_trip("one.bin", "one.bin", "back.bin", 1);
}

#[test]
fn exactly_one_chunk() {
    round_trip("chunk.bin", "chunk.bin", "back.bin", MIB);
}

#[test]
fn one_chunk_plus_one_byte() {
    round_trip("chunk1.bin", "chunk1.bin", "back.bin", MIB + 1);
}

#[test]
fn over_64_mib() {
    round_trip("big.bin", "big-remote.bin", "big-back.bin", 64 * MIB + 7);
}

#[test]
fn unicode_name_with_spaces() {
    let name = "ünïcødé name ✓.bin";
    round_trip(name, name, "back ✓ again.bin", 4097);
}

/// A quoted `;` is part of the name, not a command separator.
#[test]
fn semicolon_inside_quoted_name() {
    round_trip("semi;colon.bin", "remote;name.bin", "back;name.bin", 100);
}

/// Without a second argument, `put` and `get` keep the file's name.
#[test]
fn names_default_to_the_other_side() {
    let daemon = Daemon::start();
    let up = tmpdir();
    let src = up.path().join("same name.bin");
    write_random(&src, 3 * MIB + 5, 7);
    daemon
        .cli()
        .cwd(&up)
        .cmds("put 'same name.bin'")
        .run()
        .ok()
        .verified(&src, 1);
    assert_same_file(&src, daemon.path("same name.bin"));

    let down = tmpdir();
    daemon
        .cli()
        .cwd(&down)
        .cmds("get 'same name.bin'")
        .run()
        .ok()
        .verified(&src, 1);
    assert_same_file(&src, down.path().join("same name.bin"));
}
