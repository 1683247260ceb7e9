//! The command language shared by the REPL, `-c`, `-b` and stdin: parsing only, no effects.

use crate::error::ClientError;

/// One command a user can type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Upload a local file.
    Put {
        local: String,
        remote: Option<String>,
        force: bool,
        resume: bool,
    },
    /// Download a remote file.
    Get {
        remote: String,
        local: Option<String>,
        force: bool,
        resume: bool,
    },
    /// Show help, for every command or one.
    Help(Option<String>),
    /// Leave.
    Quit,
}

/// Name, usage and one-line description of every command, for `help`.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "put",
        "put [-f] [-c] LOCAL [REMOTE]",
        "upload LOCAL (to REMOTE, default its file name); -f replaces an existing remote file, \
         -c continues an interrupted upload",
    ),
    (
        "get",
        "get [-f] [-c] REMOTE [LOCAL]",
        "download REMOTE (to LOCAL, default its file name here); -f replaces an existing local \
         file, -c continues a partial download (with -f: starts over if it does not match)",
    ),
    (
        "reput",
        "reput LOCAL [REMOTE]",
        "put -c: continue an interrupted upload",
    ),
    (
        "reget",
        "reget REMOTE [LOCAL]",
        "get -c: continue a partial download",
    ),
    (
        "help",
        "help [COMMAND]",
        "list the commands, or explain one",
    ),
    (
        "quit",
        "quit | exit | Ctrl-D",
        "close the connection and leave",
    ),
];

/// The help text for one command, or all of them.
pub fn help(topic: Option<&str>) -> Result<String, ClientError> {
    let rows: Vec<_> = match topic {
        None => COMMANDS.iter().collect(),
        Some(t) => {
            let t = if t == "exit" { "quit" } else { t };
            let row = COMMANDS
                .iter()
                .find(|(name, ..)| *name == t)
                .ok_or_else(|| {
                    ClientError::Usage(format!("help: no command {t:?}; type help for the list"))
                })?;
            vec![row]
        }
    };
    let width = rows
        .iter()
        .map(|(_, usage, _)| usage.len())
        .max()
        .unwrap_or(0);
    Ok(rows
        .iter()
        .map(|(_, usage, what)| format!("{usage:width$}  {what}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Splits a line such as `put "a;b" x; get x` into commands at every `;` (or newline) outside
/// quotes, then each command into words with shell quoting rules.
pub fn parse_line(line: &str) -> Result<Vec<Command>, ClientError> {
    split_commands(line)?
        .iter()
        .map(|words| parse_words(words))
        .collect()
}

fn split_commands(line: &str) -> Result<Vec<Vec<String>>, ClientError> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut flush = |current: &mut String| -> Result<(), ClientError> {
        let words = shell_words::split(current)
            .map_err(|e| ClientError::Usage(format!("cannot parse {current:?}: {e}")))?;
        if !words.is_empty() {
            out.push(words);
        }
        current.clear();
        Ok(())
    };
    for c in line.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && !single {
            escaped = true;
        } else if c == '\'' && !double {
            single = !single;
        } else if c == '"' && !single {
            double = !double;
        } else if (c == ';' || c == '\n') && !single && !double {
            flush(&mut current)?;
            continue;
        }
        current.push(c);
    }
    flush(&mut current)?;
    Ok(out)
}

fn usage_of(name: &str) -> &'static str {
    COMMANDS
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, u, _)| *u)
        .unwrap_or("")
}

/// Parses one command's words.
pub fn parse_words(words: &[String]) -> Result<Command, ClientError> {
    let (name, rest) = words
        .split_first()
        .ok_or_else(|| ClientError::Usage("empty command".into()))?;
    let bad = |why: &str| ClientError::Usage(format!("{name}: {why}; usage: {}", usage_of(name)));
    let mut force = false;
    let mut resume = matches!(name.as_str(), "reput" | "reget");
    let mut args = Vec::new();
    let mut flags_done = false;
    for w in rest {
        match w.as_str() {
            "--" if !flags_done => flags_done = true,
            "-f" | "--force" if !flags_done => force = true,
            "-c" | "--continue" if !flags_done => resume = true,
            "-fc" | "-cf" if !flags_done => (force, resume) = (true, true),
            f if !flags_done && f.starts_with('-') && f.len() > 1 => {
                return Err(bad(&format!("unknown option {f}")))
            }
            _ => args.push(w.clone()),
        }
    }
    let no_flags = |cmd: Command| {
        if force || resume {
            Err(bad("takes no options"))
        } else {
            Ok(cmd)
        }
    };
    match (name.as_str(), args.as_slice()) {
        ("put" | "reput", [local, rest @ ..]) if rest.len() <= 1 => Ok(Command::Put {
            local: local.clone(),
            remote: rest.first().cloned(),
            force,
            resume,
        }),
        ("get" | "reget", [remote, rest @ ..]) if rest.len() <= 1 => Ok(Command::Get {
            remote: remote.clone(),
            local: rest.first().cloned(),
            force,
            resume,
        }),
        ("put" | "get" | "reput" | "reget", _) => Err(bad("wrong number of arguments")),
        ("help" | "?", []) => no_flags(Command::Help(None)),
        ("help" | "?", [topic]) => no_flags(Command::Help(Some(topic.clone()))),
        ("help" | "?", _) => Err(bad("too many arguments")),
        ("quit" | "exit" | "bye", []) => no_flags(Command::Quit),
        ("quit" | "exit" | "bye", _) => Err(bad("takes no arguments")),
        _ => Err(ClientError::Usage(format!(
            "unknown command {name:?}; type help for the list"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(local: &str, remote: Option<&str>, force: bool) -> Command {
        Command::Put {
            local: local.into(),
            remote: remote.map(Into::into),
            force,
            resume: false,
        }
    }

    fn get(remote: &str, local: Option<&str>, force: bool) -> Command {
        Command::Get {
            remote: remote.into(),
            local: local.map(Into::into),
            force,
            resume: false,
        }
    }

    fn resumed(mut c: Command) -> Command {
        match &mut c {
            Command::Put { resume, .. } | Command::Get { resume, .. } => *resume = true,
            _ => {}
        }
        c
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, Result<Vec<Command>, &str>)> = vec![
            ("put a", Ok(vec![put("a", None, false)])),
            ("put a b", Ok(vec![put("a", Some("b"), false)])),
            ("put -f a b", Ok(vec![put("a", Some("b"), true)])),
            ("put a -f", Ok(vec![put("a", None, true)])),
            ("put -- -f", Ok(vec![put("-f", None, false)])),
            ("get x", Ok(vec![get("x", None, false)])),
            ("get -f x y", Ok(vec![get("x", Some("y"), true)])),
            (
                "put a; get a b",
                Ok(vec![put("a", None, false), get("a", Some("b"), false)]),
            ),
            (
                "put 'a;b' \"c d\"",
                Ok(vec![put("a;b", Some("c d"), false)]),
            ),
            (r"put a\;b", Ok(vec![put("a;b", None, false)])),
            ("put \"it's\"", Ok(vec![put("it's", None, false)])),
            ("put ünï\\ cødé", Ok(vec![put("ünï cødé", None, false)])),
            ("  ;; ;", Ok(vec![])),
            ("", Ok(vec![])),
            ("put -c a b", Ok(vec![resumed(put("a", Some("b"), false))])),
            ("reput a", Ok(vec![resumed(put("a", None, false))])),
            ("get -c x", Ok(vec![resumed(get("x", None, false))])),
            (
                "get -c -f x y",
                Ok(vec![resumed(get("x", Some("y"), true))]),
            ),
            ("get -cf x", Ok(vec![resumed(get("x", None, true))])),
            ("reget x y", Ok(vec![resumed(get("x", Some("y"), false))])),
            ("reget", Err("wrong number")),
            ("help -c", Err("takes no options")),
            ("help", Ok(vec![Command::Help(None)])),
            ("help get", Ok(vec![Command::Help(Some("get".into()))])),
            ("quit", Ok(vec![Command::Quit])),
            ("exit", Ok(vec![Command::Quit])),
            ("put", Err("wrong number")),
            ("put a b c", Err("wrong number")),
            ("get", Err("wrong number")),
            ("put -x a", Err("unknown option -x")),
            ("quit now", Err("takes no arguments")),
            ("frobnicate", Err("unknown command")),
            ("put 'unclosed", Err("cannot parse")),
        ];
        for (line, want) in cases {
            match (parse_line(line), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{line:?}"),
                (Err(e), Err(needle)) => {
                    assert!(e.to_string().contains(needle), "{line:?}: {e}")
                }
                (got, want) => panic!("{line:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn help_covers_every_command() {
        let all = help(None).unwrap();
        for (name, ..) in COMMANDS {
            assert!(all.contains(name));
            assert!(help(Some(name)).is_ok());
        }
        assert!(help(Some("nope")).is_err());
    }
}
