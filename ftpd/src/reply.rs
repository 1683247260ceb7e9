//! The one place where what went wrong becomes a wire code: typed command errors in, `error`
//! frames out; and storage's view of a file in the wire's words.

use protocol::{ChunkError, Entry, EntryKind, ErrorCode, ErrorReply, HelloError};
use storage::{FileInfo, FileKind, VPath};

/// Why a command was refused. Every path here is the one the client sees (its home is `/`),
/// because the storage handle a session holds is its home: nothing here is rewritten.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The storage refused or failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// A chunk or the end of an upload failed the transfer engine's checks.
    #[error("{path}: {error}")]
    Transfer { path: VPath, error: ChunkError },
    /// The user may only read.
    #[error("user {0} has read-only access")]
    ReadOnly(String),
    /// A resumed download's prefix, as the client holds it, is not the file's.
    #[error("{path}: the first {offset} bytes differ from the client's")]
    PrefixMismatch { path: VPath, offset: u64 },
    /// The file got shorter while it was being sent.
    #[error("{path}: file shrank while it was being sent")]
    Shrank { path: VPath, offset: u64 },
    /// The client stopped its own download.
    #[error("cancelled by the client")]
    Cancelled { offset: u64 },
    /// The client gave up on its upload, for the reason it gave.
    #[error("upload aborted by the client: {message}")]
    AbortedByClient { code: ErrorCode, message: String },
    /// A well-formed message this server does not handle here.
    #[error("cannot handle {kind:?} message: {reason}")]
    Unsupported { kind: String, reason: String },
    /// A message out of place.
    #[error("{0}")]
    OutOfPlace(&'static str),
    /// A shared resource (memory for transfers, hashing slots) stayed taken by others for the
    /// whole time a command may wait for it.
    #[error("the server is busy ({0}); try again later")]
    Busy(&'static str),
    /// The bytes read no longer have the digest recorded when the file was stored.
    #[error(
        "{path}: the stored copy is damaged (it no longer matches the digest recorded at upload)"
    )]
    Damaged { path: VPath },
    /// A damage report for a file with no recorded digest to have failed against.
    #[error("{path}: no digest is recorded for it as it is now")]
    Unrecorded { path: VPath },
    /// The client's hello cannot be taken (no common version, a chunk limit below the
    /// floor); the connection closes.
    #[error("hello refused: {0}")]
    Hello(#[from] HelloError),
    /// An `auth` that does not parse (a field missing, a nonce or mac that is not 64 lowercase
    /// hex digits); the connection closes.
    #[error("malformed auth: {reason}")]
    BadAuth { reason: String },
}

impl CmdError {
    /// The wire code: every refusal a client sees is sorted here.
    pub fn code(&self) -> ErrorCode {
        match self {
            CmdError::Storage(e) => storage_code(e),
            CmdError::Transfer { error, .. } => chunk_code(error),
            CmdError::ReadOnly(_) => ErrorCode::Denied,
            CmdError::PrefixMismatch { .. } => ErrorCode::PrefixMismatch,
            CmdError::Shrank { .. } => ErrorCode::Io,
            CmdError::Cancelled { .. } => ErrorCode::Cancelled,
            CmdError::AbortedByClient { code, .. } => *code,
            CmdError::Unsupported { .. } => ErrorCode::Unsupported,
            CmdError::OutOfPlace(_) => ErrorCode::BadRequest,
            CmdError::Busy(_) => ErrorCode::Busy,
            CmdError::Damaged { .. } => ErrorCode::Damaged,
            CmdError::Unrecorded { .. } => ErrorCode::BadRequest,
            CmdError::Hello(e) => hello_code(e),
            CmdError::BadAuth { .. } => ErrorCode::BadAuth,
        }
    }

    /// The file offset the refusal concerns, when there is one (a bad chunk's).
    pub fn offset(&self) -> Option<u64> {
        match self {
            CmdError::Transfer { error, .. } => error.offset(),
            CmdError::Shrank { offset, .. } | CmdError::Cancelled { offset } => Some(*offset),
            _ => None,
        }
    }

    /// The frame's body: code, sentence, offset.
    pub fn reply(&self) -> ErrorReply {
        let reply = ErrorReply::new(self.code(), self.to_string());
        match self.offset() {
            Some(at) => reply.at(at),
            None => reply,
        }
    }
}

fn storage_code(e: &storage::Error) -> ErrorCode {
    use storage::Error as E;
    match e {
        E::NotFound(_) => ErrorCode::NotFound,
        E::Exists(_) => ErrorCode::Exists,
        E::Denied { .. } => ErrorCode::Denied,
        E::BadPath { .. } => ErrorCode::BadRequest,
        E::IsDirectory(_) => ErrorCode::IsDirectory,
        E::NotAFile(_) => ErrorCode::BadRequest,
        E::NotADirectory(_) => ErrorCode::NotADirectory,
        E::NotEmpty(_) => ErrorCode::NotEmpty,
        E::Busy { .. } => ErrorCode::Busy,
        E::Incomplete { .. } => ErrorCode::BadRequest,
        E::PastEnd { .. } => ErrorCode::PastEnd,
        E::NoSpace { .. } => ErrorCode::NoSpace,
        E::TooLarge { .. } => ErrorCode::TooLarge,
        E::Io { .. } => ErrorCode::Io,
        E::Unavailable { .. } => ErrorCode::Busy,
        E::Unsupported { .. } => ErrorCode::Unsupported,
        // Only opening the root at startup fails these way; no session ever meets them.
        E::State { .. } | E::Migrate { .. } => ErrorCode::Io,
    }
}

/// A client reacts differently to each code here: `checksum_mismatch` (damage in transit: send
/// again), `size_mismatch` (its bytes do not add up to the size it declared: a bug or a file
/// that changed while it was read, which sending again does not cure), `too_large` (a chunk
/// over the agreed limit) and `bad_request` (a chunk out of order: damage, or a bug).
fn chunk_code(e: &ChunkError) -> ErrorCode {
    match e {
        ChunkError::BadDigest { .. } | ChunkError::WholeDigest { .. } => {
            ErrorCode::ChecksumMismatch
        }
        ChunkError::PastEnd { .. } | ChunkError::EofSize { .. } | ChunkError::Short { .. } => {
            ErrorCode::SizeMismatch
        }
        ChunkError::TooLong { .. } => ErrorCode::TooLarge,
        ChunkError::OutOfOrder { .. } | ChunkError::LengthMismatch { .. } => ErrorCode::BadRequest,
    }
}

fn hello_code(e: &HelloError) -> ErrorCode {
    match e {
        HelloError::NoCommonVersion { .. } | HelloError::NotOffered { .. } => {
            ErrorCode::VersionMismatch
        }
        HelloError::EmptyRange { .. }
        | HelloError::ChunkTooSmall(_)
        | HelloError::DigestRefused { .. } => ErrorCode::BadRequest,
    }
}

/// A file as the wire describes it.
pub fn entry(info: FileInfo) -> Entry {
    Entry {
        name: info.name,
        kind: match info.kind {
            FileKind::File => EntryKind::File,
            FileKind::Dir => EntryKind::Dir,
            FileKind::Symlink => EntryKind::Symlink,
            FileKind::Other => EntryKind::Other,
        },
        size: info.size,
        mtime: info.mtime,
        digest: None,
    }
}

#[cfg(test)]
mod tests {
    /// The storage refuses in names exactly the characters the wire crate calls bidirectional
    /// controls (it keeps its own copy of the set: it depends on no wire crate).
    #[test]
    fn storage_and_protocol_agree_on_bidirectional_controls() {
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(
                storage::is_bidi_control(c),
                protocol::text::is_bidi_control(c),
                "{c:?}"
            );
        }
    }
}
