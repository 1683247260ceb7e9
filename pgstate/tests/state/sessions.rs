use std::time::{Duration, Instant};

use crate::util::{fresh_db, until_some};

/// A cap of two holds across two instances, and a place given back is taken again.
#[tokio::test]
async fn the_session_cap_holds_across_instances() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let first = a.acquire_session("ann", Some(2)).await.unwrap().unwrap();
    let _second = b.acquire_session("ann", Some(2)).await.unwrap().unwrap();
    assert_eq!(a.acquire_session("ann", Some(2)).await.unwrap(), None);
    assert_eq!(b.acquire_session("ann", Some(2)).await.unwrap(), None);
    assert!(
        b.acquire_session("bob", Some(2)).await.unwrap().is_some(),
        "per user"
    );
    assert_eq!(a.sessions("ann").await.unwrap(), 2);
    a.release_session(first).await.unwrap();
    assert!(b.acquire_session("ann", Some(2)).await.unwrap().is_some());
}

/// Twenty logins at once over two instances under a cap of three: exactly three get in.
#[tokio::test]
async fn logins_at_once_on_two_instances_cannot_pass_the_cap() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let tries = (0..20).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { s.acquire_session("ann", Some(3)).await.unwrap() }
    });
    let got = futures::future::join_all(tries).await;
    assert_eq!(got.iter().filter(|g| g.is_some()).count(), 3);
}

/// A crashed instance (its State gone without releasing: no more heartbeats) holds its
/// user's place only until its sessions' time to live runs out; a live one keeps it past it.
#[tokio::test]
async fn a_crashed_instances_sessions_expire() {
    let Some(db) = fresh_db().await else { return };
    let ttl = Duration::from_millis(600);
    let live = db.short_lived("live", ttl).await;
    let other = db.state("other").await;
    let _held = live.acquire_session("ann", Some(1)).await.unwrap().unwrap();
    // Several times the time to live: only the heartbeat keeps the session.
    tokio::time::sleep(ttl * 4).await;
    assert_eq!(
        other.acquire_session("ann", Some(1)).await.unwrap(),
        None,
        "kept alive"
    );

    let crashed = db.short_lived("crashed", ttl).await;
    let _lost = crashed
        .acquire_session("bob", Some(1))
        .await
        .unwrap()
        .unwrap();
    drop(crashed);
    let gone = Instant::now();
    assert_eq!(
        other.acquire_session("bob", Some(1)).await.unwrap(),
        None,
        "not at once"
    );
    let lease = until_some(Duration::from_secs(10), || async {
        other.acquire_session("bob", Some(1)).await.unwrap()
    })
    .await;
    assert!(lease.is_some(), "the crashed instance's session expired");
    assert!(gone.elapsed() < ttl + Duration::from_secs(5));
    // A restart of an instance under its name gives back what the last run left.
    let again = db.state("live").await;
    assert_eq!(again.release_instance().await.unwrap(), 1);
}

/// The heartbeat renews the sessions its instance holds, and no row of its name besides: a
/// place whose acquire answer was lost (the row is there, the instance never learnt its id) or
/// whose release the database missed expires with its time to live while the instance runs.
#[tokio::test]
async fn a_place_the_instance_does_not_hold_expires_while_it_runs() {
    let Some(db) = fresh_db().await else { return };
    let ttl = Duration::from_millis(600);
    let live = db.short_lived("live", ttl).await;
    let other = db.state("other").await;
    let _held = live.acquire_session("ann", Some(1)).await.unwrap().unwrap();
    db.sql()
        .await
        .execute(
            "INSERT INTO sessions (user_name, instance, expires)
               VALUES ('bob', 'live', now() + interval '600 milliseconds')",
            &[],
        )
        .await
        .unwrap();
    let lease = until_some(Duration::from_secs(10), || async {
        other.acquire_session("bob", Some(1)).await.unwrap()
    })
    .await;
    assert!(lease.is_some(), "the place nobody holds expired");
    assert_eq!(
        other.acquire_session("ann", Some(1)).await.unwrap(),
        None,
        "the held one is renewed"
    );
}

/// The sweep deletes what no longer counts (an expired session, failures older than the
/// forgetting time) and nothing that still does.
#[tokio::test]
async fn the_sweep_deletes_only_what_no_longer_counts() {
    let Some(db) = fresh_db().await else { return };
    let a = db.state("a").await;
    let _live = a.acquire_session("ann", None).await.unwrap();
    let key = pgstate::ThrottleKey::range("192.0.2.0/24").unwrap();
    let penalty = pgstate::Penalty {
        first: Duration::from_secs(60),
        max: Duration::from_secs(60),
    };
    a.login_failed(&key, penalty).await.unwrap();
    let sql = db.sql().await;
    sql.batch_execute(
        "INSERT INTO sessions (user_name, instance, expires)
           VALUES ('ann', 'gone', now() - interval '1 second');
         INSERT INTO login_failures (key, count, last, until)
           VALUES ('range:old', 3, now() - interval '1 hour', now() - interval '50 minutes');
         INSERT INTO login_trust (range, name, at)
           VALUES ('range:old', 'name:x', now() - interval '8 days');",
    )
    .await
    .unwrap();
    a.sweep().await.unwrap();
    let count = |table: &'static str| {
        let sql = &sql;
        async move {
            sql.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("sessions").await, 1, "the live session stays");
    assert_eq!(count("login_failures").await, 1, "the recent failure stays");
    assert_eq!(count("login_trust").await, 0);
    assert!(a.penalty(&key).await.unwrap().is_some());
}
