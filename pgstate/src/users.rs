//! Users in the database: the rows `ftpd adduser` and `ftpd passwd` write, a version bumped by
//! every change, and a watch that tells every instance to reload.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, GenericClient, NoTls, Row};

use crate::{to_i64, Error, Result, State, CONNECT_TIMEOUT};

/// The channel a change of users is notified on; the payload is the new version.
pub const USERS_CHANNEL: &str = "ftpd_users";

/// Names as the users file allows them: 1 to 64 printable characters.
const MAX_NAME: usize = 64;
/// A bound on what one row holds, so that a row is never large: keys, and the length of each
/// text field.
const MAX_KEYS: usize = 100;
const MAX_FIELD: usize = 1024;

/// What one user may use, all optional (the users file's limits, as numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Uploads, bytes per second, for all the user's sessions together.
    pub rate_up: Option<u64>,
    /// Downloads, bytes per second.
    pub rate_down: Option<u64>,
    /// Bytes the home may hold.
    pub quota: Option<u64>,
    /// Files and directories the home may hold.
    pub max_files: Option<u64>,
    /// Sessions open at once, across the service.
    pub max_sessions: Option<u32>,
}

/// One user as stored. The verifier and the keys are in the users file's text forms (a SCRAM
/// verifier as `ftpd passwd` writes it, `SHA256:...` fingerprints): the daemon parses them
/// with the code that parses the file, so the two sources cannot disagree on a format.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The login name: 1 to 64 printable characters.
    pub name: String,
    /// `None`: keys only.
    pub verifier: Option<String>,
    /// Fingerprints of the keys that log in as this user.
    pub keys: Vec<String>,
    /// The home, relative to the service root.
    pub home: String,
    /// Downloads only.
    pub read_only: bool,
    /// Rates, quota and session cap.
    pub limits: Limits,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A verifier is no password, but it is what an offline guesser starts from.
        f.debug_struct("UserRow")
            .field("name", &self.name)
            .field("verifier", &self.verifier.as_ref().map(|_| "***"))
            .field("keys", &self.keys)
            .field("home", &self.home)
            .field("read_only", &self.read_only)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Every user at one version, read in one snapshot.
#[derive(Debug, Clone)]
pub struct UsersSnapshot {
    /// The version these rows are at: a watch saying a later one means reload.
    pub version: i64,
    /// By name.
    pub users: Vec<UserRow>,
}

/// Tells when the users changed: the version, as a `watch` receiver (`changed().await`, then
/// reload with [`State::users`]). Kept current by a task that LISTENs on [`USERS_CHANNEL`] and
/// also reads the version every [`crate::Options::users_poll`], so a lost notification or a
/// dropped connection delays a reload by at most that long. The task ends with the receiver.
pub type UsersWatch = watch::Receiver<i64>;

fn check(user: &UserRow) -> Result<()> {
    let name = &user.name;
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "user {name:?}: names are 1 to 64 printable characters"
        )));
    }
    let long = user.home.len() > MAX_FIELD
        || user.verifier.as_ref().is_some_and(|v| v.len() > MAX_FIELD)
        || user.keys.len() > MAX_KEYS
        || user.keys.iter().any(|k| k.len() > MAX_FIELD);
    if long {
        return Err(Error::Invalid(format!("user {name}: an entry is too long")));
    }
    if user.verifier.is_none() && user.keys.is_empty() {
        return Err(Error::Invalid(format!(
            "user {name}: no way to log in: set a password or give keys"
        )));
    }
    Ok(())
}

fn opt(n: Option<u64>, what: &str) -> Result<Option<i64>> {
    n.map(|n| to_i64(n, what)).transpose()
}

fn row_to_user(row: &Row) -> UserRow {
    // The table's CHECKs keep these non-negative, so the casts only widen.
    let u = |i: usize| row.get::<_, Option<i64>>(i).map(|n| n.max(0) as u64);
    UserRow {
        name: row.get(0),
        verifier: row.get(1),
        keys: row.get(2),
        home: row.get(3),
        read_only: row.get(4),
        limits: Limits {
            rate_up: u(5),
            rate_down: u(6),
            quota: u(7),
            max_files: u(8),
            max_sessions: row.get::<_, Option<i32>>(9).map(|n| n.max(0) as u32),
        },
    }
}

const COLUMNS: &str =
    "name, verifier, keys, home, read_only, rate_up, rate_down, quota, max_files, max_sessions";

/// Bumps the version and notifies, in the transaction of the change: the notification goes
/// out at commit, and only if it commits.
async fn bump(tx: &impl GenericClient) -> Result<i64> {
    let row = tx
        .query_one(
            "UPDATE users_version SET version = version + 1 RETURNING version",
            &[],
        )
        .await?;
    let version: i64 = row.get(0);
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&USERS_CHANNEL, &version.to_string()],
    )
    .await?;
    Ok(version)
}

impl State {
    /// Adds a user or replaces one of the same name; returns the new version.
    pub async fn put_user(&self, user: &UserRow) -> Result<i64> {
        check(user)?;
        let l = &user.limits;
        let max_sessions = l
            .max_sessions
            .map(|n| {
                i32::try_from(n).map_err(|_| Error::Invalid("max_sessions is too large".into()))
            })
            .transpose()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            &format!(
                "INSERT INTO users ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (name) DO UPDATE SET verifier = excluded.verifier,
                   keys = excluded.keys, home = excluded.home, read_only = excluded.read_only,
                   rate_up = excluded.rate_up, rate_down = excluded.rate_down,
                   quota = excluded.quota, max_files = excluded.max_files,
                   max_sessions = excluded.max_sessions"
            ),
            &[
                &user.name,
                &user.verifier,
                &user.keys,
                &user.home,
                &user.read_only,
                &opt(l.rate_up, "rate_up")?,
                &opt(l.rate_down, "rate_down")?,
                &opt(l.quota, "quota")?,
                &opt(l.max_files, "max_files")?,
                &max_sessions,
            ],
        )
        .await?;
        let version = bump(&*tx).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Sets (or, with `None`, removes) a user's password verifier, as `ftpd passwd` does;
    /// `None` back when there is no such user. Removing the verifier of a user without keys
    /// is refused: they could not log in at all.
    pub async fn set_verifier(&self, name: &str, verifier: Option<&str>) -> Result<Option<i64>> {
        if verifier.is_some_and(|v| v.len() > MAX_FIELD) {
            return Err(Error::Invalid(format!(
                "user {name}: the verifier is too long"
            )));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let changed = tx
            .query_opt(
                "UPDATE users SET verifier = $2 WHERE name = $1 RETURNING cardinality(keys)",
                &[&name, &verifier],
            )
            .await?;
        let Some(row) = changed else {
            return Ok(None);
        };
        if verifier.is_none() && row.get::<_, Option<i32>>(0).unwrap_or(0) == 0 {
            return Err(Error::Invalid(format!(
                "user {name}: no way to log in: set a password or give keys"
            )));
        }
        let version = bump(&*tx).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    /// One user, if there is one of that name.
    pub async fn user(&self, name: &str) -> Result<Option<UserRow>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM users WHERE name = $1"),
                &[&name],
            )
            .await?;
        Ok(row.as_ref().map(row_to_user))
    }

    /// Every user and the version they are at, from one snapshot (so the version never
    /// claims a change the rows do not have yet).
    pub async fn users(&self) -> Result<UsersSnapshot> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let version: i64 = tx
            .query_one("SELECT version FROM users_version", &[])
            .await?
            .get(0);
        let rows = tx
            .query(&format!("SELECT {COLUMNS} FROM users ORDER BY name"), &[])
            .await?;
        tx.commit().await?;
        Ok(UsersSnapshot {
            version,
            users: rows.iter().map(row_to_user).collect(),
        })
    }

    /// Removes a user; `None` back when there was none of that name. Their sessions go on
    /// until the daemon, told by the watch, ends them.
    pub async fn remove_user(&self, name: &str) -> Result<Option<i64>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if tx
            .execute("DELETE FROM users WHERE name = $1", &[&name])
            .await?
            == 0
        {
            return Ok(None);
        }
        let version = bump(&*tx).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    /// The users version now.
    pub async fn users_version(&self) -> Result<i64> {
        version(&self.inner.pool).await
    }

    /// A receiver of the users version, starting at the version now; see [`UsersWatch`].
    pub async fn watch(&self) -> Result<UsersWatch> {
        let (tx, rx) = watch::channel(self.users_version().await?);
        let watcher = Watcher {
            pool: self.inner.pool.clone(),
            config: self.inner.config.clone(),
            poll: self
                .inner
                .options
                .users_poll
                .max(Duration::from_millis(100)),
        };
        tokio::spawn(watcher.run(tx));
        Ok(rx)
    }
}

async fn version(pool: &Pool) -> Result<i64> {
    let client = crate::open_client(pool).await?;
    Ok(client
        .query_one("SELECT version FROM users_version", &[])
        .await?
        .get(0))
}

/// What the task of a watch needs: not the whole [`State`], whose last clone going stops the
/// instance's heartbeat.
struct Watcher {
    /// For reading the version.
    pool: Pool,
    /// For the LISTEN connection.
    config: tokio_postgres::Config,
    /// How often the version is read anyway.
    poll: Duration,
}

impl Watcher {
    /// Keeps `tx` at the users version until every receiver is gone: LISTEN on a connection
    /// of its own (a pooled one would be recycled under it), read the version at each
    /// notification and at each poll; on a lost connection, go on polling and try again at
    /// each poll.
    async fn run(self, tx: watch::Sender<i64>) {
        let mut ticks = tokio::time::interval(self.poll);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut listening = match self.listen().await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e.detail(), "cannot listen for users changes; polling");
                    None
                }
            };
            // Read once at once: a change made while no connection listened is seen now.
            self.refresh(&tx).await;
            loop {
                let lost = tokio::select! {
                    _ = tx.closed() => return,
                    _ = ticks.tick() => false,
                    n = async {
                        match &mut listening {
                            Some((_, rx)) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => n.is_none(),
                };
                self.refresh(&tx).await;
                // Without a LISTEN connection, try one again at each tick.
                if lost || listening.is_none() {
                    break;
                }
            }
        }
    }

    /// Reads the users version and tells the receivers when it went up.
    async fn refresh(&self, tx: &watch::Sender<i64>) {
        match version(&self.pool).await {
            Ok(v) => {
                tx.send_if_modified(|old| {
                    let newer = v > *old;
                    if newer {
                        *old = v;
                    }
                    newer
                });
            }
            Err(e) => tracing::warn!(error = %e.detail(), "cannot read the users version"),
        }
    }

    /// A connection that LISTENs on [`USERS_CHANNEL`], and the channel its notifications arrive on
    /// (closed when the connection ends).
    async fn listen(&self) -> Result<(tokio_postgres::Client, mpsc::Receiver<()>)> {
        let (client, mut connection) =
            tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls))
                .await
                .map_err(|_| Error::unavailable("connect timed out"))??;
        let (ntx, nrx) = mpsc::channel(1);
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(_) = message {
                    // One pending is enough: the reader reads the version, not the payloads.
                    let _ = ntx.try_send(());
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {USERS_CHANNEL}"))
            .await?;
        Ok((client, nrx))
    }
}
