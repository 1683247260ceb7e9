//! The daemon on a backend behind `storage::Backend` (the in-memory one, standing in for S3):
//! the same round trips, resume and namespace commands as on the local root, through the
//! daemon's remote path (streamed gets, puts handed chunk by chunk to the backend).

use std::fs;
use std::sync::Arc;

use ftp_cli::client::{NoProgress, TransferOptions};
use protocol::{Digest, DigestKind, Message, Put};
use storage::{Backend, MemoryBackend, VPath};

use crate::util::{assert_holds, framed, pattern, put, put_then_get, InProcess};

const CHUNK: usize = 16 * 1024;

/// Nothing, one byte, one chunk, a byte into a second chunk, and several chunks and a bit:
/// put then get give back the same bytes, with either digest, and the backend holds them.
#[tokio::test(flavor = "multi_thread")]
async fn put_then_get_through_a_backend_gives_back_the_same_bytes() {
    let chunk = protocol::DEFAULT_CHUNK as usize;
    for digest in [DigestKind::Md5, DigestKind::Blake3] {
        let backend = Arc::new(MemoryBackend::new());
        let d = InProcess::new().on(backend.clone()).start();
        let mut c = d.client_using(digest).await;
        for (seed, size) in [0, 1, chunk, chunk + 1, 3 * chunk + 7]
            .into_iter()
            .enumerate()
        {
            let case = format!("{size} bytes with {}", digest.name());
            let data = pattern(size, seed as u64);
            let name = format!("{size}.bin");
            let stored = async || {
                let at = VPath::resolve(&VPath::root(), &name).unwrap();
                let stored = backend.stat(&at).await.unwrap();
                assert_eq!(stored.size, size as u64, "{case}: stored");
                assert!(d.visible().is_empty(), "{case}: the temp root was written");
            };
            put_then_get(&d, &mut c, &name, &data, digest, &case, stored).await;
        }
        c.bye().await;
    }
}

/// An upload dropped after one chunk is not visible; a second attempt with the same id and
/// `resume` is told the bytes the backend kept and their digest, sends the rest, and the file
/// is whole.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_dropped_part_way_resumes_from_what_the_backend_kept() {
    let backend = Arc::new(MemoryBackend::new());
    let d = InProcess::new().on(backend).start();
    let data = pattern(5 * CHUNK + 11, 7);
    let sent = 2 * CHUNK;
    let attempt = |resume| Put {
        upload_id: Some("remote-resume".into()),
        resume,
        ..put("a.bin", data.len())
    };
    let mut first = d.raw().await;
    first.start_put(attempt(false)).await;
    let (chunks, _) = framed(&data, 0, CHUNK, DigestKind::Md5);
    first.send_all(chunks[..2].to_vec()).await;
    first.hang_up().await;

    let mut c = d.client().await;
    let names: Vec<String> = c
        .list("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(names.is_empty(), "half an upload is listed: {names:?}");

    let mut second = d.raw().await;
    let ready = second.start_put(attempt(true)).await;
    assert!(
        ready.offset <= sent as u64,
        "kept more than was sent: {}",
        ready.offset
    );
    let offset = usize::try_from(ready.offset).unwrap();
    assert_eq!(
        ready.digest,
        Digest::md5(&data[..offset]),
        "the kept bytes' digest"
    );
    let (rest, eof) = framed(&data, offset, CHUNK, DigestKind::Md5);
    second.send_all(rest).await;
    second.send(Message::Eof(eof)).await;
    assert_eq!(second.expect_stored().await, eof);
    second.bye().await;

    let back = d.local_path("a.back");
    c.get("a.bin", &back, TransferOptions::default(), &mut NoProgress)
        .await
        .unwrap();
    assert_holds(&back, &data);
    c.bye().await;
}

/// mkdir, a listing, rename, stat with MD5, rm, rmdir (refused while not empty), no clobber
/// without overwrite and `df`, all answered by the backend.
#[tokio::test(flavor = "multi_thread")]
async fn namespace_commands_are_answered_by_the_backend() {
    let backend = Arc::new(MemoryBackend::new());
    let d = InProcess::new().on(backend).start();
    let mut c = d.client().await;
    let data = pattern(3 * CHUNK, 9);
    let local = d.local_path("f.bin");
    fs::write(&local, &data).unwrap();

    c.mkdir("docs", false).await.unwrap();
    c.put(
        &local,
        "docs/f.bin",
        TransferOptions::default(),
        &mut NoProgress,
    )
    .await
    .unwrap();
    let again = c
        .put(
            &local,
            "docs/f.bin",
            TransferOptions::default(),
            &mut NoProgress,
        )
        .await
        .expect_err("a second put without overwrite replaced the file");
    assert!(again.to_string().contains("exists"), "{again}");

    let listed: Vec<String> = c
        .list("/docs")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listed, ["f.bin"]);
    c.rename("docs/f.bin", "docs/g.bin").await.unwrap();
    let stat = c.stat("docs/g.bin", true).await.unwrap();
    assert_eq!(
        (stat.entry.size, stat.md5),
        (data.len() as u64, Some(Digest::md5(&data)))
    );

    let busy = c
        .rmdir("docs")
        .await
        .expect_err("a directory with a file was removed");
    assert!(busy.to_string().contains("not empty"), "{busy}");
    c.rm("docs/g.bin").await.unwrap();
    c.rmdir("docs").await.unwrap();
    assert!(c.list("/").await.unwrap().is_empty());
    assert!(c.df().await.unwrap().is_some(), "df has no answer");
    c.bye().await;
}
