//! The session's connections: how to reach the server ([`Dial`]), and the `Link` that reconnects.

use std::time::Duration;

use protocol::tls::Fingerprint;
use protocol::DigestKind;

use crate::client::{Client, Credentials};
use crate::error::{ClientError, Result};
use crate::trust::{self, Security};

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
    /// TLS and whom to trust, or plain TCP.
    pub security: Security,
    /// Asks the person at the terminal whether to trust a server seen for the first time
    /// (`None` when nobody is there to ask: the connection is refused).
    pub confirm: Option<Confirm>,
    /// Asks the person at the terminal for the password, when the server did not take the key.
    pub ask_password: Option<AskPassword>,
}

/// Asks for `user`'s password.
pub type AskPassword = std::sync::Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

/// Shows a new server's key and asks whether to trust it: `(host, fingerprint) -> yes`.
pub type Confirm = std::sync::Arc<dyn Fn(&str, &Fingerprint) -> bool + Send + Sync>;

impl Dial {
    /// A new connection, logged in. A server seen for the first time is shown to the person
    /// at the terminal, if there is one, and pinned if they say yes; then the connection is
    /// made again (the server may have given up on the first while they read).
    pub async fn connect(&self) -> Result<Client> {
        match (
            self.connect_trusting().await,
            &self.ask_password,
            &self.creds,
        ) {
            (Err(ClientError::NeedPassword(who)), Some(ask), Some(creds)) => {
                let (ask, user) = (ask.clone(), creds.user.clone());
                let password = tokio::task::spawn_blocking(move || ask(&user)).await;
                let Ok(Some(password)) = password else {
                    return Err(ClientError::NeedPassword(who));
                };
                creds.set_password(password);
                self.connect_trusting().await
            }
            (result, _, _) => result,
        }
    }

    /// A new connection, logged in, asking about a server seen for the first time.
    async fn connect_trusting(&self) -> Result<Client> {
        let creds = self.creds.as_ref();
        let first = Client::connect(&self.addr, self.timeout, creds, self.digest, &self.security);
        match (first.await, &self.confirm) {
            (
                Err(ClientError::UnknownHost {
                    addr,
                    fingerprint,
                    known_hosts,
                }),
                Some(confirm),
            ) => {
                let (confirm, host) = (confirm.clone(), addr.clone());
                let yes = tokio::task::spawn_blocking(move || confirm(&host, &fingerprint)).await;
                if !yes.unwrap_or(false) {
                    return Err(ClientError::Auth(format!(
                        "not connecting to {addr}: its key was not accepted"
                    )));
                }
                trust::pin(&known_hosts, &addr, &fingerprint)?;
                eprintln!(
                    "Pinned the key of {addr} in {}: a different key later will be refused.",
                    known_hosts.display()
                );
                Client::connect(&self.addr, self.timeout, creds, self.digest, &self.security).await
            }
            (result, _) => result,
        }
    }
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
            let mut c = dial.connect().await?;
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
