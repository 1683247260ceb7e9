//! Everything that can go wrong for the client, each with the exit status scripts see.

use protocol::{ConnectionError, DigestKind, ErrorReply};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}", plain(.0))]
    Usage(String),
    #[error("cannot connect to {addr}: {}", plain(reason))]
    Connect { addr: String, reason: String },
    #[error("{}", plain(.0))]
    Auth(String),
    /// The server did not take the key and wants a password, which the client does not have.
    #[error("{0}: the key was not accepted and there is no password (give --secret-file, FTP_CLI_SECRET, or log in at a terminal)")]
    NeedPassword(String),
    /// What answered is not an ftpd over TLS (or, told to use plaintext, speaks TLS).
    #[error("{0}")]
    NotProtocol(String),
    /// The server's key is not the one pinned for it, or named by --fingerprint; or the server
    /// shows a key (a copied certificate) whose private half it does not hold.
    #[error("{0}")]
    KeyChanged(String),
    /// First contact: the server's key is not pinned yet, and nobody said to trust it.
    #[error(
        "the server at {addr} is not known yet: its key is {fingerprint}. Check that with the \
         server's admin (ftpd --fingerprint), then connect once interactively to pin it, or give \
         --fingerprint {fingerprint} (or --accept-new-host to pin whatever key it presents)"
    )]
    UnknownHost {
        addr: String,
        fingerprint: protocol::tls::Fingerprint,
        known_hosts: std::path::PathBuf,
    },
    /// The server's certificate is not one the CA roots vouch for, for its name.
    #[error("{0}")]
    Untrusted(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{failed} of {total} files failed")]
    SomeFailed { failed: usize, total: usize },
    #[error("connection to the server lost: {}", plain(.0))]
    ConnectionLost(String),
    /// The server's sentence alone: its wire code is for programs (`--json`'s `code`), not
    /// for the person reading the line.
    #[error("server: {}", .0.message)]
    Remote(ErrorReply),
    /// Named as the user named the file: a download's `NAME.ftp-part` is shown as `NAME`, and
    /// the OS's error number is left out.
    #[error("{}: {}", as_named(path), plain(&source.to_string()))]
    Local {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    LocalExists(String),
    #[error(
        "chunk at offset {offset} failed its {} check; nothing of it was written",
        digest.name()
    )]
    BadChunk { offset: u64, digest: DigestKind },
    #[error("verification failed: {0}")]
    Verify(String),
    /// A download failed against the digests the server recorded when the file was uploaded:
    /// the server's copy rotted on its disk. Another try would fetch the same bytes.
    #[error(
        "{name}: the copy stored on the server is damaged (it no longer matches the digest \
         recorded at upload); {}",
        if *told { "the server's admin has been told" } else { "tell the server's admin" }
    )]
    Damaged {
        /// The file, as the user named it on the server.
        name: String,
        /// Whether the server knows (it found the damage itself, or took our report).
        told: bool,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A name the server sent that cannot be used as a local file name (`../x`, `/etc/x`, a
    /// control character): never written. Shown escaped, so it cannot draw on the terminal.
    #[error("{0:?}: not a plain file name, skipped (the server sent it)")]
    UnsafeName(String),
    /// The server sent more than the client takes in one answer (a listing, a tree for
    /// `get -r`): the message names the cap. Refused before it can exhaust memory or disk.
    #[error("{0}")]
    Limit(String),
    /// The command's output could not be written; `main` exits quietly when the reader closed
    /// the pipe (`ftp-cli HOST -c ls | head`), as other Unix tools do.
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
    /// A task of the client's own failed (a panic in a disk thread): a bug, which a new
    /// connection would not cure.
    #[error("internal error: {}", plain(.0))]
    Internal(String),
    /// A command of a script (`-c`, `-b`, stdin) that failed, named (`-b` adds its line:
    /// `cmds.txt:3: get x.jpg`), so that the user knows which one.
    #[error("{at}: {source}")]
    InCommand {
        at: String,
        source: Box<ClientError>,
    },
}

impl ClientError {
    /// Exit status for scripts (documented in `ftp-cli --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Connect { .. } | ClientError::ConnectionLost(_) => 3,
            ClientError::Auth(_)
            | ClientError::NeedPassword(_)
            | ClientError::UnknownHost { .. }
            | ClientError::Untrusted(_) => 4,
            ClientError::NotProtocol(_) => 9,
            ClientError::KeyChanged(_) => 10,
            ClientError::Damaged { .. } => 11,
            ClientError::SomeFailed { .. } => 8,
            ClientError::Cancelled => 130,
            ClientError::Remote(_) => 5,
            ClientError::Local { .. } | ClientError::LocalExists(_) | ClientError::Stdout(_) => 6,
            ClientError::BadChunk { .. }
            | ClientError::Verify(_)
            | ClientError::Protocol(_)
            | ClientError::UnsafeName(_)
            | ClientError::Limit(_)
            | ClientError::Internal(_) => 7,
            ClientError::InCommand { source, .. } => source.exit_code(),
        }
    }

    /// The server's wire code for a refusal (`not_found`), for programs: `--json`'s `code`.
    /// People read the `Display` form, which leaves it out.
    pub fn wire_code(&self) -> Option<protocol::ErrorCode> {
        match self {
            ClientError::Remote(e) => Some(e.code),
            ClientError::InCommand { source, .. } => source.wire_code(),
            _ => None,
        }
    }

    /// `self`, named as the command `at` of a script; errors that end the run quietly or
    /// are several lines stay as they are.
    pub fn in_command(self, at: impl Into<String>) -> Self {
        match self {
            e @ (ClientError::Stdout(_)
            | ClientError::KeyChanged(_)
            | ClientError::InCommand { .. }) => e,
            e => ClientError::InCommand {
                at: at.into(),
                source: Box::new(e),
            },
        }
    }

    /// Whether reconnecting and resuming from the last verified byte can cure this: the link
    /// failed or garbled data, not the request itself.
    pub fn is_retriable(&self) -> bool {
        use protocol::ErrorCode;
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectionLost(_)
            | ClientError::Protocol(_)
            | ClientError::BadChunk { .. } => true,
            ClientError::Remote(e) => matches!(
                e.code,
                ErrorCode::ChecksumMismatch | ErrorCode::Timeout | ErrorCode::Busy
            ),
            ClientError::Usage(_)
            | ClientError::Auth(_)
            | ClientError::NeedPassword(_)
            | ClientError::NotProtocol(_)
            | ClientError::KeyChanged(_)
            | ClientError::UnknownHost { .. }
            | ClientError::Untrusted(_)
            | ClientError::Cancelled
            | ClientError::SomeFailed { .. }
            | ClientError::Local { .. }
            | ClientError::LocalExists(_)
            | ClientError::Stdout(_)
            | ClientError::Verify(_)
            | ClientError::Damaged { .. }
            | ClientError::UnsafeName(_)
            | ClientError::Limit(_)
            | ClientError::Internal(_) => false,
            ClientError::InCommand { source, .. } => source.is_retriable(),
        }
    }

    pub fn local(path: &std::path::Path, source: std::io::Error) -> Self {
        ClientError::Local {
            path: path.display().to_string(),
            source,
        }
    }
}

/// An OS error's text without its number: `No such file or directory`, not `... (os error 2)`.
fn plain(text: &str) -> String {
    let mut out = text.to_owned();
    while let Some(at) = out.find(" (os error ") {
        match out[at..].find(')') {
            Some(end) => out.replace_range(at..at + end + 1, ""),
            None => break,
        }
    }
    out
}

/// A local path as the user named it: a download's `NAME.ftp-part` is the file `NAME` to them.
fn as_named(path: &str) -> &str {
    path.strip_suffix(".ftp-part").unwrap_or(path)
}

/// A connection that failed under a call: lost (a retry may cure it) or corrupt (the bytes no
/// longer form frames: damaged in transit, so a retry may cure that too, but it is reported as
/// a protocol failure).
impl From<ConnectionError> for ClientError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Closed => {
                ClientError::ConnectionLost("server closed the connection".into())
            }
            ConnectionError::RecvTimeout(d) => {
                ClientError::ConnectionLost(format!("no answer for {} s", d.as_secs()))
            }
            ConnectionError::SendTimeout(_) => {
                ClientError::ConnectionLost("server stopped reading".into())
            }
            ConnectionError::Broken(e) => ClientError::ConnectionLost(e.to_string()),
            ConnectionError::Corrupt(e) => ClientError::Protocol(e.to_string()),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in a disk thread used to surface as a (retriable) protocol error, so the client
    /// reconnected and tried the transfer again instead of stopping.
    #[test]
    fn a_failed_task_of_our_own_is_not_retried() {
        let e = ClientError::Internal("file reader failed: task 7 panicked".into());
        assert!(!e.is_retriable());
        assert_eq!(e.exit_code(), 7);
    }

    /// Regression: a file rotted on the server's disk failed every download against its
    /// recorded digests, and each failure (a bad chunk) was retried, in vain.
    #[test]
    fn a_damaged_copy_is_not_retried_and_says_so_in_one_line() {
        let e = ClientError::Damaged {
            name: "x.jpg".into(),
            told: true,
        };
        assert!(!e.is_retriable());
        assert_eq!(e.exit_code(), 11);
        assert_eq!(
            e.to_string(),
            "x.jpg: the copy stored on the server is damaged (it no longer matches the digest \
             recorded at upload); the server's admin has been told"
        );
        let named = e.in_command("get x.jpg");
        assert!(!named.is_retriable());
        assert_eq!(named.exit_code(), 11);
        let untold = ClientError::Damaged {
            name: "x".into(),
            told: false,
        };
        assert!(untold.to_string().ends_with("; tell the server's admin"));
    }

    #[test]
    fn messages_show_no_internals() {
        let missing = std::io::Error::from_raw_os_error(2);
        let e = ClientError::local(std::path::Path::new("x.jpg.ftp-part"), missing);
        assert_eq!(e.to_string(), "x.jpg: No such file or directory");
        let e = ClientError::Connect {
            addr: "h:1".into(),
            reason: "Connection refused (os error 111)".into(),
        };
        assert_eq!(e.to_string(), "cannot connect to h:1: Connection refused");
        assert_eq!(plain("a (os error 1) b (os error 22)"), "a b");
        let remote = ClientError::Remote(protocol::ErrorReply {
            code: protocol::ErrorCode::NotFound,
            message: "x: no such file or directory".into(),
            offset: None,
        });
        assert_eq!(remote.to_string(), "server: x: no such file or directory");
        assert_eq!(remote.wire_code(), Some(protocol::ErrorCode::NotFound));
        let named = remote.in_command("cmds.txt:3: get x");
        assert_eq!(named.exit_code(), 5);
        assert_eq!(
            named.to_string(),
            "cmds.txt:3: get x: server: x: no such file or directory"
        );
        assert_eq!(named.wire_code(), Some(protocol::ErrorCode::NotFound));
        let usage = ClientError::Usage("cannot read commands: Is a directory (os error 21)".into());
        assert_eq!(usage.to_string(), "cannot read commands: Is a directory");
    }
}
