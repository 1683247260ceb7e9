//! The login-failure throttle shared by every instance: the arithmetic of ftpd's `auth.rs`
//! (a penalty per address range and per user name, doubled per failure in a row, forgotten
//! after a while; a range that logged in as a name lately is exempt from that name's
//! penalty), kept in rows so that a guesser spreading over instances meets one count.

use std::time::Duration;

use tokio_postgres::GenericClient;

use crate::{from_secs, secs, Error, Result, State};

/// Failures older than this are forgotten; no penalty lasts longer (as in `auth.rs`).
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// How long a range that logged in as a user is exempt from that user name's penalty.
pub const TRUST_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// Key text stored at most; a longer key is refused rather than stored.
const MAX_KEY: usize = 200;
/// The throttle's advisory locks, in the two-key space: (this class, hash of the key).
const THROTTLE_LOCK: i32 = 0x7468_726f; // "thro"

/// How long a failed login shuts out its address range and its user name: `first` after one
/// failure, doubled for each further one, up to `max` (and never beyond [`FORGET_AFTER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Penalty {
    /// After the first failure; zero turns the penalty off.
    pub first: Duration,
    /// The most, however many failures.
    pub max: Duration,
}

/// Why a login was refused (as `auth.rs`'s `Refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The proof did not check out, or there is no such user.
    Failed,
    /// Its address range is serving a penalty: the proof was not checked. This long remains.
    Range(Duration),
    /// Its user name is serving a penalty: not checked.
    User(Duration),
}

/// What failures are counted by: an address range (`AddrRange`'s text, `192.0.2.0/24`) or a
/// user name. Names are best given keyed-hashed (HMAC under the login-salt key all instances
/// share, hex), so that rows stay short and the table does not list the names guessed at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThrottleKey(String);

impl ThrottleKey {
    pub fn range(range: &str) -> Result<ThrottleKey> {
        ThrottleKey::new("range:", range)
    }

    pub fn name(name: &str) -> Result<ThrottleKey> {
        ThrottleKey::new("name:", name)
    }

    fn new(kind: &str, text: &str) -> Result<ThrottleKey> {
        if text.len() > MAX_KEY {
            return Err(Error::Invalid("a throttle key is too long".into()));
        }
        Ok(ThrottleKey(format!("{kind}{text}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Counts a failure of `key` and returns the penalty it now serves: in one statement, so that
/// failures at once on several instances each count.
async fn fail(
    client: &impl GenericClient,
    key: &ThrottleKey,
    penalty: Penalty,
) -> Result<Duration> {
    // The new count, written once for SET count and once for the penalty it earns (SET
    // expressions all see the old row).
    const COUNT: &str = "CASE WHEN f.last <= now() - make_interval(secs => $4::float8)
                          THEN 1 ELSE LEAST(f.count, 1000000) + 1 END";
    let sql = format!(
        "INSERT INTO login_failures AS f (key, count, last, until)
         VALUES ($1, 1, now(), now() + make_interval(secs => LEAST($2::float8, $3::float8, $4::float8)))
         ON CONFLICT (key) DO UPDATE SET
           count = {COUNT},
           last = now(),
           until = now() + make_interval(secs =>
             LEAST($2::float8 * power(2, LEAST({COUNT} - 1, 20)), $3::float8, $4::float8))
         RETURNING extract(epoch FROM f.until - now())::float8"
    );
    let row = client
        .query_one(
            &sql,
            &[
                &key.as_str(),
                &secs(penalty.first),
                &secs(penalty.max),
                &secs(FORGET_AFTER),
            ],
        )
        .await?;
    Ok(from_secs(row.get(0)))
}

async fn wait(client: &impl GenericClient, key: &ThrottleKey) -> Result<Option<Duration>> {
    let row = client
        .query_opt(
            "SELECT extract(epoch FROM until - now())::float8 FROM login_failures
             WHERE key = $1 AND until > now()",
            &[&key.as_str()],
        )
        .await?;
    Ok(row.map(|r| from_secs(r.get(0))).filter(|d| !d.is_zero()))
}

async fn clear(client: &impl GenericClient, key: &ThrottleKey) -> Result<()> {
    client
        .execute(
            "DELETE FROM login_failures WHERE key = $1",
            &[&key.as_str()],
        )
        .await?;
    Ok(())
}

async fn trusts(
    client: &impl GenericClient,
    range: &ThrottleKey,
    name: &ThrottleKey,
) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT 1 FROM login_trust WHERE range = $1 AND name = $2
             AND at > now() - make_interval(secs => $3::float8)",
            &[&range.as_str(), &name.as_str(), &secs(TRUST_FOR)],
        )
        .await?;
    Ok(row.is_some())
}

async fn trust(client: &impl GenericClient, range: &ThrottleKey, name: &ThrottleKey) -> Result<()> {
    client
        .execute(
            "INSERT INTO login_trust (range, name, at) VALUES ($1, $2, now())
             ON CONFLICT (range, name) DO UPDATE SET at = now()",
            &[&range.as_str(), &name.as_str()],
        )
        .await?;
    Ok(())
}

/// The refusal, unchecked, while `range` or `name` serves a penalty.
async fn refusal(
    client: &impl GenericClient,
    range: &ThrottleKey,
    name: &ThrottleKey,
) -> Result<Option<Refusal>> {
    if let Some(w) = wait(client, range).await? {
        return Ok(Some(Refusal::Range(w)));
    }
    match wait(client, name).await? {
        Some(w) if !trusts(client, range, name).await? => Ok(Some(Refusal::User(w))),
        _ => Ok(None),
    }
}

pub(crate) async fn sweep(client: &impl GenericClient) -> Result<()> {
    client
        .execute(
            "DELETE FROM login_failures WHERE last <= now() - make_interval(secs => $1::float8)",
            &[&secs(FORGET_AFTER)],
        )
        .await?;
    client
        .execute(
            "DELETE FROM login_trust WHERE at <= now() - make_interval(secs => $1::float8)",
            &[&secs(TRUST_FOR)],
        )
        .await?;
    Ok(())
}

impl State {
    /// Counts a failed login of `key` and returns the penalty it now serves.
    pub async fn login_failed(&self, key: &ThrottleKey, penalty: Penalty) -> Result<Duration> {
        fail(&**self.client().await?, key, penalty).await
    }

    /// Forgets the failures of `key` (a user name that logged in; never a range, as in
    /// `auth.rs`: a login as one user must not wash away the guesses from its network).
    pub async fn login_ok(&self, key: &ThrottleKey) -> Result<()> {
        clear(&**self.client().await?, key).await
    }

    /// How long logins by `key` are still refused, if they are (the accept loop asks this of
    /// the range before anything else).
    pub async fn penalty(&self, key: &ThrottleKey) -> Result<Option<Duration>> {
        wait(&**self.client().await?, key).await
    }

    /// A refusal, unchecked, while `range` or `name` serves a penalty (the name's does not
    /// hold for a range that logged in as it lately).
    pub async fn refused(
        &self,
        range: &ThrottleKey,
        name: &ThrottleKey,
    ) -> Result<Option<Refusal>> {
        refusal(&**self.client().await?, range, name).await
    }

    /// A key login as `name` from `range` (`auth.rs`'s `by_key`): refused only while the range
    /// serves a penalty; otherwise the name's failures are cleared and the range trusted.
    pub async fn key_login(
        &self,
        range: &ThrottleKey,
        name: &ThrottleKey,
    ) -> Result<Result<(), Refusal>> {
        let client = self.client().await?;
        if let Some(w) = wait(&**client, range).await? {
            return Ok(Err(Refusal::Range(w)));
        }
        clear(&**client, name).await?;
        trust(&**client, range, name).await?;
        Ok(Ok(()))
    }

    /// One password login as `name` from `range`, with `check` for the proof (`auth.rs`'s
    /// `attempt_at`): refused unchecked while either serves a penalty; a failure lengthens the
    /// penalty of both; a success clears the name's failures and trusts the range. The check
    /// and the count happen under advisory locks of both keys, held to the commit: of attempts
    /// made at once on any instances, the first failure shuts out the rest, so parallel
    /// connections to several instances cannot multiply the guessing rate. `check` runs with
    /// a connection held, so it must be quick (a SCRAM proof is three HMACs).
    pub async fn login_attempt<T>(
        &self,
        range: &ThrottleKey,
        name: &ThrottleKey,
        penalty: Penalty,
        check: impl FnOnce() -> Option<T>,
    ) -> Result<Result<T, Refusal>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Both locks in one statement, in one order (by key), so two attempts never deadlock.
        let mut keys = [range.as_str(), name.as_str()];
        keys.sort_unstable();
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(k)) FROM unnest($2::text[]) AS k ORDER BY k",
            &[&THROTTLE_LOCK, &&keys[..]],
        )
        .await?;
        if let Some(refusal) = refusal(&*tx, range, name).await? {
            return Ok(Err(refusal));
        }
        let outcome = match check() {
            Some(found) => {
                clear(&*tx, name).await?;
                trust(&*tx, range, name).await?;
                Ok(found)
            }
            None => {
                fail(&*tx, range, penalty).await?;
                fail(&*tx, name, penalty).await?;
                Err(Refusal::Failed)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}
