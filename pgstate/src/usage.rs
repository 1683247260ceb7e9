//! Quota usage per home (bytes, files), updated atomically by every instance.

use crate::{to_i64, Error, Result, State};

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

impl State {
    /// Adds `bytes` and `files` (negative: a delete) to the usage of `home` in one statement and
    /// returns the new usage. Never below zero: a count that drifted (a file removed behind
    /// the daemon's back) is set right by [`State::set_usage`] after a recount.
    pub async fn add_usage(&self, home: &str, bytes: i64, files: i64) -> Result<Usage> {
        check(home)?;
        let client = self.client().await?;
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

    /// Adds `bytes` and `files` only if the home then stays within `quota` bytes and
    /// `max_files` files (`None`: no limit); `None` back, and nothing added, otherwise. One
    /// statement, so instances reserving at once cannot together pass the quota.
    pub async fn try_add_usage(
        &self,
        home: &str,
        bytes: u64,
        files: u64,
        quota: Option<u64>,
        max_files: Option<u64>,
    ) -> Result<Option<Usage>> {
        check(home)?;
        let (bytes, files) = (to_i64(bytes, "a size")?, to_i64(files, "a file count")?);
        let quota = quota.map(|q| to_i64(q, "a quota")).transpose()?;
        let max_files = max_files.map(|q| to_i64(q, "a file limit")).transpose()?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO usage (home) VALUES ($1) ON CONFLICT (home) DO NOTHING",
                &[&home],
            )
            .await?;
        let row = client
            .query_opt(
                "UPDATE usage SET bytes = bytes + $2, files = files + $3
                 WHERE home = $1 AND ($4::bigint IS NULL OR bytes + $2 <= $4)
                   AND ($5::bigint IS NULL OR files + $3 <= $5)
                 RETURNING bytes, files",
                &[&home, &bytes, &files, &quota, &max_files],
            )
            .await?;
        Ok(row.as_ref().map(usage))
    }

    /// The usage of `home` (zero when nothing was counted yet).
    pub async fn usage(&self, home: &str) -> Result<Usage> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT bytes, files FROM usage WHERE home = $1", &[&home])
            .await?;
        Ok(row.as_ref().map(usage).unwrap_or_default())
    }

    /// Sets the usage of `home` to a recount (the listing at start).
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
