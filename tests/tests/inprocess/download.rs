//! Downloads by a raw peer: `cancel` in time and too late.

use std::fs;

use protocol::{ErrorCode, Frame, Message};

use crate::util::{pattern, InProcess};

/// `cancel` is only ever answered inside a download. Outside one (before any command, or
/// crossing the `eof` of a download that just ended) the daemon says nothing: the first frame
/// after it is the next request's answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_stray_cancel_gets_no_reply() {
    let d = InProcess::new().start();
    fs::write(d.root_path("small.bin"), pattern(100, 5)).unwrap();
    let mut raw = d.raw().await;
    raw.send(Message::Cancel).await;
    raw.expect_usable().await;

    let ready = raw.start_get("small.bin").await;
    assert_eq!(ready.size, 100);
    match raw.recv().await.message {
        Message::Chunk(h) => assert_eq!((h.offset, h.len), (0, 100)),
        other => panic!("expected the one chunk, got {other:?}"),
    }
    match raw.recv().await.message {
        Message::Eof(eof) => assert_eq!(eof.size, 100),
        other => panic!("expected eof, got {other:?}"),
    }
    raw.send(Message::Cancel).await;
    raw.expect_usable().await;
    raw.bye().await;
}

/// A peer cancels after the first chunk: the chunks already on their way arrive in order, then
/// `abort` (`cancelled`) at the offset where the daemon stopped, long before the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_cancelled_after_the_first_chunk_ends_in_abort_and_the_connection_goes_on() {
    let chunk = 64 * 1024;
    let d = InProcess::new()
        .arg("--chunk-size")
        .arg(chunk.to_string())
        .start();
    let size = 32 * chunk;
    fs::write(d.root_path("big.bin"), pattern(size, 6)).unwrap();
    let mut raw = d.raw().await;
    let ready = raw.start_get("big.bin").await;
    assert_eq!(ready.size, size as u64);

    let first = raw.recv().await;
    let Message::Chunk(h) = first.message else {
        panic!("expected the first chunk, got {first:?}");
    };
    assert_eq!((h.offset, h.len as usize), (0, chunk));
    raw.send(Message::Cancel).await;

    let mut received = chunk as u64;
    let abort = loop {
        match raw.recv().await {
            Frame {
                message: Message::Chunk(h),
                body,
            } => {
                assert_eq!(
                    h.offset, received,
                    "chunks after the cancel are out of order"
                );
                received += body.len() as u64;
            }
            Frame {
                message: Message::Abort(e),
                ..
            } => break e,
            other => panic!("expected chunks, then abort; got {other:?}"),
        }
    };
    assert_eq!(abort.code, ErrorCode::Cancelled, "{abort:?}");
    assert_eq!(
        abort.offset,
        Some(received),
        "the abort names where it stopped"
    );
    assert!(
        received < size as u64,
        "the daemon sent the whole file in spite of the cancel"
    );
    raw.expect_usable().await;
    raw.bye().await;
}

/// A `get` from past the end of the file has its own code, `past_end` (a client resuming a
/// copy longer than the server's file tells it from a prefix that differs); at the very end it
/// is no error: `get_ready`, then the `eof` alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_get_past_the_end_is_refused_with_past_end() {
    let d = InProcess::new().start();
    fs::write(d.root_path("small.bin"), pattern(100, 9)).unwrap();
    let mut raw = d.raw().await;
    for offset in [101, u64::MAX] {
        raw.send(Message::Get(protocol::Get {
            path: "small.bin".into(),
            offset,
            prefix_digest: None,
        }))
        .await;
        let refused = raw.expect_error(ErrorCode::PastEnd).await;
        assert!(refused.message.contains("past the end"), "{refused:?}");
        raw.expect_usable().await;
    }
    raw.send(Message::Get(protocol::Get {
        path: "small.bin".into(),
        offset: 100,
        prefix_digest: None,
    }))
    .await;
    match raw.recv().await.message {
        Message::GetReady(r) => assert_eq!((r.size, r.offset), (100, 100)),
        other => panic!("expected get_ready, got {other:?}"),
    }
    match raw.recv().await.message {
        Message::Eof(eof) => assert_eq!(eof.size, 100),
        other => panic!("expected eof, got {other:?}"),
    }
    raw.bye().await;
}
