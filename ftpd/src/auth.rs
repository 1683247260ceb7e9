//! Authentication: the users in force, how a login is checked against them (a key, or a SCRAM
//! proof against a verifier), and the penalty for address ranges and user names that keep
//! failing: counted in this process, or, for one instance of a service (`--database`), in the
//! database every instance shares (docs/CLUSTER.md), so that guesses spread over instances
//! meet one count.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use protocol::scram::{self, Verifier};
use protocol::tls::Fingerprint;
use sha2::Sha256;
use tracing::debug;

use crate::admission::AddrRange;
use crate::users::{made_up_salt, User, Users};

/// Failures older than this are forgotten; no penalty lasts longer.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Address ranges, and user names, remembered at most each, so failures cannot grow the maps
/// without bound; and as many pairs of a range and a user name that logged in.
const MAX_TRACKED: usize = 10_000;
/// How long a range that logged in as a user is exempt from that user name's penalty. Without
/// it, one address guessing at a name once a penalty kept the name's owner out everywhere;
/// with it, the owner still gets in from where they logged in lately (and an attacker there is
/// still held to that range's own penalty).
const TRUST_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest a login waits for one answer of the shared throttle (its statements and the
/// pool's wait for a connection, 5 s, together): a little over the pool's wait, so that a
/// database that does not answer is noticed by the pool first, and one whose connection hangs
/// (a partition, no reset) by this.
const SHARED_PATIENCE: Duration = Duration::from_secs(6);
/// How long a failed login waits to learn its range's penalty for the accept loop.
const LEARN_PATIENCE: Duration = Duration::from_secs(1);
/// What the keyed hash of a user name is taken over before the name, so that the throttle's
/// name keys differ from the salts made up for names without a verifier (the same key's HMAC
/// of the bare name, which any client is shown): a reader of the database cannot match a row
/// to a name by asking the server for its salt.
const NAME_KEY_CONTEXT: &[u8] = b"ftpd login throttle name\0";

/// How long a failed login shuts out its address range and its user name: `first` after one
/// failure, doubled for each further one, up to `max` (`--login-penalty`,
/// `--login-penalty-max`).
#[derive(Debug, Clone, Copy)]
pub struct Penalty {
    /// After the first failure; zero turns the penalty off.
    pub first: Duration,
    /// The most, however many failures.
    pub max: Duration,
}

impl Penalty {
    /// The penalty after the `count`th failure in a row.
    fn after(&self, count: u32) -> Duration {
        let doublings = count.saturating_sub(1).min(20);
        self.first
            .saturating_mul(1 << doublings)
            .min(self.max)
            .min(FORGET_AFTER)
    }
}

impl From<Penalty> for pgstate::Penalty {
    fn from(p: Penalty) -> Self {
        pgstate::Penalty {
            first: p.first,
            max: p.max,
        }
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The proof did not check out, or there is no such user: the client cannot tell which.
    Failed,
    /// Its address range is serving a penalty: the proof was not even checked. Try again after
    /// this long.
    Range(Duration),
    /// Its user name is serving a penalty (known or not: the same for both): not checked.
    User(Duration),
    /// The shared throttle (the database) could not be asked: nothing was checked, and the
    /// client may try again in a moment. A login is never let through unthrottled.
    Unavailable(Unchecked),
}

/// Why the shared throttle could not be asked, for the log line of the refused login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchecked {
    /// No answer within [`SHARED_PATIENCE`] (a connection that hangs).
    Timeout,
    /// No connection, or it broke (the pool's own wait is over, the database restarts).
    NoAnswer,
    /// The database refused the statements (a permission, a schema): the admin must act.
    Refused,
}

impl std::fmt::Display for Unchecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unchecked::Timeout => "the database did not answer in time",
            Unchecked::NoAnswer => "the database did not answer",
            Unchecked::Refused => "the database refused a request",
        })
    }
}

impl From<pgstate::Refusal> for Refusal {
    fn from(r: pgstate::Refusal) -> Self {
        match r {
            pgstate::Refusal::Failed => Refusal::Failed,
            pgstate::Refusal::Range(wait) => Refusal::Range(wait),
            pgstate::Refusal::User(wait) => Refusal::User(wait),
        }
    }
}

/// Whole seconds to tell a client to wait for `wait`: rounded up, and at least one, so that
/// one who waits that long is let in.
pub fn retry_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

/// One key's recent failures.
struct Record {
    /// Failures in a row, none of them older than [`FORGET_AFTER`] than the next.
    count: u32,
    /// When the last one was.
    last: Instant,
    /// Until when new attempts are refused unchecked.
    until: Instant,
}

/// Recent failures by some key (an address range, a user name), bounded in size.
struct Ledger<K> {
    /// The failures of each key that had one lately.
    map: HashMap<K, Record>,
}

impl<K: Hash + Eq + Copy> Ledger<K> {
    fn new() -> Self {
        Ledger {
            map: HashMap::new(),
        }
    }

    /// How long `key` is still shut out, if it is.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let record = self.map.get(key)?;
        (record.until > now).then(|| record.until - now)
    }

    /// Counts a failure for `key` and shuts it out for the penalty that count earns.
    fn fail(&mut self, key: K, now: Instant, penalty: Penalty) {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_TRACKED {
            self.make_room(now);
        }
        let record = self.map.entry(key).or_insert(Record {
            count: 0,
            last: now,
            until: now,
        });
        if now.duration_since(record.last) >= FORGET_AFTER {
            record.count = 0;
        }
        record.count = record.count.saturating_add(1);
        record.last = now;
        record.until = now + penalty.after(record.count);
    }

    fn clear(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// Forgets old failures; if all are recent, the key whose last failure is oldest. Evicting
    /// a key this way costs an attacker [`MAX_TRACKED`] failures, each under its own range's
    /// penalty: slower than waiting for the key to be forgotten anyway.
    fn make_room(&mut self, now: Instant) {
        self.map
            .retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
        if self.map.len() >= MAX_TRACKED {
            let oldest = self.map.iter().min_by_key(|(_, r)| r.last).map(|(k, _)| *k);
            if let Some(key) = oldest {
                self.map.remove(&key);
            }
        }
    }
}

/// Recent failures, by the two things an attacker cannot multiply for free, and where users
/// logged in from.
struct Failures {
    /// By address range: one party's neighbouring addresses share a count.
    by_range: Ledger<AddrRange>,
    /// By user name, known or not (an unknown name is penalised like a known one, or the
    /// penalty would tell them apart), kept as a keyed hash so that a long name costs no more
    /// memory than a short one.
    by_name: Ledger<u64>,
    /// When each address range last logged in as each user name (hashed as above).
    trusted: HashMap<(AddrRange, u64), Instant>,
}

impl Failures {
    /// Whether `range` logged in as `name` within [`TRUST_FOR`].
    fn trusts(&self, range: AddrRange, name: u64, now: Instant) -> bool {
        self.trusted
            .get(&(range, name))
            .is_some_and(|t| now.duration_since(*t) < TRUST_FOR)
    }

    fn trust(&mut self, range: AddrRange, name: u64, now: Instant) {
        let key = (range, name);
        if !self.trusted.contains_key(&key) && self.trusted.len() >= MAX_TRACKED {
            self.trusted
                .retain(|_, t| now.duration_since(*t) < TRUST_FOR);
            // Only logins with the secret add pairs, so the oldest is a fair one to forget.
            if self.trusted.len() >= MAX_TRACKED {
                let oldest = self
                    .trusted
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    self.trusted.remove(&oldest);
                }
            }
        }
        self.trusted.insert(key, now);
    }
}

/// Where failures are counted: the seam between one instance and a service.
enum Throttle {
    /// In this process (no `--database`).
    Local(Mutex<Failures>),
    /// In the database every instance of the service shares (`--database`).
    Shared(SharedThrottle),
}

/// The throttle of a service: its rows in the database, and what this instance has learned
/// from them for its accept loop.
struct SharedThrottle {
    /// The state the instances share.
    state: pgstate::State,
    /// Address ranges the database said serve a penalty, and until when, learned at each
    /// login it refused or counted a failure for: what [`Authenticator::penalty`] answers the
    /// accept loop from, which must not wait on the database for every connection. A range
    /// shut out by failures on another instance is refused here from its first login attempt
    /// on (the database refuses that attempt unchecked, and says how long).
    ranges: KnownPenalties,
}

impl SharedThrottle {
    /// Waits at most [`SHARED_PATIENCE`] for `call` (see [`settle`]).
    async fn ask<T>(
        &self,
        call: impl std::future::Future<Output = pgstate::Result<T>>,
    ) -> Result<T, Refusal> {
        settle(tokio::time::timeout(SHARED_PATIENCE, call).await)
    }

    /// As [`SharedThrottle::ask`], calling again while the database does not answer, within
    /// the same patience: for the checks that change nothing, so that a restart of the
    /// database delays a login rather than refusing it.
    async fn ask_again<T, Fut>(&self, call: impl FnMut() -> Fut) -> Result<T, Refusal>
    where
        Fut: std::future::Future<Output = pgstate::Result<T>>,
    {
        let deadline = Instant::now() + SHARED_PATIENCE;
        let retried = crate::cluster::retrying(deadline, call);
        settle(tokio::time::timeout(SHARED_PATIENCE, retried).await)
    }

    /// Learns the range's penalty from a refusal that names it.
    fn learn_from(&self, range: AddrRange, refusal: Refusal) -> Refusal {
        if let Refusal::Range(wait) = refusal {
            self.ranges.learn(range, wait, Instant::now());
        }
        refusal
    }
}

/// What the shared throttle's answer within [`SHARED_PATIENCE`] means for a login: a database
/// that does not answer (or refuses) is [`Refusal::Unavailable`], its own words kept for a
/// debug line.
fn settle<T>(
    answer: Result<pgstate::Result<T>, tokio::time::error::Elapsed>,
) -> Result<T, Refusal> {
    match answer {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => {
            debug!(detail = %e.detail(), "the shared login throttle failed");
            Err(Refusal::Unavailable(if e.is_transient() {
                Unchecked::NoAnswer
            } else {
                Unchecked::Refused
            }))
        }
        Err(_) => {
            debug!(
                waited_s = SHARED_PATIENCE.as_secs(),
                "the shared login throttle did not answer in time"
            );
            Err(Refusal::Unavailable(Unchecked::Timeout))
        }
    }
}

/// Address ranges known to serve a penalty, and until when, bounded in size.
#[derive(Default)]
struct KnownPenalties {
    /// Until when each range is shut out.
    map: Mutex<HashMap<AddrRange, Instant>>,
}

impl KnownPenalties {
    /// Notes that `range` serves a penalty for `wait` more from `now`, as the database said.
    fn learn(&self, range: AddrRange, wait: Duration, now: Instant) {
        // The database's answer is never longer than FORGET_AFTER; a row it computed oddly
        // must not overflow the clock either.
        let Some(until) = now.checked_add(wait.min(FORGET_AFTER)) else {
            return;
        };
        let mut map = self.map.lock().unwrap();
        if !map.contains_key(&range) && map.len() >= MAX_TRACKED {
            map.retain(|_, until| *until > now);
            // All still serving: forget the one ending soonest (the database still refuses
            // its logins; only the early refusal at accept is lost).
            if map.len() >= MAX_TRACKED {
                let soonest = map.iter().min_by_key(|(_, u)| **u).map(|(r, _)| *r);
                if let Some(soonest) = soonest {
                    map.remove(&soonest);
                }
            }
        }
        map.insert(range, until);
    }

    /// How long `range` is known to be shut out still at `now`, if it is.
    fn wait(&self, range: AddrRange, now: Instant) -> Option<Duration> {
        let mut map = self.map.lock().unwrap();
        let until = *map.get(&range)?;
        if until > now {
            Some(until - now)
        } else {
            map.remove(&range);
            None
        }
    }
}

/// Who may log in, shared by every session and replaced whole on reload, and who is serving a
/// penalty for failing.
pub struct Authenticator {
    /// `None`: anonymous access to the whole root.
    users: RwLock<Option<Arc<Users>>>,
    /// How long a failure shuts its address range and user name out.
    penalty: Penalty,
    /// Recent failures by address range and by user name: here, or in the shared database.
    throttle: Throttle,
    /// Keys the hash of user names with a secret of this process, so that nobody can pick
    /// names that collide with another's.
    names: RandomState,
    /// Keys the salts made up for names that have no verifier (a secret of the daemon's, kept
    /// in its state directory, so the salt of a name is the same at every attempt and restart;
    /// every instance of a service has the same one), and the throttle's name keys in the
    /// shared database.
    salt_key: [u8; 32],
    /// What a proof is checked against when the name has no verifier: the same work, and a
    /// certain failure.
    dummy: Verifier,
}

impl Authenticator {
    pub fn new(users: Option<Users>, penalty: Penalty, salt_key: [u8; 32]) -> Self {
        let mut keys = [0u8; 64];
        getrandom::fill(&mut keys).expect("the OS random number generator failed");
        let dummy = Verifier {
            salt: vec![0; 16],
            iterations: scram::DEFAULT_ITERATIONS,
            stored_key: keys[..32].try_into().expect("32 bytes"),
            server_key: keys[32..].try_into().expect("32 bytes"),
        };
        Authenticator {
            salt_key,
            dummy,
            users: RwLock::new(users.map(Arc::new)),
            penalty,
            throttle: Throttle::Local(Mutex::new(Failures {
                by_range: Ledger::new(),
                by_name: Ledger::new(),
                trusted: HashMap::new(),
            })),
            names: RandomState::new(),
        }
    }

    /// With `state` (one instance of a service, `--database`), failures are counted in the
    /// database every instance shares instead of in this process; with `None`, as before.
    pub fn shared_by(mut self, state: Option<pgstate::State>) -> Self {
        if let Some(state) = state {
            self.throttle = Throttle::Shared(SharedThrottle {
                state,
                ranges: KnownPenalties::default(),
            });
        }
        self
    }

    /// The key of made-up salts, for loading users files.
    pub fn salt_key(&self) -> &[u8; 32] {
        &self.salt_key
    }

    /// The users in force; `None` when the daemon serves anonymously.
    pub fn users(&self) -> Option<Arc<Users>> {
        self.users.read().unwrap().clone()
    }

    /// Puts a freshly loaded users file in force; sessions already in are not affected.
    pub fn replace(&self, users: Users) {
        *self.users.write().unwrap() = Some(Arc::new(users));
    }

    /// The salt and iteration count a password login as `user` is offered: its verifier's,
    /// or, for a name without one (unknown, or keys only), a salt made up from the name, the
    /// same at every attempt, with the count most verifiers have: SCRAM's first answer then
    /// says nothing about which names exist.
    pub fn salt(&self, users: &Users, user: &str) -> (Vec<u8>, u32) {
        match users.get(user).and_then(|u| u.verifier.as_ref()) {
            Some(v) => (v.salt.clone(), v.iterations),
            None => (made_up_salt(&self.salt_key, user), users.iterations()),
        }
    }

    /// The shared throttle's keys of a login as `user` from `range`: the range's text, and a
    /// keyed hash of the name (the same on every instance, which share the salt key; no raw
    /// name is stored, and a long one makes no longer row).
    fn shared_keys(
        &self,
        range: AddrRange,
        user: &str,
    ) -> Result<(pgstate::ThrottleKey, pgstate::ThrottleKey), Refusal> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.salt_key).expect("HMAC takes keys of any length");
        mac.update(NAME_KEY_CONTEXT);
        mac.update(user.as_bytes());
        let name: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let keys = pgstate::ThrottleKey::range(&range.to_string())
            .and_then(|r| Ok((r, pgstate::ThrottleKey::name(&name)?)));
        keys.map_err(|e| {
            debug!(detail = %e.detail(), "no throttle key");
            Refusal::Unavailable(Unchecked::Refused)
        })
    }

    /// A refusal, unchecked, while `range` or `user` serves a penalty (or, on a service, while
    /// the shared throttle does not answer).
    pub async fn refused(&self, range: AddrRange, user: &str) -> Option<Refusal> {
        let shared = match &self.throttle {
            Throttle::Local(failures) => {
                let now = Instant::now();
                let name = self.names.hash_one(user);
                let failures = failures.lock().unwrap();
                if let Some(wait) = failures.by_range.wait(&range, now) {
                    return Some(Refusal::Range(wait));
                }
                return match failures.by_name.wait(&name, now) {
                    Some(wait) if !failures.trusts(range, name, now) => Some(Refusal::User(wait)),
                    _ => None,
                };
            }
            Throttle::Shared(shared) => shared,
        };
        let (r, n) = match self.shared_keys(range, user) {
            Ok(keys) => keys,
            Err(refusal) => return Some(refusal),
        };
        match shared.ask_again(|| shared.state.refused(&r, &n)).await {
            Ok(refusal) => refusal.map(|r| shared.learn_from(range, r.into())),
            Err(unavailable) => Some(unavailable),
        }
    }

    /// A key login: `user` if `key` (the TLS client certificate's) is one of theirs, refused
    /// only while its address range serves a penalty. A key that is not theirs is no failure
    /// by itself (the client may go on with a password).
    pub async fn by_key(
        &self,
        users: &Users,
        range: AddrRange,
        user: &str,
        key: Option<Fingerprint>,
    ) -> Option<Result<Arc<User>, Refusal>> {
        let found = users.get(user)?;
        let key = key?;
        if !found.keys.contains(&key) {
            return None;
        }
        // Only the range's penalty holds: a key cannot be guessed, so guesses at the name's
        // password must not keep its key out.
        let shared = match &self.throttle {
            Throttle::Local(failures) => {
                let now = Instant::now();
                let name = self.names.hash_one(user);
                let mut failures = failures.lock().unwrap();
                if let Some(wait) = failures.by_range.wait(&range, now) {
                    return Some(Err(Refusal::Range(wait)));
                }
                failures.by_name.clear(&name);
                failures.trust(range, name, now);
                return Some(Ok(found.clone()));
            }
            Throttle::Shared(shared) => shared,
        };
        let (r, n) = match self.shared_keys(range, user) {
            Ok(keys) => keys,
            Err(refusal) => return Some(Err(refusal)),
        };
        Some(
            match shared.ask_again(|| shared.state.key_login(&r, &n)).await {
                Ok(Ok(())) => Ok(found.clone()),
                Ok(Err(refusal)) => Err(shared.learn_from(range, refusal.into())),
                Err(unavailable) => Err(unavailable),
            },
        )
    }

    /// A password login: `check` runs SCRAM's last step against `user`'s verifier (a dummy
    /// one for names without, so that the work is the same) and gives the server's final
    /// message when the proof is right.
    pub async fn by_password(
        &self,
        users: &Users,
        range: AddrRange,
        user: &str,
        check: impl FnOnce(&Verifier) -> Option<String> + Send,
    ) -> Result<(Arc<User>, String), Refusal> {
        let attempt = |name: &str| {
            let found = users.get(name);
            let verifier = found.and_then(|u| u.verifier.as_ref());
            let answer = check(verifier.unwrap_or(&self.dummy));
            match (found, verifier, answer) {
                (Some(u), Some(_), Some(answer)) => Some((u.clone(), answer)),
                _ => None,
            }
        };
        let shared = match &self.throttle {
            Throttle::Local(failures) => {
                return self.attempt_in(failures, Instant::now(), range, user, attempt)
            }
            Throttle::Shared(shared) => shared,
        };
        let (r, n) = self.shared_keys(range, user)?;
        let penalty = self.penalty.into();
        let outcome = shared
            .ask(
                shared
                    .state
                    .login_attempt(&r, &n, penalty, || attempt(user)),
            )
            .await?;
        match outcome {
            Ok(found) => Ok(found),
            Err(pgstate::Refusal::Failed) => {
                // The range's penalty now, for the accept loop: only a hint, so a database
                // that has just stopped answering costs the failed client no more than this.
                let now = tokio::time::timeout(LEARN_PATIENCE, shared.state.penalty(&r)).await;
                if let Ok(Ok(Some(wait))) = now {
                    shared.ranges.learn(range, wait, Instant::now());
                }
                Err(Refusal::Failed)
            }
            Err(refusal) => Err(shared.learn_from(range, refusal.into())),
        }
    }

    /// How long logins from `range` are still refused, if they are: what the accept loop asks
    /// of every connection, so it never waits. On a service, what this instance has learned
    /// from the database at logins (see [`SharedThrottle::ranges`]).
    pub fn penalty(&self, range: AddrRange) -> Option<Duration> {
        match &self.throttle {
            Throttle::Local(failures) => {
                let failures = failures.lock().unwrap();
                failures.by_range.wait(&range, Instant::now())
            }
            Throttle::Shared(shared) => shared.ranges.wait(range, Instant::now()),
        }
    }

    /// One login as `user` from `range` at the time `now`, with `check` for the proof, counted
    /// in `failures`, this process's. Refused unchecked while the range or the user name serves a penalty
    /// (the name's does not hold for a range that logged in as it lately); a failure starts
    /// (or lengthens) the penalty of both; a success clears its user name's failures alone (a
    /// login as one user must not wash away the guesses at another), never its range's. On a
    /// service the database does the same (pgstate's `login_attempt`).
    fn attempt_in<T>(
        &self,
        failures: &Mutex<Failures>,
        now: Instant,
        range: AddrRange,
        user: &str,
        check: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, Refusal> {
        let name = self.names.hash_one(user);
        // The check, the proof and the count under one lock: of attempts made at once, the
        // first failure shuts out the rest, so parallel connections cannot multiply the
        // guessing rate. A SCRAM proof is three HMACs, microseconds.
        let mut failures = failures.lock().unwrap();
        if let Some(wait) = failures.by_range.wait(&range, now) {
            return Err(Refusal::Range(wait));
        }
        if let Some(wait) = failures.by_name.wait(&name, now) {
            if !failures.trusts(range, name, now) {
                return Err(Refusal::User(wait));
            }
        }
        match check(user) {
            Some(found) => {
                failures.by_name.clear(&name);
                failures.trust(range, name, now);
                Ok(found)
            }
            None => {
                failures.by_range.fail(range, now, self.penalty);
                failures.by_name.fail(name, now, self.penalty);
                Err(Refusal::Failed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Authenticator {
        /// The failures counted in this process.
        fn local(&self) -> &Mutex<Failures> {
            match &self.throttle {
                Throttle::Local(failures) => failures,
                Throttle::Shared(_) => panic!("a shared throttle"),
            }
        }

        /// One login at the time `now`, counted in this process.
        fn attempt_at<T>(
            &self,
            now: Instant,
            range: AddrRange,
            user: &str,
            check: impl FnOnce(&str) -> Option<T>,
        ) -> Result<T, Refusal> {
            self.attempt_in(self.local(), now, range, user, check)
        }
    }

    const PENALTY: Penalty = Penalty {
        first: Duration::from_millis(250),
        max: Duration::from_secs(8),
    };

    fn range(s: &str) -> AddrRange {
        AddrRange::of(s.parse().unwrap())
    }

    /// A proof that checks out, and one that does not, and one that must not be checked.
    fn right(_: &str) -> Option<()> {
        Some(())
    }
    fn wrong(_: &str) -> Option<()> {
        None
    }
    fn unchecked(_: &str) -> Option<()> {
        panic!("a proof was checked during a penalty")
    }

    #[test]
    fn penalties_double_from_the_first_up_to_the_max() {
        let d: Vec<_> = (1..=8).map(|n| PENALTY.after(n)).collect();
        assert_eq!(d[0], PENALTY.first);
        assert_eq!(d[1], PENALTY.first * 2);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(d[7], PENALTY.max);
        assert_eq!(PENALTY.after(u32::MAX), PENALTY.max, "no overflow");
        let off = Penalty {
            first: Duration::ZERO,
            ..PENALTY
        };
        assert_eq!(off.after(9), Duration::ZERO);
        let huge = Penalty {
            first: Duration::from_secs(3600),
            max: Duration::MAX,
        };
        assert_eq!(
            huge.after(3),
            FORGET_AFTER,
            "never longer than failures are remembered"
        );
    }

    /// Regression: a success cleared the address's failure count, so alternating guesses at
    /// `admin` with logins as a low-privilege user kept the delay at 0.25 s. Failures count per
    /// user name and per address range; a success clears only its own user name's.
    #[test]
    fn a_success_clears_only_its_own_user_names_failures() {
        let a = Authenticator::new(None, PENALTY, [7; 32]);
        let guesser = range("10.0.0.1");
        let admin = a.names.hash_one("admin");
        let mut now = Instant::now();
        let mut windows = Vec::new();
        for _ in 0..3 {
            assert_eq!(
                a.attempt_at(now, guesser, "admin", wrong),
                Err(Refusal::Failed)
            );
            windows.push(a.local().lock().unwrap().by_name.wait(&admin, now));
            now += PENALTY.max; // past every penalty so far
            assert_eq!(a.attempt_at(now, guesser, "low", right), Ok(()));
        }
        let ms = |ms| Some(Duration::from_millis(ms));
        assert_eq!(
            windows,
            [ms(250), ms(500), ms(1000)],
            "the guesses at admin add up"
        );
        // Nor did the successes wash away the range's count: this is its fourth failure.
        assert_eq!(
            a.attempt_at(now, guesser, "other", wrong),
            Err(Refusal::Failed)
        );
        let by_range = a.local().lock().unwrap().by_range.wait(&guesser, now);
        assert_eq!(by_range, ms(2000));
    }

    #[test]
    fn during_a_penalty_attempts_are_refused_unchecked() {
        let a = Authenticator::new(None, PENALTY, [7; 32]);
        let now = Instant::now();
        let (one, two, three) = (range("10.0.1.1"), range("10.0.2.1"), range("10.0.3.1"));
        assert_eq!(a.attempt_at(now, one, "alice", wrong), Err(Refusal::Failed));
        let later = now + Duration::from_millis(100);
        let left = Duration::from_millis(150);
        assert_eq!(
            a.attempt_at(later, one, "bob", unchecked),
            Err(Refusal::Range(left))
        );
        assert_eq!(
            a.attempt_at(later, two, "alice", unchecked),
            Err(Refusal::User(left))
        );
        assert_eq!(
            a.attempt_at(later, three, "bob", right),
            Ok(()),
            "others are not shut out"
        );
        let after = now + PENALTY.first;
        assert_eq!(
            a.attempt_at(after, two, "alice", right),
            Ok(()),
            "the penalty ends"
        );
    }

    /// Regression (found attacking the per-name penalty): one address guessing at `admin`
    /// once a penalty kept admin out from everywhere. A range that logged in as a user lately
    /// is not shut out by that user name's penalty; any other range is.
    #[test]
    fn a_guesser_cannot_keep_a_user_out_of_where_they_log_in_from() {
        let a = Authenticator::new(None, PENALTY, [7; 32]);
        let (home, guesser, elsewhere) = (range("10.0.1.1"), range("10.6.6.6"), range("10.0.9.1"));
        let mut now = Instant::now();
        assert_eq!(a.attempt_at(now, home, "admin", right), Ok(()));
        for _ in 0..10 {
            now += PENALTY.max; // the guesser's own penalty is over each time
            assert_eq!(
                a.attempt_at(now, guesser, "admin", wrong),
                Err(Refusal::Failed)
            );
            let away = a.attempt_at(now, elsewhere, "admin", unchecked);
            assert!(matches!(away, Err(Refusal::User(_))), "{away:?}");
            let at_home = a.attempt_at(now, home, "admin", right);
            assert_eq!(at_home, Ok(()), "the owner, where they logged in from");
        }
        now += TRUST_FOR;
        assert_eq!(
            a.attempt_at(now, guesser, "admin", wrong),
            Err(Refusal::Failed)
        );
        let stale = a.attempt_at(now, home, "admin", unchecked);
        assert!(
            matches!(stale, Err(Refusal::User(_))),
            "trust lapses: {stale:?}"
        );
    }

    #[test]
    fn unknown_and_known_names_are_penalised_alike() {
        let a = Authenticator::new(None, PENALTY, [7; 32]);
        let now = Instant::now();
        for (n, name) in ["alice", "no-such-user"].into_iter().enumerate() {
            let first = range(&format!("10.1.{n}.1"));
            assert_eq!(a.attempt_at(now, first, name, wrong), Err(Refusal::Failed));
            let again = range(&format!("10.2.{n}.1"));
            let refused = a.attempt_at(now, again, name, unchecked);
            assert_eq!(refused, Err(Refusal::User(PENALTY.first)), "{name}");
        }
    }

    #[test]
    fn the_ledgers_stay_bounded() {
        let a = Authenticator::new(None, PENALTY, [7; 32]);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 50) {
            let r = AddrRange::of(std::net::IpAddr::V4((i << 8).into()));
            let _ = a.attempt_at(now, r, &format!("user{i}"), wrong);
        }
        let failures = a.local().lock().unwrap();
        assert!(failures.by_range.map.len() <= MAX_TRACKED);
        assert!(failures.by_name.map.len() <= MAX_TRACKED);
    }

    /// The shared throttle's keys: the same name gives the same key on every instance (they
    /// share the salt key), no raw name is stored, however long, and a key is not the salt a
    /// client is shown for the name (the salt would tell a reader of the database which row is
    /// whose).
    #[test]
    fn shared_keys_are_keyed_hashes_of_names_apart_from_their_salts() {
        let (a, b) = (
            Authenticator::new(None, PENALTY, [7; 32]),
            Authenticator::new(None, PENALTY, [7; 32]),
        );
        let other = Authenticator::new(None, PENALTY, [8; 32]);
        let net = range("10.0.1.9");
        let key = |auth: &Authenticator, user: &str| {
            let (r, n) = auth.shared_keys(net, user).unwrap();
            (r.as_str().to_owned(), n.as_str().to_owned())
        };
        let (r, n) = key(&a, "alice");
        assert_eq!(r, "range:10.0.1.0/24");
        assert_eq!((r.clone(), n.clone()), key(&b, "alice"), "another instance");
        assert_ne!(n, key(&a, "bob").1);
        assert_ne!(n, key(&other, "alice").1, "keyed by the salt key");
        let hex = n.strip_prefix("name:").unwrap();
        assert_eq!(hex.len(), 64);
        assert!(!hex.contains("alice"));
        let salt: String = made_up_salt(&[7; 32], "alice")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!hex.starts_with(&salt), "not the name's made-up salt");
        let long = "x".repeat(10_000);
        assert_eq!(
            key(&a, &long).1.len(),
            n.len(),
            "a long name, a key as short"
        );
    }

    /// The accept loop's knowledge of shared penalties: until the database said, then gone;
    /// bounded however many ranges it hears of.
    #[test]
    fn known_penalties_end_when_the_database_said_and_stay_bounded() {
        let known = KnownPenalties::default();
        let now = Instant::now();
        let net = range("10.0.1.1");
        known.learn(net, Duration::from_secs(2), now);
        assert_eq!(known.wait(net, now), Some(Duration::from_secs(2)));
        assert_eq!(known.wait(range("10.0.2.1"), now), None);
        let later = now + Duration::from_secs(1);
        assert_eq!(known.wait(net, later), Some(Duration::from_secs(1)));
        assert_eq!(known.wait(net, now + Duration::from_secs(2)), None);
        assert!(
            known.map.lock().unwrap().is_empty(),
            "an ended one is dropped"
        );
        known.learn(net, Duration::MAX, now);
        assert_eq!(
            known.wait(net, now),
            Some(FORGET_AFTER),
            "never longer than that"
        );
        for i in 0..(MAX_TRACKED as u32 + 50) {
            let r = AddrRange::of(std::net::IpAddr::V4((i << 8).into()));
            known.learn(r, Duration::from_secs(60), now);
        }
        assert!(known.map.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn retry_times_round_up_to_whole_seconds() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_secs(Duration::from_secs(30)), 30);
    }
}
