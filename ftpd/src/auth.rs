//! Authentication: the users in force, and the slowdown for addresses that keep failing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use protocol::auth::{self, Bytes32, Role};
use protocol::VERSION;

use crate::users::{User, Users};

/// First delay after a failure; doubled for each further one from the same address.
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most, so failures cannot grow the map without bound.
const MAX_TRACKED: usize = 10_000;

/// Who may log in, shared by every session and replaced whole on reload.
#[derive(Default)]
pub struct Authenticator {
    /// `None`: anonymous access to the whole root.
    users: RwLock<Option<Arc<Users>>>,
    /// Recent failures by address: how many, and when the last was.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Authenticator {
    pub fn new(users: Option<Users>) -> Self {
        Authenticator {
            users: RwLock::new(users.map(Arc::new)),
            failures: Mutex::default(),
        }
    }

    /// The users in force; `None` when the daemon serves anonymously.
    pub fn users(&self) -> Option<Arc<Users>> {
        self.users.read().unwrap().clone()
    }

    /// Puts a freshly loaded users file in force; sessions already in are not affected.
    pub fn replace(&self, users: Users) {
        *self.users.write().unwrap() = Some(Arc::new(users));
    }

    /// Checks a client's proof. Unknown users cost the same work as known ones, and get the
    /// same answer, so the reply says nothing about which names exist.
    pub fn verify(
        &self,
        users: &Users,
        user: &str,
        server_nonce: &Bytes32,
        client_nonce: &Bytes32,
        mac: &Bytes32,
    ) -> Option<Arc<User>> {
        let t = auth::transcript(Role::Client, VERSION, server_nonce, client_nonce, user);
        match users.get(user) {
            Some(u) if auth::verify(u.secret.expose(), &t, mac) => Some(u.clone()),
            Some(_) => None,
            None => {
                let _ = auth::verify(b"no such user: equal work", &t, mac);
                None
            }
        }
    }

    /// The server's proof for a client that checked out.
    pub fn proof(user: &User, server_nonce: &Bytes32, client_nonce: &Bytes32) -> Bytes32 {
        let t = auth::transcript(
            Role::Server,
            VERSION,
            server_nonce,
            client_nonce,
            &user.name,
        );
        auth::sign(user.secret.expose(), &t)
    }

    /// Counts a failure from `ip` and returns how long to wait before saying so.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let mut map = self.failures.lock().unwrap();
        let now = Instant::now();
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = (entry.0 - 1).min(10);
        (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
    }

    /// Forgets the failures of an address that just logged in.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().unwrap().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_address_and_reset_on_success() {
        let a = Authenticator::new(None);
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let d: Vec<_> = (0..8).map(|_| a.failed(x)).collect();
        assert_eq!(d[0], FIRST_DELAY);
        assert_eq!(d[1], FIRST_DELAY * 2);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(d[7], MAX_DELAY);
        assert_eq!(a.failed(y), FIRST_DELAY, "another address is not slowed");
        a.succeeded(x);
        assert_eq!(a.failed(x), FIRST_DELAY);
    }
}
