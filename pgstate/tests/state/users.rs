use std::time::Duration;

use pgstate::{Limits, Options, UserRow};

use crate::util::{eventually, fresh_db, until_some};

fn ann() -> UserRow {
    UserRow {
        name: "ann".into(),
        verifier: Some("SCRAM-SHA-256$4096:c2FsdA==$a2V5$c2VydmVy".into()),
        keys: vec!["SHA256:abc".into()],
        home: "ann".into(),
        read_only: false,
        limits: Limits {
            rate_up: Some(1 << 20),
            rate_down: None,
            quota: Some(10 << 30),
            max_files: Some(1000),
            max_sessions: Some(3),
        },
    }
}

/// A user put on one instance reads back the same on another; a change bumps the version.
#[tokio::test]
async fn users_round_trip_between_instances() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let v1 = a.put_user(&ann()).await.unwrap();
    assert_eq!(b.user("ann").await.unwrap(), Some(ann()));
    let v2 = a
        .set_verifier("ann", Some("SCRAM-SHA-256$4096:eA==$eQ==$eg=="))
        .await
        .unwrap();
    assert!(v2 > Some(v1));
    let snapshot = b.users().await.unwrap();
    assert_eq!(Some(snapshot.version), v2);
    assert_eq!(snapshot.users.len(), 1);
    assert_eq!(
        snapshot.users[0].verifier.as_deref(),
        Some("SCRAM-SHA-256$4096:eA==$eQ==$eg==")
    );
    assert_eq!(a.set_verifier("nobody", None).await.unwrap(), None);
    let keyless = UserRow {
        keys: vec![],
        ..ann()
    };
    a.put_user(&keyless).await.unwrap();
    assert!(
        a.set_verifier("ann", None).await.is_err(),
        "a user left with no way to log in is refused"
    );
    assert!(a.remove_user("ann").await.unwrap().is_some());
    assert_eq!(b.user("ann").await.unwrap(), None);
    assert_eq!(a.remove_user("ann").await.unwrap(), None);
    let bad = UserRow {
        name: "x".repeat(65),
        ..ann()
    };
    assert!(matches!(
        a.put_user(&bad).await,
        Err(pgstate::Error::Invalid(_))
    ));
    assert!(
        !format!("{:?}", ann()).contains("c2VydmVy"),
        "no verifier in Debug"
    );
}

/// A change on one instance reaches another's watch by NOTIFY (its poll is set to an hour,
/// so only the notification can tell it in time).
#[tokio::test]
async fn a_change_is_notified_to_another_instance() {
    let Some(db) = fresh_db().await else { return };
    let a = db.state("a").await;
    let b = db
        .state_with(Options {
            users_poll: Duration::from_secs(3600),
            ..Options::new("b")
        })
        .await;
    let mut watch = b.watch().await.unwrap();
    // The LISTEN is in place once its connection shows in pg_stat_activity.
    let sql = db.sql().await;
    let listening = || async {
        sql.query_opt(
            "SELECT 1 FROM pg_stat_activity WHERE query = 'LISTEN ftpd_users'",
            &[],
        )
        .await
        .unwrap()
        .is_some()
    };
    assert!(eventually(Duration::from_secs(10), listening).await);
    let version = a.put_user(&ann()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("notified in time")
        .unwrap();
    assert_eq!(*watch.borrow(), version);
}

/// With its LISTEN connection killed, a watch still sees a change, by its poll, and listens
/// again.
#[tokio::test]
async fn a_watch_falls_back_to_polling_when_its_connection_drops() {
    let Some(db) = fresh_db().await else { return };
    let a = db.state("a").await;
    let b = db
        .state_with(Options {
            users_poll: Duration::from_millis(200),
            ..Options::new("b")
        })
        .await;
    let mut watch = b.watch().await.unwrap();
    let sql = db.sql().await;
    let listener = || async {
        sql.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN ftpd_users'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get::<_, i32>(0))
    };
    let pid = until_some(Duration::from_secs(10), listener)
        .await
        .expect("listening");
    sql.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let version = a.put_user(&ann()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("seen in time")
        .unwrap();
    assert_eq!(*watch.borrow(), version);
    let relistened = eventually(Duration::from_secs(10), || async {
        listener().await.is_some_and(|p| p != pid)
    })
    .await;
    assert!(relistened, "a new LISTEN connection");
}
