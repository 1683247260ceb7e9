//! The binary's own command line. Having an integration test here also makes
//! `cargo test --workspace` build the `ftpd` executable, which the end-to-end tests in `tests/`
//! run.

use std::process::Command;

const FTPD: &str = env!("CARGO_BIN_EXE_ftpd");

#[test]
fn version_names_the_crate_version() {
    let out = Command::new(FTPD).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("ftpd {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn no_root_is_a_one_line_usage_error() {
    let out = Command::new(FTPD)
        .env_remove("FTPD_ROOT")
        .env_remove("FTPD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--root"), "{err}");
}
