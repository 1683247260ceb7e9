//! The interactive shell (completion, hints, history) and the non-interactive runners (`-c`,
//! `-b`, piped stdin).

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::BufRead;
use std::path::PathBuf;
use std::rc::Rc;

use protocol::EntryKind;
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::{Hinter, HistoryHinter};
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use crate::app::{App, Flow};
use crate::client::safe_name;
use crate::command::{self, COMMAND_WORDS};
use crate::error::{ClientError, Result};

/// Runs commands from a script (a `-c` string, a batch file, piped stdin), stopping at the
/// first failure as `sftp -b` does.
pub fn run_script(
    app: &mut App,
    lines: impl Iterator<Item = std::io::Result<String>>,
) -> Result<()> {
    for line in lines {
        let line = line.map_err(|e| ClientError::Usage(format!("cannot read commands: {e}")))?;
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        for cmd in command::parse_line(line)? {
            if app.run(cmd)? == Flow::Quit {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Runs commands from a batch file.
pub fn run_batch(app: &mut App, path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| ClientError::local(path, e))?;
    run_script(app, std::io::BufReader::new(file).lines())
}

fn history_path() -> Option<PathBuf> {
    let dir = dirs::data_dir()?.join("ftp-cli");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("history"))
}

/// Commands whose arguments are remote paths, and those whose arguments are local ones.
const REMOTE_ARGS: &[&str] = &[
    "get", "reget", "mget", "cd", "ls", "rm", "rmdir", "rename", "mv", "stat",
];
const LOCAL_ARGS: &[&str] = &["put", "reput", "mput", "lcd", "lls"];

/// Tab completion of command names, remote paths (from short-lived listings) and local paths;
/// hints from history.
struct ShellHelper {
    app: Rc<RefCell<App>>,
    files: FilenameCompleter,
    hints: HistoryHinter,
}

impl ShellHelper {
    fn complete_remote(&self, word: &str) -> Vec<Pair> {
        let (dir, prefix) = match word.rsplit_once('/') {
            Some(("", p)) => ("/".to_owned(), p),
            Some((d, p)) => (d.to_owned(), p),
            None => (".".to_owned(), word),
        };
        let lead = &word[..word.len() - prefix.len()];
        let mut out: Vec<Pair> = self
            .app
            .borrow_mut()
            .complete_remote(&dir)
            .into_iter()
            // A name that is not a plain file name (`../x`, an escape sequence) is not offered:
            // it would draw on the terminal, or put a path the server chose into the command.
            .filter(|e| safe_name(&e.name).is_ok() && e.name.starts_with(prefix))
            .map(|e| {
                let slash = if e.kind == EntryKind::Dir { "/" } else { "" };
                let name = escape(&e.name);
                Pair {
                    display: format!("{}{slash}", e.name),
                    replacement: format!("{lead}{name}{slash}"),
                }
            })
            .collect();
        out.sort_by(|a, b| a.display.cmp(&b.display));
        out
    }
}

/// Backslash-escapes what the command parser would otherwise split or interpret.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_whitespace() || "\\'\";!*?[]".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        // The word being completed starts after the last unescaped space.
        let mut start = 0;
        let mut prev = '\0';
        for (i, c) in before.char_indices() {
            if c == ' ' && prev != '\\' {
                start = i + 1;
            }
            prev = c;
        }
        let words: Vec<&str> = before[..start].split_whitespace().collect();
        let Some(cmd) = words.first() else {
            let matches = COMMAND_WORDS
                .iter()
                .filter(|w| w.starts_with(before.trim_start()))
                .map(|w| Pair {
                    display: w.to_string(),
                    replacement: format!("{w} "),
                })
                .collect();
            return Ok((before.len() - before.trim_start().len(), matches));
        };
        let word = &before[start..];
        if REMOTE_ARGS.contains(cmd) {
            let unescaped = word.replace('\\', "");
            return Ok((start, self.complete_remote(&unescaped)));
        }
        if LOCAL_ARGS.contains(cmd) {
            return self.files.complete(line, pos, ctx);
        }
        Ok((pos, Vec::new()))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;

    fn hint(&self, line: &str, pos: usize, ctx: &Context<'_>) -> Option<String> {
        self.hints.hint(line, pos, ctx)
    }
}

impl Highlighter for ShellHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        // Hints are dim, so they do not read as typed text.
        Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
    }
}

impl Validator for ShellHelper {}
impl Helper for ShellHelper {}

/// The interactive shell: errors are printed and the shell goes on; Ctrl-C clears the line,
/// Ctrl-D or `quit` leaves.
pub fn interactive(app: App) -> Result<()> {
    app.own_ctrl_c()?;
    let app = Rc::new(RefCell::new(app));
    let mut editor: Editor<ShellHelper, DefaultHistory> = Editor::new()
        .map_err(|e| ClientError::Usage(format!("cannot start the line editor: {e}")))?;
    editor.set_helper(Some(ShellHelper {
        app: app.clone(),
        files: FilenameCompleter::new(),
        hints: HistoryHinter::new(),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let connected = app.borrow_mut().connect();
    if let Err(e) = connected {
        app.borrow().output().diagnostic(e);
    }
    let mut result = Ok(());
    loop {
        let prompt = app.borrow().prompt();
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                app.borrow()
                    .output()
                    .diagnostic(format_args!("cannot read input: {e}"));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        let cmds = match command::parse_line(&line) {
            Ok(cmds) => cmds,
            Err(e) => {
                app.borrow().output().diagnostic(e);
                continue;
            }
        };
        let mut quit = false;
        for cmd in cmds {
            let ran = app.borrow_mut().run(cmd);
            match ran {
                Ok(Flow::Quit) => quit = true,
                Ok(Flow::Continue) => continue,
                // Nobody reads what the shell prints any more: end the session.
                Err(e @ ClientError::Stdout(_)) => {
                    result = Err(e);
                    quit = true;
                }
                Err(e) => app.borrow().output().diagnostic(e),
            }
            break;
        }
        if quit {
            break;
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    app.borrow_mut().close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_the_parser_would_split() {
        assert_eq!(escape("a b;c"), "a\\ b\\;c");
        assert_eq!(escape("plain.txt"), "plain.txt");
    }
}
