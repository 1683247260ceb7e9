//! The per-user registry every session of a user shares, across connections: how many
//! sessions they have open (`max_sessions`), the rate caps all of them draw from together, what
//! they moved and how long they waited for the caps, and their quota's use. One [`Accounts`]
//! per daemon; [`Accounts::snapshot`] is what `GET /users` serves. With `--database` the
//! session caps and the users' rate caps hold for the whole service: a session also takes a
//! place in the database's count, and the rate caps draw on leases of the database's buckets
//! (`leases`).

mod leases;

pub use leases::Draw;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};
use serde::Serialize;
use storage::{HomeLimits, VPath};

use crate::store::Store;
use tracing::warn;

use crate::logging::Wire;
use crate::users::{Limits, User, Users};

/// The most bytes a rate cap lets through at once: small enough that bytes keep flowing at the
/// cap (a wait is at most a tenth of a second), large enough to cost little per byte.
const MAX_BURST: u64 = 64 * 1024;
/// The fewest: a cap of a few bytes a second still moves a TLS record's worth in pieces.
const MIN_BURST: u64 = 256;
/// How long a login waits for the database's count of sessions (the pool waits 5 s for a
/// connection) before the client is told to try again.
const SESSION_PATIENCE: Duration = Duration::from_secs(6);

pub use crate::metrics::Direction;

/// One rate cap, shared by everything it limits.
pub struct Rate {
    /// GCRA over bytes (one cell a byte).
    pub(crate) limiter: DefaultDirectRateLimiter,
    /// The most bytes one check may take.
    pub(crate) burst: u32,
    /// The cap, bytes per second.
    bytes_per_sec: u64,
    /// The service-wide bucket the bytes are also leased from (a user's cap with
    /// `--database`); the limiter then paces them.
    pub(crate) leased: Option<leases::Leased>,
}

impl Rate {
    /// A cap of `bytes_per_sec` (more than 0).
    pub fn new(bytes_per_sec: u64) -> Arc<Rate> {
        Arc::new(Rate::local(bytes_per_sec))
    }

    /// A cap of `user`'s `bytes_per_sec` in `direction` for the whole service: the bytes are
    /// leased from the database's bucket one window at a time, and paced here.
    fn shared(
        bytes_per_sec: u64,
        state: &pgstate::State,
        user: &str,
        direction: Direction,
    ) -> Arc<Rate> {
        let mut rate = Rate::local(bytes_per_sec);
        let window = state.options().rate_window;
        let bucket = leases::DbBucket {
            state: state.clone(),
            user: user.to_owned(),
            direction: match direction {
                Direction::Upload => pgstate::Direction::Up,
                Direction::Download => pgstate::Direction::Down,
            },
            rate: rate.bytes_per_sec,
        };
        let window_bytes = (rate.bytes_per_sec as f64 * window.as_secs_f64()) as u64;
        rate.leased = Some(leases::Leased::new(
            Box::new(bucket),
            user,
            direction.label(),
            rate.bytes_per_sec,
            u64::from(rate.burst),
            window_bytes,
        ));
        Arc::new(rate)
    }

    fn local(bytes_per_sec: u64) -> Rate {
        let bytes_per_sec = bytes_per_sec.max(1);
        let burst = (bytes_per_sec / 10).clamp(MIN_BURST, MAX_BURST) as u32;
        let period =
            Duration::from_secs_f64(1.0 / bytes_per_sec as f64).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("the period is at least a nanosecond")
            .allow_burst(NonZeroU32::new(burst).expect("the burst is at least MIN_BURST"));
        Rate {
            limiter: DefaultDirectRateLimiter::direct(quota),
            burst,
            bytes_per_sec,
            leased: None,
        }
    }
}

/// An upload cap and a download cap, which a reload replaces while sessions draw from them.
#[derive(Default)]
pub struct Caps {
    up: RwLock<Option<Arc<Rate>>>,
    down: RwLock<Option<Arc<Rate>>>,
}

impl Caps {
    /// Puts `up` and `down` (bytes per second) in force; a cap that did not change keeps its
    /// state, so a reload does not hand out a fresh burst.
    pub fn set(&self, up: Option<u64>, down: Option<u64>) {
        self.set_for(up, down, None);
    }

    /// [`Caps::set`] for `user`'s caps, leased from the service's buckets when `shared` (the
    /// state of `--database`) is given.
    fn set_for(&self, up: Option<u64>, down: Option<u64>, shared: Option<(&pgstate::State, &str)>) {
        for (slot, want, direction) in [
            (&self.up, up, Direction::Upload),
            (&self.down, down, Direction::Download),
        ] {
            let mut slot = slot.write().unwrap();
            if slot.as_ref().map(|r| r.bytes_per_sec) != want {
                *slot = want.map(|bps| match shared {
                    Some((state, user)) => Rate::shared(bps, state, user, direction),
                    None => Rate::new(bps),
                });
            }
        }
    }

    pub fn get(&self, direction: Direction) -> Option<Arc<Rate>> {
        match direction {
            Direction::Upload => self.up.read().unwrap().clone(),
            Direction::Download => self.down.read().unwrap().clone(),
        }
    }
}

/// One user's shared state.
pub struct Account {
    name: String,
    /// Where the user's home lies in the root, for the quota's use.
    home: RwLock<VPath>,
    /// The limits in force (a reload changes them).
    limits: RwLock<Limits>,
    /// Sessions logged in now.
    sessions: AtomicU32,
    /// Bytes received from the user's sessions.
    bytes_in: AtomicU64,
    /// Bytes sent to them.
    bytes_out: AtomicU64,
    /// Time the user's sessions waited for a rate cap, in nanoseconds, all directions.
    throttled_ns: AtomicU64,
    /// The rate caps all their sessions share.
    pub caps: Caps,
    /// Over 90 % of the byte quota: warned once until it drops below again.
    warned_bytes: AtomicBool,
    /// Over 90 % of the file cap: likewise.
    warned_files: AtomicBool,
    /// The service's shared state (`--database`), which the caps lease from.
    cluster: Option<pgstate::State>,
}

impl Account {
    fn new(user: &User, cluster: Option<&pgstate::State>) -> Account {
        let account = Account {
            name: user.name.clone(),
            home: RwLock::new(user.home.clone()),
            limits: RwLock::new(user.limits),
            sessions: AtomicU32::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            throttled_ns: AtomicU64::new(0),
            caps: Caps::default(),
            warned_bytes: AtomicBool::new(false),
            warned_files: AtomicBool::new(false),
            cluster: cluster.cloned(),
        };
        account.set_caps(&user.limits);
        account
    }

    fn update(&self, user: &User) {
        *self.home.write().unwrap() = user.home.clone();
        *self.limits.write().unwrap() = user.limits;
        self.set_caps(&user.limits);
    }

    fn set_caps(&self, limits: &Limits) {
        let shared = self
            .cluster
            .as_ref()
            .map(|state| (state, self.name.as_str()));
        self.caps.set_for(limits.rate_up, limits.rate_down, shared);
    }

    /// Counts `n` bytes moved by one of the user's sessions.
    pub fn moved(&self, direction: Direction, n: u64) {
        let counter = match direction {
            Direction::Upload => &self.bytes_in,
            Direction::Download => &self.bytes_out,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts time one of the user's sessions waited for a rate cap.
    pub fn throttled(&self, waited: Duration) {
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.throttled_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// A logged-in session's place in its user's count; given back when dropped.
pub struct Ticket {
    account: Arc<Account>,
    /// Its place in the service's count (`--database`), given back when dropped; if this
    /// instance dies first, its heartbeat stops and the place expires.
    lease: Option<(pgstate::State, pgstate::SessionLease)>,
}

impl Ticket {
    pub fn account(&self) -> &Arc<Account> {
        &self.account
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.account.sessions.fetch_sub(1, Ordering::AcqRel);
        let Some((state, lease)) = self.lease.take() else {
            return;
        };
        // Dropped outside a runtime (at exit): the heartbeat's expiry gives the place back.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let released = tokio::time::timeout(SESSION_PATIENCE, state.release_session(lease));
            match released.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("cannot give a session's place back in the database (it expires): {e}"),
                Err(_) => warn!("cannot give a session's place back in the database (it expires): no answer in time"),
            }
        });
    }
}

/// Why a login gets no session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_sessions` of the user are open (on this instance, or across the service).
    #[error(
        "too many sessions: {user} has {open} open, the most allowed; close one and try again"
    )]
    TooMany { user: String, open: u32 },
    /// The database that counts sessions across the service did not answer in time.
    #[error("the service cannot count sessions now (its database does not answer); try again in a moment")]
    Unavailable,
}

/// One user's figures, as `GET /users` serves them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserReport {
    pub name: String,
    pub sessions: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes the home holds against the user's quota (files, uploads in flight, staged bytes);
    /// `None` without a quota or file cap of their own.
    pub quota_used: Option<u64>,
    pub quota_limit: Option<u64>,
    pub files_used: Option<u64>,
    pub files_limit: Option<u64>,
    pub throttled_seconds: f64,
}

/// Every user's account, and the daemon-wide caps (`--max-rate`).
pub struct Accounts {
    by_name: Mutex<HashMap<String, Arc<Account>>>,
    /// All transfers of the daemon together, each direction on its own.
    pub global: Caps,
    /// Where the quotas are counted.
    store: Store,
    /// The service's shared state (`--database`): session places and rate leases.
    cluster: Option<pgstate::State>,
}

impl Accounts {
    /// The accounts of `users` (none when serving anonymously), with the daemon-wide cap
    /// `max_rate` (bytes per second, each direction); their session and rate caps hold for
    /// the whole service with `cluster` (`--database`), for this instance without.
    pub fn new(
        store: Store,
        users: Option<&Users>,
        max_rate: Option<u64>,
        cluster: Option<pgstate::State>,
    ) -> Accounts {
        let accounts = Accounts {
            by_name: Mutex::new(HashMap::new()),
            global: Caps::default(),
            store,
            cluster,
        };
        accounts.global.set(max_rate, max_rate);
        if let Some(users) = users {
            accounts.apply(users);
        }
        accounts
    }

    /// Puts the limits of `users` in force for the sessions already running (rates at once,
    /// quotas from their next command, session caps at the next login). Accounts of users
    /// removed go once their last session has.
    pub fn apply(&self, users: &Users) {
        let mut by_name = self.by_name.lock().unwrap();
        for user in users.iter() {
            match by_name.get(&user.name) {
                Some(account) => account.update(user),
                None => {
                    let account = Account::new(user, self.cluster.as_ref());
                    by_name.insert(user.name.clone(), Arc::new(account));
                }
            }
        }
        by_name.retain(|name, account| {
            users.get(name).is_some() || account.sessions.load(Ordering::Acquire) > 0
        });
        let homes = users
            .iter()
            .map(|u| {
                let limits = HomeLimits {
                    quota: u.limits.quota,
                    max_files: u.limits.max_files,
                };
                (u.home.clone(), u.name.clone(), limits)
            })
            .collect();
        drop(by_name);
        self.store.backend().set_home_limits(homes);
    }

    /// A place among `user`'s sessions, or why not (`max_sessions` reached here or, with
    /// `--database`, across the service; or the database does not answer).
    pub async fn login(&self, user: &User) -> Result<Ticket, Refused> {
        let mut ticket = self.login_here(user)?;
        let Some(state) = &self.cluster else {
            return Ok(ticket);
        };
        let max = ticket.account.limits.read().unwrap().max_sessions;
        // A database restarting for a few seconds delays the login rather than refusing it.
        let deadline = std::time::Instant::now() + SESSION_PATIENCE;
        let taken = crate::cluster::retrying(deadline, || state.acquire_session(&user.name, max));
        let taken = tokio::time::timeout(SESSION_PATIENCE, taken).await;
        match taken {
            Ok(Ok(Some(lease))) => {
                ticket.lease = Some((state.clone(), lease));
                Ok(ticket)
            }
            Ok(Ok(None)) => Err(Refused::TooMany {
                user: user.name.clone(),
                open: max.unwrap_or_default(),
            }),
            Ok(Err(e)) => {
                warn!(user = %Wire(&user.name), error = %Wire(&e.detail().to_string()), "cannot count the user's sessions in the database");
                Err(Refused::Unavailable)
            }
            Err(_) => {
                warn!(user = %Wire(&user.name), "cannot count the user's sessions in the database: no answer in time");
                Err(Refused::Unavailable)
            }
        }
    }

    /// A place among `user`'s sessions on this instance.
    fn login_here(&self, user: &User) -> Result<Ticket, Refused> {
        let account = {
            let mut by_name = self.by_name.lock().unwrap();
            by_name
                .entry(user.name.clone())
                .or_insert_with(|| Arc::new(Account::new(user, self.cluster.as_ref())))
                .clone()
        };
        let max = account.limits.read().unwrap().max_sessions;
        let taken = account
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max.is_none_or(|max| n < max)).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Ticket {
                account,
                lease: None,
            }),
            Err(open) => Err(Refused::TooMany {
                user: user.name.clone(),
                open,
            }),
        }
    }

    /// What `user`'s home holds against their own limits, if they have any (counted here on
    /// the local root only; a remote backend answers `df` itself).
    pub fn home_usage(&self, user: &User) -> Option<storage::HomeUsage> {
        self.usage_of(&user.home)
    }

    fn usage_of(&self, home: &VPath) -> Option<storage::HomeUsage> {
        self.store.local()?.home_usage(home)
    }

    /// Warns (once per crossing, not per command) when `account` has passed 90 % of its quota
    /// or file cap; a drop below re-arms the warning.
    pub fn check_quota(&self, account: &Account) {
        let home = account.home.read().unwrap().clone();
        let Some(usage) = self.usage_of(&home) else {
            return;
        };
        let over = |used: u64, limit: Option<u64>| {
            limit.is_some_and(|limit| u128::from(used) * 10 >= u128::from(limit) * 9)
        };
        for (flag, used, limit, what) in [
            (&account.warned_bytes, usage.bytes, usage.quota, "bytes"),
            (&account.warned_files, usage.files, usage.max_files, "files"),
        ] {
            let now = over(used, limit);
            if flag.swap(now, Ordering::AcqRel) != now && now {
                metrics::counter!("ftpd_quota_warnings_total").increment(1);
                warn!(
                    user = %Wire(&account.name),
                    what,
                    used,
                    limit = limit.unwrap_or_default(),
                    "user passed 90% of their quota"
                );
            }
        }
    }

    /// Every account's figures, sorted by name.
    pub fn snapshot(&self) -> Vec<UserReport> {
        let accounts: Vec<Arc<Account>> = self.by_name.lock().unwrap().values().cloned().collect();
        let mut reports: Vec<UserReport> = accounts
            .iter()
            .map(|a| {
                let usage = self.usage_of(&a.home.read().unwrap());
                UserReport {
                    name: a.name.clone(),
                    sessions: a.sessions.load(Ordering::Acquire),
                    bytes_in: a.bytes_in.load(Ordering::Relaxed),
                    bytes_out: a.bytes_out.load(Ordering::Relaxed),
                    quota_used: usage.map(|u| u.bytes),
                    quota_limit: usage.and_then(|u| u.quota),
                    files_used: usage.map(|u| u.files),
                    files_limit: usage.and_then(|u| u.max_files),
                    throttled_seconds: a.throttled_ns.load(Ordering::Relaxed) as f64 / 1e9,
                }
            })
            .collect();
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, limits: Limits) -> User {
        User {
            name: name.into(),
            verifier: None,
            keys: Vec::new(),
            home: VPath::resolve(&VPath::root(), name).unwrap(),
            read_only: false,
            legacy: false,
            limits,
        }
    }

    fn accounts() -> (Accounts, tempfile::TempDir, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let root = storage::Root::open(dir.path(), state.path()).unwrap();
        (
            Accounts::new(
                Store::Local(crate::store::LocalBackend::new(root).unwrap()),
                None,
                None,
                None,
            ),
            dir,
            state,
        )
    }

    #[tokio::test]
    async fn max_sessions_holds_and_a_closed_session_gives_its_place_back() {
        let (accounts, _d, _s) = accounts();
        let alice = user(
            "alice",
            Limits {
                max_sessions: Some(2),
                ..Limits::default()
            },
        );
        let one = accounts.login(&alice).await.unwrap();
        let two = accounts.login(&alice).await.unwrap();
        let refused = accounts.login(&alice).await.err().unwrap().to_string();
        assert!(refused.contains("too many sessions"), "{refused}");
        assert!(refused.contains("alice"), "{refused}");
        assert_eq!(accounts.snapshot()[0].sessions, 2);
        drop(one);
        let _three = accounts.login(&alice).await.unwrap();
        drop(two);
        assert_eq!(accounts.snapshot()[0].sessions, 1);
    }

    #[tokio::test]
    async fn the_sessions_of_one_user_share_one_account() {
        let (accounts, _d, _s) = accounts();
        let bob = user("bob", Limits::default());
        let a = accounts.login(&bob).await.unwrap();
        let b = accounts.login(&bob).await.unwrap();
        assert!(Arc::ptr_eq(a.account(), b.account()));
        a.account().moved(Direction::Upload, 10);
        b.account().moved(Direction::Download, 5);
        b.account().throttled(Duration::from_millis(1500));
        let report = &accounts.snapshot()[0];
        assert_eq!((report.bytes_in, report.bytes_out), (10, 5));
        assert!((report.throttled_seconds - 1.5).abs() < 1e-9);
        assert_eq!(report.quota_used, None);
        let json = serde_json::to_value(report).unwrap();
        for key in [
            "name",
            "sessions",
            "quota_limit",
            "files_used",
            "throttled_seconds",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn an_unchanged_cap_keeps_its_state_and_a_changed_one_is_new() {
        let caps = Caps::default();
        caps.set(Some(1000), None);
        let first = caps.get(Direction::Upload).unwrap();
        assert!(caps.get(Direction::Download).is_none());
        caps.set(Some(1000), None);
        assert!(Arc::ptr_eq(&first, &caps.get(Direction::Upload).unwrap()));
        caps.set(Some(500), Some(7));
        assert_eq!(caps.get(Direction::Upload).unwrap().bytes_per_sec, 500);
        assert_eq!(
            caps.get(Direction::Download).unwrap().burst as u64,
            MIN_BURST
        );
    }
}
