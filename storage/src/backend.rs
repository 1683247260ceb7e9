//! The storage backend seam: what the daemon needs of a place that keeps files, as one object-safe
//! async trait, so that a backend reached over the network (S3, in the `s3store` crate) and one
//! kept in memory for tests plug in beside the local root without a generic parameter threaded
//! through the daemon.
//!
//! The local root ([`crate::Root`] and [`crate::Home`]) keeps its own synchronous API: this crate
//! has no async runtime. The daemon puts it behind this trait on its own blocking threads
//! (`ftpd::store::LocalBackend`), so that every backend answers the same contract tests, and
//! keeps its zero-copy reads, staged hard-link commits and batch commits beside. A backend is opened on the whole store; [`Backend::home`] gives one
//! session's view, whose paths are relative to its home and whose errors name paths as that
//! session sees them, exactly as [`crate::Home`] does.
//!
//! Every promise of the local root holds on each backend, or the backend says where it cannot in
//! [`Backend::weaker`] (logged at start, printed by `ftpd --check-config`):
//! - nothing is visible under a name until the whole upload is complete and its digest verified
//!   ([`Writing::commit`]);
//! - no existing file is replaced unless the upload asked to overwrite;
//! - an upload with an id is resumable after a dropped connection or a restart, from
//!   [`Writing::offset`], with the running digest of what is stored ([`Writing::prefix`]);
//! - a read starts at any offset and streams; it carries the digests recorded at upload, when
//!   the file is unchanged since, so the daemon need not hash it again;
//! - uploads abandoned for longer than the staged-file age are removed by [`Backend::sweep`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use checksum::{Digest, Hasher};
use futures::stream::BoxStream;

use crate::{FileInfo, HomeLimits, HomeUsage, Result, UploadRequest, VPath};

/// A store of files: the local root, S3, memory. Paths are relative to the view's home (the
/// whole store for the view [`Backend::home`] was not called on).
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Where the files are, for logs and `--check-config`: a directory, `s3://bucket/prefix`.
    fn location(&self) -> String;

    /// The view of one home: paths beneath `home` (relative to this view), errors naming paths
    /// as seen from it. `user` names the session's owner in the daemon's records.
    fn home(&self, home: &VPath, user: &str) -> Result<Arc<dyn Backend>>;

    /// The promises this backend keeps more weakly than the local root, one line each; empty
    /// when it keeps them all.
    fn weaker(&self) -> Vec<String>;

    /// What a path names. A directory on an object store is its marker or any object under it.
    async fn stat(&self, path: &VPath) -> Result<FileInfo>;

    /// Succeeds when `path` is a directory (`cd`).
    async fn check_dir(&self, path: &VPath) -> Result<()>;

    /// The entries of a directory, at most `max` of them (the rest are left off: a listing is
    /// answered in one message, so it is bounded), sorted by name. The daemon's private names
    /// never appear.
    async fn list(&self, dir: &VPath, max: usize) -> Result<Vec<FileInfo>>;

    /// Makes a directory, and its missing parents when `parents`.
    async fn mkdir(&self, path: &VPath, parents: bool) -> Result<()>;

    /// Removes a file (and its recorded digests).
    async fn remove_file(&self, path: &VPath) -> Result<()>;

    /// Removes an empty directory; refuses one that is not empty.
    async fn remove_dir(&self, path: &VPath) -> Result<()>;

    /// Renames a file or directory; refuses to replace an existing target. A backend that
    /// cannot rename atomically says so in [`Backend::weaker`], and refuses (rather than half
    /// doing) what it cannot do safely, with [`crate::Error::Unsupported`].
    async fn rename(&self, from: &VPath, to: &VPath) -> Result<()>;

    /// Opens a file for reading from `offset` (at most its size).
    async fn read(&self, path: &VPath, offset: u64) -> Result<Reading>;

    /// Starts, or with `req.resume` continues, an upload to `path`. Nothing is visible under
    /// `path` until [`Writing::commit`] succeeds.
    async fn begin_upload(&self, path: &VPath, req: &UploadRequest) -> Result<Box<dyn Writing>>;

    /// What this view's files take and may take (`df`, quotas).
    async fn usage(&self) -> Result<HomeUsage>;

    /// Sets the limits of the homes beneath this view (the users file's quotas).
    fn set_home_limits(&self, homes: Vec<(VPath, String, HomeLimits)>);

    /// Removes uploads abandoned for longer than `max_age` (and their records); returns how
    /// many it removed.
    async fn sweep(&self, max_age: Duration) -> Result<usize>;
}

/// A file open for reading.
pub struct Reading {
    /// The file's size when opened.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: Option<i64>,
    /// The digests recorded at upload, when the file is unchanged since.
    pub recorded: Option<ChunkDigests>,
    /// The file's bytes from the offset asked for, in pieces of any size, until its end. An
    /// error ends it (a file that shrank is [`crate::Error::Incomplete`]).
    pub body: BoxStream<'static, Result<Bytes>>,
}

impl fmt::Debug for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reading")
            .field("size", &self.size)
            .field("mtime", &self.mtime)
            .field("recorded", &self.recorded.is_some())
            .finish_non_exhaustive()
    }
}

/// What an upload's chunks were, for a download to send again without hashing: the same
/// fields as the local root's [`crate::Recorded`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkDigests {
    /// Every chunk but the last has this length.
    pub chunk: u32,
    /// Each chunk's running digest (of the file from byte 0 through the chunk's end), in order.
    pub chunks: Vec<Digest>,
    /// The whole file's digest.
    pub digest: Digest,
}

/// An upload in progress. Dropping it without [`Writing::commit`] or [`Writing::abort`] keeps
/// what is stored when the upload has an id (to resume), as a dropped connection does.
#[async_trait]
pub trait Writing: Send {
    /// Bytes already stored: where the client continues.
    fn offset(&self) -> u64;

    /// The running digest of the bytes already stored, for the transfer engine to continue.
    fn prefix(&self) -> Hasher;

    /// Appends one chunk the transfer engine verified, with its running digest (of the file
    /// from byte 0 through the chunk's end). Refuses to grow past the declared size.
    async fn write(&mut self, data: Bytes, running: Digest) -> Result<()>;

    /// Makes the file visible under its name, once all its bytes are stored and `digest` (the
    /// whole file's, which the transfer engine checked) is recorded; replaces an existing file
    /// only when `overwrite`.
    async fn commit(self: Box<Self>, digest: Digest, overwrite: bool) -> Result<()>;

    /// Gives the upload up and removes what it stored, resumable or not.
    async fn abort(self: Box<Self>);
}
