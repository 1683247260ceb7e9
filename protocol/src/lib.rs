//! The ftpd wire protocol: message types, the frame codec, TLS agreements and the SCRAM login.
//!
//! Every message is one frame: a 4-byte big-endian length, that many bytes of UTF-8 JSON (the
//! header, a [`Message`] tagged by its `"type"`), and, only when the header is a `chunk`, a binary
//! body of exactly the header's `len` bytes:
//!
//! ```text
//! +------------------+---------------------------------+--------------------------+
//! | header length    | header                          | body (chunk frames only) |
//! | u32, big-endian  | JSON object, `header length`    | `len` bytes, as declared |
//! | 1 ..= 65536      | bytes, {"type": "...", ...}     | 0 ..= 8 MiB              |
//! +------------------+---------------------------------+--------------------------+
//! ```
//!
//! A reader therefore never guesses where a message ends, however TCP splits or merges the
//! bytes. Both lengths are checked against their caps before anything is allocated.
//! `docs/PROTOCOL.md` is the full contract; this crate implements it.

mod budget;
mod codec;
mod connection;
pub mod handshake;
mod message;
pub mod scram;
pub mod text;
pub mod tls;
pub mod transfer;

// Digests live in `checksum`, which has no async runtime; re-exported so that every existing
// `protocol::Digest` path keeps working.
pub use budget::{Budget, Permit};
pub use checksum::{Digest, DigestKind, Hasher, SavedState, StateError};
pub use codec::{CodecError, Frame, FrameCodec, Incoming, Rejected};
pub use connection::{BoxStream, Connection, ConnectionError, Stream};
pub use handshake::{Agreed, HelloError, Versions, MIN_CHUNK, MIN_VERSION, VERSION};
pub use message::{
    Auth, AuthOk, ChunkHeader, Damaged, DfReply, Entry, EntryKind, Eof, ErrorCode, ErrorReply, Get,
    GetReady, Hello, List, ListEnd, Listing, Message, Mkdir, PathArg, Put, PutReady, Rename, Scram,
    Space, Stat, StatReply,
};
pub use transfer::{ChunkError, ChunkReceiver, ChunkSender, Sequence};

/// Largest JSON header accepted, in bytes.
pub const MAX_HEADER: usize = 64 * 1024;
/// Largest chunk body accepted, in bytes.
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// A `listing` frame's header is kept at most this long, half of [`MAX_HEADER`], however many
/// entries the directory has: a large directory takes many frames, never one huge one.
pub const LISTING_BATCH_BYTES: usize = 32 * 1024;
/// Chunk size a sender uses unless told otherwise.
pub const DEFAULT_CHUNK: u32 = 1024 * 1024;

/// Names of optional features announced in [`Hello::capabilities`].
pub mod capability {
    /// `put` with `resume`/`upload_id` and `get` with `offset`/`prefix_digest`.
    pub const RESUME: &str = "resume";
    /// `list`, `stat`, `cd`, `pwd`, `mkdir`, `rm`, `rmdir`, `rename`.
    pub const FILES: &str = "files";
    /// The server has users and takes password logins: SCRAM-SHA-256 with channel binding.
    pub const AUTH_SCRAM_SHA256: &str = "auth-scram-sha-256";
    /// The server has users and takes key logins: a TLS client certificate of a user's key.
    pub const AUTH_KEY: &str = "auth-key";
    /// Commands may be sent before the replies to earlier ones, which come back in order; a
    /// `put` may be `pipelined` (its data follows at once, without `put_ready`).
    pub const PIPELINE: &str = "pipeline";
    /// The server takes `damaged`: a client's report that a download failed against the
    /// digests recorded at upload (which `get_ready` marks `recorded`).
    pub const DAMAGED: &str = "damaged";
    /// `df`: the user's (and the root's) space and files used, against their limits.
    pub const DF: &str = "df";
    /// From a client: it reads past `progress` frames, which the server may then send while
    /// an upload comes in slowly.
    pub const PROGRESS: &str = "progress";
}
