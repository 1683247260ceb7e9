//! The session's connections: how to reach the server ([`Dial`]), and the `Link` that reconnects.

use std::time::Duration;

use protocol::DigestKind;

use crate::client::{Client, Credentials};
use crate::error::{ClientError, Result};

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
pub(crate) struct Link {
    /// `None` until the first use, and after the connection is lost.
    client: Option<Client>,
    /// The remote directory, as the server last named it.
    pub(crate) cwd: String,
}

impl Link {
    /// A link that will connect on first use and go to `cwd`.
    pub(crate) fn new(cwd: String) -> Self {
        Link { client: None, cwd }
    }

    /// The live connection: made, logged in and back in `cwd` if there is none.
    pub(crate) async fn client(&mut self, dial: &Dial) -> Result<&mut Client> {
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

    /// The connection if there is one; never makes one.
    pub(crate) fn current(&mut self) -> Option<&mut Client> {
        self.client.as_mut()
    }

    /// Forgets the connection; the next call makes a new one.
    pub(crate) fn forget(&mut self) {
        self.client = None;
    }

    /// Forgets a connection that failed under a call, or that a failed task of ours may have
    /// left half-way through an exchange.
    pub(crate) fn forget_if_broken<T>(&mut self, r: &Result<T>) {
        if let Err(
            ClientError::ConnectionLost(_) | ClientError::Protocol(_) | ClientError::Internal(_),
        ) = r
        {
            self.client = None;
        }
    }

    /// Says goodbye to the server, if connected.
    pub(crate) async fn close(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.bye()).await;
        }
    }
}
