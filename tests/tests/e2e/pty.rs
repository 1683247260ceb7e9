//! The interactive shell, driven through a real pseudo-terminal as a person would: the prompt,
//! tab completion of remote names, a failed command that leaves the shell where it was, Ctrl-C
//! and Ctrl-D. The shell's history goes to a temporary home, never the real one.

use std::fs;
use std::path::Path;
use std::process::Command;

use rexpect::session::{spawn_with_options, Options, PtySession};

use crate::util::{assert_missing, assert_same_file, bin, md5_file, tmpdir, write_random, Daemon};

/// How long the shell may take to show what a step waits for.
const STEP_TIMEOUT_MS: u64 = 30_000;

/// `ftp-cli ADDR` on a pseudo-terminal, in `cwd`, with `home` as its home and data directory.
fn shell(daemon: &Daemon, cwd: &Path, home: &Path) -> PtySession {
    let mut cmd = Command::new(bin("ftp-cli"));
    cmd.arg(daemon.addr().to_string())
        .current_dir(cwd)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("TERM", "xterm")
        .env("NO_COLOR", "1");
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
fn type_keys(sh: &mut PtySession, keys: &str) {
    sh.send(keys).expect("cannot type into the terminal");
    sh.flush().expect("cannot type into the terminal");
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
    let md5 = md5_file(daemon.path("photo-2024.jpg"));
    let summary = expect(&mut sh, "verified");
    assert!(
        summary.contains(&md5),
        "the summary line lacks the file's MD5 {md5}: {summary:?}"
    );
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
    expect(&mut sh, "not_found");
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

    // The history went to the temporary data directory.
    let history = home.path().join("data/ftp-cli/history");
    let history = fs::read_to_string(&history)
        .unwrap_or_else(|e| panic!("no history at {}: {e}", history.display()));
    assert!(
        history.contains("get photo-2024.jpg"),
        "history: {history:?}"
    );
}
