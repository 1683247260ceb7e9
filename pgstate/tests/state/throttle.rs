use std::time::Duration;

use pgstate::{Penalty, Refusal, ThrottleKey};

use crate::util::fresh_db;

const PENALTY: Penalty = Penalty {
    first: Duration::from_secs(10),
    max: Duration::from_secs(35),
};

fn range(s: &str) -> ThrottleKey {
    ThrottleKey::range(s).unwrap()
}

fn name(s: &str) -> ThrottleKey {
    ThrottleKey::name(s).unwrap()
}

fn near(d: Duration, secs: u64) -> bool {
    d <= Duration::from_secs(secs) && d > Duration::from_secs(secs) - Duration::from_secs(3)
}

/// A failure on one instance shuts its range out on another, and the name too, from any
/// range that did not log in as it lately.
#[tokio::test]
async fn a_failure_on_one_instance_holds_on_another() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let (net, other) = (range("192.0.2.0/24"), range("198.51.100.0/24"));
    let failed = a
        .login_attempt(&net, &name("ann"), PENALTY, || None::<()>)
        .await
        .unwrap();
    assert_eq!(failed, Err(Refusal::Failed));
    let mut checked = false;
    let refused = b
        .login_attempt(&net, &name("bob"), PENALTY, || {
            checked = true;
            Some(())
        })
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(Refusal::Range(d)) if near(d, 10)),
        "{refused:?}"
    );
    assert!(!checked, "a range serving a penalty is not even checked");
    assert!(b.penalty(&net).await.unwrap().is_some_and(|d| near(d, 10)));
    let by_name = b
        .login_attempt(&other, &name("ann"), PENALTY, || Some(()))
        .await
        .unwrap();
    assert!(matches!(by_name, Err(Refusal::User(_))), "{by_name:?}");
    assert_eq!(
        b.refused(&other, &name("bob")).await.unwrap(),
        None,
        "another name from another range is free"
    );
}

/// The arithmetic of auth.rs: doubled per failure in a row, capped at the maximum; a login
/// clears the name's count, never the range's; a range that logged in as a name is exempt
/// from that name's penalty.
#[tokio::test]
async fn penalties_double_up_to_the_maximum_and_a_login_clears_the_name() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let key = name("carol");
    let mut penalties = Vec::new();
    for s in [&a, &b, &a] {
        penalties.push(s.login_failed(&key, PENALTY).await.unwrap());
    }
    assert!(near(penalties[0], 10) && near(penalties[1], 20) && near(penalties[2], 35));
    b.login_ok(&key).await.unwrap();
    assert_eq!(a.penalty(&key).await.unwrap(), None);
    assert!(
        near(a.login_failed(&key, PENALTY).await.unwrap(), 10),
        "counted anew"
    );

    // Trust: a key login from `home` exempts it from the name's penalty there only.
    let home = range("203.0.113.0/24");
    assert_eq!(a.key_login(&home, &name("dave")).await.unwrap(), Ok(()));
    b.login_failed(&name("dave"), PENALTY).await.unwrap();
    assert_eq!(b.refused(&home, &name("dave")).await.unwrap(), None);
    assert!(matches!(
        b.refused(&range("192.0.2.0/24"), &name("dave"))
            .await
            .unwrap(),
        Some(Refusal::User(_))
    ));
    // A key login is refused only by its range's penalty.
    a.login_failed(&home, PENALTY).await.unwrap();
    assert!(matches!(
        b.key_login(&home, &name("dave")).await.unwrap(),
        Err(Refusal::Range(_))
    ));

    let off = Penalty {
        first: Duration::ZERO,
        max: Duration::ZERO,
    };
    let free = range("10.0.0.0/24");
    assert_eq!(a.login_failed(&free, off).await.unwrap(), Duration::ZERO);
    assert_eq!(a.penalty(&free).await.unwrap(), None, "zero turns it off");
}

/// Guesses sent at once to two instances: the first failure shuts out the rest, so only one
/// proof is checked however many race.
#[tokio::test]
async fn parallel_guesses_on_two_instances_are_checked_one_at_a_time() {
    let Some(db) = fresh_db().await else { return };
    let (a, b) = (db.state("a").await, db.state("b").await);
    let net = range("192.0.2.0/24");
    let checked = std::sync::atomic::AtomicUsize::new(0);
    let guess = |s: &pgstate::State| {
        let (s, net, checked) = (s.clone(), net.clone(), &checked);
        async move {
            s.login_attempt(&net, &name("erin"), PENALTY, || {
                checked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                None::<()>
            })
            .await
            .unwrap()
        }
    };
    let outcomes =
        futures::future::join_all((0..10).map(|i| guess(if i % 2 == 0 { &a } else { &b }))).await;
    assert_eq!(checked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Err(Refusal::Failed))
            .count(),
        1
    );
}
