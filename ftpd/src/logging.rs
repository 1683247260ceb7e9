//! Logs to stderr (journald keeps them): human or JSON lines, with a filter that SIGHUP can
//! change without a restart; and [`Wire`], the one way a field a peer sent reaches a log line.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::{Config, LogFormat};

/// What is logged unless told otherwise: INFO, but of the PostgreSQL driver only its warnings
/// (it logs every NOTICE the server sends at INFO, such as a migration's "already exists").
const DEFAULT: &str = "info,tokio_postgres=warn";

/// Changes the log filter of the running daemon.
#[derive(Clone)]
pub struct LogLevel(reload::Handle<EnvFilter, Registry>);

impl LogLevel {
    /// Puts the filter `config` asks for in force.
    pub fn set(&self, config: &Config) -> anyhow::Result<()> {
        self.0.reload(filter(config)?)?;
        Ok(())
    }
}

fn filter(config: &Config) -> anyhow::Result<EnvFilter> {
    Ok(match &config.log_level {
        Some(level) => EnvFilter::try_new(level)?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT)),
    })
}

/// Installs the global subscriber.
pub fn init(config: &Config) -> anyhow::Result<LogLevel> {
    let (filter, handle) = reload::Layer::new(filter(config)?);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    QUOTED.store(config.log_format == LogFormat::Human, Ordering::Relaxed);
    match config.log_format {
        LogFormat::Human => registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
    Ok(LogLevel(handle))
}

/// Logging for the admin commands (`ftpd scrub`): human lines on stderr at INFO, or what
/// `RUST_LOG` says, so that a scrub run by a timer leaves its result in the journal.
pub fn init_admin() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Whether [`Wire`] puts quotes around what it writes: the human format does, so that a value
/// with spaces cannot pass for more fields (`user="bob peer=10.0.0.1"`); the JSON format does
/// not, since JSON quotes every string itself. [`init`] sets it.
static QUOTED: AtomicBool = AtomicBool::new(true);

/// A string that came from the wire (a user name, an agent, a digest name, a path, a rejected
/// message's kind or reason, an error message quoting any of them), as a log field. Unescaped,
/// a user name holding a newline wrote a forged `authenticated` line into the log, and one
/// holding an escape sequence drove the terminal of whoever read it. So quotes, backslashes,
/// control characters (newlines, ANSI escapes) and the characters that reorder or hide text
/// (bidi controls, zero-width marks) are written as escapes, in both formats: a JSON collector
/// decodes the same visible escapes, never the raw characters. Log such a field as
/// `user = %Wire(&name)`, never as the bare string.
pub struct Wire<'a>(pub &'a str);

impl fmt::Display for Wire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escape(f, self.0, QUOTED.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for Wire<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn escape(out: &mut impl fmt::Write, s: &str, quoted: bool) -> fmt::Result {
    if quoted {
        out.write_char('"')?;
    }
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c if protocol::text::hides_text(c) => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    if quoted {
        out.write_char('"')?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn wire_strings_are_escaped_and_quoted_for_people() {
        let cases = [
            ("alice", r#""alice""#),
            ("", r#""""#),
            ("two words", r#""two words""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r"back\slash", r#""back\\slash""#),
            ("a\nb\rc\td", r#""a\nb\rc\td""#),
            ("\u{1b}[2J", r#""\u{1b}[2J""#),
            ("nul\0", r#""nul\u{0}""#),
            ("\u{9b}csi", r#""\u{9b}csi""#),
            ("rtl\u{202e}txt", r#""rtl\u{202e}txt""#),
            ("zero\u{200b}width", r#""zero\u{200b}width""#),
            ("h\u{e9}llo w\u{f6}rld", "\"h\u{e9}llo w\u{f6}rld\""),
        ];
        for (raw, logged) in cases {
            let mut human = String::new();
            escape(&mut human, raw, true).unwrap();
            assert_eq!(human, logged, "{raw:?}");
            let mut json = String::new();
            escape(&mut json, raw, false).unwrap();
            assert_eq!(json, logged[1..logged.len() - 1], "{raw:?} for JSON");
        }
    }
}
