//! The client side of login: a key (the TLS client certificate), or SCRAM-SHA-256 with the
//! password, in which the server must prove it holds the user's verifier.

use std::sync::{Arc, Mutex};

use protocol::scram;
use protocol::{capability, Auth, ErrorCode, Message, Scram};

use super::{unexpected, Client};
use crate::error::{ClientError, Result};
use crate::keys::ClientKey;

/// Who to log in as, and what with. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    /// The user to log in as, as the server's users file names it.
    pub user: String,
    /// The password, once known (it may be asked for only when a key is not accepted); shared
    /// by every connection of the session.
    password: Arc<Mutex<Option<Vec<u8>>>>,
    /// The key presented as a TLS client certificate, if any.
    pub key: Option<Arc<ClientKey>>,
    /// The password derived with the server's salt and count at the last login, so that the
    /// session's other connections do not derive it again (it is slow on purpose).
    salted: Arc<Mutex<Option<Salted>>>,
}

#[derive(Clone)]
struct Salted {
    salt: Vec<u8>,
    iterations: u32,
    key: [u8; 32],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

impl Credentials {
    pub fn new(user: String, password: Option<Vec<u8>>, key: Option<Arc<ClientKey>>) -> Self {
        Credentials {
            user,
            password: Arc::new(Mutex::new(password)),
            key,
            salted: Arc::default(),
        }
    }

    /// The password, if known.
    pub fn password(&self) -> Option<Vec<u8>> {
        self.password
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the password (asked for after a key was not accepted).
    pub fn set_password(&self, password: Vec<u8>) {
        *self.password.lock().unwrap_or_else(|e| e.into_inner()) = Some(password);
    }

    /// The password salted as the server says, derived once per salt and count.
    async fn salted(&self, password: Vec<u8>, salt: Vec<u8>, iterations: u32) -> Result<[u8; 32]> {
        let cached = self
            .salted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(c) = cached.filter(|c| c.salt == salt && c.iterations == iterations) {
            return Ok(c.key);
        }
        let (s, i) = (salt.clone(), iterations);
        let key = tokio::task::spawn_blocking(move || scram::salted_password(&password, &s, i))
            .await
            .map_err(|e| ClientError::Internal(format!("key derivation failed: {e}")))?;
        *self.salted.lock().unwrap_or_else(|e| e.into_inner()) = Some(Salted {
            salt,
            iterations,
            key,
        });
        Ok(key)
    }
}

impl Client {
    /// Logs in when the server asks for it (it says so in its hello). With credentials, a
    /// server that does not ask is refused: it could be an impostor that knows no user.
    pub(super) async fn login(&mut self, creds: Option<&Credentials>) -> Result<()> {
        let wants_auth = self
            .server
            .capabilities
            .iter()
            .any(|c| c == capability::AUTH_SCRAM_SHA256 || c == capability::AUTH_KEY);
        match (wants_auth, creds) {
            (false, None) => Ok(()),
            (true, Some(creds)) => self.authenticate(creds).await,
            (true, None) => Err(ClientError::Auth(format!(
                "{} requires a user name: connect with -u NAME",
                self.addr
            ))),
            (false, Some(creds)) => Err(ClientError::Auth(format!(
                "{} does not ask {} to log in, so it cannot prove it is the server that holds \
                 the user's verifier; not using it",
                self.addr, creds.user
            ))),
        }
    }

    async fn authenticate(&mut self, creds: &Credentials) -> Result<()> {
        let who = format!("{}@{}", creds.user, self.addr);
        // A key is presented only over TLS. A password already known goes with it (used only
        // if the key is not the user's); else it is asked for only then.
        let key_presented = creds.key.is_some() && self.binding.is_some();
        let mut scram = None;
        let mut first = None;
        if let Some(p) = creds.password() {
            let (state, message) = scram::Client::start(&creds.user, self.binding, scram::nonce());
            scram = Some((state, p));
            first = Some(message);
        }
        self.send(Message::Auth(Auth {
            user: creds.user.clone(),
            scram: first,
        }))
        .await?;
        let mut finished: Option<scram::Finished> = None;
        loop {
            match self.recv().await?.message {
                Message::AuthPassword if scram.is_none() => {
                    let Some(p) = creds.password() else {
                        // Goodbye the TLS way (close_notify), so the server logs a close, not
                        // a broken connection.
                        let _ = self.conn.shutdown(self.timeout).await;
                        return Err(ClientError::NeedPassword(who));
                    };
                    let (state, message) =
                        scram::Client::start(&creds.user, self.binding, scram::nonce());
                    scram = Some((state, p));
                    self.send(Message::Auth(Auth {
                        user: creds.user.clone(),
                        scram: Some(message),
                    }))
                    .await?;
                }
                Message::AuthContinue(Scram {
                    scram: server_first,
                }) if finished.is_none() => {
                    let Some((state, p)) = &scram else {
                        return Err(unexpected(
                            "auth_ok",
                            &Message::AuthContinue(Scram {
                                scram: server_first,
                            }),
                        ));
                    };
                    let (salt, iterations) = state.salt(&server_first).map_err(|e| {
                        ClientError::Auth(format!("{who}: the server's SCRAM answer: {e}"))
                    })?;
                    let salted = creds.salted(p.clone(), salt, iterations).await?;
                    let (last, done) = state.finish(&server_first, &salted).map_err(|e| {
                        ClientError::Auth(format!("{who}: the server's SCRAM answer: {e}"))
                    })?;
                    finished = Some(done);
                    self.send(Message::AuthFinal(Scram { scram: last })).await?;
                }
                Message::AuthOk(ok) => {
                    return match (ok.scram, finished) {
                        (Some(server_final), Some(done)) => {
                            done.verify(&server_final).map_err(|_| self.unproven(creds))
                        }
                        // A key login: the TLS handshake proved our key, and the server's key
                        // is the one we trust.
                        (None, None) if key_presented => Ok(()),
                        _ => Err(self.unproven(creds)),
                    };
                }
                Message::Error(e) if e.code == ErrorCode::AuthFailed => {
                    // A plain failure says nothing more; a refusal during a penalty says when
                    // to try again, which the user needs to see (the password may well be right).
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
                Message::Error(e) => {
                    return Err(ClientError::Auth(format!("{who}: {}", e.message)))
                }
                other => return Err(unexpected("auth_ok", &other)),
            }
        }
    }

    fn unproven(&self, creds: &Credentials) -> ClientError {
        ClientError::Auth(format!(
            "the server at {} could not prove it holds the password verifier of {}; not \
             trusting it",
            self.addr, creds.user
        ))
    }
}
