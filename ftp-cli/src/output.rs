//! Everything the client prints: command output on stdout, diagnostics on stderr, in one type.

use std::io::IsTerminal;
use std::time::{Duration, UNIX_EPOCH};

use indicatif::HumanBytes;
use protocol::{DigestKind, Entry, EntryKind, StatReply};
use serde::Serialize;

use crate::client::Summary;
use crate::error::{ClientError, Result};

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

    /// One line on stdout. A failed write is an error, so that the command stops: the reader
    /// may have gone (`ftp-cli HOST -c ls | head`), which `main` turns into a quiet exit.
    pub fn line(&self, text: impl std::fmt::Display) -> Result<()> {
        use std::io::Write as _;
        writeln!(self.stdout.lock(), "{text}").map_err(ClientError::Stdout)
    }

    /// One JSON line on stdout.
    pub fn json_line(&self, value: &impl Serialize) -> Result<()> {
        self.line(serde_json::to_string(value).expect("plain data serializes"))
    }

    /// One line on stderr, after the program's name. A failed write is ignored: with stderr
    /// gone there is nowhere left to say so.
    pub fn diagnostic(&self, text: impl std::fmt::Display) {
        use std::io::Write as _;
        let _ = writeln!(self.stderr.lock(), "ftp-cli: {text}");
    }

    /// A remote directory's entries, one a line (`ls`, `ls -l`).
    pub fn listing(&self, entries: &[Entry], long: bool) -> Result<()> {
        if self.json {
            for e in entries {
                self.json_line(e)?;
            }
            return Ok(());
        }
        let width = entries
            .iter()
            .map(|e| e.size.to_string().len())
            .max()
            .unwrap_or(1);
        for e in entries {
            let slash = if e.kind == EntryKind::Dir { "/" } else { "" };
            if long {
                self.line(format_args!(
                    "{} {:>width$}  {}  {}{slash}",
                    kind_char(e.kind),
                    e.size,
                    time(e.mtime),
                    e.name
                ))?;
            } else {
                self.line(format_args!("{}{slash}", e.name))?;
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
            e.name,
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
            s.name,
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

/// A modification time as `2026-11-22 01:05:54` (UTC).
fn time(mtime: Option<i64>) -> String {
    match mtime {
        Some(secs) if secs >= 0 => {
            let t = UNIX_EPOCH + Duration::from_secs(secs as u64);
            humantime::format_rfc3339_seconds(t)
                .to_string()
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_owned()
        }
        _ => "-".repeat(19),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(Some(0)), "1970-01-01 00:00:00");
        assert_eq!(time(None).len(), 19);
    }
}
