//! What the memory backend does beyond the contract: its own limits, the sweep on a clock the
//! test moves, and a newer attempt taking an upload over. It needs no runtime: futures'
//! executor runs it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use checksum::{Digest, DigestKind};
use futures::executor::block_on;
use storage::{Backend, Error, HomeLimits, MemoryBackend, MemoryLimits, UploadRequest, VPath};

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).unwrap()
}

fn req(size: u64, id: Option<&str>, resume: bool) -> UploadRequest {
    UploadRequest {
        size,
        overwrite: false,
        upload_id: id.map(str::to_owned),
        resume,
        mtime: None,
        digest: DigestKind::Md5,
    }
}

/// Writes `data` as one chunk.
async fn write(w: &mut Box<dyn storage::Writing>, data: &[u8]) -> storage::Result<()> {
    let mut h = w.prefix();
    w.write(Bytes::copy_from_slice(data), h.seal(data)).await
}

async fn put(b: &dyn Backend, path: &str, data: &[u8]) -> storage::Result<()> {
    let mut w = b
        .begin_upload(&p(path), &req(data.len() as u64, None, false))
        .await?;
    write(&mut w, data).await?;
    w.commit(Digest::md5(data), false).await
}

fn too_large<T>(r: storage::Result<T>) -> bool {
    matches!(r, Err(Error::TooLarge { .. }))
}

#[test]
fn the_sweep_removes_interrupted_uploads_only_once_they_are_old() {
    block_on(async {
        let b = MemoryBackend::new();
        let mut w = b
            .begin_upload(&p("f"), &req(6, Some("id"), false))
            .await
            .unwrap();
        write(&mut w, b"abc").await.unwrap();
        let mut busy = b
            .begin_upload(&p("g"), &req(6, Some("other"), false))
            .await
            .unwrap();
        write(&mut busy, b"xyz").await.unwrap();
        drop(w);
        b.advance(Duration::from_secs(30));
        assert_eq!(b.sweep(Duration::from_secs(60)).await.unwrap(), 0);
        b.advance(Duration::from_secs(31));
        assert_eq!(
            b.sweep(Duration::from_secs(60)).await.unwrap(),
            1,
            "the interrupted one goes, the one in progress stays"
        );
        let again = b
            .begin_upload(&p("f"), &req(6, Some("id"), true))
            .await
            .unwrap();
        assert_eq!(again.offset(), 0, "swept: nothing to resume");
        write(&mut busy, b"456").await.unwrap();
        busy.commit(Digest::md5(b"xyz456"), false).await.unwrap();
    });
}

#[test]
fn a_newer_attempt_takes_the_upload_over_from_the_older() {
    block_on(async {
        let b = MemoryBackend::new();
        let mut older = b
            .begin_upload(&p("f"), &req(6, Some("id"), false))
            .await
            .unwrap();
        write(&mut older, b"abc").await.unwrap();
        let mut newer = b
            .begin_upload(&p("f"), &req(6, Some("id"), true))
            .await
            .unwrap();
        assert_eq!(newer.offset(), 3);
        assert_eq!(newer.prefix().digest(), Digest::md5(b"abc"));
        assert!(matches!(
            write(&mut older, b"XXX").await,
            Err(Error::Busy { .. })
        ));
        assert!(older.commit(Digest::md5(b"abcXXX"), false).await.is_err());
        write(&mut newer, b"def").await.unwrap();
        newer.commit(Digest::md5(b"abcdef"), false).await.unwrap();
        assert_eq!(b.stat(&p("f")).await.unwrap().size, 6);
    });
}

#[test]
fn uploads_without_an_id_are_not_kept() {
    block_on(async {
        let b = MemoryBackend::with_limits(MemoryLimits {
            quota: Some(10),
            ..Default::default()
        });
        let mut w = b.begin_upload(&p("f"), &req(8, None, false)).await.unwrap();
        write(&mut w, b"abcd").await.unwrap();
        assert_eq!(b.usage().await.unwrap().bytes, 8, "promised while it runs");
        drop(w);
        assert_eq!(
            b.usage().await.unwrap().bytes,
            0,
            "nothing held once dropped"
        );
    });
}

#[test]
fn the_stores_limits_count_files_uploads_in_flight_and_kept_bytes() {
    block_on(async {
        let b = MemoryBackend::with_limits(MemoryLimits {
            max_file_size: Some(8),
            quota: Some(10),
        });
        assert!(too_large(
            b.begin_upload(&p("big"), &req(9, None, false)).await
        ));
        put(&b, "a", b"12345").await.unwrap();
        let mut w = b
            .begin_upload(&p("b"), &req(4, Some("id"), false))
            .await
            .unwrap();
        assert!(too_large(
            b.begin_upload(&p("c"), &req(2, None, false)).await
        ));
        write(&mut w, b"12").await.unwrap();
        drop(w);
        // Kept for a resume: its 2 bytes count, not the 4 it was promised.
        assert_eq!(b.usage().await.unwrap().bytes, 7);
        put(&b, "c", b"123").await.unwrap();
        assert!(too_large(
            b.begin_upload(&p("d"), &req(1, None, false)).await
        ));
        // The resume takes its kept bytes back into its own promise.
        let w = b
            .begin_upload(&p("b"), &req(2, Some("id"), true))
            .await
            .unwrap();
        assert_eq!(w.offset(), 2);
        w.commit(Digest::md5(b"12"), false).await.unwrap();
        assert_eq!(b.usage().await.unwrap().bytes, 10);
    });
}

#[test]
fn a_homes_cap_on_files_counts_directories_and_uploads_in_flight() {
    block_on(async {
        let b = MemoryBackend::new();
        b.mkdir(&p("h"), false).await.unwrap();
        let limits = HomeLimits {
            quota: None,
            max_files: Some(2),
        };
        b.set_home_limits(vec![(p("h"), "dave".into(), limits)]);
        let home: Arc<dyn Backend> = b.home(&p("h"), "dave").unwrap();
        home.mkdir(&p("d"), false).await.unwrap();
        let w = home
            .begin_upload(&p("f"), &req(1, None, false))
            .await
            .unwrap();
        assert!(too_large(home.mkdir(&p("e"), false).await));
        assert!(too_large(
            home.begin_upload(&p("g"), &req(1, None, false)).await
        ));
        drop(w);
        home.mkdir(&p("e"), false).await.unwrap();
        assert_eq!(home.usage().await.unwrap().files, 2);
    });
}
