//! The command language shared by the REPL, `-c`, `-b` and stdin: parsing only, no effects.

use crate::error::ClientError;

/// How a transfer command treats what is already there, and how many files it moves at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `-f`: replace an existing target (with `-c`: start over if the prefix does not match).
    pub force: bool,
    /// `-c`: continue an interrupted transfer.
    pub resume: bool,
    /// `-r`: a whole directory tree.
    pub recursive: bool,
    /// `-P N`: files moved at once by a many-file command; the session's `--parallel` without it.
    pub parallel: Option<usize>,
    /// `-v`: a line for every file of a many-file command, even past
    /// [`crate::batch::QUIET_ABOVE`] files (the session's `--verbose` does it for all).
    pub verbose: bool,
}

/// What `mirror` was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorArgs {
    /// `-R`: upload, the local tree being the source.
    pub reverse: bool,
    /// `--delete`: remove from the target what the source no longer has.
    pub delete: bool,
    /// `--dry-run` (`-n`): say what would be done; change nothing.
    pub dry_run: bool,
    /// `--checksum` (`-C`): compare content, not size and time.
    pub checksum: bool,
    /// `--include GLOB`, any number.
    pub include: Vec<String>,
    /// `--exclude GLOB`, any number.
    pub exclude: Vec<String>,
    /// `-P N`.
    pub parallel: Option<usize>,
    /// The source tree (remote, or local with `-R`).
    pub source: String,
    /// The target tree; by default the source's last name, in the current directory.
    pub target: Option<String>,
}

/// How `ls` lists, from its options (`ls -lath` and the like).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListOpts {
    /// `-l`: type, size and time too.
    pub long: bool,
    /// `-a`: names starting with `.` too.
    pub all: bool,
    /// `-h`: sizes as `2.4 MiB` (with `-l`).
    pub human: bool,
    /// `-R`: each subdirectory after its parent, under a `DIR:` line.
    pub recursive: bool,
    /// `-t` or `-S`: newest or largest first, instead of by name.
    pub sort: Sort,
    /// `-r`: the order reversed.
    pub reverse: bool,
}

/// The order of a listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Name,
    /// `-t`: newest first.
    Time,
    /// `-S`: largest first.
    Size,
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
    /// Make a tree like another, moving only what is new or changed.
    Mirror(MirrorArgs),
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
    /// List remote directories, files or globs (the remote directory without a path).
    Ls {
        opts: ListOpts,
        paths: Vec<String>,
    },
    /// Change the remote directory: the top (`/`) without a path, the one before with `-`.
    Cd(Option<String>),
    Pwd,
    Mkdir {
        parents: bool,
        path: String,
    },
    /// Remove remote files (globs allowed); with `-r`, directories and all they hold; with
    /// `-f`, what is not there is no error.
    Rm {
        recursive: bool,
        force: bool,
        paths: Vec<String>,
    },
    Rmdir(String),
    /// Rename, or move into `to` when it is a directory.
    Rename {
        from: String,
        to: String,
    },
    Stat {
        md5: bool,
        path: String,
    },
    /// Print remote files on stdout.
    Cat(Vec<String>),
    /// Total size of remote trees, from their listings.
    Du {
        human: bool,
        paths: Vec<String>,
    },
    /// Disk usage of the server, which it does not report yet.
    Df,
    /// Connect to another server (closing the current connection).
    Open(String),
    /// Log in as another user on the same server.
    User(String),
    /// Close the connection; `open` makes a new one.
    Close,
    /// Local: change directory (home without an argument).
    Lcd(Option<String>),
    Lpwd,
    Lls(Option<String>),
    /// Local: run a shell command (`!CMD`), or an interactive shell (`!` alone). Nothing ever
    /// runs on the server.
    Shell(String),
    /// The interactive shell's history, numbered.
    History,
    /// Show help, for every command or one.
    Help(Option<String>),
    /// Leave.
    Quit,
}

/// One command for `help`, the man page and completion.
pub struct Spec {
    /// The word that runs it.
    pub name: &'static str,
    /// Other words that run it.
    pub aliases: &'static [&'static str],
    /// Its synopsis.
    pub usage: &'static str,
    /// What it does, in a line: the list `help` prints.
    pub summary: &'static str,
    /// Its options and what else `help CMD` says, one entry a line.
    pub details: &'static [&'static str],
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[Spec] = &[
    Spec {
        name: "ls",
        aliases: &["dir"],
        usage: "ls [-laRhtSr1] [PATH|GLOB...]",
        summary: "list remote directories, files or globs",
        details: &[
            "-l  type, size and modification time (local time)",
            "-a  names starting with . too",
            "-h  sizes in KiB, MiB, GiB (with -l)",
            "-R  every subdirectory too, each under a DIR: line",
            "-t  newest first;  -S  largest first;  -r  reversed",
            "-1  one name a line (always so)",
            "A file lists as itself; a GLOB (*.jpg) lists the names it matches.",
        ],
    },
    Spec {
        name: "cd",
        aliases: &[],
        usage: "cd [PATH|-]",
        summary: "change the remote directory (to / without a path, back with -)",
        details: &["cd alone goes to the top of your home (/); cd - to the directory before."],
    },
    Spec {
        name: "pwd",
        aliases: &[],
        usage: "pwd",
        summary: "print the remote directory",
        details: &[],
    },
    Spec {
        name: "get",
        aliases: &[],
        usage: "get [-f] [-c] [-r] [-P N] REMOTE [LOCAL]",
        summary: "download REMOTE (to LOCAL, default its name here)",
        details: &[
            "-f  replace an existing local file",
            "-c  continue a partial download (with -f: start over if it does not match)",
            "-r  a whole directory tree",
            "-P N  files moved at once with -r (default: --parallel)",
            "-v  with -r, a line for every file (past 10 files, only the total by default)",
            "LOCAL may be a directory. At a terminal, an existing LOCAL is not replaced without \
             asking: overwrite, keep both (the new one as NAME (1)), or skip. For several \
             files, use mget.",
        ],
    },
    Spec {
        name: "put",
        aliases: &[],
        usage: "put [-f] [-c] [-r] [-P N] LOCAL [REMOTE]",
        summary: "upload LOCAL (to REMOTE, default its name)",
        details: &[
            "-f  replace an existing remote file",
            "-c  continue an interrupted upload",
            "-r  a whole directory tree",
            "-P N  files moved at once with -r (default: --parallel)",
            "-v  with -r, a line for every file (past 10 files, only the total by default)",
            "REMOTE may be a directory (put f dir/). ~ is your home here. For several files, \
             use mput.",
        ],
    },
    Spec {
        name: "mirror",
        aliases: &[],
        usage: "mirror [-R] [OPTIONS] SRC [DST]",
        summary: "make a local tree like a remote one (-R: a remote tree like a local one)",
        details: &[
            "Moves only files that are new or changed (size or modification time differ).",
            "-R  upload: SRC is local, DST remote",
            "--delete  remove from DST what SRC no longer has",
            "--dry-run, -n  print what would be done; change nothing",
            "--checksum, -C  compare content (the server's recorded digests), not times",
            "--exclude GLOB, -x GLOB  leave out matching paths or names (any number)",
            "--include GLOB, -i GLOB  take only matching paths or names (any number)",
            "-P N  files moved at once (default: --parallel)",
            "DST defaults to SRC's last name, in the current directory.",
        ],
    },
    Spec {
        name: "mget",
        aliases: &[],
        usage: "mget [-f] [-c] [-P N] NAME|GLOB...",
        summary: "download every remote file named or matching the patterns",
        details: &[
            "-f  replace existing local files;  -c  continue partial downloads",
            "-P N  files moved at once (default: --parallel)",
            "-v  a line for every file (past 10 files, only the total by default)",
        ],
    },
    Spec {
        name: "mput",
        aliases: &[],
        usage: "mput [-f] [-c] [-P N] NAME|GLOB...",
        summary: "upload every local file named or matching the patterns",
        details: &[
            "-f  replace existing remote files;  -c  continue interrupted uploads",
            "-P N  files moved at once (default: --parallel)",
            "-v  a line for every file (past 10 files, only the total by default)",
        ],
    },
    Spec {
        name: "reget",
        aliases: &[],
        usage: "reget REMOTE [LOCAL]",
        summary: "get -c: continue a partial download",
        details: &[],
    },
    Spec {
        name: "reput",
        aliases: &[],
        usage: "reput LOCAL [REMOTE]",
        summary: "put -c: continue an interrupted upload",
        details: &[],
    },
    Spec {
        name: "cat",
        aliases: &[],
        usage: "cat REMOTE...",
        summary: "print remote files",
        details: &["At a terminal, what would act on it is shown escaped."],
    },
    Spec {
        name: "mkdir",
        aliases: &[],
        usage: "mkdir [-p] PATH",
        summary: "create a remote directory (-p: and its parents)",
        details: &[],
    },
    Spec {
        name: "rm",
        aliases: &["delete"],
        usage: "rm [-rf] PATH|GLOB...",
        summary: "remove remote files (-r: directories and all they hold)",
        details: &[
            "-r  directories too, and everything in them",
            "-f  what is not there is no error",
            "Globs (*.tmp) match the remote listing.",
        ],
    },
    Spec {
        name: "rmdir",
        aliases: &[],
        usage: "rmdir PATH",
        summary: "remove an empty remote directory",
        details: &[],
    },
    Spec {
        name: "rename",
        aliases: &["mv"],
        usage: "rename FROM TO | mv FROM TO",
        summary: "rename or move a remote file or directory",
        details: &["A TO that is a directory (or ends in /) takes FROM into it."],
    },
    Spec {
        name: "stat",
        aliases: &[],
        usage: "stat [--md5] PATH",
        summary: "show a remote path's type, size and time (and MD5)",
        details: &[],
    },
    Spec {
        name: "du",
        aliases: &[],
        usage: "du [-h] [-s] [PATH...]",
        summary: "total size of remote trees (from their listings)",
        details: &["-h  in KiB, MiB, GiB;  -s  accepted: the total is all du prints"],
    },
    Spec {
        name: "df",
        aliases: &[],
        usage: "df",
        summary: "the server's free space (not reported by the server yet)",
        details: &[],
    },
    Spec {
        name: "open",
        aliases: &[],
        usage: "open HOST[:PORT]",
        summary: "connect to a server (closing the current connection)",
        details: &[],
    },
    Spec {
        name: "user",
        aliases: &[],
        usage: "user NAME",
        summary: "log in as NAME (the password is asked for)",
        details: &[],
    },
    Spec {
        name: "close",
        aliases: &["disconnect"],
        usage: "close",
        summary: "close the connection (open connects again)",
        details: &[],
    },
    Spec {
        name: "lcd",
        aliases: &[],
        usage: "lcd [PATH]",
        summary: "change the local directory (home without a path)",
        details: &[],
    },
    Spec {
        name: "lpwd",
        aliases: &[],
        usage: "lpwd",
        summary: "print the local directory",
        details: &[],
    },
    Spec {
        name: "lls",
        aliases: &[],
        usage: "lls [PATH]",
        summary: "list a local directory",
        details: &[],
    },
    Spec {
        name: "!",
        aliases: &[],
        usage: "!COMMAND | !",
        summary: "run COMMAND in the local shell (! alone: a shell; exit returns)",
        details: &[],
    },
    Spec {
        name: "history",
        aliases: &[],
        usage: "history",
        summary: "the commands typed so far (Ctrl-R searches them)",
        details: &[],
    },
    Spec {
        name: "help",
        aliases: &["?"],
        usage: "help [COMMAND]",
        summary: "list the commands, or explain one",
        details: &[],
    },
    Spec {
        name: "quit",
        aliases: &["exit", "bye"],
        usage: "quit | exit | bye | Ctrl-D",
        summary: "close the connection and leave",
        details: &[],
    },
];

/// Every word that starts a command, for completion and suggestions.
pub const COMMAND_WORDS: &[&str] = &[
    "ls",
    "dir",
    "cd",
    "pwd",
    "get",
    "put",
    "mget",
    "mput",
    "mirror",
    "reget",
    "reput",
    "cat",
    "mkdir",
    "rm",
    "delete",
    "rmdir",
    "rename",
    "mv",
    "stat",
    "du",
    "df",
    "open",
    "user",
    "close",
    "disconnect",
    "lcd",
    "lpwd",
    "lls",
    "history",
    "help",
    "quit",
    "exit",
    "bye",
];

/// The command a word runs: its own name, or the one it is another word for.
fn canonical(name: &str) -> &str {
    COMMANDS
        .iter()
        .find(|c| c.aliases.contains(&name))
        .map_or(name, |c| c.name)
}

fn spec(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|c| c.name == canonical(name))
}

/// The known command closest to `word`, if one is only a typo away (lftp and bash users type
/// `lss`, `mkdri`, `gte`).
pub fn suggest(word: &str) -> Option<&'static str> {
    let word = word.to_lowercase();
    let (best, distance) = COMMAND_WORDS
        .iter()
        .map(|w| (*w, strsim::damerau_levenshtein(&word, w)))
        .min_by_key(|(_, d)| *d)?;
    // One edit for short words, two for longer ones: more would suggest `cd` for anything.
    let allowed = if word.chars().count() <= 3 { 1 } else { 2 };
    (distance <= allowed).then_some(best)
}

/// The help text for one command (its usage, then what it does and its options), or the list
/// of all of them, wrapped to `width` columns.
pub fn help(topic: Option<&str>, width: usize) -> Result<String, ClientError> {
    let width = width.max(40);
    let Some(topic) = topic else {
        let col = COMMANDS.iter().map(|c| c.usage.len()).max().unwrap_or(0);
        // Usage and summary side by side while they fit; else the summary under its usage.
        let col = if col + 2 + 30 <= width { col } else { 0 };
        let mut out = Vec::new();
        for c in COMMANDS {
            if col == 0 {
                out.push(c.usage.to_owned());
                out.extend(wrap(c.summary, width, "    ", "    "));
            } else {
                let lead = format!("{:col$}  ", c.usage);
                let indent = " ".repeat(col + 2);
                out.extend(wrap(c.summary, width, &lead, &indent));
            }
        }
        out.push(String::new());
        out.extend(wrap(
            "help COMMAND explains one. Tab completes commands and paths; ~ in local paths is \
             your home; ; separates commands on a line.",
            width,
            "",
            "",
        ));
        return Ok(out.join("\n"));
    };
    let name = if topic.starts_with('!') { "!" } else { topic };
    let c = spec(name).ok_or_else(|| {
        let hint = suggest(name).map_or(String::new(), |s| format!(" (did you mean {s}?)"));
        ClientError::Usage(format!(
            "help: no command {name:?}{hint}; type help for the list"
        ))
    })?;
    let mut out = wrap(c.usage, width, "usage: ", "         ");
    out.extend(wrap(c.summary, width, "  ", "  "));
    if !c.aliases.is_empty() {
        out.push(format!("  also: {}", c.aliases.join(", ")));
    }
    for d in c.details {
        out.extend(wrap(d, width, "  ", "      "));
    }
    Ok(out.join("\n"))
}

/// `text` in lines of at most `width` columns (longer words alone on theirs), the first after
/// `first`, the rest after `rest`. Runs of spaces inside a line are kept (`-f  replace`).
fn wrap(text: &str, width: usize, first: &str, rest: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_owned();
    let mut empty = true;
    let mut gap = 0;
    for word in text.split(' ') {
        if word.is_empty() {
            gap += 1;
            continue;
        }
        let spaces = gap + 1;
        gap = 0;
        if !empty && line.chars().count() + spaces + word.chars().count() > width {
            lines.push(std::mem::replace(&mut line, rest.to_owned()));
            empty = true;
        }
        if !empty {
            line.push_str(&" ".repeat(spaces));
        }
        line.push_str(word);
        empty = false;
    }
    lines.push(line);
    lines
}

/// One command of a line, with its words as typed, to name it in errors (`get x.jpg: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The command as the user wrote it, words re-quoted where needed.
    pub text: String,
    /// What it parsed into, or why it did not.
    pub command: Result<Command, String>,
}

/// Splits a line such as `put "a;b" x; get x` into commands at every `;` (or newline) outside
/// quotes, then each command into words with shell quoting rules. A line starting with `!` is
/// one shell command, passed on whole.
pub fn parse_line(line: &str) -> Result<Vec<Command>, ClientError> {
    parse_each(line)?
        .into_iter()
        .map(|p| p.command.map_err(ClientError::Usage))
        .collect()
}

/// Like [`parse_line`], keeping each command's text beside it, and a command that does not
/// parse as its error, so that the ones before it can run first.
pub fn parse_each(line: &str) -> Result<Vec<Parsed>, ClientError> {
    let (commands, shell) = split_commands(line)?;
    let mut out: Vec<Parsed> = commands
        .iter()
        .map(|words| Parsed {
            text: shell_words::join(words),
            command: parse_words(words).map_err(|e| e.to_string()),
        })
        .collect();
    out.extend(shell.map(|cmd| Parsed {
        text: format!("!{cmd}"),
        command: Ok(Command::Shell(cmd)),
    }));
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

/// `mirror`'s words: its long options take values, which the other commands' do not.
fn parse_mirror(words: &[String]) -> Result<MirrorArgs, String> {
    let mut m = MirrorArgs::default();
    let mut paths = Vec::new();
    let mut words = words.iter();
    let mut flags_done = false;
    while let Some(w) = words.next() {
        let mut value = |what: &str| {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("{w} needs {what}"))
        };
        match w.as_str() {
            _ if flags_done || !w.starts_with('-') || w == "-" => paths.push(w.clone()),
            "--" => flags_done = true,
            "-R" | "--reverse" => m.reverse = true,
            "--delete" => m.delete = true,
            "-n" | "--dry-run" => m.dry_run = true,
            "-C" | "--checksum" => m.checksum = true,
            "--exclude" | "-x" => m.exclude.push(value("a glob")?),
            "--include" | "-i" => m.include.push(value("a glob")?),
            "-P" | "--parallel" => m.parallel = Some(count(&value("a number of files")?)?),
            p if p.starts_with("-P") => m.parallel = Some(count(&p[2..])?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    for glob in m.include.iter().chain(&m.exclude) {
        glob::Pattern::new(glob).map_err(|e| format!("bad pattern {glob:?}: {e}"))?;
    }
    match paths.as_slice() {
        [source] => m.source = source.clone(),
        [source, target] => (m.source, m.target) = (source.clone(), Some(target.clone())),
        _ => return Err("takes a source and at most a target".into()),
    }
    Ok(m)
}

/// Parses one command's words.
pub fn parse_words(words: &[String]) -> Result<Command, ClientError> {
    let (first, rest) = words
        .split_first()
        .ok_or_else(|| ClientError::Usage("empty command".into()))?;
    let name = canonical(first);
    let Some(spec) = spec(name) else {
        let hint = match suggest(first) {
            Some(s) => format!("; did you mean {s}?"),
            None => String::new(),
        };
        return Err(ClientError::Usage(format!(
            "unknown command {first:?}{hint} (help lists them)"
        )));
    };
    let bad = |why: &str| ClientError::Usage(format!("{first}: {why}; usage: {}", spec.usage));
    if name == "mirror" {
        return parse_mirror(rest).map(Command::Mirror).map_err(|e| bad(&e));
    }
    // Which single-letter options each command takes; `--md5` is stat's long one, `P` takes a
    // number.
    let allowed = match name {
        "put" | "get" | "reput" | "reget" => "fcrvP",
        "mput" | "mget" => "fcvP",
        "ls" => "laRhtSr1",
        "mkdir" => "p",
        "stat" => "m",
        "rm" => "rf",
        "du" => "hs",
        _ => "",
    };
    let mut opts = String::new();
    let mut parallel = None;
    let mut args: Vec<String> = Vec::new();
    let mut flags_done = false;
    let mut words = rest.iter();
    while let Some(w) = words.next() {
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
            "--verbose" => "v",
            "--long" => "l",
            "--all" => "a",
            "--human-readable" => "h",
            "--parents" => "p",
            "--md5" => "m",
            "--parallel" => "P",
            long if long.starts_with("--parallel=") => {
                parallel = Some(count(&long["--parallel=".len()..]).map_err(|e| bad(&e))?);
                continue;
            }
            long if long.starts_with("--") => "?",
            short => &short[1..],
        };
        for (i, c) in letters.char_indices() {
            if !allowed.contains(c) {
                return Err(bad(&format!("unknown option {w}")));
            }
            if c == 'P' {
                // `-P4`, or `-P 4`.
                let value = match &letters[i + 1..] {
                    "" => words
                        .next()
                        .ok_or_else(|| bad("-P needs a number of files"))?
                        .as_str(),
                    v => v,
                };
                parallel = Some(count(value).map_err(|e| bad(&e))?);
                break;
            }
            opts.push(c);
        }
    }
    let has = |c| opts.contains(c);
    let flags = Flags {
        force: has('f'),
        resume: has('c') || matches!(name, "reput" | "reget"),
        recursive: has('r'),
        parallel,
        verbose: has('v'),
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
    let several = |what: &str, args: Vec<String>| -> Result<Vec<String>, ClientError> {
        if args.is_empty() {
            Err(bad(&format!("needs at least one {what}")))
        } else {
            Ok(args)
        }
    };
    match name {
        "put" | "reput" => match args.as_slice() {
            [local, rest @ ..] if rest.len() <= 1 => Ok(Command::Put {
                local: local.clone(),
                remote: rest.first().cloned(),
                flags,
            }),
            [_, _, _, ..] => Err(bad(&format!(
                "takes one file (and where to put it); for several, use mput {}",
                shell_words::join(&args)
            ))),
            _ => Err(bad("wrong number of arguments")),
        },
        "get" | "reget" => match args.as_slice() {
            [remote, rest @ ..] if rest.len() <= 1 => Ok(Command::Get {
                remote: remote.clone(),
                local: rest.first().cloned(),
                flags,
            }),
            [_, _, _, ..] => Err(bad(&format!(
                "takes one file (and where to put it); for several, use mget {}",
                shell_words::join(&args)
            ))),
            _ => Err(bad("wrong number of arguments")),
        },
        "mput" => Ok(Command::Mput {
            patterns: several("pattern", args)?,
            flags,
        }),
        "mget" => Ok(Command::Mget {
            patterns: several("pattern", args)?,
            flags,
        }),
        "ls" => Ok(Command::Ls {
            opts: ListOpts {
                long: has('l'),
                all: has('a'),
                human: has('h'),
                recursive: has('R'),
                // The last of -t and -S wins, as in ls.
                sort: match opts.rfind(['t', 'S']).map(|i| &opts[i..=i]) {
                    Some("t") => Sort::Time,
                    Some("S") => Sort::Size,
                    _ => Sort::Name,
                },
                reverse: has('r'),
            },
            paths: args,
        }),
        "cd" => Ok(Command::Cd(at_most_one(&args)?)),
        "pwd" => none(&args, Command::Pwd),
        "mkdir" => Ok(Command::Mkdir {
            parents: has('p'),
            path: one(&args)?,
        }),
        "rm" => Ok(Command::Rm {
            recursive: has('r'),
            force: has('f'),
            paths: several("path", args)?,
        }),
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
        "cat" => Ok(Command::Cat(several("file", args)?)),
        "du" => Ok(Command::Du {
            human: has('h'),
            paths: args,
        }),
        "df" => Ok(Command::Df),
        "open" => match args.as_slice() {
            [host] => Ok(Command::Open(host.clone())),
            _ => Err(bad("takes one HOST[:PORT]")),
        },
        "user" => match args.as_slice() {
            [user] => Ok(Command::User(user.clone())),
            _ => Err(bad("takes one user name")),
        },
        "close" => none(&args, Command::Close),
        "lcd" => Ok(Command::Lcd(at_most_one(&args)?)),
        "lpwd" => none(&args, Command::Lpwd),
        "lls" => Ok(Command::Lls(at_most_one(&args)?)),
        "history" => none(&args, Command::History),
        "help" => Ok(Command::Help(at_most_one(&args)?)),
        "quit" => none(&args, Command::Quit),
        // `!` never reaches here: the line splitter takes it.
        _ => Err(ClientError::Usage(format!("{first}: not a command here"))),
    }
}

/// The number `-P` takes: 1 to 32 files at once, as `--parallel`.
fn count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n @ 1..=32) => Ok(n),
        _ => Err(format!("-P takes a number from 1 to 32, not {value:?}")),
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
            parallel: None,
            verbose: spec.contains('v'),
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

    /// `ls` with the options in `spec` (letters as ls takes them) and `paths`.
    fn ls(spec: &str, paths: &[&str]) -> Command {
        Command::Ls {
            opts: ListOpts {
                long: spec.contains('l'),
                all: spec.contains('a'),
                human: spec.contains('h'),
                recursive: spec.contains('R'),
                sort: if spec.contains('t') {
                    Sort::Time
                } else if spec.contains('S') {
                    Sort::Size
                } else {
                    Sort::Name
                },
                reverse: spec.contains('r'),
            },
            paths: s(paths),
        }
    }

    #[test]
    fn table() {
        use Command::*;
        let p4 = Flags {
            recursive: true,
            parallel: Some(4),
            ..Flags::default()
        };
        let cases: Vec<(&str, Result<Vec<Command>, &str>)> = vec![
            ("put a", Ok(vec![put("a", None, "")])),
            ("put a b", Ok(vec![put("a", Some("b"), "")])),
            ("put -f a b", Ok(vec![put("a", Some("b"), "f")])),
            ("put -rv a b", Ok(vec![put("a", Some("b"), "rv")])),
            ("put --verbose a", Ok(vec![put("a", None, "v")])),
            ("put a -f", Ok(vec![put("a", None, "f")])),
            ("put -- -f", Ok(vec![put("-f", None, "")])),
            ("put -rf dir", Ok(vec![put("dir", None, "fr")])),
            (
                "put --recursive dir r",
                Ok(vec![put("dir", Some("r"), "r")]),
            ),
            ("put ~/x", Ok(vec![put("~/x", None, "")])),
            (
                "put f remotedir/",
                Ok(vec![put("f", Some("remotedir/"), "")]),
            ),
            // -P N, as put -r and the many-file commands take it.
            (
                "put -r -P 4 dir",
                Ok(vec![Put {
                    local: "dir".into(),
                    remote: None,
                    flags: p4,
                }]),
            ),
            (
                "put -rP4 dir",
                Ok(vec![Put {
                    local: "dir".into(),
                    remote: None,
                    flags: p4,
                }]),
            ),
            (
                "get -r --parallel=4 dir",
                Ok(vec![Get {
                    remote: "dir".into(),
                    local: None,
                    flags: p4,
                }]),
            ),
            (
                "mget -P 2 *.jpg",
                Ok(vec![Mget {
                    patterns: s(&["*.jpg"]),
                    flags: Flags {
                        parallel: Some(2),
                        ..Flags::default()
                    },
                }]),
            ),
            ("put -P 0 d", Err("from 1 to 32")),
            ("put -P x d", Err("from 1 to 32")),
            ("put -r d -P", Err("-P needs a number")),
            ("get x", Ok(vec![get("x", None, "")])),
            ("get -f x y", Ok(vec![get("x", Some("y"), "f")])),
            ("get -c -f x y", Ok(vec![get("x", Some("y"), "cf")])),
            ("get -cf x", Ok(vec![get("x", None, "cf")])),
            ("get -r d", Ok(vec![get("d", None, "r")])),
            ("get a b c", Err("use mget a b c")),
            ("put a b c", Err("use mput a b c")),
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
                "mget -f *.bin plain.txt",
                Ok(vec![Mget {
                    patterns: s(&["*.bin", "plain.txt"]),
                    flags: flags("f"),
                }]),
            ),
            ("ls", Ok(vec![ls("", &[])])),
            ("ls -l /x", Ok(vec![ls("l", &["/x"])])),
            ("ls -la", Ok(vec![ls("la", &[])])),
            ("ls -lh x", Ok(vec![ls("lh", &["x"])])),
            ("ls -l -a -h -1", Ok(vec![ls("lah", &[])])),
            ("ls -R d", Ok(vec![ls("R", &["d"])])),
            ("ls -lt", Ok(vec![ls("lt", &[])])),
            ("ls -lS", Ok(vec![ls("lS", &[])])),
            // The last of -t and -S wins.
            ("ls -tS", Ok(vec![ls("S", &[])])),
            ("ls -St", Ok(vec![ls("t", &[])])),
            ("ls -ltr", Ok(vec![ls("ltr", &[])])),
            ("ls *.jpg b", Ok(vec![ls("", &["*.jpg", "b"])])),
            ("ls --all --long", Ok(vec![ls("la", &[])])),
            ("dir", Ok(vec![ls("", &[])])),
            ("dir -l x", Ok(vec![ls("l", &["x"])])),
            ("cd 'a b'", Ok(vec![Cd(Some("a b".into()))])),
            ("cd", Ok(vec![Cd(None)])),
            ("cd -", Ok(vec![Cd(Some("-".into()))])),
            ("pwd", Ok(vec![Pwd])),
            (
                "mkdir -p a/b",
                Ok(vec![Mkdir {
                    parents: true,
                    path: "a/b".into(),
                }]),
            ),
            (
                "rm a b",
                Ok(vec![Rm {
                    recursive: false,
                    force: false,
                    paths: s(&["a", "b"]),
                }]),
            ),
            (
                "rm -rf d *.tmp",
                Ok(vec![Rm {
                    recursive: true,
                    force: true,
                    paths: s(&["d", "*.tmp"]),
                }]),
            ),
            (
                "delete x",
                Ok(vec![Rm {
                    recursive: false,
                    force: false,
                    paths: s(&["x"]),
                }]),
            ),
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
            ("cat a b", Ok(vec![Cat(s(&["a", "b"]))])),
            (
                "du",
                Ok(vec![Du {
                    human: false,
                    paths: vec![],
                }]),
            ),
            (
                "du -sh d",
                Ok(vec![Du {
                    human: true,
                    paths: s(&["d"]),
                }]),
            ),
            ("df", Ok(vec![Df])),
            ("open host:2121", Ok(vec![Open("host:2121".into())])),
            ("user alice", Ok(vec![User("alice".into())])),
            ("close", Ok(vec![Close])),
            ("history", Ok(vec![History])),
            ("lcd", Ok(vec![Lcd(None)])),
            ("lcd /tmp", Ok(vec![Lcd(Some("/tmp".into()))])),
            ("lcd ~", Ok(vec![Lcd(Some("~".into()))])),
            ("lpwd", Ok(vec![Lpwd])),
            ("lls", Ok(vec![Lls(None)])),
            ("!ls -l; echo hi", Ok(vec![Shell("ls -l; echo hi".into())])),
            ("!", Ok(vec![Shell(String::new())])),
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
            ("bye", Ok(vec![Quit])),
            ("put", Err("wrong number")),
            ("get", Err("wrong number")),
            ("reget", Err("wrong number")),
            ("put -x a", Err("unknown option -x")),
            ("ls -z", Err("unknown option -z")),
            ("mget", Err("at least one pattern")),
            ("rm", Err("at least one path")),
            ("cat", Err("at least one file")),
            ("cd a b", Err("at most one path")),
            ("mv a", Err("takes two paths")),
            ("open", Err("HOST")),
            ("quit now", Err("takes no arguments")),
            ("help --md5", Err("unknown option")),
            ("frobnicate", Err("unknown command")),
            ("lss", Err("did you mean ls?")),
            ("mkdri x", Err("did you mean mkdir?")),
            ("gte x", Err("did you mean get?")),
            ("pwdd", Err("did you mean pwd?")),
            ("quti", Err("did you mean quit?")),
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
    fn suggestions_are_a_typo_away_or_none() {
        for (typed, want) in [
            ("lss", Some("ls")),
            ("LS", Some("ls")),
            ("mkdri", Some("mkdir")),
            ("rmdri", Some("rmdir")),
            ("mgte", Some("mget")),
            ("lpdw", Some("lpwd")),
            ("hlep", Some("help")),
            ("frobnicate", None),
            ("xyz", None),
            ("zz", None),
        ] {
            assert_eq!(suggest(typed), want, "{typed}");
        }
    }

    #[test]
    fn each_command_keeps_its_text_for_errors() {
        let got = parse_each("put 'a b' x; frob; !echo hi").unwrap();
        assert_eq!(got[0].text, "put 'a b' x");
        assert!(got[0].command.is_ok());
        assert_eq!(got[1].text, "frob");
        assert!(got[1].command.as_ref().unwrap_err().contains("unknown"));
        assert_eq!(got[2].text, "!echo hi");
    }

    #[test]
    fn help_covers_every_command_word() {
        let all = help(None, 100).unwrap();
        for c in COMMANDS {
            assert!(all.contains(c.usage), "{}", c.name);
            assert!(help(Some(c.name), 80).is_ok(), "{}", c.name);
        }
        for word in COMMAND_WORDS {
            assert!(help(Some(word), 80).is_ok(), "{word}");
            assert!(spec(word).is_some(), "{word}");
        }
        assert!(help(Some("nope"), 80).is_err());
        assert!(help(Some("lss"), 80)
            .unwrap_err()
            .to_string()
            .contains("ls"));
    }

    #[test]
    fn help_for_one_command_gives_its_options() {
        let ls = help(Some("ls"), 80).unwrap();
        assert!(ls.starts_with("usage: ls [-laRhtSr1]"), "{ls}");
        for opt in ["-l ", "-a ", "-h ", "-R ", "-t ", "-S ", "-1 "] {
            assert!(ls.contains(opt), "help ls lacks {opt}: {ls}");
        }
        assert!(help(Some("dir"), 80).unwrap().starts_with("usage: ls"));
        assert!(help(Some("mv"), 80).unwrap().starts_with("usage: rename"));
    }

    #[test]
    fn help_fits_the_width() {
        for width in [40, 60, 80, 120] {
            for text in [
                help(None, width).unwrap(),
                help(Some("get"), width).unwrap(),
            ] {
                for line in text.lines() {
                    // A single word longer than the width is the only excuse.
                    assert!(
                        line.chars().count() <= width || !line.trim().contains(' '),
                        "{width}: {line:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn wraps_at_word_boundaries() {
        assert_eq!(wrap("a bb ccc", 6, "", "  "), ["a bb", "  ccc"]);
        assert_eq!(wrap("word", 2, "> ", "  "), ["> word"]);
        assert_eq!(wrap("-f  force it", 20, "  ", "      "), ["  -f  force it"]);
    }
}
