//! Runs parsed commands against a server: [`App`], the one place commands take effect.

use std::path::{Path, PathBuf};

use protocol::Entry;

use crate::batch;
use crate::client::{NoProgress, Progress, TransferOptions};
use crate::command::{self, Command, Flags};
use crate::completion::Listings;
use crate::error::{ClientError, Result};
use crate::link::{Dial, Link};
use crate::local_cmds;
use crate::output::{Output, Shown};
use crate::progress::Bar;
use crate::retry::{transfer, Transfer};
use crate::tree::{self, file_name};

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
        })
    }

    /// The prompt: server, user and remote directory (`ftp alice@127.0.0.1:2121:/photos> `).
    pub fn prompt(&self) -> String {
        let who = match &self.dial.creds {
            Some(c) => format!("{}@{}", c.user, self.dial.addr),
            None => self.dial.addr.clone(),
        };
        // The directory is the server's word: escaped, it cannot draw on the terminal.
        format!("ftp {who}:{}> ", Shown(&self.link.cwd))
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
                    let (dirs, items) = tree::put_tree(&local, &remote, &self.output)?;
                    for dir in &dirs {
                        remote_again!(self, c => c.mkdir(dir, true))?;
                    }
                    self.batch(items, flags)?;
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
                    let list = |dir: &str| remote_again!(self, c => c.list(dir));
                    let items = tree::get_tree(&remote, &local, &self.output, list)?;
                    self.batch(items, flags)?;
                } else {
                    let local = if local.is_dir() {
                        local.join(file_name(Path::new(&remote))?)
                    } else {
                        local
                    };
                    self.single(Transfer::Get { remote, local }, flags)?;
                }
            }
            Command::Mput { patterns, flags } => {
                let items = tree::mput(&patterns, &self.output)?;
                self.batch(items, flags)?;
            }
            Command::Mget { patterns, flags } => {
                let list = |dir: &str| remote_again!(self, c => c.list(dir));
                let items = tree::mget(&patterns, &self.output, list)?;
                self.batch(items, flags)?;
            }
            Command::Ls { long, path } => self.ls(path.as_deref().unwrap_or("."), long)?,
            Command::Cd(path) => {
                self.link.cwd = remote_again!(self, c => c.cd(&path))?;
            }
            Command::Pwd => {
                let cwd = remote_again!(self, c => c.pwd())?;
                self.output.line(Shown(&cwd))?;
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
                let r = remote_again!(self, c => c.stat(&path, md5))?;
                self.output.stat(&r)?;
            }
            Command::Lcd(path) => local_cmds::lcd(path)?,
            Command::Lpwd => local_cmds::lpwd(&self.output)?,
            Command::Lls(path) => local_cmds::lls(path, &self.output)?,
            Command::Shell(cmd) => local_cmds::shell(&cmd)?,
        }
        Ok(Flow::Continue)
    }

    fn ls(&mut self, path: &str, long: bool) -> Result<()> {
        let mut entries = remote_again!(self, c => c.list(path))?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        self.output.listing(&entries, long)
    }

    fn list(&mut self, dir: &str) -> Result<Vec<Entry>> {
        remote_again!(self, c => c.list(dir))
    }

    /// Remote entries of `dir` for tab completion, from a listing at most a few seconds old.
    pub fn complete_remote(&mut self, dir: &str) -> Vec<Entry> {
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

    /// Many files, side by side (see [`batch::run`]).
    fn batch(&mut self, files: impl Into<batch::Files>, flags: Flags) -> Result<()> {
        let (dial, link, output) = (&self.dial, &mut self.link, &self.output);
        let (retries, parallel) = (self.retries, self.parallel);
        let files = files.into();
        let job = batch::run(dial, link, retries, parallel, output, files, options(flags));
        self.runtime.block_on(job)
    }

    /// Says goodbye to the server, if connected.
    pub fn close(&mut self) {
        self.runtime.block_on(self.link.close());
    }
}

/// What a transfer command's `-f` and `-c` ask of each file.
fn options(flags: Flags) -> TransferOptions {
    TransferOptions {
        overwrite: flags.force,
        resume: flags.resume,
    }
}
