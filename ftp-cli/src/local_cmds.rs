//! The commands that act on this machine only: `lcd`, `lpwd`, `lls` and `!`.

use std::path::{Path, PathBuf};

use crate::error::{ClientError, Result};
use crate::output::{Output, Shown};

/// `lcd [PATH]`: changes the local directory, to the home directory without a path.
pub(crate) fn lcd(path: Option<String>) -> Result<()> {
    let dir = match path {
        Some(p) => PathBuf::from(p),
        None => {
            dirs::home_dir().ok_or_else(|| ClientError::Usage("lcd: no home directory".into()))?
        }
    };
    std::env::set_current_dir(&dir).map_err(|e| ClientError::local(&dir, e))
}

/// `lpwd`: prints the local directory.
pub(crate) fn lpwd(output: &Output) -> Result<()> {
    let dir = std::env::current_dir().map_err(|e| ClientError::local(Path::new("."), e))?;
    output.line(dir.display())
}

/// `lls [PATH]`: prints the names in a local directory, sorted, directories with a `/`.
pub(crate) fn lls(path: Option<String>, output: &Output) -> Result<()> {
    let dir = PathBuf::from(path.unwrap_or_else(|| ".".into()));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| ClientError::local(&dir, e))?
        .flatten()
        .map(|e| {
            let slash = if e.path().is_dir() { "/" } else { "" };
            format!("{}{slash}", e.file_name().to_string_lossy())
        })
        .collect();
    names.sort();
    for n in names {
        // Someone else may have named a file here (a shared directory): shown escaped.
        output.line(Shown(n))?;
    }
    Ok(())
}

/// `!CMD`: runs a shell command here; a failure is a local error.
pub(crate) fn shell(cmd: &str) -> Result<()> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map_err(|e| ClientError::local(Path::new("sh"), e))?;
    if !status.success() {
        return Err(ClientError::Local {
            path: format!("!{cmd}"),
            source: std::io::Error::other(format!("exited with {status}")),
        });
    }
    Ok(())
}
