//! The service-wide bandwidth cap: a token bucket per user and direction in one row, from
//! which instances lease a few hundred milliseconds' worth of bytes at a time, each lease one
//! statement. The bound this gives with N instances is worked out in docs/CLUSTER.md.

use std::time::Duration;

use crate::{from_secs, secs, Error, Result, State};

/// Which way the bytes go (the users file's `max_rate_up` and `max_rate_down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// Bytes an instance may move now for a user, and when to ask again if it got less than it
/// asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateGrant {
    /// May be sent at once (the local rate limiter paces them).
    pub bytes: u64,
    /// Zero when the whole ask was granted; otherwise how long the bucket takes to hold the
    /// rest, if nobody else draws on it.
    pub retry_after: Duration,
}

/// What the bucket holds at most: `rate` over the window. A new bucket starts full.
fn burst(rate: u64, window: Duration) -> f64 {
    rate as f64 * secs(window)
}

impl State {
    /// Leases up to `want` bytes (at most one window's worth, [`crate::Options::rate_window`])
    /// of `user`'s `rate` bytes per second in `direction`, shared by every instance. One
    /// statement: refill by the time since the last lease (the database's clock, never run
    /// backwards), cap at the burst, grant what there is up to the ask.
    pub async fn lease_rate(
        &self,
        user: &str,
        direction: Direction,
        rate: u64,
        want: u64,
    ) -> Result<RateGrant> {
        if rate == 0 {
            return Err(Error::Invalid(
                "a rate is more than 0 bytes per second".into(),
            ));
        }
        if user.len() > 200 {
            return Err(Error::Invalid("a user name is too long".into()));
        }
        let burst = burst(rate, self.inner.options.rate_window).max(1.0);
        let want = (want as f64).min(burst);
        let rate_f = rate as f64;
        const AVAIL: &str = "LEAST($3::float8, b.tokens + $5::float8 * GREATEST(0,
                               extract(epoch FROM clock_timestamp() - b.updated)::float8))";
        let sql = format!(
            "INSERT INTO rate_buckets AS b (user_name, direction, tokens, updated, last_grant)
             VALUES ($1, $2, $3::float8 - $4::float8, clock_timestamp(), $4::float8)
             ON CONFLICT (user_name, direction) DO UPDATE SET
               tokens = {AVAIL} - GREATEST(0, LEAST($4::float8, {AVAIL})),
               last_grant = GREATEST(0, LEAST($4::float8, {AVAIL})),
               updated = GREATEST(b.updated, clock_timestamp())
             RETURNING last_grant"
        );
        let client = self.client().await?;
        let row = client
            .query_one(&sql, &[&user, &direction.as_str(), &burst, &want, &rate_f])
            .await?;
        let granted: f64 = row.get(0);
        // Whole bytes: the fraction stays unused, never over the cap.
        let bytes = granted.max(0.0).floor() as u64;
        let retry_after = if granted + 1e-9 >= want {
            Duration::ZERO
        } else {
            from_secs((want - granted) / rate_f)
        };
        Ok(RateGrant { bytes, retry_after })
    }

    /// Gives back bytes of a lease that were not used (a transfer ended early), so that the
    /// user's other sessions may have them; the bucket still holds at most its burst.
    pub async fn return_rate(
        &self,
        user: &str,
        direction: Direction,
        rate: u64,
        bytes: u64,
    ) -> Result<()> {
        let burst = burst(rate, self.inner.options.rate_window).max(1.0);
        let client = self.client().await?;
        client
            .execute(
                "UPDATE rate_buckets SET tokens = LEAST($3::float8, tokens + $4::float8)
                 WHERE user_name = $1 AND direction = $2",
                &[&user, &direction.as_str(), &burst, &(bytes as f64)],
            )
            .await?;
        Ok(())
    }
}
