//! A home's quota across instances (`--database`): two backends on one bucket reserve against
//! the one usage count in PostgreSQL, so together they hold the home to its quota, and a
//! delete through one is room the other sees.

use std::sync::Arc;

use ftpd::store::{PgRegistry, PgUsage};
use protocol::{Digest, DigestKind};
use s3store::{PartSize, S3Backend, S3Options, UploadRegistry, UsageLedger, MIN_PART_SIZE};
use storage::{Backend, Error, HomeLimits, UploadRequest};

use super::{config, data, p, raw, services, write_to};
use crate::services::{moto, Moto, Restartable};

/// Bytes ann's home may hold.
const QUOTA: u64 = 100;

/// One instance: its own state and backend, with ann's home limited to [`QUOTA`] as the
/// daemon sets it from the user table; ann's view of it.
async fn instance(m: &Moto, db: &str, name: &str) -> Arc<dyn Backend> {
    let state = pgstate::State::connect(db, name)
        .await
        .unwrap_or_else(|e| panic!("connect: {}", e.detail()));
    let opts = S3Options {
        part_budget: 64 << 20,
        part_size: PartSize::new(MIN_PART_SIZE).unwrap(),
        holder: name.to_owned(),
        registry: Some(Arc::new(PgRegistry::new(state.clone())) as Arc<dyn UploadRegistry>),
        usage: Some(Arc::new(PgUsage::new(state)) as Arc<dyn UsageLedger>),
        ..S3Options::default()
    };
    let backend = S3Backend::open(config(m), opts).await.unwrap();
    let limits = HomeLimits {
        quota: Some(QUOTA),
        max_files: None,
    };
    backend.set_home_limits(vec![(p("ann"), "ann".to_owned(), limits)]);
    backend.home(&p("ann"), "ann").unwrap()
}

fn plain(size: u64) -> UploadRequest {
    UploadRequest {
        size,
        overwrite: false,
        upload_id: None,
        resume: false,
        mtime: None,
        digest: DigestKind::Md5,
    }
}

/// Stores `size` bytes at `path` through `view`, or the refusal of the upload.
async fn store(view: &dyn Backend, path: &str, size: u64) -> Result<(), Error> {
    let bytes = data(size as usize);
    let mut w = view.begin_upload(&p(path), &plain(size)).await?;
    write_to(&mut w, &bytes, bytes.len()).await?;
    w.commit(Digest::md5(&bytes), false).await
}

fn is_quota(r: &Result<(), Error>) -> bool {
    matches!(r, Err(Error::TooLarge { what, .. }) if what.contains("ann's quota of 100 bytes"))
}

/// Instance A and B together cannot store more than ann's quota, an upload in flight on one
/// counting on the other; a delete through A is room for B.
#[tokio::test]
async fn a_home_holds_its_quota_across_two_instances() {
    let Some((m, db)) = services().await else {
        return;
    };
    let a = instance(&m, &db, "a").await;
    let b = instance(&m, &db, "b").await;
    // Each counts the home once (both empty), as on its first upload or df.
    assert_eq!(a.usage().await.unwrap().bytes, 0);
    assert_eq!(b.usage().await.unwrap().bytes, 0);

    // 60 bytes in flight through A: 60 more through B would pass the quota.
    let bytes = data(60);
    let mut w = a.begin_upload(&p("one"), &plain(60)).await.unwrap();
    let r = store(b.as_ref(), "two", 60).await;
    assert!(
        is_quota(&r),
        "B passed the quota with A's upload in flight: {r:?}"
    );
    write_to(&mut w, &bytes, bytes.len()).await.unwrap();
    w.commit(Digest::md5(&bytes), false).await.unwrap();
    assert_eq!(b.usage().await.unwrap().bytes, 60, "B sees A's file");

    // Exactly the quota together, then not a byte more through either.
    store(b.as_ref(), "two", 40).await.unwrap();
    let r = store(a.as_ref(), "three", 1).await;
    assert!(is_quota(&r), "A passed the quota after B's upload: {r:?}");
    let r = store(b.as_ref(), "three", 1).await;
    assert!(is_quota(&r), "B passed its own quota: {r:?}");

    // A delete through A is room for B, though B never saw the file stored or deleted.
    a.remove_file(&p("one")).await.unwrap();
    assert_eq!(b.usage().await.unwrap().bytes, 40);
    store(b.as_ref(), "three", 60).await.unwrap();
    let r = store(a.as_ref(), "four", 1).await;
    assert!(
        is_quota(&r),
        "A passed the quota after B used the room: {r:?}"
    );
    let listed = raw(&m).list_page("ann/", None, None).await.unwrap();
    let held: u64 = listed.objects.iter().map(|o| o.size).sum();
    assert_eq!(held, QUOTA, "what the bucket holds");
}

/// With the database down, an upload that needs a reservation is refused as worth a retry,
/// never let past a quota it cannot check; once it is back, the upload goes through.
#[tokio::test]
async fn an_upload_is_refused_as_busy_while_the_quota_cannot_be_checked() {
    let Some(m) = moto() else { return };
    let Some(pg) = Restartable::start() else {
        return;
    };
    let pg = Arc::new(pg);
    raw(&m).create_bucket().await.unwrap();
    let a = instance(&m, &pg.url(), "a").await;
    assert_eq!(a.usage().await.unwrap().bytes, 0);

    let down = pg.clone();
    tokio::task::spawn_blocking(move || down.down())
        .await
        .unwrap();
    let r = store(a.as_ref(), "one", 10).await;
    assert!(
        matches!(r, Err(Error::Unavailable { .. })),
        "stored without a reservation: {r:?}"
    );
    let up = pg.clone();
    tokio::task::spawn_blocking(move || up.up()).await.unwrap();
    store(a.as_ref(), "one", 10).await.unwrap();
    assert_eq!(a.usage().await.unwrap().bytes, 10);
}
