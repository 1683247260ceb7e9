//! The one error type of this crate: one line for a person, the database's own words kept for logs.

use std::fmt;

/// The database's or the driver's own message, kept out of `Display` and of `source()` so that
/// a `{:#}` chain stays one line; [`Error::detail`] gives it, for a debug log.
pub struct Detail(String);

impl fmt::Debug for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What went wrong with the shared state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection, no answer in time, or the server is shutting down: worth a retry.
    #[error("the database did not answer")]
    Unavailable(Detail),
    /// The server refused a statement (a constraint, a permission): not worth a retry.
    #[error("the database refused a request")]
    Database(Detail),
    /// The caller's lease of an upload is no longer the current one: a newer attempt took the
    /// upload over, and this writer must stop.
    #[error("the upload was taken over by a newer attempt")]
    Fenced,
    /// The schema was migrated by a newer ftpd than this one.
    #[error("the database schema is version {found}, newer than this ftpd knows ({known}); upgrade ftpd")]
    SchemaTooNew { found: i32, known: i32 },
    /// The caller's input cannot be stored (a bad URL, a name too long); the message says which.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The line with the cause's internals, for a debug log.
    pub fn detail(&self) -> String {
        match self {
            Error::Unavailable(d) | Error::Database(d) => format!("{self}: {}", d.0),
            _ => self.to_string(),
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }

    pub(crate) fn unavailable(what: impl fmt::Display) -> Error {
        Error::Unavailable(Detail(what.to_string()))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No server reply: the connection is gone, never was, or timed out; or the
            // driver could not put a value into a statement, which is our bug, not the
            // network's.
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            let detail = Detail(e.to_string());
            return if e.is_closed() || io || e.to_string().contains("timeout") {
                Error::Unavailable(detail)
            } else {
                Error::Database(detail)
            };
        };
        let code = db.code().code();
        let detail = Detail(format!("{} (SQLSTATE {code})", db.message()));
        // 08: connection exceptions; 57014: statement timeout; 55P03: lock timeout; 57P0x:
        // shutting down, starting up; 40001/40P01: serialization failure, deadlock (retry).
        if code.starts_with("08")
            || code == "57014"
            || code == "55P03"
            || code.starts_with("57P")
            || code == "40001"
            || code == "40P01"
        {
            Error::Unavailable(detail)
        } else {
            Error::Database(detail)
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Error::unavailable(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a person reads is one line without the server's words; the log line has them.
    #[test]
    fn display_is_one_line_and_detail_has_the_internals() {
        let e = Error::Database(Detail("duplicate key value (SQLSTATE 23505)".into()));
        assert_eq!(e.to_string(), "the database refused a request");
        assert!(e.detail().contains("SQLSTATE 23505"));
        assert!(std::error::Error::source(&e).is_none());
        assert!(!e.is_transient());
        assert!(Error::unavailable("refused").is_transient());
        let newer = Error::SchemaTooNew { found: 3, known: 1 };
        assert!(!newer.to_string().contains('\n'));
    }
}
