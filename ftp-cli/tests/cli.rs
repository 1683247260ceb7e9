//! The binary's own command line. Having an integration test here also makes
//! `cargo test --workspace` build the `ftp-cli` executable, which the end-to-end tests in
//! `tests/` run.

use std::process::Command;

const FTP_CLI: &str = env!("CARGO_BIN_EXE_ftp-cli");

#[test]
fn version_names_the_crate_version() {
    let out = Command::new(FTP_CLI).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("ftp-cli {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_need_no_server_and_exit_2() {
    // Port 1 on loopback: nothing listens, and nothing needs to for a usage error.
    let out = Command::new(FTP_CLI)
        .args(["127.0.0.1:1", "-c", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown command"), "{err}");
}
