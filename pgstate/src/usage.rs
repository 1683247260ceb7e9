//! Quota usage per home (bytes, files), updated atomically by every instance.

use tokio_postgres::GenericClient;

use crate::sessions::held;
use crate::{secs, to_i64, Error, Result, State};

/// What a home holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of the files, uploads in flight included when they were reserved.
    pub bytes: u64,
    /// Files and directories.
    pub files: u64,
}

fn usage(row: &tokio_postgres::Row) -> Usage {
    Usage {
        bytes: row.get::<_, i64>(0).max(0) as u64,
        files: row.get::<_, i64>(1).max(0) as u64,
    }
}

fn check(home: &str) -> Result<()> {
    if home.len() > 1024 {
        return Err(Error::Invalid("a home is too long".into()));
    }
    Ok(())
}

/// What home `$1` stores plus what live reservations hold in it: the usage a quota is checked
/// against. (Expired reservations count for nothing; the sweep deletes them.)
const HOME_USAGE: &str = "SELECT COALESCE((SELECT bytes FROM usage WHERE home = $1), 0)
            + COALESCE((SELECT sum(bytes) FROM usage_reservations
                        WHERE home = $1 AND expires > now()), 0)::bigint,
        COALESCE((SELECT files FROM usage WHERE home = $1), 0)
            + COALESCE((SELECT sum(files) FROM usage_reservations
                        WHERE home = $1 AND expires > now()), 0)::bigint";

/// Adds `bytes` and `files` (negative: a delete) to the usage of `home` and returns the new
/// usage; never below zero.
async fn add(client: &impl GenericClient, home: &str, bytes: i64, files: i64) -> Result<Usage> {
    let row = client
        .query_one(
            "INSERT INTO usage AS u (home, bytes, files)
             VALUES ($1, GREATEST(0, $2::bigint), GREATEST(0, $3::bigint))
             ON CONFLICT (home) DO UPDATE SET
               bytes = GREATEST(0, u.bytes + $2::bigint), files = GREATEST(0, u.files + $3::bigint)
             RETURNING bytes, files",
            &[&home, &bytes, &files],
        )
        .await?;
    Ok(usage(&row))
}

impl State {
    /// Adds `bytes` and `files` (negative: a delete) to the usage of `home` in one statement and
    /// returns the new usage. Never below zero: a count that drifted (a file removed behind
    /// the daemon's back) is set right by [`State::set_usage`] after a recount.
    pub async fn add_usage(&self, home: &str, bytes: i64, files: i64) -> Result<Usage> {
        check(home)?;
        add(&**self.client().await?, home, bytes, files).await
    }

    /// Reserves `bytes` and `files` in `home` for an upload in flight, only if the home's
    /// stored usage and every live reservation with these stay within `quota` bytes and
    /// `max_files` files (`None`: no limit): the reservation's id, or `None` and nothing
    /// reserved. Reservers of one home queue on its usage row, so instances reserving at once
    /// cannot together pass the quota. The reservation lives while this instance's heartbeat
    /// renews it: until [`State::settle_usage`] or [`State::release_usage`], or for its time to
    /// live (the sessions') after the instance dies.
    pub async fn reserve_usage(
        &self,
        home: &str,
        bytes: u64,
        files: u64,
        quota: Option<u64>,
        max_files: Option<u64>,
    ) -> Result<Option<i64>> {
        check(home)?;
        let (row_bytes, row_files) = (to_i64(bytes, "a size")?, to_i64(files, "a file count")?);
        let options = &self.inner.options;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO usage (home) VALUES ($1) ON CONFLICT (home) DO NOTHING",
            &[&home],
        )
        .await?;
        // Reservers of the home queue here until this transaction ends.
        tx.execute("SELECT 1 FROM usage WHERE home = $1 FOR UPDATE", &[&home])
            .await?;
        let now = usage(&tx.query_one(HOME_USAGE, &[&home]).await?);
        let fits = |held: u64, more: u64, limit: Option<u64>| {
            limit.is_none_or(|l| held.saturating_add(more) <= l)
        };
        if !(fits(now.bytes, bytes, quota) && fits(now.files, files, max_files)) {
            return Ok(None); // the transaction rolls back as it drops
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO usage_reservations (home, bytes, files, instance, expires)
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::float8))
                 RETURNING id",
                &[
                    &home,
                    &row_bytes,
                    &row_files,
                    &options.instance,
                    &secs(options.session_ttl),
                ],
            )
            .await?
            .get(0);
        tx.commit().await?;
        held(&self.inner.live).reservations.insert(id);
        Ok(Some(id))
    }

    /// The upload of reservation `id` stored a change of `bytes` and `files` to `home`: the
    /// reservation becomes that, in one transaction (the home is never counted without
    /// either). A reservation that already expired is no matter: the change is added all the
    /// same. If the database does not answer, the reservation stays renewed, standing for
    /// the stored file (about its size) until this instance stops and the home is recounted.
    pub async fn settle_usage(&self, id: i64, home: &str, bytes: i64, files: i64) -> Result<()> {
        check(home)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM usage_reservations WHERE id = $1", &[&id])
            .await?;
        add(&*tx, home, bytes, files).await?;
        tx.commit().await?;
        // Renewed until here, so a settle that fails leaves the reservation standing.
        held(&self.inner.live).reservations.remove(&id);
        Ok(())
    }

    /// Gives reservation `id` back (its upload ended without storing). It is no longer
    /// renewed from now on, so if the database does not take this, it expires.
    pub async fn release_usage(&self, id: i64) -> Result<()> {
        held(&self.inner.live).reservations.remove(&id);
        let client = self.client().await?;
        client
            .execute("DELETE FROM usage_reservations WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// The usage of `home`: what it stores and what uploads in flight have reserved (zero
    /// when nothing was counted yet).
    pub async fn usage(&self, home: &str) -> Result<Usage> {
        let client = self.client().await?;
        let row = client.query_one(HOME_USAGE, &[&home]).await?;
        Ok(usage(&row))
    }

    /// Sets what `home` stores to a recount (the listing at start); the reservations of
    /// uploads in flight stay as they are.
    pub async fn set_usage(&self, home: &str, to: Usage) -> Result<()> {
        check(home)?;
        let (bytes, files) = (
            to_i64(to.bytes, "a size")?,
            to_i64(to.files, "a file count")?,
        );
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO usage (home, bytes, files) VALUES ($1, $2, $3)
                 ON CONFLICT (home) DO UPDATE SET bytes = $2, files = $3",
                &[&home, &bytes, &files],
            )
            .await?;
        Ok(())
    }
}
