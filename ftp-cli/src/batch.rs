//! Many-file commands: files moved side by side, each slot on a connection of its own.

use std::cell::{Cell, RefCell};

use crate::client::TransferOptions;
use crate::error::{ClientError, Result};
use crate::link::{Dial, Link};
use crate::output::Output;
use crate::progress::BatchBars;
use crate::retry::{transfer, Transfer};

/// One file of a batch: what to move, and its size, for the overall bar.
pub(crate) type Item = (Transfer, u64);

/// What a many-file command moves.
#[derive(Default)]
pub(crate) struct Files {
    /// The files to move.
    pub(crate) items: Vec<Item>,
    /// Names refused before the batch began (unsafe names the server listed): each counts as a
    /// failed file, so the command fails as a batch with failures does.
    pub(crate) refused: usize,
}

impl From<Vec<Item>> for Files {
    fn from(items: Vec<Item>) -> Files {
        Files { items, refused: 0 }
    }
}

/// Moves `items` (each file with its size), up to `parallel` at once, each on a connection of
/// its own (`link`, the session's, and more made for the batch), so that no file waits for the
/// one before it to be acknowledged and synced. One overall bar and one per transfer in flight.
/// A failure is reported and the rest go on; the command fails at the end if any did (or if
/// `files` says some were refused before it began).
pub(crate) async fn run(
    dial: &Dial,
    link: &mut Link,
    retries: u32,
    parallel: usize,
    output: &Output,
    files: Files,
    opts: TransferOptions,
) -> Result<()> {
    let Files { items, refused } = files;
    let (moving, total) = (items.len(), items.len() + refused);
    // The sizes are the server's word for `get -r` and `mget`: their sum must not overflow.
    let bytes = items
        .iter()
        .fold(0u64, |sum, (_, size)| sum.saturating_add(*size));
    let slots = parallel.clamp(1, moving.max(1));
    let batch = Batch {
        dial,
        retries,
        opts,
        output,
        queue: RefCell::new(items.into_iter()),
        bars: BatchBars::new(output.bars(), moving, bytes, slots),
        failed: Cell::new(refused),
        stopped: RefCell::new(None),
    };
    let mut extra: Vec<Link> = (1..slots).map(|_| Link::new(link.cwd.clone())).collect();
    let links = std::iter::once(link).chain(extra.iter_mut());
    let workers = links.enumerate().map(|(i, link)| batch.worker(link, i));
    futures::future::join_all(workers).await;
    for link in &mut extra {
        link.close().await;
    }
    batch.bars.finish();
    if let Some(why) = batch.stopped.take() {
        return Err(why);
    }
    match batch.failed.get() {
        0 => Ok(()),
        failed => Err(ClientError::SomeFailed { failed, total }),
    }
}

/// The shared state of a many-file command.
struct Batch<'a> {
    /// How every slot reaches the server.
    dial: &'a Dial,
    /// How often each file is resumed before it counts as failed.
    retries: u32,
    /// Overwrite and resume, the same for every file.
    opts: TransferOptions,
    /// Where summaries and failures are printed.
    output: &'a Output,
    /// Files not yet started.
    queue: RefCell<std::vec::IntoIter<Item>>,
    /// The overall bar and one per slot.
    bars: BatchBars,
    /// Files that failed so far.
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
