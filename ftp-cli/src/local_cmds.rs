//! The commands that act on this machine only: `lcd`, `lpwd`, `lls` and `!`, and `~` in local
//! paths.

use std::path::{Path, PathBuf};

use crate::error::{ClientError, Result};
use crate::output::Output;

/// A local path as a shell reads it: `~` and `~/...` start at the home directory; anything
/// else (`~user`, `a/~`) is taken as it is.
pub(crate) fn expand(path: &str) -> PathBuf {
    expand_with(path, dirs::home_dir().as_deref())
}

/// [`expand`] with `home` as the home directory (none: `~` stays as it is).
fn expand_with(path: &str, home: Option<&Path>) -> PathBuf {
    match (path, home) {
        ("~", Some(home)) => home.to_owned(),
        (p, Some(home)) if p.starts_with("~/") => home.join(p[2..].trim_start_matches('/')),
        (p, _) => PathBuf::from(p),
    }
}

/// [`expand`] for a pattern of `mput`, which stays a string for the glob.
pub(crate) fn expand_pattern(pattern: &str) -> String {
    if pattern == "~" || pattern.starts_with("~/") {
        expand(pattern).to_string_lossy().into_owned()
    } else {
        pattern.to_owned()
    }
}

/// `lcd [PATH]`: changes the local directory, to the home directory without a path.
pub(crate) fn lcd(path: Option<String>) -> Result<()> {
    let dir = match path {
        Some(p) => expand(&p),
        None => {
            dirs::home_dir().ok_or_else(|| ClientError::Usage("lcd: no home directory".into()))?
        }
    };
    std::env::set_current_dir(&dir).map_err(|e| ClientError::local(&dir, e))
}

/// `lpwd`: prints the local directory.
pub(crate) fn lpwd(output: &Output) -> Result<()> {
    let dir = std::env::current_dir().map_err(|e| ClientError::local(Path::new("."), e))?;
    output.directory("lpwd", &dir.to_string_lossy())
}

/// `lls [PATH]`: prints the names in a local directory, sorted, directories with a `/`.
pub(crate) fn lls(path: Option<String>, output: &Output) -> Result<()> {
    let dir = expand(path.as_deref().unwrap_or("."));
    let mut names: Vec<(String, bool)> = std::fs::read_dir(&dir)
        .map_err(|e| ClientError::local(&dir, e))?
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().is_dir(),
            )
        })
        .collect();
    names.sort();
    for (name, is_dir) in names {
        // Someone else may have named a file here (a shared directory): shown escaped.
        output.local_name(&name, is_dir)?;
    }
    Ok(())
}

/// `!CMD`: runs a shell command here; a failure is a local error. `!` alone starts the user's
/// shell (`$SHELL`, else `sh`), as in ftp and sftp; leaving it comes back here.
pub(crate) fn shell(cmd: &str) -> Result<()> {
    let mut run = if cmd.is_empty() {
        let shell = std::env::var_os("SHELL").unwrap_or_else(|| "sh".into());
        std::process::Command::new(shell)
    } else {
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c").arg(cmd);
        sh
    };
    let status = run
        .status()
        .map_err(|e| ClientError::local(Path::new("sh"), e))?;
    if !status.success() && !cmd.is_empty() {
        return Err(ClientError::Local {
            path: format!("!{cmd}"),
            source: std::io::Error::other(format!("exited with {status}")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_is_the_home_directory() {
        let home = Path::new("/home/ann");
        for (typed, want) in [
            ("~", "/home/ann"),
            ("~/", "/home/ann"),
            ("~/x.jpg", "/home/ann/x.jpg"),
            ("~/Pictures/2024", "/home/ann/Pictures/2024"),
            ("~bob/x", "~bob/x"),
            ("a/~", "a/~"),
            ("x~", "x~"),
            ("/abs", "/abs"),
            ("rel", "rel"),
        ] {
            assert_eq!(expand_with(typed, Some(home)), Path::new(want), "{typed}");
        }
        assert_eq!(expand_with("~/x", None), Path::new("~/x"));
    }
}
