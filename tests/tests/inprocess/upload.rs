//! Uploads by a raw peer: refusals part-way through, and a resume after a dropped connection.

use protocol::{DigestKind, ErrorCode, Message, Put};

use crate::util::{assert_holds, damaged, framed, moved_to, pattern, put, InProcess};

/// Chunks of the raw peer's uploads: small, so that four of them make a file in no time.
const CHUNK: usize = 16 * 1024;

/// The daemon checks each chunk's running digest before writing it. A bad one in the middle is
/// refused with the chunk's offset while the chunks after it are still arriving (there are more
/// of them than the daemon keeps in flight), and those, and the `eof`, are skipped without a
/// word: the next answer is the next request's.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_with_a_wrong_running_digest_is_refused_at_its_offset_and_skipped_to_eof() {
    let d = InProcess::new().start();
    let mut raw = d.raw().await;
    let small = 4 * 1024;
    let data = pattern(16 * small, 1);
    let ready = raw.start_put(put("a.bin", data.len())).await;
    assert_eq!(ready.offset, 0);

    let (mut chunks, eof) = framed(&data, 0, small, DigestKind::Md5);
    chunks[1] = damaged(chunks[1].clone());
    raw.send_all(chunks).await;
    raw.send(Message::Eof(eof)).await;

    let refused = raw.expect_error(ErrorCode::ChecksumMismatch).await;
    assert_eq!(refused.offset, Some(small as u64), "{refused:?}");
    raw.expect_usable().await;
    assert!(
        d.visible().is_empty(),
        "a refused upload left {:?}",
        d.visible()
    );
    assert!(
        d.staged().is_empty(),
        "an upload without an id left {:?}",
        d.staged()
    );
}

/// A chunk must start where the last one ended: one that skips ahead and one that repeats the
/// first are refused (`bad_request`, at the offset the chunk claimed), and the rest of the
/// stream is skipped to its `eof`.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_at_the_wrong_offset_is_a_bad_request_and_skipped_to_eof() {
    let d = InProcess::new().start();
    let mut raw = d.raw().await;
    let data = pattern(4 * CHUNK, 2);
    let (chunks, eof) = framed(&data, 0, CHUNK, DigestKind::Md5);
    let skipping = [0, 2, 3].map(|i| chunks[i].clone());
    let repeating = [0, 0, 1, 2, 3].map(|i| chunks[i].clone());
    // A chunk whose bytes and digest are those that come next, under another offset.
    let misplaced = [
        chunks[0].clone(),
        moved_to(chunks[1].clone(), CHUNK as u64 + 1),
    ];
    let cases: [(&str, Vec<_>, u64); 3] = [
        ("a chunk skipped", skipping.to_vec(), 2 * CHUNK as u64),
        ("the first chunk sent twice", repeating.to_vec(), 0),
        ("a chunk one byte off", misplaced.to_vec(), CHUNK as u64 + 1),
    ];
    for (case, frames, at) in cases {
        raw.start_put(put("a.bin", data.len())).await;
        raw.send_all(frames).await;
        raw.send(Message::Eof(eof)).await;
        let refused = raw.expect_error(ErrorCode::BadRequest).await;
        assert_eq!(refused.offset, Some(at), "{case}: {refused:?}");
        raw.expect_usable().await;
        assert!(d.visible().is_empty(), "{case}: left {:?}", d.visible());
    }
    assert!(
        d.staged().is_empty(),
        "uploads without an id left {:?}",
        d.staged()
    );
}

/// `eof` must name the size the `put` declared, and come after every byte of it: otherwise
/// `size_mismatch` (sending again would not cure it), apart from a wrong whole-file digest
/// (`checksum_mismatch`, which it might).
#[tokio::test(flavor = "multi_thread")]
async fn eof_with_the_wrong_size_or_before_every_byte_is_refused_and_stores_nothing() {
    let d = InProcess::new().start();
    let mut raw = d.raw().await;
    let data = pattern(4 * CHUNK, 3);
    let (chunks, eof) = framed(&data, 0, CHUNK, DigestKind::Md5);
    let n = data.len() as u64;
    let cases = [
        ("every byte, then a larger size", chunks.clone(), n + 1),
        ("every byte, then a smaller size", chunks.clone(), n - 1),
        (
            "half the bytes, then the declared size",
            chunks[..2].to_vec(),
            n,
        ),
        ("no byte at all, then the declared size", vec![], n),
    ];
    for (case, frames, size) in cases {
        raw.start_put(put("a.bin", data.len())).await;
        raw.send_all(frames).await;
        raw.send(Message::Eof(protocol::Eof { size, ..eof })).await;
        let refused = raw.expect_error(ErrorCode::SizeMismatch).await;
        assert_eq!(refused.offset, None, "{case}: {refused:?}");
        raw.expect_usable().await;
        assert!(d.visible().is_empty(), "{case}: left {:?}", d.visible());
    }
    raw.start_put(put("a.bin", data.len())).await;
    raw.send_all(chunks).await;
    let wrong = protocol::Digest::md5(b"another file");
    raw.send(Message::Eof(protocol::Eof {
        digest: wrong,
        ..eof
    }))
    .await;
    let refused = raw.expect_error(ErrorCode::ChecksumMismatch).await;
    assert_eq!(refused.offset, None, "a whole-file mismatch: {refused:?}");
    raw.expect_usable().await;
    assert!(d.visible().is_empty(), "left {:?}", d.visible());
    assert!(
        d.staged().is_empty(),
        "uploads without an id left {:?}",
        d.staged()
    );
}

/// A client that lost its connection after one chunk puts again with `resume` and the same
/// `upload_id`: the daemon says how many bytes it kept and their digest, takes the rest, and
/// stores the whole file. The first chunk ends off a 4 KiB block, where staged bytes are
/// written through a different path than whole blocks.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_dropped_after_one_chunk_resumes_from_the_bytes_sent() {
    let d = InProcess::new().start();
    let data = pattern(50_000, 4);
    let sent = 20_000;
    let attempt = |resume| Put {
        upload_id: Some("resume-1".into()),
        resume,
        ..put("a.bin", data.len())
    };

    let mut first = d.raw().await;
    first.start_put(attempt(false)).await;
    let (chunks, _) = framed(&data, 0, sent, DigestKind::Md5);
    first.send(chunks[0].clone()).await;
    first.hang_up().await;
    assert!(d.visible().is_empty(), "half an upload is visible");

    let mut second = d.raw().await;
    let ready = second.start_put(attempt(true)).await;
    assert_eq!(
        ready.offset, sent as u64,
        "bytes kept from the first attempt"
    );
    assert_eq!(ready.digest, protocol::Digest::md5(&data[..sent]));
    let (rest, eof) = framed(&data, sent, CHUNK, DigestKind::Md5);
    second.send_all(rest).await;
    second.send(Message::Eof(eof)).await;
    assert_eq!(second.expect_stored().await, eof);
    assert_holds(&d.root_path("a.bin"), &data);
    assert!(
        d.staged().is_empty(),
        "a stored upload left {:?}",
        d.staged()
    );
    second.bye().await;
}

/// Regression (hardening, item 14): one upload that declared the whole remaining quota and
/// then sent an empty chunk every stall timeout made every other upload fail `too_large` for as
/// long as it liked. Empty chunks and a trickle are no progress: a transfer slower than
/// `--min-rate` for a whole stall window is cut with `timeout`, and its reservation freed.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_that_makes_no_progress_stops_holding_the_quota() {
    let d = InProcess::new()
        .arg("--quota")
        .arg("1MiB")
        .arg("--stall-timeout")
        .arg("1s")
        .arg("--min-rate")
        .arg("1KiB")
        .start();
    let data = pattern(64 * 1024, 4);
    std::fs::write(d.local_path("small"), &data).unwrap();

    let mut hog = d.raw().await;
    hog.start_put(put("hog", 1024 * 1024)).await;
    let mut other = d.client().await;
    let opts = ftp_cli::client::TransferOptions::default();
    let mut none = ftp_cli::client::NoProgress;
    let refused = other
        .put(&d.local_path("small"), "small", opts, &mut none)
        .await;
    assert!(
        refused.is_err(),
        "the hog holds the whole quota: {refused:?}"
    );

    // Empty chunks, each well within the stall timeout, until the daemon cuts the hog off.
    let empty = protocol::ChunkHeader {
        offset: 0,
        len: 0,
        digest: protocol::Digest::empty(DigestKind::Md5),
    };
    let started = std::time::Instant::now();
    let farewell = loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "an upload moving nothing was never cut"
        );
        match hog.try_send_and_recv(Message::Chunk(empty), 200).await {
            Some(message) => break message,
            None => continue,
        }
    };
    assert!(
        matches!(&farewell, Message::Error(e) if e.code == ErrorCode::Timeout),
        "expected error timeout, got {farewell:?}"
    );
    other
        .put(&d.local_path("small"), "small", opts, &mut none)
        .await
        .expect("the quota is free again");
    assert_holds(&d.root_path("small"), &data);
}

/// The daemon reports a bad chunk as soon as it has checked it, not at the next frame: the
/// peer sends a good chunk and a damaged one of a longer upload, then waits, sending nothing
/// more, and the refusal comes. (A client must not count on this: at the latest, the refusal
/// is the answer to `eof`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_chunk_is_refused_without_waiting_for_the_next_frame() {
    let d = InProcess::new().start();
    let mut raw = d.raw().await;
    let data = pattern(8 * CHUNK, 7);
    raw.start_put(put("a.bin", data.len())).await;
    let (chunks, _) = framed(&data, 0, CHUNK, DigestKind::Md5);
    raw.send(chunks[0].clone()).await;
    raw.send(damaged(chunks[1].clone())).await;
    let refused = raw.expect_error(ErrorCode::ChecksumMismatch).await;
    assert_eq!(refused.offset, Some(CHUNK as u64), "{refused:?}");
    // As a client does after an early refusal: `abort`, answered by nothing.
    raw.send(Message::Abort(protocol::ErrorReply::new(
        ErrorCode::ChecksumMismatch,
        "stopping after the server's error",
    )))
    .await;
    raw.expect_usable().await;
    assert!(d.visible().is_empty(), "left {:?}", d.visible());
}

/// Inside an upload only `chunk`, `eof` and `abort` may come: anything else (a command, a
/// `cancel`, a header the daemon cannot read) is `bad_request` and the connection closes, as
/// the stream can no longer be trusted to be in step.
#[tokio::test(flavor = "multi_thread")]
async fn any_other_message_inside_an_upload_closes_the_connection() {
    let d = InProcess::new().start();
    let data = pattern(2 * CHUNK, 8);
    let (chunks, _) = framed(&data, 0, CHUNK, DigestKind::Md5);
    for intruder in [Message::Pwd, Message::Cancel, Message::Bye] {
        let mut raw = d.raw().await;
        raw.start_put(put("a.bin", data.len())).await;
        raw.send(chunks[0].clone()).await;
        raw.send(intruder.clone()).await;
        let refused = raw.expect_error(ErrorCode::BadRequest).await;
        assert!(
            refused.message.contains("upload"),
            "{intruder:?}: {refused:?}"
        );
        raw.expect_closed().await;
    }
    assert!(d.visible().is_empty(), "left {:?}", d.visible());
}
