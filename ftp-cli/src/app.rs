//! Runs parsed commands against a server: the one place commands take effect.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::HumanBytes;

use crate::client::{Client, NoProgress, Progress, Summary, TransferOptions};
use crate::command::{self, Command};
use crate::error::{ClientError, Result};
use crate::progress::Bar;

/// One file to move.
enum Transfer {
    Put { local: PathBuf, remote: String },
    Get { remote: String, local: PathBuf },
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
}

impl App {
    pub fn new(addr: &str, timeout: Duration, bars: bool) -> Result<App> {
        let runtime = tokio::runtime::Runtime::new()
            .map_err(|e| ClientError::Usage(format!("cannot start the async runtime: {e}")))?;
        Ok(App {
            runtime,
            addr: addr.to_owned(),
            client: None,
            timeout,
            bars: bars && std::io::stderr().is_terminal(),
        })
    }

    /// The server's address for prompts.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connects now (a session's first act); later commands reconnect if the link was lost.
    pub fn connect(&mut self) -> Result<()> {
        if self.client.is_none() {
            let client = self
                .runtime
                .block_on(Client::connect(&self.addr, self.timeout))?;
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
            } => {
                let local = PathBuf::from(local);
                let remote = match remote {
                    Some(r) => r,
                    None => file_name(&local)?,
                };
                let opts = TransferOptions { overwrite: force };
                let summary = self.transfer(Transfer::Put { local, remote }, opts)?;
                report("put", &summary);
                Ok(Flow::Continue)
            }
            Command::Get {
                remote,
                local,
                force,
            } => {
                let mut local = match local {
                    Some(l) => PathBuf::from(l),
                    None => PathBuf::from(file_name(Path::new(&remote))?),
                };
                if local.is_dir() {
                    local.push(file_name(Path::new(&remote))?);
                }
                let opts = TransferOptions { overwrite: force };
                let summary = self.transfer(Transfer::Get { remote, local }, opts)?;
                report("get", &summary);
                Ok(Flow::Continue)
            }
        }
    }

    /// Runs a transfer on the connection, reconnecting first if needed, and forgets the
    /// connection when it was lost so the next command starts afresh.
    fn transfer(&mut self, t: Transfer, opts: TransferOptions) -> Result<Summary> {
        self.connect()?;
        let mut bar = Bar::default();
        let mut none = NoProgress;
        let progress: &mut dyn Progress = if self.bars { &mut bar } else { &mut none };
        let client = self.client.as_mut().expect("connected above");
        let result = self.runtime.block_on(async {
            match &t {
                Transfer::Put { local, remote } => client.put(local, remote, opts, progress).await,
                Transfer::Get { remote, local } => client.get(remote, local, opts, progress).await,
            }
        });
        if let Err(ClientError::ConnectionLost(_) | ClientError::Protocol(_)) = &result {
            self.client = None;
        }
        result
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
    println!(
        "{op} {}: {} ({} bytes) in {secs:.2} s, {}/s, MD5 {} verified",
        s.name,
        HumanBytes(s.size),
        s.size,
        HumanBytes((s.sent as f64 / secs) as u64),
        s.md5
    );
}
