//! Runs parsed commands against a server: the one place commands take effect.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use indicatif::HumanBytes;
use protocol::{DigestKind, Entry, EntryKind, ErrorCode, StatReply};
use serde::Serialize;

use crate::client::{Client, Credentials, NoProgress, Progress, Summary, TransferOptions};
use crate::command::{self, Command, Flags};
use crate::error::{ClientError, Result};
use crate::progress::{Bar, BatchBars};

/// Wait before the first retry; doubled for each further one, up to [`MAX_BACKOFF`].
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// How long a remote listing is reused for tab completion.
const COMPLETION_CACHE: Duration = Duration::from_secs(5);
/// Deepest directory tree `get -r` descends into.
const MAX_DEPTH: usize = 64;

/// One file to move.
#[derive(Debug, Clone)]
pub enum Transfer {
    Put { local: PathBuf, remote: String },
    Get { remote: String, local: PathBuf },
}

impl Transfer {
    fn name(&self) -> String {
        match self {
            Transfer::Put { local, .. } => local.display().to_string(),
            Transfer::Get { remote, .. } => remote.clone(),
        }
    }

    fn op(&self) -> &'static str {
        match self {
            Transfer::Put { .. } => "put",
            Transfer::Get { .. } => "get",
        }
    }
}

/// Passes progress on, remembering how far the transfer got, for retry messages.
struct Tracked<'a> {
    inner: &'a mut dyn Progress,
    pos: u64,
}

impl Progress for Tracked<'_> {
    fn start(&mut self, name: &str, total: u64, done: u64) {
        self.pos = done;
        self.inner.start(name, total, done);
    }

    fn advance(&mut self, n: u64) {
        self.pos += n;
        self.inner.advance(n);
    }

    fn finish(&mut self) {
        self.inner.finish();
    }
}

/// What the caller should do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

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
        let resumed = if s.sent < s.size {
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

/// A client session as the user sees it: a server address, a connection made on demand, the
/// remote directory (restored when the connection has to be made again).
pub struct App {
    runtime: tokio::runtime::Runtime,
    dial: Dial,
    /// The connection commands use.
    link: Link,
    /// How often a failed transfer is resumed before the command fails.
    retries: u32,
    /// Files a many-file command moves at once, each on a connection of its own.
    parallel: usize,
    output: Output,
    /// Recent remote listings, for tab completion.
    listings: HashMap<String, (Instant, Vec<Entry>)>,
}

/// How to reach the server: the same for every connection of a session.
pub struct Dial {
    /// The server as the user named it.
    pub addr: String,
    /// Longest wait for the server.
    pub timeout: Duration,
    /// Who to log in as, when the server has users.
    pub creds: Option<Credentials>,
    /// The transfer digest to ask for.
    pub digest: DigestKind,
}

/// One connection, made when first needed and made again after it is lost, back in the
/// remote directory it was in.
struct Link {
    /// `None` until the first use, and after the connection is lost.
    client: Option<Client>,
    /// The remote directory, as the server last named it.
    cwd: String,
}

impl Link {
    fn new(cwd: String) -> Self {
        Link { client: None, cwd }
    }

    /// The live connection: made, logged in and back in `cwd` if there is none.
    async fn client(&mut self, dial: &Dial) -> Result<&mut Client> {
        if !self.client.as_mut().is_some_and(|c| c.is_alive()) {
            self.client = None;
            let creds = dial.creds.as_ref();
            let mut c = Client::connect(&dial.addr, dial.timeout, creds, dial.digest).await?;
            if self.cwd != "/" {
                match c.cd(&self.cwd).await {
                    Ok(_) => {}
                    // The old directory is gone: start over at the top.
                    Err(ClientError::Remote(_)) => self.cwd = "/".into(),
                    Err(e) => return Err(e),
                }
            }
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Forgets a connection that failed under a call, or that a failed task of ours may have
    /// left half-way through an exchange.
    fn forget_if_broken<T>(&mut self, r: &Result<T>) {
        if let Err(
            ClientError::ConnectionLost(_) | ClientError::Protocol(_) | ClientError::Internal(_),
        ) = r
        {
            self.client = None;
        }
    }

    /// Says goodbye to the server, if connected.
    async fn close(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.bye()).await;
        }
    }
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
            listings: HashMap::new(),
        })
    }

    /// The prompt: server, user and remote directory (`ftp alice@127.0.0.1:2121:/photos> `).
    pub fn prompt(&self) -> String {
        let who = match &self.dial.creds {
            Some(c) => format!("{}@{}", c.user, self.dial.addr),
            None => self.dial.addr.clone(),
        };
        format!("ftp {who}:{}> ", self.link.cwd)
    }

    /// Where everything the session prints goes.
    pub fn output(&self) -> &Output {
        &self.output
    }

    /// Connects if there is no live connection, logging in and going back to the remote
    /// directory the user was in.
    pub fn connect(&mut self) -> Result<()> {
        let (dial, link) = (&self.dial, &mut self.link);
        self.runtime.block_on(link.client(dial)).map(|_| ())
    }

    /// Runs one command.
    pub fn run(&mut self, cmd: Command) -> Result<Flow> {
        if !matches!(cmd, Command::Ls { .. } | Command::Stat { .. }) {
            self.listings.clear();
        }
        match cmd {
            Command::Help(topic) => self.output.line(command::help(topic.as_deref())?)?,
            Command::Quit => return Ok(Flow::Quit),
            Command::Put {
                local,
                remote,
                flags,
            } => {
                let local = PathBuf::from(local);
                let remote = match remote {
                    Some(r) => r,
                    None => file_name(&local)?,
                };
                if flags.recursive {
                    self.put_tree(&local, &remote, flags)?;
                } else {
                    self.single(Transfer::Put { local, remote }, flags)?;
                }
            }
            Command::Get {
                remote,
                local,
                flags,
            } => {
                let local = match local {
                    Some(l) => PathBuf::from(l),
                    None => PathBuf::from(file_name(Path::new(&remote))?),
                };
                if flags.recursive {
                    self.get_tree(&remote, &local, flags)?;
                } else {
                    let local = if local.is_dir() {
                        local.join(file_name(Path::new(&remote))?)
                    } else {
                        local
                    };
                    self.single(Transfer::Get { remote, local }, flags)?;
                }
            }
            Command::Mput { patterns, flags } => self.mput(&patterns, flags)?,
            Command::Mget { patterns, flags } => self.mget(&patterns, flags)?,
            Command::Ls { long, path } => self.ls(path.as_deref().unwrap_or("."), long)?,
            Command::Cd(path) => {
                self.link.cwd = remote!(self, c => c.cd(&path))?;
            }
            Command::Pwd => {
                let cwd = remote!(self, c => c.pwd())?;
                self.output.line(&cwd)?;
                self.link.cwd = cwd;
            }
            Command::Mkdir { parents, path } => remote!(self, c => c.mkdir(&path, parents))?,
            Command::Rm(paths) => {
                let total = paths.len();
                let mut failed = 0;
                for path in paths {
                    if let Err(e) = remote!(self, c => c.rm(&path)) {
                        if total == 1 {
                            return Err(e);
                        }
                        self.output.diagnostic(format_args!("rm {path}: {e}"));
                        failed += 1;
                    }
                }
                if failed > 0 {
                    return Err(ClientError::SomeFailed { failed, total });
                }
            }
            Command::Rmdir(path) => remote!(self, c => c.rmdir(&path))?,
            Command::Rename { from, to } => remote!(self, c => c.rename(&from, &to))?,
            Command::Stat { md5, path } => {
                let r = remote!(self, c => c.stat(&path, md5))?;
                self.output.stat(&r)?;
            }
            Command::Lcd(path) => {
                let dir = match path {
                    Some(p) => PathBuf::from(p),
                    None => dirs::home_dir()
                        .ok_or_else(|| ClientError::Usage("lcd: no home directory".into()))?,
                };
                std::env::set_current_dir(&dir).map_err(|e| ClientError::local(&dir, e))?;
            }
            Command::Lpwd => {
                let dir =
                    std::env::current_dir().map_err(|e| ClientError::local(Path::new("."), e))?;
                self.output.line(dir.display())?;
            }
            Command::Lls(path) => {
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
                    self.output.line(n)?;
                }
            }
            Command::Shell(cmd) => {
                let status = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .status()
                    .map_err(|e| ClientError::local(Path::new("sh"), e))?;
                if !status.success() {
                    return Err(ClientError::Local {
                        path: format!("!{cmd}"),
                        source: std::io::Error::other(format!("exited with {status}")),
                    });
                }
            }
        }
        Ok(Flow::Continue)
    }

    fn ls(&mut self, path: &str, long: bool) -> Result<()> {
        let mut entries = remote!(self, c => c.list(path))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        self.output.listing(&entries, long)
    }

    fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        remote!(self, c => c.list(dir))
    }

    /// Remote entries of `dir` for tab completion, from a listing at most a few seconds old.
    pub fn complete_remote(&mut self, dir: &str) -> Vec<Entry> {
        if let Some((at, entries)) = self.listings.get(dir) {
            if at.elapsed() < COMPLETION_CACHE {
                return entries.clone();
            }
        }
        let entries = self.list(dir).unwrap_or_default();
        self.listings
            .insert(dir.to_owned(), (Instant::now(), entries.clone()));
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

    /// Many files: up to `parallel` at once, each on a connection of its own (the session's
    /// and more made for the batch), so that no file waits for the one before it to be
    /// acknowledged and synced. One overall bar and one per transfer in flight. A failure is
    /// reported and the rest go on; the command fails at the end if any did.
    fn batch(&mut self, items: Vec<(Transfer, u64)>, flags: Flags) -> Result<()> {
        let total = items.len();
        let bytes = items.iter().map(|(_, size)| size).sum();
        let slots = self.parallel.clamp(1, total.max(1));
        let batch = Batch {
            dial: &self.dial,
            retries: self.retries,
            opts: options(flags),
            output: &self.output,
            queue: RefCell::new(items.into_iter()),
            bars: BatchBars::new(self.output.bars(), total, bytes, slots),
            failed: Cell::new(0),
            stopped: RefCell::new(None),
        };
        let mut extra: Vec<Link> = (1..slots)
            .map(|_| Link::new(self.link.cwd.clone()))
            .collect();
        let links = std::iter::once(&mut self.link).chain(extra.iter_mut());
        let workers = links.enumerate().map(|(i, link)| batch.worker(link, i));
        self.runtime.block_on(futures::future::join_all(workers));
        self.runtime.block_on(async {
            for link in &mut extra {
                link.close().await;
            }
        });
        batch.bars.finish();
        if let Some(why) = batch.stopped.take() {
            return Err(why);
        }
        match batch.failed.get() {
            0 => Ok(()),
            failed => Err(ClientError::SomeFailed { failed, total }),
        }
    }

    fn put_tree(&mut self, local: &Path, remote: &str, flags: Flags) -> Result<()> {
        let mut dirs = vec![String::new()];
        let mut files = Vec::new();
        walk_local(local, "", &mut dirs, &mut files, &self.output)?;
        for d in &dirs {
            let path = join(remote, d);
            remote!(self, c => c.mkdir(&path, true))?;
        }
        let items = files
            .into_iter()
            .map(|(rel, size)| {
                let t = Transfer::Put {
                    local: local.join(&rel),
                    remote: join(remote, &rel),
                };
                (t, size)
            })
            .collect();
        self.batch(items, flags)
    }

    fn get_tree(&mut self, remote: &str, local: &Path, flags: Flags) -> Result<()> {
        let mut items = Vec::new();
        let mut pending = vec![(String::new(), 0usize)];
        while let Some((rel, depth)) = pending.pop() {
            let dir = local.join(&rel);
            std::fs::create_dir_all(&dir).map_err(|e| ClientError::local(&dir, e))?;
            let path = join(remote, &rel);
            let mut entries = remote!(self, c => c.list(&path))?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            for e in entries {
                let child = join(&rel, &e.name);
                match e.kind {
                    EntryKind::File => items.push((
                        Transfer::Get {
                            remote: join(remote, &child),
                            local: local.join(&child),
                        },
                        e.size,
                    )),
                    EntryKind::Dir if depth < MAX_DEPTH => pending.push((child, depth + 1)),
                    _ => self.output.diagnostic(format_args!(
                        "skipping {}: not a file or directory",
                        join(remote, &child)
                    )),
                }
            }
        }
        self.batch(items, flags)
    }

    fn mput(&mut self, patterns: &[String], flags: Flags) -> Result<()> {
        let mut items = Vec::new();
        for pattern in patterns {
            let paths = glob::glob(pattern)
                .map_err(|e| ClientError::Usage(format!("mput: bad pattern {pattern:?}: {e}")))?;
            let before = items.len();
            for path in paths.flatten() {
                if !path.is_file() {
                    continue;
                }
                let size = path.metadata().map(|m| m.len()).unwrap_or(0);
                let remote = file_name(&path)?;
                items.push((
                    Transfer::Put {
                        local: path,
                        remote,
                    },
                    size,
                ));
            }
            if items.len() == before {
                self.output
                    .diagnostic(format_args!("mput: no local file matches {pattern}"));
            }
        }
        if items.is_empty() {
            return Err(ClientError::Usage("mput: nothing to send".into()));
        }
        self.batch(items, flags)
    }

    fn mget(&mut self, patterns: &[String], flags: Flags) -> Result<()> {
        let mut items = Vec::new();
        for pattern in patterns {
            let (dir, name) = match pattern.rsplit_once('/') {
                Some(("", name)) => ("/", name),
                Some((dir, name)) => (dir, name),
                None => (".", pattern.as_str()),
            };
            let matcher = glob::Pattern::new(name)
                .map_err(|e| ClientError::Usage(format!("mget: bad pattern {pattern:?}: {e}")))?;
            let mut entries = remote!(self, c => c.list(dir))?;
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let before = items.len();
            for e in entries {
                if e.kind == EntryKind::File && matcher.matches(&e.name) {
                    let remote = if dir == "." {
                        e.name.clone()
                    } else {
                        join(dir, &e.name)
                    };
                    items.push((
                        Transfer::Get {
                            remote,
                            local: PathBuf::from(&e.name),
                        },
                        e.size,
                    ));
                }
            }
            if items.len() == before {
                self.output
                    .diagnostic(format_args!("mget: no remote file matches {pattern}"));
            }
        }
        if items.is_empty() {
            return Err(ClientError::Usage("mget: nothing to fetch".into()));
        }
        self.batch(items, flags)
    }

    /// Says goodbye to the server, if connected.
    pub fn close(&mut self) {
        self.runtime.block_on(self.link.close());
    }
}

/// The shared state of a many-file command.
struct Batch<'a> {
    dial: &'a Dial,
    retries: u32,
    opts: TransferOptions,
    output: &'a Output,
    /// Files not yet started.
    queue: RefCell<std::vec::IntoIter<(Transfer, u64)>>,
    bars: BatchBars,
    failed: Cell<usize>,
    /// Why the batch stopped early, if it did: the user pressed Ctrl-C, or nobody reads stdout
    /// any more. Nothing more is started, and the command fails with it.
    stopped: RefCell<Option<ClientError>>,
}

impl Batch<'_> {
    /// Takes files off the queue one at a time and moves them over `link`. A slot beyond the
    /// first whose connection cannot be made (the server allows fewer per client) leaves its
    /// share to the others instead of failing files.
    async fn worker(&self, link: &mut Link, slot: usize) {
        if slot > 0 && link.client(self.dial).await.is_err() {
            return;
        }
        let mut progress = self.bars.slot(slot);
        while self.stopped.borrow().is_none() {
            let Some((t, size)) = self.queue.borrow_mut().next() else {
                break;
            };
            let (retries, opts) = (self.retries, self.opts);
            let job = transfer(
                self.dial,
                link,
                retries,
                &t,
                opts,
                &mut progress,
                self.output,
            );
            let result = job.await;
            self.bars.file_done(&mut progress, size);
            match result {
                Ok(summary) => {
                    if let Err(e) = self.bars.suspend(|| self.output.summary(t.op(), &summary)) {
                        self.stop(e);
                    }
                }
                Err(ClientError::Cancelled) => self.stop(ClientError::Cancelled),
                Err(e) => {
                    self.failed.set(self.failed.get() + 1);
                    self.bars.suspend(|| {
                        let what = format!("{} {}", t.op(), t.name());
                        self.output.diagnostic(format_args!("{what}: {e}"));
                    });
                }
            }
        }
    }

    /// Starts nothing more; the command fails with the first reason given.
    fn stop(&self, why: ClientError) {
        self.stopped.borrow_mut().get_or_insert(why);
    }
}

/// Moves one file over `link`. When the link fails or garbles data, reconnects and resumes
/// from the last verified byte, up to `retries` times, saying so on stderr. Ctrl-C stops it
/// cleanly: the connection stays usable and what was moved stays resumable.
async fn transfer(
    dial: &Dial,
    link: &mut Link,
    retries: u32,
    t: &Transfer,
    mut opts: TransferOptions,
    inner: &mut dyn Progress,
    output: &Output,
) -> Result<Summary> {
    let mut progress = Tracked { inner, pos: 0 };
    let mut attempt = 0;
    loop {
        let result = match link.client(dial).await {
            Ok(client) => {
                let cancel = client.cancel_token();
                let run = async {
                    match t {
                        Transfer::Put { local, remote } => {
                            client.put(local, remote, opts, &mut progress).await
                        }
                        Transfer::Get { remote, local } => {
                            client.get(remote, local, opts, &mut progress).await
                        }
                    }
                };
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => r,
                    _ = tokio::signal::ctrl_c() => {
                        cancel.cancel();
                        run.await
                    }
                }
            }
            Err(e) => Err(e),
        };
        let err = match result {
            Ok(summary) => return Ok(summary),
            Err(e) => e,
        };
        if attempt > 0 {
            if let (Transfer::Put { local, remote }, ClientError::Remote(e)) = (t, &err) {
                // Our earlier attempt may have been stored just before the link failed.
                if e.code == ErrorCode::Exists {
                    if let Some(c) = link.client.as_mut() {
                        if let Ok(Some(stored)) = c.same_as_remote(local, remote).await {
                            return Ok(stored);
                        }
                    }
                }
            }
        }
        let first_connect = attempt == 0 && matches!(err, ClientError::Connect { .. });
        if !err.is_retriable() || first_connect || attempt >= retries {
            // An internal failure is not retried, but it may have stopped mid-exchange, so the
            // connection is not trusted either.
            if err.is_retriable() || matches!(err, ClientError::Internal(_)) {
                link.client = None;
            }
            return Err(err);
        }
        attempt += 1;
        link.client = None;
        let what = match &err {
            ClientError::BadChunk { offset, digest } => {
                format!(
                    "chunk at offset {offset} failed its {} check",
                    digest.name()
                )
            }
            ClientError::Connect { .. } => "cannot reconnect".to_owned(),
            other => match t {
                Transfer::Put { .. } => {
                    format!("{other} (after sending {})", HumanBytes(progress.pos))
                }
                Transfer::Get { .. } => format!("{other} (at {})", HumanBytes(progress.pos)),
            },
        };
        output.diagnostic(format_args!("{what}, resuming ({attempt}/{retries})"));
        let backoff = RETRY_BACKOFF * 2u32.pow(attempt - 1);
        tokio::time::sleep(backoff.min(MAX_BACKOFF)).await;
        opts.resume = true;
    }
}

fn options(flags: Flags) -> TransferOptions {
    TransferOptions {
        overwrite: flags.force,
        resume: flags.resume,
    }
}

/// `base/rel`, for remote paths (`rel` may be empty).
fn join(base: &str, rel: &str) -> String {
    match (base, rel) {
        (b, "") => b.to_owned(),
        ("", r) | (".", r) => r.to_owned(),
        (b, r) if b.ends_with('/') => format!("{b}{r}"),
        (b, r) => format!("{b}/{r}"),
    }
}

/// Collects a local tree: directories and files (with sizes), relative to `root`, `/`-joined.
/// Symlinks are skipped, so a loop cannot trap the walk.
fn walk_local(
    root: &Path,
    rel: &str,
    dirs: &mut Vec<String>,
    files: &mut Vec<(String, u64)>,
    output: &Output,
) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| ClientError::local(&dir, e))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let child = join(rel, &name);
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            dirs.push(child.clone());
            walk_local(root, &child, dirs, files, output)?;
        } else if ft.is_file() {
            files.push((child, e.metadata().map(|m| m.len()).unwrap_or(0)));
        } else {
            output.diagnostic(format_args!(
                "skipping {}: not a file or directory",
                e.path().display()
            ));
        }
    }
    Ok(())
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ClientError::Usage(format!("{}: has no file name", path.display())))
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
    fn joins() {
        for (b, r, want) in [
            ("d", "", "d"),
            ("", "f", "f"),
            (".", "f", "f"),
            ("/", "f", "/f"),
            ("d", "f", "d/f"),
            ("d/", "f", "d/f"),
        ] {
            assert_eq!(join(b, r), want);
        }
    }

    #[test]
    fn times() {
        assert_eq!(time(Some(0)), "1970-01-01 00:00:00");
        assert_eq!(time(None).len(), 19);
    }
}
