//! Users: logging in over a pipe, and what a user's errors may say about the root.

use std::fs;

use ftp_cli::client::{NoProgress, TransferOptions};
use protocol::{Digest, DigestKind, ErrorCode, Message, Put};

use crate::util::{assert_holds, framed, pattern, put, InProcess};

/// Alice's home is two levels down in the root.
const USERS: &str = r#"
[[user]]
name = "alice"
secret = "alice's secret"
home = "homes/alice"
"#;
const ALICE: &str = "alice's secret";

/// Regression: refusals named the path in the root (`/homes/alice/a.bin`) instead of the one
/// the user sees (`/a.bin`), telling users where their home is and what the root holds. A
/// refused overwrite also leaves the stored file as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upload_names_the_path_as_the_user_sees_it_not_the_home() {
    let d = InProcess::new().users(USERS).start();
    let data = pattern(30_000, 8);
    fs::write(d.local_path("a.bin"), &data).unwrap();

    let mut c = d.client_as("alice", ALICE).await;
    assert_eq!(c.pwd().await.unwrap(), "/");
    c.put(
        &d.local_path("a.bin"),
        "/a.bin",
        TransferOptions::default(),
        &mut NoProgress,
    )
    .await
    .unwrap();
    c.bye().await;
    assert_holds(&d.root_path("homes/alice/a.bin"), &data);
    assert_eq!(d.visible(), ["homes"], "alice wrote outside her home");

    let mut raw = d.raw_as("alice", ALICE).await;
    let other = pattern(30_000, 9);
    let (chunks, eof) = framed(&other, 0, 16 * 1024, DigestKind::Md5);
    let overwrite = Put {
        overwrite: true,
        ..put("a.bin", other.len())
    };
    raw.start_put(overwrite).await;
    raw.send_all(chunks).await;
    let wrong = Digest::md5(b"another file");
    raw.send(Message::Eof(protocol::Eof {
        digest: wrong,
        ..eof
    }))
    .await;
    let refused = raw.expect_error(ErrorCode::ChecksumMismatch).await;
    assert!(
        refused.message.starts_with("/a.bin") && !refused.message.contains("homes"),
        "the refusal does not name the file as alice sees it: {:?}",
        refused.message
    );
    raw.expect_usable().await;
    assert_holds(&d.root_path("homes/alice/a.bin"), &data);
    raw.bye().await;
}

/// Regression: `rmdir /` by a user whose home was empty removed the home itself (the path was
/// the home's place in the root, not the root); the user's `/` is now the top of a directory
/// handle, which cannot be removed, nor can a `..` reach above it.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_cannot_remove_their_own_empty_home() {
    let d = InProcess::new().users(USERS).start();
    let mut raw = d.raw_as("alice", ALICE).await;
    for path in ["/", ".", "..", "/.."] {
        raw.send(Message::Rmdir(protocol::PathArg { path: path.into() }))
            .await;
        let refused = raw.expect_error(ErrorCode::Denied).await;
        assert!(!refused.message.contains("homes"), "{path}: {refused:?}");
        assert!(
            d.root_path("homes/alice").is_dir(),
            "rmdir {path} removed the home"
        );
    }
    raw.expect_usable().await;
    raw.bye().await;
}
