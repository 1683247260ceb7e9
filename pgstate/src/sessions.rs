//! The service-wide session cap: a row per open session, renewed by its instance's heartbeat,
//! counted across instances under a per-user lock.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::GenericClient;

use crate::{secs, Error, Result, State};

/// The session cap's advisory locks, in the two-key space: (this class, hash of the user).
const SESSION_LOCK: i32 = 0x7365_7373; // "sess"

/// One session's place in its user's count, until [`State::release_session`] (or, if its
/// instance stops renewing it, until it expires).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a session lease is given back with State::release_session"]
pub struct SessionLease {
    /// The row's id.
    pub id: i64,
    /// Whose session it is.
    pub user: String,
}

/// The ids of the rows this instance holds now, sessions and quota reservations: the only
/// ones its heartbeat renews. An id leaves it when its release is tried, whether or not the
/// database answered, so a row whose release failed (or whose insert was given up after the
/// database had made it) expires with its time to live instead of being renewed for as long
/// as the instance runs.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub(crate) sessions: HashSet<i64>,
    pub(crate) reservations: HashSet<i64>,
}

pub(crate) type Live = Arc<Mutex<Held>>;

pub(crate) fn held(set: &Live) -> std::sync::MutexGuard<'_, Held> {
    // Plain ids: a panic elsewhere leaves them usable.
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Renews the rows of `instance` in `live` each third of `ttl`, until aborted (when the last
/// clone of its [`State`] goes). A failed renewal is logged and tried again at the next beat;
/// three failed in a row and the rows expire, which is the price of an unreachable database.
pub(crate) async fn heartbeat(pool: Pool, instance: String, ttl: Duration, live: Live) {
    let mut beats = tokio::time::interval((ttl / 3).max(Duration::from_millis(50)));
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        beats.tick().await;
        let (sessions, reservations): (Vec<i64>, Vec<i64>) = {
            let h = held(&live);
            (
                h.sessions.iter().copied().collect(),
                h.reservations.iter().copied().collect(),
            )
        };
        if sessions.is_empty() && reservations.is_empty() {
            continue;
        }
        let renewed = crate::within(async {
            let client = crate::open_client(&pool).await?;
            for (table, ids) in [
                ("sessions", &sessions),
                ("usage_reservations", &reservations),
            ] {
                if ids.is_empty() {
                    continue;
                }
                client
                    .execute(
                        &format!(
                            "UPDATE {table} SET expires = now() + make_interval(secs => $2::float8)
                             WHERE instance = $1 AND id = ANY($3)"
                        ),
                        &[&instance, &secs(ttl), ids],
                    )
                    .await?;
            }
            Ok::<_, Error>(())
        })
        .await;
        if let Err(e) = renewed {
            tracing::warn!(error = %e.detail(), "cannot renew this instance's sessions and reservations");
        }
    }
}

pub(crate) async fn sweep(client: &impl GenericClient) -> Result<()> {
    client
        .batch_execute(
            "DELETE FROM sessions WHERE expires <= now();
             DELETE FROM usage_reservations WHERE expires <= now()",
        )
        .await?;
    Ok(())
}

impl State {
    /// A place for a new session of `user` if the whole service has fewer than `max` of
    /// theirs (`None` for no cap: the session is still counted). Counted under a lock of the
    /// user's name, so that two instances admitting at once cannot both take the last place;
    /// expired sessions (of crashed instances) are deleted first and do not count.
    pub async fn acquire_session(
        &self,
        user: &str,
        max: Option<u32>,
    ) -> Result<Option<SessionLease>> {
        if user.len() > 200 {
            return Err(Error::Invalid("a user name is too long".into()));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&SESSION_LOCK, &user],
        )
        .await?;
        tx.execute(
            "DELETE FROM sessions WHERE user_name = $1 AND expires <= now()",
            &[&user],
        )
        .await?;
        if let Some(max) = max {
            let open: i64 = tx
                .query_one(
                    "SELECT count(*) FROM sessions WHERE user_name = $1",
                    &[&user],
                )
                .await?
                .get(0);
            if open >= i64::from(max) {
                return Ok(None);
            }
        }
        let options = &self.inner.options;
        let id: i64 = tx
            .query_one(
                "INSERT INTO sessions (user_name, instance, expires)
                 VALUES ($1, $2, now() + make_interval(secs => $3::float8)) RETURNING id",
                &[&user, &options.instance, &secs(options.session_ttl)],
            )
            .await?
            .get(0);
        tx.commit().await?;
        held(&self.inner.live).sessions.insert(id);
        Ok(Some(SessionLease {
            id,
            user: user.to_owned(),
        }))
    }

    /// Gives a session's place back. It is no longer renewed from now on, so if the database
    /// does not take the release, the place expires with its time to live.
    pub async fn release_session(&self, lease: SessionLease) -> Result<()> {
        held(&self.inner.live).sessions.remove(&lease.id);
        let client = self.client().await?;
        client
            .execute("DELETE FROM sessions WHERE id = $1", &[&lease.id])
            .await?;
        Ok(())
    }

    /// Sessions of `user` open across the service now (for `ftpd users` and the tests).
    pub async fn sessions(&self, user: &str) -> Result<u64> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM sessions WHERE user_name = $1 AND expires > now()",
                &[&user],
            )
            .await?
            .get(0);
        Ok(n.max(0) as u64)
    }

    /// Gives back every session and quota reservation of this instance at once: at start (what
    /// a previous run of the same name left), and at the end of a graceful shutdown. Returns
    /// how many sessions.
    pub async fn release_instance(&self) -> Result<u64> {
        let instance = &self.inner.options.instance;
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM usage_reservations WHERE instance = $1",
                &[instance],
            )
            .await?;
        Ok(client
            .execute("DELETE FROM sessions WHERE instance = $1", &[instance])
            .await?)
    }
}
