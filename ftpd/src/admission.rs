//! Who gets a connection: the counts every connection is admitted under (all connections, those
//! from one IP address, and those not logged in yet, overall and per address range), and the
//! address ranges that stand for one party.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::{retry_secs, Authenticator};
use crate::Config;

/// Leading bits of an IPv4 address that name its range (a /24): whoever has one address of a
/// network usually has its neighbours too, so budgets and penalties kept per address alone
/// would let one party multiply them by the addresses it holds.
pub const IPV4_RANGE_BITS: u32 = 24;
/// Leading bits of an IPv6 address that name its range (a /64, the smallest network a site is
/// given: one host can use any of its 2^64 addresses).
pub const IPV6_RANGE_BITS: u32 = 64;

/// The address range an IP address lies in: an IPv4 /24 or an IPv6 /64 (an IPv4 address
/// mapped into IPv6 counts as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrRange(IpAddr);

impl AddrRange {
    pub fn of(ip: IpAddr) -> AddrRange {
        AddrRange(match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX << (32 - IPV4_RANGE_BITS);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - IPV6_RANGE_BITS);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        })
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = match self.0 {
            IpAddr::V4(_) => IPV4_RANGE_BITS,
            IpAddr::V6(_) => IPV6_RANGE_BITS,
        };
        write!(f, "{}/{bits}", self.0)
    }
}

/// How many connections each key (an IP address, an address range) has at once.
type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// One connection's place in the count for its key; given up when dropped.
struct Claim<K: Hash + Eq + Copy> {
    counts: Counts<K>,
    key: K,
}

impl<K: Hash + Eq + Copy> Claim<K> {
    /// A place for `key` if it has fewer than `max`.
    fn take(counts: &Counts<K>, key: K, max: usize) -> Option<Self> {
        let mut map = counts.lock().unwrap();
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Claim {
            counts: counts.clone(),
            key,
        })
    }
}

impl<K: Hash + Eq + Copy> Drop for Claim<K> {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The connections that have not logged in yet, by address range, oldest first. When their
/// budget is full, a newcomer from a range with fewer of them takes the place of the oldest
/// stranger of the range with the most: a party holding many ranges (cheap /64s, a few /24s)
/// can fill the budget, but then only churns its own connections, and cannot keep anyone
/// from another range out.
#[derive(Default)]
struct Strangers {
    /// Per range: each stranger's number and the token that evicts it.
    by_range: HashMap<AddrRange, VecDeque<(u64, CancellationToken)>>,
    /// How many there are in all.
    count: usize,
    /// The next stranger's number.
    next: u64,
}

/// One connection's place among the strangers; given up at login or when dropped.
struct Stranger {
    strangers: Arc<Mutex<Strangers>>,
    range: AddrRange,
    id: u64,
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let mut all = self.strangers.lock().unwrap();
        let Some(queue) = all.by_range.get_mut(&self.range) else {
            return;
        };
        let before = queue.len();
        queue.retain(|(id, _)| *id != self.id);
        let gone = before - queue.len();
        if queue.is_empty() {
            all.by_range.remove(&self.range);
        }
        all.count -= gone;
    }
}

/// What a connection holds while it is served: its place in every count it was admitted
/// under. Dropping it gives them all up, which a session does as soon as a failed login is
/// decided, before answering: the penalty is the authenticator's to keep, not a parked slot's.
pub struct Admission {
    /// Its place among all connections.
    _slot: OwnedSemaphorePermit,
    /// Its place among the connections from its IP address.
    _per_ip: Claim<IpAddr>,
    /// Its place among the connections that have not logged in; given up at login.
    unauthenticated: Option<Stranger>,
    /// Cancelled when a newcomer from a less crowded range takes its place before login.
    evicted: CancellationToken,
}

impl Admission {
    /// The connection has logged in (or, serving anonymously, said hello): it no longer counts
    /// against the strangers' budget, and can no longer be evicted.
    pub fn logged_in(&mut self) {
        self.unauthenticated = None;
    }

    /// Completes when the connection, not logged in yet, has given its place to a newcomer.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

/// The counts, and the limits from the settings, that the accept loop admits connections by.
pub struct Gate {
    /// Slots for all connections (`--max-connections`).
    slots: Arc<Semaphore>,
    /// Connections per IP address.
    per_ip: Counts<IpAddr>,
    /// `--max-connections-per-ip`.
    max_per_ip: usize,
    /// The connections not logged in yet.
    strangers: Arc<Mutex<Strangers>>,
    /// `--max-unauthenticated`.
    max_strangers: usize,
    /// `--max-unauthenticated-per-range`.
    max_per_range: usize,
    /// Knows which address ranges are serving a login penalty: counted here, or, on a service
    /// (`--database`), those the database named at this instance's logins (a cache; see
    /// [`Authenticator::penalty`]).
    auth: Arc<Authenticator>,
}

impl Gate {
    pub fn new(config: &Config, auth: Arc<Authenticator>) -> Gate {
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Gate {
            slots: permits(config.max_connections),
            per_ip: Counts::default(),
            max_per_ip: config.max_connections_per_ip,
            strangers: Arc::default(),
            max_strangers: config.max_unauthenticated,
            max_per_range: config.max_unauthenticated_per_range,
            auth,
        }
    }

    /// Admits a new connection from `ip`, or says why not, for a `busy` refusal. Cheap and
    /// never waits: a refused connection is answered and closed at once. On a service the
    /// range's penalty comes from what this instance learned from the database at logins, not
    /// from a query per connection (which would let a flood of connections flood the
    /// database): a range shut out by failures on another instance gets through here until
    /// its first login attempt, which the database refuses unchecked (`busy`, the same answer),
    /// and from then on it is refused here too, until the penalty the database named ends.
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, String> {
        let range = AddrRange::of(ip);
        // First, so that a range serving a penalty costs nothing else: it cannot log in now.
        if let Some(wait) = self.auth.penalty(range) {
            crate::metrics::connection_refused("range_penalty");
            return Err(format!(
                "too many failed logins from your network; try again in {} s",
                retry_secs(wait)
            ));
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            crate::metrics::connection_refused("max_connections");
            return Err("too many connections".into());
        };
        let Some(per_ip) = Claim::take(&self.per_ip, ip, self.max_per_ip) else {
            crate::metrics::connection_refused("max_per_ip");
            return Err("too many connections from your address".into());
        };
        let evicted = CancellationToken::new();
        let stranger = self.stranger(range, evicted.clone())?;
        Ok(Admission {
            _slot: slot,
            _per_ip: per_ip,
            unauthenticated: Some(stranger),
            evicted,
        })
    }

    /// A place among the strangers for a newcomer from `range`: a free one, or, with the
    /// budget full, the place of the oldest stranger of the most crowded range, when that
    /// range has more than the newcomer's would.
    fn stranger(&self, range: AddrRange, token: CancellationToken) -> Result<Stranger, String> {
        let mut all = self.strangers.lock().unwrap();
        let mine = all.by_range.get(&range).map_or(0, VecDeque::len);
        if mine >= self.max_per_range {
            crate::metrics::connection_refused("busy_range");
            return Err("too many connections not logged in yet from your network".into());
        }
        if all.count >= self.max_strangers {
            let crowded = all
                .by_range
                .iter()
                .max_by_key(|(_, queue)| queue.len())
                .map(|(r, queue)| (*r, queue.len()));
            match crowded {
                Some((victim, n)) if n > mine + 1 => {
                    let queue = all.by_range.get_mut(&victim).expect("found above");
                    let (_, oldest) = queue.pop_front().expect("a crowded range is not empty");
                    if queue.is_empty() {
                        all.by_range.remove(&victim);
                    }
                    all.count -= 1;
                    oldest.cancel();
                }
                _ => {
                    crate::metrics::connection_refused("strangers_full");
                    return Err(
                        "too many connections not logged in yet; try again in a moment".into(),
                    );
                }
            }
        }
        let id = all.next;
        all.next += 1;
        all.count += 1;
        all.by_range
            .entry(range)
            .or_default()
            .push_back((id, token));
        Ok(Stranger {
            strangers: self.strangers.clone(),
            range,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_ipv4_slash_24_and_ipv6_slash_64() {
        let range = |s: &str| AddrRange::of(s.parse().unwrap()).to_string();
        assert_eq!(range("192.0.2.77"), "192.0.2.0/24");
        assert_eq!(range("192.0.2.255"), range("192.0.2.1"));
        assert_ne!(range("192.0.3.1"), range("192.0.2.1"));
        assert_eq!(
            range("::ffff:192.0.2.9"),
            "192.0.2.0/24",
            "mapped IPv4 is IPv4"
        );
        assert_eq!(
            range("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(range("2001:db8:1:3::1"), range("2001:db8:1:2::1"));
    }

    #[test]
    fn claims_are_counted_per_key_and_given_back_on_drop() {
        let counts = Counts::<u8>::default();
        let a = Claim::take(&counts, 1, 2).unwrap();
        let b = Claim::take(&counts, 1, 2).unwrap();
        assert!(Claim::take(&counts, 1, 2).is_none(), "over the cap");
        let other = Claim::take(&counts, 2, 2);
        assert!(other.is_some(), "another key has its own count");
        drop(a);
        assert!(
            Claim::take(&counts, 1, 2).is_some(),
            "a place was given back"
        );
        drop((b, other));
        assert!(counts.lock().unwrap().is_empty(), "no key is left behind");
        assert!(Claim::take(&counts, 3, 0).is_none());
        assert!(
            counts.lock().unwrap().is_empty(),
            "a refusal leaves nothing behind"
        );
    }

    /// With the strangers' budget full, a newcomer from a quiet range takes the place of the
    /// oldest stranger of the most crowded one; one from the most crowded range is refused;
    /// places given back are counted once, evicted or not.
    #[test]
    fn a_full_strangers_budget_makes_room_at_the_most_crowded_range() {
        let gate = Gate {
            slots: Arc::new(Semaphore::new(100)),
            per_ip: Counts::default(),
            max_per_ip: 100,
            strangers: Arc::default(),
            max_strangers: 4,
            max_per_range: 3,
            auth: Arc::new(Authenticator::new(
                None,
                crate::auth::Penalty {
                    first: std::time::Duration::ZERO,
                    max: std::time::Duration::ZERO,
                },
                [0; 32],
            )),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = gate.admit(ip("10.0.1.1")).unwrap();
        let rest: Vec<_> = ["10.0.1.2", "10.0.1.3", "10.0.2.1"]
            .map(|a| gate.admit(ip(a)).unwrap())
            .into();
        assert!(
            gate.admit(ip("10.0.1.4")).is_err(),
            "its range is at its own cap"
        );
        assert!(!first.evicted.is_cancelled());
        let newcomer = gate.admit(ip("10.0.2.2")).expect("room is made");
        assert!(
            first.evicted.is_cancelled(),
            "the oldest of the crowded range went"
        );
        assert!(rest.iter().all(|a| !a.evicted.is_cancelled()));
        assert!(
            gate.admit(ip("10.0.2.3")).is_err(),
            "two and two: no range is more crowded than the newcomer's would be"
        );
        drop(first);
        assert_eq!(
            gate.strangers.lock().unwrap().count,
            4,
            "an evicted place counts once"
        );
        let mut logged = newcomer;
        logged.logged_in();
        assert_eq!(gate.strangers.lock().unwrap().count, 3);
        drop((rest, logged));
        assert_eq!(gate.strangers.lock().unwrap().count, 0);
        assert!(gate.strangers.lock().unwrap().by_range.is_empty());
    }
}
