use std::time::{Duration, Instant};

use pgstate::{Direction, Usage};

use crate::util::{fresh_db, until_some};

/// Two instances drawing on one user's rate for a while get at most rate × time plus one
/// bucket (the window's worth), and not much less than rate × time.
#[tokio::test]
async fn two_instances_share_one_rate() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    const RATE: u64 = 1 << 20;
    let window = a.options().rate_window;
    let burst = RATE as f64 * window.as_secs_f64();
    let run_for = Duration::from_millis(1500);
    let start = Instant::now();
    let draw = |s: pgstate::State| async move {
        let mut total = 0u64;
        while start.elapsed() < run_for {
            let grant = s
                .lease_rate("ann", Direction::Down, RATE, burst as u64)
                .await
                .unwrap();
            total += grant.bytes;
            // As a transfer would: spend the grant at the rate, or wait for more.
            let pause = grant.retry_after.max(Duration::from_millis(5));
            tokio::time::sleep(pause).await;
        }
        total
    };
    let (ta, tb) = tokio::join!(draw(a.clone()), draw(b.clone()));
    let elapsed = start.elapsed().as_secs_f64();
    let total = (ta + tb) as f64;
    let most = RATE as f64 * elapsed + burst;
    assert!(total <= most, "{total} granted, at most {most}");
    assert!(
        total >= 0.5 * RATE as f64 * elapsed,
        "{total} granted in {elapsed} s"
    );
    assert!(ta > 0 && tb > 0, "both instances got some: {ta} {tb}");
    // The other direction has a bucket of its own, full.
    let up = a
        .lease_rate("ann", Direction::Up, RATE, burst as u64)
        .await
        .unwrap();
    assert_eq!(up.bytes, burst as u64);
    assert_eq!(up.retry_after, Duration::ZERO);
}

/// Usage added by two instances at once adds up exactly; a reservation past the quota is
/// refused and changes nothing.
#[tokio::test]
async fn usage_adds_up_across_instances_and_the_quota_holds() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let adds = (0..40).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move { s.add_usage("ann", 100, 1).await.unwrap() }
    });
    futures::future::join_all(adds).await;
    assert_eq!(
        a.usage("ann").await.unwrap(),
        Usage {
            bytes: 4000,
            files: 40
        }
    );
    assert_eq!(
        b.add_usage("ann", -1000, -10).await.unwrap(),
        Usage {
            bytes: 3000,
            files: 30
        }
    );
    assert_eq!(
        b.add_usage("ann", -9000, 0).await.unwrap().bytes,
        0,
        "never below zero"
    );
    let stored = Usage {
        bytes: 900,
        files: 3,
    };
    b.set_usage("ann", stored).await.unwrap();
    let reserved = a
        .reserve_usage("ann", 100, 1, Some(1000), Some(4))
        .await
        .unwrap()
        .expect("fits exactly");
    let full = Usage {
        bytes: 1000,
        files: 4,
    };
    assert_eq!(a.usage("ann").await.unwrap(), full, "reserved counts");
    assert_eq!(
        b.reserve_usage("ann", 1, 0, Some(1000), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        b.reserve_usage("ann", 0, 1, None, Some(4)).await.unwrap(),
        None
    );
    // A recount sets what the home stores and leaves the upload in flight reserved.
    b.set_usage("ann", stored).await.unwrap();
    assert_eq!(
        b.reserve_usage("ann", 1, 0, Some(1000), None)
            .await
            .unwrap(),
        None,
        "still reserved after a recount"
    );
    // The upload stored 60 bytes and its file: the reservation becomes that.
    a.settle_usage(reserved, "ann", 60, 1).await.unwrap();
    assert_eq!(
        a.usage("ann").await.unwrap(),
        Usage {
            bytes: 960,
            files: 4
        }
    );
    let small = b
        .reserve_usage("ann", 40, 0, Some(1000), None)
        .await
        .unwrap()
        .expect("the room the settle left");
    b.release_usage(small).await.unwrap();
    assert_eq!(a.usage("ann").await.unwrap().bytes, 960, "given back");
    assert_eq!(a.usage("nobody").await.unwrap(), Usage::default());
}

/// Twenty reservations at once over two instances under a quota of ten's worth: exactly ten
/// are taken.
#[tokio::test]
async fn reservations_at_once_on_two_instances_cannot_pass_the_quota() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let tries = (0..20).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            s.reserve_usage("ann", 100, 1, Some(1000), None)
                .await
                .unwrap()
        }
    });
    let got = futures::future::join_all(tries).await;
    assert_eq!(got.iter().filter(|g| g.is_some()).count(), 10);
    assert_eq!(a.usage("ann").await.unwrap().bytes, 1000);
}

/// The reservations of an instance that died (its State gone: no more heartbeats) expire with
/// their time to live, and give their room back; a live instance's are kept past it.
#[tokio::test]
async fn a_dead_instances_reservations_expire() {
    let Some(db) = fresh_db().await else { return };
    let ttl = Duration::from_millis(600);
    let live = db.short_lived("live", ttl).await;
    let other = db.state("other").await;
    let _kept = live
        .reserve_usage("ann", 100, 0, Some(100), None)
        .await
        .unwrap()
        .expect("fits");
    // Several times the time to live: only the heartbeat keeps it.
    tokio::time::sleep(ttl * 4).await;
    assert_eq!(
        other
            .reserve_usage("ann", 1, 0, Some(100), None)
            .await
            .unwrap(),
        None,
        "kept alive"
    );

    let dead = db.short_lived("dead", ttl).await;
    let _lost = dead
        .reserve_usage("bob", 100, 0, Some(100), None)
        .await
        .unwrap()
        .expect("fits");
    drop(dead);
    let room = until_some(Duration::from_secs(10), || async {
        other
            .reserve_usage("bob", 100, 0, Some(100), None)
            .await
            .unwrap()
    })
    .await;
    assert!(room.is_some(), "the dead instance's reservation expired");
}
