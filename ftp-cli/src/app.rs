//! Runs parsed commands against a server: [`App`], the one place commands take effect.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::{Entry, EntryKind, ErrorCode};

use crate::batch;
use crate::client::{Credentials, NoProgress, Progress, TransferOptions};
use crate::command::{self, Command, Flags, ListOpts, Sort};
use crate::completion::Listings;
use crate::error::{ClientError, Result};
use crate::keys::ClientKey;
use crate::link::{Dial, Link};
use crate::local_cmds::{self, expand};
use crate::output::{human_size, Output, Shown};
use crate::progress::Bar;
use crate::retry::{transfer, Transfer};
use crate::tree::{self, file_name};

/// Deepest tree `ls -R`, `rm -r` and `du` descend into.
const MAX_DEPTH: usize = 64;
/// Most entries `rm -r` and `du` take from the listings of one tree: past it they stop, rather
/// than hold a server's endless tree in memory.
const MAX_TREE_ENTRIES: usize = 1_000_000;

/// Asks the person at the terminal a question and returns the line they answer (`None`: they
/// pressed Ctrl-C or Ctrl-D).
pub type Ask = Box<dyn FnMut(&str) -> Option<String>>;

/// What `user NAME` logs in with besides the name: what the command line gave.
#[derive(Default)]
pub struct Login {
    /// The key (`-i FILE`, or the default one), if any.
    pub key: Option<Arc<ClientKey>>,
    /// The password from `--secret-file` or `FTP_CLI_SECRET`, if given.
    pub secret: Option<Vec<u8>>,
    /// The server as the password prompt names it, kept up to date by `open`.
    pub host: Arc<std::sync::Mutex<String>>,
}

/// What the caller should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// A client session as the user sees it: a server address, a connection made on demand, the
/// remote directory (restored when the connection has to be made again).
pub struct App {
    /// Runs the async client for the commands, which arrive one at a time from blocking code.
    runtime: tokio::runtime::Runtime,
    /// How to reach the server, for the session's connection and a batch's extra ones.
    dial: Dial,
    /// The connection commands use.
    link: Link,
    /// How often a failed transfer is resumed before the command fails.
    retries: u32,
    /// Files a many-file command moves at once, each on a connection of its own.
    parallel: usize,
    /// Where everything the session prints goes.
    output: Output,
    /// Recent remote listings, for tab completion.
    listings: Listings,
    /// The remote directory before the last `cd`, for `cd -`.
    prev_cwd: Option<String>,
    /// What `user NAME` logs in with.
    login: Login,
    /// Asks the person at the terminal (the interactive shell only): whether to replace a
    /// file, their password again.
    ask: Option<Ask>,
}

/// Runs an async client call on the connection (made first if needed), and forgets a
/// connection that failed under it.
macro_rules! remote {
    ($app:expr, $c:ident => $call:expr) => {{
        let (dial, link) = (&$app.dial, &mut $app.link);
        let r = $app.runtime.block_on(async {
            let $c = link.client(dial).await?;
            $call.await
        });
        $app.link.forget_if_broken(&r);
        r
    }};
}

/// Like [`remote!`], for a request that may be sent twice: after a failed link it reconnects
/// and asks again (up to `--retries` times), saying so, as transfers do.
macro_rules! remote_again {
    ($app:expr, $c:ident => $call:expr) => {{
        let mut attempt = 0;
        loop {
            let r = remote!($app, $c => $call);
            let Err(e) = &r else { break r };
            attempt += 1;
            let Some(wait) = crate::retry::again(e, attempt, $app.retries) else {
                break r;
            };
            $app.output
                .diagnostic(format_args!("{e}, asking again ({attempt}/{})", $app.retries));
            $app.link.forget();
            std::thread::sleep(wait);
        }
    }};
}

impl App {
    pub fn new(dial: Dial, retries: u32, parallel: usize, output: Output) -> Result<App> {
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|e| ClientError::Usage(format!("cannot start the async runtime: {e}")))?;
        Ok(App {
            runtime,
            dial,
            link: Link::new("/".into()),
            retries,
            parallel: parallel.max(1),
            output,
            listings: Listings::default(),
            prev_cwd: None,
            login: Login::default(),
            ask: None,
        })
    }

    /// What `user NAME` logs in with besides the name.
    pub fn set_login(&mut self, login: Login) {
        self.login = login;
    }

    /// Makes the session interactive: questions go to `ask`.
    pub fn set_ask(&mut self, ask: Ask) {
        self.ask = Some(ask);
    }

    /// Whether there is a server to talk to (`ftp-cli` may start without one; `open` names it).
    pub fn has_host(&self) -> bool {
        !self.dial.addr.is_empty()
    }

    fn ask(&mut self, question: &str) -> Option<String> {
        self.ask.as_mut().and_then(|ask| ask(question))
    }

    /// The prompt: server, user and remote directory (`ftp alice@127.0.0.1:2121:/photos> `);
    /// `ftp> ` with no server yet.
    pub fn prompt(&self) -> String {
        if !self.has_host() {
            return "ftp> ".into();
        }
        let who = match &self.dial.creds {
            Some(c) => format!("{}@{}", c.user, self.dial.addr),
            None => self.dial.addr.clone(),
        };
        // The directory is the server's word: escaped, it cannot draw on the terminal.
        format!("ftp {who}:{}> ", Shown(&self.link.cwd))
    }

    /// How long a lost server is tried again before a command fails (`--retry-for`), apart
    /// from the retries: it may be restarting.
    pub fn set_retry_for(&mut self, d: std::time::Duration) {
        crate::retry::set_reconnect_for(d);
    }

    /// Where everything the session prints goes.
    pub fn output(&self) -> &Output {
        &self.output
    }

    /// Takes over Ctrl-C for the whole of an interactive session. A transfer listens for it
    /// to stop cleanly; but the handler is installed only when first listened for, and a
    /// Ctrl-C that came in between a command's start (a bar already drawn) and that moment
    /// killed the shell. Installed up front, a Ctrl-C outside a transfer does nothing (at the
    /// prompt the line editor clears the line).
    pub fn own_ctrl_c(&self) -> Result<()> {
        self.runtime.block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .map(drop)
                .map_err(|e| ClientError::Internal(format!("cannot watch for Ctrl-C: {e}")))
        })
    }

    /// Connects if there is no live connection, logging in and going back to the remote
    /// directory the user was in.
    pub fn connect(&mut self) -> Result<()> {
        let (dial, link) = (&self.dial, &mut self.link);
        self.runtime.block_on(link.client(dial)).map(|_| ())
    }

    /// Connects as [`connect`](Self::connect) does; at a terminal, a login refused for a wrong
    /// password asks for it again (three tries, as ssh), and a server that wants a user name
    /// asks for one, instead of leaving a shell where every command fails.
    pub fn connect_interactively(&mut self) -> Result<()> {
        let mut tries = 0;
        loop {
            let err = match self.connect() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            tries += 1;
            let ClientError::Auth(why) = &err else {
                return Err(err);
            };
            let (Some(ask_password), true) = (self.dial.ask_password.clone(), self.ask.is_some())
            else {
                return Err(err);
            };
            if tries >= 3 {
                return Err(err);
            }
            if why.contains("requires a user name") {
                self.output.diagnostic(&err);
                let Some(name) = self.ask("Name: ").filter(|n| !n.trim().is_empty()) else {
                    return Err(err);
                };
                let creds = Credentials::new(name.trim().into(), None, self.login.key.clone());
                self.dial.creds = Some(creds);
            } else if why.starts_with("authentication failed") {
                let Some(creds) = self.dial.creds.clone() else {
                    return Err(err);
                };
                self.output.diagnostic(format_args!("{err}; try again"));
                let Some(password) = ask_password(&creds.user) else {
                    return Err(err);
                };
                // New credentials, not the old ones with a new password: they keep the key
                // derived from the wrong password for the server's salt.
                let user = creds.user.clone();
                self.dial.creds = Some(Credentials::new(user, Some(password), creds.key));
            } else {
                return Err(err);
            }
        }
    }
    /// Runs one command.
    pub fn run(&mut self, cmd: Command) -> Result<Flow> {
        if !matches!(cmd, Command::Ls { .. } | Command::Stat { .. }) {
            self.listings.clear();
        }
        if needs_server(&cmd) && !self.has_host() {
            return Err(ClientError::Usage(
                "not connected: open HOST[:PORT] first".into(),
            ));
        }
        match cmd {
            Command::Help(topic) => {
                let width = console::Term::stdout()
                    .size_checked()
                    .map_or(80, |(_, cols)| usize::from(cols));
                self.output
                    .line(command::help(topic.as_deref(), width.saturating_sub(1))?)?
            }
            Command::Quit => return Ok(Flow::Quit),
            Command::Put {
                local,
                remote,
                flags,
            } => self.put(expand(&local), remote, flags)?,
            Command::Get {
                remote,
                local,
                flags,
            } => self.get(remote, local.map(|l| expand(&l)), flags)?,
            Command::Mput { patterns, flags } => {
                let patterns: Vec<String> = patterns
                    .iter()
                    .map(|p| local_cmds::expand_pattern(p))
                    .collect();
                let items = tree::mput(&patterns, &self.output)?;
                self.batch(items, flags, "mput")?;
            }
            Command::Mirror(args) => self.mirror(args)?,
            Command::Mget { patterns, flags } => {
                let list = |dir: &str| remote_again!(self, c => c.list(dir));
                let items = tree::mget(&patterns, &self.output, list)?;
                let mut flags = flags;
                let items = self.ask_about_existing_files(items, &mut flags, "mget")?;
                self.batch(items, flags, "mget")?;
            }
            Command::Ls { opts, paths } => self.ls(opts, paths)?,
            Command::Cd(path) => {
                let path = match path.as_deref() {
                    // The top of the user's home, which is all the server shows them.
                    None => "/".to_owned(),
                    Some("-") => self.prev_cwd.clone().ok_or_else(|| {
                        ClientError::Usage("cd -: no directory before this one".into())
                    })?,
                    Some(p) => p.to_owned(),
                };
                let new = remote_again!(self, c => c.cd(&path))?;
                let old = std::mem::replace(&mut self.link.cwd, new);
                if old != self.link.cwd {
                    self.prev_cwd = Some(old);
                }
            }
            Command::Pwd => {
                let cwd = remote_again!(self, c => c.pwd())?;
                self.output.directory("pwd", &cwd)?;
                self.link.cwd = cwd;
            }
            Command::Mkdir { parents, path } => remote!(self, c => c.mkdir(&path, parents))?,
            Command::Rm {
                recursive,
                force,
                paths,
            } => self.rm(recursive, force, paths)?,
            Command::Rmdir(path) => remote!(self, c => c.rmdir(&path))?,
            Command::Rename { from, to } => {
                let to = if to.ends_with('/') || self.is_remote_dir(&to) {
                    join(&to, base_name(&from))
                } else {
                    to
                };
                remote!(self, c => c.rename(&from, &to))?
            }
            Command::Stat { md5, path } => {
                let r = remote_again!(self, c => c.stat(&path, md5))?;
                self.output.stat(&r)?;
            }
            Command::Cat(paths) => {
                for path in paths {
                    self.cat(&path)?;
                }
            }
            Command::Du { human, paths } => self.du(human, paths)?,
            Command::Df => match remote_again!(self, c => c.df())? {
                Some(r) => self.output.df(&r)?,
                None => self
                    .output
                    .diagnostic("df: this server does not report usage (du sums what you have)"),
            },
            Command::Open(host) => {
                self.close();
                *self.login.host.lock().unwrap_or_else(|e| e.into_inner()) = host.clone();
                self.dial.addr = host;
                self.link = Link::new("/".into());
                self.prev_cwd = None;
                self.login_now()?;
            }
            Command::User(name) => {
                self.close();
                let (key, secret) = (self.login.key.clone(), self.login.secret.clone());
                self.dial.creds = Some(Credentials::new(name, secret, key));
                self.link = Link::new("/".into());
                self.prev_cwd = None;
                self.login_now()?;
            }
            Command::Close => {
                self.close();
                self.dial.addr.clear();
                self.link = Link::new("/".into());
                self.prev_cwd = None;
            }
            Command::Lcd(path) => local_cmds::lcd(path)?,
            Command::Lpwd => local_cmds::lpwd(&self.output)?,
            Command::Lls(path) => local_cmds::lls(path, &self.output)?,
            Command::Shell(cmd) => local_cmds::shell(&cmd)?,
            Command::History => {
                return Err(ClientError::Usage(
                    "history: there is none outside the interactive shell".into(),
                ))
            }
        }
        Ok(Flow::Continue)
    }

    /// Connects now (`open`, `user`), asking again at a terminal if the login fails.
    fn login_now(&mut self) -> Result<()> {
        if self.ask.is_some() {
            self.connect_interactively()
        } else {
            self.connect()
        }
    }

    fn put(&mut self, local: PathBuf, remote: Option<String>, flags: Flags) -> Result<()> {
        if !flags.recursive && local.is_dir() {
            let shown = local.display();
            return Err(ClientError::Usage(format!(
                "put {shown}: a directory; put -r {shown} sends it and all it holds"
            )));
        }
        let name = file_name(&local)?;
        let remote = match remote {
            None => name,
            Some(r) if flags.recursive => r,
            // Into a remote directory, as cp does: `put f dir/`, or `put f dir` when it is one.
            Some(r) if r.ends_with('/') || self.is_remote_dir(&r) => join(&r, &name),
            Some(r) => r,
        };
        if flags.recursive {
            let (dirs, items) = tree::put_tree(&local, &remote, &self.output)?;
            for dir in &dirs {
                remote_again!(self, c => c.mkdir(dir, true))?;
            }
            let what = format!("put -r {}", local.display());
            self.batch(items, flags, &what)
        } else {
            self.single(Transfer::Put { local, remote }, flags)
        }
    }

    fn get(&mut self, remote: String, local: Option<PathBuf>, mut flags: Flags) -> Result<()> {
        let local = match local {
            Some(l) => l,
            None => PathBuf::from(file_name(Path::new(&remote))?),
        };
        if flags.recursive {
            let list = |dir: &str| remote_again!(self, c => c.list(dir));
            let items = tree::get_tree(&remote, &local, &self.output, list)?;
            let what = format!("get -r {remote}");
            let items = self.ask_about_existing_files(items, &mut flags, &what)?;
            return self.batch(items, flags, &what);
        }
        let mut local = if local.is_dir() {
            local.join(file_name(Path::new(&remote))?)
        } else {
            local
        };
        if self.ask.is_some() && !flags.force && !flags.resume && local.symlink_metadata().is_ok() {
            match self.ask_about_existing(&local) {
                Existing::Overwrite => flags.force = true,
                Existing::KeepBoth(other) => local = other,
                Existing::Skip => {
                    let shown = Shown(local.display());
                    return self
                        .output
                        .line(format_args!("get {remote}: skipped, {shown} kept"));
                }
            }
        }
        let part = crate::client::part_path(&local);
        let kept = part
            .symlink_metadata()
            .ok()
            .filter(|m| m.is_file() && m.len() > 0)
            .map(|m| m.len());
        if let (Some(bytes), false, false) = (kept, flags.resume, flags.force) {
            match self.about_a_kept_part(&remote, &part, bytes) {
                Kept::Continue => flags.resume = true,
                Kept::StartOver => {}
                Kept::Cancel => {
                    let shown = Shown(part.display());
                    return self
                        .output
                        .line(format_args!("get {remote}: cancelled, {shown} kept"));
                }
            }
        }
        let result = self.single(
            Transfer::Get {
                remote: remote.clone(),
                local,
            },
            flags,
        );
        if let Err(ClientError::Cancelled) = &result {
            if let Ok(m) = part.symlink_metadata() {
                self.output.diagnostic(format_args!(
                    "get {remote}: stopped; the {} verified so far are kept in {}: \
                     get -c {remote} continues it",
                    human_size(m.len()),
                    part.display()
                ));
            }
        }
        match result {
            // Say what to do instead of the server's "is a directory".
            Err(ClientError::Remote(e)) if e.code == ErrorCode::IsDirectory => {
                Err(ClientError::Usage(format!(
                    "get {remote}: a directory; get -r {remote} fetches it and all it holds"
                )))
            }
            other => other,
        }
    }

    /// What to do with the `.ftp-part` of an earlier download of `remote` (`bytes` long) that a
    /// plain `get` would start over: at a terminal, asked; in a script, it starts over, saying
    /// so, rather than silently throwing the bytes away.
    fn about_a_kept_part(&mut self, remote: &str, part: &Path, bytes: u64) -> Kept {
        let (size, shown) = (human_size(bytes), Shown(part.display()));
        if self.ask.is_none() {
            self.output.diagnostic(format_args!(
                "get {remote}: starting over; the {size} of an earlier download in {shown} \
                 are discarded (get -c continues instead)"
            ));
            return Kept::StartOver;
        }
        let question = format!(
            "{shown} holds {size} of an earlier download: continue it, start over, or cancel? \
             [c/s/n] "
        );
        loop {
            let Some(answer) = self.ask(&question) else {
                return Kept::Cancel;
            };
            match answer.trim().to_lowercase().as_str() {
                "c" | "continue" | "y" | "yes" | "" => return Kept::Continue,
                "s" | "start over" | "over" | "o" => return Kept::StartOver,
                "n" | "no" | "cancel" | "q" => return Kept::Cancel,
                _ => self.output.diagnostic("please answer c, s or n"),
            }
        }
    }

    /// At a terminal, what to do about a local file a download would replace.
    fn ask_about_existing(&mut self, local: &Path) -> Existing {
        let other = free_name(local);
        let question = format!(
            "{} exists here: overwrite it, keep both (the new one as {}), or skip? [o/k/s] ",
            Shown(local.display()),
            Shown(other.display())
        );
        loop {
            let Some(answer) = self.ask(&question) else {
                return Existing::Skip;
            };
            match answer.trim().to_lowercase().as_str() {
                "o" | "overwrite" | "y" | "yes" => return Existing::Overwrite,
                "k" | "keep" | "keep both" | "b" | "both" => return Existing::KeepBoth(other),
                "s" | "skip" | "n" | "no" | "" => return Existing::Skip,
                _ => self.output.diagnostic("please answer o, k or s"),
            }
        }
    }

    /// At a terminal, what to do about each local file a many-file download (`mget`,
    /// `get -r`) would replace, asked as `get` asks, with "all" answers so that a tree of
    /// hundreds of conflicts is one question (as lftp and Midnight Commander do): skipped
    /// files leave the batch, kept-both ones go to a free name. Scripts, `-f` and `-c` are
    /// left as they are (refused, replaced, continued).
    fn ask_about_existing_files(
        &mut self,
        mut files: batch::Files,
        flags: &mut Flags,
        what: &str,
    ) -> Result<batch::Files> {
        if self.ask.is_none() || flags.force || flags.resume {
            return Ok(files);
        }
        let exists = |t: &Transfer| match t {
            Transfer::Get { local, .. } => local.symlink_metadata().is_ok(),
            Transfer::Put { .. } => false,
        };
        let conflicts = files.items.iter().filter(|(t, _)| exists(t)).count();
        let mut all: Option<Answer> = None;
        let mut skipped = 0usize;
        let mut items = Vec::with_capacity(files.items.len());
        let mut left = conflicts;
        for (t, size) in std::mem::take(&mut files.items) {
            let Transfer::Get { remote, local } = t else {
                items.push((t, size));
                continue;
            };
            if local.symlink_metadata().is_err() {
                items.push((Transfer::Get { remote, local }, size));
                continue;
            }
            let answer = match all {
                Some(a) => a,
                None => {
                    // Ctrl-C or Ctrl-D at the question: the command, not a choice.
                    let Some((answer, for_all)) = self.ask_about_one_of_many(&local, left) else {
                        return Err(ClientError::Cancelled);
                    };
                    if for_all {
                        all = Some(answer);
                    }
                    answer
                }
            };
            left -= 1;
            match answer {
                Answer::Overwrite => {
                    // Every other file of the batch is new here: overwriting changes only these.
                    flags.force = true;
                    items.push((Transfer::Get { remote, local }, size));
                }
                Answer::KeepBoth => {
                    let local = free_name(&local);
                    items.push((Transfer::Get { remote, local }, size));
                }
                Answer::Skip => skipped += 1,
            }
        }
        if skipped > 0 {
            let files = if skipped == 1 { "file" } else { "files" };
            self.output.line(format_args!(
                "{}: {skipped} existing {files} skipped",
                Shown(what)
            ))?;
        }
        files.items = items;
        Ok(files)
    }

    /// One question about `local`, one of `left` files of a batch that exist here: the answer,
    /// and whether it is for all of them (`O`, `K`, `S`, or "all" after the word); `None` when
    /// the user pressed Ctrl-C or Ctrl-D instead.
    fn ask_about_one_of_many(&mut self, local: &Path, left: usize) -> Option<(Answer, bool)> {
        let question = if left > 1 {
            format!(
                "{} exists here, and {} more: overwrite, keep both, skip? [o/k/s, O/K/S: all] ",
                Shown(local.display()),
                left - 1
            )
        } else {
            format!(
                "{} exists here: overwrite it, keep both, or skip? [o/k/s] ",
                Shown(local.display())
            )
        };
        loop {
            let answer = self.ask(&question)?;
            let answer = answer.trim();
            let for_all = left > 1
                && (matches!(answer, "O" | "K" | "S") || answer.to_lowercase().ends_with(" all"));
            let word = answer.to_lowercase();
            let word = word.trim_end_matches(" all").trim();
            match word {
                "o" | "overwrite" | "y" | "yes" => return Some((Answer::Overwrite, for_all)),
                "k" | "keep" | "keep both" | "b" | "both" => {
                    return Some((Answer::KeepBoth, for_all))
                }
                "s" | "skip" | "n" | "no" | "" => return Some((Answer::Skip, for_all)),
                _ if left > 1 => self
                    .output
                    .diagnostic("please answer o, k or s, or O, K or S for all"),
                _ => self.output.diagnostic("please answer o, k or s"),
            }
        }
    }

    /// Whether `path` is a remote directory; `false` when it cannot be told.
    fn is_remote_dir(&mut self, path: &str) -> bool {
        matches!(
            remote!(self, c => c.stat(path, false)),
            Ok(r) if r.entry.kind == EntryKind::Dir
        )
    }

    /// `ls`: directories, single files and globs, with ls's options.
    fn ls(&mut self, opts: ListOpts, paths: Vec<String>) -> Result<()> {
        let paths = if paths.is_empty() {
            vec![".".to_owned()]
        } else {
            paths
        };
        // JSON is for scripts: every entry, as the server lists it.
        let all = opts.all || self.output.json();
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for path in &paths {
            if is_glob(path) {
                let (dir, pattern) = split_glob(path)?;
                let mut entries = self.list(dir)?;
                entries.retain(|e| pattern.matches(&e.name) && (all || !hidden(&e.name)));
                if entries.is_empty() {
                    return Err(ClientError::Usage(format!("ls: nothing matches {path}")));
                }
                for mut e in entries {
                    e.name = join(dir, &e.name);
                    files.push(e);
                }
                continue;
            }
            match self.list(path) {
                Ok(entries) => dirs.push((path.clone(), entries)),
                // A file lists as itself, as ls does.
                Err(ClientError::Remote(e)) if e.code == ErrorCode::NotADirectory => {
                    let e = ClientError::Remote(e);
                    match remote_again!(self, c => c.stat(path, false)) {
                        Ok(r) if r.entry.kind != EntryKind::Dir => {
                            let mut entry = r.entry;
                            entry.name = path.clone();
                            files.push(entry);
                        }
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let headers = files.len() + dirs.len() > 1 || opts.recursive;
        let mut first = true;
        if !files.is_empty() {
            sort_entries(&mut files, opts);
            self.output.listing(&files, opts.long, opts.human)?;
            first = false;
        }
        // Depth first, each directory before what is in it, as ls -R prints them; a
        // subdirectory is listed only when its turn comes.
        let mut pending: Vec<(String, Option<Vec<Entry>>, usize)> = dirs
            .into_iter()
            .rev()
            .map(|(path, entries)| (path, Some(entries), 0))
            .collect();
        while let Some((dir, entries, depth)) = pending.pop() {
            let mut entries = match entries {
                Some(entries) => entries,
                None => match self.list(&dir) {
                    Ok(entries) => entries,
                    Err(e @ ClientError::Remote(_)) => {
                        let why = e.to_string();
                        self.output.diagnostic(format_args!("ls {dir}: {why}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            entries.retain(|e| all || !hidden(&e.name));
            sort_entries(&mut entries, opts);
            if opts.recursive && depth < MAX_DEPTH {
                let subdirs: Vec<String> = entries
                    .iter()
                    .filter(|e| e.kind == EntryKind::Dir && safe(&e.name))
                    .map(|e| join(&dir, &e.name))
                    .collect();
                pending.extend(subdirs.into_iter().rev().map(|sub| (sub, None, depth + 1)));
            }
            if headers {
                self.output.listing_header(&dir, first)?;
                // JSON has no headers: each name says which directory it is in.
                if self.output.json() && dir != "." {
                    for e in &mut entries {
                        e.name = join(&dir, &e.name);
                    }
                }
            }
            first = false;
            self.output.listing(&entries, opts.long, opts.human)?;
        }
        Ok(())
    }

    fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        remote_again!(self, c => c.list(dir))
    }

    /// The remote paths `path` names: itself, or what a glob in its last part matches.
    fn expand_remote(&mut self, path: &str) -> Result<Vec<String>> {
        if !is_glob(path) {
            return Ok(vec![path.to_owned()]);
        }
        let (dir, pattern) = split_glob(path)?;
        let mut names: Vec<String> = self
            .list(dir)?
            .into_iter()
            .filter(|e| pattern.matches(&e.name) && !hidden(&e.name) && safe(&e.name))
            .map(|e| join(dir, &e.name))
            .collect();
        names.sort();
        Ok(names)
    }

    /// `rm [-rf] PATH|GLOB...`: every file named or matched; with `-r`, directories too, what
    /// they hold first; with `-f`, what is not there is skipped.
    fn rm(&mut self, recursive: bool, force: bool, paths: Vec<String>) -> Result<()> {
        let mut targets = Vec::new();
        for path in &paths {
            let matched = match self.expand_remote(path) {
                Err(ClientError::Remote(e)) if force && e.code == ErrorCode::NotFound => continue,
                other => other?,
            };
            if matched.is_empty() && !force {
                return Err(ClientError::Usage(format!("rm: nothing matches {path}")));
            }
            targets.extend(matched);
        }
        let total = targets.len();
        let mut failed = 0;
        for path in targets {
            let result = if recursive && self.is_remote_dir(&path) {
                self.rm_tree(&path)
            } else {
                remote!(self, c => c.rm(&path))
            };
            match result {
                Ok(()) => {}
                Err(ClientError::Remote(e)) if force && e.code == ErrorCode::NotFound => {}
                Err(e) if total == 1 => return Err(e),
                Err(e) => {
                    let why = e.to_string();
                    self.output.diagnostic(format_args!("rm {path}: {why}"));
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            return Err(ClientError::SomeFailed { failed, total });
        }
        Ok(())
    }

    /// Removes the remote directory `top` and everything in it.
    fn rm_tree(&mut self, top: &str) -> Result<()> {
        let (files, dirs) = self.walk(top, "rm -r")?;
        for (file, _) in files {
            remote!(self, c => c.rm(&file))?;
        }
        // The deepest first: each is empty by the time it is removed.
        for dir in dirs.iter().rev() {
            remote!(self, c => c.rmdir(dir))?;
        }
        Ok(())
    }

    /// The files (with sizes) and directories (`top` first, each before what it holds) of the
    /// remote tree at `top`, from its listings.
    fn walk(&mut self, top: &str, what: &str) -> Result<Tree> {
        let mut files = Vec::new();
        let mut dirs = vec![top.to_owned()];
        let mut pending = vec![(top.to_owned(), 0usize)];
        let mut taken = 0usize;
        while let Some((dir, depth)) = pending.pop() {
            let entries = self.list(&dir)?;
            taken += entries.len();
            if taken > MAX_TREE_ENTRIES {
                return Err(ClientError::Limit(format!(
                    "{what} {top}: more than {MAX_TREE_ENTRIES} files and directories under it, \
                     the client's cap; nothing was changed"
                )));
            }
            for e in entries {
                if !safe(&e.name) {
                    continue;
                }
                let path = join(&dir, &e.name);
                match e.kind {
                    EntryKind::Dir if depth < MAX_DEPTH => {
                        dirs.push(path.clone());
                        pending.push((path, depth + 1));
                    }
                    EntryKind::Dir => {
                        return Err(ClientError::Limit(format!(
                            "{what} {top}: deeper than {MAX_DEPTH} directories"
                        )))
                    }
                    _ => files.push((path, e.size)),
                }
            }
        }
        Ok((files, dirs))
    }

    /// `du [-h] [PATH...]`: the total size of each tree (the remote directory without a path),
    /// summed from its listings.
    fn du(&mut self, human: bool, paths: Vec<String>) -> Result<()> {
        let paths = if paths.is_empty() {
            vec![".".to_owned()]
        } else {
            paths
        };
        for path in paths {
            let (total, count) = if self.is_remote_dir(&path) {
                let (files, _) = self.walk(&path, "du")?;
                let total = files
                    .iter()
                    .fold(0u64, |sum, (_, s)| sum.saturating_add(*s));
                (total, files.len())
            } else {
                let r = remote_again!(self, c => c.stat(&path, false))?;
                (r.entry.size, 1)
            };
            let size = if human {
                human_size(total)
            } else {
                total.to_string()
            };
            let files = if count == 1 { "file" } else { "files" };
            self.output
                .line(format_args!("{size}\t{}\t({count} {files})", Shown(&path)))?;
        }
        Ok(())
    }

    /// `cat FILE`: downloaded (verified) into a private temporary directory, then printed.
    fn cat(&mut self, remote: &str) -> Result<()> {
        let dir = tempfile::Builder::new()
            .prefix("ftp-cli-cat-")
            .tempdir()
            .map_err(|e| ClientError::local(&std::env::temp_dir(), e))?;
        let local = dir.path().join("file");
        let t = Transfer::Get {
            remote: remote.to_owned(),
            local: local.clone(),
        };
        let (dial, link) = (&self.dial, &mut self.link);
        let (retries, output) = (self.retries, &self.output);
        let opts = options(Flags::default());
        let mut none = NoProgress;
        let job = transfer(dial, link, retries, &t, opts, &mut none, output);
        match self.runtime.block_on(job) {
            Ok(_) => {}
            Err(ClientError::Remote(e)) if e.code == ErrorCode::IsDirectory => {
                return Err(ClientError::Usage(format!("cat {remote}: a directory")))
            }
            Err(e) => return Err(e),
        }
        let bytes = std::fs::read(&local).map_err(|e| ClientError::local(&local, e))?;
        self.output.bytes(&bytes)
    }

    /// Remote entries of `dir` for tab completion, from a listing at most a few seconds old.
    pub fn complete_remote(&mut self, dir: &str) -> Vec<Entry> {
        if !self.has_host() {
            return Vec::new();
        }
        if let Some(entries) = self.listings.fresh(dir) {
            return entries;
        }
        let entries = self.list(dir).unwrap_or_default();
        self.listings.keep(dir, entries.clone());
        entries
    }

    /// One file, with a bar of its own, and its summary line.
    fn single(&mut self, t: Transfer, flags: Flags) -> Result<()> {
        let mut bar = Bar::default();
        let mut none = NoProgress;
        let progress: &mut dyn Progress = if self.output.bars() {
            &mut bar
        } else {
            &mut none
        };
        let (dial, link) = (&self.dial, &mut self.link);
        let (retries, output) = (self.retries, &self.output);
        let job = transfer(dial, link, retries, &t, options(flags), progress, output);
        let summary = self.runtime.block_on(job)?;
        self.output.summary(t.op(), &summary)
    }

    /// Many files, side by side (see [`batch::run`]), `-P N` at once or the session's number.
    /// It ends with one total line under `what` (the command as typed: `put -r src`).
    fn batch(&mut self, files: impl Into<batch::Files>, flags: Flags, what: &str) -> Result<()> {
        let (dial, link, output) = (&self.dial, &mut self.link, &self.output);
        let retries = self.retries;
        let parallel = flags.parallel.unwrap_or(self.parallel).max(1);
        let files = files.into();
        let opts = options(flags);
        let job = batch::run_command(
            dial,
            link,
            retries,
            parallel,
            output,
            files,
            opts,
            what,
            flags.verbose,
        );
        let result = self.runtime.block_on(job);
        if let Err(ClientError::Cancelled) = &result {
            // As after a single file: nothing moved so far is lost, and how to go on.
            let again = match what.split_once(" -r ") {
                Some((op, rest)) => format!("{op} -r -c {rest}"),
                None => format!("{what} -c with the same names"),
            };
            self.output.diagnostic(format_args!(
                "{}: stopped; the files verified so far are in place and partial ones kept: \
                 {} continues it",
                Shown(what),
                Shown(again)
            ));
        }
        result
    }

    /// `mirror`: the target by default is the source's last name, here (locally, or in the
    /// remote directory with `-R`).
    fn mirror(&mut self, args: crate::command::MirrorArgs) -> Result<()> {
        let pattern = |g: &String| glob::Pattern::new(g).expect("checked by the parser");
        let opts = crate::mirror::Options {
            reverse: args.reverse,
            delete: args.delete,
            dry_run: args.dry_run,
            checksum: args.checksum,
            include: args.include.iter().map(pattern).collect(),
            exclude: args.exclude.iter().map(pattern).collect(),
        };
        let source = if args.reverse {
            local_cmds::expand_pattern(&args.source)
        } else {
            args.source.clone()
        };
        let target = match args.target {
            Some(t) if !args.reverse => local_cmds::expand_pattern(&t),
            Some(t) => t,
            None => {
                let last = source
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                let last = crate::client::safe_name(last)
                    .map_err(|_| ClientError::Usage(format!("mirror {source}: name a target")))?;
                last.to_owned()
            }
        };
        let (dial, link, output) = (&self.dial, &mut self.link, &self.output);
        let parallel = args.parallel.unwrap_or(self.parallel).max(1);
        let job = crate::mirror::run(
            dial,
            link,
            self.retries,
            parallel,
            output,
            &source,
            &target,
            &opts,
        );
        self.runtime.block_on(job)
    }

    /// Says goodbye to the server, if connected.
    pub fn close(&mut self) {
        self.runtime.block_on(self.link.close());
    }
}

/// A remote tree from its listings: its files with their sizes, and its directories (the top
/// first, each before what it holds).
type Tree = (Vec<(String, u64)>, Vec<String>);

/// What to do about a local file a download would replace.
enum Existing {
    Overwrite,
    /// Keep it, and save the new one here instead.
    KeepBoth(PathBuf),
    Skip,
}

/// An answer about one existing file of a many-file download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Overwrite,
    KeepBoth,
    Skip,
}

/// Whether a command talks to the server.
fn needs_server(cmd: &Command) -> bool {
    match cmd {
        Command::Put { .. }
        | Command::Get { .. }
        | Command::Mput { .. }
        | Command::Mget { .. }
        | Command::Mirror(_)
        | Command::Ls { .. }
        | Command::Cd(_)
        | Command::Pwd
        | Command::Mkdir { .. }
        | Command::Rm { .. }
        | Command::Rmdir(_)
        | Command::Rename { .. }
        | Command::Stat { .. }
        | Command::Cat(_)
        | Command::Du { .. }
        | Command::Df
        | Command::User(_) => true,
        Command::Open(_)
        | Command::Close
        | Command::Lcd(_)
        | Command::Lpwd
        | Command::Lls(_)
        | Command::Shell(_)
        | Command::History
        | Command::Help(_)
        | Command::Quit => false,
    }
}

/// What a plain `get` does with the `.ftp-part` an earlier download left.
enum Kept {
    /// Continue it, as `get -c` does.
    Continue,
    /// Download the whole file again.
    StartOver,
    /// Download nothing; the part stays.
    Cancel,
}

/// The first of `NAME (1).EXT`, `NAME (2).EXT`, ... that does not exist, beside `path`: where
/// "keep both" saves a download.
fn free_name(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (1..)
        .map(|n| path.with_file_name(format!("{stem} ({n}){ext}")))
        .find(|p| p.symlink_metadata().is_err())
        .expect("some number is free")
}

/// Whether the last part of a remote path is a glob (`*.jpg`, `a?`, `[ab]*`).
fn is_glob(path: &str) -> bool {
    base_name(path).contains(['*', '?', '['])
}

/// A remote glob's directory and the pattern its names must match.
fn split_glob(path: &str) -> Result<(&str, glob::Pattern)> {
    let (dir, name) = match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => (".", path),
    };
    let pattern = glob::Pattern::new(name)
        .map_err(|e| ClientError::Usage(format!("bad pattern {path:?}: {e}")))?;
    Ok((dir, pattern))
}

/// The last part of a remote path (`a/b/` is `b`).
fn base_name(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// `dir/name` for remote paths; `name` alone in `.`.
fn join(dir: &str, name: &str) -> String {
    match dir {
        "" | "." => name.to_owned(),
        d if d.ends_with('/') => format!("{d}{name}"),
        d => format!("{d}/{name}"),
    }
}

/// A name ls shows only with `-a`.
fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// A name the server listed that may be put into a path the client sends (`rm -r`, `du`,
/// `ls -R`): one plain component, not `..` or a path of its own.
fn safe(name: &str) -> bool {
    crate::client::safe_name(name).is_ok()
}

/// Sorts a listing as `ls` would with `opts`: by name, or newest or largest first (name
/// breaking ties), reversed with `-r`.
fn sort_entries(entries: &mut [Entry], opts: ListOpts) {
    match opts.sort {
        Sort::Name => entries.sort_by(|a, b| a.name.cmp(&b.name)),
        Sort::Time => entries.sort_by(|a, b| b.mtime.cmp(&a.mtime).then(a.name.cmp(&b.name))),
        Sort::Size => entries.sort_by(|a, b| b.size.cmp(&a.size).then(a.name.cmp(&b.name))),
    }
    if opts.reverse {
        entries.reverse();
    }
}

/// What a transfer command's `-f` and `-c` ask of each file.
fn options(flags: Flags) -> TransferOptions {
    TransferOptions {
        overwrite: flags.force,
        resume: flags.resume,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, size: u64, mtime: i64) -> Entry {
        Entry {
            name: name.into(),
            kind: EntryKind::File,
            size,
            mtime: Some(mtime),
            digest: None,
        }
    }

    #[test]
    fn listings_sort_as_ls_does() {
        let all = [entry("b", 1, 30), entry("a", 3, 10), entry("c", 2, 20)];
        for (sort, reverse, want) in [
            (Sort::Name, false, ["a", "b", "c"]),
            (Sort::Name, true, ["c", "b", "a"]),
            (Sort::Time, false, ["b", "c", "a"]),
            (Sort::Time, true, ["a", "c", "b"]),
            (Sort::Size, false, ["a", "c", "b"]),
        ] {
            let mut entries = all.to_vec();
            let opts = ListOpts {
                sort,
                reverse,
                ..ListOpts::default()
            };
            sort_entries(&mut entries, opts);
            let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, want, "{sort:?} reversed: {reverse}");
        }
    }

    #[test]
    fn remote_paths() {
        for (path, glob, base) in [
            ("*.jpg", true, "*.jpg"),
            ("a/b?.txt", true, "b?.txt"),
            ("[ab]", true, "[ab]"),
            ("x*y/plain", false, "plain"),
            ("dir/", false, "dir"),
            ("/", false, ""),
        ] {
            assert_eq!(is_glob(path), glob, "{path}");
            assert_eq!(base_name(path), base, "{path}");
        }
        assert_eq!(split_glob("*.jpg").unwrap().0, ".");
        assert_eq!(split_glob("/*.jpg").unwrap().0, "/");
        assert_eq!(split_glob("a/b/*.jpg").unwrap().0, "a/b");
        for (dir, name, want) in [
            (".", "x", "x"),
            ("/", "x", "/x"),
            ("d/", "x", "d/x"),
            ("d", "x", "d/x"),
        ] {
            assert_eq!(join(dir, name), want);
        }
    }

    #[test]
    fn keep_both_picks_the_first_free_name() {
        let dir = tempfile::tempdir().unwrap();
        let x = dir.path().join("x.jpg");
        std::fs::write(&x, "old").unwrap();
        assert_eq!(free_name(&x), dir.path().join("x (1).jpg"));
        std::fs::write(dir.path().join("x (1).jpg"), "older").unwrap();
        assert_eq!(free_name(&x), dir.path().join("x (2).jpg"));
        let bare = dir.path().join("README");
        assert_eq!(free_name(&bare), dir.path().join("README (1)"));
    }
}
