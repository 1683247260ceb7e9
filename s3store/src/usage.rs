//! Where a home's usage is kept for its quota: by default only in this process (the backend's
//! own counts, which see this daemon's writes alone), or, for several daemons on one bucket
//! (`--database`), a [`UsageLedger`] they all reserve through. The PostgreSQL one is the
//! daemon's (`ftpd/src/store/usage.rs`): this crate does not depend on the database's.

use std::fmt;

use async_trait::async_trait;
use storage::HomeLimits;

use crate::error::Result;

/// What a home holds: bytes of its files (and of the uploads reserved in flight), and files
/// and directory markers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HomeCount {
    pub bytes: u64,
    pub files: u64,
}

/// The usage of every home, shared by the daemons that serve one bucket. A home is named by
/// its key prefix (`ann/`).
#[async_trait]
pub trait UsageLedger: Send + Sync + fmt::Debug {
    /// Reserves `bytes` and `files` in `home` for an upload in flight if the home then stays
    /// within `limits` (what it stores and every live reservation counted), in one step that
    /// daemons reserving at once cannot together pass: the reservation's id, or `None` and
    /// nothing reserved. A reservation lives until [`UsageLedger::settle`] or
    /// [`UsageLedger::release`], or, if its daemon dies, for a time to live of the ledger's.
    async fn reserve(
        &self,
        home: &str,
        bytes: u64,
        files: u64,
        limits: HomeLimits,
    ) -> Result<Option<i64>>;

    /// The upload of reservation `id` stored a change of `bytes` and `files` to `home` (its
    /// size less a replaced file's): the reservation becomes that.
    async fn settle(&self, id: i64, home: &str, bytes: i64, files: i64) -> Result<()>;

    /// Gives reservation `id` back: its upload ended without storing.
    async fn release(&self, id: i64) -> Result<()>;

    /// Adds `bytes` and `files` to `home` (negative: a delete), unconditionally.
    async fn add(&self, home: &str, bytes: i64, files: i64) -> Result<()>;

    /// Sets what `home` stores to what a listing of it found (reservations stay).
    async fn recount(&self, home: &str, to: HomeCount) -> Result<()>;

    /// What `home` holds now, as every daemon has counted it, reservations included.
    async fn usage(&self, home: &str) -> Result<HomeCount>;
}
