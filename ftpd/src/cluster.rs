//! Several instances as one service (`--database`): this instance's handle on the state they
//! share in PostgreSQL (the `pgstate` crate), its name there, and the tasks that keep it in
//! step: users reloaded when any instance changes them, old rows swept. See docs/CLUSTER.md.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::logging::Wire;
use crate::Shared;

/// How long a start waits for the database before giving up: a service restarted together
/// with its database (a host reboot) comes up once the database does.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// How often one instance deletes what no longer counts (old login failures, expired
/// sessions); any instance may, none relies on it.
const SWEEP_PERIOD: Duration = Duration::from_secs(60);
/// The longest wait between two tries of a reload of users while the database does not answer.
const RELOAD_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// This instance's part in the service.
#[derive(Clone)]
pub struct Cluster {
    /// The shared state.
    pub state: pgstate::State,
    /// The database as the logs may show it (no password).
    pub shown: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("database", &self.shown)
            .field("instance", &self.state.options().instance)
            .finish()
    }
}

impl Cluster {
    /// Connects to the database at `url` (applying the schema migrations: safe when several
    /// instances start at once), waiting up to [`CONNECT_PATIENCE`] for one that does not
    /// answer yet. The sessions an earlier run of this instance left are released.
    pub async fn connect(url: &str) -> anyhow::Result<Cluster> {
        Cluster::connect_as(url, instance_name()).await
    }

    /// [`Cluster::connect`] under a given instance name (tests, the admin commands).
    pub async fn connect_as(url: &str, instance: String) -> anyhow::Result<Cluster> {
        let shown = redact(url);
        let deadline = Instant::now() + CONNECT_PATIENCE;
        let mut delay = Duration::from_millis(200);
        let state = loop {
            match pgstate::State::connect_with(url, pgstate::Options::new(instance.clone())).await {
                Ok(state) => break state,
                Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                    warn!(database = %shown, "the database does not answer yet ({}); trying again", e.detail());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                // The database's own words: the admin who configured it reads them (a wrong
                // password, a missing database), no client does.
                Err(e) => anyhow::bail!("cannot use the database {shown}: {}", e.detail()),
            }
        };
        Ok(Cluster { state, shown })
    }

    /// This instance's name in the shared state.
    pub fn instance(&self) -> &str {
        &self.state.options().instance
    }

    /// Every user as stored now.
    pub async fn users(&self) -> anyhow::Result<pgstate::UsersSnapshot> {
        self.state
            .users()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the users from the database: {e}"))
    }
}

/// Calls `call` again while the database does not answer (a restart, a failover), backing off
/// from 100 ms to 1 s, until `deadline`; returns the first answer that is not such a failure,
/// or the last failure. So a login during a database restart of a few seconds waits and then
/// succeeds, rather than being refused. Only for calls that are safe to repeat.
pub async fn retrying<T, Fut>(
    deadline: Instant,
    mut call: impl FnMut() -> Fut,
) -> pgstate::Result<T>
where
    Fut: std::future::Future<Output = pgstate::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match call().await {
            Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            answer => return answer,
        }
    }
}

/// A name unique among the instances running at once: the host, the process and when it
/// started, so that a restarted instance never takes over the sessions its predecessor left
/// (they expire with their heartbeat).
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let name = format!("{host}:{}:{started}", std::process::id());
    // At most 200 bytes, cut between characters (a host name may be anything).
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// `url` without its password: `postgres://u:secret@h/db` as `postgres://u:***@h/db`, and
/// `password=secret` of the key=value form as `password=***`.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let rest = match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{user}:***@{host}"),
                None => format!("{auth}@{host}"),
            },
            None => rest.to_owned(),
        };
        // `?password=...` is the URL form's other place for it.
        let query = query.map(|q| redact_pairs(q.split('&'), "&"));
        return match query {
            Some(q) => format!("{scheme}://{rest}?{q}"),
            None => format!("{scheme}://{rest}"),
        };
    }
    redact_pairs(url.split_whitespace(), " ")
}

/// `key=value` pairs joined by `sep`, the value of `password` as `***`.
fn redact_pairs<'a>(pairs: impl Iterator<Item = &'a str>, sep: &str) -> String {
    pairs
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(sep)
}

/// Keeps this instance's users the database's: reloads at every change any instance makes
/// (within the watch's poll period when a notification is lost), and on a reload that fails
/// (the database restarting) tries again, keeping the users in force meanwhile.
pub async fn follow_users(cluster: Cluster, shared: Shared) {
    let mut watch = loop {
        match cluster.state.watch().await {
            Ok(w) => break w,
            Err(e) => {
                warn!("cannot watch the users in the database: {e}; trying again");
                tokio::time::sleep(RELOAD_BACKOFF_MAX).await;
            }
        }
    };
    let mut loaded = *watch.borrow_and_update();
    loop {
        if watch.changed().await.is_err() {
            return;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let wanted = *watch.borrow_and_update();
            if wanted == loaded {
                break;
            }
            match reload(&cluster, &shared).await {
                Ok((version, n)) => {
                    info!(users = n, version, "reloaded users from the database");
                    loaded = version.max(wanted);
                    break;
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    warn!(error = %Wire(&e), "user reload failed, keeping the users in force");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RELOAD_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Reads every user and puts them in force; returns the version read and how many.
pub async fn reload(cluster: &Cluster, shared: &Shared) -> anyhow::Result<(i64, usize)> {
    let snapshot = cluster.users().await?;
    let version = snapshot.version;
    let n = shared.apply_rows(&snapshot)?;
    Ok((version, n))
}

/// Deletes old rows now and then, until dropped.
pub async fn sweep_every(cluster: Cluster) {
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = cluster.state.sweep().await {
            warn!("sweeping the shared state failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("postgres://ftpd:s3cret@db.example:5432/ftpd"),
            "postgres://ftpd:***@db.example:5432/ftpd"
        );
        assert_eq!(redact("postgres://ftpd@db/ftpd"), "postgres://ftpd@db/ftpd");
        assert_eq!(
            redact("postgres://ftpd@db/ftpd?sslmode=disable&password=s3cret"),
            "postgres://ftpd@db/ftpd?sslmode=disable&password=***"
        );
        assert_eq!(
            redact("postgres://ftpd:a@b@db/ftpd?password=x"),
            "postgres://ftpd:***@db/ftpd?password=***"
        );
        assert_eq!(
            redact("host=db user=ftpd password=s3cret dbname=ftpd"),
            "host=db user=ftpd password=*** dbname=ftpd"
        );
    }

    #[test]
    fn instance_names_differ_by_process_and_start() {
        let name = instance_name();
        assert!(name.contains(&std::process::id().to_string()), "{name}");
        assert!(name.len() <= 200);
    }
}
