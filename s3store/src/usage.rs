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
    /// Adds `bytes` and `files` to `home` if it then stays within `limits`, in one step that
    /// daemons reserving at once cannot together pass: `false`, and nothing added, when it
    /// would not.
    async fn reserve(&self, home: &str, bytes: u64, files: u64, limits: HomeLimits)
        -> Result<bool>;

    /// Adds `bytes` and `files` to `home` (negative: given back, or a delete), unconditionally.
    async fn add(&self, home: &str, bytes: i64, files: i64) -> Result<()>;

    /// Sets `home` to what a listing of it found.
    async fn recount(&self, home: &str, to: HomeCount) -> Result<()>;

    /// What `home` holds now, as every daemon has counted it.
    async fn usage(&self, home: &str) -> Result<HomeCount>;
}
