//! The interactive shell and the non-interactive runners (`-c`, `-b`, piped stdin).

use std::io::BufRead;
use std::path::PathBuf;

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use crate::app::{App, Flow};
use crate::command;
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

/// The interactive shell: errors are printed and the shell goes on.
pub fn interactive(app: &mut App) -> Result<()> {
    let mut editor = DefaultEditor::new()
        .map_err(|e| ClientError::Usage(format!("cannot start the line editor: {e}")))?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    if let Err(e) = app.connect() {
        eprintln!("ftp-cli: {e}");
    }
    let prompt = format!("ftp {}> ", app.addr());
    loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("ftp-cli: cannot read input: {e}");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        match command::parse_line(&line) {
            Err(e) => eprintln!("ftp-cli: {e}"),
            Ok(cmds) => {
                let mut quit = false;
                for cmd in cmds {
                    match app.run(cmd) {
                        Ok(Flow::Quit) => quit = true,
                        Ok(Flow::Continue) => {}
                        Err(e) => {
                            eprintln!("ftp-cli: {e}");
                            break;
                        }
                    }
                    if quit {
                        break;
                    }
                }
                if quit {
                    break;
                }
            }
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
