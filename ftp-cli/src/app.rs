//! Runs parsed commands against a server: the one place commands take effect.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::HumanBytes;

use crate::client::{Client, Credentials, NoProgress, Progress, Summary, TransferOptions};
use crate::command::{self, Command};
use crate::error::{ClientError, Result};
use crate::progress::Bar;

/// One file to move.
enum Transfer {
    Put { local: PathBuf, remote: String },
    Get { remote: String, local: PathBuf },
}

/// Wait before the first retry; doubled for each further one, up to [`MAX_BACKOFF`].
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

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

/// A client session as the user sees it: a server address, a connection made on demand.
pub struct App {
    runtime: tokio::runtime::Runtime,
    /// The server as the user named it.
    addr: String,
    /// The open connection; `None` until the first command, and after it is lost.
    client: Option<Client>,
    /// Longest wait for the server.
    timeout: Duration,
    /// Draw progress bars (stderr is a terminal and the user did not ask for quiet).
    bars: bool,
    /// How often a failed transfer is resumed before the command fails.
    retries: u32,
    /// Who to log in as, when the server has users.
    creds: Option<Credentials>,
}

impl App {
    pub fn new(
        addr: &str,
        timeout: Duration,
        retries: u32,
        creds: Option<Credentials>,
        bars: bool,
    ) -> Result<App> {
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|e| ClientError::Usage(format!("cannot start the async runtime: {e}")))?;
        Ok(App {
            runtime,
            addr: addr.to_owned(),
            client: None,
            timeout,
            bars: bars && std::io::stderr().is_terminal(),
            retries,
            creds,
        })
    }

    /// The server's address for prompts, with the user when there is one.
    pub fn addr(&self) -> String {
        match &self.creds {
            Some(c) => format!("{}@{}", c.user, self.addr),
            None => self.addr.clone(),
        }
    }

    /// Connects now (a session's first act); later commands reconnect if the link was lost.
    pub fn connect(&mut self) -> Result<()> {
        if self.client.is_none() {
            let client = self.runtime.block_on(Client::connect(
                &self.addr,
                self.timeout,
                self.creds.as_ref(),
            ))?;
            self.client = Some(client);
        }
        Ok(())
    }

    /// Runs one command.
    pub fn run(&mut self, cmd: Command) -> Result<Flow> {
        match cmd {
            Command::Help(topic) => {
                println!("{}", command::help(topic.as_deref())?);
                Ok(Flow::Continue)
            }
            Command::Quit => Ok(Flow::Quit),
            Command::Put {
                local,
                remote,
                force,
                resume,
            } => {
                let local = PathBuf::from(local);
                let remote = match remote {
                    Some(r) => r,
                    None => file_name(&local)?,
                };
                let opts = TransferOptions {
                    overwrite: force,
                    resume,
                };
                let summary = self.transfer(Transfer::Put { local, remote }, opts)?;
                report("put", &summary);
                Ok(Flow::Continue)
            }
            Command::Get {
                remote,
                local,
                force,
                resume,
            } => {
                let mut local = match local {
                    Some(l) => PathBuf::from(l),
                    None => PathBuf::from(file_name(Path::new(&remote))?),
                };
                if local.is_dir() {
                    local.push(file_name(Path::new(&remote))?);
                }
                let opts = TransferOptions {
                    overwrite: force,
                    resume,
                };
                let summary = self.transfer(Transfer::Get { remote, local }, opts)?;
                report("get", &summary);
                Ok(Flow::Continue)
            }
        }
    }

    /// Runs a transfer, and when the link fails or garbles data, reconnects and resumes from
    /// the last verified byte, up to `retries` times, saying so on stderr.
    fn transfer(&mut self, t: Transfer, mut opts: TransferOptions) -> Result<Summary> {
        let mut bar = Bar::default();
        let mut none = NoProgress;
        let inner: &mut dyn Progress = if self.bars { &mut bar } else { &mut none };
        let mut progress = Tracked { inner, pos: 0 };
        let mut attempt = 0;
        loop {
            let result = self.connect().and_then(|()| {
                let client = self.client.as_mut().expect("connected above");
                self.runtime.block_on(async {
                    match &t {
                        Transfer::Put { local, remote } => {
                            client.put(local, remote, opts, &mut progress).await
                        }
                        Transfer::Get { remote, local } => {
                            client.get(remote, local, opts, &mut progress).await
                        }
                    }
                })
            });
            let err = match result {
                Ok(summary) => return Ok(summary),
                Err(e) => e,
            };
            if attempt > 0 {
                if let (Transfer::Put { local, remote }, ClientError::Remote(e)) = (&t, &err) {
                    // Our earlier attempt may have been stored just before the link failed.
                    if e.code == protocol::ErrorCode::Exists && self.same_as_remote(local, remote) {
                        return self.already_stored(local, remote);
                    }
                }
            }
            let first_connect = attempt == 0 && matches!(err, ClientError::Connect { .. });
            if !err.is_retriable() || first_connect || attempt >= self.retries {
                if err.is_retriable() {
                    self.client = None;
                }
                return Err(err);
            }
            attempt += 1;
            self.client = None;
            let what = match &err {
                ClientError::BadChunk { offset } => {
                    format!("chunk at offset {offset} failed its MD5 check")
                }
                ClientError::Connect { .. } => "cannot reconnect".to_owned(),
                other => format!("{other} (at {})", HumanBytes(progress.pos)),
            };
            eprintln!("ftp-cli: {what}, resuming ({attempt}/{})", self.retries);
            let backoff = RETRY_BACKOFF * 2u32.pow(attempt - 1);
            std::thread::sleep(backoff.min(MAX_BACKOFF));
            opts.resume = true;
        }
    }

    fn same_as_remote(&mut self, local: &Path, remote: &str) -> bool {
        let Some(client) = self.client.as_mut() else {
            return false;
        };
        self.runtime
            .block_on(client.same_as_remote(local, remote))
            .unwrap_or(false)
    }

    fn already_stored(&self, local: &Path, remote: &str) -> Result<Summary> {
        let size = std::fs::metadata(local)
            .map_err(|e| ClientError::local(local, e))?
            .len();
        let md5 = self.runtime.block_on(crate::client::md5_of_file(local))?;
        Ok(Summary {
            name: remote.to_owned(),
            sent: 0,
            size,
            elapsed: Duration::ZERO,
            md5,
        })
    }

    /// Says goodbye to the server, if connected.
    pub fn close(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(2), c.bye()).await });
        }
    }
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ClientError::Usage(format!("{}: has no file name", path.display())))
}

/// One line per finished transfer, on stdout.
fn report(op: &str, s: &Summary) {
    let secs = s.elapsed.as_secs_f64().max(1e-6);
    let resumed = if s.sent < s.size {
        format!(", {} of it sent this time", HumanBytes(s.sent))
    } else {
        String::new()
    };
    println!(
        "{op} {}: {} ({} bytes{resumed}) in {secs:.2} s, {}/s, MD5 {} verified",
        s.name,
        HumanBytes(s.size),
        s.size,
        HumanBytes((s.sent as f64 / secs) as u64),
        s.md5
    );
}
