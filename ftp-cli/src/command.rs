//! The command language shared by the REPL, `-c`, `-b` and stdin: parsing only, no effects.

use crate::error::ClientError;

/// How a transfer command treats what is already there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `-f`: replace an existing target (with `-c`: start over if the prefix does not match).
    pub force: bool,
    /// `-c`: continue an interrupted transfer.
    pub resume: bool,
    /// `-r`: a whole directory tree.
    pub recursive: bool,
}

/// One command a user can type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Upload a file, or with `-r` a directory tree.
    Put {
        local: String,
        remote: Option<String>,
        flags: Flags,
    },
    /// Download a file, or with `-r` a directory tree.
    Get {
        remote: String,
        local: Option<String>,
        flags: Flags,
    },
    /// Upload every local file matching the patterns into the remote directory.
    Mput {
        patterns: Vec<String>,
        flags: Flags,
    },
    /// Download every remote file matching the patterns into the local directory.
    Mget {
        patterns: Vec<String>,
        flags: Flags,
    },
    Ls {
        long: bool,
        path: Option<String>,
    },
    Cd(String),
    Pwd,
    Mkdir {
        parents: bool,
        path: String,
    },
    Rm(Vec<String>),
    Rmdir(String),
    Rename {
        from: String,
        to: String,
    },
    Stat {
        md5: bool,
        path: String,
    },
    /// Local: change directory (home without an argument).
    Lcd(Option<String>),
    Lpwd,
    Lls(Option<String>),
    /// Local: run a shell command (`!CMD`). Nothing ever runs on the server.
    Shell(String),
    /// Show help, for every command or one.
    Help(Option<String>),
    /// Leave.
    Quit,
}

/// Name, usage and one-line description of every command, for `help` and completion.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "ls",
        "ls [-l] [PATH]",
        "list a remote directory (-l: type, size, time)",
    ),
    ("cd", "cd PATH", "change the remote directory"),
    ("pwd", "pwd", "print the remote directory"),
    (
        "get",
        "get [-f] [-c] [-r] REMOTE [LOCAL]",
        "download REMOTE (to LOCAL, default its name here); -f replaces an existing local file, \
         -c continues a partial download (with -f: starts over if it does not match), -r a tree",
    ),
    (
        "put",
        "put [-f] [-c] [-r] LOCAL [REMOTE]",
        "upload LOCAL (to REMOTE, default its name); -f replaces an existing remote file, \
         -c continues an interrupted upload, -r a tree",
    ),
    (
        "mget",
        "mget [-f] [-c] GLOB...",
        "download every remote file matching the patterns",
    ),
    (
        "mput",
        "mput [-f] [-c] GLOB...",
        "upload every local file matching the patterns",
    ),
    (
        "reget",
        "reget REMOTE [LOCAL]",
        "get -c: continue a partial download",
    ),
    (
        "reput",
        "reput LOCAL [REMOTE]",
        "put -c: continue an interrupted upload",
    ),
    (
        "mkdir",
        "mkdir [-p] PATH",
        "create a remote directory (-p: and its parents)",
    ),
    ("rm", "rm PATH...", "remove remote files"),
    ("rmdir", "rmdir PATH", "remove an empty remote directory"),
    (
        "rename",
        "rename FROM TO | mv FROM TO",
        "rename or move a remote file or directory",
    ),
    (
        "stat",
        "stat [--md5] PATH",
        "show a remote path's type, size and time (and MD5)",
    ),
    ("lcd", "lcd [PATH]", "change the local directory"),
    ("lpwd", "lpwd", "print the local directory"),
    ("lls", "lls [PATH]", "list a local directory"),
    ("!", "!COMMAND", "run COMMAND in the local shell"),
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

/// Every word that starts a command, for completion.
pub const COMMAND_WORDS: &[&str] = &[
    "ls", "cd", "pwd", "get", "put", "mget", "mput", "reget", "reput", "mkdir", "rm", "rmdir",
    "rename", "mv", "stat", "lcd", "lpwd", "lls", "help", "quit", "exit",
];

fn canonical(name: &str) -> &str {
    match name {
        "exit" | "bye" => "quit",
        "mv" => "rename",
        "?" => "help",
        other => other,
    }
}

/// The help text for one command, or all of them.
pub fn help(topic: Option<&str>) -> Result<String, ClientError> {
    let rows: Vec<_> = match topic {
        None => COMMANDS.iter().collect(),
        Some(t) => {
            let t = if t.starts_with('!') {
                "!"
            } else {
                canonical(t)
            };
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
/// quotes, then each command into words with shell quoting rules. A line starting with `!` is
/// one shell command, passed on whole.
pub fn parse_line(line: &str) -> Result<Vec<Command>, ClientError> {
    let (commands, shell) = split_commands(line)?;
    let mut out = commands
        .iter()
        .map(|words| parse_words(words))
        .collect::<Result<Vec<_>, _>>()?;
    out.extend(shell.map(Command::Shell));
    Ok(out)
}

/// The commands before a `!`, split into words, and the shell command the `!` starts, which
/// runs to the end of the line (`;` included), as in other FTP clients.
type Split = (Vec<Vec<String>>, Option<String>);

fn split_commands(line: &str) -> Result<Split, ClientError> {
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
    for (i, c) in line.char_indices() {
        if c == '!' && !single && !double && !escaped && current.trim().is_empty() {
            flush(&mut current)?;
            return Ok((out, Some(line[i + 1..].trim().to_owned())));
        }
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
    Ok((out, None))
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
    let (first, rest) = words
        .split_first()
        .ok_or_else(|| ClientError::Usage("empty command".into()))?;
    let name = canonical(first);
    let bad = |why: &str| ClientError::Usage(format!("{first}: {why}; usage: {}", usage_of(name)));
    // Which single-letter options each command takes; `--md5` is stat's long one.
    let allowed = match name {
        "put" | "get" | "reput" | "reget" => "fcr",
        "mput" | "mget" => "fc",
        "ls" => "l",
        "mkdir" => "p",
        "stat" => "m",
        _ => "",
    };
    let mut opts = String::new();
    let mut args: Vec<String> = Vec::new();
    let mut flags_done = false;
    for w in rest {
        if flags_done || !w.starts_with('-') || w == "-" {
            args.push(w.clone());
            continue;
        }
        let letters = match w.as_str() {
            "--" => {
                flags_done = true;
                continue;
            }
            "--force" => "f",
            "--continue" => "c",
            "--recursive" => "r",
            "--long" => "l",
            "--parents" => "p",
            "--md5" => "m",
            long if long.starts_with("--") => "?",
            short => &short[1..],
        };
        for c in letters.chars() {
            if !allowed.contains(c) {
                return Err(bad(&format!("unknown option {w}")));
            }
            opts.push(c);
        }
    }
    let has = |c| opts.contains(c);
    let flags = Flags {
        force: has('f'),
        resume: has('c') || matches!(name, "reput" | "reget"),
        recursive: has('r'),
    };
    let one = |args: &[String]| match args {
        [a] => Ok(a.clone()),
        _ => Err(bad("takes one path")),
    };
    let at_most_one = |args: &[String]| match args {
        [] => Ok(None),
        [a] => Ok(Some(a.clone())),
        _ => Err(bad("takes at most one path")),
    };
    let none = |args: &[String], cmd: Command| {
        if args.is_empty() {
            Ok(cmd)
        } else {
            Err(bad("takes no arguments"))
        }
    };
    match name {
        "put" | "reput" => match args.as_slice() {
            [local, rest @ ..] if rest.len() <= 1 => Ok(Command::Put {
                local: local.clone(),
                remote: rest.first().cloned(),
                flags,
            }),
            _ => Err(bad("wrong number of arguments")),
        },
        "get" | "reget" => match args.as_slice() {
            [remote, rest @ ..] if rest.len() <= 1 => Ok(Command::Get {
                remote: remote.clone(),
                local: rest.first().cloned(),
                flags,
            }),
            _ => Err(bad("wrong number of arguments")),
        },
        "mput" | "mget" if args.is_empty() => Err(bad("needs at least one pattern")),
        "mput" => Ok(Command::Mput {
            patterns: args,
            flags,
        }),
        "mget" => Ok(Command::Mget {
            patterns: args,
            flags,
        }),
        "ls" => Ok(Command::Ls {
            long: has('l'),
            path: at_most_one(&args)?,
        }),
        "cd" => Ok(Command::Cd(one(&args)?)),
        "pwd" => none(&args, Command::Pwd),
        "mkdir" => Ok(Command::Mkdir {
            parents: has('p'),
            path: one(&args)?,
        }),
        "rm" if args.is_empty() => Err(bad("needs at least one path")),
        "rm" => Ok(Command::Rm(args)),
        "rmdir" => Ok(Command::Rmdir(one(&args)?)),
        "rename" => match args.as_slice() {
            [from, to] => Ok(Command::Rename {
                from: from.clone(),
                to: to.clone(),
            }),
            _ => Err(bad("takes two paths")),
        },
        "stat" => Ok(Command::Stat {
            md5: has('m'),
            path: one(&args)?,
        }),
        "lcd" => Ok(Command::Lcd(at_most_one(&args)?)),
        "lpwd" => none(&args, Command::Lpwd),
        "lls" => Ok(Command::Lls(at_most_one(&args)?)),
        "help" => Ok(Command::Help(at_most_one(&args)?)),
        "quit" => none(&args, Command::Quit),
        _ => Err(ClientError::Usage(format!(
            "unknown command {first:?}; type help for the list"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(spec: &str) -> Flags {
        Flags {
            force: spec.contains('f'),
            resume: spec.contains('c'),
            recursive: spec.contains('r'),
        }
    }

    fn put(local: &str, remote: Option<&str>, f: &str) -> Command {
        Command::Put {
            local: local.into(),
            remote: remote.map(Into::into),
            flags: flags(f),
        }
    }

    fn get(remote: &str, local: Option<&str>, f: &str) -> Command {
        Command::Get {
            remote: remote.into(),
            local: local.map(Into::into),
            flags: flags(f),
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn table() {
        use Command::*;
        let cases: Vec<(&str, Result<Vec<Command>, &str>)> = vec![
            ("put a", Ok(vec![put("a", None, "")])),
            ("put a b", Ok(vec![put("a", Some("b"), "")])),
            ("put -f a b", Ok(vec![put("a", Some("b"), "f")])),
            ("put a -f", Ok(vec![put("a", None, "f")])),
            ("put -- -f", Ok(vec![put("-f", None, "")])),
            ("put -rf dir", Ok(vec![put("dir", None, "fr")])),
            (
                "put --recursive dir r",
                Ok(vec![put("dir", Some("r"), "r")]),
            ),
            ("get x", Ok(vec![get("x", None, "")])),
            ("get -f x y", Ok(vec![get("x", Some("y"), "f")])),
            ("get -c -f x y", Ok(vec![get("x", Some("y"), "cf")])),
            ("get -cf x", Ok(vec![get("x", None, "cf")])),
            ("get -r d", Ok(vec![get("d", None, "r")])),
            ("reget x y", Ok(vec![get("x", Some("y"), "c")])),
            ("reput a", Ok(vec![put("a", None, "c")])),
            (
                "put a; get a b",
                Ok(vec![put("a", None, ""), get("a", Some("b"), "")]),
            ),
            ("put 'a;b' \"c d\"", Ok(vec![put("a;b", Some("c d"), "")])),
            (r"put a\;b", Ok(vec![put("a;b", None, "")])),
            ("put \"it's\"", Ok(vec![put("it's", None, "")])),
            ("put ünï\\ cødé", Ok(vec![put("ünï cødé", None, "")])),
            (
                "mput *.txt b?",
                Ok(vec![Mput {
                    patterns: s(&["*.txt", "b?"]),
                    flags: flags(""),
                }]),
            ),
            (
                "mget -f *.bin",
                Ok(vec![Mget {
                    patterns: s(&["*.bin"]),
                    flags: flags("f"),
                }]),
            ),
            (
                "ls",
                Ok(vec![Ls {
                    long: false,
                    path: None,
                }]),
            ),
            (
                "ls -l /x",
                Ok(vec![Ls {
                    long: true,
                    path: Some("/x".into()),
                }]),
            ),
            ("cd 'a b'", Ok(vec![Cd("a b".into())])),
            ("pwd", Ok(vec![Pwd])),
            (
                "mkdir -p a/b",
                Ok(vec![Mkdir {
                    parents: true,
                    path: "a/b".into(),
                }]),
            ),
            ("rm a b", Ok(vec![Rm(s(&["a", "b"]))])),
            ("rmdir d", Ok(vec![Rmdir("d".into())])),
            (
                "mv a b",
                Ok(vec![Rename {
                    from: "a".into(),
                    to: "b".into(),
                }]),
            ),
            (
                "rename a b",
                Ok(vec![Rename {
                    from: "a".into(),
                    to: "b".into(),
                }]),
            ),
            (
                "stat --md5 f",
                Ok(vec![Stat {
                    md5: true,
                    path: "f".into(),
                }]),
            ),
            (
                "stat f",
                Ok(vec![Stat {
                    md5: false,
                    path: "f".into(),
                }]),
            ),
            ("lcd", Ok(vec![Lcd(None)])),
            ("lcd /tmp", Ok(vec![Lcd(Some("/tmp".into()))])),
            ("lpwd", Ok(vec![Lpwd])),
            ("lls", Ok(vec![Lls(None)])),
            ("!ls -l; echo hi", Ok(vec![Shell("ls -l; echo hi".into())])),
            (
                "lcd d; !touch m; x",
                Ok(vec![Lcd(Some("d".into())), Shell("touch m; x".into())]),
            ),
            ("put 'a!b'", Ok(vec![put("a!b", None, "")])),
            ("  ;; ;", Ok(vec![])),
            ("", Ok(vec![])),
            ("help", Ok(vec![Help(None)])),
            ("help get", Ok(vec![Help(Some("get".into()))])),
            ("quit", Ok(vec![Quit])),
            ("exit", Ok(vec![Quit])),
            ("put", Err("wrong number")),
            ("put a b c", Err("wrong number")),
            ("get", Err("wrong number")),
            ("reget", Err("wrong number")),
            ("put -x a", Err("unknown option -x")),
            ("ls -r", Err("unknown option -r")),
            ("mget", Err("at least one pattern")),
            ("rm", Err("at least one path")),
            ("cd", Err("takes one path")),
            ("mv a", Err("takes two paths")),
            ("quit now", Err("takes no arguments")),
            ("help --md5", Err("unknown option")),
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
    fn help_covers_every_command_word() {
        let all = help(None).unwrap();
        for (name, ..) in COMMANDS {
            assert!(all.contains(name));
            assert!(help(Some(name)).is_ok(), "{name}");
        }
        for word in COMMAND_WORDS {
            assert!(help(Some(word)).is_ok(), "{word}");
        }
        assert!(help(Some("nope")).is_err());
    }
}
