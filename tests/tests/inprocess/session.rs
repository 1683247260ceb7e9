//! The session around the commands: what the daemon does with a message it cannot read.

use protocol::{DigestKind, ErrorCode, Message};

use crate::util::{hello, InProcess};

/// A well-formed header of a type the daemon does not know is answered `unsupported`, and the
/// next request is read as if nothing happened. The peer writes all three frames before reading
/// any answer, so the daemon cannot have waited for it between them.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_of_an_unknown_type_gets_unsupported_and_the_session_goes_on() {
    let d = InProcess::new().start();
    let mut pipe = d.pipe();
    pipe.write_message(&hello(DigestKind::Md5)).await;
    pipe.write_header(br#"{"type":"frobnicate","path":"/"}"#)
        .await;
    pipe.write_message(&Message::Pwd).await;

    let mut raw = pipe.raw();
    match raw.recv().await.message {
        Message::Hello(_) => {}
        other => panic!("expected the daemon's hello, got {other:?}"),
    }
    let refused = raw.expect_error(ErrorCode::Unsupported).await;
    assert!(refused.message.contains("frobnicate"), "{refused:?}");
    match raw.recv().await.message {
        Message::Cwd(c) => assert_eq!(c.path, "/"),
        other => panic!("expected cwd in answer to pwd, got {other:?}"),
    }
    raw.bye().await;
}
