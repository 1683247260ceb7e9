//! The client side of login (challenge-response): prove we hold the secret, check the server does.

use protocol::auth::{self, Role};
use protocol::{ErrorCode, Frame, Message};

use super::{unexpected, Client};
use crate::error::{ClientError, Result};

/// A user name and the secret shared with the server. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Credentials {
    /// The user to log in as, as the server's users file names it.
    pub user: String,
    /// The secret both sides hold; it never crosses the wire.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

impl Client {
    /// Logs in when the server asks for it (it says so in its hello). With credentials, a
    /// server that does not ask is refused: it could be an impostor that does not know the
    /// secret.
    pub(super) async fn login(&mut self, creds: Option<&Credentials>) -> Result<()> {
        let wants_auth = self
            .server
            .capabilities
            .iter()
            .any(|c| c == protocol::capability::AUTH_HMAC_SHA256);
        match (wants_auth, creds) {
            (false, None) => Ok(()),
            (true, Some(creds)) => self.authenticate(creds).await,
            (true, None) => Err(ClientError::Auth(format!(
                "{} requires a user name: connect with -u NAME",
                self.addr
            ))),
            (false, Some(creds)) => Err(ClientError::Auth(format!(
                "{} does not ask {} to authenticate, so it cannot prove it is the \
                 server that knows the secret; not using it",
                self.addr, creds.user
            ))),
        }
    }

    async fn authenticate(&mut self, creds: &Credentials) -> Result<()> {
        let who = format!("{}@{}", creds.user, self.addr);
        let server_nonce = match self.recv().await?.message {
            Message::AuthChallenge(c) => c.nonce,
            Message::Error(e) => return Err(ClientError::Auth(format!("{who}: {e}"))),
            other => return Err(unexpected("auth_challenge", &other)),
        };
        let client_nonce = auth::nonce();
        let t = auth::transcript(
            Role::Client,
            self.server.version,
            &self.binding,
            &server_nonce,
            &client_nonce,
            &creds.user,
        );
        self.send(Message::Auth(protocol::Auth {
            user: creds.user.clone(),
            nonce: client_nonce,
            mac: auth::sign(&creds.secret, &t),
        }))
        .await?;
        let proof = match self.recv().await {
            Ok(Frame {
                message: Message::AuthOk(ok),
                ..
            }) => ok.mac,
            Ok(Frame {
                message: Message::Error(e),
                ..
            }) if e.code == ErrorCode::AuthFailed => {
                // A plain failure says nothing more; a refusal during a penalty says when to
                // try again, which the user needs to see (the secret may well be right).
                let more = match e.message.strip_prefix("authentication failed") {
                    Some("") => String::new(),
                    Some(rest) => rest.trim_start_matches([':', ';', ' ']).to_owned(),
                    None => e.message.clone(),
                };
                return Err(ClientError::Auth(if more.is_empty() {
                    format!("authentication failed for {who}")
                } else {
                    format!("authentication failed for {who}: {more}")
                }));
            }
            Ok(Frame {
                message: Message::Error(e),
                ..
            }) => return Err(ClientError::Auth(format!("{who}: {e}"))),
            Ok(other) => return Err(unexpected("auth_ok", &other.message)),
            Err(e) => return Err(e),
        };
        let t = auth::transcript(
            Role::Server,
            self.server.version,
            &self.binding,
            &server_nonce,
            &client_nonce,
            &creds.user,
        );
        if !auth::verify(&creds.secret, &t, &proof) {
            return Err(ClientError::Auth(format!(
                "the server at {} could not prove it knows the secret for {}; not trusting it",
                self.addr, creds.user
            )));
        }
        Ok(())
    }
}
