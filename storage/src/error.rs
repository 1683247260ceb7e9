//! Storage errors: what went wrong, in the storage's own terms (the daemon picks wire codes).

use std::io;
use std::path::PathBuf;

use crate::state::StateProblem;

/// What went wrong in the storage root. Messages name the path as the home sees it, never a
/// host path nor where the home lies in the root.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{path}: {reason}")]
    Denied { path: String, reason: &'static str },
    #[error("bad path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{0}: is a directory")]
    IsDirectory(String),
    #[error("{0}: not a regular file")]
    NotAFile(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("{path}: a newer attempt at the same upload took over")]
    Busy { path: String },
    /// A read asked to start past the end of the file.
    #[error("{path}: offset {offset} is past the end ({size} bytes)")]
    PastEnd {
        path: String,
        offset: u64,
        size: u64,
    },
    #[error("{path}: got {written} of {size} bytes")]
    Incomplete {
        path: String,
        written: u64,
        size: u64,
    },
    #[error("{path}: {what}")]
    TooLarge { path: String, what: String },
    /// The storage service could not be reached or asked us to come back later: worth a
    /// retry.
    #[error("{path}: the storage service is unavailable ({why})")]
    Unavailable { path: String, why: String },
    /// The backend cannot do this safely (renaming a large directory on an object store).
    #[error("{path}: {what}")]
    Unsupported { path: String, what: String },
    #[error("{path}: no space left on the server")]
    NoSpace { path: String },
    /// The state directory cannot hold the root's private state (the daemon's settings are
    /// wrong, not a client's request).
    #[error("{}", problem.describe(state, root))]
    State {
        problem: StateProblem,
        state: PathBuf,
        root: PathBuf,
    },
    /// An older version's private directory in the root could not be moved to the state
    /// directory.
    #[error(
        "the root {} holds an older version's private directory {}, which cannot be moved \
         into the state directory {}: {source}",
        root.display(), crate::PRIVATE_DIR, state.display()
    )]
    Migrate {
        root: PathBuf,
        state: PathBuf,
        source: io::Error,
    },
    #[error("{path}: {op} failed: {source}")]
    Io {
        path: String,
        op: &'static str,
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Sorts an I/O error on `path` into the kinds a client can act on.
    pub fn io(path: &str, op: &'static str, source: io::Error) -> Self {
        let path = path.to_owned();
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound(path),
            io::ErrorKind::AlreadyExists => Error::Exists(path),
            io::ErrorKind::IsADirectory => Error::IsDirectory(path),
            io::ErrorKind::NotADirectory => Error::NotADirectory(path),
            io::ErrorKind::DirectoryNotEmpty => Error::NotEmpty(path),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::NoSpace { path },
            // cap-std reports an attempt to leave the root (a `..` or a symlink) this way.
            io::ErrorKind::PermissionDenied => Error::Denied {
                path,
                reason: "permission denied",
            },
            _ => Error::Io { path, op, source },
        }
    }
}
