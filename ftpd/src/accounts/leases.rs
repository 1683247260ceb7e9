//! A user's rate cap for the whole service (`--database`): bytes leased from the user's bucket
//! in the database a window (250 ms of the rate) at a time, and spent by all of the user's
//! sessions on this instance. A background refill keeps the allowance topped up while they
//! draw from it and gives back what is left once they stop. The bound this gives with N
//! instances, r × (T + (N + 1) × 250 ms), is worked out in docs/CLUSTER.md.
//!
//! When the database does not answer, the allowance is closed: the sessions go on at the
//! instance's own cap (the local limiter that paces them anyway, never unlimited), one WARN
//! says so, and leasing starts again once the database answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore, TryAcquireError};
use tracing::{info, warn};

use crate::logging::Wire;

/// How long one lease may take before the database counts as not answering (a lease is one
/// short statement; the pool alone may otherwise wait 5 s, and a transfer must not stall).
const LEASE_PATIENCE: Duration = Duration::from_secs(2);
/// With no draw for this long the refill gives back what is left and stops.
const IDLE: Duration = Duration::from_millis(500);
/// How often a lease is tried again while the database does not answer.
const RETRY: Duration = Duration::from_secs(5);
/// The shortest and longest waits for a bucket that had less than asked.
const SHORT_WAIT: Duration = Duration::from_millis(5);
const LONG_WAIT: Duration = Duration::from_millis(250);
/// The most an allowance holds, whatever the rate (a semaphore holds fewer than 2^61 permits).
const MOST: u64 = 1 << 40;

/// Bytes the bucket granted, and when it may have the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub bytes: u64,
    pub retry_after: Duration,
}

/// Where the bytes come from: the user's bucket in the database (a fake in the tests).
#[async_trait]
pub trait Bucket: Send + Sync + 'static {
    /// Up to `want` bytes now.
    async fn lease(&self, want: u64) -> Result<Grant, pgstate::Error>;
    /// Bytes leased and not used.
    async fn give_back(&self, bytes: u64) -> Result<(), pgstate::Error>;
}

/// A user's bucket for one direction in the shared state.
pub struct DbBucket {
    pub state: pgstate::State,
    pub user: String,
    pub direction: pgstate::Direction,
    /// The cap, bytes per second.
    pub rate: u64,
}

#[async_trait]
impl Bucket for DbBucket {
    async fn lease(&self, want: u64) -> Result<Grant, pgstate::Error> {
        let grant = self
            .state
            .lease_rate(&self.user, self.direction, self.rate, want)
            .await?;
        Ok(Grant {
            bytes: grant.bytes,
            retry_after: grant.retry_after,
        })
    }

    async fn give_back(&self, bytes: u64) -> Result<(), pgstate::Error> {
        self.state
            .return_rate(&self.user, self.direction, self.rate, bytes)
            .await
    }
}

/// What a draw on the allowance came to.
pub enum Draw {
    /// The bytes were there and are spent.
    Taken,
    /// Not enough yet: the future ends when they are (or the allowance closes).
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// The database does not answer: only the local cap applies now.
    Local,
}

/// One user's service-wide cap in one direction, on this instance.
pub struct Leased {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Box<dyn Bucket>,
    /// Whose cap, which way: for the logs.
    user: String,
    direction: &'static str,
    /// Bytes leased and not yet spent, as permits; closed while the database does not answer
    /// (and then replaced by a fresh one once it does).
    allowance: RwLock<Arc<Semaphore>>,
    /// The most one draw takes (the local limiter's burst): the refill tops up when fewer
    /// remain, so a draw never waits on a refill that does not come.
    low: u64,
    /// The most the allowance holds: one window of the rate (at least two draws).
    most: u64,
    /// The cap, bytes per second: how long a drawn-down bucket takes to have a draw's worth.
    rate: u64,
    /// Bytes drawn so far: the refill's sign that someone still transfers.
    drawn: AtomicU64,
    /// Tells the refill a draw left the allowance low.
    wake: Notify,
    /// A refill task runs (started by the first draw, ended when idle).
    running: Mutex<bool>,
    /// The last lease failed: warned once, until one succeeds again.
    degraded: AtomicBool,
    /// How often a lease is tried again while the database does not answer ([`RETRY`]).
    retry: Duration,
}

impl Leased {
    /// A cap of `rate` bytes per second drawing on `bucket` in draws of at most `draw` bytes,
    /// holding at most `window` bytes at a time (raised to two draws when smaller).
    pub fn new(
        bucket: Box<dyn Bucket>,
        user: &str,
        direction: &'static str,
        rate: u64,
        draw: u64,
        window: u64,
    ) -> Leased {
        let low = draw.clamp(1, MOST);
        Leased {
            inner: Arc::new(Inner {
                bucket,
                user: user.to_owned(),
                direction,
                allowance: RwLock::new(Arc::new(Semaphore::new(0))),
                low,
                most: window.max(low.saturating_mul(2)).min(MOST),
                rate: rate.max(1),
                drawn: AtomicU64::new(0),
                wake: Notify::new(),
                running: Mutex::new(false),
                degraded: AtomicBool::new(false),
                retry: RETRY,
            }),
        }
    }

    /// Spends `n` bytes (at most one draw's worth counts: a reload may leave a larger debt).
    pub fn draw(&self, n: u32) -> Draw {
        let inner = &self.inner;
        let n = u64::from(n).min(inner.low) as u32;
        let allowance = inner.allowance.read().unwrap().clone();
        inner.drawn.fetch_add(u64::from(n), Ordering::Relaxed);
        let taken = allowance.try_acquire_many(n).map(|permit| permit.forget());
        match taken {
            Ok(()) => {
                if (allowance.available_permits() as u64) < inner.low {
                    inner.refill();
                }
                Draw::Taken
            }
            Err(TryAcquireError::Closed) => {
                // Keeps a refill trying, so that leasing resumes when the database is back.
                inner.refill();
                Draw::Local
            }
            Err(TryAcquireError::NoPermits) => {
                inner.refill();
                Draw::Wait(Box::pin(async move {
                    // Closed while waiting: the local cap alone, as for Draw::Local.
                    if let Ok(permit) = allowance.acquire_many_owned(n).await {
                        permit.forget();
                    }
                }))
            }
        }
    }

    /// Tries leases again every `retry` while the database does not answer.
    #[cfg(test)]
    fn retrying_every(self, retry: Duration) -> Leased {
        let mut inner = Arc::into_inner(self.inner).expect("not yet shared");
        inner.retry = retry;
        Leased {
            inner: Arc::new(inner),
        }
    }

    /// Whether the database answered the last lease.
    #[cfg(test)]
    fn degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Acquire)
    }
}

impl Inner {
    /// Wakes the refill, starting it if none runs.
    fn refill(self: &Arc<Self>) {
        {
            let mut running = self.running.lock().unwrap();
            if !*running {
                *running = true;
                tokio::spawn(refill(self.clone()));
            }
        }
        self.wake.notify_one();
    }

    /// Logs the first failure of a run of them, and closes the allowance: the sessions waiting
    /// on it go on at the local cap.
    fn failed(&self, allowance: &Semaphore, why: &str) {
        allowance.close();
        if !self.degraded.swap(true, Ordering::AcqRel) {
            metrics::counter!("ftpd_rate_lease_failures_total").increment(1);
            warn!(
                user = %Wire(&self.user),
                direction = self.direction,
                "cannot lease rate from the database ({why}): this instance caps the user's \
                 rate on its own until the database answers"
            );
        }
    }

    /// One lease of up to `want` bytes, in time.
    async fn lease(&self, want: u64) -> Result<Grant, String> {
        match tokio::time::timeout(LEASE_PATIENCE, self.bucket.lease(want)).await {
            Ok(Ok(grant)) => {
                metrics::counter!("ftpd_rate_leases_total", "direction" => self.direction)
                    .increment(1);
                metrics::counter!("ftpd_rate_leased_bytes_total", "direction" => self.direction)
                    .increment(grant.bytes);
                Ok(grant)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the database did not answer in time".into()),
        }
    }
}

/// Keeps `inner`'s allowance between one draw and one window's worth while its sessions draw
/// on it; gives the rest back and ends once they have not for [`IDLE`].
async fn refill(inner: Arc<Inner>) {
    let mut seen = inner.drawn.load(Ordering::Relaxed);
    loop {
        let allowance = inner.allowance.read().unwrap().clone();
        if allowance.is_closed() {
            tokio::time::sleep(inner.retry).await;
            let drawn = inner.drawn.load(Ordering::Relaxed);
            if drawn == seen && stop(&inner, &allowance) {
                return;
            }
            seen = drawn;
            if let Ok(grant) = inner.lease(inner.most).await {
                let bytes = grant.bytes.min(inner.most) as usize;
                *inner.allowance.write().unwrap() = Arc::new(Semaphore::new(bytes));
                if inner.degraded.swap(false, Ordering::AcqRel) {
                    info!(user = %Wire(&inner.user), direction = inner.direction,
                        "the database answers again: leasing the user's rate from it");
                }
            }
            continue;
        }
        let held = allowance.available_permits() as u64;
        if held < inner.low {
            let want = inner.most - held;
            match inner.lease(want).await {
                Ok(grant) => {
                    let bytes = grant.bytes.min(want);
                    allowance.add_permits(bytes as usize);
                    if let Some(missing) = inner.low.checked_sub(held + bytes).filter(|m| *m > 0) {
                        // The bucket is drawn down (the user's sessions elsewhere): wait until
                        // it may have a draw's worth, not spin on it, nor wait for a whole
                        // window while the bucket fills and overflows.
                        let wait = Duration::from_secs_f64(missing as f64 / inner.rate as f64);
                        let wait = wait.min(grant.retry_after).clamp(SHORT_WAIT, LONG_WAIT);
                        tokio::time::sleep(wait).await;
                    }
                }
                Err(why) => inner.failed(&allowance, &why),
            }
            continue;
        }
        if tokio::time::timeout(IDLE, inner.wake.notified())
            .await
            .is_ok()
        {
            continue;
        }
        let drawn = inner.drawn.load(Ordering::Relaxed);
        if drawn != seen {
            seen = drawn;
            continue;
        }
        if stop(&inner, &allowance) {
            return;
        }
    }
}

/// Ends the refill unless a draw came in meanwhile: what is left goes back to the bucket, so
/// the user's sessions on other instances may have it.
fn stop(inner: &Arc<Inner>, allowance: &Semaphore) -> bool {
    let left = {
        let mut running = inner.running.lock().unwrap();
        // A draw that found too little is waiting on this refill, or about to start one.
        if (allowance.available_permits() as u64) < inner.low && !allowance.is_closed() {
            return false;
        }
        let left = allowance.forget_permits(allowance.available_permits());
        *running = false;
        left as u64
    };
    if left > 0 {
        let inner = inner.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(LEASE_PATIENCE, inner.bucket.give_back(left)).await {
                Ok(Ok(())) => {}
                // Lost bytes only leave the user under the cap.
                Ok(Err(e)) => tracing::debug!("cannot give back leased rate: {e}"),
                Err(_) => tracing::debug!("cannot give back leased rate: no answer in time"),
            }
        });
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket that grants up to `per_lease` each time, or fails while `down`.
    #[derive(Default)]
    struct Fake {
        per_lease: u64,
        down: AtomicBool,
        leased: AtomicU64,
        leases: AtomicU64,
        returned: AtomicU64,
        returned_once: Notify,
    }

    #[async_trait]
    impl Bucket for Arc<Fake> {
        async fn lease(&self, want: u64) -> Result<Grant, pgstate::Error> {
            if self.down.load(Ordering::Acquire) {
                return Err(pgstate::Error::Invalid("down".into()));
            }
            let bytes = want.min(self.per_lease);
            self.leased.fetch_add(bytes, Ordering::AcqRel);
            self.leases.fetch_add(1, Ordering::AcqRel);
            Ok(Grant {
                bytes,
                retry_after: Duration::from_millis(1),
            })
        }

        async fn give_back(&self, bytes: u64) -> Result<(), pgstate::Error> {
            self.returned.fetch_add(bytes, Ordering::AcqRel);
            self.returned_once.notify_one();
            Ok(())
        }
    }

    fn fake(per_lease: u64) -> Arc<Fake> {
        Arc::new(Fake {
            per_lease,
            ..Fake::default()
        })
    }

    async fn spend(leased: &Leased, n: u32) -> bool {
        match leased.draw(n) {
            Draw::Taken => true,
            Draw::Wait(wait) => {
                tokio::time::timeout(Duration::from_secs(10), wait)
                    .await
                    .expect("a draw is served");
                true
            }
            Draw::Local => false,
        }
    }

    #[tokio::test]
    async fn draws_are_served_from_leases_and_the_rest_is_given_back() {
        let bucket = fake(1000);
        let leased = Leased::new(Box::new(bucket.clone()), "alice", "up", 4000, 100, 1000);
        for _ in 0..25 {
            assert!(spend(&leased, 100).await);
        }
        // 2,500 bytes drawn: every one of them leased first, never more than a window ahead.
        let leased_bytes = bucket.leased.load(Ordering::Acquire);
        assert!(
            (2500..=3500).contains(&leased_bytes),
            "leased {leased_bytes}"
        );
        // Once nobody draws, what is left goes back, and the refill stops.
        tokio::time::timeout(Duration::from_secs(10), bucket.returned_once.notified())
            .await
            .expect("the rest given back");
        assert_eq!(bucket.returned.load(Ordering::Acquire), leased_bytes - 2500);
        assert!(!*leased.inner.running.lock().unwrap());
        // And the next draw starts leasing again.
        assert!(spend(&leased, 100).await);
    }

    #[tokio::test]
    async fn a_bucket_granting_little_still_serves_a_whole_draw() {
        // Other instances drain the bucket: each lease gets 30 bytes of the 100 wanted.
        let bucket = fake(30);
        let leased = Leased::new(Box::new(bucket.clone()), "alice", "down", 1000, 100, 250);
        assert!(spend(&leased, 100).await);
        assert!(bucket.leases.load(Ordering::Acquire) >= 4);
    }

    #[tokio::test]
    async fn a_debt_larger_than_a_draw_is_not_waited_for_forever() {
        let bucket = fake(1000);
        let leased = Leased::new(Box::new(bucket.clone()), "alice", "up", 1000, 100, 250);
        assert!(spend(&leased, 64 * 1024).await);
    }

    #[tokio::test]
    async fn without_the_database_the_local_cap_applies_and_leasing_resumes() {
        let bucket = fake(1000);
        bucket.down.store(true, Ordering::Release);
        let retry = Duration::from_millis(50);
        let leased = Leased::new(Box::new(bucket.clone()), "alice", "up", 4000, 100, 1000)
            .retrying_every(retry);
        // The first draw waits for a lease that fails: it is let through (the local cap).
        assert!(spend(&leased, 100).await);
        assert!(leased.degraded());
        assert!(!spend(&leased, 100).await, "closed: the local cap alone");
        bucket.down.store(false, Ordering::Release);
        // Within a retry period (while someone still draws) leases come again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while leased.degraded() {
            assert!(tokio::time::Instant::now() < deadline, "leasing resumed");
            let _ = spend(&leased, 1).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(spend(&leased, 100).await);
        assert!(bucket.leased.load(Ordering::Acquire) > 0);
    }
}
