//! Every message of the protocol, as one serde enum tagged by its `type` field.

use serde::{Deserialize, Serialize};

use crate::{Digest, DigestKind};

/// One message header. The JSON object's `"type"` names the variant in snake_case; only
/// [`Message::Chunk`] is followed by a binary body (see the crate docs for the frame layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// First message each way: protocol version and what each side can do.
    Hello(Hello),
    /// Client, first after the hellos when the server has users: who I am, and, to log in with
    /// a password, SCRAM's client-first-message. A TLS client certificate of one of the user's
    /// keys logs in without one.
    Auth(Auth),
    /// Server: the client's key (if any) is not one of the user's; log in with a password
    /// (one more `auth`, with `scram`).
    AuthPassword,
    /// Server: SCRAM's server-first-message (nonce, salt, iteration count).
    AuthContinue(Scram),
    /// Client: SCRAM's client-final-message (channel binding, nonce, proof).
    AuthFinal(Scram),
    /// Server: you are in; after a password login, with SCRAM's server-final-message, the
    /// server's proof that it holds the user's verifier.
    AuthOk(AuthOk),
    /// Client: store a file at `path`; the client streams its chunks after [`Message::PutReady`].
    Put(Put),
    /// Server: go ahead with the upload, starting at `offset` (0 unless resuming).
    PutReady(PutReady),
    /// Client: send me the file at `path`, from `offset`.
    Get(Get),
    /// Server: the file exists; its chunks follow, then [`Message::Eof`].
    GetReady(GetReady),
    /// Either way inside a transfer: one chunk header; `len` bytes of body follow.
    Chunk(ChunkHeader),
    /// The sender has sent every chunk: the whole file's size and digest.
    Eof(Eof),
    /// The sender gives up on a transfer it started; no more chunks follow.
    Abort(ErrorReply),
    /// The receiver of a download asks the server to stop sending (answered by `abort`).
    Cancel,
    /// Server: the upload was verified and is now visible at its path.
    Stored(Eof),
    /// Server, to clients with capability `progress`, while an upload comes in: still
    /// receiving. Sent when the upload's next frame has been arriving for a while (a rate cap
    /// makes a chunk take longer than a client waits in silence, and after its last chunk the
    /// client waits for `stored` while the server still reads what the network holds). It
    /// answers nothing: the client reads past it.
    Progress,
    /// A command failed, or the connection is about to close; see [`ErrorCode`].
    Error(ErrorReply),
    /// Client: list the directory at `path`; answered by `listing` frames, then `list_end`.
    List(List),
    /// Server: some of a directory's entries (a large directory takes many such frames).
    Listing(Listing),
    /// Server: the listing is complete.
    ListEnd(ListEnd),
    /// Client: describe one path, optionally with the MD5 of its content.
    Stat(Stat),
    /// Server: the answer to `stat`.
    StatReply(StatReply),
    /// Client: how much space and how many files do I use, against which limits?
    /// (Capability `df`.)
    Df,
    /// Server: the answer to `df`.
    DfReply(DfReply),
    /// Client: change the session's current directory.
    Cd(PathArg),
    /// Client: what is the current directory?
    Pwd,
    /// Server: the current directory, as the client sees it (answer to `cd` and `pwd`).
    Cwd(PathArg),
    /// Client: create a directory.
    Mkdir(Mkdir),
    /// Client: remove a file.
    Rm(PathArg),
    /// Client: remove an empty directory.
    Rmdir(PathArg),
    /// Client: rename (move) a file or directory; fails with `exists` if `to` exists.
    Rename(Rename),
    /// Client, to servers with capability `damaged`: a download of `path` failed against the
    /// digests the server sent as recorded at upload (`get_ready` said `recorded`), so the
    /// stored copy is damaged. Answered by `ok` (the report was taken) or `error`.
    Damaged(Damaged),
    /// Server: the command succeeded and has nothing else to say.
    Ok,
    /// Client: I am done; the server closes the connection.
    Bye,
}

/// A request naming one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathArg {
    pub path: String,
}

/// A request for a directory's entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct List {
    pub path: String,
    /// Also each file's digest as recorded at upload, where the server holds one of the
    /// session's digest kind for the file as it is now (capability `pipeline`'s servers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub digests: bool,
}

impl List {
    /// The entries of `path`, without digests.
    pub fn of(path: impl Into<String>) -> Self {
        List {
            path: path.into(),
            digests: false,
        }
    }
}

/// What kind of thing a directory entry is. Symbolic links are reported, not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
    /// A kind this version does not know.
    #[serde(other)]
    Unknown,
}

/// One directory entry, or the answer to `stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's name (in a listing) or the path as the client sees it (in `stat_reply`).
    pub name: String,
    pub kind: EntryKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// The file's digest as recorded at upload, when a `list` asked for digests and the
    /// server holds one for the file as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

/// A batch of directory entries, in no particular order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub entries: Vec<Entry>,
}

/// End of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEnd {
    /// How many entries were sent in all.
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub path: String,
    /// Also compute the MD5 of a file's content.
    #[serde(default)]
    pub md5: bool,
}

/// The answer to `df`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DfReply {
    /// The user's home against the user's own quota and file cap; absent when the user has
    /// neither (or the server serves anonymously).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Space>,
    /// The whole root against the server's quota and file cap; absent when it has neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Space>,
}

/// What a home or the root holds, against its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// Bytes of its files, uploads in flight and staged bytes included.
    pub bytes: u64,
    /// Its files and directories, uploads in flight to new files included.
    pub files: u64,
    /// The most bytes it may take, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// The most files and directories it may hold, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u64>,
}

/// The answer to `stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatReply {
    pub entry: Entry,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    pub path: String,
    /// Create missing parents too, and succeed if the directory exists.
    #[serde(default)]
    pub parents: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    pub from: String,
    pub to: String,
}

/// The handshake, sent by the client first and answered in kind by the server. Every field
/// but `min_version` is required both ways: a hello without one does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// From the client, the highest protocol version it speaks; from the server, the version
    /// it chose for the session (see [`crate::handshake`]).
    pub version: u32,
    /// From the client, the lowest protocol version it speaks (absent: `version` alone).
    /// Servers send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<u32>,
    /// Free-form software name and version, for logs ("ftp-cli/0.1.0").
    pub agent: String,
    /// Optional features the sender supports (see [`crate::capability`]).
    pub capabilities: Vec<String>,
    /// Largest chunk body the sender is willing to receive, at least [`crate::MIN_CHUNK`].
    pub max_chunk: u32,
    /// The transfer digest: from the client, the one it asks for; from the server, the one the
    /// session uses (the client's, or an `unsupported` error instead of `hello`).
    pub digest: DigestKind,
}

/// The client's login: a user name, and a SCRAM client-first-message for a password login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    pub user: String,
    /// `p=tls-exporter,,n=USER,r=NONCE` (RFC 5802, 9266); absent for a key login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<String>,
}

/// One SCRAM message, as RFC 5802 spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scram {
    pub scram: String,
}

/// The end of a successful login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthOk {
    /// SCRAM's server-final-message (`v=ServerSignature`) after a password login; absent after
    /// a key login (the TLS handshake proved the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scram: Option<String>,
}

/// Client request to upload a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    /// Where the file goes, relative to the session's root.
    pub path: String,
    /// Exact size of the file; the upload must deliver exactly this many bytes.
    pub size: u64,
    /// Replace an existing file instead of failing with `exists`.
    #[serde(default)]
    pub overwrite: bool,
    /// Continue the staged bytes of an earlier interrupted upload with the same `upload_id`.
    #[serde(default)]
    pub resume: bool,
    /// The client's name for this upload, so that an interrupted upload can be found again and
    /// another client's upload to the same path is never mixed in. 1 to 64 of `[0-9a-zA-Z_-]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Modification time to give the stored file, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// The data follows at once, from offset 0, without waiting for `put_ready` (which is then
    /// not sent): the upload of a pipeline (capability `pipeline`). Never with `resume`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pipelined: bool,
}

/// Server answer to [`Put`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReady {
    /// The client sends bytes from here on; 0 unless a staged upload is being resumed.
    pub offset: u64,
    /// Digest of the `offset` bytes already held, for the client to check against its own file.
    pub digest: Digest,
}

/// Client request to download a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    /// The file to read, relative to the session's root.
    pub path: String,
    /// First byte to send; the client already holds the bytes before it.
    #[serde(default)]
    pub offset: u64,
    /// Digest of the client's first `offset` bytes; the server refuses with `prefix_mismatch`
    /// when its own file's prefix differs, so a resumed download never splices two files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_digest: Option<Digest>,
}

/// Server answer to [`Get`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReady {
    /// Size of the whole file.
    pub size: u64,
    /// The offset the chunks start at (the request's).
    pub offset: u64,
    /// Modification time, seconds since the Unix epoch, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// The chunks' running digests and the `eof` digest are the ones recorded when the file was
    /// uploaded, not hashed from the bytes as they are sent: bytes that fail them were damaged
    /// on the server's disk, not in transit, and sending them again cannot cure that.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recorded: bool,
}

/// A client's report that a download failed against the digests recorded at upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damaged {
    /// The file, as the `get` named it.
    pub path: String,
    /// The offset of the first chunk that failed its digest, when one did (absent when only the
    /// whole-file digest at `eof` failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Header of one data chunk. Its body is the `len` bytes that follow the header on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// Position of the body's first byte in the file.
    pub offset: u64,
    /// Body length in bytes (at most the receiver's `max_chunk`).
    pub len: u32,
    /// The running digest: of the file from byte 0 through this chunk's last byte. The
    /// receiver checks it with one pass over the bytes, and the last chunk's is the whole file's.
    pub digest: Digest,
}

/// End of a data stream, and the server's receipt for an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eof {
    /// Size of the whole file.
    pub size: u64,
    /// Digest of the whole file, from byte 0, including any resumed prefix.
    pub digest: Digest,
}

/// A failure: a stable code for programs and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    /// For failures inside a transfer, the file offset they concern (a bad chunk's offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            offset: None,
        }
    }

    pub fn at(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// Stable, machine-readable error codes. New codes may appear in later versions; a peer maps
/// any code it does not know to [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No such file or directory.
    NotFound,
    /// The target exists and overwrite was not asked for.
    Exists,
    /// Not allowed: outside the root, a reserved name, or no permission.
    Denied,
    /// The request is malformed: a bad path, a field out of range, a message out of place.
    BadRequest,
    /// A chunk or a whole file did not match its digest.
    ChecksumMismatch,
    /// An upload's bytes do not add up to the size its `put` declared: an `eof` naming another
    /// size, an `eof` before every byte, or a chunk past the end.
    SizeMismatch,
    /// A `get` asked to start past the end of the file.
    PastEnd,
    /// The peer stopped the transfer on purpose: a download's `cancel`, or an upload the
    /// client aborted because its user asked it to.
    Cancelled,
    /// A resumed transfer's prefix differs between client and server.
    PrefixMismatch,
    /// The path names a directory where a file was expected.
    IsDirectory,
    /// The path names something else where a directory was expected.
    NotADirectory,
    /// The directory is not empty.
    NotEmpty,
    /// The storage failed to read or write.
    Io,
    /// The storage is full.
    NoSpace,
    /// A frame, file or quota limit was exceeded.
    TooLarge,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// A well-formed message of a type this peer does not handle.
    Unsupported,
    /// Too many connections, or a newer attempt at the same upload took over.
    Busy,
    /// The server needs authentication before this message.
    AuthRequired,
    /// Unknown user or wrong proof (the server never says which).
    AuthFailed,
    /// An `auth` that is not well-formed: a field missing, a SCRAM client-first-message that
    /// is malformed, names another user, or is not bound to the channel.
    BadAuth,
    /// The peer was silent for too long.
    Timeout,
    /// A bug on the server; the connection is closed.
    Internal,
    /// A TLS server read a plaintext frame first: sent in the clear, then the connection closes.
    TlsRequired,
    /// The stored file no longer matches the digest recorded when it was uploaded: its bytes
    /// changed on the server's disk. Trying again cannot help; the server's admin must restore
    /// or re-record it.
    Damaged,
    /// Any code this version does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it is spelled on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::Denied => "denied",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::SizeMismatch => "size_mismatch",
            ErrorCode::PastEnd => "past_end",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::PrefixMismatch => "prefix_mismatch",
            ErrorCode::IsDirectory => "is_directory",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::NotEmpty => "not_empty",
            ErrorCode::Io => "io",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::TlsRequired => "tls_required",
            ErrorCode::Damaged => "damaged",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Busy => "busy",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::BadAuth => "bad_auth",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_is_stable() {
        let cases: Vec<(Message, &str)> = vec![
            (Message::Bye, r#"{"type":"bye"}"#),
            (Message::Cancel, r#"{"type":"cancel"}"#),
            (Message::Progress, r#"{"type":"progress"}"#),
            (
                Message::Get(Get {
                    path: "a b".into(),
                    offset: 0,
                    prefix_digest: None,
                }),
                r#"{"type":"get","path":"a b","offset":0}"#,
            ),
            (
                Message::Error(ErrorReply::new(ErrorCode::NotFound, "no such file")),
                r#"{"type":"error","code":"not_found","message":"no such file"}"#,
            ),
            (
                Message::Chunk(ChunkHeader {
                    offset: 5,
                    len: 3,
                    digest: Digest::md5(b"abc"),
                }),
                r#"{"type":"chunk","offset":5,"len":3,"digest":"900150983cd24fb0d6963f7d28e17f72"}"#,
            ),
            (
                Message::GetReady(GetReady {
                    size: 9,
                    offset: 0,
                    mtime: None,
                    recorded: false,
                }),
                r#"{"type":"get_ready","size":9,"offset":0}"#,
            ),
            (
                Message::GetReady(GetReady {
                    size: 9,
                    offset: 4,
                    mtime: Some(7),
                    recorded: true,
                }),
                r#"{"type":"get_ready","size":9,"offset":4,"mtime":7,"recorded":true}"#,
            ),
            (
                Message::Damaged(Damaged {
                    path: "photos/x.jpg".into(),
                    offset: Some(1048576),
                }),
                r#"{"type":"damaged","path":"photos/x.jpg","offset":1048576}"#,
            ),
            (
                Message::Damaged(Damaged {
                    path: "x".into(),
                    offset: None,
                }),
                r#"{"type":"damaged","path":"x"}"#,
            ),
            (
                Message::Error(ErrorReply::new(ErrorCode::Damaged, "x: damaged")),
                r#"{"type":"error","code":"damaged","message":"x: damaged"}"#,
            ),
        ];
        for (msg, json) in cases {
            assert_eq!(serde_json::to_string(&msg).unwrap(), json);
            assert_eq!(serde_json::from_str::<Message>(json).unwrap(), msg);
        }
    }

    #[test]
    fn every_code_spells_as_serde_does() {
        use ErrorCode::*;
        for code in [
            NotFound,
            Exists,
            Denied,
            BadRequest,
            ChecksumMismatch,
            SizeMismatch,
            PastEnd,
            Cancelled,
            PrefixMismatch,
            IsDirectory,
            NotADirectory,
            NotEmpty,
            Io,
            NoSpace,
            TooLarge,
            VersionMismatch,
            Unsupported,
            Busy,
            AuthRequired,
            AuthFailed,
            BadAuth,
            Timeout,
            Internal,
            TlsRequired,
            Damaged,
            Unknown,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    /// Every field of a hello but `min_version` is required, whichever side sends it; the
    /// server's hello names its digest even when it is MD5.
    #[test]
    fn a_hello_needs_every_field_but_min_version() {
        let full = Hello {
            version: 3,
            min_version: None,
            agent: "x".into(),
            capabilities: vec![],
            max_chunk: 4096,
            digest: DigestKind::Md5,
        };
        let json = serde_json::to_string(&Message::Hello(full.clone())).unwrap();
        assert_eq!(
            json,
            r#"{"type":"hello","version":3,"agent":"x","capabilities":[],"max_chunk":4096,"digest":"md5"}"#
        );
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&json).unwrap();
        for field in ["version", "agent", "capabilities", "max_chunk", "digest"] {
            let mut without = object.clone();
            without.remove(field);
            let text = serde_json::to_string(&without).unwrap();
            assert!(
                serde_json::from_str::<Message>(&text).is_err(),
                "a hello without {field} parsed"
            );
        }
        let ranged = json.replace(r#""version":3"#, r#""version":4,"min_version":3"#);
        assert_eq!(
            serde_json::from_str::<Message>(&ranged).unwrap(),
            Message::Hello(Hello {
                version: 4,
                min_version: Some(3),
                ..full
            })
        );
    }

    /// A key login has no SCRAM message, and says so by leaving it out.
    #[test]
    fn a_key_login_leaves_scram_out() {
        let key = Message::Auth(Auth {
            user: "alice".into(),
            scram: None,
        });
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, r#"{"type":"auth","user":"alice"}"#);
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), key);
        let ok = serde_json::to_string(&Message::AuthOk(AuthOk { scram: None })).unwrap();
        assert_eq!(ok, r#"{"type":"auth_ok"}"#);
    }

    #[test]
    fn unknown_codes_and_fields_are_tolerated() {
        let m: Message = serde_json::from_str(
            r#"{"type":"error","code":"quota_exceeded","message":"x","extra":1}"#,
        )
        .unwrap();
        assert!(matches!(
            m,
            Message::Error(ErrorReply {
                code: ErrorCode::Unknown,
                ..
            })
        ));
        let h: Message = serde_json::from_str(
            r#"{"type":"hello","version":3,"agent":"x","capabilities":[],"max_chunk":4096,"digest":"md5","tls":1}"#,
        )
        .unwrap();
        assert!(matches!(
            h,
            Message::Hello(Hello {
                min_version: None,
                max_chunk: 4096,
                ..
            })
        ));
    }
}
