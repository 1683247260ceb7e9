//! Everything the client prints: command output on stdout, diagnostics on stderr, in one type.

use std::io::IsTerminal;

use indicatif::HumanBytes;
use protocol::{DigestKind, Entry, EntryKind, StatReply};
use serde::Serialize;

use crate::client::Summary;
use crate::error::{ClientError, Result};

/// Text from the server (a name, a message, its directory), or anything else nobody vouches
/// for, made safe to print on a terminal: every character that would act on the terminal
/// instead of being shown is written escaped, the way Rust writes it (`\u{1b}`, `\t`, `\u{202e}`).
/// That is every control character (C0 with ESC, so no CSI or OSC sequence; DEL; C1, whose
/// U+009B is a CSI of its own), the bidirectional controls ([`protocol::text::is_bidi_control`]), and the line
/// and paragraph separators. Backslashes are left alone, so a plain name reads as it is.
pub struct Shown<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        write!(Escaping(f), "{}", self.0)
    }
}

/// Writes what it is given with [`protocol::text::hides_text`] characters escaped.
struct Escaping<'a, 'f>(&'a mut std::fmt::Formatter<'f>);

impl std::fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(protocol::text::hides_text) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().expect("found above");
            write!(self.0, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// JSON as serde_json writes it, but with DEL and the C1 controls written `\u00XX` too: JSON
/// needs only C0 escaped, and serde_json escapes no more, yet U+009B is a CSI to a terminal
/// showing the output. The same JSON value either way; bidirectional controls are left as they
/// are (a JSON reader wants the exact name, and they move no cursor).
struct TerminalSafeJson;

impl serde_json::ser::Formatter for TerminalSafeJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        // C0 controls never reach here: serde_json has escaped them already.
        let mut rest = fragment;
        while let Some(at) = rest.find(char::is_control) {
            writer.write_all(&rest.as_bytes()[..at])?;
            let c = rest[at..].chars().next().expect("found above");
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

/// One line on stderr, after the program's name, with anything in it that would act on the
/// terminal escaped ([`Shown`]): diagnostics carry the server's messages and names. A failed
/// write is ignored: with stderr gone there is nowhere left to say so.
pub fn diagnostic(text: impl std::fmt::Display) {
    diagnostic_to(&std::io::stderr(), text);
}

/// A diagnostic of several lines (the warning about a changed server key), each escaped.
pub fn diagnostic_lines(text: &str) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    for line in text.lines() {
        let _ = writeln!(err, "{}", Shown(line));
    }
}

fn diagnostic_to(stderr: &std::io::Stderr, text: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = writeln!(stderr.lock(), "ftp-cli: {}", Shown(text));
}

/// Everything the client prints goes through here: the command's output to stdout,
/// diagnostics to stderr, in the form the user asked for.
#[derive(Debug)]
pub struct Output {
    /// Draw progress bars (only when stderr is a terminal).
    bars: bool,
    /// Print listings, stat and transfer summaries as JSON lines.
    json: bool,
    /// The command's output, read by a person or a script.
    stdout: std::io::Stdout,
    /// Diagnostics: failures, retries, skipped files.
    stderr: std::io::Stderr,
}

impl Output {
    /// Output as the user asked for it; progress bars are drawn only if stderr is a terminal.
    pub fn new(bars: bool, json: bool) -> Self {
        let stderr = std::io::stderr();
        Output {
            bars: bars && stderr.is_terminal(),
            json,
            stdout: std::io::stdout(),
            stderr,
        }
    }

    /// Whether transfers draw progress bars.
    pub fn bars(&self) -> bool {
        self.bars
    }

    /// Whether output is JSON lines, for scripts.
    pub fn json(&self) -> bool {
        self.json
    }

    /// One line on stdout. A failed write is an error, so that the command stops: the reader
    /// may have gone (`ftp-cli HOST -c ls | head`), which `main` turns into a quiet exit.
    pub fn line(&self, text: impl std::fmt::Display) -> Result<()> {
        use std::io::Write as _;
        writeln!(self.stdout.lock(), "{text}").map_err(ClientError::Stdout)
    }

    /// One JSON line on stdout: exact JSON, with nothing raw in it that acts on a terminal
    /// ([`TerminalSafeJson`]).
    pub fn json_line(&self, value: &impl Serialize) -> Result<()> {
        let mut out = Vec::new();
        let mut json = serde_json::Serializer::with_formatter(&mut out, TerminalSafeJson);
        value.serialize(&mut json).expect("plain data serializes");
        self.line(String::from_utf8(out).expect("serde_json writes UTF-8"))
    }

    /// One line on stderr: see [`diagnostic`].
    pub fn diagnostic(&self, text: impl std::fmt::Display) {
        diagnostic_to(&self.stderr, text);
    }

    /// Bytes of a file (`cat`) on stdout: as they are into a pipe or a file; at a terminal,
    /// with what would act on it escaped ([`Shown`]), lines and tabs kept.
    pub fn bytes(&self, bytes: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let mut out = self.stdout.lock();
        if !self.stdout.is_terminal() {
            return out.write_all(bytes).map_err(ClientError::Stdout);
        }
        let text = String::from_utf8_lossy(bytes);
        for piece in text.split_inclusive(['\n', '\t']) {
            let (body, end) = match piece.strip_suffix(['\n', '\t']) {
                Some(body) => (body, &piece[body.len()..]),
                None => (piece, ""),
            };
            // A CRLF file's lines end as lines, not with a `\r` shown.
            let body = if end == "\n" {
                body.strip_suffix('\r').unwrap_or(body)
            } else {
                body
            };
            write!(out, "{}{end}", Shown(body)).map_err(ClientError::Stdout)?;
        }
        out.flush().map_err(ClientError::Stdout)
    }

    /// A header line of a listing of several directories (`ls -R`, `ls a b`): `DIR:` after a
    /// blank line, as ls writes it.
    pub fn listing_header(&self, dir: &str, first: bool) -> Result<()> {
        if self.json {
            return Ok(());
        }
        if !first {
            self.line("")?;
        }
        self.line(format_args!("{}:", Shown(dir)))
    }

    /// A remote directory's entries, one a line (`ls`, `ls -l`; `human`: sizes as `2.4 MiB`).
    pub fn listing(&self, entries: &[Entry], long: bool, human: bool) -> Result<()> {
        if self.json {
            for e in entries {
                self.json_line(e)?;
            }
            return Ok(());
        }
        let size = |e: &Entry| {
            if human {
                human_size(e.size)
            } else {
                e.size.to_string()
            }
        };
        let width = entries.iter().map(|e| size(e).len()).max().unwrap_or(1);
        for e in entries {
            let slash = if e.kind == EntryKind::Dir { "/" } else { "" };
            if long {
                self.line(format_args!(
                    "{} {:>width$}  {}  {}{slash}",
                    kind_char(e.kind),
                    size(e),
                    time(e.mtime),
                    Shown(&e.name)
                ))?;
            } else {
                self.line(format_args!("{}{slash}", Shown(&e.name)))?;
            }
        }
        Ok(())
    }

    /// What `stat` learned about a remote path.
    pub fn stat(&self, r: &StatReply) -> Result<()> {
        if self.json {
            return self.json_line(r);
        }
        let md5 = r.md5.map(|m| format!("  MD5 {m}")).unwrap_or_default();
        let e = &r.entry;
        self.line(format_args!(
            "{}  {}  {} bytes  modified {}{md5}",
            Shown(&e.name),
            kind_name(e.kind),
            e.size,
            time(e.mtime)
        ))
    }

    /// One line per finished transfer.
    pub fn summary(&self, op: &str, s: &Summary) -> Result<()> {
        let secs = s.elapsed.as_secs_f64().max(1e-6);
        if self.json {
            #[derive(Serialize)]
            struct Line<'a> {
                op: &'a str,
                name: &'a str,
                size: u64,
                sent: u64,
                seconds: f64,
                /// The digest under its own name: `md5` (the default) or `blake3`.
                #[serde(skip_serializing_if = "Option::is_none")]
                md5: Option<String>,
                #[serde(skip_serializing_if = "Option::is_none")]
                blake3: Option<String>,
            }
            let mut line = Line {
                op,
                name: &s.name,
                size: s.size,
                sent: s.sent,
                seconds: s.elapsed.as_secs_f64(),
                md5: None,
                blake3: None,
            };
            let slot = match s.digest.kind() {
                DigestKind::Md5 => &mut line.md5,
                DigestKind::Blake3 => &mut line.blake3,
            };
            *slot = Some(s.digest.to_string());
            return self.json_line(&line);
        }
        let resumed = if s.sent == 0 && s.size > 0 {
            ", already complete: nothing sent".to_owned()
        } else if s.sent < s.size {
            format!(", {} of it sent this time", HumanBytes(s.sent))
        } else {
            String::new()
        };
        self.line(format_args!(
            "{op} {}: {} ({} bytes{resumed}) in {secs:.2} s, {}/s, {} {} verified",
            Shown(&s.name),
            HumanBytes(s.size),
            s.size,
            HumanBytes((s.sent as f64 / secs) as u64),
            s.digest.kind().name(),
            s.digest
        ))
    }
}

fn kind_char(kind: EntryKind) -> char {
    match kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Other | EntryKind::Unknown => '?',
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Other | EntryKind::Unknown => "other",
    }
}

/// The last second a listing writes (the end of the year 9999): the server's times are its
/// word, and a later one has five digits of year.
const LAST_SECOND: i64 = 253_402_300_799;

/// A modification time as `2026-11-22 01:05:54` in the local time zone (`TZ`, else the
/// system's), as ls shows it; dashes for one unknown or out of range.
fn time(mtime: Option<i64>) -> String {
    time_in(mtime, &chrono::Local)
}

fn time_in<Tz: chrono::TimeZone>(mtime: Option<i64>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    match mtime {
        Some(secs @ 0..=LAST_SECOND) => match chrono::DateTime::from_timestamp(secs, 0) {
            Some(t) => t.with_timezone(tz).format("%Y-%m-%d %H:%M:%S").to_string(),
            None => "-".repeat(19),
        },
        _ => "-".repeat(19),
    }
}

/// A size as people read it: `512 B`, `2.37 MiB`.
pub fn human_size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a server can put in a name or a message to act on a terminal, and how it shows.
    const ACTING: &[(&str, &str)] = &[
        ("\x1b[2J", "\\u{1b}[2J"),
        ("\x1b]0;owned\x07", "\\u{1b}]0;owned\\u{7}"),
        ("\u{9b}2J", "\\u{9b}2J"),
        ("\u{9d}0;x\u{9c}", "\\u{9d}0;x\\u{9c}"),
        ("del\u{7f}", "del\\u{7f}"),
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("txt.\u{202e}exe", "txt.\\u{202e}exe"),
        (
            "\u{2066}\u{2069}\u{200e}\u{200f}\u{61c}",
            "\\u{2066}\\u{2069}\\u{200e}\\u{200f}\\u{61c}",
        ),
        ("line\u{2028}para\u{2029}", "line\\u{2028}para\\u{2029}"),
    ];

    #[test]
    fn shown_escapes_what_acts_on_a_terminal() {
        for (raw, shown) in ACTING {
            assert_eq!(Shown(raw).to_string(), *shown, "{raw:?}");
        }
        for plain in ["plain.txt", "ünï côdé", "a\\b", "/photos/2026", "日本語"] {
            assert_eq!(Shown(plain).to_string(), plain);
        }
        // Escaping what is already shown changes nothing: errors may be shown twice over.
        for (_, shown) in ACTING {
            assert_eq!(Shown(Shown(shown)).to_string(), *shown);
        }
    }

    #[test]
    fn json_is_exact_and_holds_nothing_raw_that_acts_on_a_terminal() {
        for (raw, _) in ACTING {
            let mut out = Vec::new();
            let mut json = serde_json::Serializer::with_formatter(&mut out, TerminalSafeJson);
            raw.serialize(&mut json).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                serde_json::from_str::<String>(&text).unwrap(),
                *raw,
                "{text}"
            );
            assert!(!text.contains(char::is_control), "{text:?}");
        }
        // Bidirectional controls stay as they are: exact, and a JSON reader wants them so.
        let mut out = Vec::new();
        let mut json = serde_json::Serializer::with_formatter(&mut out, TerminalSafeJson);
        "a\u{202e}b".serialize(&mut json).unwrap();
        assert_eq!(out, "\"a\u{202e}b\"".as_bytes());
    }

    #[test]
    fn times() {
        let utc = chrono::Utc;
        assert_eq!(time_in(Some(0), &utc), "1970-01-01 00:00:00");
        assert_eq!(time_in(None, &utc).len(), 19);
        assert_eq!(time_in(Some(LAST_SECOND), &utc), "9999-12-31 23:59:59");
        for out_of_range in [LAST_SECOND + 1, i64::MAX, -1, i64::MIN] {
            assert_eq!(time_in(Some(out_of_range), &utc), "-".repeat(19));
        }
        // In a zone east of UTC, the same second is later in the day.
        let india = chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        assert_eq!(time_in(Some(0), &india), "1970-01-01 05:30:00");
        assert_eq!(time(Some(0)).len(), 19);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(5), "5 B");
        assert_eq!(human_size(2_483_921), "2.37 MiB");
    }
}
