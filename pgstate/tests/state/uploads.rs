use std::time::Duration;

use pgstate::{Error, Lease, NewUpload, Part};

use crate::util::fresh_db;

fn new_upload(upload_id: &str) -> NewUpload {
    NewUpload {
        key: "ann/big.iso".into(),
        upload_id: upload_id.into(),
        part_size: 8 << 20,
        digest_kind: "md5".into(),
        digest_state: "s0".into(),
        holder: "a/session-1".into(),
        client_id: Some("ann:c-1".into()),
        size: Some(20 << 20),
    }
}

fn part(number: u32, etag: &str) -> Part {
    Part {
        number,
        etag: etag.into(),
        size: 8 << 20,
        digest_state: format!("s{number}"),
        chunks: Some(format!("[\"c{number}\"]")),
    }
}

/// A resume on another instance takes the upload over: the old holder's next part is refused
/// and not listed at completion, the new holder continues after the verified parts.
#[tokio::test]
async fn an_old_lease_is_fenced_and_its_part_not_listed() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let (old, replaced) = a.start_upload(&new_upload("u1")).await.unwrap();
    assert_eq!(replaced, None);
    a.record_part(&old, &part(1, "e1")).await.unwrap();
    a.record_part(&old, &part(2, "e2")).await.unwrap();

    let taken = b
        .take_lease("ann/big.iso", "b/session-9")
        .await
        .unwrap()
        .unwrap();
    assert!(taken.token > old.token);
    assert_eq!(taken.parts, [part(1, "e1"), part(2, "e2")]);
    assert_eq!(taken.offset(), 16 << 20);
    assert_eq!(taken.resume_state(), "s2");
    let new = taken.lease();

    assert!(matches!(
        a.record_part(&old, &part(3, "stale")).await,
        Err(Error::Fenced)
    ));
    assert!(matches!(a.parts(&old).await, Err(Error::Fenced)));
    assert!(matches!(a.finish_upload(&old).await, Err(Error::Fenced)));
    b.record_part(&new, &part(3, "e3")).await.unwrap();
    let parts = b.parts(&new).await.unwrap();
    assert_eq!(parts, [part(1, "e1"), part(2, "e2"), part(3, "e3")]);
    let rows: i64 = db
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM upload_parts WHERE etag = 'stale'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the fenced part was never stored");

    b.finish_upload(&new).await.unwrap();
    assert_eq!(a.upload("ann/big.iso").await.unwrap(), None);

    // A new upload of the same key later: tokens are never reused, so neither old lease
    // can write to it.
    let (fresh, _) = a.start_upload(&new_upload("u2")).await.unwrap();
    assert!(fresh.token > new.token);
    for stale in [&old, &new] {
        assert!(matches!(
            b.record_part(stale, &part(1, "x")).await,
            Err(Error::Fenced)
        ));
    }
    let relabelled = Lease {
        upload_id: "u2".into(),
        ..new.clone()
    };
    assert!(matches!(
        b.record_part(&relabelled, &part(1, "x")).await,
        Err(Error::Fenced)
    ));
}

/// A start replaces an earlier upload of the same key and says which, to abort it.
#[tokio::test]
async fn a_new_start_replaces_and_names_the_earlier_upload() {
    let Some(db) = fresh_db().await else { return };
    let a = db.state("a").await;
    let (first, _) = a.start_upload(&new_upload("u1")).await.unwrap();
    a.record_part(&first, &part(1, "e1")).await.unwrap();
    let (second, replaced) = a.start_upload(&new_upload("u2")).await.unwrap();
    assert_eq!(replaced.as_deref(), Some("u1"));
    assert!(
        a.parts(&second).await.unwrap().is_empty(),
        "the old parts are forgotten"
    );
    assert!(matches!(
        a.record_part(&first, &part(2, "e2")).await,
        Err(Error::Fenced)
    ));
    assert_eq!(a.take_lease("nobody/none", "a").await.unwrap(), None);
    assert!(a.remove_upload("ann/big.iso").await.unwrap());
    assert_eq!(a.upload("ann/big.iso").await.unwrap(), None, "forgotten");
}

/// The race itself: an instance recording parts as fast as it can while another takes the
/// upload over. Every part the first got recorded is one the second was handed; none after.
#[tokio::test]
async fn a_takeover_racing_with_records_hands_over_exactly_what_was_recorded() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let (lease, _) = a.start_upload(&new_upload("u1")).await.unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(async move {
        let mut first_tx = Some(first_tx);
        let mut recorded = 0;
        for n in 1..=10_000 {
            match a.record_part(&lease, &part(n, &format!("e{n}"))).await {
                Ok(()) => recorded += 1,
                Err(Error::Fenced) => return recorded,
                Err(e) => panic!("{}", e.detail()),
            }
            if let Some(tx) = first_tx.take() {
                let _ = tx.send(());
            }
        }
        panic!("never fenced");
    });
    first_rx.await.unwrap();
    let taken = b.take_lease("ann/big.iso", "b").await.unwrap().unwrap();
    let recorded = writer.await.unwrap();
    assert!(recorded >= 1);
    assert_eq!(
        taken.parts.len(),
        recorded,
        "handed exactly the parts recorded"
    );
    assert_eq!(b.parts(&taken.lease()).await.unwrap().len(), recorded);
}

/// Schema 2's fields: what the registry is handed at the start and with each part comes back
/// with the upload, to whoever takes it over.
#[tokio::test]
async fn the_client_id_size_and_chunks_come_back_with_a_takeover() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let (lease, _) = a.start_upload(&new_upload("u1")).await.unwrap();
    let unaligned = Part {
        chunks: None,
        ..part(2, "e2")
    };
    a.record_part(&lease, &part(1, "e1")).await.unwrap();
    a.record_part(&lease, &unaligned).await.unwrap();
    let taken = b.take_lease("ann/big.iso", "b").await.unwrap().unwrap();
    assert_eq!(taken.client_id.as_deref(), Some("ann:c-1"));
    assert_eq!(taken.size, Some(20 << 20));
    assert_eq!(taken.parts, [part(1, "e1"), unaligned]);
    assert_eq!(b.upload("ann/big.iso").await.unwrap(), Some(taken));
    let without = NewUpload {
        client_id: None,
        size: None,
        ..new_upload("u2")
    };
    b.start_upload(&without).await.unwrap();
    let found = b.upload("ann/big.iso").await.unwrap().unwrap();
    assert_eq!((found.client_id, found.size), (None, None));
    let huge = Part {
        chunks: Some("x".repeat(400 << 10)),
        ..part(1, "e1")
    };
    let (lease, _) = b.start_upload(&new_upload("u3")).await.unwrap();
    assert!(matches!(
        b.record_part(&lease, &huge).await,
        Err(Error::Invalid(_))
    ));
}

/// The sweeper's take of abandoned uploads forgets them in the statement that finds them, so
/// that a resume at the same moment either comes first (and the upload is not stale) or finds
/// nothing; two sweepers at once never both get one upload.
#[tokio::test]
async fn the_sweep_of_uploads_forgets_what_it_returns() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let (lease, _) = a.start_upload(&new_upload("u1")).await.unwrap();
    a.record_part(&lease, &part(1, "e1")).await.unwrap();
    let recent = a
        .sweep_uploads(Duration::from_secs(3600), 10)
        .await
        .unwrap();
    assert!(recent.is_empty(), "written to just now");
    let (first, second) = tokio::join!(
        a.sweep_uploads(Duration::ZERO, 10),
        b.sweep_uploads(Duration::ZERO, 10)
    );
    let mut swept = first.unwrap();
    swept.extend(second.unwrap());
    assert_eq!(swept, [("ann/big.iso".to_string(), "u1".to_string())]);
    assert_eq!(a.upload("ann/big.iso").await.unwrap(), None);
    assert!(matches!(
        a.record_part(&lease, &part(2, "e2")).await,
        Err(Error::Fenced)
    ));
    let parts: i64 = db
        .sql()
        .await
        .query_one("SELECT count(*) FROM upload_parts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parts, 0, "its parts went with it");
}
