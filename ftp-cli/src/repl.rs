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
use rustyline::{ColorMode, CompletionType, Config, Context, Editor, Helper};

use crate::app::{App, Flow};
use crate::client::safe_name;
use crate::command::{self, COMMAND_WORDS};
use crate::error::{ClientError, Result};

/// Where a script's commands come from, to name the one that failed.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// `-c "..."`: the command's own words name it.
    Commands,
    /// `-b FILE`: `FILE:LINE: ` before them.
    Batch(&'a std::path::Path),
    /// Piped stdin: `stdin:LINE: ` before them.
    Stdin,
}

impl Source<'_> {
    /// Where line `n` (from 1) is, as a prefix: `cmds.txt:3: `.
    fn at(&self, n: usize) -> String {
        match self {
            Source::Commands => String::new(),
            Source::Batch(path) => format!("{}:{n}: ", path.display()),
            Source::Stdin => format!("stdin:{n}: "),
        }
    }
}

/// Runs commands from a script (a `-c` string, a batch file, piped stdin), stopping at the
/// first failure as `sftp -b` does. The error names the command that failed, and the line it
/// is on (`cmds.txt:3: get x.jpg: ...`).
pub fn run_script(
    app: &mut App,
    lines: impl Iterator<Item = std::io::Result<String>>,
    source: Source<'_>,
) -> Result<()> {
    for (n, line) in lines.enumerate() {
        let at = source.at(n + 1);
        let line =
            line.map_err(|e| ClientError::Usage(format!("{at}cannot read commands: {e}")))?;
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        // The whole line is checked before any of it runs.
        let parsed = command::parse_each(line).map_err(|e| match at.as_str() {
            "" => e,
            _ => e.in_command(at.trim_end_matches([' ', ':'])),
        })?;
        let mut commands = Vec::with_capacity(parsed.len());
        for p in parsed {
            match p.command {
                Ok(cmd) => commands.push((p.text, cmd)),
                Err(why) => return Err(ClientError::Usage(format!("{at}{why}"))),
            }
        }
        for (text, cmd) in commands {
            match app.run(cmd) {
                Ok(Flow::Quit) => return Ok(()),
                Ok(Flow::Continue) => {}
                Err(e) => return Err(named(e, &at, &text)),
            }
        }
    }
    Ok(())
}

/// `e`, the failure of the command `text` on the line at `at`, named by both; an error that
/// already starts with the command's name (`get rdir: a directory; ...`) is not named twice.
fn named(e: ClientError, at: &str, text: &str) -> ClientError {
    let word = text.split_whitespace().next().unwrap_or_default();
    let names_itself = matches!(&e, ClientError::Usage(m)
        if m.strip_prefix(word).is_some_and(|rest| rest.starts_with([':', ' '])));
    match (names_itself, at) {
        (true, "") => e,
        (true, at) => e.in_command(at.trim_end_matches([' ', ':'])),
        (false, at) => e.in_command(format!("{at}{text}")),
    }
}

/// Runs commands from a batch file.
pub fn run_batch(app: &mut App, path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| ClientError::local(path, e))?;
    run_script(
        app,
        std::io::BufReader::new(file).lines(),
        Source::Batch(path),
    )
}

fn history_path() -> Option<PathBuf> {
    let dir = dirs::data_dir()?.join("ftp-cli");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("history"))
}

/// Commands whose arguments are remote paths, and those whose arguments are local ones.
const REMOTE_ARGS: &[&str] = &[
    "get", "reget", "mget", "cd", "ls", "dir", "rm", "delete", "rmdir", "rename", "mv", "stat",
    "cat", "du",
];
const LOCAL_ARGS: &[&str] = &["put", "reput", "mput", "lcd", "lls"];

/// Tab completion of command names, remote paths (from short-lived listings) and local paths;
/// hints from history.
struct ShellHelper {
    app: Rc<RefCell<App>>,
    files: FilenameCompleter,
    /// History hints, dim; `None` where the terminal draws no colours, where a hint would
    /// look like typed text.
    hints: Option<HistoryHinter>,
}

impl ShellHelper {
    fn complete_remote(&self, word: &str) -> Vec<Pair> {
        let (dir, prefix) = match word.rsplit_once('/') {
            Some(("", p)) => ("/".to_owned(), p),
            Some((d, p)) => (d.to_owned(), p),
            None => (".".to_owned(), word),
        };
        let lead = &word[..word.len() - prefix.len()];
        // A question asked in the middle of a command (replace this file?) has the session
        // busy: nothing remote to offer then.
        let Ok(mut app) = self.app.try_borrow_mut() else {
            return Vec::new();
        };
        let mut out: Vec<Pair> = app
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
        self.hints.as_ref()?.hint(line, pos, ctx)
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

/// Whether the terminal should get no colours: `NO_COLOR` set, or a dumb terminal.
fn no_colour() -> bool {
    plain_terminal(
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var("TERM").ok().as_deref(),
    )
}

/// [`no_colour`] from the values of `NO_COLOR` and `TERM`.
fn plain_terminal(no_color: Option<&std::ffi::OsStr>, term: Option<&str>) -> bool {
    no_color.is_some_and(|v| !v.is_empty()) || term == Some("dumb")
}

type Shell = Editor<ShellHelper, DefaultHistory>;

/// The interactive shell: errors are printed and the shell goes on; Ctrl-C clears the line,
/// Ctrl-D or `quit` leaves. Each command is added to the history file as it runs.
pub fn interactive(app: App) -> Result<()> {
    app.own_ctrl_c()?;
    let app = Rc::new(RefCell::new(app));
    let plain = no_colour();
    let config = Config::builder()
        // Tab lists the candidates (after completing what they share), as bash and lftp do.
        .completion_type(CompletionType::List)
        .color_mode(if plain {
            ColorMode::Disabled
        } else {
            ColorMode::Enabled
        })
        .build();
    let editor: Shell = Editor::with_config(config)
        .map_err(|e| ClientError::Usage(format!("cannot start the line editor: {e}")))?;
    let editor = Rc::new(RefCell::new(editor));
    editor.borrow_mut().set_helper(Some(ShellHelper {
        app: app.clone(),
        files: FilenameCompleter::new(),
        hints: (!plain).then(HistoryHinter::new),
    }));
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.borrow_mut().load_history(h);
    }
    // Questions in the middle of a command are read by the same editor, so that what was
    // typed ahead answers them in order.
    let asker = editor.clone();
    app.borrow_mut().set_ask(Box::new(move |question: &str| {
        asker.try_borrow_mut().ok()?.readline(question).ok()
    }));
    if app.borrow().has_host() {
        let connected = app.borrow_mut().connect_interactively();
        if let Err(e) = connected {
            app.borrow().output().error(&e);
        }
    }
    let mut result = Ok(());
    loop {
        let prompt = app.borrow().prompt();
        let line = editor.borrow_mut().readline(&prompt);
        let line = match line {
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
        {
            let mut editor = editor.borrow_mut();
            let _ = editor.add_history_entry(line.as_str());
            // Saved now, not only at exit: a shell killed later keeps what was typed.
            if let Some(h) = &history {
                let _ = editor.append_history(h);
            }
        }
        let cmds = match command::parse_line(&line) {
            Ok(cmds) => cmds,
            Err(e) => {
                app.borrow().output().error(&e);
                continue;
            }
        };
        let mut quit = false;
        for cmd in cmds {
            let ran = if cmd == command::Command::History {
                print_history(&editor.borrow(), app.borrow().output())
            } else {
                app.borrow_mut().run(cmd)
            };
            match ran {
                Ok(Flow::Quit) => quit = true,
                Ok(Flow::Continue) => continue,
                // Nobody reads what the shell prints any more: end the session.
                Err(e @ ClientError::Stdout(_)) => {
                    result = Err(e);
                    quit = true;
                }
                Err(e) => app.borrow().output().error(&e),
            }
            break;
        }
        if quit {
            break;
        }
    }
    app.borrow_mut().close();
    result
}

/// `history`: the commands typed so far, numbered, oldest first.
fn print_history(editor: &Shell, output: &crate::output::Output) -> Result<Flow> {
    use rustyline::history::{History, SearchDirection};
    let history = editor.history();
    for i in 0..history.len() {
        if let Ok(Some(entry)) = history.get(i, SearchDirection::Forward) {
            output.line(format_args!(
                "{:5}  {}",
                i + 1,
                crate::output::Shown(&entry.entry)
            ))?;
        }
    }
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where colours are off, rustyline would draw a history hint as plain text, looking
    /// typed: hints go with the colours.
    #[test]
    fn hints_only_where_they_can_be_dim() {
        use std::ffi::OsStr;
        for (no_color, term, plain) in [
            (None, Some("xterm"), false),
            (Some(""), Some("xterm"), false),
            (Some("1"), Some("xterm"), true),
            (None, Some("dumb"), true),
            (None, None, false),
        ] {
            assert_eq!(plain_terminal(no_color.map(OsStr::new), term), plain);
        }
    }

    #[test]
    fn script_errors_are_named_once() {
        let usage = || ClientError::Usage("get rdir: a directory".into());
        let remote = || ClientError::Usage("not connected".into());
        for (e, at, text, want) in [
            (usage(), "", "get rdir", "get rdir: a directory"),
            (usage(), "f:2: ", "get rdir", "f:2: get rdir: a directory"),
            (remote(), "", "ls x", "ls x: not connected"),
            (remote(), "f:3: ", "ls x", "f:3: ls x: not connected"),
        ] {
            assert_eq!(named(e, at, text).to_string(), want);
        }
    }

    #[test]
    fn escapes_what_the_parser_would_split() {
        assert_eq!(escape("a b;c"), "a\\ b\\;c");
        assert_eq!(escape("plain.txt"), "plain.txt");
    }
}
