//! Homes' quota usage in PostgreSQL (`--database`): s3store's [`UsageLedger`] over pgstate's
//! usage rows, so that every instance serving one bucket reserves against the same count and
//! a home holds its quota across the service, not once per instance.
//!
//! Like the upload registry beside it, it lives here because this is the one place that knows
//! both s3store and pgstate.

use async_trait::async_trait;
use pgstate::within;
use s3store::{HomeCount, UsageLedger};
use storage::HomeLimits;

/// The usage of every home in the shared database.
#[derive(Clone)]
pub struct PgUsage {
    /// This instance's handle on the shared state.
    state: pgstate::State,
}

impl std::fmt::Debug for PgUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUsage")
            .field("instance", &self.state.options().instance)
            .finish()
    }
}

impl PgUsage {
    pub fn new(state: pgstate::State) -> PgUsage {
        PgUsage { state }
    }
}

/// One line for the refusal (the database's own words left for the debug log).
fn fail(e: pgstate::Error) -> s3store::Error {
    tracing::debug!(error = %e.detail(), "the quota ledger failed");
    s3store::Error::registry(format!("quota usage: {e}"))
}

#[async_trait]
impl UsageLedger for PgUsage {
    async fn reserve(
        &self,
        home: &str,
        bytes: u64,
        files: u64,
        limits: HomeLimits,
    ) -> s3store::Result<Option<i64>> {
        within(
            self.state
                .reserve_usage(home, bytes, files, limits.quota, limits.max_files),
        )
        .await
        .map_err(fail)
    }

    async fn settle(&self, id: i64, home: &str, bytes: i64, files: i64) -> s3store::Result<()> {
        within(self.state.settle_usage(id, home, bytes, files))
            .await
            .map_err(fail)
    }

    async fn release(&self, id: i64) -> s3store::Result<()> {
        within(self.state.release_usage(id)).await.map_err(fail)
    }

    async fn add(&self, home: &str, bytes: i64, files: i64) -> s3store::Result<()> {
        within(self.state.add_usage(home, bytes, files))
            .await
            .map_err(fail)?;
        Ok(())
    }

    async fn recount(&self, home: &str, to: HomeCount) -> s3store::Result<()> {
        let to = pgstate::Usage {
            bytes: to.bytes,
            files: to.files,
        };
        within(self.state.set_usage(home, to)).await.map_err(fail)
    }

    async fn usage(&self, home: &str) -> s3store::Result<HomeCount> {
        let now = within(self.state.usage(home)).await.map_err(fail)?;
        Ok(HomeCount {
            bytes: now.bytes,
            files: now.files,
        })
    }
}
