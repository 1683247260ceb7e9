//! Moving one file in spite of a failing link: reconnect, resume from the last verified byte.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// How long, by default, a client keeps trying to reach a server that went away mid-command:
/// long enough for it to be restarted (a service manager's restart, an upgrade), so that a
/// failed connect does not spend the `--retries` of the link in under two seconds.
pub(crate) const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// `--retry-for`, set once by `main` before any command runs: how long reconnecting goes on.
/// A process-wide setting rather than a parameter, since it is the same for every transfer and
/// every batch slot of the session.
static RECONNECT_FOR_MS: AtomicU64 = AtomicU64::new(RECONNECT_FOR.as_millis() as u64);

/// Sets how long the client keeps trying to reconnect to a server it lost (`--retry-for`).
pub(crate) fn set_reconnect_for(d: Duration) {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    RECONNECT_FOR_MS.store(ms, Ordering::Relaxed);
}

fn reconnect_for() -> Duration {
    Duration::from_millis(RECONNECT_FOR_MS.load(Ordering::Relaxed))
}

/// The wait before the `n`th try (from 1) of a series: 0.25 s, 0.5 s, 1 s, ... up to 4 s.
fn backoff(n: u32) -> Duration {
    RETRY_BACKOFF
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
        .min(MAX_BACKOFF)
}

/// Tries to reach a server that went away, counted apart from the `--retries` of the link:
/// each connect that fails waits a little longer, until [`reconnect_for`] has been spent.
#[derive(Debug, Default)]
struct Reconnecting {
    /// Failed connects in a row.
    tries: u32,
    /// Time spent waiting between them.
    waited: Duration,
}

impl Reconnecting {
    /// The wait before the next connect, or `None` once the time for reconnecting is spent.
    fn next(&mut self) -> Option<Duration> {
        if self.waited >= reconnect_for() {
            return None;
        }
        self.tries += 1;
        let wait = backoff(self.tries).min(reconnect_for() - self.waited);
        self.waited += wait;
        Some(wait)
    }
}

/// A wait as people read it: `250 ms`, `4 s`.
fn shown(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs_f64().round())
    }
}

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
/// A connect that fails on a later try waits longer, up to `--retry-for` in all, without
/// spending the retries: the server may be restarting.
pub(crate) fn again(err: &ClientError, attempt: u32, retries: u32) -> Option<std::time::Duration> {
    let connect = matches!(err, ClientError::Connect { .. });
    if !err.is_retriable() || (connect && attempt == 1) {
        return None;
    }
    if connect {
        let waited: Duration = (1..attempt).map(backoff).sum();
        return (waited < reconnect_for()).then(|| backoff(attempt));
    }
    (attempt <= retries).then(|| backoff(attempt))
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
    let mut reconnecting = Reconnecting::default();
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
                until_done_or_ctrl_c(run, cancel).await
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
        let connect = matches!(err, ClientError::Connect { .. });
        // The link failed and the server cannot be reached again yet: it may be restarting.
        // Wait and connect again, up to `--retry-for`, without spending a retry.
        if connect && attempt > 0 {
            if let Some(wait) = reconnecting.next() {
                output.diagnostic(format_args!(
                    "cannot reach the server; reconnecting in {}",
                    shown(wait)
                ));
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        // A server never reached is not retried, nor one still gone after `--retry-for`.
        if !err.is_retriable() || connect || attempt >= retries {
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
            ClientError::Connect { .. } => "cannot reach the server".to_owned(),
            other => match t {
                Transfer::Put { .. } => {
                    format!("{other} (after sending {})", HumanBytes(progress.pos))
                }
                Transfer::Get { .. } => format!("{other} (at {})", HumanBytes(progress.pos)),
            },
        };
        let wait = backoff(attempt);
        output.diagnostic(format_args!(
            "{what}; reconnecting in {}, resuming ({attempt}/{retries})",
            shown(wait)
        ));
        tokio::time::sleep(wait).await;
        reconnecting = Reconnecting::default();
        opts.resume = true;
    }
}

/// Connects `link` to a server a many-file command was already talking to, as the one-file path
/// reconnects: a connect that fails waits a little longer each time, up to `--retry-for` in
/// all, saying so when `say` (one slot speaks for the batch), since the server may be
/// restarting. Ctrl-C during a wait stops it.
pub(crate) async fn reconnect(
    dial: &Dial,
    link: &mut Link,
    output: &Output,
    say: bool,
) -> Result<()> {
    let mut reconnecting = Reconnecting::default();
    loop {
        let err = match link.client(dial).await {
            Ok(_) => return Ok(()),
            Err(e @ ClientError::Connect { .. }) => e,
            Err(e) => return Err(e),
        };
        let Some(wait) = reconnecting.next() else {
            return Err(err);
        };
        if say {
            output.diagnostic(format_args!(
                "cannot reach the server; reconnecting in {}",
                shown(wait)
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return Err(ClientError::Cancelled),
        }
    }
}

/// Runs `run` to its end; Ctrl-C meanwhile sets `cancel`, which makes it stop cleanly (what it
/// moved stays resumable), and it is still awaited to that end.
pub(crate) async fn until_done_or_ctrl_c<T>(
    run: impl std::future::Future<Output = T>,
    cancel: tokio_util::sync::CancellationToken,
) -> T {
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r,
        _ = tokio::signal::ctrl_c() => {
            cancel.cancel();
            run.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let ms = |n| backoff(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5)],
            [250, 500, 1000, 2000, 4000]
        );
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    /// Regression: every retry was spent 1.9 s after a daemon died, too soon for a restart.
    #[test]
    fn reconnecting_covers_a_restart() {
        let mut r = Reconnecting::default();
        let mut total = Duration::ZERO;
        while let Some(wait) = r.next() {
            total += wait;
        }
        assert_eq!(total, RECONNECT_FOR);
        assert!(r.tries > 10, "{r:?}");
        // Idempotent requests wait as long for a lost server, whatever `--retries` says.
        let lost = ClientError::Connect {
            addr: "x".into(),
            reason: "refused".into(),
        };
        assert_eq!(
            again(&lost, 1, 3),
            None,
            "a server never reached is not retried"
        );
        let tries = (2..100)
            .take_while(|&n| again(&lost, n, 3).is_some())
            .count();
        assert!(tries > 10, "{tries}");
    }
}
