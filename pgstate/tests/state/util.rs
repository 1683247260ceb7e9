//! A private PostgreSQL for the tests: the e2e crate's (one server per test binary, a fresh
//! database per test; a missing PostgreSQL is a note and a pass, but a failure under CI).

use std::time::{Duration, Instant};

use pgstate::{Options, State};

/// A fresh, empty database of its own for one test; `None` (with a note) when PostgreSQL is
/// not installed, which fails instead under CI.
pub async fn fresh_db() -> Option<Db> {
    // createdb and psql are processes: waited for off the runtime's thread.
    let db = tokio::task::spawn_blocking(e2e::postgres::Database::fresh)
        .await
        .expect("the database is made")?;
    Some(Db { url: db.url() })
}

/// One test's database.
pub struct Db {
    pub url: String,
}

impl Db {
    /// An instance's state with the defaults, named `instance`.
    pub async fn state(&self, instance: &str) -> State {
        State::connect(&self.url, instance)
            .await
            .unwrap_or_else(|e| panic!("connect: {}", e.detail()))
    }

    pub async fn state_with(&self, options: Options) -> State {
        State::connect_with(&self.url, options)
            .await
            .unwrap_or_else(|e| panic!("connect: {}", e.detail()))
    }

    /// An instance whose sessions and reservations live `ttl` unless renewed: short, so that
    /// a test sees them expire.
    pub async fn short_lived(&self, instance: &str, ttl: std::time::Duration) -> State {
        self.state_with(Options {
            session_ttl: ttl,
            ..Options::new(instance)
        })
        .await
    }

    /// A plain connection, to look at the tables behind the crate's back.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }
}

/// Waits for `what` to hold, checking every 20 ms, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut what: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if what().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `what` to give something, checking every 20 ms, for at most `limit`.
pub async fn until_some<T, F, Fut>(limit: Duration, mut what: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = what().await {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
