//! What the local root's adapter does beyond the contract: bounded sorted listings of large
//! directories, reads in bounded pieces that notice a file cut short, drops outside a runtime.

use std::sync::Arc;

use bytes::Bytes;
use ftpd::store::LocalBackend;
use futures::StreamExt as _;
use protocol::{Digest, DigestKind};
use storage::{Backend, Error, Root, UploadRequest, VPath};

/// A local root in a temp dir, with its state directory beside it.
struct Site {
    /// Holds `root/` and `state/`; removed when dropped.
    dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let opened = Root::open(&root, &dir.path().join("state")).unwrap();
        let backend = Arc::new(LocalBackend::new(opened).unwrap().located("test root"));
        Site { dir, backend }
    }

    /// `rel` in the root, on disk.
    fn on_disk(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join("root").join(rel)
    }
}

fn p(s: &str) -> VPath {
    VPath::resolve(&VPath::root(), s).unwrap()
}

fn req(size: u64) -> UploadRequest {
    UploadRequest {
        size,
        overwrite: false,
        upload_id: Some("an-id".into()),
        resume: false,
        mtime: None,
        digest: DigestKind::Md5,
    }
}

#[tokio::test]
async fn a_listing_is_the_first_max_names_of_a_large_directory() {
    let site = Site::new();
    std::fs::create_dir(site.on_disk("d")).unwrap();
    // Created in an order unlike their names', so the directory's own order is no help.
    for i in (0..200).rev() {
        std::fs::write(site.on_disk(&format!("d/{:03}", (i * 7) % 200)), "x").unwrap();
    }
    let names: Vec<String> = site
        .backend
        .list(&p("d"), 7)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["000", "001", "002", "003", "004", "005", "006"]);
    assert_eq!(site.backend.list(&p("d"), 1000).await.unwrap().len(), 200);
    assert_eq!(site.backend.location(), "test root");
}

#[tokio::test]
async fn reads_come_in_pieces_of_at_most_a_mebibyte_and_a_file_cut_short_is_incomplete() {
    let site = Site::new();
    let data: Vec<u8> = (0..(3u32 << 20) + 9).map(|i| (i % 253) as u8).collect();
    std::fs::write(site.on_disk("f"), &data).unwrap();
    let mut r = site.backend.read(&p("f"), 5).await.unwrap();
    assert_eq!(r.size, data.len() as u64);
    let mut got = Vec::new();
    while let Some(piece) = r.body.next().await {
        let piece = piece.unwrap();
        assert!(piece.len() <= 1 << 20, "{}", piece.len());
        got.extend_from_slice(&piece);
    }
    assert!(got == data[5..], "the bytes from offset 5");

    let mut r = site.backend.read(&p("f"), 0).await.unwrap();
    let first = r.body.next().await.unwrap().unwrap();
    assert_eq!(first.len(), 1 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(site.on_disk("f"))
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let mut end = None;
    while let Some(piece) = r.body.next().await {
        if let Err(e) = piece {
            end = Some(e);
        }
    }
    match end {
        Some(Error::Incomplete { written, size, .. }) => {
            assert_eq!((written, size), (2 << 20, data.len() as u64))
        }
        other => panic!("a file cut short mid-read: {other:?}"),
    }
}

/// The drop of an interrupted upload flushes on a blocking thread inside a runtime, and on the
/// dropping thread outside one; either way its bytes are kept for a resume.
#[test]
fn an_upload_dropped_outside_a_runtime_is_kept_for_a_resume() {
    let site = Site::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let w = rt.block_on(async {
        let mut w = site.backend.begin_upload(&p("f"), &req(6)).await.unwrap();
        let mut h = w.prefix();
        w.write(Bytes::from_static(b"abc"), h.seal(b"abc"))
            .await
            .unwrap();
        w
    });
    drop(rt);
    drop(w);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut resume = req(6);
        resume.resume = true;
        let mut w = site.backend.begin_upload(&p("f"), &resume).await.unwrap();
        assert_eq!(w.offset(), 3);
        assert_eq!(w.prefix().digest(), Digest::md5(b"abc"));
        let mut h = w.prefix();
        w.write(Bytes::from_static(b"def"), h.seal(b"def"))
            .await
            .unwrap();
        w.commit(Digest::md5(b"abcdef"), false).await.unwrap();
    });
    assert_eq!(std::fs::read(site.on_disk("f")).unwrap(), b"abcdef");
}
