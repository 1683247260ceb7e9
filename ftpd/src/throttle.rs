//! Rate caps at a session's stream: a wrapper that reads and writes at most a cap's burst at a
//! time and, after each read or write, takes its bytes from every cap in force (the user's,
//! shared by all their sessions, and the daemon's `--max-rate`), waiting when one has none.
//! Bytes keep flowing at the cap in pieces of a tenth of a second, so the progress-based waits
//! of `protocol::Connection` never see a stall, however low the cap. A user's cap for the whole
//! service (`--database`) is also paid from the bytes this instance leased for them.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::accounts::{Account, Accounts, Direction, Draw, Rate};

/// Daemon-wide throttled time per direction, in nanoseconds: whole seconds go to the metric.
static THROTTLED_NS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// What one session's stream draws from, and what it records.
pub struct Meter {
    /// The daemon-wide caps.
    accounts: Arc<Accounts>,
    /// The logged-in user's account: their caps and counters (none before login, or anonymous).
    account: RwLock<Option<Arc<Account>>>,
    /// Time this session waited for a cap, in nanoseconds (for `--min-rate`'s `Pace`).
    throttled_ns: AtomicU64,
}

impl Meter {
    pub fn new(accounts: Arc<Accounts>) -> Arc<Meter> {
        Arc::new(Meter {
            accounts,
            account: RwLock::new(None),
            throttled_ns: AtomicU64::new(0),
        })
    }

    /// From now on the session draws from `account`'s caps as well.
    pub fn set_account(&self, account: Arc<Account>) {
        *self.account.write().unwrap() = Some(account);
    }

    /// How long this session has waited for caps, all told.
    pub fn throttled(&self) -> Duration {
        Duration::from_nanos(self.throttled_ns.load(Ordering::Relaxed))
    }

    /// The caps in force for `direction`, the user's first.
    fn rates(&self, direction: Direction) -> Vec<Arc<Rate>> {
        let account = self.account.read().unwrap();
        account
            .as_ref()
            .and_then(|a| a.caps.get(direction))
            .into_iter()
            .chain(self.accounts.global.get(direction))
            .collect()
    }

    fn moved(&self, direction: Direction, n: usize) {
        if let Some(a) = &*self.account.read().unwrap() {
            a.moved(direction, n as u64);
        }
    }

    fn waited(&self, direction: Direction, waited: Duration) {
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.throttled_ns.fetch_add(ns, Ordering::Relaxed);
        if let Some(a) = &*self.account.read().unwrap() {
            a.throttled(waited);
        }
        let total = &THROTTLED_NS[direction as usize];
        let before = total.fetch_add(ns, Ordering::Relaxed);
        let secs = before.saturating_add(ns) / 1_000_000_000 - before / 1_000_000_000;
        if secs > 0 {
            metrics::counter!("ftpd_throttled_seconds_total", "direction" => direction.label())
                .increment(secs);
        }
    }
}

/// One direction's debt: bytes already moved that the caps have not all been charged for.
#[derive(Default)]
struct Debt {
    /// Bytes owed.
    owed: u32,
    /// The caps (in `Meter::rates` order) already charged for them.
    paid: usize,
    /// The cap at `paid` has paced them; its service-wide lease is still to be drawn on.
    paced: bool,
    /// The wait for the cap that had no room.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The wait for the bytes leased for a service-wide cap.
    lease: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// When this wait began.
    since: Option<Instant>,
}

/// A stream whose reads (uploads) and writes (downloads) go at the caps of a [`Meter`].
pub struct Throttled<S> {
    inner: S,
    meter: Arc<Meter>,
    read: Debt,
    write: Debt,
}

impl<S> Throttled<S> {
    pub fn new(inner: S, meter: Arc<Meter>) -> Self {
        Throttled {
            inner,
            meter,
            read: Debt::default(),
            write: Debt::default(),
        }
    }
}

/// Pays what `debt` owes to every cap in force, waiting as long as one has no room; then
/// returns the most bytes the next read or write may move (`None`: no cap).
fn pay(
    meter: &Meter,
    direction: Direction,
    debt: &mut Debt,
    cx: &mut Context<'_>,
) -> Poll<Option<usize>> {
    loop {
        if let Some(sleep) = &mut debt.sleep {
            ready!(sleep.as_mut().poll(cx));
            debt.sleep = None;
        }
        if let Some(lease) = &mut debt.lease {
            ready!(lease.as_mut().poll(cx));
            debt.lease = None;
            debt.paced = false;
            debt.paid += 1;
        }
        let rates = meter.rates(direction);
        if let Some(owed) = NonZeroU32::new(debt.owed) {
            while debt.paid < rates.len() {
                let rate = &rates[debt.paid];
                if !debt.paced {
                    match rate.limiter.check_n(owed) {
                        Ok(Ok(())) => debt.paced = true,
                        Ok(Err(not_until)) => {
                            let wait = not_until.wait_time_from(rate.limiter.clock().now());
                            debt.since.get_or_insert_with(Instant::now);
                            debt.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                            break;
                        }
                        // More than the cap's burst (a reload made it smaller): let it pass.
                        Err(_) => debt.paced = true,
                    }
                }
                if let Some(leased) = &rate.leased {
                    match leased.draw(owed.get()) {
                        Draw::Taken | Draw::Local => {}
                        Draw::Wait(wait) => {
                            debt.since.get_or_insert_with(Instant::now);
                            debt.lease = Some(wait);
                            break;
                        }
                    }
                }
                debt.paced = false;
                debt.paid += 1;
            }
            if debt.sleep.is_some() || debt.lease.is_some() {
                continue;
            }
            debt.owed = 0;
            debt.paid = 0;
        }
        if let Some(since) = debt.since.take() {
            meter.waited(direction, since.elapsed());
        }
        return Poll::Ready(rates.iter().map(|r| r.burst as usize).min());
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let most = ready!(pay(&this.meter, Direction::Upload, &mut this.read, cx));
        let n = match most {
            None => {
                let before = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                buf.filled().len() - before
            }
            Some(most) => {
                // At most a burst: read into that much of `buf`, then count it filled.
                let room = buf.remaining().min(most);
                let mut part = ReadBuf::new(buf.initialize_unfilled_to(room));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                let n = part.filled().len();
                buf.advance(n);
                this.read.owed = n as u32;
                n
            }
        };
        this.meter.moved(Direction::Upload, n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let most = ready!(pay(&this.meter, Direction::Download, &mut this.write, cx));
        let part = &buf[..buf.len().min(most.unwrap_or(usize::MAX))];
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, part))?;
        this.meter.moved(Direction::Download, n);
        if most.is_some() {
            this.write.owed = n as u32;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
