//! The backend contract (`storage::contract`) against the memory backend and the local root:
//! `cargo test -p ftpd --test contract`.

use std::sync::Arc;

use ftpd::store::LocalBackend;
use storage::contract;
use storage::{Backend, MemoryBackend, Root};

/// A local root in a temp dir (with its state directory beside it), removed when dropped.
struct Site {
    /// Holds `root/` and `state/`.
    _dir: tempfile::TempDir,
    /// The root as a backend.
    backend: Arc<dyn Backend>,
}

fn local() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let opened = Root::open(&root, &dir.path().join("state")).unwrap();
    let backend = LocalBackend::new(opened)
        .unwrap()
        .located(root.display().to_string());
    Site {
        _dir: dir,
        backend: Arc::new(backend),
    }
}

/// Runs the whole contract, failing (not hanging) when a backend stops answering: its 40 MiB
/// or so of uploads and reads take seconds.
async fn within(all: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(std::time::Duration::from_secs(300), all)
        .await
        .expect("the contract took longer than 5 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_keeps_the_contract() {
    within(contract::all(Arc::new(MemoryBackend::new()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_root_keeps_the_contract() {
    within(contract::all(local().backend)).await;
}

/// Memory keeps every byte written: a resume continues from all of them.
#[tokio::test]
async fn memory_resumes_from_every_byte_written() {
    let offset = contract::resume_after_drop(Arc::new(MemoryBackend::new())).await;
    assert_eq!(offset, 7 << 20);
}

/// The local root keeps what reached the staging file: all but what the dropped upload still
/// buffered when a resume overtook its flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_root_resumes_from_what_reached_the_disk() {
    let site = local();
    let offset = contract::resume_after_drop(site.backend.clone()).await;
    assert!(offset > 6 << 20, "{offset}");
}

/// One operation of the table below, on a backend holding the tree `same_tree` makes.
type Op = fn(Arc<dyn Backend>) -> futures::future::BoxFuture<'static, storage::Result<()>>;

/// `/d/f` (3 bytes), `/t` (1 byte), empty `/e`.
async fn same_tree(b: &Arc<dyn Backend>) {
    b.mkdir(&p("d"), false).await.unwrap();
    b.mkdir(&p("e"), false).await.unwrap();
    for (path, data) in [("d/f", &b"fff"[..]), ("t", b"t")] {
        let mut w = b
            .begin_upload(&p(path), &req(data.len() as u64))
            .await
            .unwrap();
        let digest = protocol::Digest::md5(data);
        w.write(bytes::Bytes::copy_from_slice(data), digest)
            .await
            .unwrap();
        w.commit(digest, false).await.unwrap();
    }
}

fn p(s: &str) -> storage::VPath {
    storage::VPath::resolve(&storage::VPath::root(), s).unwrap()
}

fn req(size: u64) -> storage::UploadRequest {
    storage::UploadRequest {
        size,
        overwrite: false,
        upload_id: None,
        resume: false,
        mtime: None,
        digest: protocol::DigestKind::Md5,
    }
}

/// The memory backend refuses what the local root refuses, with the same error naming the same
/// path, operation by operation, beyond what the contract's cases pin down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_refuses_as_the_local_root_does() {
    use futures::FutureExt as _;
    macro_rules! op {
        ($name:literal, |$b:ident| $body:expr) => {
            (
                $name,
                (|$b: Arc<dyn Backend>| async move { $body }.boxed()) as Op,
            )
        };
    }
    let ops: Vec<(&str, Op)> = vec![
        op!("stat /", |b| b.stat(&p("/")).await.map(drop)),
        op!("stat nope", |b| b.stat(&p("nope")).await.map(drop)),
        op!("stat d/f/x", |b| b.stat(&p("d/f/x")).await.map(drop)),
        op!("cd t", |b| b.check_dir(&p("t")).await),
        op!("cd d/f/x", |b| b.check_dir(&p("d/f/x")).await),
        op!("list d/f", |b| b.list(&p("d/f"), 9).await.map(drop)),
        op!("list d/f/x", |b| b.list(&p("d/f/x"), 9).await.map(drop)),
        op!("mkdir /", |b| b.mkdir(&p("/"), false).await),
        op!("mkdir -p /", |b| b.mkdir(&p("/"), true).await),
        op!("mkdir d", |b| b.mkdir(&p("d"), false).await),
        op!("mkdir d/f", |b| b.mkdir(&p("d/f"), false).await),
        op!("mkdir -p d/f", |b| b.mkdir(&p("d/f"), true).await),
        op!("mkdir -p d/f/x", |b| b.mkdir(&p("d/f/x"), true).await),
        op!("mkdir d/f/x", |b| b.mkdir(&p("d/f/x"), false).await),
        op!("mkdir nope/x", |b| b.mkdir(&p("nope/x"), false).await),
        op!("rm /", |b| b.remove_file(&p("/")).await),
        op!("rm d", |b| b.remove_file(&p("d")).await),
        op!("rm nope", |b| b.remove_file(&p("nope")).await),
        op!("rm d/f/x", |b| b.remove_file(&p("d/f/x")).await),
        op!("rmdir /", |b| b.remove_dir(&p("/")).await),
        op!("rmdir d", |b| b.remove_dir(&p("d")).await),
        op!("rmdir t", |b| b.remove_dir(&p("t")).await),
        op!("rmdir nope", |b| b.remove_dir(&p("nope")).await),
        op!("rmdir d/f/x", |b| b.remove_dir(&p("d/f/x")).await),
        op!("mv t t", |b| b.rename(&p("t"), &p("t")).await),
        op!("mv t d", |b| b.rename(&p("t"), &p("d")).await),
        op!("mv t e", |b| b.rename(&p("t"), &p("e")).await),
        op!("mv nope x", |b| b.rename(&p("nope"), &p("x")).await),
        op!("mv t nope/x", |b| b.rename(&p("t"), &p("nope/x")).await),
        op!("mv t d/f/x", |b| b.rename(&p("t"), &p("d/f/x")).await),
        op!("mv d/f/x y", |b| b.rename(&p("d/f/x"), &p("y")).await),
        op!("mv d d/sub", |b| b.rename(&p("d"), &p("d/sub")).await),
        op!("mv / x", |b| b.rename(&p("/"), &p("x")).await),
        op!("get /", |b| b.read(&p("/"), 0).await.map(drop)),
        op!("get d", |b| b.read(&p("d"), 0).await.map(drop)),
        op!("get nope", |b| b.read(&p("nope"), 0).await.map(drop)),
        op!("get d/f/x", |b| b.read(&p("d/f/x"), 0).await.map(drop)),
        op!("get d/f from 4", |b| b.read(&p("d/f"), 4).await.map(drop)),
        op!("put /", |b| b
            .begin_upload(&p("/"), &req(1))
            .await
            .map(drop)),
        op!("put d", |b| b
            .begin_upload(&p("d"), &req(1))
            .await
            .map(drop)),
        op!("put t", |b| b
            .begin_upload(&p("t"), &req(1))
            .await
            .map(drop)),
        op!("put nope/x", |b| b
            .begin_upload(&p("nope/x"), &req(1))
            .await
            .map(drop)),
        op!("put d/f/x", |b| b
            .begin_upload(&p("d/f/x"), &req(1))
            .await
            .map(drop)),
        op!("put bad id", |b| {
            let r = storage::UploadRequest {
                upload_id: Some("no spaces".into()),
                ..req(1)
            };
            b.begin_upload(&p("x"), &r).await.map(drop)
        }),
        op!("home t", |b| b.home(&p("t"), "u").map(drop)),
        op!("home nope", |b| b.home(&p("nope"), "u").map(drop)),
        op!("home d/f/x", |b| b.home(&p("d/f/x"), "u").map(drop)),
    ];
    let site = local();
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    same_tree(&site.backend).await;
    same_tree(&memory).await;
    let mut differ = Vec::new();
    for (name, op) in ops {
        let shown = |r: storage::Result<()>| r.map_err(|e| e.to_string());
        let want = shown(op(site.backend.clone()).await);
        let got = shown(op(memory.clone()).await);
        if got != want {
            differ.push(format!("{name}: local {want:?}, memory {got:?}"));
        }
    }
    assert!(differ.is_empty(), "\n{}", differ.join("\n"));
}
