//! The backend contract (`storage::contract`) against the memory backend and the local root:
//! `cargo test -p storage --features contract`.
#![cfg(feature = "contract")]

use std::sync::Arc;

use storage::contract;
use storage::{Backend, LocalBackend, MemoryBackend, Root};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_keeps_the_contract() {
    contract::all(Arc::new(MemoryBackend::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_root_keeps_the_contract() {
    contract::all(local().backend).await;
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
