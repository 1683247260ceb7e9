//! The state several ftpd instances share in PostgreSQL: users, the login-failure throttle, the
//! registry of resumable uploads with fencing, service-wide session and rate caps, quota usage.
//!
//! One [`State`] per instance: a pool of connections, the schema migrated at connect, and a
//! heartbeat that keeps the instance's sessions alive. The database's clock is the only clock:
//! every expiry and every rate is computed with `now()` on the server, so instances whose
//! clocks disagree still agree on the state. TLS to the database is not supported yet (NoTls):
//! run it on loopback or a private network.

mod error;
mod migrate;
mod rate;
mod sessions;
mod throttle;
mod uploads;
mod usage;
mod users;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use error::{Detail, Error, Result};
pub use rate::{Direction, RateGrant};
pub use sessions::SessionLease;
pub use throttle::{Penalty, Refusal, ThrottleKey, FORGET_AFTER, TRUST_FOR};
pub use uploads::{Lease, NewUpload, Part, Upload};
pub use usage::Usage;
pub use users::{Limits, UserRow, UsersSnapshot, UsersWatch, USERS_CHANNEL};

/// How long opening a connection may take (TCP, startup, authentication).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may run on the server before it cancels it.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a free connection of the pool.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long one call waits for the database on the caller's own clock, at most: the server's
/// statement timeout cannot end a wait on a server that does not answer at all (stopped, or
/// its host gone without a reset, before TCP notices). A free connection, then a statement.
pub const CALL_TIMEOUT: Duration =
    Duration::from_secs(POOL_WAIT.as_secs() + STATEMENT_TIMEOUT.as_secs() + 1);

/// `call`, or [`Error::Unavailable`] (worth a retry) if it has not ended within
/// [`CALL_TIMEOUT`]. Callers wrap each call of [`State`] in it (or in a shorter wait of their
/// own) where the database's silence must not hold them.
pub async fn within<T>(call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(Error::unavailable("no answer in time")))
}

/// Settings of one instance's [`State`]; `Options::new(instance)` has the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// This instance's name in the sessions table: unique among running instances (for example
    /// host name, process id and start time), so that one's heartbeat keeps only its own
    /// sessions alive.
    pub instance: String,
    /// A session not renewed by a heartbeat for this long is gone: how long a crashed
    /// instance's sessions still count against their users' caps.
    pub session_ttl: Duration,
    /// Connections the pool holds at most.
    pub pool_size: usize,
    /// How often the users version is read when no notification came, and how soon a lost
    /// LISTEN connection is tried again.
    pub users_poll: Duration,
    /// How much of a user's rate the bucket holds at most (its burst), and so the largest
    /// lease: the accuracy of the service-wide rate cap is in these units (docs/CLUSTER.md).
    pub rate_window: Duration,
}

impl Options {
    pub fn new(instance: impl Into<String>) -> Options {
        Options {
            instance: instance.into(),
            session_ttl: Duration::from_secs(30),
            pool_size: 16,
            users_poll: Duration::from_secs(5),
            rate_window: Duration::from_millis(250),
        }
    }
}

/// One instance's handle on the shared state; cheap to clone.
#[derive(Clone)]
pub struct State {
    /// What every clone shares; the heartbeat stops when the last one goes.
    inner: Arc<Inner>,
}

struct Inner {
    /// Connections for every statement but LISTEN.
    pool: Pool,
    /// How to open the dedicated LISTEN connection of a users watch.
    config: tokio_postgres::Config,
    /// As given at connect.
    options: Options,
    /// Renews this instance's sessions every third of their time to live.
    heartbeat: tokio::task::JoinHandle<()>,
    /// The sessions and quota reservations it renews.
    live: sessions::Live,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl State {
    /// Connects with the default [`Options`] for `instance`.
    pub async fn connect(url: &str, instance: &str) -> Result<State> {
        State::connect_with(url, Options::new(instance)).await
    }

    /// Connects to the database at `url` (`postgres://user:pass@host:port/db` or the key=value
    /// form), applies the schema migrations this version knows (safely when several instances
    /// start at once) and starts the session heartbeat.
    pub async fn connect_with(url: &str, options: Options) -> Result<State> {
        if options.instance.is_empty() || options.instance.len() > 200 {
            return Err(Error::Invalid(
                "an instance name is 1 to 200 characters".into(),
            ));
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| Error::Invalid("the database URL is not valid".into()))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("ftpd");
        // A database host that vanished without a reset (a partition, a power cut) is noticed
        // in about a minute, not the system's default two hours: the LISTEN connection of a
        // users watch is idle for long stretches and would otherwise never learn it is dead.
        config.keepalives_idle(Duration::from_secs(30));
        // The server cancels a statement that runs longer, and a lock wait too: no call of
        // this crate waits on the database longer than this, even when a row is held.
        let ms = STATEMENT_TIMEOUT.as_millis();
        config.options(format!("-c statement_timeout={ms} -c lock_timeout={ms}"));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::Invalid(format!("database pool: {e}")))?;
        let mut client = pool.get().await?;
        migrate::apply(&mut client).await?;
        drop(client);
        let held = sessions::Live::default();
        let heartbeat = tokio::spawn(sessions::heartbeat(
            pool.clone(),
            options.instance.clone(),
            options.session_ttl,
            held.clone(),
        ));
        Ok(State {
            inner: Arc::new(Inner {
                pool,
                config,
                options,
                heartbeat,
                live: held,
            }),
        })
    }

    /// The schema version the database is at (after the migrations of this version).
    pub async fn schema_version(&self) -> Result<i32> {
        migrate::current(&**self.client().await?).await
    }

    /// Deletes what no longer counts: old login failures and trusts, expired sessions. Any
    /// instance may call it now and then (every minute); none relies on it for correctness.
    pub async fn sweep(&self) -> Result<()> {
        throttle::sweep(&**self.client().await?).await?;
        sessions::sweep(&**self.client().await?).await
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// A pooled connection that is still open. One the server closed while it sat in the
    /// pool (a restart, an idle timeout) is thrown away rather than handed out to fail:
    /// after a database restart every pooled connection is such a one.
    async fn client(&self) -> Result<deadpool_postgres::Object> {
        open_client(&self.inner.pool).await
    }
}

/// A pooled connection that is still open; see [`State::client`].
async fn open_client(pool: &Pool) -> Result<deadpool_postgres::Object> {
    for _ in 0..=pool.status().max_size {
        let client = pool.get().await?;
        if !client.is_closed() {
            return Ok(client);
        }
        drop(deadpool_postgres::Object::take(client));
    }
    Err(Error::unavailable("every pooled connection was closed"))
}

/// A duration as the float seconds SQL's `make_interval(secs => ...)` takes.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A duration the database computed in seconds (negative: none left).
fn from_secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

/// A count or size that must fit PostgreSQL's bigint.
fn to_i64(n: u64, what: &str) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::Invalid(format!("{what} is too large")))
}
