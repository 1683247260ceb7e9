//! Moving one file in spite of a failing link: reconnect, resume from the last verified byte.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::HumanBytes;
use protocol::ErrorCode;

use crate::client::{Progress, Summary, TransferOptions};
use crate::error::{ClientError, Result};
use crate::link::{Dial, Link};
use crate::output::Output;

/// Wait before the first retry; doubled for each further one, up to [`MAX_BACKOFF`].
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// One file to move.
#[derive(Debug, Clone)]
pub(crate) enum Transfer {
    Put { local: PathBuf, remote: String },
    Get { remote: String, local: PathBuf },
}

impl Transfer {
    /// The file as the user named it, for messages.
    pub(crate) fn name(&self) -> String {
        match self {
            Transfer::Put { local, .. } => local.display().to_string(),
            Transfer::Get { remote, .. } => remote.clone(),
        }
    }

    /// The command that moves it, for summary lines.
    pub(crate) fn op(&self) -> &'static str {
        match self {
            Transfer::Put { .. } => "put",
            Transfer::Get { .. } => "get",
        }
    }
}

/// Passes progress on, remembering how far the transfer got, for retry messages.
struct Tracked<'a> {
    /// Where the progress is shown.
    inner: &'a mut dyn Progress,
    /// Bytes verified so far, counting those already in place when the attempt started.
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

/// Whether a request that may be sent twice (a listing, `cd`, `pwd`, `stat`, `mkdir -p`)
/// should be sent again after `err`, its `attempt`th failure (from 1): the wait before it if
/// so. As for transfers, a server that cannot be reached at all on the first try is not
/// retried; a link that failed under the request is.
pub(crate) fn again(err: &ClientError, attempt: u32, retries: u32) -> Option<std::time::Duration> {
    let first_connect = attempt == 1 && matches!(err, ClientError::Connect { .. });
    if !err.is_retriable() || first_connect || attempt > retries {
        return None;
    }
    Some((RETRY_BACKOFF * 2u32.pow(attempt - 1)).min(MAX_BACKOFF))
}

/// Moves one file over `link`. When the link fails or garbles data, reconnects and resumes
/// from the last verified byte, up to `retries` times, saying so on stderr. Ctrl-C stops it
/// cleanly: the connection stays usable and what was moved stays resumable.
pub(crate) async fn transfer(
    dial: &Dial,
    link: &mut Link,
    retries: u32,
    t: &Transfer,
    opts: TransferOptions,
    inner: &mut dyn Progress,
    output: &Output,
) -> Result<Summary> {
    transfer_again(dial, link, retries, t, opts, inner, output, false).await
}

/// [`transfer`], for a file that may have been sent before (`sent_before`: a pipeline was cut
/// before its answer came), so that finding it stored already is success, as after a retry.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn transfer_again(
    dial: &Dial,
    link: &mut Link,
    retries: u32,
    t: &Transfer,
    mut opts: TransferOptions,
    inner: &mut dyn Progress,
    output: &Output,
    sent_before: bool,
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
        // A file found stored already is done when it may be ours: sent by an earlier try,
        // or, continuing (`-c`), what an interrupted run left complete.
        if attempt > 0 || sent_before || opts.resume {
            if let (Transfer::Put { local, remote }, ClientError::Remote(e)) = (t, &err) {
                // Our earlier attempt may have been stored just before the link failed.
                if e.code == ErrorCode::Exists {
                    if let Some(c) = link.current() {
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
                link.forget();
            }
            return Err(err);
        }
        attempt += 1;
        link.forget();
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
