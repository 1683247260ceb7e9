//! The one error type of this crate: a kind the caller matches on, and a source kept for logs.

use std::fmt;

/// What went wrong, as the caller (and, later, `ftpd/src/reply.rs`) needs to tell it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No such object, upload or bucket.
    NotFound,
    /// A create-only write found the name taken (HTTP 412 on `If-None-Match: *`).
    AlreadyExists,
    /// The service refused the credentials or the request (HTTP 401/403).
    Denied,
    /// No answer: the endpoint did not accept a connection, or did not answer in time.
    Unreachable,
    /// The service asked us to slow down or failed on its side (HTTP 429, 5xx): worth a retry.
    Transient,
    /// The service answered something this client does not understand, or too much of it.
    Protocol,
    /// The caller's configuration or input is not usable (no credentials, a bad endpoint).
    Config,
    /// A newer attempt at the same upload holds its lease now: this writer must stop, and
    /// what it sends no longer counts.
    Fenced,
    /// The service's shared state (PostgreSQL with `--database`: the registry of uploads, the
    /// quota ledger) did not answer or refused.
    Registry,
}

/// An S3 operation that failed. Its `Display` is one line for a person, without the service's
/// codes or the OS error numbers; [`Error::detail`] has those, for logs.
#[derive(Debug)]
pub struct Error {
    /// What the caller matches on.
    kind: ErrorKind,
    /// The lower-level cause (HTTP client error, XML error, the service's error code), kept out
    /// of `Display` and of `source()` so that a `{:#}` chain stays one clear line.
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub(crate) fn with(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            kind,
            source: Some(source.into()),
        }
    }

    /// An error of `kind` for code outside this crate (an [`crate::UploadRegistry`] of its
    /// own): `source` is kept for [`Error::detail`].
    pub fn new(
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::with(kind, source)
    }

    /// The registry's lease of this upload is another writer's now.
    pub fn fenced() -> Self {
        Error {
            kind: ErrorKind::Fenced,
            source: None,
        }
    }

    /// A failure of the shared state, `why` being its own one-line message, naming which part
    /// failed ("upload registry: ...", "quota usage: ...").
    pub fn registry(why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::with(ErrorKind::Registry, why)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The cause with its internals, for a debug log line.
    pub fn detail(&self) -> String {
        match &self.source {
            Some(s) => format!("{self}: {s}"),
            None => self.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ErrorKind::NotFound => "no such object in the bucket",
            ErrorKind::AlreadyExists => "an object of that name already exists",
            ErrorKind::Denied => "the S3 service refused the credentials",
            ErrorKind::Unreachable => "the S3 endpoint did not answer",
            ErrorKind::Transient => "the S3 service is busy or failing; try again",
            ErrorKind::Protocol => "the S3 service sent a reply this client does not understand",
            ErrorKind::Fenced => "the upload was taken over by a newer attempt",
            ErrorKind::Registry => match &self.source {
                Some(s) => return write!(f, "{s}"),
                None => "the service's shared state did not answer",
            },
            ErrorKind::Config => match &self.source {
                // A configuration error's source is our own one-line message for the admin.
                Some(s) => return write!(f, "S3 configuration: {s}"),
                None => "S3 configuration is incomplete",
            },
        })
    }
}

impl std::error::Error for Error {}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        let kind = if e.is_connect() || e.is_timeout() {
            ErrorKind::Unreachable
        } else if e.is_body() || e.is_decode() {
            ErrorKind::Transient
        } else if e.is_request() {
            // Reset mid-request and the like: the network, not the service's answer.
            ErrorKind::Unreachable
        } else {
            ErrorKind::Protocol
        };
        Error::with(kind, e)
    }
}

/// The kind for an HTTP status and the service's error code (`<Code>` in the XML body).
pub(crate) fn kind_of(status: u16, code: Option<&str>) -> ErrorKind {
    match (status, code) {
        (_, Some("NoSuchKey" | "NoSuchUpload" | "NoSuchBucket")) => ErrorKind::NotFound,
        (_, Some("PreconditionFailed")) => ErrorKind::AlreadyExists,
        (
            _,
            Some(
                "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken",
            ),
        ) => ErrorKind::Denied,
        (_, Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout")) => {
            ErrorKind::Transient
        }
        // A concurrent conditional write or complete of the same key: retryable.
        (409, Some("ConditionalRequestConflict")) => ErrorKind::Transient,
        (404, _) => ErrorKind::NotFound,
        (412, _) => ErrorKind::AlreadyExists,
        (401 | 403, _) => ErrorKind::Denied,
        (429 | 500..=599, _) => ErrorKind::Transient,
        _ => ErrorKind::Protocol,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_sort_into_kinds() {
        let cases = [
            (404, None, ErrorKind::NotFound),
            (404, Some("NoSuchUpload"), ErrorKind::NotFound),
            (412, Some("PreconditionFailed"), ErrorKind::AlreadyExists),
            (403, Some("InvalidAccessKeyId"), ErrorKind::Denied),
            (403, Some("SignatureDoesNotMatch"), ErrorKind::Denied),
            (403, None, ErrorKind::Denied),
            (503, Some("SlowDown"), ErrorKind::Transient),
            (429, None, ErrorKind::Transient),
            (200, Some("InternalError"), ErrorKind::Transient),
            (
                409,
                Some("ConditionalRequestConflict"),
                ErrorKind::Transient,
            ),
            (400, Some("MalformedXML"), ErrorKind::Protocol),
        ];
        for (status, code, kind) in cases {
            assert_eq!(kind_of(status, code), kind, "{status} {code:?}");
        }
    }

    #[test]
    fn messages_are_one_line_without_internals() {
        let e = Error::with(ErrorKind::Unreachable, "tcp connect error (os error 111)");
        assert_eq!(e.to_string(), "the S3 endpoint did not answer");
        assert!(std::error::Error::source(&e).is_none());
        assert!(e.detail().contains("os error 111"));
    }
}
