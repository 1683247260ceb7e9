//! The session around the commands: what the daemon does with a message it cannot read.

use protocol::{DigestKind, ErrorCode, Hello, Message};

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

/// A hello with these fields changed from the raw peer's usual one.
fn hello_with(change: impl FnOnce(&mut Hello)) -> Message {
    let Message::Hello(mut h) = hello(DigestKind::Md5) else {
        unreachable!("a hello")
    };
    change(&mut h);
    Message::Hello(h)
}

/// A client that speaks a range answers with the highest version both speak, which this
/// daemon's only one, 3, whatever lies above or below it in the client's range. The daemon's
/// hello names every field, its digest too when it is MD5 (the default a client might assume),
/// and no `min_version`.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_offering_a_range_of_versions_gets_the_highest_the_daemon_speaks() {
    let d = InProcess::new().start();
    for (min, max) in [
        (None, 3),
        (Some(3), 3),
        (Some(1), 3),
        (Some(2), 9),
        (Some(3), 4),
    ] {
        let mut pipe = d.pipe();
        let offer = hello_with(|h| (h.min_version, h.version) = (min, max));
        pipe.write_message(&offer).await;
        let header = pipe.read_header().await;
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).expect("the daemon's hello is a JSON object");
        assert_eq!(object["type"], "hello", "{min:?}..={max}");
        assert_eq!(object["version"], 3, "{min:?}..={max}");
        assert_eq!(object["digest"], "md5", "{min:?}..={max}");
        assert!(!object.contains_key("min_version"), "{object:?}");
        for field in ["agent", "capabilities", "max_chunk"] {
            assert!(
                object.contains_key(field),
                "the daemon's hello lacks {field}"
            );
        }
        let mut raw = pipe.raw();
        raw.expect_usable().await;
        raw.bye().await;
    }
}

/// Ranges that miss the daemon's are refused with `version_mismatch`, naming both, and the
/// connection is closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_hello_without_a_version_in_common_is_refused_naming_both_ranges_and_closed() {
    let d = InProcess::new().start();
    let cases = [
        (None, 2, "the client version 2"),
        (Some(1), 2, "the client versions 1 to 2"),
        (Some(4), 5, "the client versions 4 to 5"),
    ];
    for (min, max, theirs) in cases {
        let mut raw = d.pipe().raw();
        raw.send(hello_with(|h| (h.min_version, h.version) = (min, max)))
            .await;
        let refused = raw.expect_error(ErrorCode::VersionMismatch).await;
        assert!(
            refused.message.contains("the server speaks version 3")
                && refused.message.contains(theirs),
            "{min:?}..={max}: {refused:?}"
        );
        raw.expect_closed().await;
    }
}

/// Every failed hello closes: a `max_chunk` below the floor (`bad_request`, naming it), a
/// `min_version` above `version` (`bad_request`), a required field missing (`unsupported`).
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_hello_is_answered_with_error_and_closed() {
    let d = InProcess::new().start();
    let cases: [(Message, ErrorCode, &str); 3] = [
        (
            hello_with(|h| h.max_chunk = protocol::MIN_CHUNK - 1),
            ErrorCode::BadRequest,
            "below the minimum of 4096",
        ),
        (
            hello_with(|h| h.min_version = Some(4)),
            ErrorCode::BadRequest,
            "min_version 4 above version 3",
        ),
        (
            hello_with(|h| h.max_chunk = 0),
            ErrorCode::BadRequest,
            "max_chunk 0",
        ),
    ];
    for (offer, code, says) in cases {
        let mut raw = d.pipe().raw();
        raw.send(offer).await;
        let refused = raw.expect_error(code).await;
        assert!(refused.message.contains(says), "{refused:?}");
        raw.expect_closed().await;
    }
    for field in ["agent", "capabilities", "max_chunk", "digest"] {
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&serde_json::to_vec(&hello(DigestKind::Md5)).unwrap()).unwrap();
        object.remove(field);
        let mut pipe = d.pipe();
        pipe.write_header(&serde_json::to_vec(&object).unwrap())
            .await;
        let mut raw = pipe.raw();
        let refused = raw.expect_error(ErrorCode::Unsupported).await;
        assert!(
            refused.message.contains(field),
            "without {field}: {refused:?}"
        );
        raw.expect_closed().await;
    }
    // The floor itself is fine.
    let mut raw = d.pipe().raw();
    raw.send(hello_with(|h| h.max_chunk = protocol::MIN_CHUNK))
        .await;
    match raw.recv().await.message {
        Message::Hello(h) => assert_eq!(h.version, 3),
        other => panic!("expected the daemon's hello, got {other:?}"),
    }
    raw.bye().await;
}
