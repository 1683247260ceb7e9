//! Everything the client prints: command output on stdout, diagnostics on stderr, in one type.

use std::io::IsTerminal;

use indicatif::HumanBytes;
use protocol::{Entry, EntryKind, StatReply};
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
    /// `--verbose`: a line for every file of a many-file command, however many it moves.
    verbose: bool,
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
            verbose: false,
            stdout: std::io::stdout(),
            stderr,
        }
    }

    /// The same, with a line for every file of a many-file command (`--verbose`).
    pub fn verbose(self, verbose: bool) -> Self {
        Output { verbose, ..self }
    }

    /// Whether every file of a many-file command gets its own line.
    pub fn every_file(&self) -> bool {
        self.verbose
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
    /// With `--json`, a line that has no record of its own (`mirror -n`'s plan, a skipped
    /// file, `help`) is a `message` object, so that every line a script reads parses.
    pub fn line(&self, text: impl std::fmt::Display) -> Result<()> {
        if self.json {
            let text = text.to_string();
            return self.json_line(&json::Message {
                r#type: "message",
                text: &text,
            });
        }
        self.raw_line(text)
    }

    fn raw_line(&self, text: impl std::fmt::Display) -> Result<()> {
        use std::io::Write as _;
        writeln!(self.stdout.lock(), "{text}").map_err(ClientError::Stdout)
    }

    /// One JSON line on stdout: exact JSON, with nothing raw in it that acts on a terminal
    /// ([`TerminalSafeJson`]).
    pub fn json_line(&self, value: &impl Serialize) -> Result<()> {
        let mut out = Vec::new();
        let mut json = serde_json::Serializer::with_formatter(&mut out, TerminalSafeJson);
        value.serialize(&mut json).expect("plain data serializes");
        self.raw_line(String::from_utf8(out).expect("serde_json writes UTF-8"))
    }

    /// One line on stderr: see [`diagnostic`].
    pub fn diagnostic(&self, text: impl std::fmt::Display) {
        diagnostic_to(&self.stderr, text);
    }

    /// A failure: its line on stderr, and with `--json` an `error` object on stdout too, with
    /// the exit status it stands for. A failed write of that object is ignored: the error is
    /// what the command ends with.
    pub fn error(&self, e: &ClientError) {
        self.failure(e, e);
    }

    /// [`Output::error`] with the line given: `get a.bin: already exists` for a file of a batch.
    pub fn failure(&self, text: impl std::fmt::Display, e: &ClientError) {
        let text = text.to_string();
        self.diagnostic(&text);
        self.json_error(&text, e);
    }

    /// The `error` object alone, for an error whose human line is printed elsewhere (`main`).
    pub fn json_error(&self, text: &str, e: &ClientError) {
        if self.json && !matches!(e, ClientError::Stdout(_)) {
            let _ = self.json_line(&json::Error {
                r#type: "error",
                message: &Shown(text).to_string(),
                code: e.wire_code().map(protocol::ErrorCode::as_str),
                status: e.exit_code(),
            });
        }
    }

    /// `pwd` (`"pwd"`), `lpwd` (`"lpwd"`): a directory.
    pub fn directory(&self, kind: &'static str, path: &str) -> Result<()> {
        if self.json {
            return self.json_line(&json::Directory { r#type: kind, path });
        }
        self.raw_line(Shown(path))
    }

    /// One name of `lls`.
    pub fn local_name(&self, name: &str, dir: bool) -> Result<()> {
        if self.json {
            return self.json_line(&json::Local {
                r#type: "lls",
                name,
                kind: if dir { "dir" } else { "file" },
            });
        }
        let slash = if dir { "/" } else { "" };
        self.raw_line(format_args!("{}{slash}", Shown(name)))
    }

    /// `mirror`'s one summary line (`text`), or its counts as a `mirror` object.
    pub fn mirror(&self, text: &str, m: &Mirrored) -> Result<()> {
        if self.json {
            return self.json_line(&json::Mirror {
                r#type: "mirror",
                new: m.new,
                changed: m.changed,
                deleted: m.deleted,
                unchanged: m.unchanged,
                bytes: m.bytes,
                dry_run: m.dry_run,
            });
        }
        for line in wrapped(text, self.width()) {
            self.raw_line(line)?;
        }
        Ok(())
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
                self.json_line(&json::Entry::of("entry", e))?;
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
            let mut line = json::Entry::of("stat", &r.entry);
            line.digest = line.digest.or(r.md5.as_ref().map(json::Digest::of));
            return self.json_line(&line);
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

    /// What `df` reports: a line for the user's own limits and one for the root's (those the
    /// server has); `--json`: `{"type":"df","user":{...},"root":{...}}`.
    pub fn df(&self, r: &protocol::DfReply) -> Result<()> {
        if self.json {
            #[derive(Serialize)]
            struct Df<'a> {
                r#type: &'static str,
                #[serde(flatten)]
                reply: &'a protocol::DfReply,
            }
            return self.json_line(&Df {
                r#type: "df",
                reply: r,
            });
        }
        let show = |what: &str, s: &protocol::Space| {
            let bytes = match s.quota {
                Some(q) => format!(
                    "{} of {} used ({}%)",
                    human_size(s.bytes),
                    human_size(q),
                    percent(s.bytes, q)
                ),
                None => format!("{} used", human_size(s.bytes)),
            };
            let files = match s.max_files {
                Some(m) => format!("{} of {m} files", s.files),
                None => format!("{} files", s.files),
            };
            format!("{what}: {bytes}, {files}")
        };
        if r.user.is_none() && r.root.is_none() {
            return self.line(format_args!("no quota: neither you nor the server has one"));
        }
        if let Some(u) = &r.user {
            self.line(format_args!("{}", show("you", u)))?;
        }
        if let Some(root) = &r.root {
            self.line(format_args!("{}", show("server", root)))?;
        }
        Ok(())
    }

    /// One line per finished transfer.
    pub fn summary(&self, op: &str, s: &Summary) -> Result<()> {
        if self.json {
            return self.json_line(&json::Transfer {
                r#type: "transfer",
                op,
                name: &s.name,
                size: s.size,
                sent: s.sent,
                seconds: s.elapsed.as_secs_f64(),
                digest: json::Digest::of(&s.digest),
            });
        }
        for line in summary_lines(op, s, self.width()) {
            self.raw_line(line)?;
        }
        Ok(())
    }

    /// The columns of the terminal stdout is, for lines that should fit it; `None` when it is
    /// not one (a pipe, a file: lines stay whole for programs) or with `--json`.
    fn width(&self) -> Option<usize> {
        if self.json {
            return None;
        }
        console::Term::stdout()
            .size_checked()
            .map(|(_, cols)| usize::from(cols))
    }
}

/// A transfer's summary: one line, `get x.bin: 195.31 KiB (200000 bytes) in 0.01 s,
/// 19.07 MiB/s, md5 ... verified`, as programs read it. At a terminal narrower than that
/// (`width`), two: the name shortened (its middle, to an ellipsis) and the exact byte count
/// left out, then the digest on a line of its own, whole, since it is there to be compared.
fn summary_lines(op: &str, s: &Summary, width: Option<usize>) -> Vec<String> {
    let secs = s.elapsed.as_secs_f64().max(1e-6);
    let rate = HumanBytes((s.sent as f64 / secs) as u64);
    let digest = format!("{} {} verified", s.digest.kind().name(), s.digest);
    let resumed = if s.sent == 0 && s.size > 0 {
        ", already complete: nothing sent".to_owned()
    } else if s.sent < s.size {
        format!(", {} of it sent this time", HumanBytes(s.sent))
    } else {
        String::new()
    };
    let name = Shown(&s.name).to_string();
    let whole = format!(
        "{op} {name}: {} ({} bytes{resumed}) in {secs:.2} s, {rate}/s, {digest}",
        HumanBytes(s.size),
        s.size,
    );
    let Some(width) = width.filter(|&w| whole.chars().count() > w) else {
        return vec![whole];
    };
    let rest = format!(": {} in {secs:.1} s, {rate}/s", HumanBytes(s.size));
    let room = width.saturating_sub(op.chars().count() + 1 + rest.chars().count());
    let name = crate::progress::shorten(&name, room.max(MIN_NAME));
    let mut lines = vec![format!("{op} {name}{rest}")];
    if s.sent == 0 && s.size > 0 {
        lines.push("  already complete: nothing sent".into());
    } else if s.sent < s.size {
        lines.push(format!("  resumed: {} sent this time", HumanBytes(s.sent)));
    }
    lines.push(format!("  {digest}"));
    lines
}

/// The fewest characters of a name a shortened line keeps, however narrow the terminal.
const MIN_NAME: usize = 8;

/// What a many-file command did, for its one total line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Total {
    /// Files moved and verified.
    pub files: usize,
    /// Their bytes (each file's whole size, resumed or not).
    pub bytes: u64,
    /// From the start of the batch to its end.
    pub elapsed: std::time::Duration,
    /// Files that failed, or were refused before the batch began.
    pub failed: usize,
}

impl Output {
    /// The one line a many-file command ends with: `put -r src: 1000 files, 62.5 MiB in 1.2 s,
    /// 52.1 MiB/s, 0 failed`.
    pub fn total(&self, what: &str, t: &Total) -> Result<()> {
        if self.json {
            return self.json_line(&json::Total {
                r#type: "total",
                op: what,
                files: t.files,
                bytes: t.bytes,
                seconds: t.elapsed.as_secs_f64(),
                failed: t.failed,
            });
        }
        for line in fitted_total(what, t, self.width()) {
            self.raw_line(line)?;
        }
        Ok(())
    }
}

/// What `mirror` found and did, for its `mirror` JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirrored {
    pub new: usize,
    pub changed: usize,
    pub deleted: usize,
    pub unchanged: usize,
    /// The bytes of the new and changed files: moved, or with `dry_run` to be moved.
    pub bytes: u64,
    pub dry_run: bool,
}

/// The JSON lines `--json` prints, one struct a `type` (docs/JSON.md is their schema): the
/// keys are the same whatever `--digest` is.
mod json {
    use serde::Serialize;

    #[derive(Serialize)]
    pub(super) struct Digest {
        /// `md5` or `blake3`.
        kind: protocol::DigestKind,
        hex: String,
    }

    impl Digest {
        pub(super) fn of(d: &protocol::Digest) -> Digest {
            Digest {
                kind: d.kind(),
                hex: d.to_string(),
            }
        }
    }

    /// `entry` (a listing's) and `stat`.
    #[derive(Serialize)]
    pub(super) struct Entry<'a> {
        pub(super) r#type: &'static str,
        name: &'a str,
        kind: protocol::EntryKind,
        size: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        mtime: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) digest: Option<Digest>,
    }

    impl Entry<'_> {
        pub(super) fn of<'a>(r#type: &'static str, e: &'a protocol::Entry) -> Entry<'a> {
            Entry {
                r#type,
                name: &e.name,
                kind: e.kind,
                size: e.size,
                mtime: e.mtime,
                digest: e.digest.as_ref().map(Digest::of),
            }
        }
    }

    #[derive(Serialize)]
    pub(super) struct Transfer<'a> {
        pub(super) r#type: &'static str,
        pub(super) op: &'a str,
        pub(super) name: &'a str,
        pub(super) size: u64,
        pub(super) sent: u64,
        pub(super) seconds: f64,
        pub(super) digest: Digest,
    }

    #[derive(Serialize)]
    pub(super) struct Total<'a> {
        pub(super) r#type: &'static str,
        pub(super) op: &'a str,
        pub(super) files: usize,
        pub(super) bytes: u64,
        pub(super) seconds: f64,
        pub(super) failed: usize,
    }

    #[derive(Serialize)]
    pub(super) struct Directory<'a> {
        pub(super) r#type: &'static str,
        pub(super) path: &'a str,
    }

    #[derive(Serialize)]
    pub(super) struct Local<'a> {
        pub(super) r#type: &'static str,
        pub(super) name: &'a str,
        pub(super) kind: &'static str,
    }

    #[derive(Serialize)]
    pub(super) struct Mirror {
        pub(super) r#type: &'static str,
        pub(super) new: usize,
        pub(super) changed: usize,
        pub(super) deleted: usize,
        pub(super) unchanged: usize,
        pub(super) bytes: u64,
        pub(super) dry_run: bool,
    }

    #[derive(Serialize)]
    pub(super) struct Error<'a> {
        pub(super) r#type: &'static str,
        pub(super) message: &'a str,
        /// The server's wire code (`not_found`) when the server refused: stable for programs
        /// to match on, and left out of `message`, which is for people.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) code: Option<&'static str>,
        /// The exit status this failure stands for (`ftp-cli --help`).
        pub(super) status: u8,
    }

    #[derive(Serialize)]
    pub(super) struct Message<'a> {
        pub(super) r#type: &'static str,
        pub(super) text: &'a str,
    }
}

fn total_line(what: &str, t: &Total) -> String {
    let secs = t.elapsed.as_secs_f64().max(1e-6);
    let files = if t.files == 1 { "file" } else { "files" };
    format!(
        "{}: {} {files}, {} in {:.1} s, {}/s, {} failed",
        Shown(what),
        t.files,
        HumanBytes(t.bytes),
        t.elapsed.as_secs_f64(),
        HumanBytes((t.bytes as f64 / secs) as u64),
        t.failed
    )
}

/// [`total_line`], fitted to a terminal `width` columns wide: when it does not fit, the
/// command (a long path) on a line of its own, shortened in the middle, and the figures under
/// it, the time in hours and minutes past one.
fn fitted_total(what: &str, t: &Total, width: Option<usize>) -> Vec<String> {
    let whole = total_line(what, t);
    let Some(width) = width.filter(|&w| whole.chars().count() > w) else {
        return vec![whole];
    };
    let shown = Shown(what).to_string();
    let secs = t.elapsed.as_secs_f64();
    let time = match t.elapsed.as_secs() {
        s @ 3600.. => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s @ 60.. => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{secs:.1} s"),
    };
    let files = if t.files == 1 { "file" } else { "files" };
    vec![
        format!(
            "{}:",
            crate::progress::shorten(&shown, width.saturating_sub(1).max(MIN_NAME))
        ),
        format!(
            "  {} {files}, {} in {time}, {}/s, {} failed",
            t.files,
            HumanBytes(t.bytes),
            HumanBytes((t.bytes as f64 / secs.max(1e-6)) as u64),
            t.failed
        ),
    ]
}

/// A line of comma-separated figures (`mirror: 8 new, 0 changed, ...`) at a terminal `width`
/// columns wide: broken after a comma where it would not fit, the rest indented.
fn wrapped(text: &str, width: Option<usize>) -> Vec<String> {
    let Some(width) = width.filter(|&w| text.chars().count() > w) else {
        return vec![text.to_owned()];
    };
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for piece in text.split(", ") {
        let joined = if line.is_empty() {
            piece.to_owned()
        } else {
            format!("{line}, {piece}")
        };
        if line.is_empty() || joined.chars().count() < width {
            line = joined;
        } else {
            lines.push(format!("{line},"));
            line = format!("  {piece}");
        }
    }
    lines.push(line);
    lines
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
/// `part` as a whole percentage of `whole`, rounded down.
fn percent(part: u64, whole: u64) -> u128 {
    u128::from(part) * 100 / u128::from(whole.max(1))
}

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

    /// Summary and total lines at a 60-column terminal: every line fits, long names lose their
    /// middle, the digest stays whole; off a terminal the one line is as before.
    #[test]
    fn summaries_fit_sixty_columns() {
        let mut hasher = protocol::Hasher::new(protocol::DigestKind::Md5);
        hasher
            .update_from(&mut &b"some bytes"[..], u64::MAX)
            .unwrap();
        let s = Summary {
            name: "holidays/2024/a-very-long-name-of-a-photo-from-the-beach.jpg".into(),
            sent: 700 * 1024 * 1024,
            size: 1023 * 1024 * 1024,
            elapsed: std::time::Duration::from_millis(123_456),
            digest: hasher.finish(),
        };
        let hex = s.digest.to_string();
        let whole = summary_lines("get", &s, None);
        assert_eq!(whole.len(), 1);
        assert!(
            whole[0].contains(&s.name) && whole[0].contains(&hex),
            "{whole:?}"
        );
        let narrow = summary_lines("get", &s, Some(60));
        assert_eq!(narrow.len(), 3, "{narrow:?}");
        for line in &narrow {
            assert!(line.chars().count() <= 60, "{line:?} is wider than 60");
        }
        assert!(narrow[0].starts_with("get holidays/"), "{narrow:?}");
        assert!(narrow[0].contains('\u{2026}') && narrow[0].contains("beach.jpg"));
        assert_eq!(narrow[1], "  resumed: 700.00 MiB sent this time");
        assert_eq!(narrow[2], format!("  MD5 {hex} verified"));
        // A line that fits stays one line.
        let short = Summary {
            name: "a".into(),
            ..s
        };
        assert_eq!(summary_lines("get", &short, Some(200)).len(), 1);
        // Wide figures: 10,000 files, most of a TiB, two hours, some failed.
        let t = Total {
            files: 10_000,
            bytes: 999 * 1024 * 1024 * 1024,
            elapsed: std::time::Duration::from_secs(7261),
            failed: 12,
        };
        let what = "put -r /home/someone/Pictures/holidays/2024/the-beach";
        let lines = fitted_total(what, &t, Some(60));
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            assert!(line.chars().count() <= 60, "{line:?} is wider than 60");
        }
        assert_eq!(lines[0], format!("{what}:"));
        assert!(lines[1].contains(" in 2h01m, "), "{lines:?}");
        let longer = format!("{what}/and/then/some/more/directories/below");
        let lines = fitted_total(&longer, &t, Some(60));
        assert!(lines[0].starts_with("put -r /home") && lines[0].ends_with("below:"));
        assert_eq!(lines[0].chars().count(), 60, "{lines:?}");
        let small = Total {
            files: 3,
            bytes: 10,
            elapsed: std::time::Duration::from_secs(1),
            failed: 0,
        };
        assert_eq!(fitted_total("mget", &small, Some(60)).len(), 1);
    }

    #[test]
    fn mirror_lines_fit_sixty_columns() {
        let text = "mirror: 8 new, 0 changed, 0 deleted, 0 unchanged, 228.88 MiB would be \
                    moved (dry run: nothing changed)";
        assert_eq!(wrapped(text, None), [text]);
        let lines = wrapped(text, Some(60));
        assert_eq!(
            lines,
            [
                "mirror: 8 new, 0 changed, 0 deleted, 0 unchanged,",
                "  228.88 MiB would be moved (dry run: nothing changed)"
            ]
        );
        assert_eq!(wrapped("mirror: 1 new", Some(60)), ["mirror: 1 new"]);
    }

    #[test]
    fn total_lines() {
        let t = Total {
            files: 1000,
            bytes: 62 * 1024 * 1024 + 512 * 1024,
            elapsed: std::time::Duration::from_millis(1200),
            failed: 0,
        };
        assert_eq!(
            total_line("put -r src", &t),
            "put -r src: 1000 files, 62.50 MiB in 1.2 s, 52.08 MiB/s, 0 failed"
        );
        let one = Total {
            files: 1,
            bytes: 5,
            elapsed: std::time::Duration::ZERO,
            failed: 2,
        };
        assert!(total_line("mget", &one).starts_with("mget: 1 file, 5 B in 0.0 s, "));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(5), "5 B");
        assert_eq!(human_size(2_483_921), "2.37 MiB");
    }
}
